"""Shared code of the TFDS builders: storage format, file index, robust example generation.

Every builder reads the raw download of its benchmark from `manual_dir` (nothing downloads) and
writes ArrayRecord files (TFDS `file_format='array_record'`; no TensorFlow needed). One example:

  id          text    unique example id (clip stem, narration_id, annotation_id, ...)
  video_id    text    source video stem
  label(s)    int     'label', or 'verb' + 'noun' for EPIC-KITCHENS-100; -1 in the unlabelled
                      test split of a challenge (UNLABELLED), which builds and evaluates
                      (predictions only, no metrics)
  frames      [N] JPEG bytes, every frame of the clip at `fps` (native unless configured),
              short side `short_side` pixels (config), quality `jpeg_quality`
  fps         float32 rate of the stored frames
  duration    float32 seconds of the clip
  span        float32 [2] [start, stop] seconds of the clip inside the source file
  segments    float32 [K, 2] annotated [start, stop] seconds (ActivityNet; empty otherwise)
  audio       int16 [S] mono 16-bit PCM of the clip at `audio_rate` (empty when the file has none)
  audio_rate  int32   sample rate of `audio` (0 when there is no audio)
  has_audio   bool

Files that are missing, cannot be opened, have no video stream or no decodable frame are skipped
with a warning; their names and reasons are listed in the dataset metadata (`skipped[split]`,
`num_skipped[split]`). Annotation rows with too few columns are left out with a warning naming the
file and line, and listed in `bad_rows`. A split whose annotation file is missing, or that ends up
empty, raises. Audio files named in the annotations (`.wav`, `.m4a`, `.flac`, ...) become
audio-only examples (empty `frames`).

Decoding runs in `num_workers` processes: the builder's keyword argument, else the environment
variable CA2ST_BUILD_WORKERS (the way to set it under `tfds build`), else one per core.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import multiprocessing
import os
import pathlib
import sys
from typing import Any, Iterable

import numpy as np
import tensorflow_datasets as tfds

from ca2st_jax.data import decode

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = ('.mp4', '.webm', '.avi', '.mkv', '.mov', '.flv', '.m4v')
AUDIO_EXTENSIONS = ('.wav', '.m4a', '.flac', '.mp3', '.ogg', '.opus', '.aac')
WORKERS_ENV = 'CA2ST_BUILD_WORKERS'
UNLABELLED = -1  # the label of an example of a hidden test split (TFDS ClassLabel's "no label")


@dataclasses.dataclass
class VideoBuilderConfig(tfds.core.BuilderConfig):
  """Storage options (see README 'Data storage')."""
  short_side: int = 256      # pixels of the stored frames' short side (0: keep)
  fps: float = 0.0           # stored frame rate (0: native); lower rates subsample by time
  jpeg_quality: int = 90
  audio_rate: int = 16000    # stored PCM rate (0: the file's own rate)
  with_video: bool = True
  with_audio: bool = True
  fold: int = 1              # UCF-101 split 1/2/3


@dataclasses.dataclass
class Item:
  """One example to make: a (segment of a) video file, and/or an HDF5 audio range."""
  key: str
  path: str | None
  labels: dict[str, int]
  video_id: str = ''
  start: float = 0.0
  stop: float | None = None
  segments: Any = None                      # [K, 2] float seconds
  hdf5: tuple | None = None                 # (file, dataset key, start_sample, stop_sample, rate)
  require_video: bool = True


def is_audio_file(path) -> bool:
  return os.path.splitext(str(path))[1].lower() in AUDIO_EXTENSIONS


def index_files(root) -> dict[str, str]:
  """stem -> path of every video or audio file under `root` (recursive).

  A video file wins over an audio file of the same stem; otherwise the first one found wins.
  """
  out, audio = {}, {}
  for dirpath, dirs, files in os.walk(root):
    dirs.sort()
    for f in sorted(files):
      stem, ext = os.path.splitext(f)
      if ext.lower() in VIDEO_EXTENSIONS:
        out.setdefault(stem, os.path.join(dirpath, f))
      elif ext.lower() in AUDIO_EXTENSIONS:
        audio.setdefault(stem, os.path.join(dirpath, f))
  return {**audio, **out}


def read_csv(path, header=True, min_columns=0, bad_rows=None):
  """Rows of a CSV file: dicts by header name, or lists of strings (blank lines left out).

  A row with fewer columns than the header (or than `min_columns`) is left out with a warning
  naming the file and line, and its description is appended to `bad_rows` when given.
  """
  out = []
  with open(path, newline='') as f:
    reader = csv.reader(f)
    names = next(reader, []) if header else None
    need = len(names) if header else min_columns
    for row in reader:
      if not any(c.strip() for c in row):
        continue
      if len(row) < need:
        problem = f'{path}:{reader.line_num}: {len(row)} columns, expected {need}: {row}'
        if bad_rows is None or problem not in bad_rows:  # builders may read a file twice
          log.warning('left out annotation row %s', problem)
          if bad_rows is not None:
            bad_rows.append(problem)
        continue
      out.append(dict(zip(names, row)) if header else row)
  return out


def find(manual_dir, *names) -> pathlib.Path:
  """The first of `names` that exists under manual_dir (searched recursively), else raises."""
  root = pathlib.Path(manual_dir)
  for n in names:
    if (root / n).exists():
      return root / n
  for n in names:
    hits = sorted(root.rglob(pathlib.Path(n).name))
    if hits:
      return hits[0]
  raise FileNotFoundError(f'none of {names} found under {manual_dir}')


def find_optional(manual_dir, name) -> pathlib.Path | None:
  """`find(manual_dir, name)`, or None when it is absent (a hidden test split's optional file)."""
  try:
    return find(manual_dir, name)
  except FileNotFoundError:
    return None


def timestamp_to_seconds(ts: str) -> float:
  """'HH:MM:SS.ff' -> seconds (EPIC-KITCHENS)."""
  h, m, s = ts.split(':')
  return int(h) * 3600 + int(m) * 60 + float(s)


def _read_hdf5_audio(spec):
  import h5py  # pylint: disable=g-import-not-at-top
  path, key, start, stop, _ = spec
  with h5py.File(path, 'r') as f:
    if key not in f:
      raise decode.DecodeError(f'{key} not in {path}')
    data = np.asarray(f[key][int(start):int(stop)])
  if data.ndim > 1:
    data = data.mean(axis=-1) if data.shape[-1] <= 8 else data.mean(axis=0)
  if data.dtype.kind == 'f':
    return np.clip(np.round(data * 32768.0), -32768, 32767).astype(np.int16)
  if data.dtype == np.int16:
    return data
  info = np.iinfo(data.dtype)
  return (data.astype(np.float64) / max(abs(info.min), info.max) * 32767).astype(np.int16)


def make_example(item: Item, cfg: VideoBuilderConfig) -> dict[str, Any]:
  """Decodes one item into the stored feature dict (raises DecodeError on unusable input)."""
  frames, fps, duration, source_size = [], 0.0, 0.0, (0, 0)
  have_file = item.path is not None and os.path.exists(item.path)
  audio_file = item.path is not None and is_audio_file(item.path)
  if item.require_video and not have_file:
    raise decode.DecodeError(f'missing file {item.path}')
  if cfg.with_video and have_file and not audio_file:
    try:
      v = decode.read_video(item.path, cfg.short_side, cfg.fps, cfg.jpeg_quality,
                            start=item.start, stop=item.stop)
      frames, fps, duration = v.jpegs, v.fps, v.duration
      source_size = (v.source_width, v.source_height)
    except decode.DecodeError:
      if item.require_video:
        raise
  pcm, rate = np.zeros(0, np.int16), 0
  if cfg.with_audio:
    if item.hdf5 is not None:
      pcm, rate = _read_hdf5_audio(item.hdf5), int(item.hdf5[4])
      if cfg.audio_rate and rate != cfg.audio_rate and pcm.size:
        from ca2st_jax.data import audio  # pylint: disable=g-import-not-at-top
        wave = audio.resample(audio.pcm_to_float(pcm), rate, cfg.audio_rate)
        pcm, rate = audio.float_to_pcm(wave), cfg.audio_rate
    elif have_file:
      try:
        pcm, rate = decode.read_audio(item.path, cfg.audio_rate, start=item.start, stop=item.stop)
      except decode.DecodeError as e:
        log.warning('no audio from %s: %s', item.path, e)
  if not frames and not pcm.size:
    raise decode.DecodeError(f'nothing decodable in {item.path or item.hdf5}')
  if not duration:
    duration = (pcm.size / rate) if rate else 0.0
  stop = item.stop if item.stop is not None else item.start + duration
  segments = np.zeros((0, 2), np.float32) if item.segments is None else np.asarray(
      item.segments, np.float32).reshape(-1, 2)
  return dict(id=item.key, video_id=item.video_id or item.key, frames=list(frames),
              fps=np.float32(fps), source_size=np.asarray(source_size, np.int32),
              duration=np.float32(duration),
              span=np.asarray([item.start, stop], np.float32), segments=segments,
              audio=pcm.astype(np.int16), audio_rate=np.int32(rate if pcm.size else 0),
              has_audio=bool(pcm.size), **item.labels)


def _work(args):
  item, cfg = args
  try:
    return item.key, make_example(item, cfg), None
  except Exception as e:  # pylint: disable=broad-except  -- never die on one file
    return item.key, None, f'{item.path or item.hdf5}: {type(e).__name__}: {e}'


def base_features(label_features: dict[str, Any]) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      'id': tfds.features.Text(),
      'video_id': tfds.features.Text(),
      'frames': tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
      'fps': tfds.features.Scalar(dtype=np.float32),
      # (width, height) of the source video's frames; (0, 0) without video
      'source_size': tfds.features.Tensor(shape=(2,), dtype=np.int32),
      'duration': tfds.features.Scalar(dtype=np.float32),
      'span': tfds.features.Tensor(shape=(2,), dtype=np.float32),
      'segments': tfds.features.Tensor(shape=(None, 2), dtype=np.float32),
      'audio': tfds.features.Tensor(shape=(None,), dtype=np.int16),
      'audio_rate': tfds.features.Scalar(dtype=np.int32),
      'has_audio': tfds.features.Scalar(dtype=np.bool_),
      **label_features,
  })


