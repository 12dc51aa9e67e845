"""The assembled models: CAST, CAST-compositional, CAVA and CA²ST.

The experts run side by side, block by block: block i of every expert runs inside model
layer i, whose adapters and B-CA exchanges live in `self.layers[i]`. The experts' own blocks
stay inside the experts, so `model.spatial(video)` is the frozen CLIP tower run alone.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from ca2st_jax.models import bca
from ca2st_jax.models import layers
from ca2st_jax.models.audio import AudioExpert
from ca2st_jax.models.spatial import SpatialExpert
from ca2st_jax.models.temporal import TemporalExpert

MLP_ADAPTER_SCALE = 0.5


def drop_path_rates(cfg):
  if cfg.depth == 1:
    return [0.0]
  return [cfg.drop_path * i / (cfg.depth - 1) for i in range(cfg.depth)]


def dtype_of(cfg):
  return {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}[cfg.dtype]


# What a rematerialised layer keeps for the backward pass: nothing but its inputs ('full'), or
# also the outputs of its weight matmuls ('dots', cheaper recompute, more memory).
REMAT_POLICIES = {'full': None, 'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def run_layer(remat: str, layer, blocks: tuple, arrays: tuple, *, deterministic: bool):
  """layer(*blocks, *arrays), optionally rematerialised: its activations are recomputed in the
  backward pass. Parameters enter jax.checkpoint as inputs; only the dropout RNG counters are
  written back, and only in training, so an eval forward may close over arrays of an outer trace."""
  if remat == 'none':
    return layer(*blocks, *arrays, deterministic=deterministic)
  graphdef, params, others = nnx.split((layer, blocks), nnx.Param, ...)

  def pure(params, others, arrays):
    layer, blocks = nnx.merge(graphdef, params, others)
    out = layer(*blocks, *arrays, deterministic=deterministic)
    return out, nnx.state((layer, blocks), nnx.Not(nnx.Param))

  out, others = jax.checkpoint(pure, policy=REMAT_POLICIES[remat])(params, others, arrays)
  if not deterministic:
    nnx.update((layer, blocks), others)
  return out


def mlp_step(block, adapter, drop_path, x, deterministic):
  """The expert's MLP residual plus its MLP adapter (no skip, scaled 0.5, drop-pathed)."""
  h = block.pre_mlp(x)
  return x + block.mlp(h) + drop_path(MLP_ADAPTER_SCALE * adapter(h), deterministic=deterministic)


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
    spatial = spatial + self.spatial_adapter(spatial_block.attend(spatial))
    temporal = temporal + self.temporal_adapter(temporal_block.attend(temporal))

    spatial_cross, temporal_cross = self.space_time(spatial, temporal)
    spatial = spatial + self.spatial_drop_path(spatial_cross, deterministic=deterministic)
    temporal = temporal + self.temporal_drop_path(temporal_cross, deterministic=deterministic)

    spatial = mlp_step(spatial_block, self.spatial_mlp_adapter, self.spatial_drop_path, spatial,
                       deterministic)
    temporal = mlp_step(temporal_block, self.temporal_mlp_adapter, self.temporal_drop_path,
                        temporal, deterministic)
    return spatial, temporal


class CAST(nnx.Module):
  """CAST: CLIP + VideoMAE with B-CA in every layer.

  Fused head: head(dropout(L_s(spatial) + L_t(temporal))), the last adapters without skip.
  Compositional (EK100): verb from the temporal feature, noun from the spatial one.
  """

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    dtype = dtype_of(cfg)
    self.remat = cfg.remat
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
      spatial, temporal = run_layer(self.remat, layer, (spatial_block, temporal_block),
                                    (spatial, temporal), deterministic=deterministic)
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


def encode_times(time_encoding, audio_times):
  if time_encoding is None:
    return None, None
  return time_encoding(audio_times)


