"""The trainer, top to bottom (big_vision style).

mesh → abstract model and optimiser (nnx.eval_shape / jax.eval_shape) → shardings → jit(init) →
resume (workdir's latest checkpoint, else config.init imports, else scratch) → loop over
jit(train_step, donate) with evaluation every N steps and at the end.

State layout (all pytrees of jax.Arrays):
  state  = {'params': trainable nnx.State, 'opt_state': optax state over params only,
            'step': int32, 'rng': uint32[2]}        (donated, updated every step)
  frozen = the frozen experts' nnx.State            (never updated, never has gradients)
  rest   = non-parameter variables (dropout RNG streams; re-seeded every step from rng + step)

The pieces live beside it: losses (mixup, soft targets), evaluate (the eval pass), writer
(metrics.jsonl, TensorBoard), workdir (config.json, resume identity), checkpoints/orbax.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath
from flax import nnx

from ca2st_jax.checkpoints import labels as labels_lib
from ca2st_jax.checkpoints import orbax as orbax_ckpt
from ca2st_jax.train import evaluate as evaluate_lib
from ca2st_jax.train import input as input_lib
from ca2st_jax.train import losses
from ca2st_jax.train import mesh as mesh_lib
from ca2st_jax.train import metrics as metrics_lib
from ca2st_jax.train import optim as optim_lib
from ca2st_jax.train import workdir as workdir_lib
from ca2st_jax.train import writer as writer_lib

# The model heads and the config.model field giving each one's class count.
HEAD_CLASSES = {"label": "num_classes", "verb": "num_verbs", "noun": "num_nouns"}
# Global batches transferred ahead of the step that uses them (hides the host → device copy).
DEVICE_PREFETCH = 2


class NonFiniteLossError(FloatingPointError):
  pass


def default_model_lib():
  from ca2st_jax import models  # pylint: disable=g-import-not-at-top
  return models


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
  # Imported here: the data package pulls in Grain, which the model-only tools do without.
  from ca2st_jax.data.transforms import normalize_video  # pylint: disable=g-import-not-at-top
  model_lib = model_lib or default_model_lib()
  tcfg = config.train
  mesh_cfg = config.get("mesh", None) or {}
  mesh = mesh_lib.make_mesh(mesh_cfg, devices)
  global_batch = int(tcfg.batch_size)
  shards = mesh_lib.num_batch_shards(mesh)
  accum = int(tcfg.get("accum_steps", 1))
  if global_batch % (shards * accum):
    raise ValueError(f"config.train.batch_size={global_batch} must be divisible by the batch shards "
                     f"({shards} = mesh data x fsdp) times config.train.accum_steps ({accum})")
  durations = optim_lib.steps_from_config(tcfg, num_train_examples, global_batch)
  seed = int(config.get("seed", 0))

  def make_model():
    return model_lib.build(config.model, rngs=nnx.Rngs(params=seed, dropout=seed + 1))

  # 'reference': the paper's trained set (models.TRAINABLE); 'all': every parameter (from-scratch runs).
  which = tcfg.get("trainable", "reference")
  if which not in ("reference", "all"):
    raise ValueError(f"config.train.trainable={which!r}: expected 'reference' or 'all'")
  if (which == "all" and config.model.dtype != "float32"
      and config.model.store_frozen_in_compute_dtype):
    raise ValueError(
        "config.train.trainable='all' trains the experts too, but "
        "config.model.store_frozen_in_compute_dtype=True stores them in "
        f"{config.model.dtype}: set it False (weights that learn stay float32)")
  trainable = model_lib.TRAINABLE if which == "reference" else nnx.Param
  abs_model = nnx.eval_shape(make_model)
  graphdef, abs_params, abs_frozen, abs_rest = nnx.split(abs_model, trainable, nnx.Param, ...)
  tx, schedule = optim_lib.make_optimizer(
      config.optim, abs_params, global_batch=global_batch, total_steps=durations["total_steps"],
      warmup_steps=durations["warmup_steps"], layer_id_fn=getattr(model_lib, "layer_id", None),
      depth=int(config.model.get("depth", 0)))

  def init_state():
    model = make_model()
    _, params, frozen, rest = nnx.split(model, trainable, nnx.Param, ...)
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
             "rng": jax.random.PRNGKey(seed + 2)}
    return state, frozen, rest

  fsdp_min = int(mesh_cfg.get("fsdp_min_size", 2 ** 14))
  abs_state, _, _ = jax.eval_shape(init_state)
  state_sh = mesh_lib.tree_shardings(abs_state, mesh, fsdp_min)
  frozen_sh = mesh_lib.tree_shardings(abs_frozen, mesh, fsdp_min)
  rest_sh = jax.tree.map(lambda _: mesh_lib.replicated(mesh), abs_rest)
  repl = mesh_lib.replicated(mesh)
  batch_sh = mesh_lib.batch_sharding(mesh)
  init_fn = jax.jit(init_state, out_shardings=(state_sh, frozen_sh, rest_sh))

  alpha = float(tcfg.get("mixup_alpha", 0.0))
  mix_prob = float(tcfg.get("mixup_prob", 0.0))
  smoothing = float(tcfg.get("label_smoothing", 0.0))

  def forward(params, frozen, rest, inputs, rng, deterministic):
    # Fresh Variable objects at the current trace level (reseed and dropout counters mutate them).
    rest = jax.tree.map(lambda x: x, rest)
    model = nnx.merge(graphdef, params, frozen, rest)
    if not deterministic:
      nnx.reseed(model, dropout=rng)
    extra = {k: inputs[k] for k in ("audio", "audio_times") if k in inputs}
    # The mesh, for kernels XLA cannot partition (layers.attention's TPU flash kernel).
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return model(video=inputs["video"], **extra, deterministic=deterministic)

  # frozen/rest are arguments (not closed over) so NNX variables are rebuilt at the grad trace level.
  def loss_fn(params, frozen, rest, micro, rng):
    out = forward(params, frozen, rest, micro, rng, deterministic=False)
    loss = 0.0
    for key, logits in out.items():
      targets = losses.soft_targets(micro[key], micro[f"partner_{key}"], micro["mixup_lambda"],
                                    logits.shape[-1], smoothing)
      loss = loss + losses.soft_cross_entropy(logits, targets)
    return loss

  def train_step(state, frozen, rest, batch):
    rng = jax.random.fold_in(state["rng"], state["step"])
    mix_rng, drop_rng = jax.random.split(rng)
    inputs = {"video": normalize_video(batch["video"])}
    if "audio" in batch:
      inputs["audio"] = batch["audio"].astype(jnp.float32)
    inputs.update({k: batch[k] for k in ("audio_times", *losses.LABEL_KEYS) if k in batch})
    micro_all, lam = losses.mix_batch(inputs, mix_rng, shards=shards, accum=accum, alpha=alpha,
                                      prob=mix_prob)
    if accum == 1:
      micro = jax.tree.map(lambda x: x[0], micro_all)
      loss, grads = jax.value_and_grad(loss_fn)(state["params"], frozen, rest, micro, drop_rng)
    else:
      def body(carry, xs):
        loss_sum, grad_sum = carry
        micro, i = xs
        l, g = jax.value_and_grad(loss_fn)(state["params"], frozen, rest, micro,
                                           jax.random.fold_in(drop_rng, i))
        return (loss_sum + l, jax.tree.map(jnp.add, grad_sum, g)), None

      zeros = jax.tree.map(jnp.zeros_like, state["params"])
      (loss, grads), _ = jax.lax.scan(body, (jnp.float32(0.0), zeros),
                                      (micro_all, jnp.arange(accum)))
      loss, grads = loss / accum, jax.tree.map(lambda g: g / accum, grads)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1,
                 "rng": state["rng"]}
    out = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state["step"]),
           "mixup_lambda": jnp.mean(lam)}
    return new_state, out

  def eval_step(state, frozen, rest, batch):
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


def checkpointer(config, workdir, setup: Setup) -> orbax_ckpt.Checkpointer:
  return orbax_ckpt.Checkpointer.from_config(
      workdir, config.get("ckpt", None), abstract_state=setup.abstract_state,
      state_shardings=setup.state_shardings, abstract_frozen=setup.abstract_frozen,
      frozen_shardings=setup.frozen_shardings)


def import_init(config, setup: Setup, state, frozen, rest):
  """config.init (expert or whole-model PyTorch checkpoints) → the interop helper's importer.

  The model is assembled on the host from every process's full copy of the initial values (the
  import only covers some parameters), then each process puts back its own shards.
  """
  init = config.get("init", None)
  # Only checkpoint paths ask for an import; ast_pos_mode is an option of the AST import.
  if not init or not any(init.get(k, "") for k in ("checkpoint", "clip", "videomae", "ast")):
    return state, frozen
  from ca2st_jax.interop import torch_import  # pylint: disable=g-import-not-at-top
  host = lambda tree: jax.tree.map(evaluate_lib.gather, tree)  # pylint: disable=unnecessary-lambda-assignment
  # rest (RNG streams) is not touched by the import, so it stays as it is.
  model = nnx.merge(setup.graphdef, host(state["params"]), host(frozen), rest)
  done = torch_import.load_into(model, init, config.model)
  print(f"Initialised from config.init: {done}", flush=True)
  _, params, frozen, _ = nnx.split(model, setup.trainable, nnx.Param, ...)

  def put(tree, shardings):
    return jax.tree.map(lambda x, s: jax.make_array_from_callback(
        np.shape(x), s, lambda idx, x=x: np.asarray(x)[idx]), tree, shardings)

  params = put(params, setup.state_shardings["params"])
  frozen = put(frozen, setup.frozen_shardings)
  return dict(state, params=params), frozen  # Adam moments start at zero either way


def model_differences(config, workdir) -> list[str]:
  """config.model fields that differ from the workdir's config.json (empty when it has none)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    saved = json.load(f).get("model", {})
  current = json.loads(config.model.to_json_best_effort())
  return [f"config.model.{k}: workdir has {saved.get(k)!r}, --config {current.get(k)!r}"
          for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]


