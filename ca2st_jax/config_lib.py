"""Shared pieces of the configs in configs/: the model and data sections, the training recipes,
the :tiny variant and the loader.

A paper config is a data set file, configs/<data set>.py, called with a model:
--config=configs/vggsound.py:cava, or :cava,tiny for the same code at CPU-test size. Each
configs/<model>_<data set>.py (configs/cava_vggsound.py[:tiny]) names the same config. Train and
evaluate from the experts' public checkpoints (no downloads at run time), passing those the model
has (CAST: clip and videomae; CAVA: clip and ast; CA²ST: all three):
  python -m ca2st_jax.main --config=configs/ca2st_vggsound.py --workdir=$WORKDIR \\
      --config.init.clip=ViT-B-16.pt --config.init.videomae=videomae_vit_b_k400_ft.pth \\
      --config.init.ast=audioset_10_10_0.4593.pth
Model summary (parameters, GMACs per view):
  python -m ca2st_jax.tools.summary --config=configs/ca2st_vggsound.py
"""
import importlib.util
import os

import ml_collections

VARIANTS = ('', 'tiny')

# The labels a batch may carry (one head, or EK100's verb and noun heads) and the config.model
# field that gives each head's number of classes.
HEAD_CLASSES = {'label': 'num_classes', 'verb': 'num_verbs', 'noun': 'num_nouns'}
LABEL_KEYS = tuple(HEAD_CLASSES)


def model_config(name: str, **overrides) -> ml_collections.ConfigDict:
  """ViT-B/16 experts with the reference's defaults."""
  model = ml_collections.ConfigDict(dict(
      name=name,
      width=768, depth=12, num_heads=12, mlp_dim=3072,
      adapter_dim=192,          # in-block, MLP and last adapters: width / 4
      bottleneck_dim=384,       # B-CA width: width / down_ratio 2
      image_size=224, patch_size=16, num_frames=16, tubelet_size=2,
      num_mel_bins=128, spectrogram_length=1024, audio_patch_size=16, audio_patch_stride=10,
      num_classes=400, num_verbs=97, num_nouns=300,
      drop_path=0.2, head_dropout=0.0,
      dtype='bfloat16',
      attention='auto',         # 'auto' | 'xla' | 'cudnn' | 'tpu_flash' (models.layers.resolve_attention)
      store_frozen_in_compute_dtype=True,  # frozen expert weights in `dtype` (bf16), not fp32
      remat='none',             # 'none' | 'full' | 'dots': recompute each layer in the backward pass
      layer_loop='auto',        # 'auto' | 'scan' | 'unroll' (models.layers.resolve_layer_loop)
      # CAVA / CA²ST exchange switches, reference defaults.
      audio_exchange_start=9,   # CA: first layer with the audio pairs (0 = all layers)
      exchange_method='seq',    # 'seq': S&T, then A&S, then A&T; 'add': their mean
      share_exchange_projections=True,  # bcast_share: A&S/A&T reuse S&T down/up projections
      time_encoding=True,       # [start, end] time MLP added inside the audio cross-attention
      split_time_mlp=True,      # separate time MLPs for audio and video tokens
      learned_positions=False,  # use_stpos: learned space/time positions in the audio exchanges
  ))
  model.update(overrides)
  return model


# config.data.num_workers: as many Grain workers as this process may run on cores, less one for
# the training loop (at least one, at most pipeline.MAX_AUTO_WORKERS; pipeline.resolve_num_workers).
AUTO_WORKERS = -1

