"""Small helpers shared by the tests."""
import functools
import os
import pathlib

from ca2st_jax import config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
# conftest's simulated mesh; processes that tests launch with devices of their own drop it.
HOST_DEVICES = '--xla_force_host_platform_device_count=8'


def env_without_host_devices(**overrides):
  """os.environ (with `overrides`) for a process that a test starts with CPU devices of its own:
  conftest's 8 simulated devices out of XLA_FLAGS."""
  env = dict(os.environ, **overrides)
  env['XLA_FLAGS'] = env.get('XLA_FLAGS', '').replace(HOST_DEVICES, '').strip()
  return env


def forget_gs_clients():
  """Clears the file system etils.epath keeps for each protocol (a private lru_cache, with no
  public way to reset it): a gs:// client another test made would otherwise outlive its server,
  or bypass a fake file system."""
  from etils.epath import backend  # pylint: disable=import-outside-toplevel
  backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access


def run_compiled(module, *args, method='__call__'):
  """module.method(*args) as one compiled program: run op by op, every operation of a tiny model
  compiles on its own, which costs more than the model's whole program."""
  return _compiled(method)(module, *args)


@functools.cache
def _compiled(method):
  from flax import nnx  # pylint: disable=import-outside-toplevel
  return nnx.jit(lambda module, *args: getattr(module, method)(*args))


def load_config(name, arg=None):
  """configs/<name>.py's get_config(arg)."""
  return config_lib.load_config(str(ROOT / 'configs' / f'{name}.py'), arg)


def tiny_model_config(name, **fields):
  """config_lib.model_config(name) at config_lib.tiny's CPU-test size, `fields` replaced."""
  from ca2st_jax import config_lib  # pylint: disable=import-outside-toplevel
  cfg = config_lib.tiny(config_lib.model_config(name))
  cfg.update(fields)
  return cfg


def clip_options(**fields):
  """ca2st_jax.data.pipeline.ClipOptions of the default config.data and model, `fields` replaced."""
  import dataclasses  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  from ca2st_jax import config_lib  # pylint: disable=import-outside-toplevel
  from ca2st_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  config = ml_collections.ConfigDict(dict(model=config_lib.model_config('cast'),
                                          data=config_lib.data_config()))
  return dataclasses.replace(pipeline.clip_options(config), **fields)
