"""Optimiser of the paper recipe: AdamW + weight-decay mask + layer decay + warm-up/cosine + clipping.

The reference (util_tools/optim_factory.py, run_bidirection.py) builds torch param groups; here the same
numbers come from three per-parameter trees over the *trainable* state only:

  * weight decay 0 for 1-D parameters, biases and position parameters (`*_pos`, `pos_embed`, ...);
  * lr scale = layer_decay ** (depth + 1 - layer_id(path)) with `models.layer_id` (0 = stems,
    i + 1 = block i including its adapters and B-CA, depth + 1 = heads / final norms);
  * lr(step) = linear warm-up from `warmup_lr` to `lr`, then per-step cosine to `min_lr`; all three are
    scaled by global_batch / 256 as the reference does.

torch AdamW applies `p -= lr * scale * (adam(g) + wd * p)`; the chain below computes exactly that.
Gradient accumulation (config.train.accum_steps) is the train step's scan over micro-batches: the
optimiser sees one averaged gradient per step.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

NO_DECAY_NAME = re.compile(r"(^|_)pos($|_)|pos_embed|positional|class_embedding|cls_token|dist_token")


def path_str(path) -> str:
  """('blocks', 0, 'kernel') -> 'blocks/0/kernel' (also accepts jax key paths)."""
  parts = []
  for p in path:
    for attr in ("key", "name", "idx"):
      if hasattr(p, attr):
        p = getattr(p, attr)
        break
    parts.append(str(p))
  return "/".join(parts)


def flat_paths(tree) -> list[tuple]:
  """Tuples of plain keys ('blocks', 0, 'kernel') for every leaf, in tree-leaf order."""
  out = []
  for kp, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
    key = []
    for p in kp:
      for attr in ("key", "name", "idx"):
        if hasattr(p, attr):
          p = getattr(p, attr)
          break
      key.append(p)
    if key and key[-1] == "value" and isinstance(kp[-1], jax.tree_util.GetAttrKey):
      key = key[:-1]  # nnx.Variable's own node
    out.append(tuple(key))
  return out


def _layer_ids(path, leaf, layer_id_fn, depth):
  """layer_id_fn's id of a parameter: an int, or for a parameter stacked over layers (the id
  function returns a slice: slice(first, None) or slice(None, last + 1)) an int array, one id
  per slice of the leading axis."""
  lid = layer_id_fn(path, depth)
  if not isinstance(lid, slice):
    return int(lid)
  num_layers = np.shape(leaf)[0]
  first = lid.start if lid.start is not None else lid.stop - num_layers
  return first + np.arange(num_layers)


def decay_mask(params, layer_id_fn: Callable[[tuple, int], int | slice] | None = None,
               depth: int = 0) -> Any:
  """True where weight decay applies (reference: not 1-D, not *.bias, not in no_weight_decay()).
  With layer_id_fn, a parameter stacked over layers counts as one layer's slice (a stacked
  LayerNorm scale [L, D] is 1-D)."""
  paths = flat_paths(params)
  leaves, treedef = jax.tree.flatten(params)
  mask = []
  for path, leaf in zip(paths, leaves):
    name = str(path[-1]) if path else ""
    ndim = len(getattr(leaf, 'shape', np.shape(leaf)))
    if layer_id_fn is not None and not isinstance(_layer_ids(path, leaf, layer_id_fn, depth), int):
      ndim -= 1
    no = (ndim <= 1 or name == "bias" or name.endswith("_bias")
          or any(NO_DECAY_NAME.search(str(p)) for p in path))
    mask.append(not no)
  return jax.tree.unflatten(treedef, mask)


def layer_scales(params, layer_id_fn: Callable[[tuple, int], int | slice] | None, depth: int,
                 layer_decay: float) -> Any:
  """Per-parameter lr multiplier layer_decay ** (depth + 1 - layer_id); for a parameter stacked
  over layers an array [L, 1, ...] that broadcasts one scale over each layer's slice."""
  leaves, treedef = jax.tree.flatten(params)
  if layer_id_fn is None or layer_decay >= 1.0:
    return jax.tree.unflatten(treedef, [1.0] * len(leaves))
  scales = []
  for path, leaf in zip(flat_paths(params), leaves):
    lid = _layer_ids(path, leaf, layer_id_fn, depth)
    if not (0 <= np.min(lid) and np.max(lid) <= depth + 1):
      raise ValueError(f"layer_id({path_str(path)!r}) = {lid} outside [0, {depth + 1}]")
    if isinstance(lid, int):
      scales.append(float(layer_decay ** (depth + 1 - lid)))
    else:
      scale = np.power(float(layer_decay), depth + 1 - lid).astype(np.float32)
      scales.append(scale.reshape((-1,) + (1,) * (len(np.shape(leaf)) - 1)))
  return jax.tree.unflatten(treedef, scales)


