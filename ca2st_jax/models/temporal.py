"""The temporal expert: VideoMAE ViT-B/16 with 2x16x16 tubelets and a fixed sinusoid table."""
import jax.numpy as jnp
from flax import nnx

from ca2st_jax.models import layers

VMAE_EPS = 1e-6


class TemporalExpert(nnx.Module):

  def __init__(self, cfg, *, dtype, rngs: nnx.Rngs):
    self.tubelet_size = cfg.tubelet_size
    self.patch_embed = nnx.Conv(
        3, cfg.width, (cfg.tubelet_size, cfg.patch_size, cfg.patch_size),
        (cfg.tubelet_size, cfg.patch_size, cfg.patch_size), padding='VALID', use_bias=True,
        dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    # Pre-LN VideoMAE blocks: q/v biases without k bias, exact-GELU MLP, eps 1e-6.
    self.blocks = layers.Stack([
        layers.ViTBlock(cfg, eps=VMAE_EPS, act=layers.gelu, attention_bias='qv', dtype=dtype,
                        rngs=rngs) for _ in range(cfg.depth)])
    self.fc_norm = layers.layer_norm(cfg.width, eps=VMAE_EPS, dtype=dtype, rngs=rngs)

  def embed(self, video):
    """[B, F, H, W, 3] -> [B, F/2 * patches, width], time-major (t, h, w), plus the sinusoid table."""
    x = self.patch_embed(video)
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    return x + jnp.asarray(layers.sinusoid_table(x.shape[1], x.shape[2]), x.dtype)

  def pool(self, x):
    return self.fc_norm(x.mean(axis=1))

  def __call__(self, video):
    x = layers.run_stacks(lambda block, x, _: block(x), self.embed(video),
                          [self.blocks.layer_params()])
    return self.pool(x)