# Every config.data field and its default: the one place they are written.
# The pipeline reads them as they are (ca2st_jax.data.pipeline.clip_options and Source).
DATA_DEFAULTS = dict(
    name='synthetic_av',      # a TFDS builder of ca2st_jax.data.builders, or the synthetic set
    data_dir='',              # '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
    dataset_dir='',           # a prepared TFDS directory, instead of name + data_dir
    builder_config='',
    synthetic={},             # synthetic.SyntheticSpec fields (name 'synthetic_av' only)
    train_split='train', eval_split='test',
    eval_batch_size=0,        # global eval batch; 0 = config.train.batch_size
    num_workers=AUTO_WORKERS, prefetch=2, seed=0,
    sampling='dense',         # 'dense' (clip_len frames `frame_stride` apart) | 'tsn' (one per segment)
    frame_stride=4,
    crop_size=0,              # 0 = config.model.image_size
    crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3), flip=True,
    randaugment='rand-m7-n4-mstd0.5-inc1', randaugment_after_crop=False, interpolation='bicubic',
    eval_short_side=0,        # 0 = config.model.image_size
    test_num_clips=2, test_num_crops=3,
    audio=True, audio_sample_rate=16000, spec_augment=True, time_mask=70, freq_mask=20)


def data_config(**overrides) -> ml_collections.ConfigDict:
  """config.data: every field of DATA_DEFAULTS (so each one can be set from the command line),
  with this data set's values in `overrides`."""
  data = ml_collections.ConfigDict({**DATA_DEFAULTS, **overrides})
  check_fields(ml_collections.ConfigDict(dict(data=data)))
  return data


def check_fields(config) -> None:
  """Raises ValueError naming a config.data field that is unknown or missing."""
  unknown = set(config.data) - set(DATA_DEFAULTS)
  if unknown:
    raise ValueError(f'unknown config.data fields {sorted(unknown)}; '
                     f'the fields are those of config_lib.DATA_DEFAULTS')
  missing = set(DATA_DEFAULTS) - set(config.data)
  if missing:
    raise ValueError(f'config.data lacks fields {sorted(missing)}: build it with '
                     f'config_lib.data_config(...)')


def paper_config(model: str, *, data: dict, spectrogram_length: int = 1024,
                 **classes) -> ml_collections.ConfigDict:
  """config.model, init and data of `model` ('cast', 'cava', 'ca2st', or one of them +
  '_compositional') on a data set: its config.data values `data`, its classes (num_classes, or
  num_verbs and num_nouns) and the audio models' spectrogram length. CAST reads no audio."""
  config = ml_collections.ConfigDict()
  # Expert checkpoints to start from (paths; empty = random init); a whole-model checkpoint of the
  # reference layout in `checkpoint`.
  config.init = ml_collections.ConfigDict(dict(clip='', videomae='', ast='', checkpoint=''))
  if model.startswith('cast'):
    config.model = model_config(model, **classes)
    config.data = data_config(**data, audio=False)
  else:
    config.model = model_config(model, spectrogram_length=spectrogram_length, **classes)
    config.data = data_config(**data)
    # 'reference' adapts AST's positional grid as the authors' loader does (lossy at T=1024);
    # 'ast' as the original AST recipe.
    config.init.ast_pos_mode = 'reference'
  return config


def cast_recipe(config, *, batch_size: int, total_epochs: int, drop_path: float,
                mixup_prob: float):
  """The CAST training recipe (the authors' scripts/{kinetics,ssv2,ek100}/*.sh), the
  values that differ per data set as arguments. batch_size is the global batch of one optimiser
  step (accum_steps micro-batches); lr, min_lr and warmup_lr are scaled by batch_size / 256."""
  return _recipe(config, batch_size=batch_size, total_epochs=total_epochs, drop_path=drop_path,
                 mixup_prob=mixup_prob, lr=0.001, layer_decay=0.75, with_map=False)


def audio_visual_recipe(config, *, with_map: bool = False):
  """The CAVA / CA²ST training recipe of the audio-visual data sets (the authors'
  notebook: 6 GPUs x 2). batch_size is the global batch of one optimiser step (accum_steps
  micro-batches); lr, min_lr and warmup_lr are scaled by batch_size / 256. with_map: the eval
  also reports mAP."""
  return _recipe(config, batch_size=12, total_epochs=50, drop_path=0.2, mixup_prob=0.9,
                 lr=0.0005, layer_decay=0.8, with_map=with_map)


