"""tools.aot: the trainer's step compiled for a Cloud TPU slice by libtpu (no TPU here)."""
import importlib.util
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from ca2st_jax.tools import aot
from tests_helpers import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _installed(module):
  try:
    return importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:  # its parent package is missing
    return False


NEEDS_LIBTPU = pytest.mark.skipif(
    not _installed("libtpu"),
    reason="libtpu is not installed (pip install -e '.[aot]'): no compiler for the TPU targets")


NEEDS_CUDA_PLUGIN = pytest.mark.skipif(
    not _installed("jax_plugins.xla_cuda12"),
    reason="jax-cuda12-plugin and jax-cuda12-pjrt (the jax version's) are not installed: no "
           "compiler for the GPU target")


def run_aot(*args):
  path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
  env = dict(os.environ, PYTHONPATH=path, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "ca2st_jax.tools.aot", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


def test_topology_names_as_cloud_tpu_spells_them():
  v5p = aot.parse_topology("v5p-128")
  assert v5p.chips == 64 and v5p.hbm_bytes == 95 * 2 ** 30  # 128 TensorCores, two per chip
  assert v5p.describe() == dict(topology_name="v5:4x4x4", platform="tpu", chip_config_name="megacore",
                                chips_per_host_bounds=(2, 2, 1), num_slices=1,
                                wrap=(True, True, True))
  assert aot.parse_topology("v4-8").describe()["topology_name"] == "v4:2x2x1"
  assert aot.parse_topology("v5p-8").describe()["wrap"] == (False, False, False)
  v5e = aot.parse_topology("v5e-256", num_slices=2).describe()
  assert v5e["topology_name"] == "v5e:16x16" and v5e["wrap"] == (True, True, False)
  assert v5e["chip_config_name"] == "default" and v5e["num_slices"] == 2
  assert aot.parse_topology("v5litepod-8").describe()["chips_per_host_bounds"] == (2, 4, 1)
  assert aot.parse_topology("v6e-8").describe()["topology_name"] == "v6e:2x4"
  h100 = aot.parse_topology("h100-8", num_slices=2)
  assert h100.describe()["topology"] == "1x2x8" and h100.describe()["platform"] == "cuda"
  assert h100.hbm_bytes == int(0.9 * aot.H100_MEMORY_BYTES)
  for bad in ("v5p-6", "v5e-12", "tpu-8", "v5p-3", "h100-16"):
    with pytest.raises(ValueError, match="--topology"):
      aot.parse_topology(bad)


def test_flops_count_every_trip_of_a_loop():
  x = jnp.zeros((4, 8), jnp.float32)
  w = jnp.zeros((8, 8), jnp.float32)

  def loop(x, w):
    return jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=5)[0]

  one = aot.count_flops(jax.make_jaxpr(lambda x, w: x @ w)(x, w).jaxpr)
  assert one == 2 * 4 * 8 * 8
  assert aot.count_flops(jax.make_jaxpr(loop)(x, w).jaxpr) == 5 * one
  assert aot.count_flops(jax.make_jaxpr(jax.jit(loop))(x, w).jaxpr) == 5 * one


def test_flops_of_the_train_step_scale_with_accumulated_micro_batches():
  """accum_steps=2 scans two micro-batches: twice the products of one (on the 8 CPU devices)."""
  from ca2st_jax.train import mesh as mesh_lib
  from ca2st_jax.train import trainer
  flops = {}
  for accum in (1, 2):
    config = load_config("cast_k400", "tiny")
    config.train.accum_steps = accum
    config, _ = aot._prepare(config, per_device_batch=1, num_devices=8, platform="cpu")
    setup = trainer.build_setup(config)
    args = [aot._with_shardings(a, s) for a, s in (
        (setup.abstract_state, setup.state_shardings), (setup.abstract_frozen, setup.frozen_shardings),
        (setup.abstract_rest, setup.rest_shardings))]
    batch = aot.abstract_batch(config, setup.global_batch, mesh_lib.batch_sharding(setup.mesh),
                               train=True)
    flops[accum] = aot.count_flops(jax.make_jaxpr(setup.train_step)(*args, batch).jaxpr)
  assert flops[1] > 0 and flops[2] == 2 * flops[1]


