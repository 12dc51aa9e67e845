"""Kinetics-Sounds (32 classes of Kinetics-400 with their audio): --config=configs/kinetics_sound.py
with :cava or :ca2st.

Paper: CA²ST 93.3 top-1.
Eval views: 5 temporal clips x 3 crops, the authors' runners' defaults (configs/vggsound.py).
"""
from ca2st_jax import config_lib


def get_config(arg=None):
  model, variant = config_lib.parse_model_arg(arg, ('cava', 'ca2st'))
  config = config_lib.paper_config(model, num_classes=32, data=dict(
      name='kinetics_sounds', eval_split='validation', sampling='dense', frame_stride=4,
      test_num_clips=5))
  config_lib.audio_visual_recipe(config)
  return config_lib.with_variant(config, variant)
