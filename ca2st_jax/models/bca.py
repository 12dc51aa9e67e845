"""Bottleneck Cross-Attention (B-CA): the exchange between two experts inside a block.

Both sides are projected down to the bottleneck width and normalised; each side then
attends to the other; the result goes through GELU and an up-projection that starts at zero,
so an untrained exchange adds nothing.

SpaceTimeExchange is CAST's windowed form: the spatial tokens of a position attend
over the 8 time slots of the temporal tokens at that position, and the temporal tokens of a
slot attend over the patches of the paired CLIP frame.
"""
import math

import jax
import jax.numpy as jnp
from flax import nnx

from ca2st_jax.models import layers
from ca2st_jax.models.audio import grid_shape as audio_grid_shape

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
               implementation: str, dtype, rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.implementation = implementation
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
    """query_add / key_add: further additive encodings of the inputs (the global exchanges'
    time encodings and learned space/time positions)."""
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
    y = layers.attention(heads(q, lq), heads(k, lk), heads(v, lk), self.implementation)
    return self.out(y.reshape(*lead, lq, dim))


class SpaceTimeExchange(nnx.Module):
  """CAST's B-CA between the spatial (CLIP) and temporal (VideoMAE) experts."""

  def __init__(self, cfg, *, dtype, rngs: nnx.Rngs):
    width, dim, heads = cfg.width, cfg.bottleneck_dim, cfg.num_heads
    implementation = layers.resolve_attention(cfg.attention, dtype)
    self.num_slots = cfg.num_frames // cfg.tubelet_size
    patches = (cfg.image_size // cfg.patch_size) ** 2
    self.spatial_down = layers.dense(width, dim, dtype=dtype, rngs=rngs)
    self.temporal_down = layers.dense(width, dim, dtype=dtype, rngs=rngs)
    self.spatial_norm = layers.layer_norm(dim, eps=BOTTLENECK_EPS, dtype=dtype, rngs=rngs)
    self.temporal_norm = layers.layer_norm(dim, eps=BOTTLENECK_EPS, dtype=dtype, rngs=rngs)
    # T2S: a spatial patch token attends over the time slots at its position.
    self.spatial_from_temporal = CrossAttention(
        dim, heads, query_positions=self.num_slots, key_positions=self.num_slots,
        implementation=implementation, dtype=dtype, rngs=rngs)
    # S2T: a temporal token attends over the patches of its slot's CLIP frame.
    self.temporal_from_spatial = CrossAttention(
        dim, heads, query_positions=patches, key_positions=patches,
        implementation=implementation, dtype=dtype, rngs=rngs)
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


class TimeMlp(nnx.Module):
  """Maps a token's [start, end] time in seconds to a bottleneck-width encoding (CAVA/CA²ST):
  Linear(2, d), ReLU, 2 x [Linear(d, d), ReLU], LayerNorm (eps 1e-5)."""

  def __init__(self, dim, *, dtype, rngs: nnx.Rngs):
    self.fc1 = layers.dense(2, dim, dtype=dtype, rngs=rngs)
    self.fc2 = layers.dense(dim, dim, dtype=dtype, rngs=rngs)
    self.fc3 = layers.dense(dim, dim, dtype=dtype, rngs=rngs)
    self.norm = layers.layer_norm(dim, eps=1e-5, dtype=dtype, rngs=rngs)

  def __call__(self, times):
    x = jax.nn.relu(self.fc1(times))
    x = jax.nn.relu(self.fc2(x))
    return self.norm(jax.nn.relu(self.fc3(x)))


def audio_token_segments(slots, freq_patches, time_patches):
  """Which of the clip's time segments each audio patch token is encoded with.

  The reference splits the audio crop into `slots` equal segments, stretches them over the
  time patches (each repeated time_patches // slots + 1 times), then lays that out time-major
  while the AST tokens are frequency-major. Reproduced as is: token j gets segment
  (j // freq_patches) // repeats.
  """
  repeats = time_patches // slots + 1
  return (jnp.arange(freq_patches * time_patches) // freq_patches) // repeats


def segment_times(audio_span, slots):
  """[B, 2] start/end seconds -> [B, slots, 2] equal consecutive segments."""
  edges = jnp.linspace(0.0, 1.0, slots + 1)
  start, end = audio_span[:, :1], audio_span[:, 1:]
  points = start + (end - start) * edges  # [B, slots + 1]
  return jnp.stack([points[:, :-1], points[:, 1:]], axis=-1)


def _plus(a, b):
  return b if a is None else a + b


class SpaceTimePositions(nnx.Module):
  """Learned space and time positions of one side of a global exchange (the reference's
  use_stpos): [slots * patches, d], time-major."""

  def __init__(self, slots, patches, dim, num_heads, *, rngs: nnx.Rngs):
    self.space = _positions(rngs, patches, dim, num_heads)
    self.time = _positions(rngs, slots, dim, num_heads)

  def __call__(self):
    return (self.time[...][:, None] + self.space[...][None]).reshape(-1, self.space.shape[-1])


class TimeEncoding(nnx.Module):
  """Time encodings of the audio↔visual exchanges, computed once per forward.

  audio_times [B, 1 + S, 2]: row 0 the audio crop's [start, end] seconds, rows 1.. each time
  slot's. The audio crop is cut into S equal segments for the audio tokens. With
  split_time_mlp the audio and video rows have their own MLP, else `video_mlp` serves both.
  """

  def __init__(self, cfg, *, dtype, rngs: nnx.Rngs):
    self.audio_grid = audio_grid_shape(cfg)
    self.video_mlp = TimeMlp(cfg.bottleneck_dim, dtype=dtype, rngs=rngs)
    self.audio_mlp = (TimeMlp(cfg.bottleneck_dim, dtype=dtype, rngs=rngs)
                      if cfg.split_time_mlp else None)

  def __call__(self, audio_times):
    """-> (audio [B, Na, d], video [B, S, d])."""
    slots = audio_times.shape[1] - 1
    audio_times = audio_times.astype(jnp.float32)
    audio_mlp = self.audio_mlp if self.audio_mlp is not None else self.video_mlp
    per_segment = audio_mlp(segment_times(audio_times[:, 0], slots))  # [B, S, d]
    audio = per_segment[:, audio_token_segments(slots, *self.audio_grid)]
    return audio, self.video_mlp(audio_times[:, 1:])


class GlobalExchange(nnx.Module):
  """B-CA between the audio expert and a visual expert, with global (unwindowed) attention.

  Audio patch tokens attend to all visual patch tokens of the clip and vice versa; the
  audio class/distillation tokens and the CLIP class tokens pass through. Time encodings
  (per audio token and per visual time slot) are added to both inputs of each attention.
  Names follow the audio side: in CAVA the reference calls audio "s" and CLIP "t".
  """

  def __init__(self, cfg, visual_prefix: int, *, dtype, rngs: nnx.Rngs):
    width, dim, heads = cfg.width, cfg.bottleneck_dim, cfg.num_heads
    implementation = layers.resolve_attention(cfg.attention, dtype)
    self.visual_prefix = visual_prefix
    self.audio_down = layers.dense(width, dim, dtype=dtype, rngs=rngs)
    self.visual_down = layers.dense(width, dim, dtype=dtype, rngs=rngs)
    self.audio_norm = layers.layer_norm(dim, eps=BOTTLENECK_EPS, dtype=dtype, rngs=rngs)
    self.visual_norm = layers.layer_norm(dim, eps=BOTTLENECK_EPS, dtype=dtype, rngs=rngs)
    self.audio_from_visual = CrossAttention(dim, heads, implementation=implementation,
                                            dtype=dtype, rngs=rngs)
    self.visual_from_audio = CrossAttention(dim, heads, implementation=implementation,
                                            dtype=dtype, rngs=rngs)
    if cfg.learned_positions:
      # use_stpos: each direction has its own learned space and time positions for both sides.
      slots = cfg.num_frames // cfg.tubelet_size
      patches = (cfg.image_size // cfg.patch_size) ** 2
      audio_tokens = math.prod(audio_grid_shape(cfg))
      make = lambda n_slots, n_patches: SpaceTimePositions(n_slots, n_patches, dim, heads, rngs=rngs)
      self.audio_from_visual_positions = nnx.List([make(1, audio_tokens), make(slots, patches)])
      self.visual_from_audio_positions = nnx.List([make(1, audio_tokens), make(slots, patches)])
    else:
      self.audio_from_visual_positions = self.visual_from_audio_positions = None
    self.audio_up = layers.dense(dim, width, dtype=dtype, rngs=rngs, zero=True)
    self.visual_up = layers.dense(dim, width, dtype=dtype, rngs=rngs, zero=True)

  def __call__(self, audio, visual, audio_time, visual_time):
    """audio [B, 2+Na, W]; visual [G, prefix+L, W] with G = B (VideoMAE) or B*S (CLIP frames);
    audio_time [B, Na, d] and visual_time [B, S, d], or None without time encoding.
    Returns the two updates (no residual)."""
    batch = audio.shape[0]
    audio_low = self.audio_norm(self.audio_down(audio))
    visual_low = self.visual_norm(self.visual_down(visual))
    dim = audio_low.shape[-1]
    audio_patches = audio_low[:, 2:]
    prefix = self.visual_prefix
    visual_patches = visual_low[:, prefix:].reshape(batch, -1, dim)  # time-major (slot, patch)
    if visual_time is not None:
      per_slot = visual_patches.shape[1] // visual_time.shape[1]
      visual_time = jnp.repeat(visual_time, per_slot, axis=1)

    def additions(positions):
      audio_add, visual_add = audio_time, visual_time
      if positions is not None:
        audio_add = _plus(audio_add, positions[0]())
        visual_add = _plus(visual_add, positions[1]())
      return audio_add, visual_add

    audio_add, visual_add = additions(self.audio_from_visual_positions)
    audio_cross = self.audio_from_visual(
        audio_patches, visual_patches, query_add=audio_add, key_add=visual_add)
    audio_add, visual_add = additions(self.visual_from_audio_positions)
    visual_cross = self.visual_from_audio(
        visual_patches, audio_patches, query_add=visual_add, key_add=audio_add)
    audio_cross = jnp.concatenate([audio_low[:, :2], audio_cross], axis=1)
    visual_cross = jnp.concatenate(
        [visual_low[:, :prefix], visual_cross.reshape(visual_low.shape[0], -1, dim)], axis=1)
    return (self.audio_up(layers.gelu(audio_cross)),
            self.visual_up(layers.gelu(visual_cross)))
