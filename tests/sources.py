"""In-memory data sources for the trainer tests: what ca2st_jax.data.pipeline.Source gives the
trainer (see ca2st_jax/train/input.py), from numpy arrays."""
from __future__ import annotations

from typing import Iterator

import jax
import numpy as np


class ArrayIterator:
  """Infinite, epoch-shuffled (seeded) iterator over in-memory arrays with checkpointable state."""

  def __init__(self, arrays: dict, batch_size: int, seed: int, shuffle: bool = True):
    self.arrays, self.batch_size, self.seed, self.shuffle = arrays, batch_size, seed, shuffle
    self.n = len(next(iter(arrays.values())))
    self.pos = 0  # batches produced so far

  def _order(self, epoch):
    if not self.shuffle:
      return np.arange(self.n)
    return np.random.RandomState([self.seed, epoch]).permutation(self.n)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    per_epoch = self.n // self.batch_size
    epoch, b = divmod(self.pos, per_epoch)
    idx = self._order(epoch)[b * self.batch_size:(b + 1) * self.batch_size]
    self.pos += 1
    return {k: v[idx] for k, v in self.arrays.items()}

  def get_state(self) -> dict:
    return {"pos": self.pos}

  def set_state(self, state: dict):
    self.pos = int(state["pos"])


class HostIterator:
  """This process's rows of each global batch of an ArrayIterator (its position is the same)."""

  def __init__(self, arrays: ArrayIterator, host_slice):
    self.arrays, self.host_slice = arrays, host_slice

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    return self.host_slice(next(self.arrays), self.arrays.batch_size)

  def get_state(self) -> dict:
    return self.arrays.get_state()

  def set_state(self, state: dict):
    self.arrays.set_state(state)


class InMemorySource:
  """Train/eval data held in numpy arrays.

  `train`: dict of arrays [N, ...]; `eval`: dict of arrays [M, ...] with 'video_index' (added as
  arange if missing); eval batches are padded to `eval_batch_size` with mask False.
  Each host reads its own contiguous slice of every global batch. Without a data set's metadata
  it has no class counts or names to check or record. Example ids are the eval arrays' 'id' when
  given, else the video index.
  """
  eval_split = "eval"

  def __init__(self, train: dict, eval: dict | None, *, global_batch: int, eval_batch_size: int,
               seed: int = 0):
    self.train, self.eval = train, eval
    self.global_batch, self.eval_batch_size, self.seed = global_batch, eval_batch_size, seed
    self.num_train_examples = len(next(iter(train.values())))

  def num_classes(self) -> dict[str, int]:
    return {}

  def class_names(self) -> dict[str, list[str]]:
    return {}

  def example_ids(self, video_index) -> list[str]:
    if "id" not in self.eval:
      return [str(int(i)) for i in video_index]
    first = {}
    index = self.eval.get("video_index", np.arange(len(self.eval["id"])))
    for pos, v in enumerate(np.asarray(index)):
      first.setdefault(int(v), pos)
    return [str(self.eval["id"][first[int(i)]]) for i in video_index]

  def _host_slice(self, batch, size):
    n, i = jax.process_count(), jax.process_index()
    per = size // n
    return {k: v[i * per:(i + 1) * per] for k, v in batch.items()}

  def train_iterator(self) -> Iterator[dict]:
    return HostIterator(ArrayIterator(self.train, self.global_batch, self.seed), self._host_slice)

  def eval_iterator(self):
    ev = dict(self.eval)
    m = len(next(iter(ev.values())))
    ev.setdefault("video_index", np.arange(m, dtype=np.int32))
    bs = self.eval_batch_size
    for start in range(0, m, bs):
      batch = {k: v[start:start + bs] for k, v in ev.items()}
      k = len(batch["video_index"])
      mask = np.arange(bs) < k
      if k < bs:
        batch = {key: np.concatenate([v, np.repeat(v[-1:], bs - k, 0)]) for key, v in batch.items()}
      batch["mask"] = mask
      yield self._host_slice(batch, bs)


def config_data(cfg, num_train=8, num_eval_videos=4, views=2):
  """Random inputs shaped as config `cfg`'s pipeline delivers them, with the label keys of its
  model's heads (read off the model's abstract output, so every head is fed)."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from ca2st_jax import models  # pylint: disable=import-outside-toplevel
  m = cfg.model
  frames = m.num_frames
  rng = np.random.default_rng(0)

  def arrays(n):
    out = {"video": rng.integers(0, 256, (n, frames, m.image_size, m.image_size, 3), np.uint8)}
    if cfg.data.get("audio", True):
      out["audio"] = rng.standard_normal((n, m.spectrogram_length, m.num_mel_bins)).astype(np.float32)
      times = np.sort(rng.uniform(0, 2, (n, 1 + frames // m.tubelet_size, 2)), -1)
      out["audio_times"] = times.astype(np.float32)
      out["has_audio"] = np.ones(n, bool)
    return out

  train, evaluation = arrays(num_train), arrays(num_eval_videos * views)
  inputs = {k: jax.ShapeDtypeStruct(v.shape[1:], v.dtype) for k, v in train.items()
            if k in ("audio", "audio_times")}
  video = jax.ShapeDtypeStruct((1,) + train["video"].shape[1:], np.float32)
  heads = jax.eval_shape(
      lambda v, a: models.build(m, rngs=nnx.Rngs(0))(video=v, **{k: x[None] for k, x in a.items()}),
      video, inputs)
  for key, logits in heads.items():
    train[key] = rng.integers(0, logits.shape[-1], num_train).astype(np.int32)
    evaluation[key] = np.repeat(rng.integers(0, logits.shape[-1], num_eval_videos), views).astype(np.int32)
  evaluation["video_index"] = np.repeat(np.arange(num_eval_videos, dtype=np.int32), views)
  return train, evaluation, sorted(heads)


def one_step_source(cfg):
  """Sets `cfg` to train one step at a global batch of 16 (checkpointed, no evaluation during
  training) and returns (the in-memory source of its inputs, its heads)."""
  cfg.train.update(batch_size=16, total_steps=1, warmup_steps=0, log_every=1, eval_every=0,
                   ckpt_every=1)
  train, evaluation, heads = config_data(cfg, num_train=16)
  return InMemorySource(train, evaluation, global_batch=16, eval_batch_size=8), heads
