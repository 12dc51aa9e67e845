"""The trainer, top to bottom (big_vision style).

mesh → abstract model and optimiser (nnx.eval_shape / jax.eval_shape) → shardings → jit(init) →
resume (workdir's newest readable checkpoint, else config.init imports, else scratch) → loop over
jit(train_step, donate) with evaluation every N steps and at the end.

State layout (all pytrees of jax.Arrays):
  state  = {'params': trainable nnx.State, 'opt_state': optax state over params only,
            'step': int32, 'rng': uint32[2]}        (donated, updated every step)
  frozen = the frozen experts' nnx.State            (never updated, never has gradients)
           The steps take it in their own layout (Setup.frozen_for_steps): with unrolled
           layers off a TPU, every layer of an expert's stacked blocks is its own array
           (models.layers.split_stacks, frozen_stacks). Checkpoints and imports keep it stacked.
  rest   = non-parameter variables (dropout RNG streams; re-seeded every step from rng + step)

In this file, in order: the steps (forward, train_step, eval_step), build_setup, checkpoints and
imports, the run's checks, then train_and_evaluate with its parts (restore_or_init,
evaluate_and_log, train, TrainLog, Preemption). The pieces live beside it: losses (mixup, soft
targets), evaluate (the eval pass), writer (metrics.jsonl, TensorBoard), workdir (config.json,
resume identity), checkpoints/orbax.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import sys
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

from ca2st_jax import config_lib
from ca2st_jax.checkpoints import labels as labels_lib
from ca2st_jax.checkpoints import orbax as orbax_ckpt
from ca2st_jax.models import layers as layers_lib
from ca2st_jax.train import evaluate as evaluate_lib
from ca2st_jax.train import input as input_lib
from ca2st_jax.train import losses
from ca2st_jax.train import mesh as mesh_lib
from ca2st_jax.train import metrics as metrics_lib
from ca2st_jax.train import optim as optim_lib
from ca2st_jax.train import workdir as workdir_lib
from ca2st_jax.train import writer as writer_lib

MODES = ("train", "eval", "train_and_eval")
# Each label key's class count in config.model.
# Global batches transferred ahead of the step that uses them (hides the host → device copy).
DEVICE_PREFETCH = 2


class NonFiniteLossError(FloatingPointError):
  pass


def default_model_lib():
  from ca2st_jax import models  # pylint: disable=g-import-not-at-top
  return models


# ---------------------------------------------------------------------------------------- the steps

def normalized_video(video):
  # Imported here: the data package pulls in Grain, which the model-only tools do without.
  from ca2st_jax.data.transforms import normalize_video  # pylint: disable=g-import-not-at-top
  return normalize_video(video)


def forward(graphdef, mesh, params, frozen, rest, inputs, dropout_rng=None):
  """The model's logits {head: [B, classes]}; dropout is on when `dropout_rng` is given."""
  # Fresh Variable objects at the current trace level (reseed and dropout counters mutate them).
  rest = jax.tree.map(lambda x: x, rest)
  model = nnx.merge(graphdef, params, layers_lib.join_stacks(frozen), rest)
  deterministic = dropout_rng is None
  if not deterministic:
    nnx.reseed(model, dropout=dropout_rng)
  extra = {k: inputs[k] for k in ("audio", "audio_times") if k in inputs}
  # The mesh, for kernels XLA cannot partition (layers.attention's TPU flash kernel).
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
    return model(video=inputs["video"], **extra, deterministic=deterministic)


def train_loss(params, frozen, rest, micro, dropout_rng, *, graphdef, mesh, smoothing):
  """Soft-target cross-entropy of one mixed micro-batch, summed over the heads. frozen and rest
  are arguments (not closed over) so NNX variables are rebuilt at the grad trace level."""
  out = forward(graphdef, mesh, params, frozen, rest, micro, dropout_rng)
  loss = 0.0
  for key, logits in out.items():
    targets = losses.soft_targets(micro[key], micro[f"partner_{key}"], micro["mixup_lambda"],
                                  logits.shape[-1], smoothing)
    loss = loss + losses.soft_cross_entropy(logits, targets)
  return loss