@pytest.mark.slow
@NEEDS_LIBTPU
def test_tiny_config_fits_a_small_slice():
  proc = run_aot("--config=configs/ca2st_vggsound.py:tiny", "--topology=v5e-4",
                 "--per_device_batch=2", "--json")
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  assert (r["topology"], r["num_devices"], r["per_device_batch"], r["global_batch"]) == (
      "v5e-4", 4, 2, 8)
  assert r["device_kind"] == "TPU v5 lite" and r["mesh"] == {"data": 4, "fsdp": 1}
  assert r["layer_loop"] == "unroll"  # config.model.layer_loop='auto' on the target, not this CPU
  assert r["fits"] is True and r["verdict"] == "fits"
  assert r["hbm_bytes_per_device"] == 16 * 2 ** 30
  parts = (r["argument_bytes_per_device"] + r["output_bytes_per_device"] -
           r["alias_bytes_per_device"] + r["temp_bytes_per_device"] + r["code_bytes_per_device"])
  assert 0 < r["peak_bytes_per_device"] == parts < r["hbm_bytes_per_device"]
  assert r["alias_bytes_per_device"] > 0  # the donated state
  assert r["compile_s"] > 0 and r["eval_compile_s"] > 0
  # Eval is the forward alone: exactly the model's MACs x 2 x clips (tools.summary's count).
  assert r["eval_flops_per_device"] == pytest.approx(2 * r["forward_macs_per_clip"] * 8 / 4)
  # Training adds the backward: more than the forward, less than 3x.
  assert r["eval_flops_per_device"] < r["flops_per_step_per_device"] < 3 * r["eval_flops_per_device"]


@pytest.mark.slow
@NEEDS_LIBTPU
def test_flash_attention_compiles_for_a_sharded_slice():
  # 128-pixel frames: 256 VideoMAE tokens, so the Pallas flash kernel runs there (it
  # leaves sequences under 128 to XLA). Over data 2 x fsdp 2 it must be split per batch shard:
  # XLA refuses to partition a Mosaic call.
  proc = run_aot("--config=configs/cast_k400.py:tiny", "--topology=v5e-4", "--per_device_batch=1",
                 "--config.model.image_size=128", "--config.mesh.data=2", "--config.mesh.fsdp=2",
                 "--config.model.layer_loop=scan", "--roofline", "--json")
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  assert r["attention"] == "tpu_flash" and r["mesh"] == {"data": 2, "fsdp": 2}
  assert r["fits"] is True
  # The roofline finds the Pallas kernels (forward, dK/dV, dQ) on each chip's 1 clip x 2 heads,
  # in each of the 2 layers (the TPU program's layer loop carries no trip count of its own).
  assert r["fused_attention"] == ["2 x [B*H=2, Tq=256, Tk=256, D=16]"]
  assert r["train_roofline_groups"]["attention (fused kernel)"]["kernels"] == 6


@pytest.mark.slow
@NEEDS_LIBTPU
def test_too_large_a_batch_does_not_fit():
  proc = run_aot("--config=configs/cast_k400.py:tiny", "--topology=v5e-4",
                 "--per_device_batch=262144")
  assert proc.returncode == 1, proc.stderr[-3000:]
  found = re.search(r"needs ([\d.]+) GiB of ([\d.]+) GiB", proc.stdout)
  assert found, proc.stdout
  assert float(found[1]) > float(found[2]) > 15


@pytest.mark.slow
@NEEDS_CUDA_PLUGIN
def test_tiny_config_fits_eight_h100s_compiled_without_a_gpu():
  proc = run_aot("--config=configs/cast_k400.py:tiny", "--topology=h100-8", "--per_device_batch=2",
                 "--json")
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  assert (r["num_devices"], r["global_batch"], r["fits"]) == (8, 16, True)
  assert r["device_kind"] == "NVIDIA H100 80GB HBM3"
  assert 0 < r["peak_bytes_per_device"] < r["hbm_bytes_per_device"] == int(0.9 * aot.H100_MEMORY_BYTES)
  assert r["eval_flops_per_device"] == pytest.approx(2 * r["forward_macs_per_clip"] * 16 / 8)


@pytest.mark.slow
@NEEDS_CUDA_PLUGIN
def test_roofline_of_the_steps_on_an_h200():
  proc = run_aot("--config=configs/cast_k400.py:tiny", "--topology=h200-1", "--per_device_batch=2",
                 "--config.model.dtype=bfloat16", "--config.model.layer_loop=scan", "--roofline",
                 "--json")
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  assert r["device_kind"] == "NVIDIA H200"
  assert r["train_kernels"] > r["eval_kernels"] > 0
  assert r["train_bytes_per_clip"] > r["eval_bytes_per_clip"] > 0
  assert r["train_roofline_ms"] > r["eval_roofline_ms"] > 0
  assert 0 < r["train_roofline_mfu"] < 1
  assert r["roofline_efficiency"] == {"matmul": 0.7, "bandwidth": 0.85, "flash": 0.5}
  assert r["roofline_chip"]["bandwidth"] == 4.8e12
  # Tiny's 16-pixel patches of 32-pixel frames: 4 VideoMAE tokens per frame pair, CLIP 5, padded
  # to 6 for cuDNN as the model pads them: every attention is costed as cuDNN's kernel.
  assert r["xla_attention"] == [] and any("Tq=6, Tk=6" in a for a in r["fused_attention"])
  assert sum(g["kernels"] for g in r["train_roofline_groups"].values()) == r["train_kernels"]


