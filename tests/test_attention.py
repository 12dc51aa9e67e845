"""Attention kernels: how 'auto' resolves, and each fused kernel against XLA's attention.

The cuDNN cases run only where a CUDA GPU is the default backend (launch/bench_gpu.sh runs them);
the TPU flash kernel runs here in Pallas' TPU interpret mode.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ca2st_jax import config_lib
from ca2st_jax import models
from ca2st_jax.models import layers

ON_GPU = jax.default_backend() == "gpu"


def _value_and_grads(loss, q, k, v):
  """loss(q, k, v) and its gradients, compiled as one program (op by op, each op compiles)."""
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)


def _qkv(q_len, k_len, batch=2, heads=2, head_dim=32, dtype=jnp.float32, seed=0):
  rng = np.random.default_rng(seed)
  make = lambda length: jnp.asarray(rng.normal(size=(batch, length, heads, head_dim)), dtype)
  return make(q_len), make(k_len), make(k_len)


@pytest.mark.parametrize("platform,dtype,expected", [
    ("cpu", jnp.float32, "xla"),
    ("cpu", jnp.bfloat16, "xla"),
    ("gpu", jnp.bfloat16, "cudnn"),
    ("gpu", jnp.float16, "cudnn"),
    ("gpu", jnp.float32, "xla"),
    ("tpu", jnp.bfloat16, "tpu_flash"),
    ("tpu", jnp.float32, "tpu_flash"),
])
def test_auto_resolves_per_platform_and_dtype(platform, dtype, expected):
  assert layers.resolve_attention("auto", dtype, platform) == expected


def test_auto_on_a_gpu_in_float32_says_why_it_uses_xla():
  layers.resolve_attention.cache_clear()
  with pytest.warns(UserWarning, match="cuDNN flash attention needs bfloat16"):
    assert layers.resolve_attention("auto", jnp.float32, "gpu") == "xla"


@pytest.mark.parametrize("requested,platform,dtype,message", [
    ("cudnn", "cpu", jnp.bfloat16, "needs an NVIDIA GPU"),
    ("cudnn", "gpu", jnp.float32, "dtype float32"),
    ("tpu_flash", "gpu", jnp.bfloat16, "needs a TPU"),
])
def test_impossible_requests_name_the_config_field(requested, platform, dtype, message):
  with pytest.raises(ValueError, match="config.model.attention") as err:
    layers.resolve_attention(requested, dtype, platform)
  assert message in str(err.value)


def test_check_config_rejects_unknown_attention():
  cfg = config_lib.tiny(config_lib.model_config("cast", attention="fast"))
  with pytest.raises(ValueError, match="config.model.attention='fast'"):
    models.check_config(cfg)


@pytest.mark.parametrize("q_len,k_len", [(130, 140), (128, 256), (200, 129)])
def test_tpu_flash_kernel_matches_xla_values_and_gradients(q_len, k_len):
  from jax.experimental.pallas import tpu as pltpu
  q, k, v = _qkv(q_len, k_len)
  loss = lambda impl: lambda q, k, v: jnp.sum(jnp.sin(layers.attention(q, k, v, impl)))
  want, want_grads = _value_and_grads(loss("xla"), q, k, v)
  with pltpu.force_tpu_interpret_mode():
    got, got_grads = _value_and_grads(loss("tpu_flash"), q, k, v)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for g, w in zip(got_grads, want_grads):
    np.testing.assert_allclose(g, w, atol=2e-5)


@pytest.mark.parametrize("q_len,k_len", [(197, 197), (8, 197), (197, 8), (6, 6)])
@pytest.mark.parametrize("kernel", ["xla", "cudnn_stand_in"])
def test_odd_lengths_padded_and_masked_give_the_unpadded_attention(q_len, k_len, kernel):
  """What the cuDNN path does with CLIP's 197 tokens, run with XLA's kernel (alone, and as the
  stand-in tools.aot compiles in cuDNN's place): values and gradients of the attention on the
  sequences padded to even lengths equal the unpadded attention's."""
  q, k, v = _qkv(q_len, k_len)
  loss = lambda attend: lambda q, k, v: jnp.sum(jnp.sin(attend(q, k, v)))
  want, want_grads = _value_and_grads(loss(layers._xla_attention), q, k, v)
  if kernel == "xla":
    padded = lambda q, k, v: layers._even_length_attention(q, k, v, layers._xla_attention)
  else:
    padded = lambda q, k, v: layers.attention(q, k, v, "cudnn_stand_in")
  got, got_grads = _value_and_grads(loss(padded), q, k, v)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for g, w in zip(got_grads, want_grads):
    assert g.shape == w.shape
    np.testing.assert_allclose(g, w, atol=2e-5)


def test_tpu_flash_runs_per_batch_shard_under_a_mesh(monkeypatch):
  # Under the trainer's mesh XLA cannot partition the Pallas call ("Mosaic kernels cannot be
  # automatically partitioned"): each device runs it on its slice of the batch. The kernel is
  # replaced by XLA's attention here: Pallas' interpret mode, run on 8 CPU devices at once,
  # can deadlock in its callbacks on a 2-core machine (the kernel itself is tested above, and
  # test_aot compiles it sharded for a TPU slice).
  from jax.sharding import NamedSharding, PartitionSpec as P
  from ca2st_jax.train import mesh as mesh_lib
  shapes = []

  def kernel(q, k, v):
    shapes.append(q.shape)
    return jax.nn.dot_product_attention(q, k, v, implementation="xla")

  monkeypatch.setattr(layers, "_tpu_flash_attention", kernel)
  mesh = mesh_lib.make_mesh({"data": 4, "fsdp": 2})
  q, k, v = _qkv(130, 140, batch=8)
  loss = lambda impl: lambda q, k, v: jnp.sum(jnp.sin(layers.attention(q, k, v, impl)))
  want, want_grads = _value_and_grads(loss("xla"), q, k, v)
  sharded = NamedSharding(mesh, P(mesh_lib.BATCH_AXES))

  def step(q, k, v):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return jax.value_and_grad(loss("tpu_flash"), argnums=(0, 1, 2))(q, k, v)

  step = jax.jit(step, in_shardings=(sharded,) * 3)
  assert "shard_map" in str(jax.make_jaxpr(step)(q, k, v))
  got, got_grads = step(q, k, v)
  assert shapes[-1] == (1, 130, 2, 32)  # one example per device
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for g, w in zip(got_grads, want_grads):
    assert g.sharding.is_equivalent_to(sharded, 4)
    np.testing.assert_allclose(g, w, atol=2e-5)


def test_tpu_flash_keeps_short_windows_on_xla():
  # CAST's T2S windows have 8 keys: padding them to a 128 block would be mostly waste.
  q, k, v = _qkv(8, 8)
  np.testing.assert_array_equal(
      jax.jit(lambda q, k, v: layers.attention(q, k, v, "tpu_flash"))(q, k, v),
      jax.jit(layers._xla_attention)(q, k, v))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("q_len,k_len,masked", [(197, 197, False), (198, 198, True),
                                                (8, 197, False), (197, 8, True)])
def test_xla_attention_is_jax_nn_dot_product_attention(q_len, k_len, masked, dtype):
  """layers._xla_attention lays its second product out differently from jax.nn's 'xla'
  implementation and computes the same: values and gradients, padded keys masked."""
  q, k, v = _qkv(q_len, k_len, dtype=dtype)
  lengths = jnp.array([k_len, k_len - 3]) if masked else None
  loss = lambda attend: lambda q, k, v: jnp.sum(jnp.sin(attend(q, k, v).astype(jnp.float32)))
  got, got_grads = _value_and_grads(
      loss(lambda q, k, v: layers._xla_attention(q, k, v, lengths)), q, k, v)
  want, want_grads = _value_and_grads(loss(lambda q, k, v: jax.nn.dot_product_attention(
      q, k, v, key_value_seq_lengths=lengths, implementation="xla")), q, k, v)
  tolerance = 1e-5 if dtype == jnp.float32 else 2e-3
  np.testing.assert_allclose(got, want, rtol=tolerance)
  for g, w in zip(got_grads, want_grads):
    assert g.dtype == w.dtype == dtype
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32),
                               atol=tolerance, rtol=tolerance)


