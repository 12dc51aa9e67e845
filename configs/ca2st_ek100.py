"""CA²ST on EPIC-KITCHENS-100: configs/ek100.py:ca2st (the data set, its paper figures).

CPU-sized: --config=configs/ca2st_ek100.py:tiny. Commands: ca2st_jax/config_lib.py.
"""
from ca2st_jax import config_lib


def get_config(arg=None):
  return config_lib.dataset_config(__file__, 'ek100', 'ca2st', arg)
