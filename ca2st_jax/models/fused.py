"""The assembled models: CAST, CAST-compositional, CAVA and CA²ST.

The experts run side by side, block by block: block i of every expert runs inside model
layer i, whose adapters and B-CA exchanges live in `self.layers[i]`. The experts' own blocks
stay inside the experts, so `model.spatial(video)` is the frozen CLIP tower run alone.
"""
import jax.numpy as jnp
from flax import nnx

from ca2st_jax.models import bca
from ca2st_jax.models import layers
from ca2st_jax.models.spatial import SpatialExpert
from ca2st_jax.models.temporal import TemporalExpert

MLP_ADAPTER_SCALE = 0.5


def drop_path_rates(cfg):
  if cfg.depth == 1:
    return [0.0]
  return [cfg.drop_path * i / (cfg.depth - 1) for i in range(cfg.depth)]


def dtype_of(cfg):
  return {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}[cfg.dtype]


class CastLayer(nnx.Module):
  """Adapters and the S↔T exchange of one CAST block (SPEC §4)."""

  def __init__(self, cfg, drop_path: float, *, dtype, rngs: nnx.Rngs):
    width, hidden = cfg.width, cfg.adapter_dim
    self.spatial_adapter = layers.Adapter(width, hidden, skip=True, dtype=dtype, rngs=rngs)
    self.temporal_adapter = layers.Adapter(width, hidden, skip=True, dtype=dtype, rngs=rngs)
    self.space_time = bca.SpaceTimeExchange(cfg, dtype=dtype, rngs=rngs)
    self.spatial_mlp_adapter = layers.Adapter(width, hidden, skip=False, dtype=dtype, rngs=rngs)
    self.temporal_mlp_adapter = layers.Adapter(width, hidden, skip=False, dtype=dtype, rngs=rngs)
    # The reference keeps CLIP tokens as [N, B*S, D] and drops along N; VideoMAE's are [B, N, D].
    self.spatial_drop_path = layers.DropPath(drop_path, sample_axis=1, rngs=rngs)
    self.temporal_drop_path = layers.DropPath(drop_path, sample_axis=0, rngs=rngs)

  def __call__(self, spatial_block, temporal_block, spatial, temporal, *, deterministic):
    spatial = spatial + self.spatial_adapter(spatial_block.attn(spatial_block.ln_1(spatial)))
    temporal = temporal + self.temporal_adapter(temporal_block.attn(temporal_block.norm1(temporal)))

    spatial_cross, temporal_cross = self.space_time(spatial, temporal)
    spatial = spatial + self.spatial_drop_path(spatial_cross, deterministic=deterministic)
    temporal = temporal + self.temporal_drop_path(temporal_cross, deterministic=deterministic)

    h = spatial_block.ln_2(spatial)
    spatial = spatial + spatial_block.mlp(h) + self.spatial_drop_path(
        MLP_ADAPTER_SCALE * self.spatial_mlp_adapter(h), deterministic=deterministic)
    h = temporal_block.norm2(temporal)
    temporal = temporal + temporal_block.mlp(h) + self.temporal_drop_path(
        MLP_ADAPTER_SCALE * self.temporal_mlp_adapter(h), deterministic=deterministic)
    return spatial, temporal


class CAST(nnx.Module):
  """CAST: CLIP + VideoMAE with B-CA in every layer.

  Fused head: head(dropout(L_s(spatial) + L_t(temporal))), the last adapters without skip.
  Compositional (EK100): verb from the temporal feature, noun from the spatial one.
  """

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    dtype = dtype_of(cfg)
    self.compositional = cfg.name == 'cast_compositional'
    self.spatial = SpatialExpert(cfg, dtype=dtype, rngs=rngs)
    self.temporal = TemporalExpert(cfg, dtype=dtype, rngs=rngs)
    self.layers = nnx.List([CastLayer(cfg, rate, dtype=dtype, rngs=rngs)
                            for rate in drop_path_rates(cfg)])
    self.head_dropout = nnx.Dropout(cfg.head_dropout, rngs=rngs)
    if self.compositional:
      self.verb_head = layers.dense(cfg.width, cfg.num_verbs, dtype=dtype, rngs=rngs)
      self.noun_head = layers.dense(cfg.width, cfg.num_nouns, dtype=dtype, rngs=rngs)
    else:
      self.spatial_last_adapter = layers.Adapter(
          cfg.width, cfg.adapter_dim, skip=False, dtype=dtype, rngs=rngs)
      self.temporal_last_adapter = layers.Adapter(
          cfg.width, cfg.adapter_dim, skip=False, dtype=dtype, rngs=rngs)
      self.head = layers.dense(cfg.width, cfg.num_classes, dtype=dtype, rngs=rngs)

  def features(self, video, *, deterministic=True):
    """Pooled (spatial, temporal) features after all layers."""
    spatial = self.spatial.embed(video)
    temporal = self.temporal.embed(video)
    for layer, spatial_block, temporal_block in zip(
        self.layers, self.spatial.blocks, self.temporal.blocks):
      spatial, temporal = layer(spatial_block, temporal_block, spatial, temporal,
                                deterministic=deterministic)
    return self.spatial.pool(spatial), self.temporal.pool(temporal)

  def __call__(self, video, audio=None, audio_times=None, *, deterministic=True):
    del audio, audio_times  # CAST is video-only.
    spatial, temporal = self.features(video, deterministic=deterministic)
    if self.compositional:
      return {
          'verb': self.verb_head(self.head_dropout(temporal, deterministic=deterministic)),
          'noun': self.noun_head(self.head_dropout(spatial, deterministic=deterministic)),
      }
    fused = self.spatial_last_adapter(spatial) + self.temporal_last_adapter(temporal)
    return {'label': self.head(self.head_dropout(fused, deterministic=deterministic))}
