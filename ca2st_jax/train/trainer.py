"""The trainer, top to bottom (big_vision style).

mesh → abstract model and optimiser (nnx.eval_shape / jax.eval_shape) → shardings by rule →
jit(init) → resume (workdir's latest checkpoint, else config.init imports, else scratch) →
loop over jit(train_step, donate) with evaluation every N steps and at the end.

State layout (all pytrees of jax.Arrays):
  state  = {'params': trainable nnx.State, 'opt_state': optax state over params only,
            'step': int32, 'rng': uint32[2]}        (donated, updated every step)
  frozen = the frozen experts' nnx.State            (never updated, never has gradients)
  rest   = non-parameter variables (dropout RNG streams; re-seeded every step from rng + step)
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from ca2st_jax.train import input as input_lib
from ca2st_jax.train import mesh as mesh_lib
from ca2st_jax.train import metrics as metrics_lib
from ca2st_jax.train import optim as optim_lib

# Python-side trace counters (tests assert the step compiles once).
TRACE_COUNTS = {"train_step": 0, "eval_step": 0}

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# Config sections that must match for a workdir to be resumed.
IDENTITY_SECTIONS = ("model", "data")


class NonFiniteLossError(FloatingPointError):
  pass


def normalize_video(video):
  """uint8 [B,F,H,W,3] → float32 ImageNet-normalised (the data helper's function when present)."""
  try:
    from ca2st_jax.data import normalize_video as data_normalize  # pylint: disable=g-import-not-at-top
    return data_normalize(video)
  except ImportError:
    v = video.astype(jnp.float32) / 255.0
    return (v - IMAGENET_MEAN) / IMAGENET_STD


# --------------------------------------------------------------------------------------------------
# Loss: mixup + label smoothing soft targets (util_tools/mixup.py), compositional verb+noun.
# --------------------------------------------------------------------------------------------------
def soft_targets(labels, num_classes, lam, smoothing, flipped=None):
  """mixup_target of the reference: lam * onehot_s(y) + (1 - lam) * onehot_s(flip(y)).

  `flipped` gives each row's mixup partner label explicitly (micro-batches of an accumulated step).
  """
  off = smoothing / num_classes
  on = 1.0 - smoothing + off
  y1 = jax.nn.one_hot(labels, num_classes) * (on - off) + off
  if flipped is None:
    y2 = jnp.flip(y1, axis=0)
  else:
    y2 = jax.nn.one_hot(flipped, num_classes) * (on - off) + off
  return lam * y1 + (1.0 - lam) * y2


def soft_cross_entropy(logits, targets):
  return jnp.mean(jnp.sum(-targets * jax.nn.log_softmax(logits.astype(jnp.float32), -1), -1))


def mixup_lambda(rng, alpha, prob):
  """Batch-mode mixup: lam ~ Beta(alpha, alpha) with probability `prob`, else 1."""
  if not alpha or not prob:
    return jnp.float32(1.0)
  k1, k2 = jax.random.split(rng)
  lam = jax.random.beta(k1, alpha, alpha).astype(jnp.float32)
  return jnp.where(jax.random.uniform(k2) < prob, lam, 1.0)


def _mix(x, lam):
  return lam * x + (1.0 - lam) * jnp.flip(x, axis=0)


# --------------------------------------------------------------------------------------------------
# Setup helpers
# --------------------------------------------------------------------------------------------------
def default_model_lib():
  from ca2st_jax import models  # pylint: disable=g-import-not-at-top
  return models


def _model_inputs(batch):
  return {k: batch[k] for k in ("audio", "audio_times") if k in batch}


LABEL_KEYS = ("label", "verb", "noun")


def _host(x):
  """Fully gathered numpy copy of a (possibly sharded, possibly multi-host) array."""
  if jax.process_count() > 1:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def check_workdir_config(config, workdir):
  """Refuses a workdir written by a different model/data config; records the config otherwise."""
  path = os.path.join(workdir, "config.json")
  current = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    diffs = []
    for section in IDENTITY_SECTIONS:
      a, b = saved.get(section, {}), current.get(section, {})
      for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
          diffs.append(f"config.{section}.{key}: workdir has {a.get(key)!r}, this run {b.get(key)!r}")
    if diffs:
      raise ValueError(
          f"workdir {workdir} holds a run of a different config, so its checkpoints cannot be resumed "
          "or evaluated with this one:\n  " + "\n  ".join(diffs) +
          "\nUse a new --workdir, or the config that wrote it (see its config.json).")
  elif jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
      f.write(config.to_json_best_effort(indent=2))


class MetricWriter:
  """Console, TensorBoard and DIR/metrics.jsonl (process 0 only)."""

  def __init__(self, workdir):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.tb = None
    if self.active:
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self.tb = SummaryWriter(os.path.join(workdir, "tb"))
      except ImportError:  # pragma: no cover
        pass

  def write(self, step: int, split: str, values: dict):
    if not self.active:
      return
    rec = {"step": int(step), "split": split}
    rec.update({k: (float(v) if isinstance(v, (int, float, np.floating, np.integer)) else v)
                for k, v in values.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(rec) + "\n")
    if self.tb is not None:
      for k, v in values.items():
        if isinstance(v, (int, float, np.floating, np.integer)):
          self.tb.add_scalar(f"{split}/{k}", float(v), step)
      self.tb.flush()

  def close(self):
    if self.tb is not None:
      self.tb.close()


def _flat(tree) -> dict:
  """Pytree → {'.'-joined path: leaf} (the checkpoint layout; independent of mesh and pytree classes)."""
  out = {}
  for kp, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    out[jax.tree_util.keystr(kp, simple=True, separator=".") or "_"] = leaf
  return out


def _unflat(flat: dict, like):
  kps, treedef = jax.tree_util.tree_flatten_with_path(like)
  keys = [jax.tree_util.keystr(kp, simple=True, separator=".") or "_" for kp, _ in kps]
  return jax.tree.unflatten(treedef, [flat[k] for k in keys])


def _abstract(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Setup:
  """Everything derived from the config before any data moves."""
  config: Any
  mesh: Any
  graphdef: Any
  tx: Any
  schedule: Callable
  state_shardings: Any
  frozen_shardings: Any
  rest_shardings: Any
  abstract_state: Any
  abstract_frozen: Any
  abstract_rest: Any
  init_fn: Callable
  train_step: Callable
  eval_step: Callable
  global_batch: int
  trainable: Any
  total_steps: int
  warmup_steps: int


def build_setup(config, *, model_lib=None, num_train_examples=None, devices=None) -> Setup:
  model_lib = model_lib or default_model_lib()
  tcfg = config.train
  mesh_cfg = config.get("mesh", None) or tcfg.get("mesh", None) or {}
  mesh = mesh_lib.make_mesh(mesh_cfg, devices)
  global_batch = int(tcfg.batch_size)
  shards = mesh_lib.num_batch_shards(mesh)
  accum = int(tcfg.get("accum_steps", 1))
  if global_batch % (shards * accum):
    raise ValueError(f"config.train.batch_size={global_batch} must be divisible by the batch shards "
                     f"({shards} = mesh data x fsdp) times config.train.accum_steps ({accum})")
  if (global_batch // accum) % shards:
    raise ValueError(f"config.train.batch_size / accum_steps must be divisible by {shards}")
  durations = optim_lib.steps_from_config(tcfg, num_train_examples, global_batch)
  seed = int(config.get("seed", 0))

  def make_model():
    return model_lib.build(config.model, rngs=nnx.Rngs(params=seed, dropout=seed + 1))

  # 'reference': the paper's trained set (models.TRAINABLE); 'all': every parameter (from-scratch runs).
  which = tcfg.get("trainable", "reference")
  if which not in ("reference", "all"):
    raise ValueError(f"config.train.trainable={which!r}: expected 'reference' or 'all'")
  trainable = model_lib.TRAINABLE if which == "reference" else nnx.Param
  abs_model = nnx.eval_shape(make_model)
  graphdef, abs_params, abs_frozen, abs_rest = nnx.split(abs_model, trainable, nnx.Param, ...)
  depth = int(config.model.get("depth", 0))
  tx, schedule = optim_lib.make_optimizer(
      config.optim, abs_params, global_batch=global_batch, total_steps=durations["total_steps"],
      warmup_steps=durations["warmup_steps"], layer_id_fn=getattr(model_lib, "layer_id", None),
      depth=depth)

  rules = tuple(config.get("sharding_rules", None) or mesh_lib.DEFAULT_RULES)
  fsdp_min = int(mesh_cfg.get("fsdp_min_size", 2 ** 14))

  def init_state():
    model = make_model()
    _, params, frozen, rest = nnx.split(model, trainable, nnx.Param, ...)
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
             "rng": jax.random.PRNGKey(seed + 2)}
    return state, frozen, rest

  abs_state, _, _ = jax.eval_shape(init_state)
  state_sh = mesh_lib.tree_shardings(abs_state, mesh, rules, fsdp_min)
  frozen_sh = mesh_lib.tree_shardings(abs_frozen, mesh, rules, fsdp_min)
  rest_sh = jax.tree.map(lambda _: mesh_lib.replicated(mesh), abs_rest)
  repl = mesh_lib.replicated(mesh)
  batch_sh = mesh_lib.batch_sharding(mesh)
  init_fn = jax.jit(init_state, out_shardings=(state_sh, frozen_sh, rest_sh))

  alpha = float(tcfg.get("mixup_alpha", 0.0))
  mix_prob = float(tcfg.get("mixup_prob", 0.0))
  smoothing = float(tcfg.get("label_smoothing", 0.0))

  def forward(params, frozen, rest, batch, rng, deterministic):
    # Fresh Variable objects at the current trace level (reseed and dropout counters mutate them).
    rest = jax.tree.map(lambda x: x, rest)
    model = nnx.merge(graphdef, params, frozen, rest)
    if not deterministic:
      nnx.reseed(model, dropout=rng)
    return model(video=batch["video"], **_model_inputs(batch), deterministic=deterministic)

  def train_step(state, frozen, rest, batch):
    TRACE_COUNTS["train_step"] += 1
    rng = jax.random.fold_in(state["rng"], state["step"])
    mix_rng, drop_rng = jax.random.split(rng)
    lam = mixup_lambda(mix_rng, alpha, mix_prob)
    inputs = {"video": _mix(normalize_video(batch["video"]), lam)}
    if "audio" in batch:
      inputs["audio"] = _mix(batch["audio"].astype(jnp.float32), lam)
    if "audio_times" in batch:
      inputs["audio_times"] = batch["audio_times"]
    labels = {k: batch[k] for k in LABEL_KEYS if k in batch}

    # frozen/rest are arguments (not closed over) so NNX variables are rebuilt at the grad trace level.
    def loss_fn(params, frozen, rest, micro, micro_rng):
      out = forward(params, frozen, rest, micro, micro_rng, deterministic=False)
      loss = 0.0
      for key, logits in out.items():
        targets = soft_targets(micro[key], logits.shape[-1], lam, smoothing,
                               flipped=micro.get(f"flip_{key}"))
        loss = loss + soft_cross_entropy(logits, targets)
      return loss

    full = dict(inputs, **labels)
    if accum == 1:
      loss, grads = jax.value_and_grad(loss_fn)(state["params"], frozen, rest, full, drop_rng)
    else:
      # Micro-batch i takes rows i, i + accum, ...: every micro-batch stays spread over all shards.
      # Mixup already paired each row with its partner in the *global* batch; the labels' partners
      # are carried along as 'flip_<key>' so the soft targets match.
      full.update({f"flip_{k}": jnp.flip(v, 0) for k, v in labels.items()})

      def split(x):
        return jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1)

      micro_all = jax.tree.map(split, full)

      def body(carry, xs):
        loss_acc, g_acc = carry
        micro, i = xs
        l, g = jax.value_and_grad(loss_fn)(state["params"], frozen, rest, micro,
                                           jax.random.fold_in(drop_rng, i))
        return (loss_acc + l, jax.tree.map(jnp.add, g_acc, g)), None

      zeros = jax.tree.map(jnp.zeros_like, state["params"])
      (loss, grads), _ = jax.lax.scan(body, (jnp.float32(0.0), zeros),
                                      (micro_all, jnp.arange(accum)))
      loss, grads = loss / accum, jax.tree.map(lambda g: g / accum, grads)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1,
                 "rng": state["rng"]}
    out = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state["step"]),
           "mixup_lambda": lam}
    return new_state, out

  def eval_step(state, frozen, rest, batch):
    TRACE_COUNTS["eval_step"] += 1
    inputs = {"video": normalize_video(batch["video"])}
    inputs.update({k: batch[k] for k in ("audio", "audio_times") if k in batch})
    out = forward(state["params"], frozen, rest, inputs, None, deterministic=True)
    return {k: jax.nn.softmax(v.astype(jnp.float32), -1) for k, v in out.items()}

  train_step_jit = jax.jit(
      train_step, in_shardings=(state_sh, frozen_sh, rest_sh, batch_sh),
      out_shardings=(state_sh, repl), donate_argnums=(0,))
  eval_step_jit = jax.jit(eval_step, in_shardings=(state_sh, frozen_sh, rest_sh, batch_sh),
                          out_shardings=batch_sh)
  return Setup(config=config, mesh=mesh, graphdef=graphdef, tx=tx, schedule=schedule,
               state_shardings=state_sh, frozen_shardings=frozen_sh, rest_shardings=rest_sh,
               abstract_state=abs_state, abstract_frozen=abs_frozen, abstract_rest=abs_rest,
               init_fn=init_fn, train_step=train_step_jit, eval_step=eval_step_jit,
               global_batch=global_batch, trainable=trainable, total_steps=durations["total_steps"],
               warmup_steps=durations["warmup_steps"])


