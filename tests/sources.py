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