class CavaLayer(nnx.Module):
  """Adapters and the A↔S exchange of one CAVA block."""

  def __init__(self, cfg, drop_path: float, *, dtype, rngs: nnx.Rngs):
    width, hidden = cfg.width, cfg.adapter_dim
    self.audio_adapter = layers.Adapter(width, hidden, skip=True, dtype=dtype, rngs=rngs)
    self.spatial_adapter = layers.Adapter(width, hidden, skip=True, dtype=dtype, rngs=rngs)
    self.audio_spatial = bca.GlobalExchange(cfg, visual_prefix=1, dtype=dtype, rngs=rngs)
    self.audio_mlp_adapter = layers.Adapter(width, hidden, skip=False, dtype=dtype, rngs=rngs)
    self.spatial_mlp_adapter = layers.Adapter(width, hidden, skip=False, dtype=dtype, rngs=rngs)
    # AST tokens are [B, N, D] in the reference's attention and MLP, [N, B, D] in its B-CA.
    self.audio_drop_path = layers.DropPath(drop_path, sample_axis=0, rngs=rngs)
    self.audio_cross_drop_path = layers.DropPath(drop_path, sample_axis=1, rngs=rngs)
    self.spatial_drop_path = layers.DropPath(drop_path, sample_axis=1, rngs=rngs)

  def __call__(self, audio_block, spatial_block, audio, spatial, audio_time, video_time, *,
               deterministic):
    audio = audio + self.audio_drop_path(
        self.audio_adapter(audio_block.attend(audio)), deterministic=deterministic)
    spatial = spatial + self.spatial_adapter(spatial_block.attend(spatial))

    audio_cross, spatial_cross = self.audio_spatial(audio, spatial, audio_time, video_time)
    audio = audio + self.audio_cross_drop_path(audio_cross, deterministic=deterministic)
    spatial = spatial + self.spatial_drop_path(spatial_cross, deterministic=deterministic)

    audio = mlp_step(audio_block, self.audio_mlp_adapter, self.audio_drop_path, audio,
                     deterministic)
    spatial = mlp_step(spatial_block, self.spatial_mlp_adapter, self.spatial_drop_path, spatial,
                       deterministic)
    return audio, spatial


class CAVA(nnx.Module):
  """CAVA: AST + CLIP with global A↔S B-CA in every layer and time encodings.

  head(dropout(L_a(audio) + L_s(spatial))), the last adapters WITH skip (SPEC §5).
  """

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    dtype = dtype_of(cfg)
    self.remat = cfg.remat
    self.audio = AudioExpert(cfg, dtype=dtype, rngs=rngs)
    # The reference builds CAVA's CLIP ln_post with the VideoMAE-style eps.
    self.spatial = SpatialExpert(cfg, dtype=dtype, rngs=rngs, ln_post_eps=1e-6)
    self.time_encoding = (bca.TimeEncoding(cfg, dtype=dtype, rngs=rngs)
                          if cfg.time_encoding else None)
    self.layers = nnx.List([CavaLayer(cfg, rate, dtype=dtype, rngs=rngs)
                            for rate in drop_path_rates(cfg)])
    # Present (and trained) in the reference's state_dict but never used by its forward;
    # kept so checkpoints move both ways with strict loading.
    self.audio_ln_post = layers.layer_norm(cfg.width, eps=1e-5, dtype=dtype, rngs=rngs)
    self.audio_last_adapter = layers.Adapter(
        cfg.width, cfg.adapter_dim, skip=True, dtype=dtype, rngs=rngs)
    self.spatial_last_adapter = layers.Adapter(
        cfg.width, cfg.adapter_dim, skip=True, dtype=dtype, rngs=rngs)
    self.head_dropout = nnx.Dropout(cfg.head_dropout, rngs=rngs)
    self.head = layers.dense(cfg.width, cfg.num_classes, dtype=dtype, rngs=rngs)

  def features(self, video, audio, audio_times, *, deterministic=True):
    audio_time, video_time = encode_times(self.time_encoding, audio_times)
    audio_tokens = self.audio.embed(audio)
    spatial = self.spatial.embed(video)
    for layer, audio_block, spatial_block in zip(self.layers, self.audio.blocks, self.spatial.blocks):
      audio_tokens, spatial = run_layer(
          self.remat, layer, (audio_block, spatial_block),
          (audio_tokens, spatial, audio_time, video_time), deterministic=deterministic)
    return self.audio.pool(audio_tokens), self.spatial.pool(spatial)

  def __call__(self, video, audio, audio_times, *, deterministic=True):
    audio_feature, spatial = self.features(video, audio, audio_times, deterministic=deterministic)
    fused = self.audio_last_adapter(audio_feature) + self.spatial_last_adapter(spatial)
    return {'label': self.head(self.head_dropout(fused, deterministic=deterministic))}