def test_model_modules_use_the_resolved_kernel():
  cfg = config_lib.tiny(config_lib.model_config("ca2st", attention="xla"))
  model = nnx.eval_shape(lambda: models.build(cfg, rngs=nnx.Rngs(0)))
  kernels = {m.implementation for _, m in nnx.iter_graph(model) if hasattr(m, "implementation")}
  assert kernels == {"xla"}


def _relative_error(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return np.linalg.norm(got - want) / np.linalg.norm(want)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="cuDNN flash attention needs a CUDA GPU")
@pytest.mark.parametrize("q_len,k_len,head_dim", [(1568, 1568, 64), (197, 197, 64), (8, 8, 32),
                                                  (196, 196, 32), (1212, 1568, 32)])
def test_cudnn_matches_xla_on_the_models_shapes(q_len, k_len, head_dim):
  """bf16 cuDNN values and gradients against XLA's attention on the same inputs in float32: within
  bf16's error (relative norm 1e-3..1e-2), and no worse than XLA's own bf16 attention."""
  q, k, v = _qkv(q_len, k_len, head_dim=head_dim, dtype=jnp.bfloat16, seed=q_len + k_len)
  loss = lambda impl: lambda q, k, v: jnp.sum(
      jnp.sin(layers.attention(q, k, v, impl).astype(jnp.float32)))
  value_and_grads = lambda impl, *args: jax.jit(
      jax.value_and_grad(loss(impl), argnums=(0, 1, 2)))(*args)
  _, want = value_and_grads("xla", *(x.astype(jnp.float32) for x in (q, k, v)))
  _, xla_bf16 = value_and_grads("xla", q, k, v)
  _, cudnn = value_and_grads("cudnn", q, k, v)
  out = {impl: jax.jit(lambda q, k, v, impl=impl: layers.attention(q, k, v, impl))(q, k, v)
         for impl in ("xla", "cudnn")}
  out_want = layers.attention(*(x.astype(jnp.float32) for x in (q, k, v)), "xla")
  assert _relative_error(out["cudnn"], out_want) < 1e-2
  for got, bf16, ref in zip(cudnn, xla_bf16, want):
    assert _relative_error(got, ref) < max(2 * _relative_error(bf16, ref), 1e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="cuDNN flash attention needs a CUDA GPU")
