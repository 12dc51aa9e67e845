r"""Predict the classes of video files with a trained model; timelines and features.

  python -m ca2st_jax.predict --config=configs/demo.py --checkpoint=/tmp/ca2st_demo clip.mp4 DIR
  python -m ca2st_jax.predict --config=configs/cava_vggsound.py --checkpoint=model.pth \
      [--labels=classes.txt] [--top_k=5] [--json=out.jsonl] [--features=out.npz] \
      [--segments --window=4 --stride=2 [--timeline_png=timeline.png]] VIDEO [VIDEO ...]

Predictions go to stdout; progress, warnings and errors to stderr. Files are written only where a
flag names them: --json, --features, --timeline_png (with --segments and --json and no
--timeline_png, the timeline goes beside the --json file as NAME.timeline.png).

--checkpoint: a training workdir (its latest checkpoint; WORKDIR/best for the best one) or a
PyTorch state_dict in the reference layout (.pth / .pt / .safetensors: our exports and the
authors' checkpoints, through ca2st_jax.interop.torch_import). Class names come with the
checkpoint (the workdir's labels.json, or `model.labels.json` beside an export); --labels=FILE
(JSON {"label": [...]} or one name a line) for checkpoints without them.

Every file is opened before the model loads: one that is missing stops the run, one that is not
a readable video is reported and skipped (the exit code is then 1). Each file is decoded with PyAV
(frames and, for CAVA / CA²ST, its own audio track; a file without audio is predicted with
silence and flagged), cut into the config's evaluation views exactly as `--mode=eval` does
(ca2st_jax.data.pipeline.eval_clip), and the softmax is averaged over the views. A file's views,
and those of its --segments windows, run in batches of --batch_size (default
config.data.eval_batch_size; the last batch padded). Times are seconds from the first video
frame, on the frames' presentation times (a variable frame rate is resampled by timestamp at
decoding; `start_time_s` is where the first frame sits on the file's clock; the audio track is
aligned to the first frame).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags

from ca2st_jax import cli


def define_flags():
  """The command line's flags (defined only when run as a program: other tools that a process
  may import together with this module define `config` too)."""
  config_flags.DEFINE_config_file('config', None, 'Config file the model was trained with.',
                                  lock_config=False)
  flags.DEFINE_string('checkpoint', None, 'Training workdir (latest checkpoint), WORKDIR/best, '
                      'or a .pth / .pt / .safetensors state_dict.')
  flags.DEFINE_string('labels', None, 'Class names: JSON {"label": [...]} or one a line '
                      '(default: the ones recorded with the checkpoint).')
  flags.DEFINE_integer('top_k', 5, 'Classes printed and recorded per file / window.')
  flags.DEFINE_string('json', None, 'Write one JSON record per decoded file (JSON lines).')
  flags.DEFINE_bool('segments', False, 'Also predict windows along each file (a timeline).')
  flags.DEFINE_float('window', 4.0, 'Seconds per window with --segments.')
  flags.DEFINE_float('stride', 2.0, 'Seconds between window starts with --segments.')
  flags.DEFINE_string('timeline_png', None, "With --segments: the plot of the top classes' "
                      'probabilities at each window centre (default: NAME.timeline.png beside '
                      '--json=NAME.jsonl; none without either flag).')
  flags.DEFINE_string('features', None, 'Write pooled expert features and the fused pre-head '
                      'feature per file (and per window) to this .npz.')
  flags.DEFINE_integer('batch_size', 0, 'Views per forward pass (0: config.data.eval_batch_size, '
                       'else 8).')
  flags.DEFINE_integer('short_side', 256, 'Frames larger than this are decoded with this short '
                       'side, as the data builders store them (0: native).')


FLAGS = flags.FLAGS
VIDEO_EXTENSIONS = ('.mp4', '.webm', '.avi', '.mkv', '.mov', '.flv', '.m4v')
EXPORT_EXTENSIONS = ('.pth', '.pt', '.bin', '.safetensors')


# ----------------------------------------------------------------------------- model and labels

def load_model(config, checkpoint: str):
  """(model, class names or None) from a workdir, WORKDIR/best or a PyTorch state_dict. What the
  restore prints ("restored ... step N") goes to stderr: stdout holds the predictions alone."""
  from ca2st_jax.checkpoints import labels as labels_lib  # pylint: disable=import-outside-toplevel
  from etils import epath  # pylint: disable=import-outside-toplevel
  # a gs:// workdir too (os.path.normpath would make gs:// into gs:/)
  path = epath.Path(checkpoint if '://' in checkpoint else os.path.normpath(checkpoint))
  with contextlib.redirect_stdout(sys.stderr):
    if path.is_dir():
      from ca2st_jax.train import trainer  # pylint: disable=import-outside-toplevel
      best = path.name == 'best'
      workdir = os.fspath(path.parent if path.name in ('best', 'ckpt') else path)
      model, meta = trainer.restore_model(config, workdir, best=best)
      found = labels_lib.find(workdir)
      return model, labels_lib.read(found) if found else (meta or {}).get('labels')
    from flax import nnx  # pylint: disable=import-outside-toplevel
    from ca2st_jax import models  # pylint: disable=import-outside-toplevel
    from ca2st_jax.interop import torch_import  # pylint: disable=import-outside-toplevel
    model = models.build(config.model, rngs=nnx.Rngs(params=0, dropout=1))
    torch_import.import_checkpoint(model, config.model, checkpoint)
  found = labels_lib.find(checkpoint)
  return model, labels_lib.read(found) if found else None


def head_sizes(model_config) -> dict[str, int]:
  """{head: number of classes} of the configured model."""
  if str(model_config.name).endswith('_compositional'):
    return {'verb': int(model_config.num_verbs), 'noun': int(model_config.num_nouns)}
  return {'label': int(model_config.num_classes)}


def check_labels(names, head_sizes: dict[str, int], where: str) -> dict[str, list[str]]:
  """The class names of every head, checked against the model; numbers when there are none."""
  if not names:
    print('warning: no class names came with the checkpoint (give --labels=FILE); printing class '
          'indices', file=sys.stderr, flush=True)
    return {k: [str(i) for i in range(n)] for k, n in head_sizes.items()}
  for head, n in head_sizes.items():
    if head not in names:
      raise ValueError(f'{where}: no class names for the model head {head!r} (has {sorted(names)})')
    if len(names[head]) != n:
      raise ValueError(f'{where}: {len(names[head])} class names for {head!r}, the model has {n}')
  return {k: list(names[k]) for k in head_sizes}


def _concrete(x):
  """Abstract non-parameter state (the dropout RNG streams a restore leaves abstract) as arrays:
  prediction is deterministic and never draws from them."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  if not isinstance(x, jax.ShapeDtypeStruct):
    return x
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return jnp.broadcast_to(jax.random.key(0), x.shape)
  return jnp.zeros(x.shape, x.dtype)