class Ca2stLayer(nnx.Module):
  """Adapters and exchanges of one CA²ST block: S↔T in every layer, A↔S and A↔T from layer
  `audio_exchange_start` on, applied in sequence ('seq') or averaged ('add')."""

  def __init__(self, cfg, index: int, drop_path: float, *, dtype, rngs: nnx.Rngs):
    width, hidden = cfg.width, cfg.adapter_dim
    self.method = cfg.exchange_method
    adapter = lambda skip: layers.Adapter(width, hidden, skip=skip, dtype=dtype, rngs=rngs)
    self.spatial_adapter, self.temporal_adapter, self.audio_adapter = (
        adapter(True), adapter(True), adapter(True))
    self.space_time = bca.SpaceTimeExchange(cfg, dtype=dtype, rngs=rngs)
    if index >= cfg.audio_exchange_start:
      self.audio_spatial = bca.GlobalExchange(cfg, visual_prefix=1, dtype=dtype, rngs=rngs)
      self.audio_temporal = bca.GlobalExchange(cfg, visual_prefix=0, dtype=dtype, rngs=rngs)
      if cfg.share_exchange_projections:
        # bcast_share: the visual sides reuse S↔T's projections; both audio pairs share theirs.
        self.audio_spatial.visual_down = self.space_time.spatial_down
        self.audio_spatial.visual_up = self.space_time.spatial_up
        self.audio_temporal.visual_down = self.space_time.temporal_down
        self.audio_temporal.visual_up = self.space_time.temporal_up
        self.audio_temporal.audio_down = self.audio_spatial.audio_down
        self.audio_temporal.audio_up = self.audio_spatial.audio_up
    else:
      self.audio_spatial = self.audio_temporal = None
    self.spatial_mlp_adapter, self.temporal_mlp_adapter, self.audio_mlp_adapter = (
        adapter(False), adapter(False), adapter(False))
    # Reference layouts: CLIP [N, B*S, D] everywhere, AST [N, B, D] inside the exchanges only.
    self.spatial_drop_path = layers.DropPath(drop_path, sample_axis=1, rngs=rngs)
    self.temporal_drop_path = layers.DropPath(drop_path, sample_axis=0, rngs=rngs)
    self.audio_drop_path = layers.DropPath(drop_path, sample_axis=0, rngs=rngs)
    self.audio_cross_drop_path = layers.DropPath(drop_path, sample_axis=1, rngs=rngs)

  def exchange(self, spatial, temporal, audio, audio_time, video_time, deterministic):
    drop = lambda module, x: module(x, deterministic=deterministic)
    spatial_st, temporal_st = self.space_time(spatial, temporal)
    spatial_st = drop(self.spatial_drop_path, spatial_st)
    temporal_st = drop(self.temporal_drop_path, temporal_st)
    if self.audio_spatial is None:
      return spatial + spatial_st, temporal + temporal_st, audio
    if self.method == 'add':
      audio_as, spatial_as = self.audio_spatial(audio, spatial, audio_time, video_time)
      audio_at, temporal_at = self.audio_temporal(audio, temporal, audio_time, video_time)
      spatial = spatial + (spatial_st + drop(self.spatial_drop_path, spatial_as)) / 2
      temporal = temporal + (temporal_st + drop(self.temporal_drop_path, temporal_at)) / 2
      audio = audio + (drop(self.audio_cross_drop_path, audio_as)
                       + drop(self.audio_cross_drop_path, audio_at)) / 2
      return spatial, temporal, audio
    spatial, temporal = spatial + spatial_st, temporal + temporal_st
    audio_as, spatial_as = self.audio_spatial(audio, spatial, audio_time, video_time)
    spatial = spatial + drop(self.spatial_drop_path, spatial_as)
    audio = audio + drop(self.audio_cross_drop_path, audio_as)
    audio_at, temporal_at = self.audio_temporal(audio, temporal, audio_time, video_time)
    temporal = temporal + drop(self.temporal_drop_path, temporal_at)
    audio = audio + drop(self.audio_cross_drop_path, audio_at)
    return spatial, temporal, audio

  def __call__(self, spatial_block, temporal_block, audio_block, spatial, temporal, audio,
               audio_time, video_time, *, deterministic):
    spatial = spatial + self.spatial_adapter(spatial_block.attend(spatial))
    temporal = temporal + self.temporal_adapter(temporal_block.attend(temporal))
    audio = audio + self.audio_drop_path(
        self.audio_adapter(audio_block.attend(audio)), deterministic=deterministic)

    spatial, temporal, audio = self.exchange(
        spatial, temporal, audio, audio_time, video_time, deterministic)

    spatial = mlp_step(spatial_block, self.spatial_mlp_adapter, self.spatial_drop_path, spatial,
                       deterministic)
    temporal = mlp_step(temporal_block, self.temporal_mlp_adapter, self.temporal_drop_path,
                        temporal, deterministic)
    audio = mlp_step(audio_block, self.audio_mlp_adapter, self.audio_drop_path, audio,
                     deterministic)
    return spatial, temporal, audio


