"""EPIC-KITCHENS-100 action segments (manual download).

manual_dir: `EPIC_100_train.csv`, `EPIC_100_validation.csv` (columns narration_id, participant_id,
video_id, narration_timestamp, start_timestamp, stop_timestamp, start_frame, stop_frame,
narration, verb, verb_class, noun, noun_class, ...), optional `EPIC_100_test_timestamps.csv`
(the hidden test split of the action recognition challenge: narration_id, participant_id,
video_id, narration_timestamp, start_timestamp, stop_timestamp, start_frame, stop_frame, no
labels), optional `EPIC_100_verb_classes.csv` / `EPIC_100_noun_classes.csv` (id,key,...) for the
class names, and the untrimmed videos `{video_id}.MP4` anywhere below (e.g. `P01/videos/P01_01.MP4`).
The annotation files are those of github.com/epic-kitchens/epic-kitchens-100-annotations.
Each narration becomes one example cut from its video between start and stop timestamp
(decoding seeks to the segment), labels `verb` (97) and `noun` (300); the `test` split's labels
are -1 (base.UNLABELLED): it evaluates to predictions only, for a challenge submission
(ca2st_jax.tools.challenge).
"""

from __future__ import annotations

from ca2st_jax.data.builders import base

NUM_VERBS, NUM_NOUNS = 97, 300
SPLIT_FILES = {'train': 'EPIC_100_train.csv', 'validation': 'EPIC_100_validation.csv'}
TEST_FILE = 'EPIC_100_test_timestamps.csv'


def _names(manual_dir, fname, n):
  try:
    rows = base.read_csv(base.find(manual_dir, fname))
    names = [str(i) for i in range(n)]
    for r in rows:
      names[int(r['id'])] = r['key']
    return names
  except FileNotFoundError:
    return [str(i) for i in range(n)]


class Ek100(base.VideoBuilder):
  """EPIC-KITCHENS-100 trimmed action segments with verb and noun labels."""
  name = 'ek100'
  DESCRIPTION = 'EPIC-KITCHENS-100 action segments (97 verbs, 300 nouns).'
  LABELS = ('verb', 'noun')

  def _classes(self, manual_dir):
    return {'verb': _names(manual_dir, 'EPIC_100_verb_classes.csv', NUM_VERBS),
            'noun': _names(manual_dir, 'EPIC_100_noun_classes.csv', NUM_NOUNS)}

  def _split_items(self, manual_dir):
    index = base.index_files(manual_dir)
    files = {split: base.find(manual_dir, fname) for split, fname in SPLIT_FILES.items()}
    test = base.find_optional(manual_dir, TEST_FILE)
    if test is not None:
      files['test'] = test
    out = {}
    for split, path in files.items():
      out[split] = []
      for r in self.read_csv(path):
        labels = ({'verb': base.UNLABELLED, 'noun': base.UNLABELLED} if split == 'test' else
                  {'verb': int(r['verb_class']), 'noun': int(r['noun_class'])})
        out[split].append(base.Item(
            key=r['narration_id'], path=index.get(r['video_id'], r['video_id'] + '.MP4'),
            labels=labels, video_id=r['video_id'],
            start=base.timestamp_to_seconds(r['start_timestamp']),
            stop=base.timestamp_to_seconds(r['stop_timestamp'])))
    return out
