"""Per-video predictions of every eval: the files agree with the metrics printed."""
import json
import os

import numpy as np
import pytest

import toy
from ca2st_jax.train import evaluate as evaluate_lib
from ca2st_jax.train import metrics as metrics_lib
from ca2st_jax.train import trainer
from sources import InMemorySource


def _source(cfg, ev_update=None, **kw):
  train, ev = toy.data(**kw)
  ev["id"] = np.asarray([f"clip_{i:03d}" for i in ev["video_index"]])
  ev.update(ev_update or {})
  return InMemorySource(train, ev, global_batch=cfg.train.batch_size,
                                  eval_batch_size=cfg.data.eval_batch_size)


def _lines(path):
  return [json.loads(l) for l in open(path) if l.strip()]


@pytest.mark.slow
def test_predictions_of_each_eval_average_to_the_printed_metrics(tmp_path, capsys):
  cfg = toy.config(total_steps=4, eval_every=2, log_every=2)
  cfg.eval.write_predictions = True
  wd = str(tmp_path)
  res = trainer.train_and_evaluate(cfg, wd, "train_and_eval", source=_source(cfg),
                                   model_lib=toy.LIB)
  assert sorted(f for f in os.listdir(wd) if f.startswith("predictions_")) == [
      "predictions_eval_2.jsonl", "predictions_eval_2.npz",
      "predictions_eval_4.jsonl", "predictions_eval_4.npz"]
  printed = [l for l in capsys.readouterr().out.splitlines() if l.startswith("[eval] step 4:")]
  top1_printed = float(printed[0].split(" top1 ")[1].split()[0])
  val = [l for l in _lines(os.path.join(wd, "metrics.jsonl")) if l["split"] == "val"]
  for line in val:
    arr = evaluate_lib.read_predictions(os.path.join(wd, f"predictions_eval_{line['step']}.npz"))
    # 10 videos, two views each: one row per video
    assert arr["prob_label"].shape == (10, 5) and list(arr["video_index"]) == list(range(10))
    assert list(arr["id"]) == [f"clip_{i:03d}" for i in range(10)]
    np.testing.assert_allclose(arr["prob_label"].sum(1), 1.0, rtol=1e-5)
    top1 = np.mean(np.argmax(arr["prob_label"], 1) == arr["label_label"])
    assert top1 == pytest.approx(line["top1"], abs=1e-9)
    assert metrics_lib.topk_accuracy(arr["prob_label"], arr["label_label"], 5) == pytest.approx(
        line["top5"])
    recs = _lines(os.path.join(wd, f"predictions_eval_{line['step']}.jsonl"))
    assert [r["id"] for r in recs] == list(arr["id"])
    for r, p, y in zip(recs, arr["prob_label"], arr["label_label"]):
      assert r["labels"] == {"label": int(y)}
      assert [c for c, _ in r["top5"]["label"]] == list(np.argsort(-p, kind="stable")[:5])
      assert r["top5"]["label"][0][1] == pytest.approx(float(p.max()), abs=1e-6)
  assert val[-1]["top1"] == pytest.approx(res["top1"]) == pytest.approx(top1_printed, abs=1e-4)

  # --mode=eval always writes them (here: over the step-4 files, same values)
  again = trainer.train_and_evaluate(cfg, wd, "eval", source=_source(cfg), model_lib=toy.LIB)
  assert again["top1"] == pytest.approx(res["top1"])
  arr = evaluate_lib.read_predictions(os.path.join(wd, "predictions_eval_4.npz"))
  assert np.mean(np.argmax(arr["prob_label"], 1) == arr["label_label"]) == pytest.approx(
      again["top1"])


@pytest.mark.slow
def test_compositional_heads_recomputed_from_the_file(tmp_path):
  cfg = toy.config(total_steps=2)
  cfg.model.compositional = True
  wd = str(tmp_path)
  res = trainer.train_and_evaluate(cfg, wd, "train_and_eval", source=_source(cfg, compositional=True),
                                   model_lib=toy.LIB)
  # config.eval.write_predictions is off: the eval of training wrote none
  assert not [f for f in os.listdir(wd) if f.startswith("predictions_")]
  trainer.train_and_evaluate(cfg, wd, "eval", source=_source(cfg, compositional=True),
                             model_lib=toy.LIB)
  arr = evaluate_lib.read_predictions(os.path.join(wd, "predictions_eval_2.npz"))
  assert arr["prob_verb"].shape == (10, 3) and arr["prob_noun"].shape == (10, 4)
  for head in ("verb", "noun"):
    top1 = np.mean(np.argmax(arr[f"prob_{head}"], 1) == arr[f"label_{head}"])
    assert top1 == pytest.approx(res[f"{head}_top1"])
  official = metrics_lib.ek100_action_official(arr["prob_verb"], arr["prob_noun"],
                                               arr["label_verb"], arr["label_noun"])
  assert official["action_top1"] == pytest.approx(res["action_top1"])


@pytest.mark.slow
def test_unlabelled_eval_split_gives_predictions_only(tmp_path, capsys):
  cfg = toy.config(total_steps=2)
  wd = str(tmp_path)
  trainer.train_and_evaluate(cfg, wd, "train", source=_source(cfg), model_lib=toy.LIB)
  _, ev = toy.data()
  hidden = _source(cfg, ev_update={"label": np.full(len(ev["label"]), -1, np.int32)})
  res = trainer.train_and_evaluate(cfg, wd, "eval", source=hidden, model_lib=toy.LIB)
  assert res == {"num_videos": 10.0}
  assert "[eval] step 2: num_videos 10.0000" in capsys.readouterr().out
  arr = evaluate_lib.read_predictions(os.path.join(wd, "predictions_eval_2.npz"))
  assert sorted(arr) == ["id", "prob_label", "video_index"]
  recs = _lines(os.path.join(wd, "predictions_eval_2.jsonl"))
  assert len(recs) == 10 and all(r["labels"] == {} for r in recs)
  assert not os.path.exists(os.path.join(wd, "confusion_matrix.npy"))


def test_partly_labelled_eval_split_is_refused():
  mask = np.ones(6, bool)
  labels = {"label": np.asarray([0, 1, -1, 2, 0, 1])}
  with pytest.raises(ValueError, match="wholly labelled or wholly unlabelled"):
    evaluate_lib.labelled_heads(labels, mask)
  mask[2] = False  # a padded row's label does not count
  assert evaluate_lib.labelled_heads(labels, mask) == labels
  assert evaluate_lib.labelled_heads({"label": -np.ones(6, int)}, mask) == {}
