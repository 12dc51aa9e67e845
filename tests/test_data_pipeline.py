"""Grain pipelines on the synthetic audio-visual set: batch layout, eval views, resume, workers."""
import json
import os
import subprocess
import sys
import textwrap

import ml_collections
import numpy as np
import pytest
import tests_helpers

from ca2st_jax import config_lib
from ca2st_jax.data import pipeline, synthetic

SPEC = dict(num_train=12, num_test=5, num_frames=16, size=40)


# Its module fixtures run once, on one worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group('test_data_pipeline')


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp('syn')
  synthetic.prepare(d / 'synthetic_av', synthetic.SyntheticSpec(**SPEC))
  return str(d)


def make_config(data_dir, batch_size=4, **overrides):
  d = dict(data_dir=data_dir, synthetic=SPEC, eval_batch_size=4, num_workers=0, frame_stride=2,
           test_num_clips=2, test_num_crops=3)
  d.update(overrides)
  return ml_collections.ConfigDict(dict(
      model=dict(num_frames=8, tubelet_size=2, image_size=32, num_mel_bins=32,
                 spectrogram_length=48),
      data=config_lib.data_config(**d), train=dict(batch_size=batch_size)))


def test_train_batch_layout(data_dir):
  src = pipeline.make_source(make_config(data_dir))
  assert src.num_train_examples == 12 and src.num_classes() == {'label': 8}
  b = next(src.train_iterator())
  assert b['video'].shape == (4, 8, 32, 32, 3) and b['video'].dtype == np.uint8
  assert b['audio'].shape == (4, 48, 32) and b['audio'].dtype == np.float32
  assert b['audio_times'].shape == (4, 5, 2) and b['audio_times'].dtype == np.float32
  assert b['has_audio'].dtype == np.bool_ and b['has_audio'].all()
  assert b['label'].dtype == np.int32 and b['label'].shape == (4,)
  t = b['audio_times']
  assert (t[:, 0, 1] > t[:, 0, 0]).all()                 # audio crop [start, end]
  assert (np.diff(t[:, 1:, 0], axis=1) >= 0).all()       # slots in time order
  gap = t[:, 1:, 1] - t[:, 1:, 0]                        # frames 2k, 2k+1: ~stride 2 @ 16 fps
  assert ((gap >= 1 / 16 - 1e-6) & (gap <= 3 / 16 + 1e-6)).all()
  assert set(b) == {'video', 'audio', 'audio_times', 'has_audio', 'label'}


def test_train_batch_is_config_train_batch_size_split_over_hosts(data_dir, monkeypatch):
  src = pipeline.make_source(make_config(data_dir, batch_size=6, eval_batch_size=0))
  assert (src.batch_size, src.eval_batch_size) == (6, 6)          # eval 0: the train batch
  assert next(src.train_iterator())['video'].shape[0] == 6
  monkeypatch.setattr(pipeline, '_host', lambda: (1, 2))
  src = pipeline.make_source(make_config(data_dir, batch_size=6, eval_batch_size=4))
  assert (src.batch_size, src.eval_batch_size) == (3, 2)
  with pytest.raises(ValueError, match=r'config.train.batch_size=5 is not divisible by 2 hosts'):
    pipeline.make_source(make_config(data_dir, batch_size=5))


def test_unknown_and_missing_data_fields_are_clear_errors(data_dir):
  cfg = make_config(data_dir)
  cfg.data.batch_size = 8                                   # a hand-made or edited config
  with pytest.raises(ValueError, match=r"unknown config.data fields \['batch_size'\]"):
    pipeline.make_source(cfg)
  with pytest.raises(ValueError, match=r"unknown config.data fields \['frame_strde'\]"):
    config_lib.data_config(frame_strde=2)
  cfg = make_config(data_dir)
  del cfg.data['sampling']
  with pytest.raises(ValueError, match=r"config.data lacks fields \['sampling'\]"):
    pipeline.clip_options(cfg)


