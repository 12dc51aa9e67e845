"""tools.roofline: FLOPs, bytes and kernels of optimised HLO, on hand-written and small CPU programs."""
import os

import jax
import jax.numpy as jnp
import pytest

from ca2st_jax.models import layers
from ca2st_jax.tools import roofline

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures')
FIXTURE = os.path.join(FIXTURES, 'roofline_loop.hlo')
# The value and gradient of models.layers.attention(q, k, v, 'tpu_flash'), q = k = v of
# [2, 256, 2, 64] bfloat16, compiled by libtpu for one v5e chip.
TPU_FIXTURE = os.path.join(FIXTURES, 'roofline_tpu_flash.hlo')


def test_loop_body_runs_its_trip_count_and_slices_count_as_the_slice():
  """A 12-trip loop reads layer i of a [12, 64, 32] stack through a bitcast before the
  dynamic-slice, multiplies it by a [32, 32] weight, and writes it back in place through
  bitcasts around the dynamic-update-slice: each touches one [64, 32] slice, not the stack."""
  module = roofline.parse(open(FIXTURE).read())
  found = {k.name: k for k in roofline.kernels(module, train=False)}
  assert set(found) == {'x', 'y', 'new', 'next'}  # tuples, bitcasts, parameters launch nothing
  assert all(k.runs == 12 for k in found.values())
  slice_bytes = 64 * 32 * 4
  assert found['x'].bytes == 2 * slice_bytes + 4  # read the slice, write it; the s32 index
  assert found['new'].bytes == 2 * slice_bytes + 4  # read the update, write it in place
  assert found['y'].bytes == 2 * slice_bytes + 32 * 32 * 4
  assert found['y'].flops == 2 * 64 * 32 * 32 and found['x'].flops == 0
  assert (found['x'].group, found['y'].group, found['new'].group) == (
      'scan-stack reads', 'matmul', 'scan-stack writes')
  r = roofline.roofline(open(FIXTURE).read(), 'h100-1', train=False)
  assert r['kernels'] == 4 * 12 and r['flops'] == 12 * 2 * 64 * 32 * 32
  # x, y, new and the counter's add (two s32 in, one out), 12 times.
  assert r['bytes'] == 12 * ((2 * slice_bytes + 4) + (2 * slice_bytes + 32 * 32 * 4) +
                             (2 * slice_bytes + 4) + 12)
  # Every kernel here is far under a microsecond of work: the launch overhead dominates.
  assert r['seconds'] == pytest.approx(48 * 3e-6, rel=0.01)


@pytest.mark.parametrize('start,condition,trips', [
    (0, 'compare(%ci, %n), direction=LT', 12),   # the TPU compiler's loops carry no trip count
    (2, 'compare(%ci, %n), direction=LT', 10),
    (0, 'compare(%n, %ci), direction=GT', 12),
    (0, 'compare(%ci, %n), direction=LE', 13),
    (0, 'compare(%ci, %n), direction=NE', 1),    # not a counted loop: once
])
def test_trips_from_the_condition_without_a_known_trip_count(start, condition, trips):
  hlo = open(FIXTURE).read().replace(', backend_config={"known_trip_count":{"n":"12"}}', '')
  hlo = hlo.replace('%start = s32[] constant(0)', f'%start = s32[] constant({start})')
  hlo = hlo.replace('compare(%ci, %n), direction=LT', condition)
  assert 'known_trip_count' not in hlo
  found = roofline.kernels(roofline.parse(hlo), train=False)
  assert len(found) == 4 and all(k.runs == trips for k in found)


_CONVOLUTION = """HloModule conv

ENTRY %main (x: f32[2,{n},3], w: f32[{k},3,4]) -> f32[2,{out},4] {{
  %x = f32[2,{n},3]{{2,1,0}} parameter(0)
  %w = f32[{k},3,4]{{2,1,0}} parameter(1)
  ROOT %y = f32[2,{out},4]{{2,1,0}} convolution(%x, %w), window={{{window}}}, dim_labels=b0f_0io->b0f
}}
"""


@pytest.mark.parametrize('n,k,out,window,pairs', [
    (12, 3, 10, 'size=3', 30),                                   # every tap meets the input
    (12, 12, 23, 'size=12 pad=11_11', 144),                      # mostly padding: 12 x 12 meet
    (5, 5, 5, 'size=5 stride=4 lhs_dilate=5', 5),                # one tap per output (TPU's
    (6, 2, 6, 'size=2 stride=2 pad=0_1 lhs_dilate=2', 6),        # batched matmuls)
])
def test_convolution_flops_count_the_taps_that_meet_the_input(n, k, out, window, pairs):
  """2 x batch x output features x input features x the (output, tap) pairs that land on an
  input value, not on padding or the holes of a dilated input."""
  module = roofline.parse(_CONVOLUTION.format(n=n, k=k, out=out, window=window))
  [kernel] = roofline.kernels(module, train=False)
  assert kernel.flops == 2 * 2 * 4 * 3 * pairs


def test_compiled_scan_counts_every_trip():
  def f(x, ws):
    return jax.lax.scan(lambda c, w: (jnp.tanh(c @ w), None), x, ws)[0]

  x, ws = jnp.zeros((16, 32)), jnp.zeros((5, 32, 32))
  hlo = jax.jit(f).lower(x, ws).compile().as_text()
  r = roofline.roofline(hlo, 'v5e-1', train=False)
  assert r['flops'] == 5 * 2 * 16 * 32 * 32
  weights = [k for k in roofline.kernels(roofline.parse(hlo), train=False)
             if k.group == 'scan-stack reads']
  # Each trip reads its [32, 32] weight, never the [5, 32, 32] stack.
  assert weights and all(k.runs == 5 and k.bytes == 2 * 32 * 32 * 4 + 4 for k in weights)


