"""Bottleneck Cross-Attention (B-CA): the exchange between two experts inside a block.

Both sides are projected down to the bottleneck width and normalised; each side then
attends to the other; the result goes through GELU and an up-projection that starts at zero,
so an untrained exchange adds nothing.

SpaceTimeExchange is CAST's windowed form (SPEC §4): the spatial tokens of a position attend
over the 8 time slots of the temporal tokens at that position, and the temporal tokens of a
slot attend over the patches of the paired CLIP frame.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from ca2st_jax.models import layers

BOTTLENECK_EPS = 1e-6


def _positions(rngs, length, dim, num_heads):
  # The reference draws these as head_dim**-0.5 * N(0, 1).
  return nnx.Param((dim // num_heads) ** -0.5 * jax.random.normal(rngs.params(), (length, dim)))


class CrossAttention(nnx.Module):
  """Queries from one side attend to keys/values from the other, within windows.

  Inputs are [..., L, dim]; every leading index is its own window. Optional learned
  positions ([L, dim]) are added to the inputs before the projections, so they reach the
  values too.
  """

  def __init__(self, dim, num_heads, *, query_positions=None, key_positions=None,
               dtype, rngs: nnx.Rngs):
    self.num_heads = num_heads
    if query_positions is not None:
      self.query_pos = _positions(rngs, query_positions, dim, num_heads)
      self.key_pos = _positions(rngs, key_positions, dim, num_heads)
    else:
      self.query_pos = self.key_pos = None
    self.q = layers.dense(dim, dim, use_bias=False, dtype=dtype, rngs=rngs)
    self.q_bias = nnx.Param(jnp.zeros((dim,), jnp.float32))
    self.kv = layers.dense(dim, 2 * dim, use_bias=False, dtype=dtype, rngs=rngs)
    self.kv_bias = nnx.Param(jnp.zeros((2 * dim,), jnp.float32))
    self.out = layers.dense(dim, dim, dtype=dtype, rngs=rngs)

  def __call__(self, queries, keys, *, query_add=None, key_add=None):
    """query_add / key_add: extra encodings added to the inputs (CAVA's time encodings)."""
    if self.query_pos is not None:
      queries = queries + self.query_pos[...].astype(queries.dtype)
      keys = keys + self.key_pos[...].astype(keys.dtype)
    if query_add is not None:
      queries = queries + query_add.astype(queries.dtype)
      keys = keys + key_add.astype(keys.dtype)
    q = self.q(queries) + self.q_bias[...].astype(queries.dtype)
    kv = self.kv(keys) + self.kv_bias[...].astype(keys.dtype)
    k, v = jnp.split(kv, 2, axis=-1)
    lead, (lq, dim), lk = queries.shape[:-2], queries.shape[-2:], keys.shape[-2]
    heads = lambda x, length: x.reshape(-1, length, self.num_heads, dim // self.num_heads)
    y = jax.nn.dot_product_attention(heads(q, lq), heads(k, lk), heads(v, lk))
    return self.out(y.reshape(*lead, lq, dim))


class SpaceTimeExchange(nnx.Module):
  """CAST's B-CA between the spatial (CLIP) and temporal (VideoMAE) experts."""

  def __init__(self, cfg, *, dtype, rngs: nnx.Rngs):
    width, dim, heads = cfg.width, cfg.bottleneck_dim, cfg.num_heads
    self.num_slots = cfg.num_frames // cfg.tubelet_size
    patches = (cfg.image_size // cfg.patch_size) ** 2
    self.spatial_down = layers.dense(width, dim, dtype=dtype, rngs=rngs)
    self.temporal_down = layers.dense(width, dim, dtype=dtype, rngs=rngs)
    self.spatial_norm = layers.layer_norm(dim, eps=BOTTLENECK_EPS, dtype=dtype, rngs=rngs)
    self.temporal_norm = layers.layer_norm(dim, eps=BOTTLENECK_EPS, dtype=dtype, rngs=rngs)
    # T2S: a spatial patch token attends over the time slots at its position.
    self.spatial_from_temporal = CrossAttention(
        dim, heads, query_positions=self.num_slots, key_positions=self.num_slots,
        dtype=dtype, rngs=rngs)
    # S2T: a temporal token attends over the patches of its slot's CLIP frame.
    self.temporal_from_spatial = CrossAttention(
        dim, heads, query_positions=patches, key_positions=patches, dtype=dtype, rngs=rngs)
    self.spatial_up = layers.dense(dim, width, dtype=dtype, rngs=rngs, zero=True)
    self.temporal_up = layers.dense(dim, width, dtype=dtype, rngs=rngs, zero=True)

  def __call__(self, spatial, temporal):
    """spatial [B*S, 1+P, W], temporal [B, S*P, W] -> their updates, same shapes (no residual)."""
    batch, slots = temporal.shape[0], self.num_slots
    spatial_low = self.spatial_norm(self.spatial_down(spatial))
    temporal_low = self.temporal_norm(self.temporal_down(temporal))
    dim = spatial_low.shape[-1]
    spatial_grid = spatial_low[:, 1:].reshape(batch, slots, -1, dim)  # [B, S, P, d]
    temporal_grid = temporal_low.reshape(batch, slots, -1, dim)  # [B, S, P, d]

    by_position = self.spatial_from_temporal(
        spatial_grid.swapaxes(1, 2), temporal_grid.swapaxes(1, 2))  # [B, P, S, d]
    spatial_patches = by_position.swapaxes(1, 2).reshape(batch * slots, -1, dim)
    # The class token takes no part in T2S: its row passes through unchanged.
    spatial_cross = jnp.concatenate([spatial_low[:, :1], spatial_patches], axis=1)

    temporal_cross = self.temporal_from_spatial(temporal_grid, spatial_grid).reshape(batch, -1, dim)
    return (self.spatial_up(layers.gelu(spatial_cross)),
            self.temporal_up(layers.gelu(temporal_cross)))