def train_step(state, frozen, rest, batch, *, graphdef, mesh, tx, schedule, mix, smoothing):
  """One optimiser step on a global batch: mixup (`mix`: losses.mix_batch with its options), the
  gradients of its accum_steps micro-batches averaged, then `tx`."""
  rng = jax.random.fold_in(state["rng"], state["step"])
  mix_rng, drop_rng = jax.random.split(rng)
  inputs = {"video": normalized_video(batch["video"])}
  if "audio" in batch:
    inputs["audio"] = batch["audio"].astype(jnp.float32)
  inputs.update({k: batch[k] for k in ("audio_times", *config_lib.LABEL_KEYS) if k in batch})
  micro_all, lam = mix(inputs, mix_rng)
  accum = micro_all["video"].shape[0]  # mix_batch's layout: [accum, rows, ...]
  grad_fn = jax.value_and_grad(functools.partial(train_loss, graphdef=graphdef, mesh=mesh,
                                                 smoothing=smoothing))
  if accum == 1:
    micro = jax.tree.map(lambda x: x[0], micro_all)
    loss, grads = grad_fn(state["params"], frozen, rest, micro, drop_rng)
  else:
    def body(carry, xs):
      loss_sum, grad_sum = carry
      micro, i = xs
      l, g = grad_fn(state["params"], frozen, rest, micro, jax.random.fold_in(drop_rng, i))
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


def eval_step(state, frozen, rest, batch, *, graphdef, mesh):
  """Per-head softmax of one eval batch (no dropout)."""
  inputs = {"video": normalized_video(batch["video"])}
  inputs.update({k: batch[k] for k in ("audio", "audio_times") if k in batch})
  out = forward(graphdef, mesh, state["params"], frozen, rest, inputs)
  return {k: jax.nn.softmax(v.astype(jnp.float32), -1) for k, v in out.items()}


# -------------------------------------------------------------------------------------------- setup

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
  step_frozen_shardings: Any   # frozen as the steps take it
  abstract_step_frozen: Any
  frozen_for_steps: Callable   # stacked (checkpoint layout) -> the steps' layout
  frozen_for_checkpoint: Callable  # and back
  init_fn: Callable
  train_step: Callable
  eval_step: Callable
  global_batch: int
  trainable: Any
  total_steps: int
  warmup_steps: int


def new_model(model_lib, model_cfg, seed):
  return model_lib.build(model_cfg, rngs=nnx.Rngs(params=seed, dropout=seed + 1))


def initial_state(make_model, trainable, tx, seed):
  """(state, frozen, rest) of a freshly initialised model (layouts in the module docstring)."""
  _, params, frozen, rest = nnx.split(make_model(), trainable, nnx.Param, ...)
  state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
           "rng": jax.random.PRNGKey(seed + 2)}
  return state, frozen, rest


def trainable_filter(config, model_lib):
  """config.train.trainable: 'reference', the paper's trained set (models.TRAINABLE), or 'all',
  every parameter (from-scratch runs)."""
  which = config.train.get("trainable", "reference")
  if which not in ("reference", "all"):
    raise ValueError(f"config.train.trainable={which!r}: expected 'reference' or 'all'")
  if (which == "all" and config.model.dtype != "float32"
      and config.model.store_frozen_in_compute_dtype):
    raise ValueError(
        "config.train.trainable='all' trains the experts too, but "
        "config.model.store_frozen_in_compute_dtype=True stores them in "
        f"{config.model.dtype}: set it False (weights that learn stay float32)")
  return model_lib.TRAINABLE if which == "reference" else nnx.Param


def mixup_keys(tcfg) -> tuple[str, ...]:
  """The inputs mixup mixes (the targets always are): the video, and the spectrogram only with
  config.train.mixup_audio, as the reference's --mixup_spec (off in every published script)."""
  return ("video", "audio") if tcfg.get("mixup_audio", False) else ("video",)


