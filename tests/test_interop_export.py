"""tools/export_torch: the command line, dtypes/formats, and export from a training workdir."""
import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from flax import nnx

from ca2st_jax import models
from ca2st_jax.interop import torch_model
from ca2st_jax.interop import torch_import
from ca2st_jax.tools import export_torch
from tests_helpers import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_command_line_writes_a_strict_loadable_state_dict(tmp_path):
  out = str(tmp_path / 'ca2st.pth')
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  r = subprocess.run(
      [sys.executable, '-m', 'ca2st_jax.tools.export_torch', '--config=configs/ca2st_vggsound.py:tiny',
       '--config.model.audio_exchange_start=1', f'--output={out}'],
      cwd=REPO, env=env, capture_output=True, text=True, check=False)
  assert r.returncode == 0, r.stderr[-3000:]
  sd = torch.load(out, weights_only=True)
  cfg = load_config('ca2st_vggsound', 'tiny').model
  cfg.audio_exchange_start = 1
  model = torch_model.build(cfg)
  model.load_state_dict(sd, strict=True)
  assert list(sd) == list(model.state_dict())
  assert all(v.dtype == torch.float32 for v in sd.values())
  # Shared CA²ST projections: one tensor under every reference name.
  a, b = sd['blocks.1.s_t_b_cast.cross_l_down.weight'], sd['blocks.1.s_audio_b_cast.cross_l_down.weight']
  assert a.data_ptr() == b.data_ptr()

  r = subprocess.run([sys.executable, '-m', 'ca2st_jax.tools.export_torch',
                      '--config=configs/cast_k400.py:tiny', f'--output={tmp_path / "x.onnx"}'],
                     cwd=REPO, env=env, capture_output=True, text=True, check=False)
  assert r.returncode != 0 and '.safetensors' in r.stderr


@pytest.mark.parametrize('dtype', ['float16', 'bfloat16'])
def test_safetensors_in_half_precision_round_trips(tmp_path, dtype):
  config = load_config('cava_vggsound', 'tiny')
  out = str(tmp_path / 'cava.safetensors')
  arrays = export_torch.export(config, out, dtype=dtype)
  from safetensors.torch import load_file  # pylint: disable=import-outside-toplevel
  sd = load_file(out)
  assert set(sd) == set(arrays)  # safetensors keeps its own (sorted) order
  assert all(v.dtype == getattr(torch, dtype) for v in sd.values())
  model = models.build(config.model, rngs=nnx.Rngs(params=5, dropout=6))
  torch_import.import_checkpoint(model, config.model, out)
  back = export_torch.export_arrays(model, config.model)
  for k, v in arrays.items():
    np.testing.assert_array_equal(back[k], sd[k].float().numpy(), err_msg=k)
    np.testing.assert_allclose(back[k], v, rtol=1e-2, atol=1e-2 * (np.abs(v).max() + 1e-6))
  # The PyTorch model reads the same file (strict).
  tmodel = torch_model.from_checkpoint(out, config.model)
  np.testing.assert_array_equal(tmodel.head.weight.detach().numpy(), sd['head.weight'].float().numpy())


def _demo_checkpoint(workdir, head=None):
  """The demo config's setup and a step-3 checkpoint in `workdir` unlike any fresh init (and
  cheap to make): every weight 0.5, the head `head` if given."""
  trainer = pytest.importorskip('ca2st_jax.train.trainer')
  import jax  # pylint: disable=import-outside-toplevel
  config = load_config('demo')
  config.ckpt['async'] = False
  setup = trainer.build_setup(config)
  fill = lambda tree, shardings: jax.tree.map(
      lambda a, sh: jax.device_put(np.full(a.shape, 0.5, a.dtype), sh), tree, shardings)
  state = fill(setup.abstract_state, setup.state_shardings)
  frozen = fill(setup.abstract_frozen, setup.frozen_shardings)
  if head is not None:
    kernel = state['params']['head']['kernel']
    state['params']['head']['kernel'] = kernel.replace(
        jax.device_put(np.full(kernel.shape, head, np.float32), kernel.get_value().sharding))
  ckpt = trainer.checkpointer(config, str(workdir), setup)
  ckpt.save(3, state, frozen, {}, {})
  ckpt.wait()
  ckpt.close()
  return config, setup


def test_export_from_a_training_workdir(tmp_path):
  config, setup = _demo_checkpoint(tmp_path, head=0.25)
  out = str(tmp_path / 'model_torch.pt')

  def initialise():
    raise AssertionError('the demo trains every parameter: nothing frozen to rebuild by init')

  setup = dataclasses.replace(setup, init_fn=initialise)
  arrays = export_torch.export(config, out, workdir=str(tmp_path), setup=setup)
  sd = torch.load(out, weights_only=True)
  assert np.all(sd['head.weight'].numpy() == 0.25)
  assert np.all(sd['blocks.0.clip_attn.in_proj_weight'].numpy() == 0.5)  # a frozen expert weight
  torch_model.build(config.model).load_state_dict(sd, strict=True)
  assert set(arrays) == set(sd)
  with pytest.raises(FileNotFoundError, match='no checkpoint'):
    export_torch.export(config, str(tmp_path / 'y.pth'), workdir=str(tmp_path / 'empty'))


@pytest.mark.slow
def test_workdir_of_another_config_and_a_missing_output_folder(tmp_path):
  config, setup = _demo_checkpoint(tmp_path)
  (tmp_path / 'config.json').write_text(config.to_json_best_effort())
  other = load_config('cast_k400', 'tiny')
  other.train.batch_size = 8    # divisible by the 8 test devices
  with pytest.raises(ValueError, match=r"(?s)step 3 does not hold the model of --config.*"
                     r"config\.model\.name: workdir has 'ca2st', --config 'cast'"):
    export_torch.export(other, str(tmp_path / 'x.pth'), workdir=str(tmp_path))   # was KeyError
  out = tmp_path / 'new' / 'folder' / 'x.pth'                  # was RuntimeError from torch.save
  export_torch.export(config, str(out), workdir=str(tmp_path), setup=setup)
  torch_model.build(config.model).load_state_dict(torch.load(out, weights_only=True), strict=True)
