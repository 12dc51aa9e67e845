"""Model construction, the batch it reads, the trainable/frozen partition and layer ids for layer
decay."""
import jax
import jax.numpy as jnp
from flax import nnx

from ca2st_jax.models import fused
from ca2st_jax.models import layers
from ca2st_jax.models.fused import CA2ST, CAST, CAVA

# Each model also comes compositional (EK100: verb and noun heads instead of `head`).
MODELS = {'cast': CAST, 'cast_compositional': CAST, 'cava': CAVA, 'cava_compositional': CAVA,
          'ca2st': CA2ST, 'ca2st_compositional': CA2ST}
NAMES = tuple(MODELS)
EXPERTS = ('spatial', 'temporal', 'audio')
# The parts of the experts that the reference trains; the rest of every expert is frozen.
TRAINED_EXPERT_PARTS = {('spatial', 'ln_post'), ('temporal', 'fc_norm')}


def family(name: str) -> str:
  """'cast', 'cava' or 'ca2st': the model named `name` without its compositional heads."""
  return name.removesuffix('_compositional')


def is_compositional(name: str) -> bool:
  return name.endswith('_compositional')


def batch_spec(cfg, batch: int, *, image_size: int | None = None, labels: bool = False) -> dict:
  """{name: jax.ShapeDtypeStruct} of a batch as the input pipeline yields it (ca2st_jax.data.pipeline,
  "Batch layout"): uint8 video [B, T, H, W, 3]; for audio models the log-mel spectrogram [B, L, M]
  and audio_times [B, slots + 1, 2] (row 0 the audio crop, then each video slot's [start, end]);
  with `labels` the int32 targets ('label', or 'verb' and 'noun').

  image_size: the frames' size when it is not the model's (a data config's crop_size)."""
  size = image_size or cfg.image_size
  spec = lambda shape, dtype: jax.ShapeDtypeStruct((batch, *shape), dtype)
  out = {'video': spec((cfg.num_frames, size, size, 3), jnp.uint8)}
  if family(cfg.name) in ('cava', 'ca2st'):
    out['audio'] = spec((cfg.spectrogram_length, cfg.num_mel_bins), jnp.float32)
    out['audio_times'] = spec((cfg.num_frames // cfg.tubelet_size + 1, 2), jnp.float32)
  if labels:
    names = ('verb', 'noun') if is_compositional(cfg.name) else ('label',)
    out.update({name: spec((), jnp.int32) for name in names})
  return out


def check_config(cfg):
  """Raises ValueError naming the config.model field that is wrong."""
  def fail(field, why):
    raise ValueError(f'config.model.{field}={cfg.get(field)!r}: {why}')

  if cfg.name not in NAMES:
    fail('name', f'unknown model, expected one of {NAMES}')
  if cfg.dtype not in ('float32', 'bfloat16'):
    fail('dtype', "expected 'float32' or 'bfloat16'")
  if cfg.attention not in layers.ATTENTION_IMPLEMENTATIONS:
    fail('attention', f'expected one of {layers.ATTENTION_IMPLEMENTATIONS}')
  if cfg.layer_loop not in layers.LAYER_LOOPS:
    fail('layer_loop', f'expected one of {layers.LAYER_LOOPS}')
  if cfg.remat not in ('none', 'full', 'dots'):
    fail('remat', "expected 'none', 'full' or 'dots'")
  for field in ('width', 'depth', 'num_heads', 'mlp_dim', 'adapter_dim', 'bottleneck_dim'):
    if int(cfg[field]) <= 0:
      fail(field, 'must be positive')
  if cfg.width % cfg.num_heads:
    fail('num_heads', f'width {cfg.width} is not divisible by it')
  if cfg.bottleneck_dim % cfg.num_heads:
    fail('bottleneck_dim', f'not divisible by num_heads {cfg.num_heads}')
  if cfg.image_size % cfg.patch_size:
    fail('image_size', f'not divisible by patch_size {cfg.patch_size}')
  if cfg.num_frames % cfg.tubelet_size:
    fail('num_frames', f'not divisible by tubelet_size {cfg.tubelet_size}')
  if cfg.tubelet_size != 2:
    fail('tubelet_size', 'CLIP frame k pairs with tubelet slot k only for tubelets of 2 frames')
  if not 0 <= cfg.drop_path < 1:
    fail('drop_path', 'must be in [0, 1)')
  if family(cfg.name) in ('cava', 'ca2st'):
    if cfg.spectrogram_length < cfg.audio_patch_size:
      fail('spectrogram_length', f'shorter than audio_patch_size {cfg.audio_patch_size}')
    if cfg.num_mel_bins < cfg.audio_patch_size:
      fail('num_mel_bins', f'smaller than audio_patch_size {cfg.audio_patch_size}')


def build(cfg, *, rngs: nnx.Rngs):
  """The model named by config.model.name, freshly initialised. Parameters are
  float32, the frozen ones in the compute dtype when config.model.store_frozen_in_compute_dtype."""
  check_config(cfg)
  model = MODELS[cfg.name](cfg, rngs=rngs)
  if cfg.get('store_frozen_in_compute_dtype', False):
    store_frozen_in(model, fused.dtype_of(cfg))
  return model


def store_frozen_in(model, dtype) -> None:
  """Casts the frozen parameters (the experts but for ln_post / fc_norm) to `dtype`, e.g. the
  bf16 compute dtype: they get no gradients, so fp32 copies only cost memory and a cast at every
  use. Trainable parameters stay float32. Checkpoint import casts into the stored dtype, export
  back to float32."""
  frozen = nnx.state(model, FROZEN)
  nnx.update(model, jax.tree.map(lambda x: x.astype(dtype), frozen))


def is_trainable(path) -> bool:
  """True for the parameters the reference trains: everything outside the experts, plus
  CLIP's ln_post and VideoMAE's fc_norm."""
  path = tuple(str(p) for p in path)
  if path[0] not in EXPERTS:
    return True
  return path[:2] in TRAINED_EXPERT_PARTS


TRAINABLE = nnx.All(nnx.Param, lambda path, _: is_trainable(path))
FROZEN = nnx.All(nnx.Param, nnx.Not(lambda path, _: is_trainable(path)))


def layer_id(path, depth: int) -> int | slice:
  """Layer index for layer decay, as the reference's get_layer_id_for_vit: 0 for the stems,
  i + 1 for anything of block i (adapters and B-CA included), depth + 1 for the rest.

  A parameter stacked over layers (`*/blocks/*`, `layers/*`, `audio_exchange_layers/*`) gets a
  slice of ids along its leading axis: slice(1, None) when its slice k is block k, or
  slice(None, depth + 1) when it holds the last layers (CA²ST's audio_exchange_layers), its
  last slice being block depth - 1.
  """
  path = tuple(str(p) for p in path)
  if path[0] == 'layers' or (path[0] in EXPERTS and path[1] == 'blocks'):
    return slice(1, None)
  if path[0] == 'audio_exchange_layers':
    return slice(None, depth + 1)
  if path[0] in EXPERTS and path[1] in ('patch_embed', 'class_embedding', 'positional_embedding',
                                        'cls_token', 'dist_token', 'pos_embed'):
    return 0
  return depth + 1