def frozen_stacks(config, abstract_model, platform: str) -> tuple:
  """The Stacks whose frozen layers the steps take one array each on `platform`: all of them when
  the layers are unrolled (models.layers.split_stacks), except on a TPU; none for a scan, which
  reads its layer's slice of the stack in place. Compiled for an H100, an unrolled step that
  slices its layers out of the stacks copies each slice (226 copy kernels for cast_k400); compiled
  for a v5p, XLA's fusions read the slices in place and the split adds kernels
  (docs/benchmarks.md)."""
  loop = layers_lib.resolve_layer_loop(config.model.get("layer_loop", "auto"), platform)
  if loop != "unroll" or platform == "tpu":
    return ()
  return layers_lib.stack_paths(abstract_model)


def build_setup(config, *, model_lib=None, num_train_examples=None, devices=None) -> Setup:
  """The mesh, abstract state, shardings and the jitted init, train and eval steps of `config`."""
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
  trainable = trainable_filter(config, model_lib)
  make_model = functools.partial(new_model, model_lib, config.model, seed)
  abs_model = nnx.eval_shape(make_model)
  graphdef, abs_params, abs_frozen, abs_rest = nnx.split(abs_model, trainable, nnx.Param, ...)
  tx, schedule = optim_lib.make_optimizer(
      config.optim, abs_params, global_batch=global_batch, total_steps=durations["total_steps"],
      warmup_steps=durations["warmup_steps"], layer_id_fn=model_lib.layer_id,
      depth=int(config.model.get("depth", 0)))
  init_state = functools.partial(initial_state, make_model, trainable, tx, seed)
  abs_state, _, _ = jax.eval_shape(init_state)

  fsdp_min = int(mesh_cfg.get("fsdp_min_size", 2 ** 14))
  state_sh = mesh_lib.tree_shardings(abs_state, mesh, fsdp_min)
  frozen_sh = mesh_lib.tree_shardings(abs_frozen, mesh, fsdp_min)
  rest_sh = jax.tree.map(lambda _: mesh_lib.replicated(mesh), abs_rest)
  batch_sh = mesh_lib.batch_sharding(mesh)
  stacks = frozen_stacks(config, abs_model, mesh.devices.flat[0].platform)
  if stacks:
    abs_step_frozen = layers_lib.split_stacks(abs_frozen, stacks)
    step_frozen_sh = mesh_lib.tree_shardings(abs_step_frozen, mesh, fsdp_min)
    frozen_for_steps = jax.jit(functools.partial(layers_lib.split_stacks, paths=stacks),
                               out_shardings=step_frozen_sh)
    frozen_for_checkpoint = jax.jit(layers_lib.join_stacks, out_shardings=frozen_sh)
  else:
    abs_step_frozen, step_frozen_sh = abs_frozen, frozen_sh
    frozen_for_steps = frozen_for_checkpoint = lambda frozen: frozen
  in_shardings = (state_sh, step_frozen_sh, rest_sh, batch_sh)

  mix = functools.partial(
      losses.mix_batch, shards=shards, accum=accum, alpha=float(tcfg.get("mixup_alpha", 0.0)),
      prob=float(tcfg.get("mixup_prob", 0.0)), mix_keys=mixup_keys(tcfg))
  train = functools.partial(train_step, graphdef=graphdef, mesh=mesh, tx=tx, schedule=schedule,
                            mix=mix, smoothing=float(tcfg.get("label_smoothing", 0.0)))
  evaluate = functools.partial(eval_step, graphdef=graphdef, mesh=mesh)
  return Setup(
      config=config, mesh=mesh, graphdef=graphdef, tx=tx, schedule=schedule,
      state_shardings=state_sh, frozen_shardings=frozen_sh, rest_shardings=rest_sh,
      abstract_state=abs_state, abstract_frozen=abs_frozen, abstract_rest=abs_rest,
      step_frozen_shardings=step_frozen_sh, abstract_step_frozen=abs_step_frozen,
      frozen_for_steps=frozen_for_steps, frozen_for_checkpoint=frozen_for_checkpoint,
      init_fn=jax.jit(init_state, out_shardings=(state_sh, frozen_sh, rest_sh)),
      train_step=jax.jit(train, in_shardings=in_shardings,
                         out_shardings=(state_sh, mesh_lib.replicated(mesh)), donate_argnums=(0,)),
      eval_step=jax.jit(evaluate, in_shardings=in_shardings, out_shardings=batch_sh),
      global_batch=global_batch, trainable=trainable, total_steps=durations["total_steps"],
      warmup_steps=durations["warmup_steps"])


