"""Device mesh, parameter sharding rules and host-batch → global-array assembly.

Mesh axes (data, fsdp, tensor), sizes from `config.mesh` (-1 = all remaining devices). Batches are split
over (data, fsdp); parameters follow a short list of (regex, spec) rules matched against the
'.'-joined parameter path (the same regex also matches the optimiser moments of that parameter, whose
paths end with the parameter's). A spec gives one entry per array dimension (a mesh axis name, a tuple of
them, or None); an axis that does not divide its dimension is dropped, so every rule is valid on every
mesh. Then, with an fsdp axis > 1, the largest still-unsharded dimension divisible by it is sharded
over 'fsdp' (ZeRO-3 style), for arrays of at least `fsdp_min_size` elements.
"""
from __future__ import annotations

import os
import re
from typing import Sequence

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Megatron-style tensor parallelism for the projections; everything else replicated (+ fsdp).
DEFAULT_RULES: tuple[tuple[str, tuple], ...] = (
    (r"(fc1|qkv|\.q|\.kv|_down|c_fc)\.kernel$", (None, "tensor")),
    (r"(fc1|qkv|\.q|\.kv|_down|c_fc)\.bias$", ("tensor",)),
    (r"(fc2|\.proj|\.out|_up|c_proj|out_proj)\.kernel$", ("tensor", None)),
    (r".*", ()),
)


def maybe_initialize_distributed():
  """jax.distributed.initialize() when launched as several processes (SLURM, TPU pod, env vars)."""
  multi = any(os.environ.get(v) for v in ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS"))
  multi |= int(os.environ.get("SLURM_NTASKS", "1")) > 1
  multi |= bool(os.environ.get("TPU_WORKER_HOSTNAMES", "").count(","))
  if multi:
    jax.distributed.initialize()
    logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())


def make_mesh(mesh_cfg=None, devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  sizes = [int((mesh_cfg or {}).get(a, -1 if a == "data" else 1)) for a in AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh: at most one axis may be -1, got {dict(zip(AXES, sizes))}")
  if -1 in sizes:
    rest = int(np.prod([s for s in sizes if s != -1]))
    if n % rest:
      raise ValueError(f"config.mesh {dict(zip(AXES, sizes))}: {n} devices not divisible by {rest}")
    sizes[sizes.index(-1)] = n // rest
  if int(np.prod(sizes)) != n:
    raise ValueError(f"config.mesh {dict(zip(AXES, sizes))} needs {int(np.prod(sizes))} devices, "
                     f"have {n}")
  auto = (jax.sharding.AxisType.Auto,) * len(AXES)
  if devices == list(jax.devices()):
    return jax.make_mesh(tuple(sizes), AXES, axis_types=auto)
  return Mesh(np.asarray(devices).reshape(sizes), AXES, axis_types=auto)


def _axis_size(mesh: Mesh, axis) -> int:
  if axis is None:
    return 1
  if isinstance(axis, (tuple, list)):
    return int(np.prod([mesh.shape[a] for a in axis]))
  return mesh.shape[axis]


def spec_for(path: str, shape: tuple[int, ...], mesh: Mesh, rules=DEFAULT_RULES,
             fsdp_min_size: int = 2 ** 14) -> P:
  spec: list = [None] * len(shape)
  for pattern, rule in rules:
    if re.search(pattern, path):
      if rule and len(rule) == len(shape):
        spec = list(rule)
      break
  for i, (axis, dim) in enumerate(zip(spec, shape)):
    if axis is not None and (dim % _axis_size(mesh, axis) or _axis_size(mesh, axis) == 1):
      spec[i] = None
  f = mesh.shape.get("fsdp", 1)
  if f > 1 and int(np.prod(shape, dtype=np.int64)) >= fsdp_min_size:
    free = [i for i, a in enumerate(spec) if a is None and shape[i] % f == 0]
    if free:
      i = max(free, key=lambda j: shape[j])
      spec[i] = "fsdp"
  while spec and spec[-1] is None:
    spec.pop()
  return P(*spec)


def tree_shardings(tree, mesh: Mesh, rules=DEFAULT_RULES, fsdp_min_size: int = 2 ** 14):
  """NamedSharding for every leaf of an (abstract) pytree, by rule on its '.'-joined path."""

  def one(kp, leaf):
    path = jax.tree_util.keystr(kp, simple=True, separator=".").removesuffix(".value")
    shape = tuple(getattr(leaf, "shape", ()))
    return NamedSharding(mesh, spec_for(path, shape, mesh, rules, fsdp_min_size))

  return jax.tree_util.tree_map_with_path(one, tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def num_batch_shards(mesh: Mesh) -> int:
  return _axis_size(mesh, BATCH_AXES)


def global_batch(host_batch: dict, mesh: Mesh) -> dict:
  """Per-host numpy batch (leading axis = this host's share) → global jax.Arrays sharded on BATCH_AXES."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in host_batch.items()}
