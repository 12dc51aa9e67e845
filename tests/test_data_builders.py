"""TFDS builders on tiny raw fixtures in each benchmark's layout (built for real, ArrayRecord)."""
import json
import logging

import h5py
import numpy as np
import pytest
import tensorflow_datasets as tfds

from ca2st_jax.data import builders, decode, synthetic
from ca2st_jax.data.builders import base

logging.getLogger('absl').setLevel(logging.ERROR)
CFG = dict(short_side=16)


def _video(path, n=8, fps=8, audio=True, h=24, w=32, rate=16000, marker=True):
  frames = np.zeros((n, h, w, 3), np.uint8)
  if marker:   # frame index encoded in the whole frame's brightness
    frames += (np.arange(n, dtype=np.uint8) * (200 // max(n - 1, 1)))[:, None, None, None]
  wave = 0.3 * np.sin(2 * np.pi * 440 * np.arange(int(rate * n / fps)) / rate) if audio else None
  path.parent.mkdir(parents=True, exist_ok=True)
  decode.write_video(path, frames, fps, wave, rate)


def _corrupt(path):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(b'\x1a\x45\xdf\xa3' + b'\x00junk' * 800)


def _build(cls, raw, tmp_path, **cfg):
  config = base.VideoBuilderConfig(name='tiny', **{**CFG, **cfg})
  b = base.build(cls, raw, tmp_path / 'out', config, num_workers=1)
  return tfds.builder_from_directory(b.data_dir)


def _all(b, split):
  src = b.as_data_source(split)
  return {r['id'].decode(): r for r in (src[i] for i in range(len(src)))}


def test_kinetics400_official_csv_bad_files_and_no_audio(tmp_path):
  raw = tmp_path / 'raw'
  (raw / 'train').mkdir(parents=True)
  rows = [('bowling', 'aaa', 0, 10), ('abseiling', 'bbb', 5, 15), ('bowling', 'ccc', 1, 11),
          ('abseiling', 'ddd', 2, 12), ('bowling', 'eee', 0, 10)]
  for lab, y, s, e in rows[:2]:
    _video(raw / 'train' / lab / f'{y}_{s:06d}_{e:06d}.mp4')
  _video(raw / 'train' / 'bowling' / 'ccc_000001_000011.mp4', audio=False)   # no audio track
  _corrupt(raw / 'train' / 'abseiling' / 'ddd_000002_000012.mp4')            # corrupt
  # eee is missing; ggg has no video stream
  decode.write_video(raw / 'train' / 'bowling' / 'ggg_000000_000010.mp4', None, 8,
                     np.zeros(16000), 16000)
  rows.append(('bowling', 'ggg', 0, 10))
  hdr = 'label,youtube_id,time_start,time_end,split,is_cc\n'
  (raw / 'train.csv').write_text(hdr + ''.join(f'{l},{y},{s},{e},train,0\n' for l, y, s, e in rows))
  _video(raw / 'val' / 'fff_000000_000010.mp4')
  (raw / 'validate.csv').write_text(hdr + 'abseiling,fff,0,10,validate,0\n')
  b = _build(builders.Kinetics400, raw, tmp_path)
  assert b.info.features['label'].names == ['abseiling', 'bowling']
  assert b.info.splits['train'].num_examples == 3 and b.info.splits['validation'].num_examples == 1
  assert b.info.metadata['num_skipped'] == {'train': 3, 'validation': 0}
  assert any('ddd' in s for s in b.info.metadata['skipped']['train'])
  assert any('ggg' in s and 'no video stream' in s for s in b.info.metadata['skipped']['train'])
  assert any('eee' in s for s in b.info.metadata['skipped']['train'])
  ex = _all(b, 'train')
  assert ex['aaa_000000_000010']['label'] == 1 and ex['bbb_000005_000015']['label'] == 0
  assert ex['ccc_000001_000011']['has_audio'] == False   # noqa: E712
  assert ex['ccc_000001_000011']['audio'].size == 0 and ex['ccc_000001_000011']['audio_rate'] == 0
  a = ex['aaa_000000_000010']
  assert a['has_audio'] and a['audio_rate'] == 16000 and abs(a['audio'].size - 16000) < 1100
  assert len(a['frames']) == 8 and a['fps'] == 8.0 and abs(a['duration'] - 1.0) < 1e-6
  img = decode.decode_jpegs(a['frames'][:1])[0]
  assert min(img.size) == 16


def test_kinetics400_cast_lists_and_missing_split_raises(tmp_path):
  raw = tmp_path / 'raw'
  _video(raw / 'videos' / 'x1.mp4')
  _video(raw / 'videos' / 'x2.mp4')
  (raw / 'train.csv').write_text('videos/x1.mp4 3\nvideos/x2.mp4 0\n')
  with pytest.raises(FileNotFoundError):   # no validation list: the build stops, loudly
    _build(builders.Kinetics400, raw, tmp_path)
  (raw / 'val.csv').write_text('videos/x2.mp4 0\n')
  b = _build(builders.Kinetics400, raw, tmp_path / 'b')
  assert b.info.features['label'].num_classes == 4
  assert {k: v['label'] for k, v in _all(b, 'train').items()} == {'x1': 3, 'x2': 0}


def test_kinetics_sounds_keeps_its_classes(tmp_path):
  raw = tmp_path / 'raw'
  rows = [('playing drums', 'a1'), ('abseiling', 'a2'), ('bowling', 'a3')]
  for lab, y in rows:
    _video(raw / 'k' / f'{y}_000000_000010.mp4')
  hdr = 'label,youtube_id,time_start,time_end,split\n'
  body = ''.join(f'{l},{y},0,10,train\n' for l, y in rows)
  (raw / 'train.csv').write_text(hdr + body)
  (raw / 'validate.csv').write_text(hdr + body)
  b = _build(builders.KineticsSounds, raw, tmp_path)
  assert b.info.features['label'].names == ['bowling', 'playing drums']
  assert {k: v['label'] for k, v in _all(b, 'train').items()} == {
      'a1_000000_000010': 1, 'a3_000000_000010': 0}


def test_ssv2_webm_json(tmp_path):
  raw = tmp_path / 'raw'
  labels = {'Putting something into something': '0', 'Pushing something from left to right': '1'}
  (raw / 'anno').mkdir(parents=True)
  (raw / 'anno' / 'something-something-v2-labels.json').write_text(json.dumps(labels))
  tr = [{'id': '11', 'label': 'pushing a cup from left to right',
         'template': 'Pushing [something] from left to right', 'placeholders': ['a cup']},
        {'id': '12', 'label': 'putting a pen into a box',
         'template': 'Putting [something] into [something]', 'placeholders': ['a pen', 'a box']}]
  va = [{'id': '13', 'label': 'x', 'template': 'Putting [something] into [something]',
         'placeholders': []}]
  (raw / 'anno' / 'something-something-v2-train.json').write_text(json.dumps(tr))
  (raw / 'anno' / 'something-something-v2-validation.json').write_text(json.dumps(va))
  for i in ('11', '12', '13'):
    _video(raw / '20bn-something-something-v2' / f'{i}.webm', audio=False)
  b = _build(builders.Ssv2, raw, tmp_path, with_audio=False)
  ex = _all(b, 'train')
  assert {k: v['label'] for k, v in ex.items()} == {'11': 1, '12': 0}
  assert b.info.splits['validation'].num_examples == 1
  assert not ex['11']['has_audio'] and len(ex['11']['frames']) == 8


def test_ek100_segments_cut_by_timestamps(tmp_path):
  raw = tmp_path / 'raw'
  _video(raw / 'P01' / 'videos' / 'P01_01.MP4', n=48, fps=8)   # 6 s, frame k has value 4k
  hdr = ('narration_id,participant_id,video_id,narration_timestamp,start_timestamp,'
         'stop_timestamp,start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,'
         'all_nouns,all_noun_classes\n')
  (raw / 'EPIC_100_train.csv').write_text(
      hdr + 'P01_01_0,P01,P01_01,00:00:00.00,00:00:01.00,00:00:02.50,8,20,open door,open,3,'
      'door,8,[door],[8]\n'
      'P01_01_1,P01,P01_01,00:00:03.00,00:00:04.00,00:00:05.00,32,40,take cup,take,0,cup,'
      '13,[cup],[13]\n'
      'P01_02_0,P01,P01_02,00:00:03.00,00:00:04.00,00:00:05.00,32,40,take cup,take,0,cup,'
      '13,[cup],[13]\n')
  (raw / 'EPIC_100_validation.csv').write_text(
      hdr + 'P01_01_9,P01,P01_01,00:00:00.00,00:00:00.50,00:00:01.50,4,12,wash,wash,2,'
      'plate,5,[plate],[5]\n')
  b = _build(builders.Ek100, raw, tmp_path)
  assert b.info.features['verb'].num_classes == 97 and b.info.features['noun'].num_classes == 300
  assert b.info.metadata['num_skipped']['train'] == 1          # P01_02 video is missing
  ex = _all(b, 'train')
  seg = ex['P01_01_0']
  assert (seg['verb'], seg['noun']) == (3, 8)
  assert len(seg['frames']) == 12 and list(seg['span']) == [1.0, 2.5]
  first = np.asarray(decode.decode_jpegs(seg['frames'][:1])[0]).mean()
  assert abs(first - 4 * 8) < 3                                  # frame 8 = 1.0 s
  seg = ex['P01_01_1']
  assert len(seg['frames']) == 8
  assert abs(np.asarray(decode.decode_jpegs(seg['frames'][:1])[0]).mean() - 4 * 32) < 3
  assert abs(seg['audio'].size - 16000) < 400


def test_epic_sounds_hdf5_24k(tmp_path):
  raw = tmp_path / 'raw'
  raw.mkdir()
  rate = 24000
  with h5py.File(raw / 'EPIC-KITCHENS-100.hdf5', 'w') as f:
    t = np.arange(rate * 6) / rate
    f['P01_01'] = (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
  _video(raw / 'P01_01.MP4', n=48, fps=8)
  hdr = ('annotation_id,participant_id,video_id,start_timestamp,stop_timestamp,start_sample,'
         'stop_sample,description,class,class_id\n')
  (raw / 'EPIC_Sounds_train.csv').write_text(
      hdr + 'P01_01_0,P01,P01_01,00:00:01.000,00:00:02.000,24000,48000,d,scrape,3\n'
      'P01_01_1,P01,P01_01,00:00:02.000,00:00:04.500,48000,108000,d,water,5\n'
      'P09_09_0,P09,P09_09,00:00:02.000,00:00:04.500,48000,108000,d,water,5\n')
  (raw / 'EPIC_Sounds_validation.csv').write_text(
      hdr + 'P01_01_2,P01,P01_01,00:00:00.500,00:00:01.000,12000,24000,d,click,0\n')
  b = _build(builders.EpicSounds, raw, tmp_path)
  assert b.info.metadata['num_skipped']['train'] == 1           # P09_09 is in neither source
  names = b.info.features['label'].names
  assert names[3] == 'scrape' and names[5] == 'water' and names[0] == 'click'
  ex = _all(b, 'train')
  e = ex['P01_01_1']
  assert e['label'] == 5 and e['audio_rate'] == 16000 and e['audio'].size == 40000
  assert len(e['frames']) == 20                                  # 2.5 s of the 8 fps video
  b2 = _build(builders.EpicSounds, raw, tmp_path / 'audio_only', with_video=False)
  e = _all(b2, 'validation')['P01_01_2']
  assert len(e['frames']) == 0 and e['audio'].size == 8000 and e['has_audio']
  # Without the HDF5 the audio comes from the EK100 video's own track (440 Hz there, 300 here).
  (raw / 'EPIC-KITCHENS-100.hdf5').rename(tmp_path / 'moved.hdf5')
  b3 = _build(builders.EpicSounds, raw, tmp_path / 'from_video')
  e = _all(b3, 'train')['P01_01_1']
  assert abs(e['audio'].size - 40000) < 400 and len(e['frames']) == 20
  spectrum = np.abs(np.fft.rfft(e['audio'].astype(np.float64)))
  assert abs(np.argmax(spectrum) * 16000 / e['audio'].size - 440) < 5


EK100_TEST_HEADER = ('narration_id,participant_id,video_id,narration_timestamp,start_timestamp,'
                     'stop_timestamp,start_frame,stop_frame\n')


def test_ek100_hidden_test_split_builds_unlabelled(tmp_path):
  raw = tmp_path / 'raw'
  _video(raw / 'P01' / 'videos' / 'P01_01.MP4', n=48, fps=8)
  hdr = ('narration_id,participant_id,video_id,narration_timestamp,start_timestamp,'
         'stop_timestamp,start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,'
         'all_nouns,all_noun_classes\n')
  row = 'P01_01_0,P01,P01_01,00:00:00.00,00:00:01.00,00:00:02.50,8,20,open door,open,3,door,8,[door],[8]\n'
  (raw / 'EPIC_100_train.csv').write_text(hdr + row)
  (raw / 'EPIC_100_validation.csv').write_text(hdr + row.replace('P01_01_0', 'P01_01_5'))
  b = _build(builders.Ek100, raw, tmp_path / 'no_test')
  assert set(b.info.splits) == {'train', 'validation'}        # the test file is optional
  (raw / 'EPIC_100_test_timestamps.csv').write_text(
      EK100_TEST_HEADER + 'P01_101_0,P01,P01_01,00:00:02.85,00:00:02.86,00:00:03.87,143,193\n'
      'P01_101_1,P01,P01_01,00:00:05.10,00:00:04.97,00:00:05.75,248,287\n')
  b = _build(builders.Ek100, raw, tmp_path / 'with_test')
  assert b.info.splits['test'].num_examples == 2
  ex = _all(b, 'test')
  assert sorted(ex) == ['P01_101_0', 'P01_101_1']
  assert all((e['verb'], e['noun']) == (-1, -1) for e in ex.values())
  assert list(ex['P01_101_1']['span']) == pytest.approx([4.97, 5.75]) and ex['P01_101_1']['frames']
  assert _all(b, 'train')['P01_01_0']['verb'] == 3


def test_epic_sounds_hidden_test_split_builds_unlabelled(tmp_path):
  raw = tmp_path / 'raw'
  _video(raw / 'P01_01.MP4', n=48, fps=8)
  hdr = ('annotation_id,participant_id,video_id,start_timestamp,stop_timestamp,start_sample,'
         'stop_sample')
  (raw / 'EPIC_Sounds_train.csv').write_text(
      hdr + ',description,class,class_id\nP01_01_0,P01,P01_01,00:00:01.000,00:00:02.000,24000,'
      '48000,d,scrape,3\n')
  (raw / 'EPIC_Sounds_validation.csv').write_text(
      hdr + ',description,class,class_id\nP01_01_2,P01,P01_01,00:00:00.500,00:00:01.000,12000,'
      '24000,d,click,0\n')
  (raw / 'EPIC_Sounds_recognition_test_timestamps.csv').write_text(
      hdr + '\nP02_106_0,P02,P01_01,00:00:03.855,00:00:04.142,92520,99408\n')
  b = _build(builders.EpicSounds, raw, tmp_path)
  assert b.info.features['label'].names[3] == 'scrape' and b.info.features['label'].num_classes == 4
  e = _all(b, 'test')['P02_106_0']
  assert e['label'] == -1 and e['has_audio'] and list(e['span']) == pytest.approx([3.855, 4.142])


def test_vggsound_layout_via_synthetic_with_bad_rows(tmp_path):
  spec = synthetic.SyntheticSpec(num_train=8, num_test=4, num_frames=8, size=32, corrupt=1,
                                 no_audio=1, missing=1)
  d = synthetic.prepare(tmp_path, spec)
  b = tfds.builder_from_directory(d)
  assert b.info.splits['train'].num_examples == 9 and b.info.splits['test'].num_examples == 4
  assert b.info.metadata['num_skipped'] == {'train': 1, 'test': 1}
  assert b.info.features['label'].names == sorted(synthetic.CLASSES)
  ex = _all(b, 'train')
  assert not ex['synnoaudio000_000000']['has_audio']
  # The raw CSV is VGGSound's: no header, ytid,start,label,split; the builder is VGGSound's.
  raw_csv = next((tmp_path / 'raw').rglob('vggsound.csv')).read_text().splitlines()
  assert raw_csv[0].count(',') == 3 and issubclass(synthetic.SyntheticAv, builders.Vggsound)
  again = synthetic.prepare(tmp_path, spec)     # cached
  assert again == d


def test_ucf101_avi_splits(tmp_path):
  raw = tmp_path / 'raw'
  lst = raw / 'ucfTrainTestlist'
  lst.mkdir(parents=True)
  (lst / 'classInd.txt').write_text('1 ApplyEyeMakeup\n2 Basketball\n')
  _video(raw / 'UCF-101' / 'ApplyEyeMakeup' / 'v_ApplyEyeMakeup_g08_c01.avi', rate=22050)
  _video(raw / 'UCF-101' / 'Basketball' / 'v_Basketball_g01_c01.avi', audio=False)
  _video(raw / 'UCF-101' / 'Basketball' / 'v_Basketball_g02_c01.avi', rate=22050)
  (lst / 'trainlist01.txt').write_text('ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n'
                                       'Basketball/v_Basketball_g01_c01.avi 2\n')
  (lst / 'testlist01.txt').write_text('Basketball/v_Basketball_g02_c01.avi\n')
  b = _build(builders.Ucf101Av, raw, tmp_path, fold=1)
  ex = _all(b, 'train')
  assert ex['v_ApplyEyeMakeup_g08_c01']['label'] == 0 and ex['v_ApplyEyeMakeup_g08_c01']['has_audio']
  assert ex['v_Basketball_g01_c01']['label'] == 1 and not ex['v_Basketball_g01_c01']['has_audio']
  assert b.info.splits['test'].num_examples == 1
  assert [c.name for c in builders.Ucf101Av.BUILDER_CONFIGS] == ['split1', 'split2', 'split3']


def test_activitynet_untrimmed_json(tmp_path):
  raw = tmp_path / 'raw'
  db = {'database': {
      'abc': {'subset': 'training', 'duration': 4.0, 'url': '',
              'annotations': [{'segment': [0.5, 2.0], 'label': 'Cooking'},
                              {'segment': [2.5, 3.5], 'label': 'Cooking'}]},
      'def': {'subset': 'validation', 'duration': 2.0, 'url': '',
              'annotations': [{'segment': [0.0, 1.0], 'label': 'Archery'}]},
      'ghi': {'subset': 'testing', 'duration': 2.0, 'url': '', 'annotations': []}}}
  (raw / 'anno').mkdir(parents=True)
  (raw / 'anno' / 'activity_net.v1-3.min.json').write_text(json.dumps(db))
  _video(raw / 'videos' / 'v_abc.mp4', n=32, fps=8)
  _video(raw / 'videos' / 'v_def.mkv', n=16, fps=8)
  b = _build(builders.Activitynet, raw, tmp_path, fps=4.0)
  assert b.info.features['label'].names == ['Archery', 'Cooking']
  e = _all(b, 'train')['abc']
  assert e['label'] == 1 and e['fps'] == 4.0 and len(e['frames']) == 16
  np.testing.assert_allclose(e['segments'], [[0.5, 2.0], [2.5, 3.5]])
  assert set(b.info.splits.keys()) == {'train', 'validation'}


def _vggsound_raw(raw, rows):
  raw.mkdir(parents=True, exist_ok=True)
  (raw / 'vggsound.csv').write_text('\n'.join(rows) + '\n')


@pytest.mark.parametrize('ext', ['.wav', '.flac', '.m4a'])
def test_audio_only_files_named_in_annotations_are_found(tmp_path, ext):
  raw = tmp_path / 'raw'
  _video(raw / 'clips' / 'aaa_000000.mp4')
  wave = 0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
  (raw / 'audio').mkdir(parents=True)
  decode.write_video(raw / 'audio' / f'bbb_000000{ext}', None, 8, wave, 16000)
  _vggsound_raw(raw, ['aaa,0,dog,train', 'bbb,0,cat,train', 'aaa,0,dog,test'])
  b = _build(builders.Vggsound, raw, tmp_path)
  assert b.info.metadata['num_skipped']['train'] == 0, b.info.metadata['skipped']  # was: missing
  a = _all(b, 'train')['bbb_000000']
  assert a['has_audio'] and abs(a['audio'].size - 16000) < 1100 and len(a['frames']) == 0


def test_short_csv_rows_are_reported_with_file_and_line(tmp_path, caplog):
  raw = tmp_path / 'raw'
  _video(raw / 'clips' / 'aaa_000000.mp4')
  _vggsound_raw(raw, ['aaa,0,dog,train', 'bbb,0,cat', 'aaa,0,dog,test'])
  with caplog.at_level(logging.WARNING):
    b = _build(builders.Vggsound, raw, tmp_path)
  csv_path = str(raw / 'vggsound.csv')
  assert [r.split(': ')[0] for r in b.info.metadata['bad_rows']] == [f'{csv_path}:2']
  assert f'{csv_path}:2' in caplog.text
  assert b.info.features['label'].names == ['dog']


def _cli(*argv):
  from ca2st_jax.data.builders import __main__ as cli  # pylint: disable=import-outside-toplevel
  cli.main([str(a) for a in argv])


def test_builder_cli_num_workers_alone_and_unknown_config(tmp_path, capsys):
  raw = tmp_path / 'raw'
  for i in range(3):
    _video(raw / 'clips' / f'c{i}_000000.mp4', n=4)
  _vggsound_raw(raw, ['c0,0,dog,train', 'c1,0,cat,train', 'c2,0,dog,test'])
  _cli('vggsound', '--manual_dir', raw, '--data_dir', tmp_path / 'out', '--num_workers=2')
  out = capsys.readouterr().out
  assert "'splits': {" in out and "'train': 2" in out          # was: a TFDS ValueError
  with pytest.raises(SystemExit):
    _cli('ucf101_av', '--manual_dir', raw, '--data_dir', tmp_path / 'out', '--config=split4')
  err = capsys.readouterr().err
  assert 'unknown --config=split4 for ucf101_av; valid: split1, split2, split3' in err


def test_tfds_route_defaults(tmp_path, monkeypatch):
  # What `tfds build ca2st_jax/data/builders/vggsound.py --manual_dir=...` constructs: the class
  # with data_dir and config only.
  b = builders.Vggsound(data_dir=str(tmp_path))
  assert b.info.file_format == tfds.core.FileFormat.ARRAY_RECORD   # was TFRecord
  # The instructions are the module's layout text, not the one-line class docstring.
  assert 'youtube_id,start_seconds,label,split' in builders.Vggsound.MANUAL_DOWNLOAD_INSTRUCTIONS
  for cls in builders.BUILDERS.values():
    assert 'manual_dir' in cls.MANUAL_DOWNLOAD_INSTRUCTIONS, cls.name
  with pytest.raises(AssertionError, match='youtube_id,start_seconds,label,split'):
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(tmp_path / 'missing')))
  # The worker count under `tfds build` comes from the environment.
  raw = tmp_path / 'raw'
  for i in range(3):
    _video(raw / 'clips' / f'c{i}_000000.mp4', n=4)
  _vggsound_raw(raw, ['c0,0,dog,train', 'c1,0,cat,train', 'c2,0,dog,test'])
  used = []
  monkeypatch.setenv(base.WORKERS_ENV, '1')
  monkeypatch.setattr(base.multiprocessing, 'get_context', lambda *a: used.append(a) or 1 / 0)
  b = builders.Vggsound(data_dir=str(tmp_path / 'out'))
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(raw)))
  assert used == [] and b.info.splits['train'].num_examples == 2


