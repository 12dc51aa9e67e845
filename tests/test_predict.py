"""ca2st_jax.predict on files these tests write with PyAV, against the trainer's own eval step on
the demo model at random (untrained) weights: one train-step-free setup, a few predict compiles."""
import fractions
import json
import os
import subprocess
import sys

import av
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ca2st_jax import models, predict, report
from ca2st_jax.checkpoints import labels as labels_lib
from ca2st_jax.data import decode, synthetic
from tests_helpers import ROOT, load_config

# Its module fixtures run once, on one worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group('test_predict')


SPEC = synthetic.SyntheticSpec(num_train=0, num_test=1, num_frames=32, size=48, fps=16)
CLASSES = sorted(synthetic.CLASSES)   # the builder's label order


def demo_config():
  config = load_config('demo')
  config.data.update(num_workers=0, eval_batch_size=8)
  config.ckpt['async'] = False
  return config


def randomized(tree, seed):
  """Every array of `tree` drawn N(0, 0.05): no layer starts at zero, so no output is uniform."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jax.device_put(
      jnp.asarray(rng.normal(0, 0.05, x.shape), x.dtype), x.sharding), tree)


@pytest.fixture(scope='module')
def untrained(tmp_path_factory):
  """(config, setup, (state, frozen, rest), workdir): the demo model at random weights, also
  saved as step 1 of a training workdir with its class names."""
  from ca2st_jax.train import trainer  # pylint: disable=import-outside-toplevel
  config = demo_config()
  setup = trainer.build_setup(config, devices=jax.devices()[:1])
  state, frozen, rest = setup.init_fn()
  state = dict(state, params=randomized(state['params'], 0))
  frozen = randomized(frozen, 1)
  workdir = str(tmp_path_factory.mktemp('untrained') / 'wd')
  ckpt = trainer.checkpointer(config, workdir, setup)
  ckpt.save(1, state, frozen, {}, {'step': 1})
  ckpt.wait()
  ckpt.close()
  labels_lib.write(os.path.join(workdir, labels_lib.WORKDIR_FILE), {'label': CLASSES})
  return config, setup, (state, frozen, rest), workdir


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


def _write_29_97_fps(path, num_frames=120):
  """H.264 at 30000/1001 fps: 120 frames last 4.004 s (the NTSC rate of many real clips)."""
  with av.open(str(path), 'w') as out:
    vs = out.add_stream('libx264', rate=fractions.Fraction(30000, 1001))
    vs.width, vs.height, vs.pix_fmt = 48, 48, 'yuv420p'
    vs.options = {'preset': 'ultrafast'}
    for i in range(num_frames):
      frame = np.zeros((48, 48, 3), np.uint8)
      frame[:, (i * 40) // num_frames:(i * 40) // num_frames + 8] = 255   # a bar moving right
      for p in vs.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')):
        out.mux(p)
    for p in vs.encode():
      out.mux(p)


VFR_TIMES = list(np.arange(25) / 25) + list(1.0 + np.arange(25) / 12.5)   # 3.0 s


@pytest.fixture(scope='module')
def videos(tmp_path_factory):
  """{name: path} of the files predict is run on."""
  d = tmp_path_factory.mktemp('videos')
  rng = np.random.default_rng(7)
  out = {}
  for name, label in (('clip.mp4', 0), ('clip.webm', 5), ('clip.avi', 3)):
    frames, wave = synthetic.render_clip(label, rng, SPEC)
    decode.write_video(str(d / name), frames, SPEC.fps, wave, SPEC.audio_rate)
  frames, _ = synthetic.render_clip(2, rng, SPEC)
  decode.write_video(str(d / 'silent.mp4'), frames, SPEC.fps)
  frames, wave = synthetic.render_clip(6, rng, SPEC)
  decode.write_video(str(d / 'short.mp4'), frames[:6], SPEC.fps, wave[:6000], SPEC.audio_rate)
  _write_vfr_with_offset(d / 'vfr.mkv', VFR_TIMES)
  _write_29_97_fps(d / 'ntsc.mp4')
  (d / 'corrupt.mp4').write_bytes(b'\x00\x00\x00\x18ftypmp42' + b'x' * 4000)
  (d / 'notes.txt').write_text('not a video\n')
  return {p.name: str(p) for p in d.iterdir()}


def test_windows_cover_the_file_once():
  # A 4.004 s clip: the last window ends at the end and is not listed twice ([3, 4] is dropped:
  # it would start 4 ms before [3.004, 4.004]).
  got = predict.windows(4.004, 1.0, 0.5)
  want = [(0.0, 1.0), (0.5, 1.5), (1.0, 2.0), (1.5, 2.5), (2.0, 3.0), (2.5, 3.5), (3.004, 4.004)]
  np.testing.assert_allclose(got, want, atol=1e-9)
  for duration, window, stride in ((10.0, 4.0, 2.0), (10.3, 4.0, 3.0), (0.3, 4.0, 2.0),
                                   (4.0, 4.0, 1.0), (7.0, 2.5, 2.5), (3.2, 1.0, 1.0),
                                   (4.004, 1.0, 0.5), (12.1, 4.0, 2.0)):
    ws = predict.windows(duration, window, stride)
    assert ws[0][0] == 0.0 and abs(ws[-1][1] - duration) < 1e-9
    for (s0, e0), (s1, _) in zip(ws, ws[1:]):
      assert s1 <= e0 + 1e-9, (duration, window, stride, ws)   # no gap
    starts = [s for s, _ in ws]
    # No two windows start within half a stride, unless dropping one would leave a gap.
    assert all(b - a >= stride / 2 or (duration, window, stride) == (3.2, 1.0, 1.0)
               for a, b in zip(starts, starts[1:])), ws
    assert all(e - s <= window + 1e-9 for s, e in ws)
  with pytest.raises(ValueError, match='--window'):
    predict.windows(3.0, 0.0, 1.0)
  with pytest.raises(ValueError, match='gaps'):
    predict.windows(7.0, 2.0, 2.5)


@pytest.mark.parametrize('config_name,heads', [('demo', {'label'}),
                                               ('cast_ek100', {'verb', 'noun'}),
                                               ('cava_vggsound', {'label'})])
def test_fused_feature_is_what_the_heads_read(config_name, heads):
  cfg = load_config(config_name, None if config_name == 'demo' else 'tiny').model
  if config_name == 'cast_ek100':   # the compositional heads read the experts' features
    assert models.is_compositional(cfg.name)
  model = models.build(cfg, rngs=nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  nnx.update(model, randomized(state, 0))
  rng = np.random.default_rng(0)
  inputs = {'video': rng.normal(size=(2, cfg.num_frames, cfg.image_size, cfg.image_size, 3)
                                ).astype(np.float32)}
  inputs['audio'] = rng.normal(size=(2, cfg.spectrogram_length, cfg.num_mel_bins)).astype(
      np.float32)
  inputs['audio_times'] = np.tile(np.linspace(0, 2, 2 + cfg.num_frames, dtype=np.float32)
                                  .reshape(1, -1, 2), (2, 1, 1))

  @nnx.jit  # one compile instead of two eager forwards
  def features_and_outputs(model, inputs):
    return predict.pooled_features(model, inputs), model(**inputs)

  feats, out = features_and_outputs(model, inputs)
  fused = {'fused' if h == 'label' else f'fused_{h}' for h in heads}
  assert set(feats) == set(model.EXPERTS) | fused
  assert set(out) == heads
  for head in heads:
    layer = model.head if head == 'label' else getattr(model, f'{head}_head')
    np.testing.assert_allclose(layer(feats['fused' if head == 'label' else f'fused_{head}']),
                               out[head], rtol=1e-5, atol=1e-5)


def eval_step_probs(setup, trees, config, path):
  """The trainer's jitted eval step on the file's evaluation views, averaged over the views."""
  decoded = predict.decode_file(path, 256, config.data.audio_sample_rate, True)
  views = predict.eval_views(decoded.record, predict.clip_options(config))
  n = len(views)
  views += [views[-1]] * (8 - n)
  batch = {k: np.stack([v[k] for v in views]) for k in ('video', 'audio', 'audio_times')}
  probs = jax.device_get(setup.eval_step(*trees, batch))['label']
  return np.asarray(probs[:n], np.float64).mean(0)


def test_predict_is_the_eval_step(untrained, videos):
  config, setup, trees, _ = untrained
  state, frozen, rest = trees
  model = nnx.merge(setup.graphdef, state['params'], frozen, rest)
  paths = [videos['clip.mp4'], videos['silent.mp4'], videos['ntsc.mp4']]
  records, _, failed = predict.predict(config, model, {'label': CLASSES}, paths,
                                       predict.Options(top_k=8, batch_size=8))
  assert not failed and [r['path'] for r in records] == paths
  for rec in records:
    got = np.zeros(8)
    for p in rec['predictions']:
      assert p['label'] == CLASSES[p['index']]
      got[p['index']] = p['prob']
    want = eval_step_probs(setup, trees, config, rec['path'])
    assert want.max() - want.min() > 1e-3          # not a uniform (uninformative) output
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_eta_counts_seconds_of_video_after_the_first_file():
  # The first file (2 s of video) took 10 s with the compiles; the next 3 s of video took 2 s:
  # 6 s of video left take 4 s.
  assert predict.eta_seconds(6.0, 5.0, 12.0, first_file_s=2.0, first_elapsed=10.0) == 4.0
  # After the first file alone, its own rate: 8 s of video at 2 s per 10 s.
  assert predict.eta_seconds(8.0, 2.0, 10.0, first_file_s=2.0, first_elapsed=10.0) == 40.0


def test_timeline_draws_every_window_winner():
  probs = [{'a': 0.6, 'b': 0.3, 'c': 0.05, 'd': 0.05}, {'a': 0.2, 'b': 0.1, 'c': 0.3, 'd': 0.4},
           {'a': 0.1, 'b': 0.5, 'c': 0.35, 'd': 0.05}]
  assert predict.timeline_classes(probs, num_classes=2) == ['a', 'b', 'd']   # winners first
  assert predict.timeline_classes(probs, num_classes=4) == ['a', 'b', 'd', 'c']
  assert predict.timeline_classes(probs[:1], num_classes=3) == ['a', 'b', 'c']


def test_timeline_goes_only_where_asked():
  assert predict.timeline_path(None, None) is None
  assert predict.timeline_path('out/p.jsonl', None) == 'out/p.timeline.png'
  assert predict.timeline_path('out/p.jsonl', 't.png') == 't.png'


@pytest.mark.slow
def test_command_line_on_every_kind_of_file(untrained, videos, tmp_path):
  config, setup, trees, workdir = untrained
  out_json, out_npz = tmp_path / 'out' / 'p.jsonl', tmp_path / 'out' / 'feats.npz'
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  order = ['clip.mp4', 'clip.webm', 'clip.avi', 'silent.mp4', 'vfr.mkv', 'short.mp4', 'ntsc.mp4',
           'corrupt.mp4', 'notes.txt']
  r = subprocess.run(
      [sys.executable, '-m', 'ca2st_jax.predict', f'--config={ROOT}/configs/demo.py',
       '--config.data.eval_batch_size=8', f'--checkpoint={workdir}', f'--json={out_json}',
       f'--features={out_npz}', '--top_k=3', '--segments', '--window=1.0', '--stride=0.5',
       *[videos[n] for n in order]],
      cwd=cwd, capture_output=True, text=True, check=False, timeout=600,
      env=dict(os.environ, PYTHONPATH=str(ROOT)))
  assert r.returncode == 1, r.stderr[-3000:]       # two files are not videos
  assert os.listdir(cwd) == []                     # nothing written outside the paths given
  err = r.stderr.splitlines()
  for name in ('corrupt.mp4', 'notes.txt'):   # found before the model loads, named once
    assert err.count(f'error: {videos[name]}: not a video PyAV can read (Invalid data found '
                     'when processing input); skipped') == 1, err
  assert 'Errno' not in r.stderr
  assert err[-1] == ('2 of 9 files could not be decoded: '
                     f'{videos["corrupt.mp4"]}, {videos["notes.txt"]}'), err[-1]
  assert any(line.startswith('restored ') for line in err)   # the restore's log: on stderr
  progress = [line for line in err if line.startswith('[')]
  assert [p.split(']')[0] for p in progress] == [f'[{i}/7' for i in range(1, 8)], progress
  assert all(' s elapsed; ETA ' in p for p in progress)
  # stdout: the predictions alone (a file's line, then indented ones).
  assert all(line.startswith(('/', '  ')) for line in r.stdout.splitlines()), r.stdout
  assert 'warning: no audio track: predicted with silence' in r.stdout

  records = [json.loads(line) for line in out_json.read_text().splitlines()]
  assert [rec['path'] for rec in records] == [videos[n] for n in order[:7]]
  by_name = dict(zip(order, records))
  expected = {  # duration (s), has audio
      'clip.mp4': (2.0, True), 'clip.webm': (2.0, True), 'clip.avi': (2.0, True),
      'silent.mp4': (2.0, False), 'vfr.mkv': (3.0, False), 'short.mp4': (0.375, True),
      'ntsc.mp4': (4.004, False)}
  for name, rec in by_name.items():
    duration, has_audio = expected[name]
    # AVI's MPEG-4 stream carries two frames of encoder delay in its timestamps.
    assert abs(rec['duration_s'] - duration) <= (0.13 if name == 'clip.avi' else 0.07), (name, rec)
    assert rec['has_audio'] is has_audio, name
    assert ('warnings' in rec) is (not has_audio), name
    assert rec['num_views'] == 2          # demo: 2 clips x 1 crop
    assert len(rec['predictions']) == 3
    segs = rec['segments']
    assert segs[0]['start_s'] == 0.0 and abs(segs[-1]['end_s'] - rec['duration_s']) < 1e-3
    starts = [s['start_s'] for s in segs]
    assert all(b - a >= 0.25 for a, b in zip(starts, starts[1:])), (name, starts)
    assert all(s['end_s'] - s['start_s'] <= 1.0 + 1e-6 for s in segs)
    assert all(s['has_audio'] is has_audio for s in segs)
  assert len(by_name['short.mp4']['segments']) == 1
  ntsc = by_name['ntsc.mp4']
  assert [(s['start_s'], s['end_s']) for s in ntsc['segments']] == [
      (0.0, 1.0), (0.5, 1.5), (1.0, 2.0), (1.5, 2.5), (2.0, 3.0), (2.5, 3.5),
      (round(ntsc['duration_s'] - 1, 4), ntsc['duration_s'])]

  # The workdir's restored model is the in-process one: the same probabilities.
  want = eval_step_probs(setup, trees, config, videos['clip.mp4'])
  for p in by_name['clip.mp4']['predictions']:
    assert abs(p['prob'] - want[p['index']]) < 1e-5

  feats = np.load(out_npz)
  assert list(feats['path']) == [videos[n] for n in order[:7]]
  assert list(feats['has_audio']) == [rec['has_audio'] for rec in records]
  for k in ('spatial', 'temporal', 'audio', 'fused'):
    assert feats[k].shape == (7, 32) and np.all(np.isfinite(feats[k]))
  num_windows = sum(len(rec['segments']) for rec in records)
  for k in ('window_spatial', 'window_temporal', 'window_audio', 'window_fused'):
    assert feats[k].shape == (num_windows, 32)
  segs = [s for rec in records for s in rec['segments']]
  np.testing.assert_allclose(feats['window_start_s'], [s['start_s'] for s in segs], atol=1e-4)
  assert list(feats['window_has_audio']) == [s['has_audio'] for s in segs]
  assert list(np.bincount(feats['window_file'])) == [len(rec['segments']) for rec in records]

  from PIL import Image  # pylint: disable=import-outside-toplevel
  with Image.open(tmp_path / 'out' / 'p.timeline.png') as im:   # beside --json
    assert im.size[1] > im.size[0] / 2                            # one panel per file


def test_export_carries_its_labels_and_predicts_the_same(untrained, videos, tmp_path):
  pytest.importorskip('torch')  # the [torch] extra
  from ca2st_jax.tools import export_torch  # pylint: disable=import-outside-toplevel
  config, setup, trees, workdir = untrained
  out = tmp_path / 'model.safetensors'
  export_torch.export(config, str(out), workdir=workdir, setup=setup)
  assert labels_lib.read(tmp_path / 'model.labels.json') == {'label': CLASSES}
  model, names = predict.load_model(config, str(out))
  assert names == {'label': CLASSES}
  records, _, _ = predict.predict(config, model, names, [videos['clip.mp4']],
                                  predict.Options(top_k=8, batch_size=8))
  want = eval_step_probs(setup, trees, config, videos['clip.mp4'])
  for p in records[0]['predictions']:
    assert abs(p['prob'] - want[p['index']]) < 1e-5


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
  config = demo_config()
  config.data.data_dir = str(tmp_path)
  config.data.synthetic.update(num_train=0, num_test=1)
  spec = synthetic.SyntheticSpec(**dict(config.data.synthetic))
  raw = synthetic.write_raw(synthetic.raw_dir(tmp_path / 'synthetic_av', spec), spec)
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
