"""The spatial expert: the CLIP ViT-B/16 image tower, run on every other frame.

Frame k of the expert is source frame 2k+1; each frame is an independent image of
1 class token + (image_size/patch)^2 patch tokens.
"""
import jax.numpy as jnp
from flax import nnx

from ca2st_jax.models import layers

CLIP_EPS = 1e-5


class SpatialExpert(nnx.Module):

  def __init__(self, cfg, *, dtype, rngs: nnx.Rngs, ln_post_eps: float = CLIP_EPS):
    grid = cfg.image_size // cfg.patch_size
    scale = cfg.width ** -0.5
    self.num_frames = cfg.num_frames // 2
    self.patch_embed = nnx.Conv(
        3, cfg.width, (cfg.patch_size, cfg.patch_size), cfg.patch_size, padding='VALID',
        use_bias=False, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    self.class_embedding = nnx.Param(scale * nnx.initializers.normal(1.0)(rngs.params(), (cfg.width,)))
    self.positional_embedding = nnx.Param(
        scale * nnx.initializers.normal(1.0)(rngs.params(), (grid * grid + 1, cfg.width)))
    self.ln_pre = layers.layer_norm(cfg.width, eps=CLIP_EPS, dtype=dtype, rngs=rngs)
    # Pre-LN CLIP residual blocks: QuickGELU MLP, LayerNorm eps 1e-5, one q|k|v bias.
    self.blocks = layers.Stack([
        layers.ViTBlock(cfg, eps=CLIP_EPS, act=layers.quick_gelu, attention_bias='qkv',
                        dtype=dtype, rngs=rngs) for _ in range(cfg.depth)])
    self.ln_post = layers.layer_norm(cfg.width, eps=ln_post_eps, dtype=dtype, rngs=rngs)

  def embed(self, video):
    """[B, F, H, W, 3] normalised video -> [B*F/2, 1 + patches, width] tokens of frames 1, 3, ..."""
    frames = video[:, 1::2]
    frames = frames.reshape(-1, *frames.shape[2:])
    x = self.patch_embed(frames)
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    cls = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], axis=1) + self.positional_embedding[...].astype(x.dtype)
    return self.ln_pre(x)

  def pool(self, x):
    """Class token of each frame, mean over frames, then ln_post -> [B, width]."""
    cls = x[:, 0].reshape(-1, self.num_frames, x.shape[-1])
    return self.ln_post(cls.mean(axis=1))

  def __call__(self, video):
    x = layers.run_stacks(lambda block, x, _: block(x), self.embed(video),
                          [self.blocks.layer_params()])
    return self.pool(x)
