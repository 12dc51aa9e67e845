"""VGGSound (manual download).

manual_dir: `vggsound.csv` (no header; rows `youtube_id,start_seconds,label,split` with split
train/test) and the 10 s clips `{youtube_id}_{start_seconds:06d}.mp4` anywhere below.
Classes: the sorted label names (309). The synthetic audio-visual set uses this same builder.
"""

from __future__ import annotations

from ca2st_jax.data.builders import base


def clip_stem(ytid: str, start) -> str:
  return f'{ytid}_{int(float(start)):06d}'


class Vggsound(base.VideoBuilder):
  """VGGSound audio-visual clips (309 classes)."""
  name = 'vggsound'
  DESCRIPTION = 'VGGSound: 10 s YouTube clips, 309 sound classes.'
  CSV_NAME = 'vggsound.csv'
  SPLITS = {'train': 'train', 'test': 'test'}

  def _rows(self, manual_dir):
    return self.read_csv(base.find(manual_dir, self.CSV_NAME), header=False, min_columns=4)

  def _classes(self, manual_dir):
    return {'label': sorted({r[2].strip() for r in self._rows(manual_dir)})}

  def _split_items(self, manual_dir):
    index = base.index_files(manual_dir)
    to_id = {n: i for i, n in enumerate(self._classes(manual_dir)['label'])}
    out = {split: [] for split in self.SPLITS.values()}
    for ytid, start, label, split, *_ in self._rows(manual_dir):
      split = split.strip()
      if split not in self.SPLITS:
        raise ValueError(f'unknown split {split!r} in {self.CSV_NAME}')
      stem = clip_stem(ytid, start)
      path = index.get(stem) or index.get(f'{ytid}_{start}') or str(manual_dir / (stem + '.mp4'))
      out[self.SPLITS[split]].append(base.Item(key=stem, path=path,
                                               labels={'label': to_id[label.strip()]},
                                               video_id=stem))
    return out