# -------------------------------------------------------------------------- checkpoints and imports

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


# ----------------------------------------------------------------------------------- a run's checks

def check_classes(config, source):
  """The model's class counts against the data set's, before any step (a model with fewer
  classes would train on out-of-range labels)."""
  for key, n in source.num_classes().items():
    field = config_lib.HEAD_CLASSES[key]
    if key == "label" and str(config.model.get("name", "")).endswith("_compositional"):
      continue
    want = int(config.model.get(field, 0))
    if want != n:
      raise ValueError(f"config.model.{field}={want} but the data set "
                       f"({config.data.get('name', '?')}) has {n} classes of '{key}'")


def check_mixup_batch(config, mesh):
  """Mixup pairs each clip with its mirror in its device's micro-batch: an odd one would pair its
  middle clip with itself (the reference's Mixup refuses it)."""
  tcfg = config.train
  if not (float(tcfg.get("mixup_alpha", 0.0)) and float(tcfg.get("mixup_prob", 0.0))):
    return
  shards, accum = mesh_lib.num_batch_shards(mesh), int(tcfg.get("accum_steps", 1))
  micro = int(tcfg.batch_size) // (shards * accum)
  if micro % 2:
    raise ValueError(
        f"mixup needs an even per-device micro-batch, got config.train.batch_size="
        f"{int(tcfg.batch_size)} / {shards} batch shards (config.mesh data x fsdp) / "
        f"config.train.accum_steps={accum} = {micro}: change one of them, or set "
        "config.train.mixup_prob=0")


# ------------------------------------------------------------------------------------------ the run

@dataclasses.dataclass
class Run:
  """What the loop and the evaluations of one train_and_evaluate call share."""
  config: Any
  workdir: str
  mode: str
  setup: Setup
  source: Any
  ckpt: orbax_ckpt.Checkpointer
  writer: writer_lib.MetricWriter
  meta: dict  # run facts saved with every checkpoint (class names, the best eval so far)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, mode: str = "train_and_eval",
                       *, source=None, model_lib=None, devices=None, step_hook=None) -> dict:
  """Runs `mode` (one of MODES); returns the last eval metrics, {} when there was none, or
  {'preempted': True, 'step': N} after a SIGTERM.

  Resumes from the newest checkpoint in workdir/ckpt that reads back (saying so when the latest
  does not), else starts from config.init's imports, else from scratch. `step_hook(step)` is
  called after each train step (tests use it to send SIGTERM).
  """
  if mode not in MODES:
    raise ValueError(f"--mode={mode!r}: expected one of {', '.join(MODES)}")
  workdir = str(workdir)
  workdir_lib.check_config(config, workdir)
  source = source or input_lib.source_from_config(config)
  check_classes(config, source)
  setup = build_setup(config, model_lib=model_lib, devices=devices,
                      num_train_examples=source.num_train_examples)
  if mode != "eval":  # an eval-only run never mixes
    check_mixup_batch(config, setup.mesh)
  workdir_lib.write_config(config, workdir)  # only now that the data and the setup are known good
  class_names = source.class_names()
  if class_names and jax.process_index() == 0:
    labels_lib.write(epath.Path(workdir) / labels_lib.WORKDIR_FILE, class_names)
  logging.info("mesh %s; global batch %d; %d steps (%d warm-up)", dict(setup.mesh.shape),
               setup.global_batch, setup.total_steps, setup.warmup_steps)
  run = Run(config=config, workdir=workdir, mode=mode, setup=setup, source=source,
            ckpt=checkpointer(config, workdir, setup), writer=writer_lib.MetricWriter(workdir),
            meta={})
  try:
    start, state, frozen, rest, data_state, run.meta = restore_or_init(run)
    frozen = setup.frozen_for_steps(frozen)
    if class_names:
      run.meta["labels"] = class_names  # every checkpoint says what its classes are
    if mode == "eval":
      return evaluate_and_log(run, state, frozen, rest, start)
    return train(run, state, frozen, rest, data_state, start, step_hook)
  finally:
    run.ckpt.wait()
    run.ckpt.close()
    run.writer.close()