def test_video_only_config_omits_audio(data_dir):
  b = next(pipeline.make_source(make_config(data_dir, audio=False)).train_iterator())
  assert set(b) == {'video', 'label'}


def test_eval_views_deterministic_padded_and_indexed(data_dir):
  src = pipeline.make_source(make_config(data_dir, sampling='tsn'))
  runs = [list(src.eval_iterator()) for _ in range(2)]
  assert len(runs[0]) == 8                               # 5 videos x 6 views = 30 -> 32
  for a, b in zip(*runs):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  batches = runs[0]
  idx = np.concatenate([b['video_index'] for b in batches])
  mask = np.concatenate([b['mask'] for b in batches])
  assert mask.sum() == 30 and not mask[30:].any()
  assert sorted(np.bincount(idx[mask]).tolist()) == [6] * 5
  first = batches[0]
  assert first['video'].shape == (4, 8, 32, 32, 3)
  # views of one video differ (clip 0 vs clip 1; square frames give equal crops), and so does
  # their audio window (the synthetic clips are longer than T = 48 frames; see
  # test_eval_audio_window_moves_with_the_view_on_a_long_clip), while their label is the same
  assert (first['video_index'] == first['video_index'][0]).all()
  assert not np.array_equal(first['video'][0], first['video'][3])
  assert not np.array_equal(first['audio'][0], first['audio'][3])
  assert (first['label'] == first['label'][0]).all()


def test_eval_per_host_shards_partition_the_views(data_dir):
  src = pipeline.make_source(make_config(data_dir))
  opts, (split_src, _) = src.opts, pipeline.open_split(src.dir, 'test')
  hosts = [list(pipeline.eval_dataset(split_src, opts, batch_size=2, num_clips=1, num_crops=1,
                                      host_index=h, host_count=2)) for h in range(2)]
  assert len(hosts[0]) == len(hosts[1]) == 2
  seen = [v for h in hosts for b in h for v, m in zip(b['video_index'], b['mask']) if m]
  assert sorted(seen) == list(range(5))


_RUN = textwrap.dedent('''
    import json, sys, numpy as np, ml_collections
    from ca2st_jax.data import pipeline
    cfg = ml_collections.ConfigDict(json.loads(sys.argv[1]))
    it = pipeline.make_source(cfg).train_iterator()
    if sys.argv[2] == 'save':
      for _ in range(int(sys.argv[3])):
        next(it)
      open(sys.argv[4], 'w').write(json.dumps(it.get_state()))
    else:
      it.set_state(json.loads(open(sys.argv[4]).read()))
      np.savez(sys.argv[5], **next(it))
''')


@pytest.mark.slow
def test_resume_in_new_process_gives_next_batch(data_dir, tmp_path):
  cfg = make_config(data_dir)
  k = 4                                                    # > 1 epoch of 12 / 4 = 3 batches
  it = pipeline.make_source(cfg).train_iterator()
  expected = [next(it) for _ in range(k + 1)][k]
  env = dict(os.environ, PYTHONPATH=os.getcwd())
  args = [sys.executable, '-c', _RUN, json.dumps(cfg.to_dict())]
  state, out = str(tmp_path / 'state.json'), str(tmp_path / 'next.npz')
  subprocess.run(args + ['save', str(k), state], check=True, env=env, capture_output=True)
  subprocess.run(args + ['load', '0', state, out], check=True, env=env, capture_output=True)
  got = np.load(out)
  assert set(got.files) == set(expected)
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key])


def test_multiprocess_workers_match_in_process(data_dir):
  ref = pipeline.make_source(make_config(data_dir)).train_iterator()
  mp = pipeline.make_source(make_config(data_dir, num_workers=2)).train_iterator()
  for _ in range(3):
    a, b = next(ref), next(mp)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  state = json.loads(json.dumps(mp.get_state()))          # the multiprocess state resumes too
  resumed = pipeline.make_source(make_config(data_dir, num_workers=2)).train_iterator()
  resumed.set_state(state)
  a, b = next(ref), next(resumed)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])


