r"""Does a config's training step fit a Cloud TPU slice? Compiled ahead of time, on a machine without one.

  pip install -e '.[aot]'     # libtpu, the compiler for the TPU targets
  python -m ca2st_jax.tools.aot --config=configs/cast_k400.py --topology=v5p-8 --per_device_batch=8
  python -m ca2st_jax.tools.aot --config=configs/ca2st_vggsound.py --topology=v5e-256 --find_max_batch
  python -m ca2st_jax.tools.aot --config=configs/cast_k400.py:tiny --topology=v5e-4 --json
  python -m ca2st_jax.tools.aot --config=configs/cast_k400.py --topology=h100-1 \
      --per_device_batch=8 --roofline --json     # + jax-cuda12-plugin/-pjrt for GPU targets

The trainer's own jitted train and eval steps (`trainer.build_setup`, with its mesh, shardings and
donation) are lowered on abstract arguments and compiled by libtpu for the compile-only devices of
`jax.experimental.topologies.get_topology_desc`, with the attention kernel and layer loop that
config.model gives on the target. Per chip it prints XLA's memory analysis
(arguments, outputs, temporaries, generated code; peak = arguments + outputs - aliased (donated)
+ temporaries + code) against the chip's HBM, the verdict, the FLOPs of one optimiser step and the
compile time. Exits 1 when the step does not fit.

FLOPs are 2 x the multiply-accumulates of every matrix product and convolution in the traced step
(forward, backward and optimiser; a scan's body counted `length` times, a cond's costliest
branch; a fused attention kernel by FlashAttention's formula on the true lengths: forward
q k^T and p v, backward its four gradient products and one recomputation of q k^T). XLA's own
cost analysis counts a loop body once and gives nothing for an uncompiled module on this target,
so it is shown only as a second opinion.
The check beside it is the model's FLOPs (`tools.summary`: every product of the forward and of
its backward over the trainable set once) x the batch.

--roofline adds `tools.roofline` of both compiled programs on one chip of the target: bytes per
clip, kernels per step, the predicted time, the MFU against the model's FLOPs, and the table by
group (json: train_bytes_per_clip, train_kernels, train_roofline_ms, train_roofline_mfu,
eval_bytes_per_clip, eval_kernels, eval_roofline_ms, the groups, and which attentions were costed
as fused kernels).

Topologies are named as Cloud TPU does: v4-N and v5p-N count TensorCores (a chip, one JAX device,
has two), v5e-N (or v5litepod-N) and v6e-N count chips; h100-N and h200-N are N GPUs of a host.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import time

# libtpu reads these when it loads: no TPU metadata server to ask for the host's accelerator, and
# several processes (pytest -n 2) may load it at once (else the second fails on /tmp/libtpu_lockfile).
for _name, _value in (("JAX_PLATFORMS", "cpu"), ("TPU_SKIP_MDS_QUERY", "1"),
                      ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")):
  os.environ.setdefault(_name, _value)

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import ml_collections  # noqa: E402

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Family:
  topology_prefix: str      # the name libtpu knows ("v5:2x2x1")
  chip_config: str          # 'megacore': one JAX device drives the chip's two TensorCores
  cores_per_chip: int       # how the Cloud TPU name counts: v4-8 / v5p-8 are 4 chips
  hbm_gib: int              # per chip (one JAX device)
  shapes: dict              # chips → physical shape


_CUBE = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8),
         256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16), 2048: (8, 16, 16), 4096: (16, 16, 16)}
_PLANE = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16),
          256: (16, 16)}
FAMILIES = {
    "v4": Family("v4", "megacore", 2, 32, _CUBE),
    "v5p": Family("v5", "megacore", 2, 95, _CUBE),
    "v5e": Family("v5e", "default", 1, 16, _PLANE),
    "v6e": Family("v6e", "default", 1, 32, _PLANE),
}
ALIASES = {"v5litepod": "v5e"}

# An H100 SXM 80GB as XLA's GPU compiler sees it (GpuTargetConfigProto; no GPU needed to compile).
# An H200 is the same chip with 141 GB of HBM3e at 4.8 TB/s.
H100_MEMORY_BYTES = 84_929_347_584
H200_MEMORY_BYTES = 150_754_820_096
GPU_TARGET_CONFIG = """
gpu_device_info {{
  cuda_compute_capability {{ major: 9 minor: 0 }}
  core_count: 132  fpus_per_core: 128  clock_rate_ghz: 1.98
  threads_per_block_limit: 1024  threads_per_warp: 32  threads_per_core_limit: 2048
  shared_memory_per_block: 49152  shared_memory_per_block_optin: 232448
  shared_memory_per_core: 233472  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
  block_dim_limit_x: 2147483647  block_dim_limit_y: 65535  block_dim_limit_z: 65535
  device_memory_size: {memory}  memory_bandwidth: {bandwidth}
  l2_cache_size: {l2}
}}
platform_name: "CUDA"
runtime_version {{ major: 12 minor: 8 }}
dnn_version_info {{ major: 9 minor: 7 }}
device_description_str: "{description}"
"""
GPUS = {
    "h100": dict(memory=H100_MEMORY_BYTES, bandwidth=3_352_320_000_000, l2=52_428_800,
                 description="NVIDIA H100 80GB HBM3"),
    "h200": dict(memory=H200_MEMORY_BYTES, bandwidth=4_800_000_000_000, l2=52_428_800,
                 description="NVIDIA H200"),
}

# launch/gpu.sh lets XLA's allocator take this share of the GPU's memory.
GPU_MEMORY_FRACTION = 0.9
# Without a GPU there is no autotuning, and XLA finds no Triton GEMM tiling for some products
# ("Couldn't find output tile sizes"): cuBLAS GEMMs instead.
GPU_COMPILER_OPTIONS = {"xla_gpu_enable_triton_gemm": False}


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str                 # as given: 'v5p-128', 'h100-8'
  family: Family | None     # None: H100 GPUs
  shape: tuple              # TPU: chips per dimension; GPU: (GPUs per host,)
  num_slices: int           # TPU: slices joined over the data-center network; GPU: hosts
  gpu: str = ""             # 'h100' / 'h200' for GPU topologies

  @property
  def chips(self) -> int:
    return math.prod(self.shape)

  @property
  def compiler_options(self) -> dict | None:
    return GPU_COMPILER_OPTIONS if self.family is None else None

  @property
  def hbm_bytes(self) -> int:
    if self.family is None:
      return int(GPUS[self.gpu]["memory"] * GPU_MEMORY_FRACTION)
    return self.family.hbm_gib * GIB

  def describe(self) -> dict:
    """The arguments of get_topology_desc for this slice (host and wrap-around layout)."""
    if self.family is None:
      return dict(topology_name=self.name, platform="cuda",
                  target_config=GPU_TARGET_CONFIG.format(**GPUS[self.gpu]),
                  topology=f"1x{self.num_slices}x{self.chips}")
    if self.chips == 1:
      per_host = (1, 1, 1)
    elif len(self.shape) == 2 and self.chips == 8:  # v5litepod-8 / v6e-8: one host of 8 chips
      per_host = (2, 4, 1)
    else:
      per_host = (2, 2, 1)
    if len(self.shape) == 3:  # v4 / v5p: a full 4x4x4 cube and larger are tori
      wrap = (self.chips >= 64,) * 3
    else:  # v5e / v6e: a dimension of 16 chips wraps around
      wrap = tuple(d == 16 for d in self.shape) + (False,)
    return dict(topology_name=f"{self.family.topology_prefix}:{'x'.join(map(str, self.shape))}",
                platform="tpu", chip_config_name=self.family.chip_config,
                chips_per_host_bounds=per_host, num_slices=self.num_slices, wrap=wrap)


def parse_topology(name: str, num_slices: int = 1) -> Topology:
  """'v5p-128' → 64 chips as 4x4x4 (v4/v5p count TensorCores, v5e/v6e chips); 'h100-8' → 8 GPUs
  on each of `num_slices` hosts."""
  if num_slices < 1:
    raise ValueError(f"--num_slices={num_slices}: must be at least 1")
  gpu = re.fullmatch(r"(h100|h200)-(\d+)", name)
  if gpu:
    if not 1 <= int(gpu[2]) <= 8:
      raise ValueError(f"--topology={name!r}: a host has 1 to 8 GPUs (more hosts: --num_slices)")
    return Topology(name, None, (int(gpu[2]),), num_slices, gpu=gpu[1])
  match = re.fullmatch(r"(v4|v5p|v5e|v5litepod|v6e)-(\d+)", name)
  if not match:
    raise ValueError(f"--topology={name!r}: expected v4-N, v5p-N, v5e-N (v5litepod-N), v6e-N, "
                     "h100-N or h200-N")
  family = FAMILIES[ALIASES.get(match[1], match[1])]
  cores = int(match[2])
  chips = cores // family.cores_per_chip
  if cores % family.cores_per_chip or chips not in family.shapes:
    sizes = ", ".join(f"{match[1]}-{c * family.cores_per_chip}" for c in family.shapes)
    raise ValueError(f"--topology={name!r}: no known slice of that size; known: {sizes}")
  return Topology(name, family, family.shapes[chips], num_slices)


def topology_devices(topology: Topology):
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  return topologies.get_topology_desc(**topology.describe()).devices


# --------------------------------------------------------------------------------------------------
# FLOPs of a traced program
# --------------------------------------------------------------------------------------------------
def count_flops(jaxpr) -> int:
  """2 x the MACs of every matrix product and convolution of the traced step (`summary.count_macs`:
  a scan's body `length` times, a cond's costliest branch)."""
  from ca2st_jax.tools import summary  # pylint: disable=g-import-not-at-top
  return 2 * summary.count_macs(jaxpr)


# --------------------------------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------------------------------
def abstract_batch(config, global_batch: int, sharding, *, train: bool) -> dict:
  """The batch the input pipeline hands the step (models.batch_spec), sharded."""
  from ca2st_jax import models  # pylint: disable=g-import-not-at-top
  spec = models.batch_spec(config.model, global_batch, labels=train,
                           image_size=int(config.data.get("crop_size", 0) or 0) or None)
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding) for k, v in spec.items()}


def _with_shardings(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _per_device_bytes(tree) -> int:
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
             for x in jax.tree.leaves(tree))


_OOM_PATTERNS = (  # libtpu's wordings of "does not fit"
    r"required for HLO temporaries \(([\d.]+)([KMGT])\) exceeds available HBM \(([\d.]+)([KMGT])\)",
    r"Used ([\d.]+)([KMGT]) of ([\d.]+)([KMGT]) hbm",
)


def _to_bytes(number, unit):
  return float(number) * 1024 ** "BKMGT".index(unit)


def compile_step(jitted, args, hbm_bytes: int, compiler_options=None, with_hlo=False) -> dict:
  """Lower + compile; memory per device from XLA, or from libtpu's out-of-memory error; with_hlo:
  the optimised program's text under 'hlo'."""
  start = time.perf_counter()
  lowered = jitted.lower(*args)
  arg_bytes = _per_device_bytes(args)
  try:
    compiled = lowered.compile(compiler_options)
  except jax.errors.JaxRuntimeError as e:
    message = str(e)
    if "RESOURCE_EXHAUSTED" not in message:
      raise
    result = {"compile_s": time.perf_counter() - start, "compiler_message": message.splitlines()[0],
              "argument_bytes": arg_bytes, "output_bytes": None, "alias_bytes": None,
              "temp_bytes": None, "code_bytes": None, "peak_bytes": None, "xla_flops": None}
    for pattern in _OOM_PATTERNS:
      found = re.search(pattern, message)
      if found:
        used = _to_bytes(found[1], found[2])
        # The temporaries' figure leaves out the arguments, which live in HBM too.
        result["peak_bytes"] = int(used + (arg_bytes if "temporaries" in pattern else 0))
        hbm_bytes = int(_to_bytes(found[3], found[4]))
        break
    result["hbm_seen_by_compiler"] = hbm_bytes
    return result
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  sizes = {name: int(getattr(memory, f"{field}_size_in_bytes")) for name, field in (
      ("argument_bytes", "argument"), ("output_bytes", "output"), ("alias_bytes", "alias"),
      ("temp_bytes", "temp"), ("code_bytes", "generated_code"))}
  peak = (sizes["argument_bytes"] + sizes["output_bytes"] - sizes["alias_bytes"] +
          sizes["temp_bytes"] + sizes["code_bytes"])
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {"compile_s": compile_s, **sizes, "peak_bytes": peak,
          "xla_flops": (cost or {}).get("flops"), **({"hlo": compiled.as_text()} if with_hlo else {})}


