"""Building blocks shared by the three experts and the exchange modules, and the stacked layers.

Parameters are created in float32; `dtype` is the compute dtype (float32 or bfloat16). The frozen
experts may then be stored in the compute dtype (`models.build`). LayerNorm statistics are
reduced in float32 whatever the compute dtype, as the reference's fp16-safe LayerNorm does.
"""
import functools
import itertools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental.layout import Layout
from jax.experimental.layout import with_layout_constraint

TRUNC_NORMAL = nnx.initializers.truncated_normal(stddev=0.02)
ZEROS = nnx.initializers.zeros


# The activations are recomputed in the backward pass from their input: autodiff would keep
# several float32 tensors of the hidden width where the input (in the compute dtype) is enough.
@jax.checkpoint
def quick_gelu(x):
  return x * jax.nn.sigmoid(1.702 * x)


@jax.checkpoint
def gelu(x):
  return jax.nn.gelu(x, approximate=False)


def dense(in_dim, out_dim, *, dtype, rngs, use_bias=True, zero=False):
  """A Linear as the reference initialises it: trunc-normal(0.02) weight, zero bias."""
  return nnx.Linear(
      in_dim, out_dim, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
      kernel_init=ZEROS if zero else TRUNC_NORMAL, bias_init=ZEROS, rngs=rngs)


class LayerNorm(nnx.LayerNorm):
  """nnx.LayerNorm whose backward pass recomputes its statistics from the input: autodiff would
  keep x - mean, its square and the normalised output, three float32 tensors of the input's size,
  where the input (in the compute dtype) is all the backward needs."""

  def __call__(self, x):
    graphdef, state = nnx.split(self)
    normalize = lambda state, x: nnx.LayerNorm.__call__(nnx.merge(graphdef, state), x)
    return jax.checkpoint(normalize)(state, x)


def layer_norm(dim, *, eps, dtype, rngs):
  return LayerNorm(dim, epsilon=eps, dtype=dtype, param_dtype=jnp.float32,
                   use_fast_variance=False, rngs=rngs)


class DropPath:
  """Stochastic depth inside one layer: zeroes whole slices along a sample axis and rescales the rest.

  Built per layer call from the layer's rate and key (scanned inputs, see `Stack`); each call
  draws a fresh mask. The reference drops along the first axis of whatever layout the tensor has
  at that point (per sample for [B, N, D] tensors, per token position for CLIP's [N, B, D]
  tensors), so the axis is explicit. `DropPath(None, None)` is the identity (eval, or rate 0).
  """

  # Draws per layer call: CA²ST's layers with the audio exchanges make 10.
  MAX_DRAWS = 16

  def __init__(self, rate, key):
    self.rate = rate
    self.key = key
    self.keys = None
    self.calls = 0

  def __call__(self, x, *, sample_axis: int):
    if self.rate is None:
      return x
    if self.keys is None:
      # One split for all of the layer's draws: a fold_in per draw is ~100 scalar kernels on a
      # TPU (scalar integer work does not fuse there) and a few more kernels on a GPU.
      self.keys = jax.random.split(self.key, self.MAX_DRAWS)
    if self.calls == self.MAX_DRAWS:
      raise ValueError(f'a layer drew drop-path masks more than DropPath.MAX_DRAWS = '
                       f'{self.MAX_DRAWS} times; raise it')
    key = self.keys[self.calls]
    self.calls += 1
    shape = [1] * x.ndim
    shape[sample_axis] = x.shape[sample_axis]
    keep_prob = 1.0 - self.rate
    keep = jax.random.bernoulli(key, keep_prob, shape)
    # A multiply by the per-sample 0/1 mask (not a select): the backward keeps that mask, not a
    # full-size one.
    return (x.astype(jnp.float32) / keep_prob * keep.astype(jnp.float32)).astype(x.dtype)


NO_DROP_PATH = DropPath(None, None)


