"""Smoke test of the real model through the trainer: configs/demo.py (tiny CA²ST) through the real
Grain pipeline on a tiny synthetic set, a few steps, then eval and the report. (The full demo run is
measured by hand; see the README.) Every paper config's :tiny variant loads with its recipe."""
import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from ca2st_jax.train import input as input_lib
from ca2st_jax.train import trainer


def _config(name, arg=None):
  path = os.path.join(os.path.dirname(__file__), "..", "configs", f"{name}.py")
  spec = importlib.util.spec_from_file_location(name, path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg) if arg else mod.get_config()


def test_demo_config_few_steps(tmp_path):
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  cfg = _config("demo")
  cfg.data.data_dir = str(tmp_path / "data")
  cfg.data.synthetic.update(num_train=16, num_test=8)
  cfg.data.update(eval_batch_size=8, num_workers=0)
  cfg.train.update(batch_size=8, total_steps=2, warmup_steps=1, log_every=1, eval_every=0,
                   ckpt_every=2)
  wd = str(tmp_path / "wd")
  one = jax.devices()[:1]  # the multi-device paths are covered by test_train_step/resume
  res = trainer.train_and_evaluate(cfg, wd, "train_and_eval", devices=one)
  assert res["num_videos"] == 8 and 0.0 <= res["top1"] <= 1.0
  lines = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
  assert [l["split"] for l in lines] == ["train", "train", "val"]
  from ca2st_jax.train import report
  assert os.path.exists(report.write_report(cfg, wd))


@pytest.mark.parametrize("name", ["cast_k400", "cast_ssv2", "cast_ek100", "cava_vggsound",
                                  "ca2st_vggsound", "cava_epic_sounds", "ca2st_ucf101",
                                  "ca2st_activitynet"])
def test_paper_config_recipes_resolve(name):
  from ca2st_jax.train import optim
  for arg in (None, "tiny"):
    cfg = _config(name, arg)
    steps = optim.steps_from_config(cfg.train, 240_000, cfg.train.batch_size)
    assert steps["total_steps"] > 0 and 0 <= steps["warmup_steps"] < steps["total_steps"]
    lr, _, _ = optim.scaled_lrs(cfg.optim, cfg.train.batch_size)
    assert lr > 0


# SPEC §9's table (the CAVA column for the audio-visual configs; ActivityNet has no published
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


def test_unknown_config_field_is_a_one_line_error(tmp_path):
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  r = subprocess.run([sys.executable, "-m", "ca2st_jax.main", "--config=configs/demo.py",
                      "--config.train.no_such_field=3", f"--workdir={tmp_path}"],
                     capture_output=True, text=True, timeout=300, cwd=root,
                     env=dict(os.environ, PYTHONPATH=root))
  assert r.returncode == 2
  assert r.stderr.strip() == ("error: --config.train.no_such_field: the config has no field "
                              "'no_such_field' (see the config file for its fields)"), r.stderr
  r = subprocess.run([sys.executable, "-m", "ca2st_jax.main", "--config=configs/demo.py",
                      "--config.data.batch_size=64", f"--workdir={tmp_path}"],
                     capture_output=True, text=True, timeout=300, cwd=root,
                     env=dict(os.environ, PYTHONPATH=root))
  assert r.returncode == 2
  assert r.stderr.strip().startswith("error: --config.data.batch_size: no longer a field: set "
                                     "config.train.batch_size"), r.stderr
