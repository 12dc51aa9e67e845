"""Kinetics-400 (400 classes; video only): --config=configs/k400.py:cast.

Paper: CAST 85.3 top-1 (5 clips x 3 crops).
"""
from ca2st_jax import config_lib


def get_config(arg=None):
  model, variant = config_lib.parse_model_arg(arg, ('cast',))
  config = config_lib.paper_config(model, num_classes=400, data=dict(
      name='kinetics400', eval_split='validation', sampling='dense', frame_stride=4,
      test_num_clips=5, test_num_crops=3))
  # KHU-VLL/CAST scripts/kinetics/k400.sh: 6 per GPU x update_freq 6 x 16 GPUs.
  config_lib.cast_recipe(config, batch_size=576, total_epochs=70, drop_path=0.2, mixup_prob=0.5)
  return config_lib.with_variant(config, variant)
