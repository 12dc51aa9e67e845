"""Hidden test splits to challenge files: a tiny EK100 layout with train / validation / test is
built, trained for two steps, evaluated on its unlabelled test split (what --mode=eval runs), and
turned into the action recognition server's submission; the EPIC-SOUNDS format from arrays."""
import json
import os

import numpy as np
import pytest

import test_data_builders as tdb
import tests_helpers
from ca2st_jax.data import builders
from ca2st_jax.data.builders import base
from ca2st_jax.tools import challenge
from ca2st_jax.train import evaluate as evaluate_lib
from ca2st_jax.train import trainer

EK100_HEADER = ('narration_id,participant_id,video_id,narration_timestamp,start_timestamp,'
                'stop_timestamp,start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,'
                'all_nouns,all_noun_classes\n')
TEST_IDS = ['P01_101_0', 'P01_101_1', 'P01_102_0']


def tiny_ek100(root):
  """Raw layout (two videos, 6 s at 8 fps) -> the prepared ArrayRecord directory."""
  raw = root / 'raw'
  tdb._video(raw / 'P01' / 'videos' / 'P01_01.MP4', n=48, fps=8)  # pylint: disable=protected-access
  tdb._video(raw / 'P01' / 'videos' / 'P01_02.MP4', n=48, fps=8)  # pylint: disable=protected-access
  def row(nid, vid, start, stop, verb, noun):
    return (f'{nid},P01,{vid},00:00:0{start}.00,00:00:0{start}.00,00:00:0{stop}.00,0,0,n,v,{verb},'
            f'o,{noun},[o],[{noun}]\n')
  (raw / 'EPIC_100_train.csv').write_text(
      EK100_HEADER + row('P01_01_0', 'P01_01', 0, 2, 3, 8) + row('P01_01_1', 'P01_01', 2, 4, 0, 13)
      + row('P01_02_0', 'P01_02', 1, 3, 3, 8) + row('P01_02_1', 'P01_02', 3, 5, 0, 13))
  (raw / 'EPIC_100_validation.csv').write_text(EK100_HEADER + row('P01_02_9', 'P01_02', 0, 2, 3, 8))
  (raw / 'EPIC_100_test_timestamps.csv').write_text(
      'narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,'
      'start_frame,stop_frame\n'
      'P01_101_0,P01,P01_01,00:00:01.00,00:00:01.00,00:00:02.50,50,125\n'
      'P01_101_1,P01,P01_01,00:00:03.00,00:00:03.00,00:00:05.00,150,250\n'
      'P01_102_0,P01,P01_02,00:00:00.50,00:00:00.50,00:00:02.00,25,100\n')
  config = base.VideoBuilderConfig(name='tiny', short_side=32)
  return str(base.build(builders.Ek100, raw, root / 'tfds', config, num_workers=1).data_dir)


# Batches of 8: the tests run on 8 host-platform devices (conftest).
OVERRIDES = dict(num_workers=0, test_num_clips=2, test_num_crops=1, eval_batch_size=8,
                 randaugment='')


def _config(dataset_dir):
  config = tests_helpers.load_config('cast_ek100', 'tiny')
  config.data.update(dataset_dir=dataset_dir, **OVERRIDES)
  config.train.batch_size = 8
  config.train.mixup_prob = 0.0  # one clip per device of 8: none to pair it with
  config.post = None
  return config


def _check_ek100_submission(sub, arrays):
  assert list(sub)[:5] == ['version', 'challenge', 'sls_pt', 'sls_tl', 'sls_td']
  assert sub['version'] == '0.2' and sub['challenge'] == 'action_recognition'
  assert (sub['sls_pt'], sub['sls_tl'], sub['sls_td']) == (2, 3, 3)
  assert sorted(sub['results']) == TEST_IDS
  for row, nid in enumerate(arrays['id']):
    entry = sub['results'][nid]
    assert sorted(entry) == ['noun', 'verb']
    for head, n in (('verb', 97), ('noun', 300)):
      scores = entry[head]
      assert list(scores) == [str(i) for i in range(n)]
      assert all(isinstance(v, float) for v in scores.values())
      np.testing.assert_allclose([scores[str(i)] for i in range(n)], arrays[f'prob_{head}'][row],
                                 rtol=1e-6)
      assert sum(scores.values()) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.slow
