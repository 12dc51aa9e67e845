"""Each command line's ordinary mistakes: one line on stderr naming the thing and the fix, a
non-zero exit, no traceback. The entry points run in this process (`python -m` through runpy),
before any model is built; one subprocess per command line checks the real start-up."""
import os
import subprocess
import sys

import pytest

from tests_helpers import ROOT

# runpy re-runs modules a test already imported; that is what it is asked to do here.
pytestmark = pytest.mark.filterwarnings('ignore:.*found in sys.modules:RuntimeWarning')


CONFIG_MISSING = ("error: --config=configs/nope.py: no such file 'configs/nope.py' (the configs "
                  "are in configs/, e.g. --config=configs/demo.py)\n")


@pytest.mark.parametrize('args,message', [
    (['--config=configs/nope.py'], CONFIG_MISSING),
    ([], 'error: flag --config=None: Flag --config must have a value other than None.\n'),
    (['--config=configs/demo.py', '--mode=evaluate'],
     'error: flag --mode=evaluate: value should be one of <train|eval|train_and_eval>\n'),
    (['--config=configs/demo.py', '--workdr=/tmp/x'],
     "error: Unknown command line flag 'workdr'. Did you mean: workdir ?\n"),
    (['--config=configs/demo.py', '--config.train.batchsize=3'],
     "error: --config.train.batchsize: the config has no field 'batchsize' (did you mean "
     "'batch_size'?)\n"),
    (['--config=configs/demo.py', '--config.trainx.batch_size=3'],
     "error: --config.trainx.batch_size: the config has no field 'trainx' (did you mean "
     "'train'?)\n"),
    (['--config=configs/demo.py', '--config.train.no_such_field=3'],
     "error: --config.train.no_such_field: the config has no field 'no_such_field' (see the "
     "config file for its fields)\n"),
    (['--config=configs/demo.py', '--config.train.batch_size=abc'],
     "error: flag --config.train.batch_size=abc: invalid literal for int() with base 10: 'abc'\n"),
    (['--config=configs/cast_k400.py:huge'],
     "error: flag --config=configs/cast_k400.py:huge: Error whilst parsing config file: "
     "ValueError: unknown config variant 'huge'; expected one of ('tiny',) or none\n"),
    (['--config=configs/demo.py', 'extra'],
     "error: unexpected arguments ['extra'] (flags are --name=value)\n"),
])
def test_main_flag_mistakes(run_cli, args, message):
  code, out, err = run_cli('ca2st_jax.main', *args)
  assert (code, out, err) == (2, '', message)


def test_main_data_that_is_not_there(run_cli, tmp_path):
  code, _, err = run_cli('ca2st_jax.main', '--config=configs/cast_k400.py:tiny',
                         f'--config.data.dataset_dir={tmp_path}', f'--workdir={tmp_path}')
  assert (code, err) == (2, f'error: config.data.dataset_dir={tmp_path}: no prepared data set '
                            'there (no dataset_info.json); give the directory the builder wrote '
                            '(python -m ca2st_jax.data.builders NAME --manual_dir=RAW '
                            '--data_dir=OUT prints it)\n')
  code, _, err = run_cli('ca2st_jax.main', '--config=configs/cast_k400.py:tiny',
                         f'--config.data.data_dir={tmp_path}', f'--workdir={tmp_path}')
  assert (code, err) == (2, f"error: config.data.name='kinetics400': not prepared under "
                            f'{tmp_path} (no dataset_info.json under {tmp_path}/kinetics400); '
                            'build it with python -m ca2st_jax.data.builders kinetics400 '
                            f'--manual_dir=RAW --data_dir={tmp_path}, or set '
                            '--config.data.dataset_dir=DIR\n')
  assert os.listdir(tmp_path) == []   # nothing written: the run stopped before the trainer