def _attention_step(q_len, k_len, implementation='xla'):
  q = jnp.zeros((2, q_len, 3, 16), jnp.bfloat16)
  k = jnp.zeros((2, k_len, 3, 16), jnp.bfloat16)

  def loss(q, k):
    return layers.attention(q, k, k, implementation).astype(jnp.float32).sum()

  # The loss is returned, as the train step returns it: the forward runs once, then the backward.
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(q, k).compile().as_text()


def test_even_lengths_costed_as_flash_kernels_on_a_gpu_target():
  r = roofline.roofline(_attention_step(32, 64), 'h100-1', train=True)
  assert r['fused_attention'] == ['1 x [B*H=6, Tq=32, Tk=64, D=16]'] and r['xla_attention'] == []
  fused = r['groups']['attention (fused kernel)']
  macs = 6 * 32 * 64 * 16
  assert fused['kernels'] == 2 and fused['flops'] == (4 + 10) * macs  # forward + backward
  assert fused['bytes'] == 2 * 6 * 16 * (6 * 32 + 6 * 64) + 2 * 4 * 6 * 32
  assert 'attention (XLA)' not in r['groups']
  # TPU: the Pallas kernel would be in the program; this one has XLA's attention, kept as is.
  tpu = roofline.roofline(_attention_step(32, 64), 'v5p-8', train=True)
  assert tpu['xla_attention'] == ['1 x [B*H=6, Tq=32, Tk=64, D=16]']
  assert tpu['groups']['attention (XLA)']['flops'] >= 6 * 2 * macs  # XLA's own products


def test_odd_lengths_costed_padded_to_even_for_cudnn():
  """The model pads odd lengths to even on cuDNN (models.layers.attention): costed so."""
  r = roofline.roofline(_attention_step(33, 33), 'h200-1', train=True)
  assert r['fused_attention'] == ['1 x [B*H=6, Tq=34, Tk=34, D=16]'] and r['xla_attention'] == []
  assert r['groups']['attention (fused kernel)']['flops'] == 14 * 6 * 34 * 34 * 16


def test_the_cudnn_stand_in_is_costed_as_cudnn_on_its_padded_lengths():
  """tools.aot's stand-in for cuDNN pads odd lengths as the cuDNN path does: all its kernels,
  the padded products included, are the attention's, costed as one flash kernel each way."""
  r = roofline.roofline(_attention_step(33, 33, 'cudnn_stand_in'), 'h200-1', train=True)
  assert r['fused_attention'] == ['1 x [B*H=6, Tq=34, Tk=34, D=16]'] and r['xla_attention'] == []
  assert 'matmul' not in r['groups']
  # A product that lost its metadata is matched by its arrays' sizes, the padded ones too.
  attention = roofline.Attention(call=0, heads_batch=768, q_len=197, k_len=197, head_dim=64)
  assert {768 * 198 * 198, 768 * 198 * 64, 768 * 200 * 64} <= attention.sizes()


def test_bytes_by_group_matches_cost_analysis():
  def attend(q, k, v):
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k)
    return jnp.einsum('bhqk,bkhd->bqhd', jax.nn.softmax(logits, -1), v)

  x = jnp.ones((2, 256, 2, 8), jnp.float32)
  compiled = jax.jit(attend).lower(x, x, x).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  by_group = roofline.bytes_by_group(compiled.as_text(), train=False)
  assert sum(by_group.values()) == pytest.approx(cost['bytes accessed'], rel=0.15)


def test_targets_and_errors():
  assert roofline.chip_of('h200-8').bandwidth == 4.8e12
  assert roofline.chip_of('v5litepod-4') is roofline.CHIPS['v5e']
  with pytest.raises(ValueError, match='--topology'):
    roofline.chip_of('a100-8')
  with pytest.raises(ValueError, match='ENTRY'):
    roofline.parse('HloModule empty')


def test_in_place_update_of_a_donated_stack_counts_the_update():
  def write_slice(stacked, x, i):
    return jax.lax.dynamic_update_index_in_dim(stacked, jnp.tanh(x), i, 0)

  stacked, x = jnp.ones((64, 128, 128), jnp.float32), jnp.ones((128, 128), jnp.float32)
  compiled = jax.jit(write_slice, donate_argnums=0).lower(stacked, x, 3).compile()
  total = sum(roofline.bytes_by_group(compiled.as_text(), train=False).values())
  assert 2 * x.nbytes <= total < 4 * x.nbytes < stacked.nbytes / 8


@pytest.mark.parametrize('layer', [lambda stacked: stacked[3], lambda stacked: stacked[3] * 2,
                                   lambda stacked: jnp.tanh(stacked[3]) + stacked[5]],
                         ids=['alone', 'fused', 'two layers'])
def test_a_layer_read_out_of_a_stack_counts_the_layer(layer):
  """An unrolled layer's weight: a static slice of the [12, ...] stack, alone or fused."""
  stacked = jnp.ones((12, 128, 128), jnp.float32)
  hlo = jax.jit(layer).lower(stacked).compile().as_text()
  total = sum(roofline.bytes_by_group(hlo, train=False).values())
  layer_bytes = stacked.nbytes // 12
  assert 2 * layer_bytes <= total <= 3 * layer_bytes, hlo


def test_pallas_flash_kernels_costed_by_their_products():
  hlo = open(TPU_FIXTURE).read()
  r = roofline.roofline(hlo, 'v5e-1', train=True)
  macs = 2 * 2 * 256 * 256 * 64
  fused = r['groups']['attention (fused kernel)']
  assert fused['kernels'] == 3 and fused['flops'] == 2 * (2 + 4 + 3) * macs
  assert r['fused_attention'] == ['1 x [B*H=4, Tq=256, Tk=256, D=64]']
