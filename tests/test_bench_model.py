"""The model benchmark runs end to end on a tiny config and reports sane figures."""
from ca2st_jax.tools import bench_model
from tests_helpers import load_config


def test_bench_model_tiny():
  cfg = load_config('cava_vggsound', 'tiny').model
  results = bench_model.benchmark(cfg, batch=2, steps=1)
  for name in ('forward', 'train_step'):
    assert results[name]['step_s'] > 0
    assert results[name]['clips_per_s'] == 2 / results[name]['step_s']
  assert results['gmacs_per_clip'] > 0
