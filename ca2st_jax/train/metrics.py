"""Evaluation metrics, on host numpy after the per-view outputs are gathered.

Protocol: each eval view yields per-class softmax probabilities; the views of one video (same
`video_index`) are averaged (the reference's `merge`/`compute_video`: mean of per-view softmax); padded
rows (`mask == False`) are dropped first. Metrics are then computed per video:

  * top-1 / top-5 accuracy, mean class accuracy (mean over classes present of per-class recall);
  * EK100: verb, noun, and action accuracy two ways:
      - `action_*_ref`: the reference rule (engine_for_compomodel.compute_video): top-1 = argmax verb and
        argmax noun both right; top-5 = true verb in the verb top-5 AND true noun in the noun top-5;
      - `action_*`: the official EK100 scorer: score(v, n) = p_verb(v) p_noun(n) over the outer product of
        the top-100 verbs and top-100 nouns, ranked; top-k = the true (v, n) pair among the k best pairs;
  * EPIC-SOUNDS: mAP (mean over classes with a positive of average precision) and mAUC (mean over
    classes with positives and negatives of the ROC AUC), as sklearn's average_precision_score /
    roc_auc_score compute them per class.
All values are fractions in [0, 1] (the reference prints percentages).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
  x = np.asarray(x, np.float64)
  x = x - x.max(axis=axis, keepdims=True)
  e = np.exp(x)
  return e / e.sum(axis=axis, keepdims=True)


def average_views(probs: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
                  video_index: np.ndarray, mask: np.ndarray | None = None):
  """Mean of per-view probabilities per video.

  probs: {head: [N_views, C]}; labels: {name: [N_views]}; video_index: [N_views].
  Returns (video_ids [V] sorted, {head: [V, C]}, {name: [V]}). Labels must agree across a video's views.
  """
  video_index = np.asarray(video_index)
  keep = np.ones(len(video_index), bool) if mask is None else np.asarray(mask, bool)
  vid = video_index[keep]
  ids, inverse = np.unique(vid, return_inverse=True)
  counts = np.bincount(inverse, minlength=len(ids)).astype(np.float64)
  out_p = {}
  for k, p in probs.items():
    p = np.asarray(p, np.float64)[keep]
    s = np.zeros((len(ids), p.shape[-1]))
    np.add.at(s, inverse, p)
    out_p[k] = s / counts[:, None]
  out_l = {}
  for k, lab in labels.items():
    lab = np.asarray(lab)[keep]
    first = np.zeros(len(ids), lab.dtype)
    first[inverse[::-1]] = lab[::-1]  # first occurrence per video
    if np.any(first[inverse] != lab):
      raise ValueError(f"label {k!r} differs between views of one video")
    out_l[k] = first
  return ids, out_p, out_l


def topk_correct(probs: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
  """[N] bool: label among the k highest scores (ties broken towards the lower class index)."""
  probs = np.asarray(probs)
  order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
  return np.any(order == np.asarray(labels)[:, None], axis=-1)


def topk_accuracy(probs, labels, k: int = 1) -> float:
  return float(np.mean(topk_correct(probs, labels, k))) if len(labels) else float("nan")


def mean_class_accuracy(probs, labels, num_classes: int | None = None) -> float:
  """Mean over the classes that occur in `labels` of per-class top-1 recall."""
  labels = np.asarray(labels)
  correct = topk_correct(probs, labels, 1)
  classes = np.unique(labels)
  return float(np.mean([correct[labels == c].mean() for c in classes])) if len(classes) else float("nan")


def confusion_matrix(probs, labels, num_classes: int) -> np.ndarray:
  pred = np.argmax(np.asarray(probs), -1)
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (np.asarray(labels), pred), 1)
  return cm


def ek100_action_reference(verb_probs, noun_probs, verb, noun) -> dict[str, float]:
  """The reference's rule: top-1 = both argmaxes right; top-5 = both in their own top-5."""
  v1, n1 = topk_correct(verb_probs, verb, 1), topk_correct(noun_probs, noun, 1)
  v5, n5 = topk_correct(verb_probs, verb, 5), topk_correct(noun_probs, noun, 5)
  return {"action_top1_ref": float(np.mean(v1 & n1)), "action_top5_ref": float(np.mean(v5 & n5))}


