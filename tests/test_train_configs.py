"""The paper configs: their recipes' step counts and learning rates are the paper's, and their :tiny
variants train and evaluate through the real trainer on the simulated mesh."""
import glob
import json
import os

import jax
import numpy as np
import pytest

from ca2st_jax import config_lib
from ca2st_jax.train import trainer
from sources import one_step_source

# Its module fixtures run once, on one worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("test_train_configs")


CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


from tests_helpers import load_config as _config


# On 240,000 training videos: 240_000 // batch steps per epoch; lr and min_lr scaled by batch / 256
# (CAST: 1e-3 and 1e-6 at 576 -> 2.25e-3; the audio-visual recipe: 5e-4 at 12 -> 2.34375e-5).
# :tiny runs 2 steps (1 of warm-up) at batch 2.
@pytest.mark.parametrize("name,arg,total_steps,warmup_steps,lr,min_lr", [
    ("cast_k400", None, 29_120, 2_080, 2.25e-3, 2.25e-6),             # 416 steps x 70 / 5 epochs
    ("cast_ssv2", None, 31_250, 3_125, 1.5e-3, 1.5e-6),               # 625 x 50 / 5
    ("cast_ek100", None, 31_250, 3_125, 1.5e-3, 1.5e-6),
    ("cava_vggsound", None, 1_000_000, 100_000, 2.34375e-5, 4.6875e-8),  # 20,000 x 50 / 5
    ("ca2st_vggsound", None, 1_000_000, 100_000, 2.34375e-5, 4.6875e-8),
    ("cava_epic_sounds", None, 1_000_000, 100_000, 2.34375e-5, 4.6875e-8),
    ("ca2st_ucf101", None, 1_000_000, 100_000, 2.34375e-5, 4.6875e-8),
    ("ca2st_activitynet", None, 1_000_000, 100_000, 2.34375e-5, 4.6875e-8),
    ("cast_k400", "tiny", 2, 1, 7.8125e-6, 7.8125e-9),
    ("cast_ek100", "tiny", 2, 1, 7.8125e-6, 7.8125e-9),
    ("ca2st_vggsound", "tiny", 2, 1, 3.90625e-6, 7.8125e-9),
    ("ca2st_activitynet", "tiny", 2, 1, 3.90625e-6, 7.8125e-9),
])
def test_paper_config_recipe_steps_and_learning_rates(name, arg, total_steps, warmup_steps, lr,
                                                      min_lr):
  from ca2st_jax.train import optim
  cfg = _config(name, arg)
  steps = optim.steps_from_config(cfg.train, 240_000, cfg.train.batch_size)
  assert (steps["total_steps"], steps["warmup_steps"]) == (total_steps, warmup_steps)
  assert optim.scaled_lrs(cfg.optim, cfg.train.batch_size) == pytest.approx((lr, min_lr, 0.0),
                                                                             rel=1e-12)


# The paper recipes (the CAVA column for the audio-visual configs; ActivityNet has no published
# recipe and takes that one, see its docstring).
@pytest.mark.parametrize("name,batch,epochs,drop_path,mixup_prob,lr,layer_decay", [
    ("cast_k400", 576, 70, 0.2, 0.5, 1e-3, 0.75),
    ("cast_ssv2", 384, 50, 0.3, 0.9, 1e-3, 0.75),
    ("cast_ek100", 384, 50, 0.2, 0.9, 1e-3, 0.75),
    ("cava_vggsound", 12, 50, 0.2, 0.9, 5e-4, 0.8),
    ("ca2st_activitynet", 12, 50, 0.2, 0.9, 5e-4, 0.8),
])
def test_paper_recipes_are_spec_section_9(name, batch, epochs, drop_path, mixup_prob, lr,
                                          layer_decay):
  cfg = _config(name)
  assert (cfg.train.batch_size, cfg.train.total_epochs, cfg.train.warmup_epochs) == (batch, epochs, 5)
  assert (cfg.model.drop_path, cfg.train.mixup_prob, cfg.train.mixup_alpha) == (drop_path, mixup_prob, 0.8)
  assert (cfg.optim.lr, cfg.optim.layer_decay, cfg.optim.min_lr) == (lr, layer_decay, 1e-6)
  assert (cfg.optim.weight_decay, cfg.train.label_smoothing) == (0.05, 0.1)
  assert _config(name, "tiny").train.batch_size == 2


