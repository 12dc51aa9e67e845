"""Evaluation: one pass over the eval split, per-view softmax on device, multi-view averaging on host.

The eval step's outputs and each batch's labels / video indices / masks stay on device until the
pass ends; then one all-gather per array brings the whole split to every process (not one blocking
gather per batch).

A head whose labels are all negative (an unlabelled split, e.g. a challenge's hidden test set,
built with label -1) gets no metrics; its predictions are still written.

Per-video predictions (`write_predictions`, process 0) go to the workdir through `etils.epath`
(so gs:// works), named by split and step:
  predictions_<split>_<step>.jsonl  one JSON object per video, in video order:
      {"id": "P01_101_0", "video_index": 0, "labels": {"verb": 3, "noun": 7},
       "top5": {"verb": [[class, probability], ... 5 pairs], "noun": [...]}}
      ("labels" holds only the heads the split has labels for)
  predictions_<split>_<step>.npz    the same videos' full view-averaged probability vectors:
      id [V] str, video_index [V] int64, prob_<head> [V, C] float32, label_<head> [V] int32
"""
from __future__ import annotations

import io
import json

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from ca2st_jax import config_lib
from ca2st_jax.train import mesh as mesh_lib
from ca2st_jax.train import metrics as metrics_lib

MODEL_INPUT_KEYS = ("video", "audio", "audio_times")
TOP_K = 5


def gather(x) -> np.ndarray:
  """Fully gathered numpy copy of a (possibly sharded, possibly multi-process) array."""
  if jax.process_count() > 1:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def labelled_heads(labels: dict, masks: np.ndarray) -> dict:
  """The heads whose labels are known (>= 0) for every real view; a head labelled for some views
  only is an error (a split is either annotated or hidden)."""
  out = {}
  for k, v in labels.items():
    known = np.asarray(v)[masks] >= 0
    if known.all():
      out[k] = v
    elif known.any():
      raise ValueError(f"eval labels of {k!r}: {int((~known).sum())} of {known.size} views have "
                       "no label (< 0); an eval split must be wholly labelled or wholly unlabelled")
  return out


def evaluate(eval_step, mesh, state, frozen, rest, source, *, with_map=False,
             return_outputs=False):
  """`eval_step(state, frozen, rest, batch) -> {head: softmax}` over `source.eval_iterator()`.

  Metrics need labels: on an unlabelled split the result is only {'num_videos': V}.
  """
  pieces = {}
  for host_batch in source.eval_iterator():
    batch = mesh_lib.global_batch({k: v for k, v in host_batch.items() if k in MODEL_INPUT_KEYS},
                                  mesh)
    if not pieces:
      mesh_lib.compile_then_sync(eval_step, state, frozen, rest, batch, name="eval step")
    out = eval_step(state, frozen, rest, batch)
    kept = ("video_index", "mask", *config_lib.LABEL_KEYS)
    meta = mesh_lib.global_batch({k: host_batch[k] for k in kept if k in host_batch}, mesh)
    for k, v in {**{f"prob_{k}": v for k, v in out.items()}, **meta}.items():
      pieces.setdefault(k, []).append(v)
  whole = {k: gather(jnp.concatenate(v)) for k, v in pieces.items()}
  probs = {k.removeprefix("prob_"): v for k, v in whole.items() if k.startswith("prob_")}
  vids, masks = whole["video_index"], whole["mask"].astype(bool)
  labels = labelled_heads({k: whole[k] for k in config_lib.LABEL_KEYS
                           if k in whole and k in probs}, masks)
  if labels:
    result = metrics_lib.compute_eval_metrics(probs, labels, vids, masks, with_map=with_map)
  else:
    result = {"num_videos": float(len(np.unique(vids[masks])))}
  if return_outputs:
    return result, (probs, labels, vids, masks)
  return result


def predictions_path(workdir, split: str, step: int, suffix: str) -> epath.Path:
  return epath.Path(workdir) / f"predictions_{split}_{int(step)}{suffix}"


def write_predictions(workdir, step, source, probs, labels, vids, masks) -> list[str]:
  """Per-video predictions of one eval pass (the module docstring's files); process 0 writes.

  Every process holds the gathered outputs, so only process 0 reads the ids and writes.
  """
  if jax.process_index() != 0:
    return []
  ids_index, vprobs, vlabels = metrics_lib.average_views(probs, labels, vids, masks)
  ids = source.example_ids(ids_index)
  split = source.eval_split
  lines = []
  for row, (vid, name) in enumerate(zip(ids_index, ids)):
    top = {}
    for head, p in vprobs.items():
      order = np.argsort(-p[row], kind="stable")[:TOP_K]
      top[head] = [[int(c), round(float(p[row, c]), 6)] for c in order]
    lines.append(json.dumps({"id": name, "video_index": int(vid),
                             "labels": {k: int(v[row]) for k, v in vlabels.items()},
                             f"top{TOP_K}": top}))
  jsonl = predictions_path(workdir, split, step, ".jsonl")
  jsonl.parent.mkdir(parents=True, exist_ok=True)
  jsonl.write_text("\n".join(lines) + "\n")
  arrays = {"id": np.asarray(ids, dtype=str), "video_index": ids_index.astype(np.int64)}
  arrays.update({f"prob_{k}": v.astype(np.float32) for k, v in vprobs.items()})
  arrays.update({f"label_{k}": v.astype(np.int32) for k, v in vlabels.items()})
  buf = io.BytesIO()  # object stores take whole objects; np.savez seeks in its file
  np.savez_compressed(buf, **arrays)
  npz = predictions_path(workdir, split, step, ".npz")
  npz.write_bytes(buf.getvalue())
  print(f"[eval] predictions of {len(ids)} videos: {jsonl} (+ .npz)", flush=True)
  return [str(jsonl), str(npz)]


def read_predictions(path) -> dict[str, np.ndarray]:
  """The arrays of a predictions_<split>_<step>.npz (local or gs://)."""
  with epath.Path(path).open("rb") as f:
    with np.load(io.BytesIO(f.read())) as z:
      return {k: z[k] for k in z.files}