@pytest.mark.filterwarnings('ignore:.*found in sys.modules:RuntimeWarning')  # runpy, as asked
def test_ek100_hidden_test_split_to_submission(tmp_path, capsys, run_cli):
  ds = tiny_ek100(tmp_path)
  wd = str(tmp_path / 'wd')
  config = _config(ds)
  trainer.train_and_evaluate(config, wd, 'train')
  config.data.eval_split = 'test'   # --mode=eval --config.data.eval_split=test
  capsys.readouterr()
  trainer.train_and_evaluate(config, wd, 'eval')
  assert '[eval] step 2: num_videos 3.0000' in capsys.readouterr().out   # no labels, no metrics
  arrays = evaluate_lib.read_predictions(os.path.join(wd, 'predictions_test_2.npz'))
  assert sorted(arrays) == ['id', 'prob_noun', 'prob_verb', 'video_index']
  assert sorted(arrays['id']) == TEST_IDS
  recs = [json.loads(l) for l in open(os.path.join(wd, 'predictions_test_2.jsonl'))]
  assert [r['id'] for r in recs] == list(arrays['id']) and all(r['labels'] == {} for r in recs)

  zip_path = str(tmp_path / 'submission.zip')
  code, _, err = run_cli('ca2st_jax.tools.challenge', f'--workdir={wd}', '--split=test',
                         '--format=ek100_action', '--sls_pt=2', '--sls_tl=3', '--sls_td=3',
                         f'--output={zip_path}')
  assert code in (0, None), err[-3000:]
  _check_ek100_submission(challenge.read(zip_path), arrays)
  # The format of an EPIC-SOUNDS server does not fit an EK100 model: one line, exit 1.
  code, _, err = run_cli('ca2st_jax.tools.challenge', f'--workdir={wd}', '--format=epic_sounds',
                         '--sls_pt=2', '--sls_tl=3', '--sls_td=3', '--t_mod=2',
                         f'--output={tmp_path / "x.json"}')
  assert code == 1 and 'needs prob_label' in err


def test_epic_sounds_submission_format(tmp_path):
  rng = np.random.default_rng(0)
  probs = rng.dirichlet(np.ones(44), size=3).astype(np.float32)
  arrays = {'id': np.asarray(['P02_106_0', 'P02_106_1', 'P03_01_7']), 'prob_label': probs,
            'video_index': np.arange(3)}
  sub = challenge.submission(arrays, 'epic_sounds', sls_pt=2, sls_tl=3, sls_td=3, t_mod=0)
  path = challenge.write(sub, tmp_path / 'sounds.zip')
  back = challenge.read(path)
  assert list(back) == ['version', 'challenge', 'sls_pt', 'sls_tl', 'sls_td', 't_mod', 'results']
  assert back['version'] == '0.1' and back['challenge'] == 'audio_based_interaction_recognition'
  assert back['t_mod'] == 0 and sorted(back['results']) == sorted(arrays['id'])
  entry = back['results']['P03_01_7']
  assert list(entry) == ['interaction'] and list(entry['interaction']) == [str(i) for i in range(44)]
  np.testing.assert_allclose(list(entry['interaction'].values()), probs[2], rtol=1e-6)
  plain = challenge.write(sub, tmp_path / 'sounds.json')
  assert json.load(open(plain)) == back
  with pytest.raises(ValueError, match='training modality'):
    challenge.submission(arrays, 'epic_sounds', sls_pt=2, sls_tl=3, sls_td=3)
  with pytest.raises(ValueError, match=r'server takes \(3, 44\)'):
    challenge.submission(dict(arrays, prob_label=probs[:, :40]), 'epic_sounds', sls_pt=2,
                         sls_tl=3, sls_td=3, t_mod=0)
  with pytest.raises(ValueError, match='supervision level 0-5'):
    challenge.submission(arrays, 'epic_sounds', sls_pt=7, sls_tl=3, sls_td=3, t_mod=0)


def test_newest_predictions_and_missing_ones(tmp_path):
  for step in (5, 40, 100):
    (tmp_path / f'predictions_test_{step}.npz').write_bytes(b'')
  (tmp_path / 'predictions_validation_900.npz').write_bytes(b'')
  assert challenge.newest_predictions(tmp_path, 'test').name == 'predictions_test_100.npz'
  with pytest.raises(FileNotFoundError, match='--config.data.eval_split=other'):
    challenge.newest_predictions(tmp_path, 'other')
