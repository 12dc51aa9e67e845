"""The assembled models: CAST, CAVA and CA²ST, each also compositional (EK100 verb and noun heads).

The experts run side by side, block by block: block i of every expert runs inside model
layer i, whose adapters and B-CA exchanges are slice i of the stacked `self.layers`. The experts'
own blocks stay inside the experts (`spatial.blocks`, ...), so `model.spatial(video)` is the
frozen CLIP tower run alone. Layers are scanned (`layers.run_stacks`): one traced layer, its
parameters stacked on a leading layer axis; the per-layer drop-path rates and keys are scanned
inputs. CA²ST has two layer groups, `layers` before `audio_exchange_start` and
`audio_exchange_layers` from it on (the audio exchanges exist only there): two scans.
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


class DropPathRates(nnx.Module):
  """The per-layer drop-path rates (0 .. drop_path, linearly) and a key stream for their masks;
  `inputs` gives the scanned inputs of layers start..stop-1."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    self.rates = tuple(drop_path_rates(cfg))
    self.rng = rngs['dropout'].fork() if cfg.drop_path > 0 else None

  def inputs(self, deterministic: bool):
    """(rates [depth], keys [depth]) in training with drop_path > 0, else None."""
    if deterministic or self.rng is None:
      return None
    return jnp.asarray(self.rates, jnp.float32), jax.random.split(self.rng(), len(self.rates))


def drop_path_of(layer_inputs):
  return layers.NO_DROP_PATH if layer_inputs is None else layers.DropPath(*layer_inputs)


def select(inputs, start, stop):
  return None if inputs is None else jax.tree.map(lambda x: x[start:stop], inputs)


# Sample axes of the drop paths, as the reference's layouts have them: CLIP tokens are
# [N, B*S, D] everywhere (axis 1 of ours), VideoMAE's [B, N, D]; AST tokens are [B, N, D] in
# its attention and MLP, [N, B, D] inside the exchanges.
SPATIAL_AXIS, TEMPORAL_AXIS, AUDIO_AXIS, AUDIO_CROSS_AXIS = 1, 0, 0, 1


def apply_heads(model, pre_head, deterministic):
  """{head: logits}: each classifier on its pre-head feature after the head dropout."""
  def drop(x):
    return model.head_dropout(x, deterministic=deterministic)
  if model.compositional:
    return {'verb': model.verb_head(drop(pre_head['verb'])),
            'noun': model.noun_head(drop(pre_head['noun']))}
  return {'label': model.head(drop(pre_head['label']))}


def mlp_step(block, adapter, drop_path, sample_axis, x):
  """The expert's MLP residual plus its MLP adapter (no skip, scaled 0.5, drop-pathed)."""
  h = block.pre_mlp(x)
  return x + block.mlp(h) + drop_path(MLP_ADAPTER_SCALE * adapter(h), sample_axis=sample_axis)


class CastLayer(nnx.Module):
  """Adapters and the S↔T exchange of one CAST block."""

  def __init__(self, cfg, *, dtype, rngs: nnx.Rngs):
    width, hidden = cfg.width, cfg.adapter_dim
    self.spatial_adapter = layers.Adapter(width, hidden, skip=True, dtype=dtype, rngs=rngs)
    self.temporal_adapter = layers.Adapter(width, hidden, skip=True, dtype=dtype, rngs=rngs)
    self.space_time = bca.SpaceTimeExchange(cfg, dtype=dtype, rngs=rngs)
    self.spatial_mlp_adapter = layers.Adapter(width, hidden, skip=False, dtype=dtype, rngs=rngs)
    self.temporal_mlp_adapter = layers.Adapter(width, hidden, skip=False, dtype=dtype, rngs=rngs)

  def __call__(self, spatial_block, temporal_block, spatial, temporal, drop_path):
    spatial = spatial + self.spatial_adapter(spatial_block.attend(spatial))
    temporal = temporal + self.temporal_adapter(temporal_block.attend(temporal))

    spatial_cross, temporal_cross = self.space_time(spatial, temporal)
    spatial = spatial + drop_path(spatial_cross, sample_axis=SPATIAL_AXIS)
    temporal = temporal + drop_path(temporal_cross, sample_axis=TEMPORAL_AXIS)

    spatial = mlp_step(spatial_block, self.spatial_mlp_adapter, drop_path, SPATIAL_AXIS, spatial)
    temporal = mlp_step(temporal_block, self.temporal_mlp_adapter, drop_path, TEMPORAL_AXIS,
                        temporal)
    return spatial, temporal


