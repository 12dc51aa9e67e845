"""Device mesh, parameter shardings and host-batch → global-array assembly.

Mesh axes (data, fsdp), sizes from `config.mesh` (-1 = all remaining devices), devices laid out by
`mesh_utils.create_device_mesh` (the physical topology on TPU). Batches are split over
(data, fsdp). Parameters, their optimiser moments and the frozen experts alike are sharded over
'fsdp' (ZeRO-3 style): each array of at least `config.mesh.fsdp_min_size` elements on its largest
dimension divisible by the fsdp size (the last such on a tie, so a leading stacked-layer axis is
sharded only when it is the largest), the rest replicated.

No tensor parallelism: these are ViT-B experts (768 wide, 12 heads, 86M parameters each), whose
activations and fsdp-sharded weights fit one accelerator at the paper's per-chip batch, so
splitting a layer across chips would only add collectives. Tensor parallelism would also need the
fused q|k|v and k|v kernels laid out per head on each shard (a plain column split puts all of k on
one shard and all of v on the other).
"""
from __future__ import annotations

import itertools
import os
from typing import Sequence

import jax
import numpy as np
from absl import flags
from absl import logging
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from orbax.checkpoint import multihost as orbax_multihost

AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")

# Environment of a multi-process launch outside SLURM and TPU VMs (launch/local.sh sets them).
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
# How long a process waits at a barrier for the slowest one (a first compile on a loaded host).
SYNC_TIMEOUT_S = 1800
_barrier_number = itertools.count()


def maybe_initialize_distributed():
  """jax.distributed.initialize() when launched as several processes.

  SLURM and Cloud TPU VMs are detected by JAX itself. Elsewhere (e.g. launch/local.sh) set
  JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES=N and JAX_PROCESS_ID=i in every process.
  """
  coordinator = os.environ.get(ENV_COORDINATOR, "")
  if coordinator:
    missing = [v for v in (ENV_NUM_PROCESSES, ENV_PROCESS_ID) if not os.environ.get(v)]
    if missing:
      raise ValueError(f"{ENV_COORDINATOR}={coordinator} is set, so this is a multi-process launch, "
                       f"but {' and '.join(missing)} are not")
    jax.distributed.initialize(coordinator_address=coordinator,
                               num_processes=int(os.environ[ENV_NUM_PROCESSES]),
                               process_id=int(os.environ[ENV_PROCESS_ID]))
  elif (int(os.environ.get("SLURM_NTASKS", "1")) > 1
        or os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",")):
    jax.distributed.initialize()
  else:
    return
  logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
  # Orbax's barriers are otherwise a psum over every device: on CPU its gloo group must form within
  # a fixed 30 s on all processes, which a first save or restore on a loaded host overruns.
  flags.FLAGS.experimental_orbax_use_distributed_barrier = True


def barrier(name: str, timeout_s: int = SYNC_TIMEOUT_S) -> None:
  """Waits until every process reaches the barrier `name`, up to `timeout_s`. A no-op in one
  process; every process must call it in the same order.

  A barrier of jax.distributed's coordination service (through Orbax's public wrapper), not a
  device collective: those give up after a fixed 30 s on CPU, which a first compile or building
  a data set on one process overruns.
  """
  if jax.process_count() > 1:
    orbax_multihost.get_barrier_sync_fn()(key=f"ca2st_jax:{next(_barrier_number)}:{name}",
                                          timeout_ms=timeout_s * 1000)


def compile_then_sync(jitted, *args, name: str) -> None:
  """Compiles `jitted` for `args` (the call that follows reuses it), then waits for every process
  at a barrier. A no-op in one process; every process must call it in the same order.

  The first run of a program forms a group for each of its cross-process collectives; on CPU (gloo)
  every process must join within a fixed 30 s, and compiles on a loaded host differ by more. After
  this, every process starts that first run at once.
  """
  if jax.process_count() > 1:
    jitted.lower(*args).compile()
    barrier(name)


def mesh_sizes(mesh_cfg, num_devices: int) -> tuple[int, ...]:
  mesh_cfg = mesh_cfg or {}
  sizes = [int(mesh_cfg.get(a, -1 if a == "data" else 1)) for a in AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh: at most one axis may be -1, got {dict(zip(AXES, sizes))}")
  if -1 in sizes:
    rest = int(np.prod([s for s in sizes if s != -1]))
    if num_devices % rest:
      raise ValueError(f"config.mesh {dict(zip(AXES, sizes))}: {num_devices} devices not "
                       f"divisible by {rest}")
    sizes[sizes.index(-1)] = num_devices // rest
  if int(np.prod(sizes)) != num_devices:
    raise ValueError(f"config.mesh {dict(zip(AXES, sizes))} needs {int(np.prod(sizes))} devices, "
                     f"have {num_devices}")
  return tuple(sizes)


def make_mesh(mesh_cfg=None, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The (data, fsdp) mesh over `devices` (default: all), in the physical device order."""
  devices = list(devices if devices is not None else jax.devices())
  sizes = mesh_sizes(mesh_cfg, len(devices))
  grid = mesh_utils.create_device_mesh(sizes, devices)
  return Mesh(grid, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def _axis_size(mesh: Mesh, axis) -> int:
  if axis is None:
    return 1
  if isinstance(axis, (tuple, list)):
    return int(np.prod([mesh.shape[a] for a in axis]))
  return mesh.shape[axis]


def spec_for(shape: tuple[int, ...], mesh: Mesh, fsdp_min_size: int = 2 ** 14) -> P:
  """fsdp on the largest dimension divisible by the fsdp size (the last on a tie), else replicated."""
  f = mesh.shape.get("fsdp", 1)
  if f == 1 or int(np.prod(shape, dtype=np.int64)) < fsdp_min_size:
    return P()
  free = [i for i, d in enumerate(shape) if d % f == 0]
  if not free:
    return P()
  i = max(free, key=lambda j: (shape[j], j))
  return P(*([None] * i), "fsdp")


def tree_shardings(tree, mesh: Mesh, fsdp_min_size: int = 2 ** 14):
  """NamedSharding for every leaf of an (abstract) pytree."""
  return jax.tree.map(
      lambda leaf: NamedSharding(mesh, spec_for(tuple(getattr(leaf, "shape", ())), mesh,
                                                fsdp_min_size)), tree)


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
