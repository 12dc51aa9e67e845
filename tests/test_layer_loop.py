"""config.model.layer_loop: the layers traced one by one compute what the scanned layer does; 'auto'
unrolls them on the accelerators only."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ca2st_jax import models
from ca2st_jax.models import layers
from tests_helpers import load_config


def _batch(cfg, seed=0):
  rng = np.random.default_rng(seed)
  spec = models.batch_spec(cfg, 2)
  out = {'video': jnp.asarray(rng.normal(size=spec['video'].shape), jnp.float32)}
  if 'audio' in spec:
    out['audio'] = jnp.asarray(rng.normal(size=spec['audio'].shape), jnp.float32)
    slots = spec['audio_times'].shape[1] - 1
    starts = np.arange(slots + 1, dtype=np.float32) * 0.5
    out['audio_times'] = jnp.broadcast_to(jnp.stack([starts, starts + 0.5], -1), (2, slots + 1, 2))
  return out


@pytest.mark.parametrize('name', [pytest.param('cast_k400', marks=pytest.mark.slow), 'ca2st_vggsound'])
def test_unrolled_layers_match_the_scan(name):
  cfg = load_config(name, 'tiny').model
  cfg.layer_loop = 'scan'
  model = models.build(cfg, rngs=nnx.Rngs(0))
  graphdef, trainable, rest = nnx.split(model, models.TRAINABLE, ...)
  trainable = jax.tree.map(lambda x: x + 0.05 * jnp.sin(jnp.arange(x.size).reshape(x.shape)),
                           trainable)  # zero-initialised adapters would hide the layers' work
  cfg.layer_loop = 'unroll'
  unrolled = nnx.split(models.build(cfg, rngs=nnx.Rngs(0)), models.TRAINABLE, ...)[0]
  batch = _batch(cfg)

  def loss(graphdef, trainable, rest):
    logits = nnx.merge(graphdef, trainable, rest)(**batch, deterministic=True)
    return sum(jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(logits))

  loss_and_grads = jax.jit(jax.value_and_grad(loss, argnums=1), static_argnums=0)
  want, want_grads = loss_and_grads(graphdef, trainable, rest)
  got, got_grads = loss_and_grads(unrolled, trainable, rest)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('platform,loop', [('gpu', 'unroll'), ('tpu', 'unroll'), ('cpu', 'scan')])
def test_auto_unrolls_on_the_accelerators(platform, loop):
  assert layers.resolve_layer_loop('auto', platform) == loop
  assert layers.resolve_layer_loop('scan', platform) == 'scan'


def test_the_model_runs_the_resolved_loop():
  """On this CPU 'auto' runs the layers in scans; 'unroll' leaves no scan."""
  cfg = load_config('cast_k400', 'tiny').model
  loops = {}
  for loop in ('auto', 'unroll'):
    cfg.layer_loop = loop
    model = nnx.eval_shape(lambda: models.build(cfg, rngs=nnx.Rngs(0)))
    video = jax.ShapeDtypeStruct(models.batch_spec(cfg, 1)['video'].shape, jnp.float32)
    jaxpr = jax.make_jaxpr(lambda m, v: m(video=v, deterministic=True))(model, video)
    loops[loop] = str(jaxpr).count('scan[')
  assert loops['auto'] > 0 and loops['unroll'] == 0