def test_train_randomness_from_seed(data_dir):
  a = next(pipeline.make_source(make_config(data_dir, seed=1)).train_iterator())
  b = next(pipeline.make_source(make_config(data_dir, seed=1)).train_iterator())
  c = next(pipeline.make_source(make_config(data_dir, seed=2)).train_iterator())
  np.testing.assert_array_equal(a['video'], b['video'])
  assert not np.array_equal(a['video'], c['video'])


def test_missing_audio_gives_silence_and_flag_and_audio_only_gives_zero_video():
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from ca2st_jax.data import decode  # pylint: disable=g-import-not-at-top
  jpeg = decode.encode_jpeg(Image.fromarray(np.full((24, 32, 3), 90, np.uint8)))
  opts = tests_helpers.clip_options(num_frames=4, crop_size=16, eval_short_side=16,
                                    num_mel_bins=8, spectrogram_length=20, frame_stride=1)
  no_audio = dict(frames=[jpeg] * 6, fps=np.float32(6), audio=np.zeros(0, np.int16),
                  audio_rate=0, has_audio=False, label=3)
  out = pipeline.train_clip(no_audio, np.random.default_rng(0), opts)
  assert out['has_audio'] == False and out['video'].shape == (4, 16, 16, 3)  # noqa: E712
  np.testing.assert_allclose(out['audio'], 4.2677393 / (2 * 4.5689974))
  assert out['audio_times'].shape == (3, 2) and (out['audio_times'][0] == 0).all()
  pcm = (np.sin(np.arange(16000) / 5.0) * 8000).astype(np.int16)
  audio_only = dict(frames=[], fps=np.float32(0), audio=pcm, audio_rate=16000, has_audio=True,
                    label=1)
  out = pipeline.eval_clip(audio_only, 0, 0, opts, 1, 1)
  assert out['has_audio'] and (out['video'] == 0).all() and out['video'].shape == (4, 16, 16, 3)


def test_ek100_verb_noun_batches_with_tsn(tmp_path):
  import test_data_builders as tb  # pylint: disable=g-import-not-at-top
  from ca2st_jax.data import builders  # pylint: disable=g-import-not-at-top
  raw = tmp_path / 'raw'
  tb._video(raw / 'P01_01.MP4', n=48, fps=8)
  hdr = ('narration_id,participant_id,video_id,narration_timestamp,start_timestamp,'
         'stop_timestamp,start_frame,stop_frame,narration,verb,verb_class,noun,noun_class\n')
  rows = ''.join(f'P01_01_{i},P01,P01_01,00:00:00.00,00:00:0{i}.00,00:00:0{i + 2}.00,0,0,n,v,'
                 f'{i},n,{10 + i}\n' for i in range(3))
  (raw / 'EPIC_100_train.csv').write_text(hdr + rows)
  (raw / 'EPIC_100_validation.csv').write_text(hdr + rows)
  b = tb._build(builders.Ek100, raw, tmp_path)
  cfg = make_config('', dataset_dir=str(b.data_dir), sampling='tsn', audio=False,
                    eval_split='validation', batch_size=3, eval_batch_size=3)
  src = pipeline.make_source(cfg)
  batch = next(src.train_iterator())
  assert set(batch) == {'video', 'verb', 'noun'} and batch['video'].shape == (3, 8, 32, 32, 3)
  assert sorted(batch['noun'] - batch['verb']) == [10, 10, 10]
  assert src.num_classes() == {'verb': 97, 'noun': 300}
  ev = list(src.eval_iterator())
  assert sum(int(e['mask'].sum()) for e in ev) == 3 * 6