def test_predict_mistakes(run_cli, tmp_path):
  notes = tmp_path / 'notes.txt'
  notes.write_text('not a video\n')
  workdir = tmp_path / 'wd'
  workdir.mkdir()
  base = ['--config=configs/demo.py', f'--checkpoint={workdir}']
  cases = [
      (base + [str(tmp_path / 'missing.mp4')], 2,
       f'error: no such file: {tmp_path / "missing.mp4"}\n'),
      (base + [str(notes)], 1,
       f'error: {notes}: not a video PyAV can read (Invalid data found when processing input)\n'),
      (base + [str(tmp_path / 'wd')], 2,
       f'error: no video files in {workdir} (name files or directories holding .mp4 / .webm / '
       '.avi / .mkv / .mov / .flv / .m4v files)\n'),
      (['--config=configs/demo.py', '--checkpoint=model.onnx', str(notes)], 2,
       'error: --checkpoint=model.onnx: not a directory (training workdir) nor a .pth / .pt / '
       '.bin / .safetensors file\n'),
      (['--config=configs/demo.py', f'--checkpoint={tmp_path / "m.pth"}', str(notes)], 2,
       f'error: --checkpoint={tmp_path / "m.pth"}: no such file\n'),
      (base + ['--labels=classes.txt', str(notes)], 2,
       'error: --labels=classes.txt: no such file (JSON {"label": [...]} or one class name a '
       'line)\n'),
      (base + ['--segments', '--window=1', '--stride=2', str(notes)], 2,
       'error: --stride=2.0 is longer than --window=1.0: the windows would leave gaps\n'),
      (['--config=configs/nope.py', f'--checkpoint={workdir}', str(notes)], 2, CONFIG_MISSING),
  ]
  for args, want_code, message in cases:
    code, out, err = run_cli('ca2st_jax.predict', *args)
    assert (code, out, err) == (want_code, '', message), args


def test_export_torch_mistakes(run_cli, monkeypatch, tmp_path):
  code, _, err = run_cli('ca2st_jax.tools.export_torch', '--config=configs/cast_k400.py:tiny',
                         f'--output={tmp_path / "x.onnx"}')
  assert (code, err) == (2, f'error: --output={tmp_path / "x.onnx"}: the name must end in .pth '
                            '/ .pt / .bin / .safetensors\n')
  code, _, err = run_cli('ca2st_jax.tools.export_torch', '--config=configs/cast_k400.py:tiny',
                         f'--output={tmp_path / "x.pth"}', f'--workdir={tmp_path}')
  assert (code, err) == (2, f'error: --workdir={tmp_path}: no checkpoints there (no ckpt/ '
                            'directory); give the --workdir of a training run\n')
  import importlib.util  # pylint: disable=import-outside-toplevel
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'torch' else find_spec(name, *a))
  code, out, err = run_cli('ca2st_jax.tools.export_torch', '--config=configs/cast_k400.py:tiny',
                           f'--output={tmp_path / "x.pth"}')
  assert (code, out, err) == (2, '', "error: export_torch needs the reference model: PyTorch is "
                                     "not installed: pip install torch==2.13.0 && pip install -e "
                                     "'.[torch]'\n")
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('module,args', [
    ('ca2st_jax.tools.summary', []),
    ('ca2st_jax.tools.aot', ['--topology=v5e-4']),
    ('ca2st_jax.tools.benchmark', []),
    ('ca2st_jax.tools.export_torch', ['--output=x.pth']),
])
def test_tools_name_a_missing_config_file(run_cli, module, args):
  assert run_cli(module, '--config=configs/nope.py', *args) == (2, '', CONFIG_MISSING)


def test_tools_flag_mistakes(run_cli):
  assert run_cli('ca2st_jax.tools.summary', '--config=configs/demo.py', '--jsn') == (
      2, '', "error: Unknown command line flag 'jsn'. Did you mean: json ?\n")
  assert run_cli('ca2st_jax.tools.benchmark', '--report=missing.jsonl') == (
      2, '', 'error: --report=missing.jsonl: no such file (a --json output of this tool)\n')
  assert run_cli('ca2st_jax.tools.benchmark', '--config=configs/demo.py',
                 '--torch_attention=flash') == (
      2, '', "error: --torch_attention: ['flash'] not in eager, sdpa\n")
  assert run_cli('ca2st_jax.tools.aot', '--config=configs/demo.py') == (
      2, '', 'error: flag --topology=None: Flag --topology must have a value other than None.\n')