class CA2ST(nnx.Module):
  """CA²ST: CLIP + VideoMAE + AST. head(dropout(L_s(spatial) + L_t(temporal) + L_a(audio))):
  the visual last adapters without skip and zero fc2; the audio one is c_fc, QuickGELU, c_proj
  with a random init (SPEC §5)."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    dtype = dtype_of(cfg)
    self.remat = cfg.remat
    self.spatial = SpatialExpert(cfg, dtype=dtype, rngs=rngs)
    self.temporal = TemporalExpert(cfg, dtype=dtype, rngs=rngs)
    self.audio = AudioExpert(cfg, dtype=dtype, rngs=rngs)
    self.time_encoding = (bca.TimeEncoding(cfg, dtype=dtype, rngs=rngs)
                          if cfg.time_encoding else None)
    self.layers = nnx.List([Ca2stLayer(cfg, i, rate, dtype=dtype, rngs=rngs)
                            for i, rate in enumerate(drop_path_rates(cfg))])
    # In the reference's state_dict (trained) but unused by its forward; kept for strict loading.
    self.audio_ln_post = layers.layer_norm(cfg.width, eps=1e-5, dtype=dtype, rngs=rngs)
    self.spatial_last_adapter = layers.Adapter(
        cfg.width, cfg.adapter_dim, skip=False, dtype=dtype, rngs=rngs)
    self.temporal_last_adapter = layers.Adapter(
        cfg.width, cfg.adapter_dim, skip=False, dtype=dtype, rngs=rngs)
    self.audio_last_adapter = layers.Mlp(
        cfg.width, cfg.adapter_dim, act=layers.quick_gelu, dtype=dtype, rngs=rngs)
    self.head_dropout = nnx.Dropout(cfg.head_dropout, rngs=rngs)
    self.head = layers.dense(cfg.width, cfg.num_classes, dtype=dtype, rngs=rngs)

  def features(self, video, audio, audio_times, *, deterministic=True):
    audio_time, video_time = encode_times(self.time_encoding, audio_times)
    spatial, temporal = self.spatial.embed(video), self.temporal.embed(video)
    audio_tokens = self.audio.embed(audio)
    for layer, *blocks in zip(self.layers, self.spatial.blocks, self.temporal.blocks,
                              self.audio.blocks):
      spatial, temporal, audio_tokens = run_layer(
          self.remat, layer, tuple(blocks),
          (spatial, temporal, audio_tokens, audio_time, video_time), deterministic=deterministic)
    return self.spatial.pool(spatial), self.temporal.pool(temporal), self.audio.pool(audio_tokens)

  def __call__(self, video, audio, audio_times, *, deterministic=True):
    spatial, temporal, audio_feature = self.features(
        video, audio, audio_times, deterministic=deterministic)
    fused = (self.spatial_last_adapter(spatial) + self.temporal_last_adapter(temporal)
             + self.audio_last_adapter(audio_feature))
    return {'label': self.head(self.head_dropout(fused, deterministic=deterministic))}