def cosine_schedule(base_lr: float, min_lr: float, total_steps: int, warmup_steps: int,
                    warmup_lr: float = 0.0) -> Callable[[jax.Array], jax.Array]:
  """utils.cosine_scheduler of the reference, as a function of the optimiser step.

  warm-up: linspace(warmup_lr, base_lr, warmup_steps) (inclusive end point, like np.linspace);
  then min_lr + 0.5 (base_lr - min_lr)(1 + cos(pi i / (total - warmup))), i = step - warmup.
  """
  total_steps = max(int(total_steps), 1)
  warmup_steps = int(min(max(warmup_steps, 0), total_steps))
  decay_steps = max(total_steps - warmup_steps, 1)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    if warmup_steps > 1:
      warm = warmup_lr + (base_lr - warmup_lr) * step / (warmup_steps - 1)
    else:
      warm = jnp.asarray(warmup_lr if warmup_steps == 1 else base_lr, jnp.float32)
    i = jnp.clip(step - warmup_steps, 0, decay_steps)
    cos = min_lr + 0.5 * (base_lr - min_lr) * (1 + jnp.cos(jnp.pi * i / decay_steps))
    return jnp.where(step < warmup_steps, warm, cos)

  return schedule


def scale_by_tree(scales) -> optax.GradientTransformation:
  """Multiplies each update by a constant per-parameter factor (layer decay)."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales), state

  return optax.GradientTransformation(init_fn, update_fn)


def scaled_lrs(optim_cfg, global_batch: int) -> tuple[float, float, float]:
  """(lr, min_lr, warmup_lr) after the reference's linear scaling by global_batch / 256."""
  factor = global_batch / 256.0 if optim_cfg.get("scale_lr_by_batch", True) else 1.0
  return (optim_cfg.lr * factor, optim_cfg.get("min_lr", 1e-6) * factor,
          optim_cfg.get("warmup_lr", 0.0) * factor)


def make_optimizer(optim_cfg, params, *, global_batch: int, total_steps: int, warmup_steps: int,
                   layer_id_fn=None, depth: int = 0):
  """Returns (optax transformation, lr schedule).

  `params` is the trainable state only (an nnx.State or any pytree); the returned transformation's
  state therefore only covers trainables. `total_steps`/`warmup_steps` count optimiser steps
  (one step = one global batch = `accum_steps` micro-batches).
  """
  lr, min_lr, warmup_lr = scaled_lrs(optim_cfg, global_batch)
  schedule = cosine_schedule(lr, min_lr, total_steps, warmup_steps, warmup_lr)
  chain = []
  if optim_cfg.get("clip_grad_norm", None):
    chain.append(optax.clip_by_global_norm(float(optim_cfg.clip_grad_norm)))
  b1, b2 = optim_cfg.get("betas", (0.9, 0.999))
  # optax computes Adam's bias correction 1 - b2**t in float32, where PyTorch uses float64: the
  # first update is 6.5e-6 to 6.8e-6 relatively smaller than PyTorch's AdamW, and the gap fades as
  # b2**t does. Negligible next to mixed-precision noise; not worth a custom Adam.
  chain.append(optax.scale_by_adam(b1=b1, b2=b2, eps=optim_cfg.get("eps", 1e-8)))
  wd = optim_cfg.get("weight_decay", 0.05)
  if wd:
    chain.append(optax.add_decayed_weights(wd, mask=decay_mask(params, layer_id_fn, depth)))
  chain.append(optax.scale_by_learning_rate(schedule))
  chain.append(scale_by_tree(layer_scales(params, layer_id_fn, depth,
                                          optim_cfg.get("layer_decay", 1.0))))
  return optax.chain(*chain), schedule


def steps_from_config(train_cfg, num_train_examples: int | None, global_batch: int) -> dict[str, int]:
  """Resolves durations given in steps or epochs (big_vision style) into optimiser steps."""
  steps_per_epoch = None
  if num_train_examples:
    steps_per_epoch = max(num_train_examples // global_batch, 1)

  def resolve(name):
    if train_cfg.get(f"{name}_steps", None) is not None:
      return int(train_cfg.get(f"{name}_steps"))
    if train_cfg.get(f"{name}_epochs", None) is not None:
      if steps_per_epoch is None:
        raise ValueError(f"config.train.{name}_epochs needs the dataset size; give {name}_steps instead")
      return int(math.ceil(train_cfg.get(f"{name}_epochs") * steps_per_epoch))
    return None

  total = resolve("total")
  if total is None:
    raise ValueError("config.train needs total_steps or total_epochs")
  if total <= 0:
    raise ValueError(f"config.train.total_steps={total}: a run needs at least one step")
  warmup = resolve("warmup") or 0
  return {"total_steps": total, "warmup_steps": warmup, "steps_per_epoch": steps_per_epoch or 0}