def test_activitynet_tsn_segments_span_the_untrimmed_video_with_audio(tmp_path):
  import test_data_builders as tb  # pylint: disable=g-import-not-at-top
  from ca2st_jax.data import builders  # pylint: disable=g-import-not-at-top
  raw = tmp_path / 'raw'
  db = {'database': {
      'abc': {'subset': 'training', 'duration': 8.0,
              'annotations': [{'segment': [2.0, 3.0], 'label': 'Cooking'}]},
      'def': {'subset': 'validation', 'duration': 8.0,
              'annotations': [{'segment': [5.0, 6.0], 'label': 'Archery'}]}}}
  raw.mkdir()
  (raw / 'activity_net.v1-3.min.json').write_text(json.dumps(db))
  for vid in db['database']:
    tb._video(raw / f'v_{vid}.mp4', n=64, fps=8)                # 8 s, with a tone
  b = tb._build(builders.Activitynet, raw, tmp_path, fps=8.0)
  assert len(pipeline.open_split(str(b.data_dir), 'train')[0][0]['frames']) == 64
  cfg = tests_helpers.load_config('ca2st_activitynet', 'tiny')
  cfg.data.update(dataset_dir=str(b.data_dir), num_workers=0, eval_batch_size=6)
  cfg.train.batch_size = 1
  src = pipeline.make_source(cfg)
  assert src.num_classes() == {'label': 2}
  batch = next(src.train_iterator())
  assert batch['video'].shape == (1, 8, 32, 32, 3) and batch['audio'].shape == (1, 64, 32)
  assert batch['has_audio'].all() and batch['label'].tolist() == [1]
  # 8 frames, one in each eighth of the 8 s video (not a window of it): frame 2k and 2k + 1
  # of the clip lie in seconds [2k, 2k + 1) and [2k + 1, 2k + 2).
  np.testing.assert_array_equal(np.floor(batch['audio_times'][0, 1:]),
                                [[0, 1], [2, 3], [4, 5], [6, 7]])
  views = next(iter(src.eval_iterator()))                     # 2 clips x 3 crops of 'def'
  assert views['mask'].all() and views['label'].tolist() == [0] * 6
  np.testing.assert_allclose(views['audio_times'][0, 1:], [[0, 1], [2, 3], [4, 5], [6, 7]])
  np.testing.assert_allclose(views['audio_times'][3, 1:],     # clip 1: half a segment later
                             [[0.5, 1.5], [2.5, 3.5], [4.5, 5.5], [6.5, 7.5]])


def test_train_hosts_read_disjoint_examples(data_dir):
  cfg = make_config(data_dir, randaugment='', spec_augment=False)
  cfg.model.spectrogram_length = 256                       # > the clip: padded, no random crop
  src = pipeline.make_source(cfg)
  opts, (split_src, _) = src.opts, pipeline.open_split(src.dir, 'train')
  seen = []
  for host in range(2):
    it = iter(pipeline.train_dataset(split_src, opts, batch_size=3, seed=0, host_index=host,
                                     host_count=2))
    batches = [next(it) for _ in range(2)]                 # 2 hosts x 2 x 3 = one epoch of 12
    # uncropped, unaugmented audio is a deterministic identity of the example
    seen += [a.tobytes() for b in batches for a in b['audio']]
  assert len(set(seen)) == 12


def test_num_workers_auto_is_one_per_core_in_the_paper_configs(monkeypatch):
  from tests_helpers import load_config  # pylint: disable=import-outside-toplevel
  for name in ('cast_k400', 'cast_ek100', 'ca2st_vggsound', 'cava_epic_sounds'):
    assert load_config(name).data.num_workers == config_lib.AUTO_WORKERS, name
  monkeypatch.setattr(pipeline.os, 'sched_getaffinity', lambda _: set(range(16)))
  assert pipeline.resolve_num_workers(-1) == 15
  monkeypatch.setattr(pipeline.os, 'sched_getaffinity', lambda _: set(range(200)))
  assert pipeline.resolve_num_workers(-1) == pipeline.MAX_AUTO_WORKERS
  monkeypatch.setattr(pipeline.os, 'sched_getaffinity', lambda _: {0})
  assert pipeline.resolve_num_workers(-1) == 1
  assert pipeline.resolve_num_workers(0) == 0 and pipeline.resolve_num_workers(3) == 3
  with pytest.raises(ValueError, match='config.data.num_workers=-2'):
    pipeline.resolve_num_workers(-2)


