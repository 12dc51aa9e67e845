"""The loop: SIGTERM → save → resume is bit-identical; --mode=eval reproduces; guard rails."""
import json
import os
import shutil
import signal

import jax
import numpy as np
import pytest

import toy
from ca2st_jax.checkpoints import orbax as orbax_ckpt
from ca2st_jax.train import trainer
from sources import InMemorySource

# Its module fixtures run once, on one worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("test_train_resume")


STEPS = 6


def _source(cfg, **kw):
  train, ev = toy.data(**kw)
  return InMemorySource(train, ev, global_batch=cfg.train.batch_size,
                        eval_batch_size=cfg.data.eval_batch_size)


def _params(workdir, cfg):
  setup = trainer.build_setup(cfg, model_lib=toy.LIB)
  ck = trainer.checkpointer(cfg, workdir, setup)
  state, _, _, _ = ck.restore()
  ck.close()
  return orbax_ckpt.flatten(jax.device_get(state))


def _cfg():
  cfg = toy.config(total_steps=STEPS, ckpt_every=2, log_every=2, eval_every=3)
  cfg.mesh.update(data=2, fsdp=4)
  return cfg


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("full"))
  cfg = _cfg()
  res = trainer.train_and_evaluate(cfg, wd, "train_and_eval", source=_source(cfg), model_lib=toy.LIB)
  return wd, cfg, res


def test_sigterm_then_resume_is_bit_identical(uninterrupted, tmp_path):
  full_wd, cfg, full_res = uninterrupted
  wd = str(tmp_path)

  def hook(step):
    if step == 3:
      os.kill(os.getpid(), signal.SIGTERM)

  out = trainer.train_and_evaluate(cfg, wd, "train_and_eval", source=_source(cfg),
                                   model_lib=toy.LIB, step_hook=hook)
  assert out == {"preempted": True, "step": 3}
  assert sorted(int(d) for d in os.listdir(os.path.join(wd, "ckpt")) if d.isdigit())[-1] == 3
  res = trainer.train_and_evaluate(cfg, wd, "train_and_eval", source=_source(cfg), model_lib=toy.LIB)
  a, b = _params(wd, cfg), _params(full_wd, cfg)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert res["top1"] == pytest.approx(full_res["top1"])


def test_eval_mode_reproduces_final_eval(uninterrupted):
  wd, cfg, res = uninterrupted
  # restore onto a different mesh shape: (2,4) checkpoint evaluated on (8,1) and on 1 device
  cfg_other_mesh = _cfg()
  cfg_other_mesh.mesh.update(data=8, fsdp=1)
  again = trainer.train_and_evaluate(cfg_other_mesh, wd, "eval", source=_source(cfg),
                                     model_lib=toy.LIB)
  for k, v in res.items():
    assert again[k] == pytest.approx(v, abs=1e-6), k
  p8 = _params(wd, cfg_other_mesh)
  cfg_other_mesh.mesh.update(data=1)
  p1 = trainer.build_setup(cfg_other_mesh, model_lib=toy.LIB, devices=jax.devices()[:1])
  ck = trainer.checkpointer(cfg, wd, p1)
  state1 = orbax_ckpt.flatten(jax.device_get(ck.restore()[0]))
  ck.close()
  for k in p8:
    np.testing.assert_array_equal(p8[k], state1[k], err_msg=k)
  lines = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
  train_lines = [l for l in lines if l["split"] == "train"]
  val_lines = [l for l in lines if l["split"] == "val"]
  assert [l["step"] for l in train_lines] == [2, 4, 6]
  assert {"loss", "lr", "clips_per_s"} <= set(train_lines[0])
  assert [l["step"] for l in val_lines] == [3, 6, 6]  # eval at 3, final, then --mode=eval
  assert val_lines[-1]["top1"] == pytest.approx(res["top1"])
  assert os.path.isdir(os.path.join(wd, "best"))
  assert os.path.exists(os.path.join(wd, "tb"))


def test_workdir_of_other_config_refused(uninterrupted):
  wd, cfg, _ = uninterrupted
  other = _cfg()
  other.model.width = 32
  with pytest.raises(ValueError, match=r"config.model.width"):
    trainer.train_and_evaluate(other, wd, "eval", source=_source(other), model_lib=toy.LIB)


def test_nonfinite_loss_stops_with_message(tmp_path):
  cfg = toy.config(total_steps=4, ckpt_every=1, log_every=1)
  src = _source(cfg, audio=True)
  src.train["audio"][:] = np.nan
  # keep step 1 finite: the first global batch comes from the epoch-0 permutation; poison all rows
  with pytest.raises(trainer.NonFiniteLossError, match="non-finite loss"):
    trainer.train_and_evaluate(cfg, str(tmp_path), "train", source=src, model_lib=toy.LIB)


