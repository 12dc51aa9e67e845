"""Metric tests on hand-built probabilities with hand-computed expected values."""
import numpy as np
import pytest

from ca2st_jax.train import metrics


def test_multiview_average_and_topk():
  # video 7: views [.6 .3 .1] and [.0 .3 .7] -> mean [.3 .3 .4] -> argmax 2 (label 2: correct)
  # video 3: one view [.2 .5 .3] -> argmax 1 (label 0: wrong; top-2 would be classes 1, 2)
  # padded row (mask False) must be ignored although it would flip video 3.
  probs = np.array([[.6, .3, .1], [.2, .5, .3], [.0, .3, .7], [1., 0., 0.]])
  vid = np.array([7, 3, 7, 3])
  lab = np.array([2, 0, 2, 0])
  mask = np.array([True, True, True, False])
  ids, p, l = metrics.average_views({"label": probs}, {"label": lab}, vid, mask)
  np.testing.assert_array_equal(ids, [3, 7])
  np.testing.assert_allclose(p["label"], [[.2, .5, .3], [.3, .3, .4]])
  np.testing.assert_array_equal(l["label"], [0, 2])
  out = metrics.compute_eval_metrics({"label": probs}, {"label": lab}, vid, mask)
  assert out["num_videos"] == 2
  assert out["top1"] == pytest.approx(0.5)
  # without the mask, the padded view makes video 3 mean [.6 .25 .15] -> correct
  out_nomask = metrics.compute_eval_metrics({"label": probs}, {"label": lab}, vid)
  assert out_nomask["top1"] == pytest.approx(1.0)


def test_top5_and_mean_class_accuracy():
  p = np.array([
      [.50, .20, .10, .08, .06, .04, .02],  # label 6: rank 7 -> wrong @5
      [.50, .20, .10, .08, .06, .04, .02],  # label 4: rank 5 -> right @5, wrong @1
      [.50, .20, .10, .08, .06, .04, .02],  # label 0: right @1
      [.02, .50, .20, .10, .08, .06, .04],  # label 1: right @1
  ])
  y = np.array([6, 4, 0, 1])
  assert metrics.topk_accuracy(p, y, 1) == pytest.approx(0.5)
  assert metrics.topk_accuracy(p, y, 5) == pytest.approx(0.75)
  # per-class recall: class 6: 0, 4: 0, 0: 1, 1: 1 -> 0.5; unbalanced case below
  assert metrics.mean_class_accuracy(p, y) == pytest.approx(0.5)
  p2 = np.eye(3)[[0, 0, 0, 1]]
  y2 = np.array([0, 0, 0, 2])  # class 0 recall 1, class 2 recall 0 -> 0.5 (plain accuracy 0.75)
  assert metrics.mean_class_accuracy(p2, y2) == pytest.approx(0.5)
  assert metrics.topk_accuracy(p2, y2, 1) == pytest.approx(0.75)


def test_ek100_action_both_rules():
  # 2 videos, 3 verbs, 3 nouns.
  verb = np.array([[.5, .4, .1], [.1, .3, .6]])
  noun = np.array([[.45, .55, .0], [.2, .7, .1]])
  v, n = np.array([0, 1]), np.array([0, 1])
  ref = metrics.ek100_action_reference(verb, noun, v, n)
  # video 0: argmax verb 0 (right), argmax noun 1 (wrong) -> 0; video 1: verb argmax 2 (wrong) -> 0
  assert ref["action_top1_ref"] == pytest.approx(0.0)
  # top-5 with 3 classes: everything is in top-5 -> 1
  assert ref["action_top5_ref"] == pytest.approx(1.0)
  off = metrics.ek100_action_official(verb, noun, v, n, ks=(1, 2, 3))
  # video 0 pair scores: (0,1)=.275 (0,0)=.225 (1,1)=.22 (1,0)=.18 ...: true (0,0) ranks 2nd
  # video 1: (2,1)=.42 (1,1)=.21 ...: true (1,1) ranks 2nd
  assert off["action_top1"] == pytest.approx(0.0)
  assert off["action_top2"] == pytest.approx(1.0)
  # top_n=1 keeps only the best verb and noun: pairs (0,1) and (2,1) -> neither true pair present
  off1 = metrics.ek100_action_official(verb, noun, v, n, top_n=1, ks=(1,))
  assert off1["action_top1"] == pytest.approx(0.0)
  out = metrics.compute_eval_metrics({"verb": verb, "noun": noun}, {"verb": v, "noun": n},
                                     np.array([0, 1]))
  assert out["verb_top1"] == pytest.approx(0.5) and out["noun_top1"] == pytest.approx(0.5)
  assert out["top1"] == out["action_top1"]


