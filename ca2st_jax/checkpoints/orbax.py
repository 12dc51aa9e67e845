"""Training checkpoints (Orbax): workdir/ckpt (async, keep-N, every N steps and at the end) and
workdir/best (the best eval metric), each step holding the train state, optionally the frozen
experts, the data iterator's position and a small JSON of run facts.

Arrays are stored under '.'-joined parameter paths, so a checkpoint does not depend on the mesh or
on pytree classes: any mesh, any number of processes can restore it. Paths go through
`etils.epath` (Orbax's own path layer), so a gs:// workdir works like a local one.
"""
from __future__ import annotations

import jax
import orbax.checkpoint as ocp
from etils import epath


# Orbax splits the write of an array that several devices hold among those devices (replica
# parallel), each part an eager jax.lax.slice: one compiled program per device and shape. For small
# arrays (biases, norms, adapters) the compiles cost more than the write: 184 of them, 9.6 s, in
# one 8-device save of a tiny model on a CPU. An array whose parts would be smaller than this is
# written whole. Orbax's ArrayHandler takes the threshold as an argument; the registered handler
# is given it in place (an Orbax without the field slices as before).
REPLICA_PARALLEL_MIN_SLICE_BYTES = 1 << 20
_ARRAY_HANDLER = ocp.type_handlers.get_type_handler(jax.Array)
if hasattr(_ARRAY_HANDLER, "_min_slice_bytes_for_replica_parallel"):
  _ARRAY_HANDLER._min_slice_bytes_for_replica_parallel = REPLICA_PARALLEL_MIN_SLICE_BYTES  # pylint: disable=protected-access


class CheckpointError(RuntimeError):
  pass


def flatten(tree) -> dict:
  """Pytree → {'.'-joined path: leaf}."""
  out = {}
  for kp, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    out[jax.tree_util.keystr(kp, simple=True, separator=".") or "_"] = leaf
  return out


def unflatten(flat: dict, like):
  kps, treedef = jax.tree_util.tree_flatten_with_path(like)
  keys = [jax.tree_util.keystr(kp, simple=True, separator=".") or "_" for kp, _ in kps]
  return jax.tree.unflatten(treedef, [flat[k] for k in keys])


def _abstract(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      shardings)


class Checkpointer:
  """Saves and restores (state, frozen, data position, meta) at the given abstract trees/shardings."""

  def __init__(self, workdir, *, abstract_state, state_shardings, abstract_frozen,
               frozen_shardings, keep: int = 2, save_frozen: bool = True,
               async_save: bool = True):
    self.abstract_state, self.state_shardings = abstract_state, state_shardings
    self.abstract_frozen, self.frozen_shardings = abstract_frozen, frozen_shardings
    # The frozen experts are saved too (self-contained checkpoints) unless there are none.
    self.save_frozen = bool(save_frozen) and bool(jax.tree.leaves(abstract_frozen))
    self.unreadable = set()  # latest-checkpoint steps that failed to restore
    workdir = epath.Path(workdir)
    self.dirs = {"latest": workdir / "ckpt", "best": workdir / "best"}
    names = ("state", "frozen", "data", "meta") if self.save_frozen else ("state", "data", "meta")
    self.latest = ocp.CheckpointManager(
        self.dirs["latest"], item_names=names,
        options=ocp.CheckpointManagerOptions(max_to_keep=int(keep), create=True,
                                             enable_async_checkpointing=bool(async_save)))
    self.best = ocp.CheckpointManager(
        self.dirs["best"], item_names=names,
        options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                             enable_async_checkpointing=False))

  @classmethod
  def from_config(cls, workdir, ckpt_cfg, *, abstract_state, state_shardings, abstract_frozen,
                  frozen_shardings):
    """config.ckpt: keep (steps kept), save_frozen, async."""
    get = (ckpt_cfg or {}).get
    return cls(workdir, abstract_state=abstract_state, state_shardings=state_shardings,
               abstract_frozen=abstract_frozen, frozen_shardings=frozen_shardings,
               keep=int(get("keep", 2)), save_frozen=bool(get("save_frozen", True)),
               async_save=bool(get("async", True)))

  def latest_step(self):
    return self.latest.latest_step()

  def all_steps(self):
    return list(self.latest.all_steps())

  def save(self, step, state, frozen, data_state, meta, best=False):
    manager = self.best if best else self.latest
    if not best and step in self.unreadable:  # replaced by the resumed run's own save
      manager.delete(step)
      self.unreadable.discard(step)
    if step in manager.all_steps():
      return
    items = dict(state=ocp.args.StandardSave(flatten(state)),
                 data=ocp.args.JsonSave(data_state or {}), meta=ocp.args.JsonSave(meta or {}))
    if self.save_frozen:
      items["frozen"] = ocp.args.StandardSave(flatten(frozen))
    manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, step=None, best=False):
    """(state, frozen, data position, meta) of `step` (default: the latest); frozen is None when
    the model has frozen experts that this checkpointer does not save (save_frozen=False)."""
    manager = self.best if best else self.latest
    step = manager.latest_step() if step is None else step
    items = dict(
        state=ocp.args.StandardRestore(flatten(_abstract(self.abstract_state,
                                                         self.state_shardings))),
        data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore())
    if self.save_frozen:
      items["frozen"] = ocp.args.StandardRestore(
          flatten(_abstract(self.abstract_frozen, self.frozen_shardings)))
    r = manager.restore(step, args=ocp.args.Composite(**items))
    state = unflatten(r["state"], self.abstract_state)
    if self.save_frozen:
      frozen = unflatten(r["frozen"], self.abstract_frozen)
    elif not jax.tree.leaves(self.abstract_frozen):
      frozen = self.abstract_frozen  # a model with nothing frozen: nothing to rebuild
    else:
      frozen = None
    return state, frozen, r["data"], r["meta"]

  def restore_newest_good(self):
    """(step, restored) of the newest latest-checkpoint step that reads back, or (None, None)
    when there is none.

    A step that does not read (a file damaged after Orbax committed it: a disk fault, a partial
    copy of the workdir) is reported and the next older one tried, so a long run loses
    ckpt_every steps instead of stopping; the resumed run saves over it. CheckpointError when no
    step reads.
    """
    steps = sorted(self.latest.all_steps(), reverse=True)
    for i, step in enumerate(steps):
      try:
        return step, self.restore(step)
      # Orbax and TensorStore raise many kinds (KeyError, ValueError, their own) for a bad file.
      except Exception as e:  # pylint: disable=broad-except
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        msg = (f"checkpoint step {step} ({self.dirs['latest'] / str(step)}) cannot be read: "
               f"{type(e).__name__}: {first[:300]}")
        if i + 1 == len(steps):
          raise CheckpointError(msg + "; no older step to fall back to") from None
        print(f"{msg}; falling back to step {steps[i + 1]}", flush=True)
        self.unreadable.add(step)
    return None, None

  def reached_preemption(self, step) -> bool:
    """True on every process at the same step once any process got SIGTERM (multi-process runs:
    JAX's preemption sync service, which jax.distributed.initialize starts)."""
    return self.latest.reached_preemption(step)

  def wait(self):
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self):
    self.latest.close()
    self.best.close()
