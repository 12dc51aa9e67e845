"""CAST on Kinetics-400: configs/k400.py:cast (the data set, its paper figures).

CPU-sized: --config=configs/cast_k400.py:tiny. Commands: ca2st_jax/config_lib.py.
"""
from ca2st_jax import config_lib


def get_config(arg=None):
  return config_lib.dataset_config(__file__, 'k400', 'cast', arg)