def test_map_and_mauc():
  # class 0 scores over 4 samples, positives are samples 0 and 2.
  s = np.array([.9, .8, .7, .1])
  pos = np.array([True, False, True, False])
  # ranking: +, -, +, -: precision at the positives 1/1, 2/3 -> AP = (1 + 2/3)/2
  assert metrics.average_precision(s, pos) == pytest.approx((1 + 2 / 3) / 2)
  # AUC: pairs (pos, neg): (.9,.8) (.9,.1) (.7,.8)x (.7,.1) -> 3/4
  assert metrics.roc_auc(s, pos) == pytest.approx(0.75)
  # ties: one positive tied with one negative counts 1/2
  assert metrics.roc_auc(np.array([.5, .5]), np.array([True, False])) == pytest.approx(0.5)
  assert metrics.average_precision(np.array([.5, .5]), np.array([True, False])) == pytest.approx(0.5)
  probs = np.array([[.9, .1], [.8, .2], [.7, .3], [.1, .9]])
  labels = np.array([0, 1, 0, 1])
  # class 0 as above: AP 5/6, AUC 3/4; class 1 scores [.1 .2 .3 .9], positives 1, 3:
  # ranking: 3(+) 2(-) 1(+) 0(-): AP (1 + 2/3)/2 = 5/6, AUC 3/4
  out = metrics.map_mauc(probs, labels)
  assert out["mAP"] == pytest.approx(5 / 6)
  assert out["mAUC"] == pytest.approx(0.75)


def test_inconsistent_labels_raise():
  with pytest.raises(ValueError, match="differs"):
    metrics.average_views({"label": np.ones((2, 2))}, {"label": np.array([0, 1])}, np.array([0, 0]))


def _official_unchunked(verb_probs, noun_probs, verb, noun, top_n, ks):
  """The scorer over all videos at once (the [N, top_n²] arrays), as a reference."""
  top_v = np.argsort(-verb_probs, axis=1, kind="stable")[:, :top_n]
  top_n_ = np.argsort(-noun_probs, axis=1, kind="stable")[:, :top_n]
  sv, sn = np.take_along_axis(verb_probs, top_v, 1), np.take_along_axis(noun_probs, top_n_, 1)
  scores = (sv[:, :, None] * sn[:, None, :]).reshape(len(sv), -1)
  pair_v, pair_n = np.repeat(top_v, top_n, axis=1), np.tile(top_n_, (1, top_n))
  order = np.argsort(-scores, axis=1, kind="stable")
  hit = (np.take_along_axis(pair_v, order, 1) == verb[:, None]) & (
      np.take_along_axis(pair_n, order, 1) == noun[:, None])
  return {f"action_top{k}": float(np.mean(hit[:, :k].any(1))) for k in ks}


def test_ek100_official_chunked_equals_unchunked():
  rng = np.random.default_rng(0)
  n = 60
  verb = metrics.softmax(rng.normal(size=(n, 97)) * 3)
  noun = metrics.softmax(rng.normal(size=(n, 300)) * 3)
  # True labels among each video's 4 best classes: the true pair lands at many ranks.
  pick = lambda p: np.argsort(-p, 1)[np.arange(n), rng.integers(0, 4, n)]
  v, nn = pick(verb), pick(noun)
  noun[:4, :3] = noun[:4, :1]   # ties: the stable order must not depend on the chunking
  ks = (1, 5, 10, 50)
  want = _official_unchunked(verb, noun, v, nn, 100, ks)
  assert 0 < want["action_top1"] < want["action_top50"] < 1
  for chunk in (1, 7, n, 1000):
    assert metrics.ek100_action_official(verb, noun, v, nn, ks=ks, chunk_size=chunk) == want


def test_ek100_official_memory_is_bounded():
  import tracemalloc  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(1)
  n = 800   # unchunked: [800, 9700] scores, orders and pair ids, ~300 MB
  verb = rng.random((n, 97))
  noun = rng.random((n, 300))
  labels = rng.integers(0, 97, n), rng.integers(0, 300, n)
  tracemalloc.start()
  try:
    metrics.ek100_action_official(verb, noun, *labels)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert peak < 80 * 2**20, peak
