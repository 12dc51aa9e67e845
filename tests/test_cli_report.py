"""ca2st_jax.report, the after-training step of ca2st_jax.main: report.png with a confusion matrix
over videos, the PyTorch export written in this process, the predict command; on a two-step
demo run over a tiny synthetic set."""
import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from ca2st_jax import report
from ca2st_jax.checkpoints import labels as labels_lib
from ca2st_jax.data import synthetic
from tests_helpers import load_config

# A short demo run through the real pipeline, once, on one worker (--dist loadgroup).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group('test_cli_report')]


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
  """(config, workdir) of the demo config trained two steps on 16 clips and evaluated on 8 videos
  of 2 views each."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ca2st_jax.train import trainer  # pylint: disable=import-outside-toplevel
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  root = tmp_path_factory.mktemp('demo_run')
  config = load_config('demo')
  config.data.update(data_dir=str(root / 'data'), num_workers=0, eval_batch_size=8)
  config.data.synthetic.update(num_train=16, num_test=8)
  config.train.update(batch_size=8, total_steps=2, warmup_steps=1, log_every=1, eval_every=0,
                      ckpt_every=2)
  config.ckpt['async'] = False
  workdir = str(root / 'wd')
  result = trainer.train_and_evaluate(config, workdir, 'train_and_eval', devices=jax.devices()[:1])
  assert result['num_videos'] == 8
  return config, workdir


def test_demo_batches_show_each_factor_of_the_label(demo_run):
  """The demo's task through the real pipeline (after the .mp4 and JPEG round trips): balanced
  classes, the model's input shapes, and each factor of the label visible in what the model gets."""
  from ca2st_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  config, _ = demo_run
  source = pipeline.Source(config)
  names = source.class_names()['label']
  split, _ = pipeline.open_split(source.dir, 'train')
  labels = [split[i]['label'] for i in range(len(split))]
  assert np.bincount(labels, minlength=8).tolist() == [2] * 8
  m = config.model
  batch = next(source.train_iterator())
  assert batch['video'].shape == (8, m.num_frames, m.image_size, m.image_size, 3)
  assert batch['audio'].shape == (8, m.spectrogram_length, m.num_mel_bins)
  for video, spec, label in zip(batch['video'], batch['audio'], batch['label']):
    _, direction, tone = names[label].split()
    gray = video.astype(np.float32).sum(-1)  # [F, H, W]; the shape is brighter than any background
    bright = gray > 0.5 * (gray.max(axis=(1, 2), keepdims=True) + np.median(gray, axis=(1, 2),
                                                                             keepdims=True))
    x = [np.nonzero(b)[1].mean() for b in bright]
    moved = x[-1] - x[0]
    assert (moved > 8) if direction == 'rightward' else (moved < -8), (names[label], x)
    peak = int(np.argmax(spec.mean(axis=0)))  # mel bin of the tone: ~4 for 300 Hz, ~13 for 1200 Hz
    assert (peak < 8) if tone == 'low' else (peak >= 8), (names[label], peak)


def test_demo_run_logs_and_evaluates_videos(demo_run):
  _, workdir = demo_run
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    lines = [json.loads(l) for l in f]
  assert [l['split'] for l in lines] == ['train', 'train', 'val']
  val = lines[-1]
  # per-video accuracies of 8 videos: whole hits; top-5 finds at least what top-1 does
  assert val['top1'] * 8 == pytest.approx(round(val['top1'] * 8)) and val['top5'] >= val['top1']


def test_confusion_matrix_counts_videos(demo_run):
  _, workdir = demo_run
  cm = np.load(os.path.join(workdir, 'confusion_matrix.npy'))
  assert cm.shape == (8, 8) and cm.sum() == 8      # 8 videos, not their 16 views
  assert report.class_names(workdir, 8) == sorted(synthetic.CLASSES)
  assert report.class_names(workdir, 3) == ['0', '1', '2']   # names that do not fit: indices


def test_post_step_writes_the_report_the_export_and_a_command(demo_run, capsys):
  torch = pytest.importorskip('torch')  # the [torch] extra
  config, workdir = demo_run
  report.run_post(config, workdir, ['--config=configs/demo.py'])
  lines = capsys.readouterr().out.splitlines()
  assert f'report: {workdir}/report.png' in lines
  assert f'PyTorch export: {workdir}/model_torch.pt' in lines
  assert lines[-2] == 'Predict on one of its clips:'
  assert lines[-1].startswith('  python -m ca2st_jax.predict --config=configs/demo.py '
                              f'--checkpoint={workdir} ')
  assert os.path.exists(lines[-1].split()[-1])
  from PIL import Image  # pylint: disable=import-outside-toplevel
  with Image.open(os.path.join(workdir, 'report.png')) as im:
    assert im.size[0] > im.size[1]
  state_dict = torch.load(os.path.join(workdir, 'model_torch.pt'), weights_only=True)
  from ca2st_jax.interop import torch_model  # pylint: disable=import-outside-toplevel
  torch_model.build(config.model).load_state_dict(state_dict, strict=True)
  assert labels_lib.read(os.path.join(workdir, 'model_torch.labels.json')) == {
      'label': sorted(synthetic.CLASSES)}


def test_export_without_torch_says_so_in_one_line(demo_run, capsys, monkeypatch, tmp_path):
  config, _ = demo_run
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'torch' else find_spec(name, *a))
  assert report.export_torch(config, str(tmp_path)) is None
  assert capsys.readouterr().out == ("PyTorch export skipped: PyTorch is not installed: pip "
                                     "install torch==2.13.0 && pip install -e '.[torch]'\n")
  assert os.listdir(tmp_path) == []
