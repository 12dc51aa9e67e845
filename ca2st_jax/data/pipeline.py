"""Grain input pipelines: ArrayRecord (TFDS) → decode/sample/augment → per-host numpy batches.

Train: `MapDataset(source) → shuffle(seed) → repeat → random_map(clip) → batch(per-host,
drop_remainder) → [host::hosts] → to_iter_dataset → mp_prefetch(workers)`. Each element's
randomness comes from Grain's generator for its index in the *global* stream (seeded by
`config.data.seed`), so hosts draw different augmentations, a run is reproducible per (seed, step,
host), and global batch t is the same clips for any number of hosts (host k holds its k-th
slice). The iterator's `get_state()`/`set_state()` resumes at the next unseen batch.
Eval: every (video, clip, crop) view, deterministic, padded to whole batches on every host
(`mask` False on padding), with `video_index` to average the views of one video.

Batch layout (what the trainer and models read):
  video        uint8   [B, F, H, W, 3]  RGB, not normalised (normalize_video runs on device)
  audio        float32 [B, T, M]        normalised Kaldi fbank (audio datasets only)
  audio_times  float32 [B, 1 + F // tubelet, 2]
  has_audio    bool    [B]
  label | verb, noun   int32 [B]
  video_index  int32 [B], mask bool [B]   (eval only)

`audio_times` (confirmed from joohyun7u/CA2ST `dataset/vggsound.py` + `audio_transforms.py` and
the model's `idx.reshape(B, -1, 2)`): the dataset returns `concat([a_start, a_end],
frame_seconds)`; row 0 = [start, end] seconds of the audio crop (`duration * start_frame /
n_frames`, `duration * end_frame / n_frames`; with padding the end runs past the clip as in the
reference), row 1 + k = [seconds of frame 2k, seconds of frame 2k + 1] (frame index / fps) —
the two frames of temporal slot k. Times are relative to the start of the stored clip.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys

import grain
import numpy as np

from ca2st_jax import config_lib
from ca2st_jax.data import audio as audio_lib
from ca2st_jax.data import decode, sampling, transforms

MAX_AUTO_WORKERS = 32     # each worker is a process with its own buffers: bound the memory


def resolve_num_workers(num_workers: int) -> int:
  """config.data.num_workers -> Grain worker processes (0: in the training process).

  -1 (config_lib.AUTO_WORKERS) takes the cores this process may run on, less one for the training
  loop, at most MAX_AUTO_WORKERS (set a number explicitly for more).
  """
  num_workers = int(num_workers)
  if num_workers >= 0:
    return num_workers
  if num_workers != config_lib.AUTO_WORKERS:
    raise ValueError(f'config.data.num_workers={num_workers}: expected >= 0, or -1 for the cores '
                     'less one')
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    cores = os.cpu_count() or 1
  return max(1, min(cores - 1, MAX_AUTO_WORKERS))


@dataclasses.dataclass(frozen=True)
class ClipOptions:
  """Everything the per-clip functions need (picklable), built from the config by clip_options()."""
  num_frames: int
  tubelet: int
  sampling: str                      # 'dense' (K400) | 'tsn' (SSv2, EK100, ActivityNet)
  frame_stride: int
  crop_size: int
  scale: tuple
  ratio: tuple
  flip: bool
  randaugment: str
  randaugment_after_crop: bool
  interpolation: str
  eval_short_side: int
  num_clips: int
  num_crops: int
  with_audio: bool
  audio_rate: int
  num_mel_bins: int
  spectrogram_length: int
  spec_augment: bool
  time_mask: int
  freq_mask: int
  labels: tuple


def frame_indices(n, opts: ClipOptions, rng=None, clip_index=0, num_clips=1):
  """The frames of an n-frame video that one clip reads: a random clip with `rng`, else view
  `clip_index` of `num_clips`."""
  if opts.sampling == 'dense':
    if rng is not None:
      return sampling.dense_train_indices(n, opts.num_frames, opts.frame_stride, rng)
    return sampling.dense_eval_indices(n, opts.num_frames, opts.frame_stride, clip_index,
                                       num_clips)
  if opts.sampling == 'tsn':
    if rng is not None:
      return sampling.tsn_train_indices(n, opts.num_frames, rng)
    return sampling.tsn_eval_indices(n, opts.num_frames, clip_index, num_clips)
  raise ValueError(f'unknown sampling {opts.sampling!r}')


def _load_frames(record, idx, size_hint=None):
  """Decodes the sampled frames (each distinct JPEG once)."""
  frames = record['frames']
  idx = np.clip(idx, 0, len(frames) - 1)
  uniq, inv = np.unique(idx, return_inverse=True)
  imgs = decode.decode_jpegs([frames[i] for i in uniq], size_hint)
  return [imgs[i] for i in inv.reshape(-1)]


def _labels(record, opts):
  return {k: np.int32(record[k]) for k in opts.labels}


def clip_audio(record, opts, position, rng):
  """(spectrogram, its span in seconds, has audio) of the clip at `position` (0..1) of the record;
  SpecAugment only with `rng`."""
  pcm = np.asarray(record['audio'])
  spec, span = audio_lib.audio_features(
      pcm, int(record['audio_rate']), target_rate=opts.audio_rate,
      length=opts.spectrogram_length, num_mel_bins=opts.num_mel_bins, position=position,
      rng=rng, spec_aug=opts.spec_augment and rng is not None, time_mask=opts.time_mask,
      freq_mask=opts.freq_mask)
  return spec, span, bool(record['has_audio']) and pcm.size > 0


def _assemble(record, video, idx, opts, spec_span_has):
  out = {'video': video, **_labels(record, opts)}
  if opts.with_audio:
    spec, span, has = spec_span_has
    times = sampling.frame_times(idx, float(record['fps']) or 1.0)
    out['audio'] = spec
    out['audio_times'] = sampling.audio_times_rows(span, times, opts.tubelet)
    out['has_audio'] = np.bool_(has)
  return out


def train_clip(record: dict, rng: np.random.Generator, opts: ClipOptions) -> dict:
  """One stored example -> one augmented training clip (all randomness from `rng`)."""
  n = len(record['frames'])
  idx = frame_indices(max(n, 1), opts, rng)
  if n:
    frames = _load_frames(record, idx)
    video = transforms.train_frames(
        frames, rng, crop_size=opts.crop_size, scale=opts.scale, ratio=opts.ratio,
        flip=opts.flip, randaugment=opts.randaugment, interpolation=opts.interpolation,
        randaugment_after_crop=opts.randaugment_after_crop)
  else:  # audio-only example (EPIC-SOUNDS without video)
    video = np.zeros((opts.num_frames, opts.crop_size, opts.crop_size, 3), np.uint8)
  aud = clip_audio(record, opts, float(rng.random()), rng) if opts.with_audio else None
  return _assemble(record, video, idx, opts, aud)


def _source_size(record):
  """(width, height) of the source video, or None for data built before the `source_size`
  feature (the eval resize then keeps the stored frames' aspect; rebuild for the authors')."""
  size = record.get('source_size')
  if size is None or min(size) <= 0:
    return None
  return int(size[0]), int(size[1])


def eval_audio_position(clip_index: int, crop_index: int, num_clips: int, num_crops: int) -> float:
  """Where eval view (clip_index, crop_index) places its T-frame audio window in a longer clip
  (`audio_centra` of audio.crop_or_pad): the authors' test mode (joohyun7u/CA2ST
  dataset/{vggsound,kinetics_sound,epic_sounds,ucf101}.py) moves it with the view,
  (test_num_crop * chunk + crop + 3) / (test_num_segment * test_num_crop + 6), from 3/(V+6)
  for the first of V views to (V+2)/(V+6) for the last."""
  return (num_crops * clip_index + crop_index + 3) / (num_clips * num_crops + 6)


def eval_clip(record: dict, clip_index: int, crop_index: int, opts: ClipOptions,
              num_clips: int, num_crops: int) -> dict:
  """One deterministic eval view (temporal clip `clip_index`, spatial crop `crop_index`)."""
  n = len(record['frames'])
  idx = frame_indices(max(n, 1), opts, None, clip_index, num_clips)
  if n:
    frames = _load_frames(record, idx)
    video = transforms.eval_frames(frames, short_side=opts.eval_short_side,
                                   crop_index=crop_index, num_crops=num_crops,
                                   source_size=_source_size(record))
  else:
    video = np.zeros((opts.num_frames, opts.eval_short_side, opts.eval_short_side, 3), np.uint8)
  position = eval_audio_position(clip_index, crop_index, num_clips, num_crops)
  aud = clip_audio(record, opts, position, None) if opts.with_audio else None
  return _assemble(record, video, idx, opts, aud)


# ----------------------------------------------------------------------------- sources

def dataset_dir(config) -> str:
  """The prepared TFDS directory for config.data (building the synthetic set when asked)."""
  d = _checked_data(config)
  if d.dataset_dir:
    return d.dataset_dir
  data_dir = d.data_dir or os.environ.get(
      'TFDS_DATA_DIR', os.path.expanduser('~/tensorflow_datasets'))
  if d.name == 'synthetic_av':
    from ca2st_jax.data import synthetic  # pylint: disable=g-import-not-at-top
    spec = synthetic.SyntheticSpec(**dict(d.synthetic))
    return synthetic.prepare(os.path.join(data_dir, 'synthetic_av'), spec)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from ca2st_jax.data import builders  # pylint: disable=g-import-not-at-top,unused-import
  name, cfg_name = d.name, d.builder_config
  b = tfds.builder(f'{name}/{cfg_name}' if cfg_name else name, data_dir=data_dir)
  return os.fspath(b.data_dir)


def open_split(ds_dir: str, split: str):
  """(random-access source of decoded examples, tfds DatasetInfo) of one split."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder_from_directory(ds_dir)
  return builder.as_data_source(split=split), builder.info