def restore_model(config, workdir, *, best=False, setup=None):
  """(model, the checkpoint's meta) at the latest checkpoint of a training workdir (`best`: the
  one in workdir/best), through the trainer's checkpointer (what export_torch and predict load).

  Only parameters are needed, so the non-parameter state (RNG streams) stays abstract and
  nothing is initialised, unless the checkpoint lacks the frozen experts (save_frozen=False):
  then they are rebuilt as training started them (fresh init + config.init imports).
  """
  where = epath.Path(workdir) / ("best" if best else "ckpt")
  if not where.is_dir():
    raise FileNotFoundError(f"no checkpoint in {where}")
  setup = setup or build_setup(config)
  ckpt = checkpointer(config, workdir, setup)
  try:
    step = (ckpt.best if best else ckpt.latest).latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {where}")
    try:
      restored, frozen, _, meta = ckpt.restore(step, best=best)
    except Exception as e:  # Orbax/TensorStore say it in their own terms (KeyError, ValueError)
      diffs = model_differences(config, workdir)
      raise ValueError(
          f"{where} step {step} does not hold the model of --config "
          f"({type(e).__name__}: {str(e)[:300]})" +
          (":\n  " + "\n  ".join(diffs) if diffs else "") +
          "\nUse the config that trained it (see its config.json).") from e
    if frozen is None:
      state0, frozen0, rest0 = setup.init_fn()
      _, frozen = import_init(config, setup, state0, frozen0, rest0)
  finally:
    ckpt.close()
  model = nnx.merge(setup.graphdef, restored["params"], frozen, setup.abstract_rest)
  print(f"restored {where} step {step}", flush=True)
  return model, meta


