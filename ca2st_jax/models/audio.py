"""The audio expert: AST in the DeiT-B/16-distilled layout (class + distillation tokens).

The spectrogram [B, T, mel] is patched 16x16 with stride 10 on the (mel, time) plane; the
token order is frequency-major (index = f * time_patches + t), as the reference's conv output.
"""
import jax.numpy as jnp
from flax import nnx

from ca2st_jax.models import layers

AST_EPS = 1e-6


def grid_shape(cfg):
  """(frequency patches, time patches) of the strided audio patching."""
  patch, stride = cfg.audio_patch_size, cfg.audio_patch_stride
  return ((cfg.num_mel_bins - patch) // stride + 1, (cfg.spectrogram_length - patch) // stride + 1)


class AudioBlock(nnx.Module):

  def __init__(self, cfg, *, dtype, rngs: nnx.Rngs):
    self.norm1 = layers.layer_norm(cfg.width, eps=AST_EPS, dtype=dtype, rngs=rngs)
    self.attn = layers.Attention(
        cfg.width, cfg.num_heads, bias='qkv',
        implementation=layers.resolve_attention(cfg.attention, dtype), dtype=dtype, rngs=rngs)
    self.norm2 = layers.layer_norm(cfg.width, eps=AST_EPS, dtype=dtype, rngs=rngs)
    self.mlp = layers.Mlp(cfg.width, cfg.mlp_dim, act=layers.gelu, dtype=dtype, rngs=rngs)

  def attend(self, x):
    return self.attn(self.norm1(x))

  def pre_mlp(self, x):
    return self.norm2(x)

  def __call__(self, x):
    x = x + self.attend(x)
    return x + self.mlp(self.pre_mlp(x))


class AudioExpert(nnx.Module):

  def __init__(self, cfg, *, dtype, rngs: nnx.Rngs):
    freq, time = grid_shape(cfg)
    self.patch_embed = nnx.Conv(
        1, cfg.width, (cfg.audio_patch_size, cfg.audio_patch_size), cfg.audio_patch_stride,
        padding='VALID', use_bias=True, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    self.cls_token = nnx.Param(jnp.zeros((1, 1, cfg.width), jnp.float32))
    self.dist_token = nnx.Param(jnp.zeros((1, 1, cfg.width), jnp.float32))
    self.pos_embed = nnx.Param(layers.TRUNC_NORMAL(rngs.params(), (1, freq * time + 2, cfg.width)))
    self.blocks = nnx.List([AudioBlock(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.depth)])
    self.norm = layers.layer_norm(cfg.width, eps=AST_EPS, dtype=dtype, rngs=rngs)

  def embed(self, spectrogram):
    """[B, T, mel] -> [B, 2 + patches, width]."""
    x = jnp.swapaxes(spectrogram, 1, 2)[..., None]
    x = self.patch_embed(x)
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    batch = x.shape[0]
    cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (batch, 1, x.shape[-1]))
    dist = jnp.broadcast_to(self.dist_token[...].astype(x.dtype), (batch, 1, x.shape[-1]))
    return jnp.concatenate([cls, dist, x], axis=1) + self.pos_embed[...].astype(x.dtype)

  def pool(self, x):
    x = self.norm(x)
    return (x[:, 0] + x[:, 1]) / 2

  def __call__(self, spectrogram):
    x = self.embed(spectrogram)
    for block in self.blocks:
      x = block(x)
    return self.pool(x)
