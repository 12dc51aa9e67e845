"""config.model.unroll_layers: the layers traced one by one compute what the scanned layer does."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ca2st_jax import models
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
  model = models.build(cfg, rngs=nnx.Rngs(0))
  graphdef, trainable, rest = nnx.split(model, models.TRAINABLE, ...)
  trainable = jax.tree.map(lambda x: x + 0.05 * jnp.sin(jnp.arange(x.size).reshape(x.shape)),
                           trainable)  # zero-initialised adapters would hide the layers' work
  cfg.unroll_layers = True
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
