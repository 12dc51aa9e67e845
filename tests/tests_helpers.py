"""Small helpers shared by the tests."""
import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(name, arg=None):
  """configs/<name>.py's get_config(arg)."""
  spec = importlib.util.spec_from_file_location(f'configs.{name}', ROOT / 'configs' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)