def _recipe(config, *, batch_size, total_epochs, drop_path, mixup_prob, lr, layer_decay,
            with_map):
  """config.model.drop_path and config.train / mesh / ckpt / optim / eval of a paper recipe (the
  common part)."""
  placeholder = ml_collections.config_dict.placeholder
  config.model.drop_path = drop_path
  config.train = ml_collections.ConfigDict(dict(
      batch_size=batch_size, accum_steps=1, total_epochs=total_epochs, warmup_epochs=5,
      total_steps=placeholder(int), warmup_steps=placeholder(int),
      trainable='reference', mixup_alpha=0.8, mixup_prob=mixup_prob, label_smoothing=0.1,
      mixup_audio=False,  # mix the spectrogram too: the authors' --mixup_spec, off in their runs
      log_every=50, eval_every=0, ckpt_every=1000))
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
  config.ckpt = ml_collections.ConfigDict(dict(keep=2))
  config.optim = ml_collections.ConfigDict(dict(
      lr=lr, min_lr=1e-6, warmup_lr=0.0, scale_lr_by_batch=True, weight_decay=0.05,
      layer_decay=layer_decay, clip_grad_norm=placeholder(float), betas=(0.9, 0.999), eps=1e-8))
  config.eval = ml_collections.ConfigDict(dict(
      best_metric='top1', with_map=with_map,
      write_predictions=False))  # per-video predictions of each eval, in the workdir
  return config


def with_variant(config, variant: str):
  """`config` as the variant asks: '' as it is, 'tiny' its model at CPU-test size for a few steps
  of the same recipe."""
  if variant == 'tiny':
    tiny(config.model)
    config.train.update(batch_size=2, total_steps=2, warmup_steps=1, log_every=1, ckpt_every=2)
  return config


def tiny(model: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The same model at CPU-test size: width 32, 2 layers, 32x32 frames, 8 frames, float32.
  (Frozen parameters stay float32 also when a test switches the compute dtype to bfloat16.)"""
  model.update(dict(
      width=32, depth=2, num_heads=2, mlp_dim=64, adapter_dim=8, bottleneck_dim=16,
      image_size=32, patch_size=16, num_frames=8, num_mel_bins=32, spectrogram_length=64,
      dtype='float32', store_frozen_in_compute_dtype=False))
  return model


def parse_variant(arg) -> str:
  variant = (arg or '').strip()
  if variant not in VARIANTS:
    raise ValueError(f'unknown config variant {variant!r}; expected one of {VARIANTS[1:]} or none')
  return variant


def parse_model_arg(arg, models: tuple[str, ...]) -> tuple[str, str]:
  """'<model>[,<variant>]', what follows ':' in --config=configs/<data set>.py:cava,tiny ->
  (model, variant)."""
  model, _, variant = (arg or '').partition(',')
  if model not in models:
    raise ValueError(f'config argument {arg!r}: name a model of this data set, one of {models} '
                     f"(then ',tiny' for the CPU-sized variant), e.g. "
                     f'--config=configs/<data set>.py:{models[0]}')
  return model, parse_variant(variant)


def load_config(path, arg: str | None = None) -> ml_collections.ConfigDict:
  """What --config=<path>[:<arg>] loads: get_config(arg) of the config file at `path`
  (get_config() when arg is None)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'config file {path} not found')
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f'configs.{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config() if arg is None else module.get_config(arg)


def dataset_config(beside: str, dataset: str, model: str, variant: str | None = None):
  """configs/<dataset>.py:<model>[,<variant>], configs/ being the folder of the file `beside`:
  what a configs/<model>_<dataset>.py returns."""
  arg = f'{model},{variant}' if variant else model
  return load_config(os.path.join(os.path.dirname(os.path.abspath(beside)), f'{dataset}.py'), arg)