def pooled_features(model, inputs) -> dict:
  """{expert: pooled feature [B, D]} (model.features) and the pre-head feature each head reads
  (model.pre_head, what the model's own heads are applied to): 'fused' for a single-head model,
  'fused_verb' and 'fused_noun' for a compositional one."""
  args = [inputs['video']]
  if 'audio' in model.EXPERTS:
    args += [inputs['audio'], inputs['audio_times']]
  pooled = model.features(*args, deterministic=True)
  feats = dict(zip(model.EXPERTS, pooled))
  for head, x in model.pre_head(*pooled).items():
    feats['fused' if head == 'label' else f'fused_{head}'] = x
  return feats


def make_forward(model, with_features: bool):
  """jit(batch -> {'probs': {head: softmax}, 'features': {...}}) on one device."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from ca2st_jax.data.transforms import normalize_video  # pylint: disable=import-outside-toplevel
  graphdef, state = nnx.split(model)
  state = jax.device_put(jax.tree.map(_concrete, state), jax.local_devices()[0])

  @jax.jit
  def forward(state, batch):
    model = nnx.merge(graphdef, state)
    inputs = {'video': normalize_video(batch['video'])}
    inputs.update({k: batch[k] for k in ('audio', 'audio_times') if k in batch})
    out = {'probs': {k: jax.nn.softmax(v.astype(jnp.float32), -1)
                     for k, v in model(**inputs, deterministic=True).items()}}
    if with_features:
      out['features'] = {k: v.astype(jnp.float32)
                         for k, v in pooled_features(model, inputs).items()}
    return out

  return lambda batch: jax.device_get(forward(state, batch))


# ----------------------------------------------------------------------------- decoding and views

@dataclasses.dataclass
class Decoded:
  """One file, decoded into the record the eval views are cut from (the data builders' layout)."""
  path: str
  record: dict          # frames (JPEG), fps, audio (int16 PCM), audio_rate, has_audio
  duration: float       # seconds from the first frame
  start_time: float     # where the first frame sits on the file's clock (seconds)
  has_audio: bool       # an audio track that decodes


def decode_file(path: str, short_side: int, audio_rate: int, with_audio: bool) -> Decoded:
  """Frames at a constant rate on their presentation times, and the audio aligned to frame 0."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from ca2st_jax.data import decode  # pylint: disable=import-outside-toplevel
  info = decode.probe(path)
  native_short = min(info.width, info.height)
  video = decode.read_video(path, short_side if 0 < short_side < native_short else 0)
  pcm, rate = np.zeros(0, np.int16), 0
  if with_audio and info.audio_start is not None:
    pcm, rate = decode.read_audio(path, audio_rate)
    # Sample 0 of the track is at audio_start on the file's clock, frame 0 at video_start.
    shift = int(round((info.audio_start - info.video_start) * rate)) if rate else 0
    pcm = np.concatenate([np.zeros(shift, np.int16), pcm]) if shift > 0 else pcm[-shift:]
  # A video-only model reports whether the file has an audio stream (not decoded).
  has_audio = bool(pcm.size) if with_audio else info.audio_start is not None
  record = dict(frames=video.jpegs, fps=np.float32(video.fps), audio=pcm,
                audio_rate=np.int32(rate if pcm.size else 0), has_audio=bool(pcm.size))
  return Decoded(path, record, float(video.duration), info.video_start, has_audio)


def windows(duration: float, window: float, stride: float) -> list[tuple[float, float]]:
  """[start, end) seconds of the timeline's windows: every `stride` seconds from 0, the last one
  ending at `duration` (so together they cover the whole file); one window for a short file.
  A last window that would start less than half a stride after the one before replaces it
  (when that leaves no gap): the two would show nearly the same frames."""
  if window <= 0 or stride <= 0:
    raise ValueError(f'--window={window} and --stride={stride} must be positive')
  if stride > window:
    raise ValueError(f'--stride={stride} is longer than --window={window}: the windows would '
                     'leave gaps')
  if duration <= window:
    return [(0.0, duration)]
  out, start = [], 0.0
  while start + window < duration - 1e-6:
    out.append((start, start + window))
    start += stride
  last = (duration - window, duration)
  if len(out) >= 2 and last[0] - out[-1][0] < stride / 2 and out[-2][1] >= last[0]:
    out.pop()
  out.append(last)
  return out


def cut(record: dict, start: float, end: float) -> dict:
  """The part of a record between `start` and `end` seconds (at least one frame)."""
  fps, rate = float(record['fps']), int(record['audio_rate'])
  first = min(int(round(start * fps)), len(record['frames']) - 1)
  last = max(int(round(end * fps)), first + 1)
  audio = record['audio'][int(round(start * rate)):int(round(end * rate))] if rate else record['audio']
  return dict(record, frames=record['frames'][first:last], audio=audio,
              has_audio=bool(record['has_audio']) and audio.size > 0)


def eval_views(record: dict, opts) -> list[dict]:
  """Every (clip, crop) evaluation view of a record, as --mode=eval cuts them."""
  from ca2st_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  return [pipeline.eval_clip(record, clip, crop, opts, opts.num_clips, opts.num_crops)
          for clip in range(opts.num_clips) for crop in range(opts.num_crops)]


def clip_options(config):
  """The config's evaluation options (pipeline.clip_options), without labels: files have none."""
  from ca2st_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  return dataclasses.replace(pipeline.clip_options(config), labels=(), spec_augment=False)


# ----------------------------------------------------------------------------- prediction

@dataclasses.dataclass
class Options:
  top_k: int = 5
  segments: bool = False
  window: float = 4.0
  stride: float = 2.0
  with_features: bool = False
  batch_size: int = 8
  short_side: int = 256


def average_views(forward, groups: list[list[dict]], batch_size: int) -> list[tuple[dict, dict]]:
  """(mean probabilities {head: [C]}, mean features {name: [D]}) of each group of views, the
  views of all groups run in batches of `batch_size` (the last one padded with copies)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  views = [v for group in groups for v in group]
  owner = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
  sums = [({}, {}) for _ in groups]
  for lo in range(0, len(views), batch_size):
    chunk = views[lo:lo + batch_size]
    chunk = chunk + [chunk[-1]] * (batch_size - len(chunk))
    batch = {k: np.stack([v[k] for v in chunk]) for k in ('video', 'audio', 'audio_times')
             if k in chunk[0]}
    out = forward(batch)
    for i, g in enumerate(owner[lo:lo + batch_size]):
      for acc, new in zip(sums[g], (out['probs'], out.get('features', {}))):
        for k, v in new.items():
          acc[k] = acc.get(k, 0.0) + v[i].astype(np.float64)
  return [tuple({k: v / len(group) for k, v in acc.items()} for acc in pair)
          for pair, group in zip(sums, groups)]


def predict_file(forward, decoded: Decoded, names: dict, opts, options: Options):
  """(record, file features, [window features]) of one decoded file."""
  spans = windows(decoded.duration, options.window, options.stride) if options.segments else []
  parts = [cut(decoded.record, start, end) for start, end in spans]
  groups = [eval_views(decoded.record, opts)] + [eval_views(part, opts) for part in parts]
  (probs, feats), *window_means = average_views(forward, groups, options.batch_size)
  rec = {'path': decoded.path, 'duration_s': round(decoded.duration, 4),
         'start_time_s': round(decoded.start_time, 4), 'has_audio': decoded.has_audio,
         'num_views': len(groups[0]), **predictions(probs, names, options.top_k)}
  if opts.with_audio and not decoded.has_audio:
    rec['warnings'] = ['no audio track: predicted with silence']
  window_feats = []
  if options.segments:
    rec['segments'] = []
    for (start, end), part, (p, f) in zip(spans, parts, window_means):
      has_audio = bool(part['has_audio']) if opts.with_audio else decoded.has_audio
      seg = {'start_s': round(start, 4), 'end_s': round(end, 4), 'has_audio': has_audio,
             **predictions(p, names, options.top_k)}
      head = 'label' if 'label' in p else 'verb'
      seg['all_probs'] = [[names[head][i], float(x)] for i, x in enumerate(p[head])]
      rec['segments'].append(seg)
      window_feats.append(dict(f, start_s=start, end_s=end, has_audio=has_audio))
  return rec, dict(feats, has_audio=decoded.has_audio), window_feats


def readable_videos(paths) -> tuple[list[tuple[str, float]], list[tuple[str, str]]]:
  """([(path, header duration)] of the files PyAV opens as videos, [(path, why)] of the others).
  Cheap (headers only): done before the model loads."""
  from ca2st_jax.data import decode  # pylint: disable=import-outside-toplevel
  ok, bad = [], []
  for path in paths:
    try:
      ok.append((path, decode.video_info(path)[1]))
    except decode.DecodeError as e:
      bad.append((path, unreadable(e)))
  return ok, bad


def unreadable(error) -> str:
  """PyAV's reason without its errno ('Invalid data found when processing input')."""
  reason = getattr(error.__cause__, 'strerror', None)
  return f'not a video PyAV can read ({reason})' if reason else str(error)


def eta_seconds(seconds_left: float, seconds_done: float, elapsed: float, first_file_s: float,
                first_elapsed: float) -> float:
  """Time left at the rate (seconds of video per second of work) of the files after the first,
  which also paid for compiling; the first file's own rate while there is no other."""
  video, work = seconds_done - first_file_s, elapsed - first_elapsed
  if video <= 0 or work <= 0:
    video, work = seconds_done, elapsed
  return seconds_left * work / max(video, 1e-9)


def predict(config, model, names, paths, options: Options, log=sys.stderr):
  """Predicts every file: (records of the decoded files, features or None, failed [(path, why)]).

  Each record is printed to stdout as soon as its file is done, a progress line to `log`.
  `names`: the class names ({head: [...]}, or None for class indices). Records keep each window's
  full probabilities ('all_probs', for the plot); `public(record)` is what --json writes.
  """
  from ca2st_jax.data import decode  # pylint: disable=import-outside-toplevel
  from ca2st_jax.train import writer as writer_lib  # pylint: disable=import-outside-toplevel
  names = check_labels(names, head_sizes(config.model),
                       'the class names (--labels=FILE, or the labels file of the checkpoint)')
  opts = clip_options(config)
  forward = make_forward(model, options.with_features)
  files, failed = readable_videos(paths)
  for path, why in failed:
    print(f'error: {path}: {why}; skipped', file=log, flush=True)
  records, file_feats, window_feats = [], [], []
  total_s = sum(duration for _, duration in files)
  seconds_done, first, t0 = 0.0, None, time.time()
  for i, (path, duration) in enumerate(files, 1):
    try:
      decoded = decode_file(path, options.short_side, opts.audio_rate, opts.with_audio)
    except (decode.DecodeError, OSError, ValueError) as e:
      failed.append((path, str(e)))
      print(f'error: {path}: cannot decode ({e}); skipped', file=log, flush=True)
      continue
    rec, feats, win = predict_file(forward, decoded, names, opts, options)
    for w in win:
      w['file'] = len(records)
    records.append(rec)
    file_feats.append(feats)
    window_feats += win
    seconds_done += duration
    elapsed = time.time() - t0
    first = first or (seconds_done, elapsed)
    eta = eta_seconds(total_s - seconds_done, seconds_done, elapsed, *first)
    print(f'[{i}/{len(files)}] {path}: {elapsed:.1f} s elapsed; ETA '
          f'{writer_lib.format_eta(eta)}', file=log, flush=True)
    print_result(public(rec))
  feats = stack_features(records, file_feats, window_feats) if options.with_features else None
  return records, feats, failed


# ----------------------------------------------------------------------------- results

def top_k(probs, names, k: int) -> list[dict]:
  import numpy as np  # pylint: disable=import-outside-toplevel
  order = np.argsort(-probs, kind='stable')[:k]
  return [{'label': names[i], 'index': int(i), 'prob': float(probs[i])} for i in order]


def predictions(probs: dict, names: dict, k: int) -> dict:
  """{'predictions': top-k} of a single-head model; {'verb', 'noun', 'action'} of a
  compositional one (action = verb x noun, their probabilities multiplied)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  if 'label' in probs:
    return {'predictions': top_k(probs['label'], names['label'], k)}
  verb, noun = probs['verb'], probs['noun']
  joint = np.outer(verb, noun)
  order = np.argsort(-joint, axis=None, kind='stable')[:k]
  action = []
  for flat in order:
    v, n = np.unravel_index(flat, joint.shape)
    action.append({'label': f"{names['verb'][v]} {names['noun'][n]}", 'verb_index': int(v),
                   'noun_index': int(n), 'prob': float(joint[v, n])})
  return {'verb': top_k(verb, names['verb'], k), 'noun': top_k(noun, names['noun'], k),
          'action': action}


def print_result(record: dict, out=sys.stdout):
  audio = 'audio' if record['has_audio'] else 'no audio'
  lines = [f"{record['path']}  ({record['duration_s']:.2f} s, {audio})"]
  lines += [f'  warning: {w}' for w in record.get('warnings', [])]
  for head in ('predictions', 'action', 'verb', 'noun'):
    if head in record:
      title = '' if head == 'predictions' else f'  {head}:'
      lines += [title] if title else []
      lines += [f"  {p['prob']:.3f}  {p['label']}" for p in record[head]]
  for seg in record.get('segments', []):
    best = (seg.get('predictions') or seg['action'])[0]
    lines.append(f"  [{seg['start_s']:7.2f} - {seg['end_s']:7.2f} s]  {best['prob']:.3f}  "
                 f"{best['label']}")
  print('\n'.join(lines), file=out, flush=True)


def timeline_classes(probs: list[dict], num_classes: int = 3, most: int = 6) -> list[str]:
  """The classes a timeline draws: every window's top class (at most `most`), then the ones with
  the highest peak until there are `num_classes`."""
  peak = {}
  for p in probs:
    for label, x in p.items():
      peak[label] = max(peak.get(label, 0.0), x)
  winners = {max(p, key=p.get) for p in probs}
  ranked = sorted(peak, key=lambda label: (label not in winners, -peak[label]))
  return ranked[:max(num_classes, min(len(winners), most))]


def plot_timelines(records: list[dict], path: str) -> str:
  """One panel per file: the probabilities of its top classes, one point per window at the
  window's centre (overlapping windows stay in time order); the shaded band is one window."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(len(records), 1, figsize=(11, 2.6 * len(records)), squeeze=False)
  for ax, rec in zip(axes[:, 0], records):
    segs = rec['segments']
    key = 'label' if 'predictions' in segs[0] else 'verb'   # the head all_probs holds
    probs = [dict(map(tuple, seg['all_probs'])) for seg in segs]
    centres = [(seg['start_s'] + seg['end_s']) / 2 for seg in segs]
    for label in timeline_classes(probs):
      ax.plot(centres, [p[label] for p in probs], 'o-', markersize=3, label=label)
    ax.axvspan(segs[0]['start_s'], segs[0]['end_s'], color='0.9', zorder=0, label='one window')
    ax.set_xlim(0, max(rec['duration_s'], 1e-3))
    ax.set_ylim(0, 1.02)
    ax.set_ylabel(f'p ({key})')
    ax.set_title(f"{os.path.basename(rec['path'])}: {len(segs)} windows", fontsize=9)
    ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0))
  axes[-1, 0].set_xlabel('window centre (seconds from the first frame)')
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def timeline_path(json_path: str | None, timeline_png: str | None) -> str | None:
  """Where the timeline goes: --timeline_png, else NAME.timeline.png beside --json=NAME.jsonl,
  else nowhere (no file outside the paths the user gave)."""
  if timeline_png:
    return timeline_png
  if json_path:
    return os.path.splitext(json_path)[0] + '.timeline.png'
  return None


