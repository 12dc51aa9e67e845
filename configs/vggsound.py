"""VGGSound (309 classes, 10 s clips with their audio): --config=configs/vggsound.py:cava or :ca2st.

Paper: CA²ST 68.3 top-1; CAVA is the paper's audio-visual baseline.
Eval views: 5 temporal clips x 3 crops, the defaults `--test_num_segment 5 --test_num_crop 3` of
the authors' runners (joohyun7u/CA2ST run_bidirection.py); no published script sets them for
VGGSound, Kinetics-Sounds or UCF-101. The eval audio window moves with the view as in their test
mode.
"""
from ca2st_jax import config_lib


def get_config(arg=None):
  model, variant = config_lib.parse_model_arg(arg, ('cava', 'ca2st'))
  config = config_lib.paper_config(model, num_classes=309, data=dict(
      name='vggsound', eval_split='test', sampling='dense', frame_stride=4, test_num_clips=5))
  config_lib.audio_visual_recipe(config)
  return config_lib.with_variant(config, variant)