class Checkpointer:
  """Orbax: workdir/ckpt (async, keep-N, every N steps and at the end) and workdir/best (best metric)."""

  def __init__(self, workdir, setup: Setup, ckpt_cfg):
    self.setup = setup
    # The frozen experts are saved too (self-contained checkpoints) unless there are none.
    self.save_frozen = bool(ckpt_cfg.get("save_frozen", True)) and bool(
        jax.tree.leaves(setup.abstract_frozen))
    opts = ocp.CheckpointManagerOptions(
        max_to_keep=int(ckpt_cfg.get("keep", 2)), create=True,
        enable_async_checkpointing=bool(ckpt_cfg.get("async", True)))
    names = ("state", "frozen", "data", "meta") if self.save_frozen else ("state", "data", "meta")
    self.latest = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "ckpt"), options=opts,
                                        item_names=names)
    best_opts = ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                             enable_async_checkpointing=False)
    self.best = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "best"),
                                      options=best_opts, item_names=names)

  def latest_step(self):
    return self.latest.latest_step()

  def _args(self, state, frozen, data_state, meta):
    items = dict(state=ocp.args.StandardSave(_flat(state)), data=ocp.args.JsonSave(data_state or {}),
                 meta=ocp.args.JsonSave(meta or {}))
    if self.save_frozen:
      items["frozen"] = ocp.args.StandardSave(_flat(frozen))
    return ocp.args.Composite(**items)

  def save(self, step, state, frozen, data_state, meta, best=False):
    manager = self.best if best else self.latest
    if step in manager.all_steps():
      return
    manager.save(step, args=self._args(state, frozen, data_state, meta), force=True)

  def restore(self, step=None, best=False):
    manager = self.best if best else self.latest
    step = manager.latest_step() if step is None else step
    s = self.setup
    items = dict(state=ocp.args.StandardRestore(_flat(_abstract(s.abstract_state, s.state_shardings))),
                 data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore())
    if self.save_frozen:
      items["frozen"] = ocp.args.StandardRestore(
          _flat(_abstract(s.abstract_frozen, s.frozen_shardings)))
    r = manager.restore(step, args=ocp.args.Composite(**items))
    state = _unflat(r["state"], s.abstract_state)
    frozen = _unflat(r["frozen"], s.abstract_frozen) if self.save_frozen else None
    return state, frozen, r["data"], r["meta"]

  def wait(self):
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self):
    self.latest.close()
    self.best.close()


