"""Something-Something-V2 (174 classes; video only, no flip): --config=configs/ssv2.py:cast.

Paper: CAST 71.6 top-1 (2 clips x 3 crops).
"""
from ca2st_jax import config_lib


def get_config(arg=None):
  model, variant = config_lib.parse_model_arg(arg, ('cast',))
  config = config_lib.paper_config(model, num_classes=174, data=dict(
      name='ssv2', eval_split='validation', sampling='tsn', flip=False, test_num_clips=2,
      test_num_crops=3))
  # KHU-VLL/CAST scripts/ssv2/ssv2.sh: 6 per GPU x update_freq 4 x 16 GPUs.
  config_lib.cast_recipe(config, batch_size=384, total_epochs=50, drop_path=0.3, mixup_prob=0.9)
  return config_lib.with_variant(config, variant)