@pytest.mark.parametrize("name", ["cast", "ca2st"])
def test_cudnn_model_matches_xla_model(name):
  """The tiny model in bf16 with cuDNN attention against the same weights in float32 (XLA): no
  further from it than the bf16 model with XLA's attention."""
  logits = {}
  for impl, dtype in (("xla", "float32"), ("xla", "bfloat16"), ("cudnn", "bfloat16")):
    cfg = config_lib.tiny(config_lib.model_config(name, attention=impl, dtype=dtype,
                                                  num_heads=4, bottleneck_dim=32, width=64))
    model = models.build(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    video = jnp.asarray(rng.normal(size=(2, cfg.num_frames, cfg.image_size, cfg.image_size, 3)),
                        jnp.float32)
    inputs = {}
    if name == "ca2st":
      inputs["audio"] = jnp.asarray(rng.normal(size=(2, cfg.spectrogram_length, cfg.num_mel_bins)),
                                    jnp.float32)
      inputs["audio_times"] = jnp.tile(jnp.linspace(0, 1, 18).reshape(1, 9, 2), (2, 1, 1))
    logits[impl, dtype] = np.asarray(nnx.jit(lambda m, v, i: m(video=v, **i, deterministic=True))(
        model, video, inputs)["label"], np.float32)
  want = logits["xla", "float32"]
  assert _relative_error(logits["cudnn", "bfloat16"], want) < max(
      2 * _relative_error(logits["xla", "bfloat16"], want), 2e-2)


def test_xla_attention_keeps_no_scores_for_the_backward_pass():
  """Scanned over layers, XLA's attention would stack its N x N probabilities for the backward
  pass ([layers, B, H, N, N]); it recomputes them instead, so more layers add no scores to the
  gradient's temporaries."""
  length, heads = 512, 2
  one_layer = _qkv(length, length, batch=1, heads=heads, head_dim=16)

  def loss(q, k, v):
    def layer(carry, qkv):
      return carry + jnp.sum(layers.attention(*qkv, "xla") ** 2), None
    return jax.lax.scan(layer, 0.0, (q, k, v))[0]

  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  temp = {}
  for num_layers in (4, 8):
    q, k, v = (jnp.stack([x] * num_layers) for x in one_layer)
    temp[num_layers] = grads.lower(q, k, v).compile().memory_analysis().temp_size_in_bytes
  assert temp[8] - temp[4] < heads * length * length * 4
  reference = jax.grad(lambda q, k, v: sum(
      jnp.sum(jax.nn.dot_product_attention(q[i], k[i], v[i]) ** 2) for i in range(8)),
                       argnums=(0, 1, 2))(q, k, v)
  for got, want in zip(grads(q, k, v), reference):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
