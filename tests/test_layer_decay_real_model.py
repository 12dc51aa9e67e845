"""Layer decay and the weight-decay mask on the real models' parameters (tiny CAST, CAVA, CA²ST).

The expected values come from the reference's own rules applied to the reference parameter
names and shapes (the export table gives each JAX parameter its reference name), not from
models.layer_id or optim.decay_mask:
  * trained set: run_bidirection.py's `unfreeze_block` substrings, plus `time_mlp` for CAVA /
    CA²ST (trained in the authors' key lists);
  * layer id: util_tools/optim_factory.py `get_num_layer_for_vit` over trained names:
    `blocks.N.*` -> N + 1, anything else -> num_layers + 1 (the stems are frozen);
  * no weight decay: `get_parameter_groups`: 1-D, `*.bias`, or a name containing one of the
    model's `no_weight_decay()` entries (as a substring).
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import pytest
from flax import nnx

from ca2st_jax import models
from ca2st_jax.interop import torch_mapping
from ca2st_jax.train import optim
from tests_helpers import tiny_model_config

UNFREEZE = ('cross', 'clip_temporal_embedding', 'Adapter', 'ln_post', 'vmae_fc_norm', 'last_proj',
            'head', 'time_mlp')
NO_WEIGHT_DECAY = ('clip_time_pos', 'clip_space_pos', 'vmae_space_pos', 'vmae_time_pos', 'pos_embed')
LAYER_DECAY = 0.75


def _reference_layer_id(name, depth):
  if name.startswith('blocks.'):
    return int(name.split('.')[1]) + 1
  return depth + 1


def _reference_decays(name, shape):
  return not (len(shape) == 1 or name.endswith('.bias') or any(s in name for s in NO_WEIGHT_DECAY))


def _tiny_model(name, **overrides):
  cfg = tiny_model_config(name, **{'num_classes': 5, **overrides})
  return cfg, models.build(cfg, rngs=nnx.Rngs(0))


def _leaf_and_layer(flat, per_layer_path):
  """The trainable leaf a per-layer table path names, and its layer slice (None if unstacked)."""
  if per_layer_path in flat:
    return flat[per_layer_path], None
  m = re.match(r'^(.*?)/(\d+)/(.*)$', per_layer_path)
  assert m, per_layer_path
  return flat[f'{m.group(1)}/{m.group(3)}'], int(m.group(2))


@pytest.mark.parametrize('name,overrides', [
    ('cast', {}), ('cast_compositional', {}), ('cava', {}),
    ('ca2st', dict(depth=3, audio_exchange_start=1)),   # audio pairs in blocks 1 and 2 only
    ('ca2st', dict(audio_exchange_start=0, share_exchange_projections=False)),
])
def test_layer_ids_and_decay_mask_follow_the_reference_names(name, overrides):
  cfg, model = _tiny_model(name, **overrides)
  depth = cfg.depth
  entries = torch_mapping.model_table(model, cfg)
  ref_shapes = torch_mapping.reference_shapes(entries, torch_mapping.jax_shapes(model))
  trainable = nnx.state(model, models.TRAINABLE)
  mask = optim.decay_mask(trainable, models.layer_id, depth)
  scales = optim.layer_scales(trainable, models.layer_id, depth, LAYER_DECAY)
  paths = ['/'.join(map(str, p)) for p in optim.flat_paths(trainable)]
  flat_mask = dict(zip(paths, jax.tree.leaves(mask)))
  flat_scale = dict(zip(paths, jax.tree.leaves(scales)))

  checked, by_layer = 0, set()
  for e in entries:
    trained = any(s in e.ref for s in UNFREEZE)
    stacked = e.jax if e.jax in flat_mask else re.sub(r'^(.*?)/\d+/', r'\1/', e.jax, count=1)
    assert (stacked in flat_mask) == trained, (e.ref, e.jax)
    if not trained:
      continue
    decays, layer = _leaf_and_layer(flat_mask, e.jax)
    scale, _ = _leaf_and_layer(flat_scale, e.jax)
    scale = float(np.asarray(scale if layer is None else scale[layer]).reshape(-1)[0])
    lid = _reference_layer_id(e.ref, depth)
    assert decays == _reference_decays(e.ref, ref_shapes[e.ref]), e.ref
    assert scale == pytest.approx(LAYER_DECAY ** (depth + 1 - lid), rel=1e-6), (e.ref, e.jax)
    checked += 1
    by_layer.add(lid)
  # every block and the heads carry trained parameters: each id of 1..depth+1 was checked
  assert by_layer == set(range(1, depth + 2)) and checked > 40


def test_layer_decay_scales_each_blocks_update():
  """One AdamW step on the tiny CA²ST's trained parameters with the same gradient: with
  layer_decay 0.5 each parameter's update is 0.5 ** (depth + 1 - id) times the update with
  layer_decay 1, ids taken from the reference names (block N -> N + 1, heads -> depth + 1)."""
  cfg, model = _tiny_model('ca2st', audio_exchange_start=1)
  depth = cfg.depth
  trainable = nnx.state(model, models.TRAINABLE)
  grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.1, p.dtype), trainable)
  updates = {}
  for decay in (1.0, 0.5):
    optim_cfg = ml_collections.ConfigDict(dict(lr=1e-3, min_lr=1e-6, warmup_lr=1e-3,
                                               weight_decay=0.05, layer_decay=decay))
    tx, _ = optim.make_optimizer(optim_cfg, trainable, global_batch=256, total_steps=4,
                                 warmup_steps=0, layer_id_fn=models.layer_id, depth=depth)
    upd, _ = jax.jit(lambda g, p: tx.update(g, tx.init(p), p))(grads, trainable)  # one program
    paths = ['/'.join(map(str, p)) for p in optim.flat_paths(upd)]
    updates[decay] = dict(zip(paths, [np.asarray(u) for u in jax.tree.leaves(upd)]))
  entries = torch_mapping.model_table(model, cfg)
  seen = set()
  for e in entries:
    if e.jax not in updates[1.0] and re.sub(r'^(.*?)/\d+/', r'\1/', e.jax, count=1) not in updates[1.0]:
      continue  # frozen
    full, layer = _leaf_and_layer(updates[1.0], e.jax)
    decayed, _ = _leaf_and_layer(updates[0.5], e.jax)
    if layer is not None:
      full, decayed = full[layer], decayed[layer]
    lid = _reference_layer_id(e.ref, depth)
    assert np.abs(full).max() > 0, e.ref
    np.testing.assert_allclose(decayed, full * 0.5 ** (depth + 1 - lid), rtol=1e-5,
                               err_msg=e.ref)
    seen.add(lid)
  assert seen == set(range(1, depth + 2))