def restore_or_init(run: Run):
  """(restored step or None, state, frozen, rest, data position, meta): the newest checkpoint in
  workdir/ckpt that reads back, else the fresh init with config.init's imports."""
  setup = run.setup
  mesh_lib.compile_then_sync(setup.init_fn, name="init")
  state, frozen, rest = setup.init_fn()
  start, restored = run.ckpt.restore_newest_good()
  if start is None:
    if run.mode == "eval":
      raise FileNotFoundError(f"--mode=eval: no checkpoint in {run.workdir}/ckpt")
    state, frozen = import_init(run.config, setup, state, frozen, rest)
    return None, state, frozen, rest, {}, {}
  state, saved_frozen, data_state, meta = restored
  print(f"Resumed from {run.workdir}/ckpt step {start}", flush=True)
  return start, state, frozen if saved_frozen is None else saved_frozen, rest, data_state, meta


def evaluate_and_log(run: Run, state, frozen, rest, step) -> dict:
  """One pass over the eval split: its metrics, written and printed, and the confusion matrix."""
  ecfg = run.config.get("eval", None) or {}
  res, outputs = evaluate_lib.evaluate(
      run.setup.eval_step, run.setup.mesh, state, frozen, rest, run.source,
      with_map=bool(ecfg.get("with_map", False)), return_outputs=True)
  probs, labels, vids, masks = outputs
  if run.mode == "eval" or ecfg.get("write_predictions", False):
    evaluate_lib.write_predictions(run.workdir, step, run.source, *outputs)
  if "label" in labels and jax.process_index() == 0:  # per video, as top-1 counts them
    _, video_probs, video_labels = metrics_lib.average_views(probs, labels, vids, masks)
    cm = metrics_lib.confusion_matrix(video_probs["label"], video_labels["label"],
                                      probs["label"].shape[1])
    with (epath.Path(run.workdir) / "confusion_matrix.npy").open("wb") as f:
      np.save(f, cm)
  run.writer.write(step, "val", res)
  print(f"[eval] step {step}: " + " ".join(f"{k} {v:.4f}" for k, v in res.items()), flush=True)
  return res


def save_best(run: Run, step, state, frozen, data_state, result):
  """Saves to workdir/best when config.eval.best_metric beats the best so far."""
  best_metric = (run.config.get("eval", None) or {}).get("best_metric", "top1")
  value = result.get(best_metric)
  if value is None or not np.isfinite(value):
    return
  if value > run.meta.get("best_value", -np.inf):
    run.meta.update(best_value=float(value), best_step=int(step), best_metric=best_metric)
    run.ckpt.save(step, state, run.setup.frozen_for_checkpoint(frozen), data_state,
                  dict(run.meta, step=step), best=True)