def test_unreadable_latest_checkpoint_falls_back_to_newest_good_step(uninterrupted, tmp_path):
  full_wd, cfg, full_res = uninterrupted
  wd = str(tmp_path / "wd")
  shutil.copytree(full_wd, wd)
  steps = sorted(int(d) for d in os.listdir(os.path.join(wd, "ckpt")) if d.isdigit())
  assert steps == [4, 6]
  for root, _, files in os.walk(os.path.join(wd, "ckpt", "6", "state")):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"not a checkpoint")
  # With no older step to fall back to, the error names the unreadable one.
  only_6 = str(tmp_path / "only_6")
  shutil.copytree(wd, only_6)
  shutil.rmtree(os.path.join(only_6, "ckpt", "4"))
  with pytest.raises(orbax_ckpt.CheckpointError, match=r"checkpoint step 6 \(.*ckpt/6\) cannot"):
    trainer.train_and_evaluate(cfg, only_6, "train_and_eval", source=_source(cfg),
                               model_lib=toy.LIB)
  res = trainer.train_and_evaluate(cfg, wd, "train_and_eval", source=_source(cfg),
                                   model_lib=toy.LIB)
  a, b = _params(wd, cfg), _params(full_wd, cfg)  # step 6 again, trained from step 4
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert res["top1"] == pytest.approx(full_res["top1"])


def test_class_count_checked_and_config_written_only_once_data_opened(tmp_path):
  cfg = toy.config(total_steps=2)

  class SevenClasses(InMemorySource):
    def num_classes(self):
      return {"label": 7}

  train, ev = toy.data()
  src = SevenClasses(train, ev, global_batch=8, eval_batch_size=8)
  with pytest.raises(ValueError, match=r"config.model.num_classes=5 but the data set .* 7 classes"):
    trainer.train_and_evaluate(cfg, str(tmp_path / "a"), "train", source=src, model_lib=toy.LIB)
  assert not os.path.exists(tmp_path / "a" / "config.json")
  cfg.data = dict(name="no_such_dataset", data_dir=str(tmp_path / "nothing"))
  with pytest.raises(Exception):  # the data set cannot be opened
    trainer.train_and_evaluate(cfg, str(tmp_path / "b"), "train", model_lib=toy.LIB)
  assert not os.path.exists(tmp_path / "b" / "config.json")  # so a corrected rerun is not refused


def test_main_keeps_compiled_steps_in_the_workdir(tmp_path):
  """ca2st_jax.main points XLA's compilation cache at the workdir, so a resumed run reads its
  compiled steps back; a cache set before (JAX_COMPILATION_CACHE_DIR, as this suite does) stays."""
  from ca2st_jax import cli  # pylint: disable=import-outside-toplevel
  before = jax.config.jax_compilation_cache_dir
  try:
    cli.use_compilation_cache(str(tmp_path))
    assert jax.config.jax_compilation_cache_dir == before
    jax.config.update("jax_compilation_cache_dir", None)
    cli.use_compilation_cache(str(tmp_path / "wd"))
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "wd" / "compilation_cache")
  finally:
    jax.config.update("jax_compilation_cache_dir", before)


def test_small_replicated_arrays_are_saved_without_per_device_slices(tmp_path, caplog):
  """A checkpoint of arrays that all 8 devices hold: Orbax writes the small ones whole instead of
  slicing them per device (an eager slice compiles once per device and shape); a large one is
  still split among the devices. The restore gives the arrays back."""
  import logging  # pylint: disable=import-outside-toplevel
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=import-outside-toplevel
  from ca2st_jax.train import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  replicated = NamedSharding(mesh_lib.make_mesh({"data": 8}), P())
  large = orbax_ckpt.REPLICA_PARALLEL_MIN_SLICE_BYTES * 8 // 4  # float32 elements
  # Orbax splits an array along an axis that the device count divides.
  values = {"bias": np.arange(16, dtype=np.float32), "scale": np.ones((8, 5), np.float32),
            "large": np.arange(large, dtype=np.float32)}
  state = {k: jax.device_put(v, replicated) for k, v in values.items()}
  abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in values.items()}
  shardings = {k: replicated for k in values}
  ck = orbax_ckpt.Checkpointer(tmp_path, abstract_state=abstract, state_shardings=shardings,
                               abstract_frozen={}, frozen_shardings={}, async_save=False)
  with caplog.at_level(logging.WARNING), jax.log_compiles():
    ck.save(1, state, {}, {}, {})
  sliced = [r.getMessage() for r in caplog.records if "Compiling jit(slice)" in r.getMessage()]
  assert [m for m in sliced if f"float32[{large}]" in m], sliced  # the large one: split
  assert not [m for m in sliced if "float32[16]" in m or "float32[8,5]" in m], sliced
  restored, _, _, _ = ck.restore()
  ck.close()
  for k, v in values.items():
    np.testing.assert_array_equal(np.asarray(restored[k]), v, err_msg=k)