def evaluate(setup: Setup, state, frozen, rest, source, *, with_map=False, return_outputs=False):
  """One pass over the eval split: per-view softmax → gathered → multi-view averaged metrics."""
  probs, labels, vids, masks = {}, {}, [], []
  for host_batch in source.eval_iterator():
    mask = np.asarray(host_batch["mask"], bool)
    batch = mesh_lib.global_batch({k: v for k, v in host_batch.items()
                                   if k in ("video", "audio", "audio_times")}, setup.mesh)
    out = setup.eval_step(state, frozen, rest, batch)
    for k, v in out.items():
      probs.setdefault(k, []).append(_host(v))
    meta = mesh_lib.global_batch({k: host_batch[k] for k in ("video_index", "mask", *LABEL_KEYS)
                                  if k in host_batch}, setup.mesh)
    for k in LABEL_KEYS:
      if k in meta:
        labels.setdefault(k, []).append(_host(meta[k]))
    vids.append(_host(meta["video_index"]))
    masks.append(_host(meta["mask"]))
    del mask
  probs = {k: np.concatenate(v) for k, v in probs.items()}
  labels = {k: np.concatenate(v) for k, v in labels.items() if k in probs}
  vids, masks = np.concatenate(vids), np.concatenate(masks)
  result = metrics_lib.compute_eval_metrics(probs, labels, vids, masks, with_map=with_map)
  if return_outputs:
    return result, (probs, labels, vids, masks)
  return result