def _prepare(config, per_device_batch: int, num_devices: int, platform: str):
  """The config with the global batch this check needs (the trainer's rules otherwise), and the
  attention kernel and layer loop that config.model gives on the target, not on this CPU; and that
  kernel's name for the report."""
  from ca2st_jax.models import fused, layers  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(config.to_dict())  # unlocked copy
  requested = config.model.attention
  config.model.attention = layers.resolve_attention(requested, fused.dtype_of(config.model), platform)
  config.model.layer_loop = layers.resolve_layer_loop(config.model.layer_loop, platform)
  if config.model.attention == "cudnn":
    # jax.nn.dot_product_attention asks the local cuDNN for its version while tracing: without a
    # GPU there is none. Its stand-in is XLA's attention behind cuDNN's operand boundary, so the
    # program around it is the GPU's; XLA's attention holds an N x N block per layer that cuDNN's
    # does not, so the memory figures are an upper bound for a run with cuDNN.
    if requested == "cudnn":
      raise ValueError("config.model.attention='cudnn' cannot be compiled without a GPU (tracing "
                       "cuDNN attention needs the local cuDNN library); use 'auto', which "
                       "compiles a stand-in for it, or 'xla'")
    config.model.attention = "cudnn_stand_in"
    attention = "cudnn_stand_in (XLA's attention in cuDNN's place: cuDNN's needs a GPU to compile)"
  else:
    attention = config.model.attention
  accum = int(config.train.get("accum_steps", 1))
  config.train.batch_size = per_device_batch * num_devices * accum
  if config.train.get("total_steps", None) is None:  # the schedule's length changes nothing compiled
    config.train.total_steps = 1000
    config.train.warmup_steps = 100
  return config, attention


