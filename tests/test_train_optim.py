"""Optimiser: schedule, weight-decay mask, layer decay, and agreement with torch AdamW param groups."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ca2st_jax.train import optim


def _cfg(**kw):
  c = ml_collections.ConfigDict(dict(lr=1e-3, min_lr=1e-6, warmup_lr=0.0, weight_decay=0.05,
                                     layer_decay=0.75, betas=(0.9, 0.999), eps=1e-8))
  c.update(kw)
  return c


def test_schedule_matches_reference_formula():
  base, final, total, warm = 2.0, 0.1, 10, 3
  ref = np.concatenate([np.linspace(0.0, base, warm),
                        [final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / (total - warm)))
                         for i in range(total - warm)]])
  sched = optim.cosine_schedule(base, final, total, warm)
  np.testing.assert_allclose([float(sched(i)) for i in range(total)], ref, rtol=1e-6)


def test_lr_scaled_by_global_batch():
  lr, min_lr, warm = optim.scaled_lrs(_cfg(lr=1e-3, min_lr=1e-6, warmup_lr=1e-6), 512)
  assert lr == pytest.approx(2e-3) and min_lr == pytest.approx(2e-6) and warm == pytest.approx(2e-6)


def _params():
  r = np.random.RandomState(0)
  return {
      "pos_embed": jnp.asarray(r.randn(4, 3), jnp.float32),  # position param: no decay
      "blocks": {0: {"fc": {"kernel": jnp.asarray(r.randn(3, 3), jnp.float32),
                            "bias": jnp.asarray(r.randn(3), jnp.float32)}},
                 1: {"cross": {"clip_time_pos": jnp.asarray(r.randn(2, 3), jnp.float32),
                               "kernel": jnp.asarray(r.randn(3, 2), jnp.float32)}}},
      "head": {"kernel": jnp.asarray(r.randn(3, 5), jnp.float32)},
  }


def _layer_id(path, depth):
  if path[0] == "blocks":
    return int(path[1]) + 1
  if path[0] == "pos_embed":
    return 0
  return depth + 1


def test_masks_and_scales():
  p = _params()
  mask = optim.decay_mask(p)
  assert mask["pos_embed"] is False and mask["blocks"][0]["fc"]["bias"] is False
  assert mask["blocks"][1]["cross"]["clip_time_pos"] is False
  assert mask["blocks"][0]["fc"]["kernel"] is True and mask["head"]["kernel"] is True
  s = optim.layer_scales(p, _layer_id, 2, 0.75)
  assert s["pos_embed"] == pytest.approx(0.75 ** 3)
  assert s["blocks"][0]["fc"]["kernel"] == pytest.approx(0.75 ** 2)
  assert s["blocks"][1]["cross"]["kernel"] == pytest.approx(0.75)
  assert s["head"]["kernel"] == pytest.approx(1.0)


def test_matches_torch_adamw_param_groups():
  torch = pytest.importorskip("torch")
  p = _params()
  total, warm, batch = 6, 2, 256
  cfg = _cfg(clip_grad_norm=None)
  tx, sched = optim.make_optimizer(cfg, p, global_batch=batch, total_steps=total, warmup_steps=warm,
                                   layer_id_fn=_layer_id, depth=2)
  state = tx.init(p)
  leaves, treedef = jax.tree.flatten(p)
  mask = jax.tree.leaves(optim.decay_mask(p))
  scales = jax.tree.leaves(optim.layer_scales(p, _layer_id, 2, 0.75))
  tparams = [torch.nn.Parameter(torch.tensor(np.asarray(x), dtype=torch.float64)) for x in leaves]
  groups = [{"params": [tp], "weight_decay": 0.05 if m else 0.0, "lr_scale": s}
            for tp, m, s in zip(tparams, mask, scales)]
  topt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
  r = np.random.RandomState(1)
  for step in range(4):
    grads = [r.randn(*np.shape(x)).astype(np.float32) for x in leaves]
    upd, state = tx.update(jax.tree.unflatten(treedef, [jnp.asarray(g) for g in grads]), state, p)
    p = jax.tree.map(lambda a, b: a + b, p, upd)
    lr = float(sched(step))
    for g, tp in zip(groups, tparams):
      g["lr"] = lr * g["lr_scale"]
    for tp, gr in zip(tparams, grads):
      tp.grad = torch.tensor(gr, dtype=torch.float64)
    topt.step()
  for a, tp in zip(jax.tree.leaves(p), tparams):
    np.testing.assert_allclose(np.asarray(a), tp.detach().numpy(), rtol=1e-5, atol=1e-6)
