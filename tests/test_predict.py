"""ca2st_jax.predict on files these tests write with PyAV, with a demo-like model the real trainer
trained briefly on its own synthetic clips (CPU: one train compile, a few predict compiles)."""
import csv
import fractions
import json
import os
import subprocess
import sys

import av
import jax
import numpy as np
import pytest
from flax import nnx

from ca2st_jax import models, predict
from ca2st_jax.checkpoints import labels as labels_lib
from ca2st_jax.data import decode, synthetic
from tests_helpers import ROOT, load_config

TRAIN_STEPS = 200
SPEC = synthetic.SyntheticSpec(num_train=16, num_test=8, num_frames=32, size=48, fps=16)
CLASSES = sorted(synthetic.CLASSES)   # the builder's label order


def demo_config(data_dir=''):
  config = load_config('demo')
  # No random crop: the brief training then sees the view that prediction takes.
  config.data.update(data_dir=data_dir, num_workers=0, eval_batch_size=8, crop_scale=(1.0, 1.0))
  config.data.synthetic.update(num_train=SPEC.num_train, num_test=SPEC.num_test)
  config.train.update(batch_size=8, total_steps=TRAIN_STEPS, warmup_steps=10, log_every=50,
                      eval_every=0, ckpt_every=TRAIN_STEPS, label_smoothing=0.0)
  config.optim.lr = 3e-3
  config.ckpt['async'] = False
  return config


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """(config, workdir, [(training clip, class name)]) of a demo model trained TRAIN_STEPS steps on
  16 synthetic clips (two per class)."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ca2st_jax.train import trainer  # pylint: disable=import-outside-toplevel
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  root = tmp_path_factory.mktemp('trained')
  config = demo_config(str(root / 'data'))
  workdir = str(root / 'wd')
  trainer.train_and_evaluate(config, workdir, 'train', devices=jax.devices()[:1])
  raw = synthetic.raw_dir(root / 'data' / 'synthetic_av',
                         synthetic.SyntheticSpec(**dict(config.data.synthetic)))
  rows = list(csv.reader(open(raw / 'vggsound.csv')))
  clips = [(str(raw / 'clips' / f'{r[0]}_000000.mp4'), r[2]) for r in rows if r[3] == 'train']
  return config, workdir, clips


def _write_vfr_with_offset(path, times, offset=0.0):
  """H.264 frames shown at `offset + times` seconds (a variable frame rate), no audio."""
  with av.open(str(path), 'w') as out:
    vs = out.add_stream('libx264', rate=25)
    vs.width, vs.height, vs.pix_fmt = 48, 48, 'yuv420p'
    vs.time_base = fractions.Fraction(1, 1000)
    vs.options = {'preset': 'ultrafast'}
    for i, t in enumerate(times):
      f = av.VideoFrame.from_ndarray(np.full((48, 48, 3), 5 * i, np.uint8), format='rgb24')
      f.pts, f.time_base = int(round((offset + t) * 1000)), vs.time_base
      for p in vs.encode(f):
        out.mux(p)
    for p in vs.encode():
      out.mux(p)


VFR_TIMES = list(np.arange(25) / 25) + list(1.0 + np.arange(25) / 12.5)   # 3.0 s


@pytest.fixture(scope='module')
def videos(tmp_path_factory):
  """{name: path} of the files predict is run on, and the class each one shows."""
  d = tmp_path_factory.mktemp('videos')
  rng = np.random.default_rng(7)
  out, shown = {}, {}
  for name, label in (('clip.mp4', 0), ('clip.webm', 5), ('clip.avi', 3)):
    frames, wave = synthetic.render_clip(label, rng, SPEC)
    decode.write_video(str(d / name), frames, SPEC.fps, wave, SPEC.audio_rate)
    out[name], shown[name] = str(d / name), synthetic.CLASSES[label]
  frames, _ = synthetic.render_clip(2, rng, SPEC)
  decode.write_video(str(d / 'silent.mp4'), frames, SPEC.fps)
  frames, wave = synthetic.render_clip(6, rng, SPEC)
  decode.write_video(str(d / 'short.mp4'), frames[:6], SPEC.fps, wave[:6000], SPEC.audio_rate)
  _write_vfr_with_offset(d / 'vfr.mkv', VFR_TIMES)
  (d / 'corrupt.mp4').write_bytes(b'\x00\x00\x00\x18ftypmp42' + b'x' * 4000)
  for name in ('silent.mp4', 'short.mp4', 'vfr.mkv', 'corrupt.mp4'):
    out[name] = str(d / name)
  return out, shown


def test_windows_cover_the_whole_duration():
  for duration, window, stride in ((10.0, 4.0, 2.0), (10.3, 4.0, 3.0), (0.3, 4.0, 2.0),
                                   (4.0, 4.0, 1.0), (7.0, 2.5, 2.5)):
    ws = predict.windows(duration, window, stride)
    assert ws[0][0] == 0.0 and abs(ws[-1][1] - duration) < 1e-9
    for (s0, e0), (s1, _) in zip(ws, ws[1:]):
      assert s1 <= e0 + 1e-9, (duration, window, stride, ws)   # no gap
    assert all(e - s <= window + 1e-9 for s, e in ws)
  with pytest.raises(ValueError, match='--window'):
    predict.windows(3.0, 0.0, 1.0)
  with pytest.raises(ValueError, match='gaps'):
    predict.windows(7.0, 2.0, 2.5)


def test_fused_feature_is_what_the_head_reads():
  # CA²ST (the demo's model): the sum of all three experts' last adapters.
  cfg = load_config('demo').model
  model = models.build(cfg, rngs=nnx.Rngs(0))
  # Non-zero everywhere (several fc2 layers start at zero).
  state = nnx.state(model, nnx.Param)
  leaves, treedef = jax.tree.flatten(state)
  rng = np.random.default_rng(0)
  nnx.update(model, jax.tree.unflatten(
      treedef, [rng.normal(0, 0.05, x.shape).astype(x.dtype) for x in leaves]))
  inputs = {'video': rng.normal(size=(2, cfg.num_frames, cfg.image_size, cfg.image_size, 3)
                                ).astype(np.float32)}
  inputs['audio'] = rng.normal(size=(2, cfg.spectrogram_length, cfg.num_mel_bins)).astype(
      np.float32)
  inputs['audio_times'] = np.tile(np.linspace(0, 2, 2 + cfg.num_frames, dtype=np.float32)
                                  .reshape(1, -1, 2), (2, 1, 1))
  feats = predict.pooled_features(model, inputs)
  assert set(feats) == {'spatial', 'temporal', 'audio', 'fused'}
  np.testing.assert_allclose(model.head(feats['fused']), model(**inputs)['label'], rtol=1e-5,
                             atol=1e-5)


@pytest.mark.slow
def test_trained_model_gets_its_own_clips_right(trained):
  config, workdir, clips = trained
  # The trainer recorded the builder's class names in the workdir; predict finds them there.
  assert labels_lib.read(os.path.join(workdir, 'labels.json')) == {'label': CLASSES}
  model, names = predict.load_model(config, workdir)
  assert names == {'label': CLASSES}
  records, _, failed = predict.predict(config, model, names, [p for p, _ in clips],
                                       predict.Options(top_k=3, batch_size=8))
  assert not failed
  got = [r['predictions'][0]['label'] for r in records]
  assert got == [c for _, c in clips], list(zip(got, [c for _, c in clips]))


@pytest.mark.slow
def test_export_carries_its_labels_and_predicts_the_same(trained, tmp_path):
  torch = pytest.importorskip('torch')  # the [torch] extra
  del torch
  from ca2st_jax.tools import export_torch  # pylint: disable=import-outside-toplevel
  config, workdir, clips = trained
  out = tmp_path / 'model.safetensors'
  export_torch.export(config, str(out), workdir=workdir)
  assert labels_lib.read(tmp_path / 'model.labels.json') == {'label': CLASSES}
  options = predict.Options(top_k=8, batch_size=8)
  results = []
  for checkpoint in (workdir, str(out)):
    model, names = predict.load_model(config, checkpoint)
    assert names == {'label': CLASSES}
    records, _, _ = predict.predict(config, model, names, [clips[0][0]], options)
    results.append({p['label']: p['prob'] for p in records[0]['predictions']})
  assert results[0].keys() == results[1].keys()
  for k in results[0]:
    assert abs(results[0][k] - results[1][k]) < 1e-5


@pytest.mark.slow
def test_command_line_on_every_kind_of_file(trained, videos, tmp_path):
  _, workdir, _ = trained
  paths, _ = videos
  out_json, out_npz = tmp_path / 'out.jsonl', tmp_path / 'feats.npz'
  order = ['clip.mp4', 'clip.webm', 'clip.avi', 'silent.mp4', 'vfr.mkv', 'short.mp4', 'corrupt.mp4']
  r = subprocess.run(
      [sys.executable, '-m', 'ca2st_jax.predict', '--config=configs/demo.py',
       f'--checkpoint={workdir}', f'--json={out_json}', f'--features={out_npz}', '--top_k=3',
       '--segments', '--window=1.0', '--stride=0.5', *[paths[n] for n in order]],
      cwd=ROOT, capture_output=True, text=True, check=False, timeout=600)
  assert r.returncode == 1, r.stderr[-3000:]       # one file could not be decoded
  assert f'error: {paths["corrupt.mp4"]}: cannot decode' in r.stderr
  assert f'1 of 7 files could not be decoded: {paths["corrupt.mp4"]}' in r.stderr
  assert '[7/7]' in r.stderr and 'ETA' in r.stderr
  assert 'warning: no audio track: predicted with silence' in r.stdout

  records = [json.loads(line) for line in out_json.read_text().splitlines()]
  assert [rec['path'] for rec in records] == [paths[n] for n in order[:-1]]
  by_name = dict(zip(order, records))
  expected = {  # duration (s), has audio
      'clip.mp4': (2.0, True), 'clip.webm': (2.0, True), 'clip.avi': (2.0, True),
      'silent.mp4': (2.0, False), 'vfr.mkv': (3.0, False), 'short.mp4': (0.375, True)}
  for name, rec in by_name.items():
    duration, has_audio = expected[name]
    assert set(rec) >= {'path', 'duration_s', 'start_time_s', 'has_audio', 'num_views',
                        'predictions', 'segments'}, rec.keys()
    # AVI's MPEG-4 stream carries two frames of encoder delay in its timestamps.
    assert abs(rec['duration_s'] - duration) <= (0.13 if name == 'clip.avi' else 0.07), (name, rec)
    assert rec['has_audio'] is has_audio, name
    assert ('warnings' in rec) is (not has_audio), name
    assert rec['num_views'] == 2          # demo: 2 clips x 1 crop
    preds = rec['predictions']
    assert len(preds) == 3
    assert [p['prob'] for p in preds] == sorted([p['prob'] for p in preds], reverse=True)
    for p in preds:
      assert set(p) == {'label', 'index', 'prob'}
      assert CLASSES[p['index']] == p['label'] and 0.0 <= p['prob'] <= 1.0
    assert sum(p['prob'] for p in preds) <= 1.0 + 1e-5
    segs = rec['segments']
    assert segs[0]['start_s'] == 0.0 and abs(segs[-1]['end_s'] - rec['duration_s']) < 1e-3
    for a, b in zip(segs, segs[1:]):
      assert b['start_s'] <= a['end_s'] and a['start_s'] < b['start_s']
    assert all(s['end_s'] - s['start_s'] <= 1.0 + 1e-6 for s in segs)
    assert all(len(s['predictions']) == 3 and s['has_audio'] is has_audio for s in segs)
  assert len(by_name['short.mp4']['segments']) == 1

  feats = np.load(out_npz)
  assert list(feats['path']) == [paths[n] for n in order[:-1]]
  for k in ('spatial', 'temporal', 'audio', 'fused'):
    assert feats[k].shape == (6, 32) and np.all(np.isfinite(feats[k]))
  num_windows = sum(len(rec['segments']) for rec in records)
  for k in ('window_spatial', 'window_temporal', 'window_audio', 'window_fused'):
    assert feats[k].shape == (num_windows, 32)
  starts = [s['start_s'] for rec in records for s in rec['segments']]
  np.testing.assert_allclose(feats['window_start_s'], starts, atol=1e-4)
  assert list(np.bincount(feats['window_file'])) == [len(rec['segments']) for rec in records]

  from PIL import Image  # pylint: disable=import-outside-toplevel
  with Image.open(tmp_path / 'timeline.png') as im:   # beside --json
    assert im.size[1] > im.size[0] / 2                 # one panel per file


def test_start_time_and_variable_frame_rate_map_to_the_right_seconds(tmp_path):
  path = tmp_path / 'late.mkv'
  _write_vfr_with_offset(path, VFR_TIMES, offset=1.5)
  decoded = predict.decode_file(str(path), 256, 16000, True)
  # The first frame's time on the file's clock (the H.264 writer moves the stamps by up to 20 ms).
  assert abs(decoded.start_time - 1.5) <= 0.03
  assert abs(decoded.duration - 3.0) < 0.1         # seconds from the first frame
  fps = float(decoded.record['fps'])
  # A window's frames are the ones shown in its seconds (frame i has brightness 5 i).
  part = predict.cut(decoded.record, 2.0, 2.5)
  shown = [VFR_TIMES[int(round(np.asarray(im).mean() / 5))]
           for im in decode.decode_jpegs(part['frames'])]
  assert all(2.0 - 1 / fps - 1e-6 <= t < 2.5 + 1e-6 for t in shown), shown


def test_demo_ends_with_a_predict_command_on_its_own_clip(tmp_path):
  from ca2st_jax.train import report  # pylint: disable=import-outside-toplevel
  config = demo_config(str(tmp_path))
  config.data.synthetic.update(num_train=0, num_test=1)
  raw = synthetic.write_raw(
      synthetic.raw_dir(tmp_path / 'synthetic_av', synthetic.SyntheticSpec(
          **dict(config.data.synthetic))),
      synthetic.SyntheticSpec(**dict(config.data.synthetic)))
  command = report.predict_command(config, '/tmp/wd', ['--config=configs/demo.py'])
  clip = str(raw / 'clips' / 'syntest00000_000000.mp4')
  assert command == ('python -m ca2st_jax.predict --config=configs/demo.py --checkpoint=/tmp/wd '
                     + clip)
  assert os.path.exists(clip)
  assert load_config('demo').post.predict_command


def test_compositional_records_have_verb_noun_and_action():
  verb, noun = np.array([0.1, 0.7, 0.2]), np.array([0.5, 0.1, 0.4])
  names = {'verb': ['take', 'put', 'open'], 'noun': ['cup', 'door', 'knife']}
  rec = predict.predictions({'verb': verb, 'noun': noun}, names, 2)
  assert set(rec) == {'verb', 'noun', 'action'}
  assert rec['verb'] == [{'label': 'put', 'index': 1, 'prob': 0.7},
                         {'label': 'open', 'index': 2, 'prob': 0.2}]
  assert rec['noun'] == [{'label': 'cup', 'index': 0, 'prob': 0.5},
                         {'label': 'knife', 'index': 2, 'prob': 0.4}]
  assert [a['label'] for a in rec['action']] == ['put cup', 'put knife']
  assert rec['action'][0]['verb_index'] == 1 and rec['action'][0]['noun_index'] == 0
  assert abs(rec['action'][0]['prob'] - 0.35) < 1e-12 and abs(rec['action'][1]['prob'] - 0.28) < 1e-12


def test_class_names_are_checked_against_the_model(tmp_path):
  assert predict.check_labels(None, {'label': 3}, 'x') == {'label': ['0', '1', '2']}
  with pytest.raises(ValueError, match=r"labels.txt: 2 class names for 'label', the model has 3"):
    predict.check_labels({'label': ['a', 'b']}, {'label': 3}, 'labels.txt')
  with pytest.raises(ValueError, match="no class names for the model head 'verb'"):
    predict.check_labels({'label': ['a']}, {'verb': 1, 'noun': 1}, 'labels.json')
  (tmp_path / 'classes.txt').write_text('a\nb\n\nc\n')
  assert labels_lib.read(tmp_path / 'classes.txt') == {'label': ['a', 'b', 'c']}
  (tmp_path / 'bad.json').write_text('["a", "b"]')
  with pytest.raises(ValueError, match='bad.json'):
    labels_lib.read(tmp_path / 'bad.json')
  export = tmp_path / 'm.pth'
  export.write_bytes(b'')
  assert labels_lib.find(export) is None
  labels_lib.write(labels_lib.beside(export), {'label': ['a']})
  assert labels_lib.find(export) == str(tmp_path / 'm.labels.json')