@pytest.mark.slow
def test_tfds_command_line_builds_array_record(tmp_path):
  """The README's `tfds build` line, run for real (the `tfds` CLI imports TensorFlow)."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  import pathlib  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  missing = [m for m in ('tensorflow', 'apache_beam', 'mlcroissant')
             if importlib.util.find_spec(m) is None]
  if missing:
    pytest.skip(f'the tfds command line needs {", ".join(missing)}, not installed here')
  raw = tmp_path / 'raw'
  for i in range(3):
    _video(raw / 'clips' / f'c{i}_000000.mp4', n=4)
  _vggsound_raw(raw, ['c0,0,dog,train', 'c1,0,cat,train', 'c2,0,dog,test'])
  repo = pathlib.Path(__file__).resolve().parents[1]
  env = {**os.environ, base.WORKERS_ENV: '2',
         'PYTHONPATH': os.pathsep.join([str(repo), os.environ.get('PYTHONPATH', '')])}
  subprocess.run([sys.executable, '-m', 'tensorflow_datasets.scripts.cli.main', 'build',
                  str(repo / 'ca2st_jax/data/builders/vggsound.py'), f'--manual_dir={raw}',
                  f'--data_dir={tmp_path / "out"}'], check=True, env=env, timeout=240)
  d = next((tmp_path / 'out' / 'vggsound').glob('default/*'))
  assert list(d.glob('*.array_record*'))
  b = tfds.builder_from_directory(d)
  assert b.info.splits['train'].num_examples == 2 and len(_all(b, 'train')['c0_000000']['frames']) == 4