class CAST(nnx.Module):
  """CAST: CLIP + VideoMAE with B-CA in every layer.

  Fused head: head(dropout(L_s(spatial) + L_t(temporal))), the last adapters without skip.
  Compositional (EK100): verb from the temporal feature, noun from the spatial one.
  """

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    dtype = dtype_of(cfg)
    self.remat = cfg.remat
    self.unroll = layers.resolve_layer_loop(cfg.layer_loop) == 'unroll'  # layers.run_stacks
    self.compositional = cfg.name == 'cast_compositional'
    self.spatial = SpatialExpert(cfg, dtype=dtype, rngs=rngs)
    self.temporal = TemporalExpert(cfg, dtype=dtype, rngs=rngs)
    self.layers = layers.Stack([CastLayer(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.depth)])
    self.drop_path = DropPathRates(cfg, rngs=rngs)
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

  EXPERTS = ('spatial', 'temporal')  # the order `features` returns them in

  def features(self, video, *, deterministic=True):
    """Pooled (spatial, temporal) features after all layers."""
    def body(layer, spatial_block, temporal_block, tokens, layer_inputs):
      return layer(spatial_block, temporal_block, *tokens, drop_path_of(layer_inputs))

    spatial, temporal = layers.run_stacks(
        body, (self.spatial.embed(video), self.temporal.embed(video)),
        [self.layers.layer_params(), self.spatial.blocks.layer_params(),
         self.temporal.blocks.layer_params()],
        self.drop_path.inputs(deterministic), remat=self.remat, unroll=self.unroll)
    return self.spatial.pool(spatial), self.temporal.pool(temporal)

  def pre_head(self, spatial, temporal):
    """{head: the feature it reads, before its dropout} from the pooled features."""
    if self.compositional:
      return {'verb': temporal, 'noun': spatial}
    return {'label': self.spatial_last_adapter(spatial) + self.temporal_last_adapter(temporal)}

  def __call__(self, video, audio=None, audio_times=None, *, deterministic=True):
    del audio, audio_times  # CAST is video-only.
    pre_head = self.pre_head(*self.features(video, deterministic=deterministic))
    return apply_heads(self, pre_head, deterministic)


def encode_times(time_encoding, audio_times):
  if time_encoding is None:
    return None, None
  return time_encoding(audio_times)


class CavaLayer(nnx.Module):
  """Adapters and the A↔S exchange of one CAVA block."""

  def __init__(self, cfg, *, dtype, rngs: nnx.Rngs):
    width, hidden = cfg.width, cfg.adapter_dim
    self.audio_adapter = layers.Adapter(width, hidden, skip=True, dtype=dtype, rngs=rngs)
    self.spatial_adapter = layers.Adapter(width, hidden, skip=True, dtype=dtype, rngs=rngs)
    self.audio_spatial = bca.GlobalExchange(cfg, visual_prefix=1, dtype=dtype, rngs=rngs)
    self.audio_mlp_adapter = layers.Adapter(width, hidden, skip=False, dtype=dtype, rngs=rngs)
    self.spatial_mlp_adapter = layers.Adapter(width, hidden, skip=False, dtype=dtype, rngs=rngs)

  def __call__(self, audio_block, spatial_block, audio, spatial, audio_time, video_time,
               drop_path):
    audio = audio + drop_path(self.audio_adapter(audio_block.attend(audio)), sample_axis=AUDIO_AXIS)
    spatial = spatial + self.spatial_adapter(spatial_block.attend(spatial))

    audio_cross, spatial_cross = self.audio_spatial(audio, spatial, audio_time, video_time)
    audio = audio + drop_path(audio_cross, sample_axis=AUDIO_CROSS_AXIS)
    spatial = spatial + drop_path(spatial_cross, sample_axis=SPATIAL_AXIS)

    audio = mlp_step(audio_block, self.audio_mlp_adapter, drop_path, AUDIO_AXIS, audio)
    spatial = mlp_step(spatial_block, self.spatial_mlp_adapter, drop_path, SPATIAL_AXIS, spatial)
    return audio, spatial


