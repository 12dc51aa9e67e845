"""Evaluation: one pass over the eval split, per-view softmax on device, multi-view averaging on host.

The eval step's outputs and each batch's labels / video indices / masks stay on device until the
pass ends; then one all-gather per array brings the whole split to every process (not one blocking
gather per batch).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from ca2st_jax.train import mesh as mesh_lib
from ca2st_jax.train import metrics as metrics_lib
from ca2st_jax.train.losses import LABEL_KEYS

MODEL_INPUT_KEYS = ("video", "audio", "audio_times")


def gather(x) -> np.ndarray:
  """Fully gathered numpy copy of a (possibly sharded, possibly multi-process) array."""
  if jax.process_count() > 1:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def evaluate(eval_step, mesh, state, frozen, rest, source, *, with_map=False,
             return_outputs=False):
  """`eval_step(state, frozen, rest, batch) -> {head: softmax}` over `source.eval_iterator()`."""
  pieces = {}
  for host_batch in source.eval_iterator():
    batch = mesh_lib.global_batch({k: v for k, v in host_batch.items() if k in MODEL_INPUT_KEYS},
                                  mesh)
    if not pieces:
      mesh_lib.compile_then_sync(eval_step, state, frozen, rest, batch, name="eval step")
    out = eval_step(state, frozen, rest, batch)
    meta = mesh_lib.global_batch({k: host_batch[k] for k in ("video_index", "mask", *LABEL_KEYS)
                                  if k in host_batch}, mesh)
    for k, v in {**{f"prob_{k}": v for k, v in out.items()}, **meta}.items():
      pieces.setdefault(k, []).append(v)
  whole = {k: gather(jnp.concatenate(v)) for k, v in pieces.items()}
  probs = {k.removeprefix("prob_"): v for k, v in whole.items() if k.startswith("prob_")}
  labels = {k: whole[k] for k in LABEL_KEYS if k in whole and k in probs}
  vids, masks = whole["video_index"], whole["mask"].astype(bool)
  result = metrics_lib.compute_eval_metrics(probs, labels, vids, masks, with_map=with_map)
  if return_outputs:
    return result, (probs, labels, vids, masks)
  return result