@NEEDS_CUDA_PLUGIN
def test_bfloat16_config_on_h100_compiles_the_cudnn_stand_in_without_a_gpu():
  # 'auto' picks cuDNN on a GPU in bfloat16, which cannot be traced without one.
  proc = run_aot("--config=configs/cast_k400.py:tiny", "--topology=h100-1", "--per_device_batch=2",
                 "--config.model.dtype=bfloat16", "--json")
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  assert r["fits"] and r["attention"].startswith("cudnn_stand_in ")


def test_explicit_cudnn_is_refused_for_a_compile_without_a_gpu():
  config = load_config("cast_k400", "tiny")
  config.model.update(dtype="bfloat16", attention="cudnn")
  with pytest.raises(ValueError, match="cannot be compiled without a GPU"):
    aot._prepare(config, per_device_batch=1, num_devices=8, platform="gpu")


def test_per_device_batch_must_split_the_config_batch():
  config = load_config("cast_k400", "tiny")  # global batch 2
  with pytest.raises(ValueError, match="--per_device_batch"):
    aot.main(config, "v5p-8", None, 1, False, True)


def _fake_check(calls, fits, peak):
  def fake_check(config, topology, b, **kwargs):
    calls.append(b)
    return {"fits": fits(b), "peak_bytes_per_device": peak(b), "compile_s": 0.0,
            "hbm_bytes_per_device": topology.hbm_bytes, "verdict": "fits" if fits(b) else "needs"}
  return fake_check


def test_find_max_batch_follows_the_memory_line(monkeypatch):
  # v5p: 95 GiB per chip; 4 GiB of weights and state plus 1 GiB per clip: 91 clips fit.
  calls = []
  gib = 2 ** 30
  monkeypatch.setattr(aot, "check", _fake_check(calls, lambda b: (4 + b) * gib <= 95 * gib,
                                                lambda b: (4 + b) * gib))
  best, tried = aot.find_max_batch(None, aot.parse_topology("v5p-8"))
  assert best == 91 and [t[0] for t in tried] == calls
  assert calls == [1, 2, 91, 92]


def test_find_max_batch_when_the_line_misleads(monkeypatch):
  # Memory says 91 would fit, the compiler says 37 (e.g. a fragmentation limit): bisection finds it.
  calls = []
  gib = 2 ** 30
  monkeypatch.setattr(aot, "check", _fake_check(calls, lambda b: b <= 37, lambda b: (4 + b) * gib))
  best, _ = aot.find_max_batch(None, aot.parse_topology("v5p-8"))
  assert best == 37
  assert calls[:4] == [1, 2, 91, 90] and len(calls) <= 12
  assert max(b for b in calls if b <= 37) == 37 and 38 in calls


def test_find_max_batch_without_memory_figures_doubles_then_bisects(monkeypatch):
  calls = []
  monkeypatch.setattr(aot, "check", _fake_check(calls, lambda b: b <= 37, lambda b: None))
  best, _ = aot.find_max_batch(None, aot.parse_topology("v5p-8"))
  assert best == 37
  assert calls == [1, 2, 4, 8, 16, 32, 64, 48, 40, 36, 38, 37]


def test_find_max_batch_when_nothing_fits(monkeypatch):
  calls = []
  monkeypatch.setattr(aot, "check", _fake_check(calls, lambda b: False, lambda b: 200 * 2 ** 30))
  assert aot.find_max_batch(None, aot.parse_topology("v5p-8"))[0] == 0
  assert calls == [1]


def test_verdicts():
  gib = 2 ** 30
  base = {"hbm_bytes_per_device": 16 * gib}
  assert aot.verdict(dict(base, fits=True, peak_bytes_per_device=gib)) == "fits"
  assert aot.verdict(dict(base, fits=False, peak_bytes_per_device=20 * gib)) == (
      "needs 20.00 GiB of 16.00 GiB")
  assert aot.verdict(dict(base, fits=False, peak_bytes_per_device=gib,
                          eval_peak_bytes_per_device=17 * gib)) == (
      "train step fits; eval step needs 17.00 GiB of 16.00 GiB")