class VideoBuilder(tfds.core.GeneratorBasedBuilder):
  """Base of the eight builders. Subclasses define LABELS, `_classes` and `_split_items`."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'JPEG frames + 16-bit PCM audio, ArrayRecord.'}
  BUILDER_CONFIGS = [VideoBuilderConfig(name='default', description='short side 256, native fps')]
  LABELS: tuple[str, ...] = ('label',)
  DESCRIPTION = ''

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    # TFDS's default resolves the module through `importlib_resources` (not a dependency here).
    import sys  # pylint: disable=g-import-not-at-top
    from etils import epath  # pylint: disable=g-import-not-at-top
    return epath.Path(sys.modules[cls.__module__].__file__)

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    if 'MANUAL_DOWNLOAD_INSTRUCTIONS' not in cls.__dict__:
      # The module docstring describes the raw layout (the class docstring is one line).
      cls.MANUAL_DOWNLOAD_INSTRUCTIONS = sys.modules[cls.__module__].__doc__

  def __init__(self, *, num_workers: int | None = None, **kwargs):
    """`file_format` defaults to ArrayRecord (what the pipeline reads), also under `tfds build`."""
    kwargs.setdefault('file_format', 'array_record')
    self.num_workers = num_workers
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=self.DESCRIPTION,
        features=base_features({k: tfds.features.ClassLabel() for k in self.LABELS}),
        metadata=tfds.core.MetadataDict())

  # --- to implement -------------------------------------------------------------------------
  def read_csv(self, path, header=True, min_columns=0):
    """`read_csv` that records the rows it leaves out in the metadata (`bad_rows`)."""
    return read_csv(path, header, min_columns, self.bad_rows)

  def _classes(self, manual_dir: pathlib.Path) -> dict[str, list[str]]:
    """Label key -> class names (index = label)."""
    raise NotImplementedError

  def _split_items(self, manual_dir: pathlib.Path) -> dict[str, list[Item]]:
    raise NotImplementedError

  # --- shared ---------------------------------------------------------------------------------
  def _split_generators(self, dl_manager):
    manual_dir = pathlib.Path(dl_manager.manual_dir)
    self.bad_rows = []
    for key, names in self._classes(manual_dir).items():
      self.info.features[key].names = list(names)
    self.info.metadata['skipped'] = {}
    self.info.metadata['num_skipped'] = {}
    splits = self._split_items(manual_dir)
    self.info.metadata['bad_rows'] = sorted(set(self.bad_rows))
    for split, items in splits.items():
      if not items:
        raise ValueError(f'{self.name}: split {split!r} has no annotated items in {manual_dir}')
    return {split: self._generate_examples(split, items) for split, items in splits.items()}

  def _generate_examples(self, split: str, items: list[Item]):
    cfg = self.builder_config
    workers = self.num_workers or int(os.environ.get(WORKERS_ENV, 0) or 0) or os.cpu_count() or 1
    jobs = [(it, cfg) for it in items]
    skipped = []
    if workers > 1 and len(items) > 1:
      # Workers forked from a fresh server process that imported only this module: they never
      # re-import __main__ (under `tfds build` that would load TensorFlow in every worker).
      ctx = multiprocessing.get_context('forkserver')
      ctx.set_forkserver_preload([__name__])
      with ctx.Pool(workers) as pool:
        results: Iterable = pool.imap(_work, jobs, chunksize=4)
        yield from self._collect(results, skipped)
    else:
      yield from self._collect(map(_work, jobs), skipped)
    self.info.metadata['skipped'][split] = sorted(skipped)
    self.info.metadata['num_skipped'][split] = len(skipped)
    if len(skipped) == len(items):
      raise RuntimeError(f'{self.name}: every file of split {split!r} failed, e.g. {skipped[:3]}')
    log.info('%s/%s: %d examples, %d skipped', self.name, split, len(items) - len(skipped),
             len(skipped))

  @staticmethod
  def _collect(results, skipped):
    for key, example, error in results:
      if example is None:
        log.warning('skipping %s', error)
        skipped.append(error)
        continue
      yield key, example


def build(builder_cls, manual_dir, data_dir, config: VideoBuilderConfig | str | None = None,
          num_workers: int | None = None):
  """Equivalent of `tfds build <builder> --manual_dir=RAW --data_dir=OUT` (array_record)."""
  builder = builder_cls(data_dir=str(data_dir), config=config, num_workers=num_workers)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder
