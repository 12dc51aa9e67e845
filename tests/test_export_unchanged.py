"""Exports of freshly built tiny models are bit-identical to those of the unstacked layers.

tests/fixtures/export_digests.json holds, per model, the ordered (reference key, dtype, shape,
sha256 prefix) of `export_torch.export_arrays` as written by a model whose layers were Python
lists, one module per layer (the reference's own structure): regenerate only on purpose, with

    PYTHONPATH=<checkout> python tests/test_export_unchanged.py tests/fixtures/export_digests.json

The init draws the same numbers (the stacks are built from per-layer modules in the old order),
so equal digests mean the stacked parameters map to every reference name exactly as before.
"""
import hashlib
import json
import pathlib
import sys

import numpy as np
import pytest
from flax import nnx

from ca2st_jax import config_lib, models
from ca2st_jax.tools import export_torch

FIXTURE = pathlib.Path(__file__).parent / 'fixtures' / 'export_digests.json'
CASES = {
    'cast': ('cast', {}),
    'cast_compositional': ('cast_compositional', {}),
    'cava_positions': ('cava', dict(learned_positions=True)),
    'ca2st_start1': ('ca2st', dict(audio_exchange_start=1)),
    'ca2st_start0_add_unshared_positions': ('ca2st', dict(
        audio_exchange_start=0, exchange_method='add', share_exchange_projections=False,
        learned_positions=True)),
}


def export_digest(case):
  name, overrides = CASES[case]
  cfg = config_lib.tiny(config_lib.model_config(name, drop_path=0.1, **overrides))
  model = models.build(cfg, rngs=nnx.Rngs(params=0, dropout=1))
  return [[key, str(np.asarray(value).dtype), list(np.shape(value)),
           hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()[:16]]
          for key, value in export_torch.export_arrays(model, cfg).items()]


@pytest.mark.parametrize('case', sorted(CASES))
def test_export_matches_unstacked_layers(case):
  expected = json.loads(FIXTURE.read_text())[case]
  got = export_digest(case)
  assert [k for k, *_ in got] == [k for k, *_ in expected]  # same names in the same order
  changed = [g for g, e in zip(got, expected) if g != e]
  assert not changed, f'{len(changed)} tensors differ, e.g. {changed[:3]}'


if __name__ == '__main__':
  pathlib.Path(sys.argv[1]).write_text(
      json.dumps({case: export_digest(case) for case in sorted(CASES)}, separators=(',', ':')))
