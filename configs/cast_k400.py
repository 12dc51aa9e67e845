"""CAST on Kinetics-400.

Train and evaluate (experts from their public checkpoints, no downloads at run time):
  python -m ca2st_jax.main --config=configs/cast_k400.py --workdir=$WORKDIR \\
      --config.init.clip=ViT-B-16.pt --config.init.videomae=videomae_vit_b_k400_ft.pth
Model summary (parameters, GMACs per view):
  python -m ca2st_jax.tools.summary --config=configs/cast_k400.py
CPU-sized variant of the same code: --config=configs/cast_k400.py:tiny

Paper: 85.3 top-1 (5 clips x 3 crops).
"""
import ml_collections

from ca2st_jax import config_lib


def get_config(arg=None):
  variant = config_lib.parse_variant(arg)
  config = ml_collections.ConfigDict()
  config.model = config_lib.model_config('cast', num_classes=400, drop_path=0.2)
  # Expert checkpoints to start from (paths; empty = random init); a whole-model checkpoint
  # of the reference layout in `checkpoint`.
  config.init = ml_collections.ConfigDict(dict(clip='', videomae='', ast='', checkpoint=''))
  config.data = config_lib.data_config(
      name='kinetics400', eval_split='validation', sampling='dense', frame_stride=4,
      test_num_clips=5, test_num_crops=3, audio=False)
  if variant == 'tiny':
    config_lib.tiny(config.model)
  # scripts/kinetics/k400.sh: 6 per GPU x update_freq 6 x 16 GPUs.
  config_lib.cast_recipe(config, variant, batch_size=576, total_epochs=70, mixup_prob=0.5)
  return config