class CAVA(nnx.Module):
  """CAVA: AST + CLIP with global A↔S B-CA in every layer and time encodings.

  head(dropout(L_a(audio) + L_s(spatial))), the last adapters WITH skip.
  Compositional (the authors' compo_single_ast_clip): verb and noun heads both read that fused
  feature, each through its own dropout.
  """

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    dtype = dtype_of(cfg)
    self.remat = cfg.remat
    self.unroll = layers.resolve_layer_loop(cfg.layer_loop) == 'unroll'  # layers.run_stacks
    self.compositional = cfg.name == 'cava_compositional'
    self.audio = AudioExpert(cfg, dtype=dtype, rngs=rngs)
    # The reference builds CAVA's CLIP ln_post with the VideoMAE-style eps.
    self.spatial = SpatialExpert(cfg, dtype=dtype, rngs=rngs, ln_post_eps=1e-6)
    self.time_encoding = (bca.TimeEncoding(cfg, dtype=dtype, rngs=rngs)
                          if cfg.time_encoding else None)
    self.layers = layers.Stack([CavaLayer(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.depth)])
    self.drop_path = DropPathRates(cfg, rngs=rngs)
    # Present (and trained) in the reference's state_dict but never used by its forward;
    # kept so checkpoints move both ways with strict loading.
    self.audio_ln_post = layers.layer_norm(cfg.width, eps=1e-5, dtype=dtype, rngs=rngs)
    self.audio_last_adapter = layers.Adapter(
        cfg.width, cfg.adapter_dim, skip=True, dtype=dtype, rngs=rngs)
    self.spatial_last_adapter = layers.Adapter(
        cfg.width, cfg.adapter_dim, skip=True, dtype=dtype, rngs=rngs)
    self.head_dropout = nnx.Dropout(cfg.head_dropout, rngs=rngs)
    if self.compositional:
      self.verb_head = layers.dense(cfg.width, cfg.num_verbs, dtype=dtype, rngs=rngs)
      self.noun_head = layers.dense(cfg.width, cfg.num_nouns, dtype=dtype, rngs=rngs)
    else:
      self.head = layers.dense(cfg.width, cfg.num_classes, dtype=dtype, rngs=rngs)

  EXPERTS = ('audio', 'spatial')  # the order `features` returns them in

  def features(self, video, audio, audio_times, *, deterministic=True):
    audio_time, video_time = encode_times(self.time_encoding, audio_times)

    def body(layer, audio_block, spatial_block, tokens, layer_inputs):
      return layer(audio_block, spatial_block, *tokens, audio_time, video_time,
                   drop_path_of(layer_inputs))

    audio_tokens, spatial = layers.run_stacks(
        body, (self.audio.embed(audio), self.spatial.embed(video)),
        [self.layers.layer_params(), self.audio.blocks.layer_params(),
         self.spatial.blocks.layer_params()],
        self.drop_path.inputs(deterministic), remat=self.remat, unroll=self.unroll)
    return self.audio.pool(audio_tokens), self.spatial.pool(spatial)

  def pre_head(self, audio_feature, spatial):
    """{head: the feature it reads, before its dropout} from the pooled features."""
    fused = self.audio_last_adapter(audio_feature) + self.spatial_last_adapter(spatial)
    return {'verb': fused, 'noun': fused} if self.compositional else {'label': fused}

  def __call__(self, video, audio, audio_times, *, deterministic=True):
    pre_head = self.pre_head(*self.features(video, audio, audio_times,
                                            deterministic=deterministic))
    return apply_heads(self, pre_head, deterministic)