def check(config, topology: Topology, per_device_batch: int, *, with_eval: bool = True,
          count: bool = True, with_roofline: bool = False) -> dict:
  """Compiles the train (and eval) step for `topology`; returns the figures (see --json)."""
  from ca2st_jax.train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from ca2st_jax.train import trainer  # pylint: disable=g-import-not-at-top
  devices = topology_devices(topology)
  n = len(devices)
  config, attention = _prepare(config, per_device_batch, n,
                               "gpu" if topology.family is None else "tpu")
  setup = trainer.build_setup(config, devices=devices)
  micro_batch = per_device_batch * n
  batch_sh = mesh_lib.batch_sharding(setup.mesh)
  state = _with_shardings(setup.abstract_state, setup.state_shardings)
  frozen = _with_shardings(setup.abstract_step_frozen, setup.step_frozen_shardings)
  rest = _with_shardings(setup.abstract_rest, setup.rest_shardings)
  train_batch = abstract_batch(config, setup.global_batch, batch_sh, train=True)
  train = compile_step(setup.train_step, (state, frozen, rest, train_batch), topology.hbm_bytes,
                       topology.compiler_options, with_hlo=with_roofline)
  train_hlo = train.pop("hlo", None)
  result = {
      "config": config.model.name, "topology": topology.name, "num_slices": topology.num_slices,
      "num_devices": n, "device_kind": devices[0].device_kind, "mesh": dict(setup.mesh.shape),
      "attention": attention, "layer_loop": config.model.layer_loop,
      "per_device_batch": per_device_batch, "global_batch": setup.global_batch,
      "accum_steps": int(config.train.get("accum_steps", 1)),
      "hbm_bytes_per_device": train.pop("hbm_seen_by_compiler", topology.hbm_bytes),
      **{f"{k}_per_device" if k.endswith("bytes") else k: v for k, v in train.items()},
  }
  result["fits"] = result["peak_bytes_per_device"] is not None and (
      result["peak_bytes_per_device"] <= result["hbm_bytes_per_device"] and
      "compiler_message" not in result)
  if count:
    train_flops = count_flops(jax.make_jaxpr(setup.train_step)(state, frozen, rest, train_batch).jaxpr)
    result["flops_per_step_per_device"] = train_flops / n
    result.update(_model_check(config, setup.global_batch, n))
  if with_eval:
    eval_batch = abstract_batch(config, micro_batch, batch_sh, train=False)
    evaluation = compile_step(setup.eval_step, (state, frozen, rest, eval_batch), topology.hbm_bytes,
                              topology.compiler_options, with_hlo=with_roofline)
    result["eval_peak_bytes_per_device"] = evaluation["peak_bytes"]
    result["eval_compile_s"] = evaluation["compile_s"]
    if count:
      eval_flops = count_flops(jax.make_jaxpr(setup.eval_step)(state, frozen, rest, eval_batch).jaxpr)
      result["eval_flops_per_device"] = eval_flops / n
    if evaluation["peak_bytes"] is None or evaluation["peak_bytes"] > result["hbm_bytes_per_device"]:
      result["fits"] = False
  if with_roofline and train_hlo is not None:
    result.update(roofline_figures(config, topology, train_hlo, evaluation.get("hlo") if with_eval
                                   else None, clips=setup.global_batch / n,
                                   eval_clips=per_device_batch))
  result["verdict"] = verdict(result)
  return result


