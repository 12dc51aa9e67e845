"""The summary tool at base size: exact parameter counts and GMACs per view."""
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from ca2st_jax.models import layers
from ca2st_jax.tools import summary
from tests_helpers import load_config


@pytest.mark.slow
@pytest.mark.parametrize('config,total,trainable,gmacs', [
    ('cast_k400', 217_402_384, 45_378_832, 390.5),
    ('cava_epic_sounds', 215_233_964, 43_820_204, 241.0),
])
def test_base_counts_and_cost(config, total, trainable, gmacs):
  result = summary.summarize(load_config(config).model)
  assert result['total_params'] == total
  assert result['trainable_params'] == trainable
  assert abs(result['gmacs_per_view'] - gmacs) / gmacs < 0.03


@pytest.mark.slow
def test_cli_json_on_tiny():
  out = subprocess.run(
      [sys.executable, '-m', 'ca2st_jax.tools.summary', '--config=configs/ca2st_vggsound.py:tiny',
       '--json'], check=True, capture_output=True, text=True).stdout
  result = json.loads(out.strip().splitlines()[-1])
  want = summary.summarize(load_config('ca2st_vggsound', 'tiny').model)
  for key in ('total_params', 'trainable_params', 'gmacs_per_view', 'tflops_per_clip',
              'train_tflops_per_clip'):
    assert result[key] == pytest.approx(want[key], rel=1e-9), key
  assert result['total_params'] > result['trainable_params'] > 0
  assert set(result['parts']) == {'spatial', 'temporal', 'audio', 'adapters', 'exchange', 'heads',
                                  'time_encoding'}


@pytest.mark.slow
def test_train_tflops_cast_k400():
  """A train step is ~2.3x the forward in FLOPs: the frozen experts pass activation gradients but
  have no weight gradients, not the 3x of a fully trained network."""
  result = summary.summarize(load_config('cast_k400').model)
  assert abs(result['tflops_per_clip'] - 0.781) / 0.781 < 0.03
  target = 2.3 * 0.781
  assert abs(result['train_tflops_per_clip'] - target) / target < 0.10


def test_count_macs_scan_and_cond():
  """A scanned layer counts once per iteration; a cond counts its costliest branch."""
  import jax
  import jax.numpy as jnp

  def scanned(x, w):
    return jax.lax.scan(lambda c, wi: (c @ wi, None), x, w)[0]

  x = jax.ShapeDtypeStruct((4, 8), jnp.float32)
  w = jax.ShapeDtypeStruct((3, 8, 8), jnp.float32)
  assert summary.count_macs(jax.make_jaxpr(scanned)(x, w).jaxpr) == 3 * 4 * 8 * 8

  def branches(p, x, w):
    return jax.lax.cond(p, lambda: x @ w[0], lambda: x)

  p = jax.ShapeDtypeStruct((), jnp.bool_)
  assert summary.count_macs(jax.make_jaxpr(branches)(p, x, w).jaxpr) == 4 * 8 * 8


def test_train_count_leaves_out_the_attention_recompute():
  """XLA's attention recomputes its scores in the backward pass; the model's train MACs count the
  gradient's products as an attention that keeps them would, not the recomputation."""
  import jax
  import jax.numpy as jnp
  from ca2st_jax.models import layers

  x = jax.ShapeDtypeStruct((2, 16, 2, 8), jnp.float32)
  w = jax.ShapeDtypeStruct((8, 8), jnp.float32)
  counts = {}
  for name, attend in (('recomputed', lambda q, k, v: layers.attention(q, k, v, 'xla')),
                       ('kept', jax.nn.dot_product_attention)):
    loss = lambda w, x, attend=attend: jnp.sum(attend(x @ w, x @ w, x @ w) ** 2)
    jaxpr = jax.make_jaxpr(jax.grad(loss))(w, x).jaxpr
    counts[name] = (summary.count_macs(jaxpr), summary.count_macs(jaxpr, skip_recompute=True))
  assert counts['kept'][0] == counts['kept'][1] == counts['recomputed'][1]
  assert counts['recomputed'][0] > counts['recomputed'][1]  # the recomputed q.k


def test_flash_attention_counts_by_formula_on_true_lengths():
  """The TPU flash kernel (traced on CPU) of models.layers.attention counts as FlashAttention's
  formula on the true 200 tokens, not its padded 256-token blocks: forward 2 products, backward
  4 gradients + 1 recomputation of the scores."""
  q = jnp.zeros((2, 200, 2, 64), jnp.float32)
  macs = 2 * 2 * 200 * 200 * 64  # B H Tq Tk D
  attend = lambda q: layers.attention(q, q, q, 'tpu_flash')
  assert summary.count_macs(jax.make_jaxpr(attend)(q).jaxpr) == 2 * macs
  step = jax.make_jaxpr(jax.value_and_grad(lambda q: attend(q).sum()))
  assert summary.count_macs(step(q).jaxpr) == (2 + 5) * macs


def test_other_pallas_kernels_count_once_per_grid_point():
  """A Pallas call outside an attention scope counts as it computes: the TPU flash kernel called
  directly does 2 products per block pair forward, 4 + 3 backward (the scores recomputed twice)."""
  q = jnp.zeros((2, 256, 2, 64), jnp.float32)
  macs = 2 * 2 * 256 * 256 * 64
  forward = jax.make_jaxpr(lambda q: layers._tpu_flash_attention(q, q, q))(q).jaxpr
  assert summary.count_macs(forward) == 2 * macs
  step = jax.make_jaxpr(jax.value_and_grad(lambda q: layers._tpu_flash_attention(q, q, q).sum()))
  assert summary.count_macs(step(q).jaxpr) == (2 + 4 + 3) * macs


def test_shard_map_bodies_count_once_per_shard():
  mesh = jax.make_mesh((2,), ('data',), devices=jax.devices()[:2])
  spec = jax.sharding.PartitionSpec('data')
  x = jax.ShapeDtypeStruct((8, 16), jnp.float32, sharding=jax.sharding.NamedSharding(mesh, spec))
  per_shard = jax.shard_map(lambda x: x @ x.T, mesh=mesh, in_specs=spec, out_specs=spec,
                            check_vma=False)
  # Each of the 2 shards multiplies its [4, 16] rows by their transpose.
  assert summary.count_macs(jax.make_jaxpr(per_shard)(x).jaxpr) == 2 * 4 * 16 * 4
