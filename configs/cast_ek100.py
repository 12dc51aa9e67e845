"""CAST (compositional heads) on EPIC-KITCHENS-100 (verb + noun heads).

Train and evaluate (experts from their public checkpoints, no downloads at run time):
  python -m ca2st_jax.main --config=configs/cast_ek100.py --workdir=$WORKDIR \\
      --config.init.clip=ViT-B-16.pt --config.init.videomae=videomae_vit_b_k400_ft.pth
Model summary (parameters, GMACs per view):
  python -m ca2st_jax.tools.summary --config=configs/cast_ek100.py
CPU-sized variant of the same code: --config=configs/cast_ek100.py:tiny

Paper: verb 72.5 / noun 60.9 / action 49.3 top-1 (2 clips x 3 crops).
"""
import ml_collections

from ca2st_jax import config_lib


def get_config(arg=None):
  variant = config_lib.parse_variant(arg)
  config = ml_collections.ConfigDict()
  config.model = config_lib.model_config('cast_compositional', num_verbs=97, num_nouns=300, drop_path=0.2)
  # Expert checkpoints to start from (paths; empty = random init); a whole-model checkpoint
  # of the reference layout in `checkpoint`.
  config.init = ml_collections.ConfigDict(dict(clip='', videomae='', ast='', checkpoint=''))
  config.data = config_lib.data_config(
      name='ek100', eval_split='validation', sampling='tsn', test_num_clips=2,
      test_num_crops=3, audio=False)
  if variant == 'tiny':
    config_lib.tiny(config.model)
  # scripts/ek100/ek100.sh: 6 per GPU x update_freq 4 x 16 GPUs.
  config_lib.cast_recipe(config, variant, batch_size=384, total_epochs=50, mixup_prob=0.9)
  return config