def roofline_figures(config, topology: Topology, train_hlo: str, eval_hlo: str | None, *,
                     clips: float, eval_clips: float) -> dict:
  """tools.roofline of the compiled steps on one chip; MFU from the model's FLOPs (tools.summary)."""
  from ca2st_jax.tools import roofline  # pylint: disable=g-import-not-at-top
  from ca2st_jax.tools import summary  # pylint: disable=g-import-not-at-top
  model = summary.summarize(config.model)  # the model's FLOPs, for the MFU
  train = roofline.roofline(train_hlo, topology.name, train=True,
                            model_flops=model["train_tflops_per_clip"] * 1e12 * clips)
  out = {"model_train_tflops_per_clip": model["train_tflops_per_clip"],
         "train_bytes_per_clip": train["bytes"] / clips, "train_kernels": train["kernels"],
         "train_roofline_ms": train["seconds"] * 1e3, "train_roofline_mfu": train["mfu"],
         "roofline_efficiency": train["efficiency"], "roofline_chip": train["chip"],
         "fused_attention": train["fused_attention"], "xla_attention": train["xla_attention"],
         "train_roofline_groups": _per_clip(train["groups"], clips),
         "roofline_table": roofline.format_table(train, clips, "train step ")}
  if eval_hlo is not None:
    evaluation = roofline.roofline(eval_hlo, topology.name, train=False,
                                   model_flops=model["tflops_per_clip"] * 1e12 * eval_clips)
    out.update({"eval_bytes_per_clip": evaluation["bytes"] / eval_clips,
                "eval_kernels": evaluation["kernels"], "eval_roofline_ms": evaluation["seconds"] * 1e3,
                "eval_roofline_mfu": evaluation["mfu"],
                "eval_roofline_groups": _per_clip(evaluation["groups"], eval_clips)})
    out["roofline_table"] += "\n" + roofline.format_table(evaluation, eval_clips, "eval step ")
  return out