def check_classes(config, source):
  """The model's class counts against the data set's, before any step (a model with fewer
  classes would train on out-of-range labels)."""
  if not hasattr(source, "num_classes"):
    return
  for key, n in source.num_classes().items():
    field = HEAD_CLASSES[key]
    if key == "label" and str(config.model.get("name", "")).endswith("_compositional"):
      continue
    want = int(config.model.get(field, 0))
    if want != n:
      raise ValueError(f"config.model.{field}={want} but the data set "
                       f"({config.data.get('name', '?')}) has {n} classes of '{key}'")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, mode: str = "train_and_eval",
                       *, source=None, model_lib=None, devices=None, step_hook=None,
                       ckpt_fallback=True) -> dict:
  """Runs `mode` in {'train', 'eval', 'train_and_eval'}; returns the last eval metrics (or {}).

  `step_hook(step)` is called after each train step (tests use it to send SIGTERM).
  `ckpt_fallback`: resume from the newest checkpoint that reads back when the latest does not.
  """
  if mode not in ("train", "eval", "train_and_eval"):
    raise ValueError(f"--mode={mode!r}: expected train, eval or train_and_eval")
  workdir = str(workdir)
  workdir_lib.check_config(config, workdir)
  source = source or input_lib.source_from_config(config)
  check_classes(config, source)
  workdir_lib.write_config(config, workdir)  # only now that the data source has opened
  class_names = source.class_names() if hasattr(source, "class_names") else None
  if class_names and jax.process_index() == 0:
    labels_lib.write(epath.Path(workdir) / labels_lib.WORKDIR_FILE, class_names)
  setup = build_setup(config, model_lib=model_lib, devices=devices,
                      num_train_examples=getattr(source, "num_train_examples", None))
  tcfg, ecfg = config.train, config.get("eval", ml_collections.ConfigDict())
  with_map = bool(ecfg.get("with_map", False))
  best_metric = ecfg.get("best_metric", "top1")
  writer = writer_lib.MetricWriter(workdir)
  ckpt = checkpointer(config, workdir, setup)
  total = setup.total_steps
  logging.info("mesh %s; global batch %d; %d steps (%d warm-up)", dict(setup.mesh.shape),
               setup.global_batch, total, setup.warmup_steps)

  mesh_lib.compile_then_sync(setup.init_fn, name="init")
  state, frozen, rest = setup.init_fn()
  data_state, meta = {}, {}
  start, restored = ckpt.restore_newest_good(ckpt_fallback)
  if start is not None:
    state, restored_frozen, data_state, meta = restored
    if restored_frozen is not None:
      frozen = restored_frozen
    print(f"Resumed from {workdir}/ckpt step {start}", flush=True)
  elif mode == "eval":
    raise FileNotFoundError(f"--mode=eval: no checkpoint in {workdir}/ckpt")
  else:
    state, frozen = import_init(config, setup, state, frozen, rest)
  if class_names:
    meta["labels"] = class_names  # every checkpoint says what its classes are

  def run_eval(step):
    res, outputs = evaluate_lib.evaluate(
        setup.eval_step, setup.mesh, state, frozen, rest, source, with_map=with_map,
        return_outputs=True)
    probs, labels, _, masks = outputs
    if mode == "eval" or ecfg.get("write_predictions", False):
      evaluate_lib.write_predictions(workdir, step, source, *outputs)
    if "label" in labels and jax.process_index() == 0:
      cm = metrics_lib.confusion_matrix(probs["label"][masks], labels["label"][masks],
                                        probs["label"].shape[1])
      with (epath.Path(workdir) / "confusion_matrix.npy").open("wb") as f:
        np.save(f, cm)
    writer.write(step, "val", res)
    print(f"[eval] step {step}: " + " ".join(f"{k} {v:.4f}" for k, v in res.items()), flush=True)
    return res

  if mode == "eval":
    try:
      return run_eval(int(start))
    finally:
      ckpt.close()
      writer.close()

  # ---- training loop ----
  step = int(jax.device_get(state["step"]))
  host_iter = source.train_iterator()
  if step:
    if data_state and hasattr(host_iter, "set_state"):
      host_iter.set_state(data_state)
    else:
      for _ in range(step):
        next(host_iter)
  batches = input_lib.DevicePrefetch(host_iter, setup.mesh, size=DEVICE_PREFETCH)
  preemption = Preemption(ckpt)
  log_every = int(tcfg.get("log_every", 50))
  ckpt_every = int(tcfg.get("ckpt_every", 1000))
  eval_every = int(tcfg.get("eval_every", 0) or 0)
  pending, last_good, result, first_step = [], start, {}, step
  t0, t_step0, wait0 = time.time(), step, 0.0

  def check_finite(upto_step):
    losses_ = np.asarray(jax.device_get([p["loss"] for p in pending]))
    if not np.all(np.isfinite(losses_)):
      bad = upto_step - len(pending) + int(np.argmin(np.isfinite(losses_))) + 1
      ckpt.wait()
      raise NonFiniteLossError(
          f"non-finite loss {losses_[~np.isfinite(losses_)][0]} at step {bad}; stopping. The last "
          f"good checkpoint is step {last_good} in {workdir}/ckpt (nothing newer was saved). Lower "
          "config.optim.lr, set config.optim.clip_grad_norm, or check the inputs.")

  try:
    while step < total:
      batch = next(batches)
      if step == first_step:
        mesh_lib.compile_then_sync(setup.train_step, state, frozen, rest, batch, name="train step")
      state, out = setup.train_step(state, frozen, rest, batch)
      step += 1
      pending.append(out)
      if step_hook is not None:
        step_hook(step)
      is_last = step == total
      if step % log_every == 0 or is_last:
        check_finite(step)
        vals = jax.device_get(pending)
        now = time.time()
        dt, waited = now - t0, batches.wait_s - wait0
        rec = {"loss": float(np.mean([v["loss"] for v in vals])), "lr": float(vals[-1]["lr"]),
               "grad_norm": float(vals[-1]["grad_norm"]),
               "clips_per_s": (step - t_step0) * setup.global_batch / max(dt, 1e-9),
               "input_wait": waited / max(dt, 1e-9)}
        writer.write(step, "train", rec)
        print(f"[train] step {step}/{total} loss {rec['loss']:.4f} lr {rec['lr']:.3e} "
              f"{rec['clips_per_s']:.1f} clips/s input wait {100 * rec['input_wait']:.0f}% "
              f"ETA {writer_lib.format_eta((total - step) * dt / max(step - t_step0, 1))}", flush=True)
        pending, t0, t_step0, wait0 = [], now, step, batches.wait_s
      if mode == "train_and_eval" and eval_every and step % eval_every == 0 and not is_last:
        result = run_eval(step)
        _maybe_save_best(ckpt, step, state, frozen, batches.data_state(), result, best_metric,
                         meta)
      preempted = preemption.reached(step)
      if step % ckpt_every == 0 or is_last or preempted:
        if pending:
          check_finite(step)
          pending = []
        ckpt.save(step, state, frozen, batches.data_state(), dict(meta, step=step))
        last_good = step
      if preempted:
        ckpt.wait()
        print(f"SIGTERM: saved checkpoint at step {step} in {workdir}/ckpt; exiting.", flush=True)
        return {"preempted": True, "step": step}
    if mode == "train_and_eval":
      result = run_eval(step)
      _maybe_save_best(ckpt, step, state, frozen, batches.data_state(), result, best_metric, meta)
    ckpt.wait()
    return result
  finally:
    preemption.close()
    ckpt.wait()
    ckpt.close()
    writer.close()


class Preemption:
  """Whether to save and stop at this step because of a SIGTERM.

  Several processes: JAX's preemption sync service (started by jax.distributed.initialize)
  catches SIGTERM in whichever process gets it and makes every process reach the same sync step,
  through Orbax's `reached_preemption`. One process: a SIGTERM handler sets a flag.
  """

  def __init__(self, ckpt):
    self.ckpt, self.flag, self.old_handler = ckpt, False, None
    self.multi = jax.process_count() > 1
    if not self.multi and threading.current_thread() is threading.main_thread():
      self.old_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):
    del signum, frame
    self.flag = True

  def reached(self, step) -> bool:
    return self.ckpt.reached_preemption(step) if self.multi else self.flag

  def close(self):
    if self.old_handler is not None:
      signal.signal(signal.SIGTERM, self.old_handler)


def _maybe_save_best(ckpt, step, state, frozen, data_state, result, best_metric, meta):
  value = result.get(best_metric)
  if value is None or not np.isfinite(value):
    return
  if value > meta.get("best_value", -np.inf):
    meta.update(best_value=float(value), best_step=int(step), best_metric=best_metric)
    ckpt.save(step, state, frozen, data_state, dict(meta, step=step), best=True)

