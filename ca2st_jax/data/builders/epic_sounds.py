"""EPIC-SOUNDS audio segments (manual download).

manual_dir: `EPIC_Sounds_train.csv`, `EPIC_Sounds_validation.csv` (annotation_id, participant_id,
video_id, start_timestamp, stop_timestamp, start_sample, stop_sample, description, class,
class_id; samples at 24 kHz), optional `EPIC_Sounds_recognition_test_timestamps.csv` (the hidden
test split of the audio-based interaction recognition challenge: annotation_id, participant_id,
video_id, start_timestamp, stop_timestamp, start_sample, stop_sample, no labels), and either the
audio HDF5 (`EPIC-KITCHENS-100.hdf5`, or any `*.hdf5`: one 1-D 24 kHz waveform dataset per
video_id) or the EK100 videos `{video_id}.MP4`.
The annotation files are those of github.com/epic-kitchens/epic-sounds-annotations.
Audio comes from the HDF5 when present (resampled to the config's audio_rate, default 16 kHz),
else from the video's audio track; video frames of the segment are stored when the EK100 video is
present (CAVA/CA²ST use them), otherwise the example is audio-only (empty `frames`).
The `test` split's labels are -1 (base.UNLABELLED): it evaluates to predictions only, for a
challenge submission (ca2st_jax.tools.challenge).
"""

from __future__ import annotations

from ca2st_jax.data.builders import base

HDF5_RATE = 24000
SPLIT_FILES = {'train': 'EPIC_Sounds_train.csv', 'validation': 'EPIC_Sounds_validation.csv'}
TEST_FILE = 'EPIC_Sounds_recognition_test_timestamps.csv'


class EpicSounds(base.VideoBuilder):
  """EPIC-SOUNDS (44 sound classes)."""
  name = 'epic_sounds'
  DESCRIPTION = 'EPIC-SOUNDS audio-based interaction segments (44 classes).'

  def _rows(self, manual_dir):
    rows = {split: self.read_csv(base.find(manual_dir, fname))
            for split, fname in SPLIT_FILES.items()}
    test = base.find_optional(manual_dir, TEST_FILE)
    if test is not None:
      rows['test'] = self.read_csv(test)
    return rows

  def _classes(self, manual_dir):
    names = {}
    for split, rows in self._rows(manual_dir).items():
      for r in rows if split != 'test' else ():
        names[int(r['class_id'])] = r['class']
    return {'label': [names.get(i, str(i)) for i in range(max(names) + 1)]}

  def _split_items(self, manual_dir):
    index = base.index_files(manual_dir)
    hdf5 = sorted(manual_dir.rglob('*.hdf5')) + sorted(manual_dir.rglob('*.h5'))
    out = {}
    for split, rows in self._rows(manual_dir).items():
      items = []
      for r in rows:
        vid = r['video_id']
        h = ((str(hdf5[0]), vid, int(r['start_sample']), int(r['stop_sample']), HDF5_RATE)
             if hdf5 else None)
        label = base.UNLABELLED if split == 'test' else int(r['class_id'])
        items.append(base.Item(
            key=r['annotation_id'], path=index.get(vid), labels={'label': label},
            video_id=vid, start=base.timestamp_to_seconds(r['start_timestamp']),
            stop=base.timestamp_to_seconds(r['stop_timestamp']), hdf5=h, require_video=False))
      out[split] = items
    return out
