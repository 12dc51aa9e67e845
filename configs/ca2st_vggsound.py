"""CA²ST on VGGSound: configs/vggsound.py:ca2st (the data set, its paper figures).

CPU-sized: --config=configs/ca2st_vggsound.py:tiny. Commands: ca2st_jax/config_lib.py.
"""
from ca2st_jax import config_lib


def get_config(arg=None):
  return config_lib.dataset_config(__file__, 'vggsound', 'ca2st', arg)
