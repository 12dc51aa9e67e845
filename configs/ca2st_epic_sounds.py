"""CA²ST on EPIC-SOUNDS: configs/epic_sounds.py:ca2st (the data set, its paper figures).

CPU-sized: --config=configs/ca2st_epic_sounds.py:tiny. Commands: ca2st_jax/config_lib.py.
"""
from ca2st_jax import config_lib


def get_config(arg=None):
  return config_lib.dataset_config(__file__, 'epic_sounds', 'ca2st', arg)