class Adapter(nnx.Module):
  """fc2(act(fc1(x))), plus x when `skip`. fc2 starts at zero so the adapter starts silent."""

  def __init__(self, dim, hidden_dim, *, skip: bool, act=gelu, dtype, rngs: nnx.Rngs):
    self.skip = skip
    self.act = act
    self.fc1 = dense(dim, hidden_dim, dtype=dtype, rngs=rngs)
    self.fc2 = dense(hidden_dim, dim, dtype=dtype, rngs=rngs, zero=True)

  def __call__(self, x):
    y = self.fc2(self.act(self.fc1(x)))
    return x + y if self.skip else y


class Mlp(nnx.Module):
  def __init__(self, dim, hidden_dim, *, act, dtype, rngs: nnx.Rngs):
    self.act = act
    self.fc1 = dense(dim, hidden_dim, dtype=dtype, rngs=rngs)
    self.fc2 = dense(hidden_dim, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.fc2(self.act(self.fc1(x)))


ATTENTION_IMPLEMENTATIONS = ('auto', 'xla', 'cudnn', 'tpu_flash', 'cudnn_stand_in')
LAYER_LOOPS = ('auto', 'scan', 'unroll')
# The TPU flash kernel works on blocks of 128 positions; shorter key sequences (CAST's 8-slot
# windows) would be mostly padding, so they stay on XLA's path. cuDNN's kernels take even
# sequence lengths only: CLIP's 197 tokens are padded to 198 and masked (_even_length_attention).
TPU_FLASH_BLOCK = 128


@functools.lru_cache(maxsize=None)
def resolve_attention(requested: str, dtype, platform: str | None = None) -> str:
  """config.model.attention -> the kernel every attention of the model uses.

  'auto': cuDNN flash attention on NVIDIA GPUs in bfloat16/float16 (odd lengths padded to even
  and masked), the Pallas flash kernel on
  TPU, XLA's dot-product attention elsewhere (CPU, or float32 on a GPU: cuDNN's fused kernels
  take half precision only). `platform` defaults to the default backend; the ahead-of-time tool
  names its target's. 'cudnn_stand_in' is what that tool compiles in cuDNN's place
  (`_cudnn_stand_in`).
  """
  platform = platform or jax.default_backend()
  half = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
  if requested == 'cudnn' and (platform != 'gpu' or not half):
    raise ValueError(f"config.model.attention='cudnn' needs an NVIDIA GPU and bfloat16 compute; "
                     f"this run has platform {platform!r} and dtype {jnp.dtype(dtype).name}. "
                     "Use 'auto' or 'xla'.")
  if requested == 'tpu_flash' and platform not in ('tpu', 'cpu'):  # cpu: interpret mode (tests)
    raise ValueError(f"config.model.attention='tpu_flash' needs a TPU; this run has platform "
                     f"{platform!r}. Use 'auto'.")
  if requested != 'auto':
    return requested
  if platform == 'gpu' and half:
    return 'cudnn'
  if platform == 'tpu':
    return 'tpu_flash'
  if platform == 'gpu':
    warnings.warn("config.model.attention='auto': XLA attention, since cuDNN flash attention "
                  f"needs bfloat16/float16 and the model computes in {jnp.dtype(dtype).name}")
  return 'xla'


def resolve_layer_loop(requested: str, platform: str | None = None) -> str:
  """config.model.layer_loop -> how `run_stacks` runs the layers: 'scan' (one stacked layer in a
  jax.lax.scan) or 'unroll' (every layer traced).

  'auto': unrolled on GPU and TPU, scanned elsewhere. Compiled for a v5p, the unrolled train
  steps of cast_k400 and ca2st_vggsound are predicted 20 % shorter (the scan's stacked
  activations cost more memory traffic and kernels than they save), for a compile 7-10 times
  longer; on a CPU the train step runs slower (docs/benchmarks.md). `platform` defaults to the
  default backend; the ahead-of-time tool names its target's.
  """
  if requested != 'auto':
    return requested
  return 'unroll' if (platform or jax.default_backend()) in ('gpu', 'tpu') else 'scan'


def _tpu_flash_attention(q, k, v):
  """The Pallas TPU flash kernel on [B, T, H, D] inputs of any length: both sequences are padded
  to whole blocks, and segment ids keep real queries off the padded keys."""
  # Imported here: the kernel module pulls in Pallas' TPU lowering, which CPU/GPU runs never need.
  from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash  # pylint: disable=g-import-not-at-top
  batch, q_len, _, head_dim = q.shape
  k_len = k.shape[1]

  def padded(x, length):
    target = -(-length // TPU_FLASH_BLOCK) * TPU_FLASH_BLOCK
    return jnp.pad(x, ((0, 0), (0, target - length), (0, 0), (0, 0))).swapaxes(1, 2), target

  q_pad, q_target = padded(q, q_len)
  k_pad, k_target = padded(k, k_len)
  v_pad, _ = padded(v, k_len)
  segments = lambda length, target: jnp.broadcast_to(
      (jnp.arange(target) < length).astype(jnp.int32), (batch, target))
  out = tpu_flash.flash_attention(
      q_pad, k_pad, v_pad,
      segment_ids=tpu_flash.SegmentIds(segments(q_len, q_target), segments(k_len, k_target)),
      sm_scale=head_dim ** -0.5)
  return out.swapaxes(1, 2)[:, :q_len]


def _per_batch_shard(kernel):
  """`kernel` run on each device's slice of the batch when a mesh is set (the trainer's steps set
  theirs): XLA cannot partition a Pallas (Mosaic) call itself. Every axis of the trainer's mesh
  (data, fsdp) splits the batch, so the slices are whole examples and need no communication."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return kernel
  spec = jax.sharding.PartitionSpec(mesh.axis_names)
  return jax.shard_map(kernel, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec,
                       check_vma=False)


# Numbers each traced attention call: its named scope tells tools.roofline which kernels of the
# compiled program belong to which attention, and its shape.
_ATTENTION_CALLS = itertools.count()


def attention(q, k, v, implementation: str):
  """softmax(q k^T / sqrt(D)) v for [B, T, H, D] queries and [B, S, H, D] keys/values with the
  kernel `resolve_attention` chose. Logits and softmax are float32 in every kernel."""
  batch, q_len, heads, head_dim = q.shape
  scope = (f'attention{next(_ATTENTION_CALLS)}_bh{batch * heads}_q{q_len}_k{k.shape[1]}_'
           f'd{head_dim}')
  with jax.named_scope(scope):
    return _attention(q, k, v, implementation)


def _attention(q, k, v, implementation: str):
  if implementation == 'tpu_flash' and k.shape[1] >= TPU_FLASH_BLOCK:
    return _per_batch_shard(_tpu_flash_attention)(q, k, v)
  if implementation == 'cudnn':
    return _even_length_attention(q, k, v, _cudnn_attention)
  if implementation == 'cudnn_stand_in':
    return _even_length_attention(q, k, v, _cudnn_stand_in)
  return _xla_attention(q, k, v)


def _cudnn_attention(q, k, v, key_value_seq_lengths=None):
  return jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=key_value_seq_lengths,
                                      implementation='cudnn')


def _even_length_attention(q, k, v, attend):
  """`attend` (cuDNN's kernel or its stand-in) on sequences padded to even lengths: cuDNN's
  kernels refuse odd ones in training (jax 0.11.2 on an H200: 'Unsupported sequence length Q 197,
  KV 197'). The padded key is masked out (key_value_seq_lengths) and the padded query's row
  dropped, so the result is the unpadded attention's."""
  q_len, k_len = q.shape[1], k.shape[1]
  if q_len % 2 == 0 and k_len % 2 == 0:
    return attend(q, k, v)
  pad = lambda x: jnp.pad(x, ((0, 0), (0, x.shape[1] % 2), (0, 0), (0, 0)))
  lengths = jnp.full((q.shape[0],), k_len, jnp.int32)
  return attend(pad(q), pad(k), pad(v), key_value_seq_lengths=lengths)[:, :q_len]


@jax.checkpoint
def _xla_attention(q, k, v, key_value_seq_lengths=None):
  """XLA's attention: jax.nn.dot_product_attention(implementation='xla')'s arithmetic (float32
  logits and softmax, probabilities in the compute dtype; padded keys masked), with the second
  product written heads-major ([B, H, T, D]) and transposed after. Written token-major, as
  jax.nn writes it, XLA's CPU compile transposes the [B, H, T, S] probabilities for that product:
  VideoMAE's 1,568-token attention forward runs ~1.8x as fast heads-major on a CPU.

  Its N x N scores are recomputed in the backward pass rather than kept (as the fused kernels
  do): kept, a scan over layers stacks them, [layers, B, H, N, N] per saved tensor."""
  # bf16 inputs with float32 products: named as an algorithm, as jax.nn does, so the backward
  # pass's products are typed consistently.
  precision = jax.lax.DotAlgorithmPreset.BF16_BF16_F32 if q.dtype == jnp.bfloat16 else None
  logits = jnp.einsum('btnh,bsnh->bnts', q, k, precision=precision,
                      preferred_element_type=jnp.float32)
  logits = logits * jnp.float32(q.shape[-1] ** -0.5)
  if key_value_seq_lengths is not None:
    real = jnp.arange(k.shape[1]) < key_value_seq_lengths[:, None, None, None]
    logits = jnp.where(real, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum('bnts,bsnh->bnth', probs, v).swapaxes(1, 2)


def row_major(x):
  """x (and its gradient) laid out row-major at this point of the program."""
  return with_layout_constraint(x, Layout(tuple(range(x.ndim))))


def _materialised(x):
  return jax.lax.optimization_barrier(row_major(x))


@jax.custom_vjp
def _kernel_boundary(x):
  """x as a custom call's operand or result is: a row-major array that no fusion reaches
  through; its gradient likewise."""
  return _materialised(x)


_kernel_boundary.defvjp(lambda x: (_materialised(x), None), lambda _, ct: (_materialised(ct),))


def _cudnn_stand_in(q, k, v, key_value_seq_lengths=None):
  """XLA's attention behind the boundary of cuDNN's kernel: q, k, v, the output and their
  gradients are row-major [B, T, H, D] arrays in the compute dtype, and nothing fuses across.
  `tools.aot` compiles it for GPU targets, where cuDNN's kernel cannot be compiled without a GPU:
  the program around each attention is then the one the GPU runs (its layouts, its copies), and
  `tools.roofline` costs the attention itself as cuDNN's flash kernel. It computes what 'xla'
  does."""
  q, k, v = (_kernel_boundary(x) for x in (q, k, v))
  return _kernel_boundary(_xla_attention(q, k, v, key_value_seq_lengths))


class Attention(nnx.Module):
  """Multi-head self-attention with a fused q|k|v projection.

  `bias='qkv'`: one bias over q|k|v (CLIP, AST). `bias='qv'`: VideoMAE's separate q and v
  biases with the k bias fixed at zero.
  """

  def __init__(self, dim, num_heads, *, bias: str, implementation: str, dtype, rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.bias = bias
    self.implementation = implementation
    self.qkv = dense(dim, 3 * dim, use_bias=bias == 'qkv', dtype=dtype, rngs=rngs)
    if bias == 'qv':
      self.q_bias = nnx.Param(jnp.zeros((dim,), jnp.float32))
      self.v_bias = nnx.Param(jnp.zeros((dim,), jnp.float32))
    self.out = dense(dim, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    qkv = self.qkv(x)
    if self.bias == 'qv':
      zeros = jnp.zeros_like(self.q_bias[...])
      qkv = qkv + jnp.concatenate([self.q_bias[...], zeros, self.v_bias[...]]).astype(qkv.dtype)
    q, k, v = jnp.split(qkv.reshape(*x.shape[:-1], 3 * self.num_heads, -1), 3, axis=-2)
    y = attention(q, k, v, self.implementation)
    return self.out(y.reshape(x.shape))


@functools.lru_cache(maxsize=None)
def sinusoid_table(num_positions: int, dim: int) -> np.ndarray:
  """VideoMAE's fixed table: angle = pos / 10000^(2*floor(j/2)/dim); sin on even j, cos on odd j."""
  position = np.arange(num_positions, dtype=np.float64)[:, None]
  exponent = 2 * (np.arange(dim) // 2) / dim
  angle = position / np.power(10000, exponent)[None, :]
  table = np.where(np.arange(dim) % 2 == 0, np.sin(angle), np.cos(angle))
  return table.astype(np.float32)


class ViTBlock(nnx.Module):
  """The pre-LN transformer block of all three experts: x + attn(norm1(x)), x + mlp(norm2(x)).

  They differ only in the LayerNorm epsilon, the MLP activation and the attention biases:
  CLIP 1e-5, QuickGELU, q|k|v bias; VideoMAE 1e-6, GELU, q and v biases (no k bias);
  AST 1e-6, GELU, q|k|v bias. The fused layers call `attend`, `pre_mlp` and `mlp` separately
  to insert their adapters and exchanges between them.
  """

  def __init__(self, cfg, *, eps: float, act, attention_bias: str, dtype, rngs: nnx.Rngs):
    self.norm1 = layer_norm(cfg.width, eps=eps, dtype=dtype, rngs=rngs)
    self.attn = Attention(cfg.width, cfg.num_heads, bias=attention_bias,
                          implementation=resolve_attention(cfg.attention, dtype), dtype=dtype,
                          rngs=rngs)
    self.norm2 = layer_norm(cfg.width, eps=eps, dtype=dtype, rngs=rngs)
    self.mlp = Mlp(cfg.width, cfg.mlp_dim, act=act, dtype=dtype, rngs=rngs)

  def attend(self, x):
    return self.attn(self.norm1(x))

  def pre_mlp(self, x):
    return self.norm2(x)

  def __call__(self, x):
    x = x + self.attend(x)
    return x + self.mlp(self.pre_mlp(x))


# What a rematerialised layer keeps for the backward pass: nothing but its inputs ('full'), or
# also the outputs of its weight matmuls ('dots', cheaper recompute, more memory).
REMAT_POLICIES = {'full': None, 'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


class Stack(nnx.Module):
  """Layers of one structure with their parameters stacked along a leading layer axis.

  Built from the per-layer modules (so their initialisation is the unstacked one); the stacked
  parameters keep the layer's own attribute names: `spatial/blocks/attn/qkv/kernel` is
  [depth, width, 3 * width]. `run_stacks` runs stacks with one traced layer (jax.lax.scan).
  `len(stack)` is the number of layers; `stack[i]` is layer i as a standalone module (a copy,
  for tests and inspection). Only parameters may be stacked: randomness enters the scan as
  inputs (`DropPath`).
  """

  def __init__(self, modules):
    if not modules:
      raise ValueError('a Stack needs at least one layer')
    graphdef, _ = nnx.split(modules[0])
    states = []
    for module in modules:
      module_graphdef, params, rest = nnx.split(module, nnx.Param, ...)
      if module_graphdef != graphdef:
        raise ValueError(f'layers of a Stack must share one structure: {type(module).__name__}')
      if jax.tree.leaves(rest):
        raise ValueError(f'{type(module).__name__} holds non-parameter state; a Stack holds '
                         'parameters only')
      states.append(nnx.to_pure_dict(params))
    stacked = nnx.merge(graphdef, jax.tree.map(lambda *xs: jnp.stack(xs), *states))
    self.layer_graphdef = graphdef
    self.num_layers = len(modules)
    for name, child in nnx.iter_children(stacked):  # its parameters and submodules
      setattr(self, name, child)

  def __len__(self):
    return self.num_layers

  def layer_params(self, start: int = 0, stop: int | None = None):
    """(graphdef of one layer, parameters of layers start..stop-1 stacked) for `run_stacks`."""
    params = nnx.to_pure_dict(nnx.state(self, nnx.Param))
    if (start, stop) != (0, None):
      params = jax.tree.map(lambda x: x[start:stop], params)
    return self.layer_graphdef, params

  def __getitem__(self, i: int):
    if not -self.num_layers <= i < self.num_layers:
      raise IndexError(f'layer {i} of a Stack of {self.num_layers}')
    params = nnx.to_pure_dict(nnx.state(self, nnx.Param))
    return nnx.merge(self.layer_graphdef, jax.tree.map(lambda x: x[i], params))

  def __iter__(self):
    return (self[i] for i in range(self.num_layers))


def run_stacks(body, carry, stacks, inputs=None, *, remat: str = 'none', unroll: bool = False):
  """Runs layer i of every stack together, for every i, as one scanned layer:

      carry = body(*(layer i of each stack), carry, inputs[i])

  stacks: `Stack.layer_params(...)` of each stack, all of one length; inputs: per-layer arrays
  (leading axis = layers) or None. With remat 'full' / 'dots' each layer is rematerialised
  (its activations recomputed in the backward pass, REMAT_POLICIES). unroll: trace every layer
  (a Python loop) instead of a jax.lax.scan: what the backward pass needs then stays in the
  buffers the forward wrote, where a scan stacks it (zero-filled stacks, a copy into them and a
  slice out of them per layer); the compile takes several times longer.
  """
  graphdefs = [graphdef for graphdef, _ in stacks]

  def step(carry, xs):
    params, layer_inputs = xs
    modules = [nnx.merge(graphdef, p) for graphdef, p in zip(graphdefs, params)]
    # Left free, XLA's layout assignment lays a token stream (and its gradient) out token-minor
    # for the reductions of its bias gradients; every LayerNorm and matmul on it then transposes.
    return jax.tree.map(row_major, body(*modules, carry, layer_inputs)), None

  if remat != 'none':
    step = jax.checkpoint(step, policy=REMAT_POLICIES[remat], prevent_cse=False)
  xs = ([params for _, params in stacks], inputs)
  if unroll:
    for i in range(jax.tree.leaves(xs)[0].shape[0]):
      carry, _ = step(carry, jax.tree.map(lambda x, i=i: x[i], xs))
    return carry
  carry, _ = jax.lax.scan(step, carry, xs)
  return carry


def stack_paths(model) -> tuple[tuple, ...]:
  """The paths (nnx.iter_graph's) of the Stacks in `model`."""
  return tuple(path for path, node in nnx.iter_graph(model) if isinstance(node, Stack))


def _under(path, prefixes) -> bool:
  keys = tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))
  return any(keys[:len(prefix)] == prefix for prefix in prefixes)


def split_stacks(state, paths):
  """`state` with every leaf of the Stacks at `paths` ([L, ...]) as the list of its L layers;
  abstract leaves (jax.ShapeDtypeStruct) give abstract layers.

  A program of unrolled layers that takes the layers as separate arrays reads each where it lies:
  a layer sliced out of a stacked argument is a copy (on a GPU, a kernel per weight and layer).
  `join_stacks` stacks them again inside the program, where XLA folds each layer's slice of the
  stack back into the layer's own array.
  """
  def split(path, x):
    if not _under(path, paths):
      return x
    if isinstance(x, jax.ShapeDtypeStruct):
      return [jax.ShapeDtypeStruct(x.shape[1:], x.dtype)] * x.shape[0]
    return [x[i] for i in range(x.shape[0])]
  return jax.tree_util.tree_map_with_path(split, state)


def join_stacks(state):
  """The inverse of `split_stacks`."""
  return jax.tree.map(lambda x: jnp.stack(x) if isinstance(x, list) else x, state,
                      is_leaf=lambda x: isinstance(x, list))