def _checked_data(config):
  """config.data, after config_lib.check_fields (unknown and missing fields are errors)."""
  config_lib.check_fields(config)
  return config.data


def clip_options(config, info=None) -> ClipOptions:
  """The one place config.data (and the model's input shape) become ClipOptions.

  `info` (the split's tfds DatasetInfo) says which label keys the examples carry.
  """
  d, m = _checked_data(config), config.model
  labels = tuple(k for k in config_lib.LABEL_KEYS
                 if info is not None and k in info.features) or ('label',)
  return ClipOptions(
      num_frames=int(m.num_frames),
      tubelet=int(m.tubelet_size),
      sampling=d.sampling,
      frame_stride=int(d.frame_stride),
      crop_size=int(d.crop_size or m.image_size),
      scale=tuple(d.crop_scale),
      ratio=tuple(d.crop_ratio),
      # The reference never flips Something-Something (left/right is part of the label).
      flip=bool(d.flip) and d.name != 'ssv2',
      randaugment=d.randaugment,
      randaugment_after_crop=bool(d.randaugment_after_crop),
      interpolation=d.interpolation,
      eval_short_side=int(d.eval_short_side or m.image_size),
      num_clips=int(d.test_num_clips),
      num_crops=int(d.test_num_crops),
      with_audio=bool(d.audio),
      audio_rate=int(d.audio_sample_rate),
      num_mel_bins=int(m.num_mel_bins),
      spectrogram_length=int(m.spectrogram_length),
      spec_augment=bool(d.spec_augment),
      time_mask=int(d.time_mask),
      freq_mask=int(d.freq_mask),
      labels=labels)