def test_builders_mistakes(capsys, tmp_path):
  from ca2st_jax.data.builders import __main__ as build  # pylint: disable=import-outside-toplevel
  raw, out = tmp_path / 'raw', f'--data_dir={tmp_path / "out"}'

  def run(*args):
    with pytest.raises(SystemExit) as e:
      build.main(list(args))
    return e.value.code, capsys.readouterr().err

  assert run('vggsound', f'--manual_dir={raw}', out) == (
      2, f'error: --manual_dir={raw}: no such directory, or it is empty (put the vggsound files '
         'there as downloaded)\n')
  raw.mkdir()
  (raw / 'readme.txt').write_text('the videos go here\n')
  assert run('ucf101', f'--manual_dir={raw}', out) == (
      2, "error: argument name: invalid choice: 'ucf101' (choose from 'activitynet', 'ek100', "
         "'epic_sounds', 'kinetics400', 'kinetics_sounds', 'ssv2', 'ucf101_av', 'vggsound') "
         '(see --help)\n')
  assert run('vggsound', out) == (
      2, 'error: the following arguments are required: --manual_dir (see --help)\n')
  assert run('ucf101_av', f'--manual_dir={raw}', out, '--config=split9') == (
      2, 'error: unknown --config=split9 for ucf101_av; valid: split1, split2, split3 '
         '(see --help)\n')
  assert run('vggsound', f'--manual_dir={raw}', out) == (
      1, f"error: vggsound: none of ('vggsound.csv',) found under {raw}\n")


def _python_m(*args, **kw):
  return subprocess.run([sys.executable, '-m', *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)), check=False,
                        **kw)


def test_main_starts_without_jax_for_a_mistake():
  r = _python_m('ca2st_jax.main', '--config=configs/nope.py', '--workdir=/nonexistent/wd')
  assert (r.returncode, r.stdout, r.stderr) == (2, '', CONFIG_MISSING)


def test_summary_prints_its_table_and_no_backend_noise():
  env = {k: v for k, v in os.environ.items() if k not in ('JAX_PLATFORMS', 'XLA_FLAGS')}
  r = subprocess.run([sys.executable, '-m', 'ca2st_jax.tools.summary', '--config=configs/demo.py'],
                     cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
                     env=dict(env, PYTHONPATH=str(ROOT)))
  assert r.returncode == 0 and r.stderr == '', r.stderr
  assert r.stdout.startswith('ca2st: ') and ' parameters, ' in r.stdout, r.stdout


@pytest.mark.parametrize('env,libtpu,tpu,cuda,want', [
    ({}, True, False, False, 'cpu'),
    ({}, True, False, True, 'cuda,cpu'),
    ({}, True, True, False, None),            # a TPU host: JAX starts libtpu as usual
    ({}, False, False, False, None),          # no libtpu, no noise
    ({'JAX_PLATFORMS': 'tpu'}, True, False, False, 'tpu'),  # the user's choice stands
])
def test_skip_absent_tpu(monkeypatch, env, libtpu, tpu, cuda, want):
  from ca2st_jax import cli
  monkeypatch.delenv('JAX_PLATFORMS', raising=False)
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  installed = {'libtpu': libtpu, 'jax_cuda12_plugin': cuda}
  monkeypatch.setattr(cli.importlib.util, 'find_spec', lambda name: installed.get(name) or None)
  monkeypatch.setattr(cli, '_has_tpu', lambda: tpu)
  monkeypatch.setattr(cli.os.path, 'exists', lambda path: cuda and path == '/dev/nvidiactl')
  chosen = []
  monkeypatch.setattr(cli, '_set_platforms', chosen.append)
  cli.skip_absent_tpu()
  assert (chosen[0] if chosen else os.environ.get('JAX_PLATFORMS')) == want
