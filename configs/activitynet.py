"""ActivityNet 1.3 (200 activities; untrimmed videos with their audio):
--config=configs/activitynet.py:ca2st.

Prepare the data (manual download; see ca2st_jax/data/builders/activitynet.py):
  python -m ca2st_jax.data.builders activitynet --manual_dir=$RAW --data_dir=$TFDS_DATA_DIR

Paper: CA²ST 91.3 top-1 (validation; the test subset has no public labels).

Which values are the paper's and which are ours: the paper reports the figure but no ActivityNet
recipe, and the authors' public code (joohyun7u/CA2ST, read at 479a06d) has no ActivityNet
dataset class, script or notebook. From the paper: the model (CA²ST, video with audio) and the
200 classes. Ours:
- sampling 'tsn': 16 segments over the whole untrimmed video, one frame from each (as the authors'
  SSv2 / EK100 datasets sample); a dense 16 x 4 window would see ~8 s of a video minutes long;
- the stored video: the builder's 8 fps at short side 256;
- audio: a 1024-frame fbank (10.24 s at 16 kHz, as VGGSound) from the audio of the whole video;
- test views: 2 temporal x 3 spatial, as the other TSN configs;
- the training recipe: the audio-visual one of the other CA²ST configs
  (config_lib.audio_visual_recipe: the authors' CAVA notebook), drop path 0.2.
"""
from ca2st_jax import config_lib


def get_config(arg=None):
  model, variant = config_lib.parse_model_arg(arg, ('ca2st',))
  config = config_lib.paper_config(model, num_classes=200, data=dict(
      name='activitynet', eval_split='validation', sampling='tsn', test_num_clips=2,
      test_num_crops=3))
  config_lib.audio_visual_recipe(config)
  return config_lib.with_variant(config, variant)
