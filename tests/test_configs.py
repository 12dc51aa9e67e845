"""Every paper config, and its :tiny variant, resolves to the values in
tests/fixtures/resolved_configs.json (config.to_dict(); a placeholder without a value is null).

After a deliberate change of a paper setting, rewrite the fixture and review its diff:
  PYTHONPATH=$PWD python tests/test_configs.py
"""
import glob
import importlib.util
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, 'tests', 'fixtures', 'resolved_configs.json')


def load_config(name, arg=None):
  path = os.path.join(ROOT, 'configs', f'{name}.py')
  spec = importlib.util.spec_from_file_location(f'configs.{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config() if arg is None else module.get_config(arg)


def paper_config_names():
  names = (os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'configs', '*.py')))
  return sorted(n for n in names if n != 'demo')


def resolved(spec):
  """The plain JSON values of configs/<name>.py[:arg], `spec` spelled as for --config."""
  name, _, arg = spec.partition(':')
  return json.loads(json.dumps(load_config(name, arg or None).to_dict()))


def resolve_all():
  return {spec: resolved(spec) for name in paper_config_names() for spec in (name, f'{name}:tiny')}


with open(FIXTURE) as f:
  EXPECTED = json.load(f)


def test_the_fixture_covers_every_paper_config():
  assert sorted(EXPECTED) == sorted(resolve_all())


@pytest.mark.parametrize('spec', sorted(EXPECTED))
def test_paper_config_resolves_to_the_fixture(spec):
  got = resolved(spec)
  assert got == EXPECTED[spec]
  # Equal numbers of another type (1 and 1.0) compare equal above; their JSON text does not.
  assert json.dumps(got, sort_keys=True) == json.dumps(EXPECTED[spec], sort_keys=True)


if __name__ == '__main__':
  with open(FIXTURE, 'w') as f:
    json.dump(resolve_all(), f, indent=1, sort_keys=True)
    f.write('\n')
  sys.exit(0)