def ek100_action_official(verb_probs, noun_probs, verb, noun, top_n: int = 100,
                          ks=(1, 5), chunk_size: int = 128) -> dict[str, float]:
  """EK100 challenge scoring: rank verb×noun pairs by p_v p_n over the top-`top_n` verbs and nouns.

  Videos are scored `chunk_size` at a time: the pair arrays are [videos, top_n²] (9,700 pairs at
  EK100's 97 verbs), ~0.4 MB per video for the scores, orders and pair ids, so all ~10k
  validation videos at once would need ~4-5 GB.
  """
  verb_probs, noun_probs = np.asarray(verb_probs, np.float64), np.asarray(noun_probs, np.float64)
  verb, noun = np.asarray(verb), np.asarray(noun)
  nv, nn = min(top_n, verb_probs.shape[1]), min(top_n, noun_probs.shape[1])
  kmax = max(ks)
  hits = []
  for lo in range(0, len(verb_probs), chunk_size):
    vp, np_ = verb_probs[lo:lo + chunk_size], noun_probs[lo:lo + chunk_size]
    top_v = np.argsort(-vp, axis=1, kind="stable")[:, :nv]
    top_n_ = np.argsort(-np_, axis=1, kind="stable")[:, :nn]
    sv = np.take_along_axis(vp, top_v, 1)
    sn = np.take_along_axis(np_, top_n_, 1)
    scores = (sv[:, :, None] * sn[:, None, :]).reshape(len(sv), -1)  # [chunk, nv*nn]
    order = np.argsort(-scores, axis=1, kind="stable")[:, :kmax]
    del scores
    # Pair p of the outer product is (top_v[p // nn], top_n_[p % nn]).
    pair_v = np.take_along_axis(top_v, order // nn, 1)
    pair_n = np.take_along_axis(top_n_, order % nn, 1)
    hits.append((pair_v == verb[lo:lo + chunk_size, None]) &
                (pair_n == noun[lo:lo + chunk_size, None]))
  hit = np.concatenate(hits) if hits else np.zeros((0, kmax), bool)
  return {f"action_top{k}": float(np.mean(hit[:, :k].any(1))) for k in ks}


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
  """sklearn.metrics.average_precision_score for one class (step-wise, ties grouped)."""
  scores = np.asarray(scores, np.float64)
  positives = np.asarray(positives, bool)
  npos = positives.sum()
  if npos == 0:
    return float("nan")
  order = np.argsort(-scores, kind="stable")
  s, y = scores[order], positives[order]
  # thresholds at distinct score values (ties count together, as sklearn does)
  distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
  tp = np.cumsum(y)[distinct]
  fp = (distinct + 1) - tp
  precision = tp / (tp + fp)
  recall = tp / npos
  prev_recall = np.r_[0.0, recall[:-1]]
  return float(np.sum((recall - prev_recall) * precision))


def roc_auc(scores: np.ndarray, positives: np.ndarray) -> float:
  """Area under the ROC curve (Mann–Whitney statistic, ties count 1/2)."""
  scores = np.asarray(scores, np.float64)
  positives = np.asarray(positives, bool)
  npos, nneg = positives.sum(), (~positives).sum()
  if npos == 0 or nneg == 0:
    return float("nan")
  order = np.argsort(scores, kind="stable")
  s = scores[order]
  ranks = np.empty(len(s))
  # average ranks for ties
  i = 0
  while i < len(s):
    j = i
    while j + 1 < len(s) and s[j + 1] == s[i]:
      j += 1
    ranks[i:j + 1] = (i + j) / 2 + 1
    i = j + 1
  r = np.empty(len(s))
  r[order] = ranks
  return float((r[positives].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def map_mauc(probs, labels) -> dict[str, float]:
  probs = np.asarray(probs)
  labels = np.asarray(labels)
  aps, aucs = [], []
  for c in range(probs.shape[1]):
    pos = labels == c
    if pos.any():
      aps.append(average_precision(probs[:, c], pos))
      if (~pos).any():
        aucs.append(roc_auc(probs[:, c], pos))
  return {"mAP": float(np.mean(aps)) if aps else float("nan"),
          "mAUC": float(np.mean(aucs)) if aucs else float("nan")}


def classification_metrics(probs, labels, *, with_map: bool = False) -> dict[str, float]:
  out = {"top1": topk_accuracy(probs, labels, 1), "top5": topk_accuracy(probs, labels, 5),
         "mean_class_acc": mean_class_accuracy(probs, labels)}
  if with_map:
    out.update(map_mauc(probs, labels))
  return out


def compute_eval_metrics(probs: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
                         video_index, mask=None, *, with_map: bool = False) -> dict[str, float]:
  """All metrics of one eval pass from gathered per-view outputs.

  Single-label heads: probs {'label': [N, C]}, labels {'label': [N]} -> top1, top5, mean_class_acc
  (+ mAP, mAUC). EK100: probs {'verb', 'noun'} -> verb_top1, ..., noun_top1, ..., action_top1/5
  (official) and action_top1_ref/top5_ref (reference rule), plus top1 = action_top1.
  """
  ids, vp, vl = average_views(probs, labels, video_index, mask)
  out: dict[str, float] = {"num_videos": float(len(ids))}
  if "verb" in vp and "noun" in vp:
    for head in ("verb", "noun"):
      for k, v in classification_metrics(vp[head], vl[head]).items():
        out[f"{head}_{k}"] = v
    out.update(ek100_action_official(vp["verb"], vp["noun"], vl["verb"], vl["noun"]))
    out.update(ek100_action_reference(vp["verb"], vp["noun"], vl["verb"], vl["noun"]))
    out["top1"] = out["action_top1"]
  else:
    (head,) = list(vp)
    out.update(classification_metrics(vp[head], vl[head], with_map=with_map))
  return out
