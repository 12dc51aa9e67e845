"""CA²ST on Kinetics-Sounds: configs/kinetics_sound.py:ca2st (the data set, its paper figures).

CPU-sized: --config=configs/ca2st_kinetics_sound.py:tiny. Commands: ca2st_jax/config_lib.py.
"""
from ca2st_jax import config_lib


def get_config(arg=None):
  return config_lib.dataset_config(__file__, 'kinetics_sound', 'ca2st', arg)