def _fmt_eta(seconds):
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _maybe_import_init(config, setup: Setup, state, frozen, rest=None):
  """config.init (expert or whole-model PyTorch checkpoints) → the interop helper's importer."""
  init = config.get("init", None)
  # Only checkpoint paths ask for an import; ast_pos_mode is an option of the AST import.
  if not init or not any(init.get(k, "") for k in ("checkpoint", "clip", "videomae", "ast")):
    return state, frozen
  from ca2st_jax.checkpoints import torch_import  # pylint: disable=g-import-not-at-top
  if rest is None:
    rest = setup.init_fn()[2]
  model = nnx.merge(setup.graphdef, jax.device_get(state["params"]), jax.device_get(frozen),
                    jax.device_get(rest))
  done = torch_import.load_into(model, init, config.model)
  print(f"Initialised from config.init: {done}", flush=True)
  _, params, frozen, _ = nnx.split(model, setup.trainable, nnx.Param, ...)
  params = jax.device_put(params, setup.state_shardings["params"])
  frozen = jax.device_put(frozen, setup.frozen_shardings)
  return dict(state, params=params), frozen  # Adam moments start at zero either way


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, mode: str = "train_and_eval",
                       *, source=None, model_lib=None, devices=None, step_hook=None) -> dict:
  """Runs `mode` in {'train', 'eval', 'train_and_eval'}; returns the last eval metrics (or {}).

  `step_hook(step)` is called after each train step (tests use it to send SIGTERM).
  """
  if mode not in ("train", "eval", "train_and_eval"):
    raise ValueError(f"--mode={mode!r}: expected train, eval or train_and_eval")
  check_workdir_config(config, workdir)
  source = source or input_lib.source_from_config(config)
  setup = build_setup(config, model_lib=model_lib, devices=devices,
                      num_train_examples=getattr(source, "num_train_examples", None))
  tcfg, ecfg = config.train, config.get("eval", ml_collections.ConfigDict())
  with_map = bool(ecfg.get("with_map", False))
  best_metric = ecfg.get("best_metric", "top1")
  writer = MetricWriter(workdir)
  ckpt = Checkpointer(workdir, setup, config.get("ckpt", None) or ml_collections.ConfigDict(dict(
      keep=tcfg.get("keep_ckpts", 2), save_frozen=tcfg.get("save_frozen", True))))
  total = setup.total_steps
  logging.info("mesh %s; global batch %d; %d steps (%d warm-up)", dict(setup.mesh.shape),
               setup.global_batch, total, setup.warmup_steps)

  state, frozen, rest = setup.init_fn()
  data_state, meta = {}, {}
  start = ckpt.latest_step()
  if start is not None:
    state, restored_frozen, data_state, meta = ckpt.restore(start)
    if restored_frozen is not None:
      frozen = restored_frozen
    print(f"Resumed from {workdir}/ckpt step {start}", flush=True)
  elif mode == "eval":
    raise FileNotFoundError(f"--mode=eval: no checkpoint in {workdir}/ckpt")
  else:
    state, frozen = _maybe_import_init(config, setup, state, frozen, rest)

  def run_eval(step):
    res, (probs, labels, _, masks) = evaluate(setup, state, frozen, rest, source, with_map=with_map,
                                              return_outputs=True)
    if "label" in probs and jax.process_index() == 0:
      m = masks
      cm = metrics_lib.confusion_matrix(probs["label"][m], labels["label"][m], probs["label"].shape[1])
      np.save(os.path.join(workdir, "confusion_matrix.npy"), cm)
    writer.write(step, "val", res)
    print(f"[eval] step {step}: " + " ".join(f"{k} {v:.4f}" for k, v in res.items()), flush=True)
    return res

  if mode == "eval":
    res = run_eval(int(start))
    ckpt.close()
    writer.close()
    return res

  # ---- training loop ----
  train_iter = source.train_iterator()
  step = int(jax.device_get(state["step"]))
  if step:
    if data_state and hasattr(train_iter, "set_state"):
      train_iter.set_state(data_state)
    else:
      for _ in range(step):
        next(train_iter)

  preempted = {"flag": False}

  def on_sigterm(signum, frame):
    del signum, frame
    preempted["flag"] = True

  old_handler = signal.signal(signal.SIGTERM, on_sigterm) if _main_thread() else None
  log_every = int(tcfg.get("log_every", 50))
  ckpt_every = int(tcfg.get("ckpt_every", 1000))
  eval_every = int(tcfg.get("eval_every", 0) or 0)
  pending, last_good, result = [], start, {}
  t0, t_step0, examples_per_step = time.time(), step, setup.global_batch

  def check_finite(upto_step):
    losses = np.asarray(jax.device_get([p["loss"] for p in pending]))
    if not np.all(np.isfinite(losses)):
      bad = upto_step - len(pending) + int(np.argmin(np.isfinite(losses))) + 1
      ckpt.wait()
      raise NonFiniteLossError(
          f"non-finite loss {losses[~np.isfinite(losses)][0]} at step {bad}; stopping. The last good "
          f"checkpoint is step {last_good} in {workdir}/ckpt (nothing newer was saved). Lower "
          "config.optim.lr, set config.optim.clip_grad_norm, or check the inputs.")

  def data_position():
    return train_iter.get_state() if hasattr(train_iter, "get_state") else {}

  try:
    while step < total:
      host_batch = next(train_iter)
      batch = mesh_lib.global_batch(host_batch, setup.mesh)
      state, out = setup.train_step(state, frozen, rest, batch)
      step += 1
      pending.append(out)
      if step_hook is not None:
        step_hook(step)
      is_last = step == total
      if step % log_every == 0 or is_last:
        check_finite(step)
        vals = jax.device_get(pending[-1])
        dt = time.time() - t0
        clips_s = (step - t_step0) * examples_per_step / max(dt, 1e-9)
        eta = (total - step) * dt / max(step - t_step0, 1)
        rec = {"loss": float(np.mean([float(p["loss"]) for p in jax.device_get(pending)])),
               "lr": float(vals["lr"]), "grad_norm": float(vals["grad_norm"]),
               "clips_per_s": clips_s}
        writer.write(step, "train", rec)
        print(f"[train] step {step}/{total} loss {rec['loss']:.4f} lr {rec['lr']:.3e} "
              f"{clips_s:.1f} clips/s ETA {_fmt_eta(eta)}", flush=True)
        pending = []
      if mode == "train_and_eval" and eval_every and step % eval_every == 0 and not is_last:
        result = run_eval(step)
        _maybe_save_best(ckpt, step, state, frozen, data_position(), result, best_metric, meta)
      if step % ckpt_every == 0 or is_last or preempted["flag"]:
        if pending:
          check_finite(step)
          pending = []
        ckpt.save(step, state, frozen, data_position(), dict(meta, step=step))
        last_good = step
      if preempted["flag"]:
        ckpt.wait()
        print(f"SIGTERM: saved checkpoint at step {step} in {workdir}/ckpt; exiting.", flush=True)
        return {"preempted": True, "step": step}
    if mode == "train_and_eval":
      result = run_eval(step)
      _maybe_save_best(ckpt, step, state, frozen, data_position(), result, best_metric, meta)
    ckpt.wait()
    return result
  finally:
    if old_handler is not None:
      signal.signal(signal.SIGTERM, old_handler)
    ckpt.wait()
    ckpt.close()
    writer.close()


def _maybe_save_best(ckpt, step, state, frozen, data_state, result, best_metric, meta):
  value = result.get(best_metric)
  if value is None or not np.isfinite(value):
    return
  if value > meta.get("best_value", -np.inf):
    meta.update(best_value=float(value), best_step=int(step), best_metric=best_metric)
    ckpt.save(step, state, frozen, data_state, dict(meta, step=step), best=True)


def _main_thread():
  import threading  # pylint: disable=g-import-not-at-top
  return threading.current_thread() is threading.main_thread()
