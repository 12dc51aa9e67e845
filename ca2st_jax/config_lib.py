"""Shared pieces of the configs in configs/: the model and data sections, the training recipes
and the :tiny variant."""
import ml_collections

VARIANTS = ('', 'tiny')


def model_config(name: str, **overrides) -> ml_collections.ConfigDict:
  """ViT-B/16 experts with the reference's defaults (SPEC §3–§7)."""
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
      # CAVA / CA²ST exchange switches (SPEC §6), reference defaults.
      audio_exchange_start=9,   # CA: first layer with the audio pairs (0 = all layers)
      exchange_method='seq',    # 'seq': S&T, then A&S, then A&T; 'add': their mean
      share_exchange_projections=True,  # bcast_share: A&S/A&T reuse S&T down/up projections
      time_encoding=True,       # [start, end] time MLP added inside the audio cross-attention
      split_time_mlp=True,      # separate time MLPs for audio and video tokens
      learned_positions=False,  # use_stpos: learned space/time positions in the audio exchanges
  ))
  model.update(overrides)
  return model


AUTO_WORKERS = -1  # config.data.num_workers: one Grain worker per core (pipeline.resolve_num_workers)

# Every config.data field and its default: the one place they are written (SPEC §9 for K400).
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

# Spellings of earlier versions: a clear error instead of a field that is silently not read.
MOVED_FIELDS = {
    'data.batch_size': 'config.train.batch_size (the global batch the learning rate is scaled '
                       'for; one field for the model and the input pipeline)',
    'eval.batch_size': 'config.data.eval_batch_size',
}


def data_config(**overrides) -> ml_collections.ConfigDict:
  """config.data: every field of DATA_DEFAULTS (so each one can be set from the command line),
  with this benchmark's values in `overrides`."""
  data = ml_collections.ConfigDict({**DATA_DEFAULTS, **overrides})
  check_fields(ml_collections.ConfigDict(dict(data=data)))
  return data


def check_fields(config) -> None:
  """Raises ValueError naming a config.data field that is unknown, missing or a moved spelling."""
  for where, new in MOVED_FIELDS.items():
    section, key = where.split('.')
    if key in (config.get(section, None) or {}):
      raise ValueError(f'config.{where} is no longer read: set {new}')
  unknown = set(config.data) - set(DATA_DEFAULTS)
  if unknown:
    raise ValueError(f'unknown config.data fields {sorted(unknown)}; '
                     f'the fields are those of config_lib.DATA_DEFAULTS')
  missing = set(DATA_DEFAULTS) - set(config.data)
  if missing:
    raise ValueError(f'config.data lacks fields {sorted(missing)}: build it with '
                     f'config_lib.data_config(...)')


def cast_recipe(config, variant: str, *, batch_size: int, total_epochs: int, mixup_prob: float):
  """The CAST training recipe (SPEC §9: the authors' scripts/{kinetics,ssv2,ek100}/*.sh), the
  values that differ per data set as arguments. batch_size is the global batch of one optimiser
  step (accum_steps micro-batches); lr, min_lr and warmup_lr are scaled by batch_size / 256."""
  return _recipe(config, variant, batch_size=batch_size, total_epochs=total_epochs,
                 mixup_prob=mixup_prob, lr=0.001, layer_decay=0.75, with_map=False)


def audio_visual_recipe(config, variant: str, *, with_map: bool = False):
  """The CAVA / CA²ST training recipe shared by the audio-visual configs (SPEC §9; the authors'
  notebook: 6 GPUs x 2). batch_size is the global batch of one optimiser step (accum_steps
  micro-batches); lr, min_lr and warmup_lr are scaled by batch_size / 256."""
  return _recipe(config, variant, batch_size=12, total_epochs=50, mixup_prob=0.9, lr=0.0005,
                 layer_decay=0.8, with_map=with_map)


def _recipe(config, variant, *, batch_size, total_epochs, mixup_prob, lr, layer_decay, with_map):
  """config.train / mesh / ckpt / optim / eval of a paper recipe (the common part: SPEC §9)."""
  placeholder = ml_collections.config_dict.placeholder
  config.train = ml_collections.ConfigDict(dict(
      batch_size=batch_size, accum_steps=1, total_epochs=total_epochs, warmup_epochs=5,
      total_steps=placeholder(int), warmup_steps=placeholder(int),
      trainable='reference', mixup_alpha=0.8, mixup_prob=mixup_prob, label_smoothing=0.1,
      mixup_audio=False,        # mix the spectrogram too (the authors' --mixup_spec, off in their runs)
      log_every=50, eval_every=0, ckpt_every=1000))
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
  config.ckpt = ml_collections.ConfigDict(dict(keep=2))
  config.optim = ml_collections.ConfigDict(dict(
      lr=lr, min_lr=1e-6, warmup_lr=0.0, scale_lr_by_batch=True, weight_decay=0.05,
      layer_decay=layer_decay, clip_grad_norm=placeholder(float), betas=(0.9, 0.999), eps=1e-8))
  config.eval = ml_collections.ConfigDict(dict(
      best_metric='top1', with_map=with_map,
      write_predictions=False))  # per-video predictions of each eval, in the workdir
  if variant == 'tiny':  # a few CPU steps of the same recipe
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
