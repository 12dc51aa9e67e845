"""EPIC-SOUNDS audio segments (manual download).

manual_dir: `EPIC_Sounds_train.csv`, `EPIC_Sounds_validation.csv` (annotation_id, participant_id,
video_id, start_timestamp, stop_timestamp, start_sample, stop_sample, description, class,
class_id; samples at 24 kHz) and either the audio HDF5 (`EPIC-KITCHENS-100.hdf5`, or any `*.hdf5`:
one 1-D 24 kHz waveform dataset per video_id) or the EK100 videos `{video_id}.MP4`.
Audio comes from the HDF5 when present (resampled to the config's audio_rate, default 16 kHz),
else from the video's audio track; video frames of the segment are stored when the EK100 video is
present (CAVA/CA²ST use them), otherwise the example is audio-only (empty `frames`).
"""

from __future__ import annotations

from ca2st_jax.data.builders import base

HDF5_RATE = 24000


class EpicSounds(base.VideoBuilder):
  """EPIC-SOUNDS (44 sound classes)."""
  name = 'epic_sounds'
  DESCRIPTION = 'EPIC-SOUNDS audio-based interaction segments (44 classes).'

  def _rows(self, manual_dir):
    return {split: self.read_csv(base.find(manual_dir, fname))
            for split, fname in [('train', 'EPIC_Sounds_train.csv'),
                                 ('validation', 'EPIC_Sounds_validation.csv')]}

  def _classes(self, manual_dir):
    names = {}
    for rows in self._rows(manual_dir).values():
      for r in rows:
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
        items.append(base.Item(
            key=r['annotation_id'], path=index.get(vid), labels={'label': int(r['class_id'])},
            video_id=vid, start=base.timestamp_to_seconds(r['start_timestamp']),
            stop=base.timestamp_to_seconds(r['stop_timestamp']), hdf5=h, require_video=False))
      out[split] = items
    return out