def public(rec: dict) -> dict:
  """The record as written (without the per-window probability lists the plot uses)."""
  if 'segments' not in rec:
    return rec
  return dict(rec, segments=[{k: v for k, v in s.items() if k != 'all_probs'}
                             for s in rec['segments']])


def stack_features(records, file_feats, window_feats) -> dict:
  """The --features arrays: `path`, `has_audio` and one [files, D] array per feature; the
  windows' as `window_<name>` with `window_file` (index into the files) and their seconds."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  out = {'path': np.asarray([r['path'] for r in records], dtype=str)}
  dtypes = {'file': np.int32, 'has_audio': bool}
  for prefix, rows in (('', file_feats), ('window_', window_feats)):
    for k in (rows[0] if rows else {}):
      out[prefix + k] = np.asarray([row[k] for row in rows], dtypes.get(k, np.float32))
  return out


def list_videos(args) -> list[str]:
  """The files named, and the video files under the directories named (sorted)."""
  out = []
  for a in args:
    if os.path.isdir(a):
      for dirpath, dirs, files in os.walk(a):
        dirs.sort()
        out += [os.path.join(dirpath, f) for f in sorted(files)
                if f.lower().endswith(VIDEO_EXTENSIONS)]
    else:
      out.append(a)
  return out


def check_arguments(argv) -> list[str]:
  """The video paths; every file named, --checkpoint and --labels checked to exist."""
  if not FLAGS.checkpoint:
    cli.fail('--checkpoint=WORKDIR|model.pth is required')
  checkpoint = FLAGS.checkpoint
  # A remote workdir (gs://) is checked when it is opened: no local look-up can see it.
  if '://' not in checkpoint and not os.path.isdir(checkpoint):
    if not checkpoint.endswith(EXPORT_EXTENSIONS):
      cli.fail(f'--checkpoint={checkpoint}: not a directory (training workdir) nor a '
               f'{" / ".join(EXPORT_EXTENSIONS)} file')
    cli.check_file('checkpoint', checkpoint)
  if FLAGS.labels:
    cli.check_file('labels', FLAGS.labels, 'JSON {"label": [...]} or one class name a line')
  missing = [a for a in argv[1:] if not os.path.exists(a)]
  if missing:
    cli.fail(f'no such file: {", ".join(missing)}')
  paths = list_videos(argv[1:])
  if not paths:
    cli.fail(f'no video files in {", ".join(argv[1:]) or "the arguments"} (name files or '
             f'directories holding {" / ".join(VIDEO_EXTENSIONS)} files)')
  if FLAGS.segments:
    try:
      windows(1.0, FLAGS.window, FLAGS.stride)
    except ValueError as e:
      cli.fail(str(e))
  return paths


def main(argv):
  paths = check_arguments(argv)
  config = FLAGS.config
  cli.quiet_library_logs()  # Orbax's INFO lines would bury the predictions
  cli.skip_absent_tpu()
  files, unreadable_files = readable_videos(paths)
  if not files:
    cli.fail(', '.join(f'{p}: {why}' for p, why in unreadable_files), code=1)
  from ca2st_jax.checkpoints import labels as labels_lib  # pylint: disable=import-outside-toplevel
  from ca2st_jax.checkpoints.orbax import CheckpointError as OrbaxError  # pylint: disable=import-outside-toplevel
  from ca2st_jax.interop.torch_io import CheckpointError  # pylint: disable=import-outside-toplevel
  try:
    model, names = load_model(config, FLAGS.checkpoint)
    if FLAGS.labels:
      names = labels_lib.read(FLAGS.labels)
  except (CheckpointError, OrbaxError, OSError, ValueError) as e:
    cli.fail(str(e), code=1)
  batch_size = FLAGS.batch_size or int(config.data.get('eval_batch_size', 0) or 8)
  options = Options(top_k=FLAGS.top_k, segments=FLAGS.segments, window=FLAGS.window,
                    stride=FLAGS.stride, with_features=bool(FLAGS.features),
                    batch_size=batch_size, short_side=FLAGS.short_side)
  try:
    records, feats, failed = predict(config, model, names, paths, options)
  except ValueError as e:  # class names that do not fit the model
    cli.fail(str(e), code=1)
  if FLAGS.json:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.json)), exist_ok=True)
    with open(FLAGS.json, 'w') as f:
      for rec in records:
        f.write(json.dumps(public(rec)) + '\n')
    print(f'wrote {FLAGS.json} ({len(records)} records)', file=sys.stderr, flush=True)
  png = timeline_path(FLAGS.json, FLAGS.timeline_png)
  if options.segments and records:
    if png:
      print(f'wrote {plot_timelines(records, png)}', file=sys.stderr, flush=True)
    else:
      print('timeline not drawn: give --timeline_png=PATH (or --json=PATH)', file=sys.stderr,
            flush=True)
  if feats is not None:
    import numpy as np  # pylint: disable=import-outside-toplevel
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.features)), exist_ok=True)
    np.savez(FLAGS.features, **feats)
    print(f'wrote {FLAGS.features}: ' + ', '.join(f'{k} {v.shape}' for k, v in feats.items()),
          file=sys.stderr, flush=True)
  if failed:
    print(f'{len(failed)} of {len(paths)} files could not be decoded: '
          + ', '.join(p for p, _ in failed), file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == '__main__':
  define_flags()
  flags.mark_flags_as_required(['config', 'checkpoint'])
  app.run(main, flags_parser=cli.parse_flags)
