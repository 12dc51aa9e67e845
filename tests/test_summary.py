"""The summary tool at base size: exact parameter counts (SPEC §7) and GMACs per view."""
import json
import subprocess
import sys

import pytest

from ca2st_jax.tools import summary
from tests_helpers import load_config


@pytest.mark.parametrize('config,total,trainable,gmacs', [
    ('cast_k400', 217_402_384, 45_378_832, 390.5),
    ('cava_epic_sounds', 215_233_964, 43_820_204, 241.0),
])
def test_base_counts_and_cost(config, total, trainable, gmacs):
  result = summary.summarize(load_config(config).model)
  assert result['total_params'] == total
  assert result['trainable_params'] == trainable
  assert abs(result['gmacs_per_view'] - gmacs) / gmacs < 0.03


def test_cli_json_on_tiny():
  out = subprocess.run(
      [sys.executable, '-m', 'ca2st_jax.tools.summary', '--config=configs/ca2st_vggsound.py:tiny',
       '--json'], check=True, capture_output=True, text=True).stdout
  result = json.loads(out.strip().splitlines()[-1])
  assert result['total_params'] > result['trainable_params'] > 0
  assert result['gmacs_per_view'] > 0
  assert set(result['parts']) == {'spatial', 'temporal', 'audio', 'adapters', 'exchange', 'heads',
                                  'time_encoding'}
