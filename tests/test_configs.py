"""Every paper config, and its :tiny variant, resolves to the values in
tests/fixtures/resolved_configs.json (config.to_dict(); a placeholder without a value is null),
under both of its names: configs/<model>_<data set>.py[:tiny] and
configs/<data set>.py:<model>[,tiny].

After a deliberate change of a paper setting, rewrite the fixture and review its diff:
  PYTHONPATH=$PWD python tests/test_configs.py
"""
import glob
import json
import os

import pytest

from ca2st_jax import config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, 'configs')
FIXTURE = os.path.join(ROOT, 'tests', 'fixtures', 'resolved_configs.json')
MODELS = ('cast', 'cava', 'ca2st')


def paper_config_names():
  """configs/<model>_<data set>.py: every config file but demo.py and the data set files."""
  files = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(CONFIGS, '*.py'))}
  datasets = {f.split('_', 1)[1] for f in files if f.split('_', 1)[0] in MODELS}
  return sorted(files - datasets - {'demo'})


def resolved(path, arg=None):
  """The plain JSON values of config_lib.load_config(path, arg)."""
  return json.loads(json.dumps(config_lib.load_config(path, arg).to_dict()))


def resolve_all():
  return {f'{name}{tail}': resolved(os.path.join(CONFIGS, f'{name}.py'), arg)
          for name in paper_config_names() for tail, arg in (('', None), (':tiny', 'tiny'))}


def assert_same(got, expected):
  assert got == expected
  # Equal numbers of another type (1 and 1.0) compare equal above; their JSON text does not.
  assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)


if os.path.exists(FIXTURE):
  with open(FIXTURE) as f:
    EXPECTED = json.load(f)
else:
  EXPECTED = {}


def test_the_fixture_holds_every_paper_config_and_its_tiny_variant():
  names = paper_config_names()
  assert len(names) == 14, names
  assert sorted(EXPECTED) == sorted(n + tail for n in names for tail in ('', ':tiny'))


@pytest.mark.parametrize('spec', sorted(EXPECTED))
def test_paper_config_resolves_to_the_fixture(spec):
  name, _, arg = spec.partition(':')
  assert_same(resolved(os.path.join(CONFIGS, f'{name}.py'), arg or None), EXPECTED[spec])


@pytest.mark.parametrize('spec', sorted(EXPECTED))
def test_data_set_file_with_the_model_is_the_same_config(spec):
  name, _, variant = spec.partition(':')
  model, dataset = name.split('_', 1)
  arg = f'{model},{variant}' if variant else model
  assert_same(resolved(os.path.join(CONFIGS, f'{dataset}.py'), arg), EXPECTED[spec])


@pytest.mark.parametrize('arg,message', [
    (None, r"config argument None: name a model of this data set, one of \('cava', 'ca2st'\)"),
    ('cast', r"config argument 'cast': name a model of this data set"),
    ('cava,huge', r"unknown config variant 'huge'"),
])
def test_data_set_file_needs_one_of_its_models(arg, message):
  with pytest.raises(ValueError, match=message):
    config_lib.load_config(os.path.join(CONFIGS, 'vggsound.py'), arg)


def test_missing_config_file_is_named():
  with pytest.raises(FileNotFoundError, match=r'config file .*configs/no_such\.py not found'):
    config_lib.load_config(os.path.join(CONFIGS, 'no_such.py'))


if __name__ == '__main__':
  with open(FIXTURE, 'w') as f:
    json.dump(resolve_all(), f, indent=1, sort_keys=True)
    f.write('\n')