class Ca2stLayer(nnx.Module):
  """Adapters and exchanges of one CA²ST block: S↔T in every layer, A↔S and A↔T from layer
  `audio_exchange_start` on, applied in sequence ('seq') or averaged ('add')."""

  def __init__(self, cfg, index: int, *, dtype, rngs: nnx.Rngs):
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

  def exchange(self, spatial, temporal, audio, audio_time, video_time, drop_path):
    drop_spatial = lambda x: drop_path(x, sample_axis=SPATIAL_AXIS)
    drop_temporal = lambda x: drop_path(x, sample_axis=TEMPORAL_AXIS)
    drop_audio = lambda x: drop_path(x, sample_axis=AUDIO_CROSS_AXIS)
    spatial_st, temporal_st = self.space_time(spatial, temporal)
    spatial_st = drop_spatial(spatial_st)
    temporal_st = drop_temporal(temporal_st)
    if self.audio_spatial is None:
      return spatial + spatial_st, temporal + temporal_st, audio
    if self.method == 'add':
      audio_as, spatial_as = self.audio_spatial(audio, spatial, audio_time, video_time)
      audio_at, temporal_at = self.audio_temporal(audio, temporal, audio_time, video_time)
      spatial = spatial + (spatial_st + drop_spatial(spatial_as)) / 2
      temporal = temporal + (temporal_st + drop_temporal(temporal_at)) / 2
      audio = audio + (drop_audio(audio_as) + drop_audio(audio_at)) / 2
      return spatial, temporal, audio
    spatial, temporal = spatial + spatial_st, temporal + temporal_st
    audio_as, spatial_as = self.audio_spatial(audio, spatial, audio_time, video_time)
    spatial = spatial + drop_spatial(spatial_as)
    audio = audio + drop_audio(audio_as)
    audio_at, temporal_at = self.audio_temporal(audio, temporal, audio_time, video_time)
    temporal = temporal + drop_temporal(temporal_at)
    audio = audio + drop_audio(audio_at)
    return spatial, temporal, audio

  def __call__(self, spatial_block, temporal_block, audio_block, spatial, temporal, audio,
               audio_time, video_time, drop_path):
    spatial = spatial + self.spatial_adapter(spatial_block.attend(spatial))
    temporal = temporal + self.temporal_adapter(temporal_block.attend(temporal))
    audio = audio + drop_path(self.audio_adapter(audio_block.attend(audio)), sample_axis=AUDIO_AXIS)

    spatial, temporal, audio = self.exchange(
        spatial, temporal, audio, audio_time, video_time, drop_path)

    spatial = mlp_step(spatial_block, self.spatial_mlp_adapter, drop_path, SPATIAL_AXIS, spatial)
    temporal = mlp_step(temporal_block, self.temporal_mlp_adapter, drop_path, TEMPORAL_AXIS,
                        temporal)
    audio = mlp_step(audio_block, self.audio_mlp_adapter, drop_path, AUDIO_AXIS, audio)
    return spatial, temporal, audio


