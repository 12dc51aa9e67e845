"""CA²ST on ActivityNet 1.3: configs/activitynet.py:ca2st (the data set, its paper figures).

CPU-sized: --config=configs/ca2st_activitynet.py:tiny. Commands: ca2st_jax/config_lib.py.
"""
from ca2st_jax import config_lib


def get_config(arg=None):
  return config_lib.dataset_config(__file__, 'activitynet', 'ca2st', arg)