def _per_clip(groups: dict, clips: float) -> dict:
  return {g: {"kernels": v["kernels"], "gb_per_clip": v["bytes"] / clips / 1e9,
              "tflop": v["flops"] / 1e12, "ms": v["seconds"] * 1e3} for g, v in groups.items()}


def _model_check(config, global_batch: int, num_devices: int) -> dict:
  """The model's FLOPs (tools.summary: every product once, attention included, no recomputation)."""
  from ca2st_jax.tools import summary  # pylint: disable=g-import-not-at-top
  model = summary.summarize(config.model)
  return {"forward_macs_per_clip": model["gmacs_per_view"] * 1e9,
          "model_train_tflops_per_clip": model["train_tflops_per_clip"],
          "model_flops_per_step_per_device":
              model["train_tflops_per_clip"] * 1e12 * global_batch / num_devices}


def verdict(result: dict) -> str:
  hbm = result["hbm_bytes_per_device"] / GIB
  if result["fits"]:
    return "fits"

  def needs(peak, message):
    if peak is None:
      return f"does not fit in {hbm:.2f} GiB ({message or 'no memory figure'})"
    return f"needs {peak / GIB:.2f} GiB of {hbm:.2f} GiB"

  train_peak = result["peak_bytes_per_device"]
  if train_peak is not None and train_peak <= hbm * GIB and "compiler_message" not in result:
    return "train step fits; eval step " + needs(result.get("eval_peak_bytes_per_device"), None)
  return needs(train_peak, result.get("compiler_message"))