class CA2ST(nnx.Module):
  """CA²ST: CLIP + VideoMAE + AST. head(dropout(L_s(spatial) + L_t(temporal) + L_a(audio))):
  the visual last adapters without skip and zero fc2; the audio one is c_fc, QuickGELU, c_proj
  with a random init.

  Compositional (the authors' compo_cast_single_ast_Bsquare): one audio last adapter per head,
  noun = noun_head(dropout(L_s(spatial) + L_an(audio))), verb = verb_head(dropout(L_t(temporal)
  + L_av(audio))).
  """

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    dtype = dtype_of(cfg)
    self.remat = cfg.remat
    self.unroll = layers.resolve_layer_loop(cfg.layer_loop) == 'unroll'  # layers.run_stacks
    self.compositional = cfg.name == 'ca2st_compositional'
    self.spatial = SpatialExpert(cfg, dtype=dtype, rngs=rngs)
    self.temporal = TemporalExpert(cfg, dtype=dtype, rngs=rngs)
    self.audio = AudioExpert(cfg, dtype=dtype, rngs=rngs)
    self.time_encoding = (bca.TimeEncoding(cfg, dtype=dtype, rngs=rngs)
                          if cfg.time_encoding else None)
    # Two scanned groups of different structure; a group without layers is None.
    stack = lambda indices: layers.Stack(
        [Ca2stLayer(cfg, i, dtype=dtype, rngs=rngs) for i in indices]) if indices else None
    self.audio_exchange_start = min(cfg.audio_exchange_start, cfg.depth)
    self.layers = stack(range(self.audio_exchange_start))
    self.audio_exchange_layers = stack(range(self.audio_exchange_start, cfg.depth))
    self.drop_path = DropPathRates(cfg, rngs=rngs)
    # In the reference's state_dict (trained) but unused by its forward; kept for strict loading.
    self.audio_ln_post = layers.layer_norm(cfg.width, eps=1e-5, dtype=dtype, rngs=rngs)
    self.spatial_last_adapter = layers.Adapter(
        cfg.width, cfg.adapter_dim, skip=False, dtype=dtype, rngs=rngs)
    self.temporal_last_adapter = layers.Adapter(
        cfg.width, cfg.adapter_dim, skip=False, dtype=dtype, rngs=rngs)
    audio_adapter = lambda: layers.Mlp(
        cfg.width, cfg.adapter_dim, act=layers.quick_gelu, dtype=dtype, rngs=rngs)
    # Adapters, dropout, heads in this order: the fused model's init draws stay as they were.
    if self.compositional:
      self.audio_verb_last_adapter = audio_adapter()
      self.audio_noun_last_adapter = audio_adapter()
    else:
      self.audio_last_adapter = audio_adapter()
    self.head_dropout = nnx.Dropout(cfg.head_dropout, rngs=rngs)
    if self.compositional:
      self.verb_head = layers.dense(cfg.width, cfg.num_verbs, dtype=dtype, rngs=rngs)
      self.noun_head = layers.dense(cfg.width, cfg.num_nouns, dtype=dtype, rngs=rngs)
    else:
      self.head = layers.dense(cfg.width, cfg.num_classes, dtype=dtype, rngs=rngs)

  EXPERTS = ('spatial', 'temporal', 'audio')  # the order `features` returns them in

  def features(self, video, audio, audio_times, *, deterministic=True):
    audio_time, video_time = encode_times(self.time_encoding, audio_times)
    spatial, temporal = self.spatial.embed(video), self.temporal.embed(video)
    tokens = (spatial, temporal, self.audio.embed(audio))
    drop_path_inputs = self.drop_path.inputs(deterministic)

    def body(layer, spatial_block, temporal_block, audio_block, tokens, layer_inputs):
      return layer(spatial_block, temporal_block, audio_block, *tokens, audio_time, video_time,
                   drop_path_of(layer_inputs))

    start, depth = self.audio_exchange_start, len(self.spatial.blocks)
    for group, first, stop in ((self.layers, 0, start),
                               (self.audio_exchange_layers, start, depth)):
      if group is None:
        continue
      experts = [expert.blocks.layer_params(first, stop)
                 for expert in (self.spatial, self.temporal, self.audio)]
      tokens = layers.run_stacks(body, tokens, [group.layer_params(), *experts],
                                 select(drop_path_inputs, first, stop), remat=self.remat,
                                 unroll=self.unroll)
    spatial, temporal, audio_tokens = tokens
    return self.spatial.pool(spatial), self.temporal.pool(temporal), self.audio.pool(audio_tokens)

  def pre_head(self, spatial, temporal, audio_feature):
    """{head: the feature it reads, before its dropout} from the pooled features."""
    if self.compositional:
      return {
          'verb': (self.temporal_last_adapter(temporal)
                   + self.audio_verb_last_adapter(audio_feature)),
          'noun': (self.spatial_last_adapter(spatial)
                   + self.audio_noun_last_adapter(audio_feature)),
      }
    return {'label': self.spatial_last_adapter(spatial) + self.temporal_last_adapter(temporal)
                     + self.audio_last_adapter(audio_feature)}

  def __call__(self, video, audio, audio_times, *, deterministic=True):
    pre_head = self.pre_head(*self.features(video, audio, audio_times,
                                            deterministic=deterministic))
    return apply_heads(self, pre_head, deterministic)