def test_bench_data_uses_the_synthetic_stand_in_when_unprepared(tmp_path):
  # In a fresh process: bench_data defines absl flags (`config`) that other tools define too.
  script = textwrap.dedent(f"""
      import json, sys
      sys.path.insert(0, 'tests')
      from ca2st_jax.tools import bench_data
      from tests_helpers import load_config
      config = load_config('cast_k400')
      config.data.data_dir = {str(tmp_path)!r}
      looked = bench_data.use_synthetic_if_unprepared(config)
      explicit = load_config('cast_k400')
      explicit.data.dataset_dir = {str(tmp_path / 'typo')!r}
      print(json.dumps(dict(looked=looked, data=config.data.to_dict(),
                            explicit=bench_data.use_synthetic_if_unprepared(explicit),
                            explicit_name=explicit.data.name,
                            bench=bench_data.BENCH_SYNTHETIC)))
      """)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  r = subprocess.run([sys.executable, '-c', script], cwd=repo, capture_output=True, text=True,
                     timeout=120, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert r.returncode == 0, r.stderr[-2000:]
  out = json.loads(r.stdout.strip().splitlines()[-1])
  assert out['looked'].startswith(str(tmp_path)) and 'kinetics400' in out['looked']
  d = out['data']
  assert d['name'] == 'synthetic_av' and d['synthetic'] == out['bench']
  assert not d['audio'] and d['test_num_clips'] == 5 and d['eval_split'] == 'test'  # the recipe
  assert out['explicit'] is None and out['explicit_name'] == 'kinetics400'


def test_eval_audio_window_moves_with_the_view_on_a_long_clip():
  """A clip longer than T: view (clip c, crop k) of 2 x 3 crops its window at the authors'
  audio_centra (3c + k + 3) / 12 (joohyun7u/CA2ST dataset/vggsound.py, test mode). With n = 98
  fbank frames and T = 40, the window ends at n + int((40 - 98) * (1 - centra)):
  centra 3/12 -> int(-43.5) = -43 -> frames [15, 55); 4/12 -> int(-38.67) -> [20, 60);
  5/12 -> int(-33.83) -> [25, 65); 6/12 -> -29 -> [29, 69); 7/12 -> int(-24.17) -> [34, 74);
  8/12 -> int(-19.33) -> [39, 79)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from ca2st_jax.data import audio, decode  # pylint: disable=g-import-not-at-top
  jpeg = decode.encode_jpeg(Image.fromarray(np.full((24, 32, 3), 90, np.uint8)))
  t = np.arange(16000) / 16000.0  # 1 s at 16 kHz: 1 + (16000 - 400) // 160 = 98 fbank frames
  pcm = (np.sin(2 * np.pi * (100 + 3000 * t) * t) * 8000).astype(np.int16)  # a chirp: no two windows alike
  record = dict(frames=[jpeg] * 8, fps=np.float32(8), audio=pcm, audio_rate=16000,
                has_audio=True, label=0)
  opts = tests_helpers.clip_options(num_frames=4, crop_size=16, eval_short_side=16, num_mel_bins=8,
                                    spectrogram_length=40, frame_stride=1, sampling='dense')
  wave = audio.pcm_to_float(pcm)
  full = audio.normalize(audio.fbank(wave - wave.mean(), 16000, 8))
  assert full.shape[0] == 98
  expected_start = {(0, 0): 15, (0, 1): 20, (0, 2): 25, (1, 0): 29, (1, 1): 34, (1, 2): 39}
  for (clip, crop), start in expected_start.items():
    out = pipeline.eval_clip(record, clip, crop, opts, 2, 3)
    np.testing.assert_array_equal(out['audio'], full[start:start + 40])
    np.testing.assert_allclose(out['audio_times'][0], [start / 98, (start + 40) / 98], rtol=1e-6)