def test_nonpositive_total_steps_refused():
  from ca2st_jax.train import optim
  import ml_collections
  with pytest.raises(ValueError, match=r"config.train.total_steps=-5: a run needs at least one step"):
    optim.steps_from_config(ml_collections.ConfigDict(dict(total_steps=-5)), None, 8)


# Every configs/<model>_<data set>.py (configs/<data set>.py with a model is the same config:
# tests/test_configs.py).
PAPER_CONFIGS = sorted(n for n in (os.path.basename(p)[:-3] for p in glob.glob(f"{CONFIGS}/*.py"))
                       if n.split("_")[0] in ("cast", "cava", "ca2st"))
# With in-memory inputs and 5-class heads, a config's trainer run depends on its model, whether it
# has audio, its eval metrics and its initialisation; the recipe's numbers (learning rate, drop
# path, mixup probability, epochs) change values, not what runs. One config per such structure
# trains here; ca2st_ek100 trains on a built EK100 set in test_compositional_av, demo on the
# synthetic set in test_cli_report.
TRAINED = ("ca2st_epic_sounds", "ca2st_vggsound", "cast_ek100", "cast_k400", "cava_ek100",
           "cava_epic_sounds", "cava_vggsound")
ELSEWHERE = ("ca2st_ek100",)


def _structure(name):
  cfg = _config(name, "tiny")
  return (cfg.model.name, cfg.data.get("audio", True), cfg.get("eval", {}).get("with_map", False),
          cfg.init.get("ast_pos_mode"))


def test_every_paper_config_has_the_structure_of_one_that_trains():
  trained = {_structure(n): n for n in TRAINED + ELSEWHERE}
  assert len(trained) == len(TRAINED + ELSEWHERE)  # no two trained configs alike
  for name in PAPER_CONFIGS:
    assert _structure(name) in trained, name


@pytest.mark.slow
@pytest.mark.parametrize("name", TRAINED)
def test_config_tiny_trains_and_evaluates_on_the_mesh(name, tmp_path):
  """configs/<name>.py at :tiny through the real trainer on the 8 simulated devices: one train
  step, its checkpoint, one eval pass (4 videos x 2 views in one eval batch). The config's
  :tiny global batch (2) does not split over 8 devices: it runs at 16 (mixup pairs clips within a
  device, so each holds two), in-memory inputs."""
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  cfg = _config(name, "tiny")
  # Heads of 5 classes: class counts change only the head's width (tools.summary's tests count
  # the real ones), and equal widths let configs of one family share their compiled steps.
  for field in ("num_classes", "num_verbs", "num_nouns"):
    if field in cfg.model:
      cfg.model[field] = 5
  source, heads = one_step_source(cfg)
  wd = str(tmp_path / "wd")
  res = trainer.train_and_evaluate(cfg, wd, "train_and_eval", source=source)
  assert jax.device_count() == 8
  lines = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
  assert [(l["split"], l["step"]) for l in lines] == [("train", 1), ("val", 1)]
  assert np.isfinite(lines[0]["loss"]) and lines[0]["loss"] > 0
  assert res["num_videos"] == 4
  firsts = ["verb_top1", "noun_top1", "action_top1"] if heads == ["noun", "verb"] else ["top1"]
  for key in firsts:  # per-video hits of 4 videos
    assert res[key] * 4 == pytest.approx(round(res[key] * 4)), (key, res[key])
  if cfg.get("eval", {}).get("with_map", False):
    assert "mAP" in res
  assert os.path.isdir(os.path.join(wd, "ckpt", "1"))
