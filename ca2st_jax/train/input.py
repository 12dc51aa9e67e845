"""What the trainer needs from an input pipeline, and an in-memory source for tests.

A source has `num_train_examples` (or None), `train_iterator()` (an infinite iterator of per-host batch
dicts, see "Batch layout" in ca2st_jax/data/pipeline.py; if it has `get_state()`/`set_state()` — Grain's DatasetIterator does —
its position is checkpointed, else the trainer re-skips `step` batches on resume) and
`eval_iterator()` (a finite iterable of per-host eval batches with 'video_index' and 'mask').
`source_from_config` builds the real one: `ca2st_jax.data.pipeline.make_source` (Grain pipelines).
"""
from __future__ import annotations

import collections
import time
from typing import Iterator

import jax
import numpy as np

from ca2st_jax.train import mesh as mesh_lib


class DevicePrefetch:
  """Global batches on device, `size` ahead of the step that uses them (big_vision's prefetch).

  `wait_s` totals the time the loop spent waiting for the host pipeline (the share of step time
  lost to input); `data_state()` is the host iterator's position after the last batch handed
  out (not after the ones prefetched), for the checkpoint.
  """

  def __init__(self, host_iter, mesh, size: int = 2):
    self.host_iter, self.mesh, self.size = host_iter, mesh, size
    self.queue = collections.deque()
    self.wait_s = 0.0
    self.position = self._position()

  def _position(self):
    return self.host_iter.get_state() if hasattr(self.host_iter, "get_state") else {}

  def _fill(self):
    while len(self.queue) < self.size:
      t = time.perf_counter()
      host_batch = next(self.host_iter)
      self.wait_s += time.perf_counter() - t
      self.queue.append((mesh_lib.global_batch(host_batch, self.mesh), self._position()))

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    self._fill()
    batch, self.position = self.queue.popleft()
    self._fill()  # starts the next transfers while this step runs
    return batch

  def data_state(self) -> dict:
    return self.position


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


class InMemorySource:
  """Train/eval data held in numpy arrays (tests, and a fallback when no pipeline is configured).

  `train`: dict of arrays [N, ...]; `eval`: dict of arrays [M, ...] with 'video_index' (added as
  arange if missing); eval batches are padded to `eval_batch_size` with mask False.
  Each host reads its own contiguous slice of every global batch.
  """

  def __init__(self, train: dict, eval: dict | None, *, global_batch: int, eval_batch_size: int,
               seed: int = 0):
    self.train, self.eval = train, eval
    self.global_batch, self.eval_batch_size, self.seed = global_batch, eval_batch_size, seed
    self.num_train_examples = len(next(iter(train.values())))

  def _host_slice(self, batch, size):
    n, i = jax.process_count(), jax.process_index()
    per = size // n
    return {k: v[i * per:(i + 1) * per] for k, v in batch.items()}

  def train_iterator(self) -> Iterator[dict]:
    it = ArrayIterator(self.train, self.global_batch, self.seed)
    source = self

    class HostIterator:
      def __iter__(self):
        return self

      def __next__(self):
        return source._host_slice(next(it), source.global_batch)

      get_state, set_state = it.get_state, it.set_state

    return HostIterator()

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


DATA_SOURCE_TIMEOUT_S = 3 * 3600  # how long the other processes wait for process 0 to open it


def source_from_config(config):
  """The data pipeline for config.data (ca2st_jax.data.pipeline.make_source).

  With several processes, process 0 opens it first (opening may build the synthetic set), the
  others once it has.
  """
  from ca2st_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return pipeline.make_source(config)
  # The coordination service's barrier, not a device collective: those give up after 30 s, and
  # building the synthetic set takes minutes.
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  source = pipeline.make_source(config) if jax.process_index() == 0 else None
  distributed.global_state.client.wait_at_barrier("ca2st_data_source_opened",
                                                  timeout_in_ms=DATA_SOURCE_TIMEOUT_S * 1000)
  return source or pipeline.make_source(config)
