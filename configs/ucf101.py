"""UCF-101 (101 classes; split 1, with audio): --config=configs/ucf101.py:cava or :ca2st.

Paper: CA²ST 97.2 top-1.
Eval views: 5 temporal clips x 3 crops, the authors' runners' defaults (configs/vggsound.py).
"""
from ca2st_jax import config_lib


def get_config(arg=None):
  model, variant = config_lib.parse_model_arg(arg, ('cava', 'ca2st'))
  config = config_lib.paper_config(model, num_classes=101, data=dict(
      name='ucf101_av', builder_config='split1', eval_split='test', sampling='dense',
      frame_stride=4, test_num_clips=5))
  config_lib.audio_visual_recipe(config)
  return config_lib.with_variant(config, variant)