def train(run: Run, state, frozen, rest, data_state, last_good, step_hook=None) -> dict:
  """Steps from the state's step to the last, with log lines, evaluations (train_and_eval),
  checkpoints and SIGTERM handling; returns what train_and_evaluate does."""
  setup, ckpt, tcfg = run.setup, run.ckpt, run.config.train
  step, total = int(jax.device_get(state["step"])), setup.total_steps
  host_iter = run.source.train_iterator()
  if step:
    host_iter.set_state(data_state)
  batches = input_lib.DevicePrefetch(host_iter, setup.mesh, size=DEVICE_PREFETCH)
  log = TrainLog(run, batches, step)
  eval_every = int(tcfg.eval_every) if run.mode == "train_and_eval" else 0
  first_step, result = step, {}
  preemption = Preemption(ckpt)
  try:
    while step < total:
      batch = next(batches)
      if step == first_step:
        # The first call compiles: a minute or more of silence on a CPU without this line.
        print(f"compiling the train step; the first log line comes at step "
              f"{(step // int(tcfg.log_every) + 1) * int(tcfg.log_every)}", file=sys.stderr,
              flush=True)
        mesh_lib.compile_then_sync(setup.train_step, state, frozen, rest, batch, name="train step")
      state, out = setup.train_step(state, frozen, rest, batch)
      step += 1
      log.add(out)
      if step_hook is not None:
        step_hook(step)
      is_last = step == total
      if step % int(tcfg.log_every) == 0 or is_last:
        log.write(step, last_good)
      if eval_every and step % eval_every == 0 and not is_last:
        result = evaluate_and_log(run, state, frozen, rest, step)
        save_best(run, step, state, frozen, batches.data_state(), result)
      preempted = preemption.reached(step)
      if step % int(tcfg.ckpt_every) == 0 or is_last or preempted:
        log.check_finite(step, last_good)
        ckpt.save(step, state, setup.frozen_for_checkpoint(frozen), batches.data_state(),
                  dict(run.meta, step=step))
        last_good = step
      if preempted:
        ckpt.wait()
        print(f"SIGTERM: saved checkpoint at step {step} in {run.workdir}/ckpt; exiting.",
              flush=True)
        return {"preempted": True, "step": step}
  finally:
    preemption.close()
  if run.mode == "train_and_eval":
    result = evaluate_and_log(run, state, frozen, rest, step)
    save_best(run, step, state, frozen, batches.data_state(), result)
  return result


class TrainLog:
  """The train steps' outputs since the last log line, on device until it is written: the
  finite-loss check, the mean loss, throughput and the share of time spent waiting for input."""

  def __init__(self, run: Run, batches, step):
    self.run, self.batches = run, batches
    self._restart(step)

  def _restart(self, step):
    self.pending, self.t0, self.step0, self.wait0 = [], time.time(), step, self.batches.wait_s

  def add(self, out):
    self.pending.append(out)

  def check_finite(self, step, last_good):
    """Raises NonFiniteLossError at the first non-finite loss of the steps up to `step`."""
    if not self.pending:
      return
    values = np.asarray(jax.device_get([p["loss"] for p in self.pending]))
    if np.all(np.isfinite(values)):
      return
    bad = step - len(self.pending) + int(np.argmin(np.isfinite(values))) + 1
    raise NonFiniteLossError(
        f"non-finite loss {values[~np.isfinite(values)][0]} at step {bad}; stopping. The last "
        f"good checkpoint is step {last_good} in {self.run.workdir}/ckpt (nothing newer was "
        "saved). Lower config.optim.lr, set config.optim.clip_grad_norm, or check the inputs.")

  def write(self, step, last_good):
    self.check_finite(step, last_good)
    vals = jax.device_get(self.pending)
    now = time.time()
    dt, waited = max(now - self.t0, 1e-9), self.batches.wait_s - self.wait0
    rec = {"loss": float(np.mean([v["loss"] for v in vals])), "lr": float(vals[-1]["lr"]),
           "grad_norm": float(vals[-1]["grad_norm"]),
           "clips_per_s": (step - self.step0) * self.run.setup.global_batch / dt,
           "input_wait": waited / dt}
    self.run.writer.write(step, "train", rec)
    total = self.run.setup.total_steps
    eta = writer_lib.format_eta((total - step) * dt / max(step - self.step0, 1))
    print(f"[train] step {step}/{total} loss {rec['loss']:.4f} lr {rec['lr']:.3e} "
          f"{rec['clips_per_s']:.1f} clips/s input wait {100 * rec['input_wait']:.0f}% "
          f"ETA {eta}", flush=True)
    self._restart(step)


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