def find_max_batch(config, topology: Topology, start: int = 1) -> tuple[int, list]:
  """Largest per-device batch whose train step fits (0 if none).

  Peak memory grows about linearly with the batch, so two compiles give a line whose crossing with
  the HBM is the first guess; the guess's neighbour checks it. A base-model compile takes minutes
  on a small host, so this settles in ~4 compiles where doubling and bisection take ~8. Where the
  line misleads (or no memory figure came back) the search falls back to doubling and bisection
  between the largest batch seen to fit and the smallest seen not to.
  """
  tried, peaks = [], {}
  good, bad = 0, None

  def probe(b):
    nonlocal good, bad
    r = check(config, topology, b, with_eval=False, count=False)
    tried.append((b, r["fits"], r["peak_bytes_per_device"], r["compile_s"]))
    peaks[b] = r["peak_bytes_per_device"]
    print(f"  per_device_batch {b}: {r['verdict']} ({r['compile_s']:.0f} s)", file=sys.stderr,
          flush=True)
    if r["fits"]:
      good = max(good, b)
    else:
      bad = b if bad is None else min(bad, b)
    hbm[0] = r.get("hbm_bytes_per_device", hbm[0])

  hbm = [topology.hbm_bytes]
  probe(start)
  if good:
    probe(2 * start)
  guess = None
  if len(peaks) == 2 and None not in peaks.values() and peaks[2 * start] > peaks[start]:
    per_clip = (peaks[2 * start] - peaks[start]) / start
    guess = start + int((hbm[0] - peaks[start]) // per_clip)
  while bad is None or bad - good > 1:
    upper = math.inf if bad is None else bad - 1
    candidates = [] if guess is None else [guess, guess + 1 if guess <= good else guess - 1]
    candidates = [b for b in candidates if good < b <= upper and b not in peaks]
    if candidates:
      probe(candidates[0])
    elif bad is None:
      probe(2 * good)
    else:
      probe((good + bad) // 2)
  return good, tried


def print_report(r: dict):
  g = lambda b: "-" if b is None else f"{b / GIB:.3f} GiB"
  print(f"{r['config']} on {r['topology']} x{r['num_slices']} ({r['num_devices']} x {r['device_kind']}),"
        f" mesh {r['mesh']}, per-device batch {r['per_device_batch']} (global {r['global_batch']},"
        f" accum_steps {r['accum_steps']}), attention {r['attention']},"
        f" layers {r['layer_loop']}")
  print(f"train step, per device: arguments {g(r['argument_bytes_per_device'])}, outputs "
        f"{g(r['output_bytes_per_device'])} (donated {g(r['alias_bytes_per_device'])}), temporaries "
        f"{g(r['temp_bytes_per_device'])}, code {g(r['code_bytes_per_device'])}")
  print(f"peak {g(r['peak_bytes_per_device'])} of {g(r['hbm_bytes_per_device'])} HBM: {r['verdict']}")
  if "compiler_message" in r:
    print(f"compiler: {r['compiler_message']}")
  if "flops_per_step_per_device" in r:
    ratio = r["flops_per_step_per_device"] / r["model_flops_per_step_per_device"]
    xla = r.get("xla_flops")
    print(f"FLOPs per step per device: {r['flops_per_step_per_device']:.4g} counted; "
          f"{r['model_flops_per_step_per_device']:.4g} from the model "
          f"({r['model_train_tflops_per_clip']:.4g} TFLOP per clip (tools.summary) x batch; "
          f"ratio {ratio:.3f}); XLA cost analysis {'-' if xla is None else f'{xla:.4g}'} "
          "(loop bodies once)")
  print(f"compile: train {r['compile_s']:.1f} s" +
        (f", eval {r['eval_compile_s']:.1f} s (eval peak {g(r['eval_peak_bytes_per_device'])})"
         if "eval_compile_s" in r else ""))
  if "max_per_device_batch" in r:
    print(f"largest per-device batch that fits: {r['max_per_device_batch']}")
  if "roofline_table" in r:
    print(r["roofline_table"])


def main(config, topology_name, per_device_batch, num_slices, search, as_json,
         with_roofline=False) -> int:
  topology = parse_topology(topology_name, num_slices)
  n = topology.chips * num_slices
  max_batch, tried = (find_max_batch(config, topology, start=per_device_batch or 1) if search
                      else (None, None))
  if per_device_batch is None and search:
    per_device_batch = max(max_batch, 1)
  if per_device_batch is None:
    micro = int(config.train.batch_size) // int(config.train.get("accum_steps", 1))
    if micro % n:
      raise ValueError(f"config.train.batch_size / accum_steps = {micro} does not split over {n} "
                       "devices; give --per_device_batch")
    per_device_batch = micro // n
  result = check(config, topology, per_device_batch, with_roofline=with_roofline)
  if search:
    result["max_per_device_batch"] = max_batch
    result["max_batch_search"] = [dict(per_device_batch=b, fits=f, peak_bytes_per_device=p,
                                       compile_s=c) for b, f, p, c in tried]
  if as_json:
    print(json.dumps(result))
  else:
    print_report(result)
  return 0 if result["fits"] else 1


if __name__ == "__main__":
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from ca2st_jax import cli  # pylint: disable=g-import-not-at-top
  _CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<name>.py[:variant]")
  _TOPOLOGY = flags.DEFINE_string("topology", None, "Cloud TPU slice: v4-N, v5p-N, v5e-N, v6e-N.")
  _BATCH = flags.DEFINE_integer("per_device_batch", None, "Clips per device per micro-batch "
                                "(default: the largest that fits with --find_max_batch, else the "
                                "config's batch spread over the slice).")
  _SLICES = flags.DEFINE_integer("num_slices", 1, "Slices joined over the data-center network.")
  _SEARCH = flags.DEFINE_bool("find_max_batch", False, "Also search the largest per-device batch "
                              "(starting from --per_device_batch when given).")
  _JSON = flags.DEFINE_bool("json", False, "Print one JSON object.")
  _ROOFLINE = flags.DEFINE_bool("roofline", False, "Also predict the steps' time on the target "
                                "from their optimised programs (tools.roofline).")
  flags.mark_flags_as_required(["config", "topology"])

  def _run(argv):
    del argv
    try:
      sys.exit(main(_CONFIG.value, _TOPOLOGY.value, _BATCH.value, _SLICES.value, _SEARCH.value,
                    _JSON.value, _ROOFLINE.value))
    except ValueError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)

  app.run(_run, flags_parser=cli.parse_flags)
