"""The benchmark tool: runs end to end without the data stack, and its counters count correctly."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from ca2st_jax.interop import torch_model
from ca2st_jax.tools import benchmark
from tests_helpers import ROOT, load_config

# What a bare GPU machine lacks (launch/bench_gpu.sh): importing any of them must not be needed.
DATA_STACK = ('grain', 'tensorflow_datasets', 'tensorflow', 'av', 'kaldi_native_fbank', 'h5py',
              'cv2', 'array_record')


@pytest.mark.slow
def test_benchmark_cli_without_data_stack(tmp_path):
  """cast_k400:tiny through the real trainer step and the PyTorch model (eager and SDPA) on the
  8 simulated CPU devices, with the data stack made unimportable."""
  (tmp_path / 'sitecustomize.py').write_text(
      'import sys\n' + ''.join(f'sys.modules[{name!r}] = None\n' for name in DATA_STACK))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]),
             JAX_PLATFORMS='cpu')
  started = time.perf_counter()
  proc = subprocess.run(
      [sys.executable, '-m', 'ca2st_jax.tools.benchmark', '--config=configs/cast_k400.py:tiny',
       '--batch=8', '--steps=1', '--warmup=1', '--dtype=float32', '--backend=both',
       '--torch_attention=eager,sdpa', '--bytes_by_op', '--json'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  wall_s = time.perf_counter() - started
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{')]
  assert [r['backend'] for r in rows] == ['jax', 'torch-eager', 'torch-sdpa']
  jax_row = rows[0]
  assert jax_row['num_devices'] == 8 and jax_row['batch'] == 8
  for row in rows:
    for step in ('train_step', 'eval_step'):
      r = row[step]
      # the timed steps and the compile ran inside the process: their seconds fit in its wall time
      # (catches a unit slip between step_ms, clips_per_s and compile_s)
      assert 0 < r['step_ms'] / 1e3 < wall_s and 8 / wall_s < r['clips_per_s']
      assert r['mfu'] is None  # no bf16 peak for a CPU
  train, evaluation = jax_row['train_step'], jax_row['eval_step']
  # Model FLOPs of a train step: more than the forward, less than the naive 3x (frozen experts).
  ratio = train['model_tflops_per_clip'] / evaluation['model_tflops_per_clip']
  assert 1.2 < ratio < 3.0
  for r in (train, evaluation):
    assert 0 < r['compile_s'] < wall_s and 0 < r['lower_s'] < wall_s
    assert r['memory']['temp_bytes'] > 0 and r['memory']['argument_bytes'] > 0
    assert r['xla_flops_per_clip'] > 0
    # The per-op-kind bytes count a scanned layer once per layer; XLA's own count of bytes
    # accessed counts a loop body once, so with the 2 scanned layers it sees less, but not less
    # than half (everything outside the loops is counted by both).
    by_op = sum(r['bytes_by_op_per_clip'].values())
    assert r['xla_bytes_per_clip'] < by_op < 2.3 * r['xla_bytes_per_clip']
  # The report mode reads those lines back.
  (tmp_path / 'bench.jsonl').write_text(proc.stdout)
  report = subprocess.run(
      [sys.executable, '-m', 'ca2st_jax.tools.benchmark', f'--report={tmp_path / "bench.jsonl"}'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=True).stdout
  assert '| cast | torch-sdpa | float32 | 8 | train_step |' in report
  assert 'bytes accessed per clip by op kind' in report


def test_peak_table_and_synthetic_batch():
  assert benchmark.peak_tflops('NVIDIA H200') == 989
  assert benchmark.peak_tflops('NVIDIA H100 80GB HBM3') == 989
  assert benchmark.peak_tflops('TPU v5 lite') == 197
  assert benchmark.peak_tflops('cpu') is None
  cfg = load_config('ca2st_vggsound', 'tiny').model
  batch = benchmark.synthetic_batch(cfg, 3)
  assert batch['video'].shape == (3, cfg.num_frames, cfg.image_size, cfg.image_size, 3)
  assert batch['video'].dtype == np.uint8
  assert batch['audio'].shape == (3, cfg.spectrogram_length, cfg.num_mel_bins)
  assert batch['audio_times'].shape == (3, cfg.num_frames // cfg.tubelet_size + 1, 2)
  assert set(benchmark.synthetic_batch(load_config('cast_ek100', 'tiny').model, 1)) == {
      'video', 'verb', 'noun'}


def _torch_outputs(cfg, attention, device):
  torch.manual_seed(0)
  model = torch_model.build(cfg, attention).to(device)
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0.0, 0.2)
    inputs = {k: torch.from_numpy(v).to(device) for k, v in benchmark.synthetic_batch(cfg, 2).items()}
    video = (inputs['video'].float() / 255.0).permute(0, 4, 1, 2, 3)
    return model(video=video, audio=inputs['audio'], audio_times=inputs['audio_times'])


def test_torch_model_refuses_an_unknown_attention():
  with pytest.raises(ValueError, match="attention='flash': expected one of"):
    torch_model.build(load_config('cast_k400', 'tiny').model, 'flash')


def test_torch_sdpa_matches_eager():
  cfg = load_config('ca2st_vggsound', 'tiny').model
  eager = _torch_outputs(cfg, 'eager', 'cpu')['label']
  sdpa = _torch_outputs(cfg, 'sdpa', 'cpu')['label']
  torch.testing.assert_close(sdpa, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_torch_sdpa_matches_eager_on_gpu():
  cfg = load_config('ca2st_vggsound', 'tiny').model
  with torch.autocast('cuda', dtype=torch.float16):
    eager = _torch_outputs(cfg, 'eager', 'cuda')['label'].float()
    sdpa = _torch_outputs(cfg, 'sdpa', 'cuda')['label'].float()
  torch.testing.assert_close(sdpa, eager, rtol=2e-2, atol=2e-2)