def _host():
  # Imported here: Grain's worker processes import this module and need no JAX.
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index(), jax.process_count()


# ----------------------------------------------------------------------------- pipelines

def _ensure_flags_parsed():
  """Grain's worker processes read absl flags; programs without absl.app have not parsed them."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _stack(elements):
  return {k: np.stack([e[k] for e in elements]) for k in elements[0]}


def train_dataset(source, opts: ClipOptions, *, batch_size: int, seed: int = 0,
                  num_workers: int = 0, host_index: int = 0, host_count: int = 1,
                  prefetch: int = 2) -> grain.IterDataset:
  """Infinite per-host training batches (`batch_size` per host)."""
  ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
  # Augment, then split: slicing first would give host k's i-th clip host 0's i-th draws.
  ds = ds.random_map(functools.partial(train_clip, opts=opts), seed=seed + 1)
  ds = ds.batch(batch_size, drop_remainder=True, batch_fn=_stack)
  ds = ds[host_index::host_count]
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  if num_workers > 0:
    _ensure_flags_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                     per_worker_buffer_size=prefetch))
  return it


class _EvalViews:
  """Random-access list of eval views, padded so every host gets the same number of batches."""

  def __init__(self, source, opts, num_clips, num_crops, batch_size, host_count):
    self.source, self.opts = source, opts
    self.num_clips, self.num_crops = num_clips, num_crops
    self.views = num_clips * num_crops
    self.total = len(source) * self.views
    per_round = batch_size * host_count
    self.padded = max(math.ceil(self.total / per_round), 1) * per_round

  def __len__(self):
    return self.padded

  def __getitem__(self, i):
    i = int(i)
    real = i < self.total
    j = i if real else i % max(self.total, 1)
    video, view = divmod(j, self.views)
    clip, crop = divmod(view, self.num_crops)
    out = eval_clip(self.source[video], clip, crop, self.opts, self.num_clips, self.num_crops)
    out['video_index'] = np.int32(video)
    out['mask'] = np.bool_(real)
    return out


def eval_dataset(source, opts: ClipOptions, *, batch_size: int, num_clips: int, num_crops: int,
                 num_workers: int = 0, host_index: int = 0, host_count: int = 1):
  """Finite per-host eval batches of every view; `mask` marks the real ones."""
  views = _EvalViews(source, opts, num_clips, num_crops, batch_size, host_count)
  ds = grain.MapDataset.source(views)[host_index::host_count]
  ds = ds.batch(batch_size, drop_remainder=True, batch_fn=_stack)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  if num_workers > 0:
    _ensure_flags_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return it


# ----------------------------------------------------------------------------- trainer API

class Source:
  """What the trainer consumes (ca2st_jax.train.input): train_iterator(), eval_iterator()."""

  def __init__(self, config):
    d = _checked_data(config)
    self.dir = dataset_dir(config)
    self.train_split, self.eval_split = d.train_split, d.eval_split
    self.train_records, self.info = open_split(self.dir, self.train_split)
    self.opts = clip_options(config, self.info)
    self.num_train_examples = len(self.train_records)
    self.host_index, self.host_count = _host()
    # The trainer's global batch: the one the learning rate is scaled for.
    global_batch = int(config.train.batch_size)
    eval_global = int(d.eval_batch_size or global_batch)
    for field, size in (('train.batch_size', global_batch), ('data.eval_batch_size', eval_global)):
      if size % self.host_count:
        raise ValueError(f'config.{field}={size} is not divisible by {self.host_count} hosts')
    self.batch_size = global_batch // self.host_count
    self.eval_batch_size = eval_global // self.host_count
    self.num_workers = resolve_num_workers(d.num_workers)
    self.seed = int(d.seed)
    self.prefetch = int(d.prefetch)
    if self.host_index == 0:  # the model's compile follows: say so before that silent minute
      print(f'data: {self.num_train_examples} training examples in {self.dir} '
            f'({self.num_workers} input workers); compiling the model next', file=sys.stderr,
            flush=True)

  def num_classes(self) -> dict[str, int]:
    return {k: self.info.features[k].num_classes for k in self.opts.labels}

  def class_names(self) -> dict[str, list[str]]:
    """{head: class names}, index = label (the builder's names, recorded beside checkpoints)."""
    return {k: list(self.info.features[k].names) for k in self.opts.labels}

  def train_iterator(self):
    ds = train_dataset(self.train_records, self.opts, batch_size=self.batch_size, seed=self.seed,
                       num_workers=self.num_workers, host_index=self.host_index,
                       host_count=self.host_count,
                       prefetch=self.prefetch)
    return iter(ds)

  def eval_iterator(self, num_clips=None, num_crops=None):
    src, _ = open_split(self.dir, self.eval_split)
    ds = eval_dataset(src, self.opts, batch_size=self.eval_batch_size,
                      num_clips=num_clips or self.opts.num_clips,
                      num_crops=num_crops or self.opts.num_crops,
                      num_workers=self.num_workers, host_index=self.host_index,
                      host_count=self.host_count)
    return iter(ds)

  def example_ids(self, video_index) -> list[str]:
    src, _ = open_split(self.dir, self.eval_split)
    ids = [src[int(i)]["id"] for i in video_index]
    return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]


def make_source(config) -> Source:
  return Source(config)
