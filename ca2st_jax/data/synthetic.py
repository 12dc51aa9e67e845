"""A small synthetic audio-visual dataset: real .mp4 files with an audio track, built like VGGSound.

Each clip shows one shape (square or ring, random colour and size) moving across a still, noisy
random background (left-to-right or right-to-left, random height) while a tone sounds (low ~300 Hz
or high ~1200 Hz, random pitch jitter, with noise). The 8 classes are shape × direction × tone,
so a model needs appearance (shape), motion (direction: no single frame tells it) and sound (tone)
to get them all right. The raw files follow VGGSound's layout exactly (`vggsound.csv` without
header: `ytid,start_seconds,label,split` + `clips/{ytid}_{start:06d}.mp4`) and are ingested by a
subclass of the VGGSound builder, so the real decoding/builder/pipeline code runs on them.

`prepare(data_dir)` writes the raw files and builds the TFDS ArrayRecord dataset once; later calls
reuse both (cache keyed by the parameters). ~1 s for the default 64 + 16 clips.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys
import time

import numpy as np

from ca2st_jax.data import decode
from ca2st_jax.data.builders import base, vggsound

SHAPES = ('square', 'ring')
DIRECTIONS = ('rightward', 'leftward')
TONES = ('low', 'high')
CLASSES = tuple(f'{s} {d} {t}' for s in SHAPES for d in DIRECTIONS for t in TONES)


PROGRESS_EVERY_S = 10.0


def _say(message):
  print(f'synthetic_av: {message}', file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  num_train: int = 64
  num_test: int = 16
  num_frames: int = 32
  size: int = 64            # frame height (and width unless `width` is set)
  width: int = 0
  fps: int = 16
  audio_rate: int = 16000
  seed: int = 0
  # Bumped whenever render_clip changes, so cached clips of an older drawing are not reused.
  render_version: int = 5
  # Extra rows to exercise the builder's error handling (tests): a corrupt file, a file with no
  # audio track, a listed file that does not exist.
  corrupt: int = 0
  no_audio: int = 0
  missing: int = 0


def render_clip(label: int, rng: np.random.Generator, spec: SyntheticSpec):
  """(frames uint8 [T, H, W, 3], mono float audio) for class index `label`."""
  shape, direction, tone = np.unravel_index(label, (len(SHAPES), len(DIRECTIONS), len(TONES)))
  t_len, size, width = spec.num_frames, spec.size, spec.width or spec.size
  # A still, noisy background: only the shape moves, so frame differences show the motion.
  bg = np.clip(rng.integers(0, 120, size=3) + rng.normal(0, 12, (size, width, 3)), 0, 255)
  frames = np.repeat(bg[None], t_len, axis=0)
  colour = rng.integers(140, 256, size=3)
  # Large enough that ring and square still differ after a 0.6-scale crop resized to 32 pixels.
  r = size // 5 + int(rng.integers(0, size // 16 + 1))
  cy = int(rng.integers(r, size - r))
  # From a quarter in view at one edge to a quarter in view at the other: steps of about a sixth
  # of the frame width between frames, so the direction of motion is plain to see.
  x0, x1 = -r / 2, width + r / 2
  if direction == 1:
    x0, x1 = x1, x0
  yy, xx = np.mgrid[:size, :width]
  for t in range(t_len):
    cx = x0 + (x1 - x0) * t / max(t_len - 1, 1)
    if shape == 0:
      mask = (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
    else:  # a ring, not a disc: a disc differs from a square only in its corners
      d2 = (xx - cx) ** 2 + (yy - cy) ** 2
      mask = (d2 <= r * r) & (d2 >= r * r / 4)
    frames[t][mask] = colour
  n = int(spec.audio_rate * t_len / spec.fps)
  freq = (300.0 if tone == 0 else 1200.0) * rng.uniform(0.9, 1.1)
  ts = np.arange(n) / spec.audio_rate
  wave = 0.4 * np.sin(2 * np.pi * freq * ts) + 0.05 * rng.standard_normal(n)
  return frames.astype(np.uint8), wave.astype(np.float32)


def write_raw(raw_dir, spec: SyntheticSpec = SyntheticSpec()) -> pathlib.Path:
  """Writes vggsound.csv + clips/*.mp4 (skipped if already written with the same spec)."""
  raw = pathlib.Path(raw_dir)
  marker = raw / 'spec.json'
  if marker.exists() and json.loads(marker.read_text()) == dataclasses.asdict(spec):
    return raw
  (raw / 'clips').mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(spec.seed)
  rows = []
  total, written, shown = spec.num_train + spec.num_test, 0, time.monotonic()
  _say(f'writing {total} clips (.mp4 with audio) to {raw}')
  for split, count in (('train', spec.num_train), ('test', spec.num_test)):
    for i in range(count):
      written += 1
      if time.monotonic() - shown > PROGRESS_EVERY_S:
        _say(f'{written}/{total} clips written')
        shown = time.monotonic()
      label = i % len(CLASSES)
      ytid = f'syn{split}{i:05d}'
      frames, wave = render_clip(label, rng, spec)
      decode.write_video(raw / 'clips' / f'{vggsound.clip_stem(ytid, 0)}.mp4', frames, spec.fps,
                         wave, spec.audio_rate)
      rows.append(f'{ytid},0,{CLASSES[label]},{split}')
  for i in range(spec.no_audio):
    frames, _ = render_clip(i % len(CLASSES), rng, spec)
    ytid = f'synnoaudio{i:03d}'
    decode.write_video(raw / 'clips' / f'{ytid}_000000.mp4', frames, spec.fps)
    rows.append(f'{ytid},0,{CLASSES[i % len(CLASSES)]},train')
  for i in range(spec.corrupt):
    ytid = f'syncorrupt{i:03d}'
    (raw / 'clips' / f'{ytid}_000000.mp4').write_bytes(b'\x00\x00\x00\x18ftypmp42' + b'x' * 4000)
    rows.append(f'{ytid},0,{CLASSES[0]},train')
  for i in range(spec.missing):
    rows.append(f'synmissing{i:03d},0,{CLASSES[0]},test')
  (raw / 'vggsound.csv').write_text('\n'.join(rows) + '\n')
  marker.write_text(json.dumps(dataclasses.asdict(spec)))
  return raw


class SyntheticAv(vggsound.Vggsound):
  """The synthetic audio-visual set (8 classes), through the VGGSound builder code."""
  name = 'synthetic_av'
  MANUAL_DOWNLOAD_INSTRUCTIONS = 'Written by ca2st_jax.data.synthetic.write_raw.'
  DESCRIPTION = 'Synthetic shape x motion x tone clips (8 classes).'
  BUILDER_CONFIGS = [base.VideoBuilderConfig(name='default', short_side=0,
                                             description='frames stored at their size')]

  # One line per split instead of TFDS's progress bars and size banners.
  def _generate_examples(self, split, items):
    _say(f'building the {split} split ({len(items)} clips)')
    yield from super()._generate_examples(split, items)

  def _log_download_bytes(self):
    pass

  def _log_download_done(self):
    pass


def _tag(spec: SyntheticSpec) -> str:
  tag = (f'n{spec.num_train}-{spec.num_test}_t{spec.num_frames}_s{spec.size}_seed{spec.seed}'
         f'_v{spec.render_version}')
  if spec.width:
    tag += f'_w{spec.width}'
  if spec.corrupt or spec.no_audio or spec.missing:
    tag += f'_bad{spec.corrupt}{spec.no_audio}{spec.missing}'
  return tag


def raw_dir(data_dir, spec: SyntheticSpec = SyntheticSpec()) -> pathlib.Path:
  """Where `prepare(data_dir, spec)` writes the raw files (vggsound.csv, clips/*.mp4)."""
  return pathlib.Path(data_dir) / 'raw' / _tag(spec)


def prepare(data_dir, spec: SyntheticSpec = SyntheticSpec(), config=None) -> str:
  """Writes (once) and builds (once) the synthetic set under data_dir; returns the TFDS dir."""
  data_dir = pathlib.Path(data_dir)
  tag = _tag(spec)
  raw = write_raw(raw_dir(data_dir, spec), spec)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.display_progress_bar(False)
  try:
    builder = base.build(SyntheticAv, raw, data_dir / tag, config, num_workers=1)
  finally:
    tfds.display_progress_bar(True)
  _say(f'data set in {builder.data_dir} (clips in {raw})')
  return os.fspath(builder.data_dir)
