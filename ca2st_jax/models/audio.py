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


class AudioExpert(nnx.Module):

  def __init__(self, cfg, *, dtype, rngs: nnx.Rngs):
    freq, time = grid_shape(cfg)
    self.patch_embed = nnx.Conv(
        1, cfg.width, (cfg.audio_patch_size, cfg.audio_patch_size), cfg.audio_patch_stride,
        padding='VALID', use_bias=True, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    self.cls_token = nnx.Param(jnp.zeros((1, 1, cfg.width), jnp.float32))
    self.dist_token = nnx.Param(jnp.zeros((1, 1, cfg.width), jnp.float32))
    self.pos_embed = nnx.Param(layers.TRUNC_NORMAL(rngs.params(), (1, freq * time + 2, cfg.width)))
    # Pre-LN DeiT blocks: exact-GELU MLP, eps 1e-6, one q|k|v bias.
    self.blocks = layers.Stack([
        layers.ViTBlock(cfg, eps=AST_EPS, act=layers.gelu, attention_bias='qkv', dtype=dtype,
                        rngs=rngs) for _ in range(cfg.depth)])
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
    x = layers.run_stacks(lambda block, x, _: block(x), self.embed(spectrogram),
                          [self.blocks.layer_params()])
    return self.pool(x)
