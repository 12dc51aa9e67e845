"""What the trainer needs from an input pipeline, and the device prefetch of its batches.

A source has
  num_train_examples       the size of the train split (the epoch-based schedule needs it);
  num_classes()            {label key: class count} to check the model's heads against;
  class_names()            {label key: names}, recorded beside the checkpoints ({} when unknown);
  train_iterator()         an infinite iterator of per-host batch dicts (see "Batch layout" in
                           ca2st_jax/data/pipeline.py) with get_state() / set_state(), its
                           position, which every checkpoint saves (Grain's DatasetIterator);
  eval_iterator()          a finite iterable of per-host eval batches with 'video_index', 'mask';
  eval_split               the eval split's name (it names the per-video prediction files);
  example_ids(index)       the eval split's example ids (narration_id, clip name) of these
                           video indices, for the per-video predictions.
`source_from_config` builds the real one: `ca2st_jax.data.pipeline.make_source` (Grain pipelines).
"""
from __future__ import annotations

import collections
import time

import jax

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
    self.position = host_iter.get_state()

  def _fill(self):
    while len(self.queue) < self.size:
      t = time.perf_counter()
      host_batch = next(self.host_iter)
      self.wait_s += time.perf_counter() - t
      self.queue.append((mesh_lib.global_batch(host_batch, self.mesh), self.host_iter.get_state()))

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    self._fill()
    batch, self.position = self.queue.popleft()
    self._fill()  # starts the next transfers while this step runs
    return batch

  def data_state(self) -> dict:
    return self.position


DATA_SOURCE_TIMEOUT_S = 3 * 3600  # how long the other processes wait for process 0 to open it


def source_from_config(config):
  """The data pipeline for config.data (ca2st_jax.data.pipeline.make_source).

  With several processes, process 0 opens it first (opening may build the synthetic set), the
  others once it has.
  """
  from ca2st_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return pipeline.make_source(config)
  source = pipeline.make_source(config) if jax.process_index() == 0 else None
  mesh_lib.barrier("data source opened", timeout_s=DATA_SOURCE_TIMEOUT_S)
  return source or pipeline.make_source(config)
