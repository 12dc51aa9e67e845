"""UCF-101 with its audio track (manual download). TFDS's own `ucf101` has no audio.

manual_dir: the videos `UCF-101/{Class}/v_{Class}_gXX_cYY.avi` and `ucfTrainTestlist/` with
`classInd.txt` (`1 ApplyEyeMakeup`), `trainlist0{1,2,3}.txt` (`Class/v_....avi 1`) and
`testlist0{1,2,3}.txt`. Builder configs `split1` (default), `split2`, `split3`.
About half of UCF-101's videos have no audio track: they get `has_audio` False.
"""

from __future__ import annotations

import os

from ca2st_jax.data.builders import base


class Ucf101Av(base.VideoBuilder):
  """UCF-101 (101 classes, three official splits) with audio."""
  name = 'ucf101_av'
  DESCRIPTION = 'UCF-101 action recognition with the audio track.'
  BUILDER_CONFIGS = [base.VideoBuilderConfig(name=f'split{k}', fold=k,
                                             description=f'official split {k}')
                     for k in (1, 2, 3)]

  def _classes(self, manual_dir):
    names = {}
    with open(base.find(manual_dir, 'classInd.txt')) as f:
      for line in f:
        if line.strip():
          i, n = line.split()
          names[int(i) - 1] = n
    return {'label': [names[i] for i in range(len(names))]}

  def _split_items(self, manual_dir):
    names = self._classes(manual_dir)['label']
    to_id = {n: i for i, n in enumerate(names)}
    index = base.index_files(manual_dir)
    fold = self.builder_config.fold
    out = {}
    for split, fname in [('train', f'trainlist0{fold}.txt'), ('test', f'testlist0{fold}.txt')]:
      items = []
      with open(base.find(manual_dir, fname)) as f:
        for line in f:
          if not line.strip():
            continue
          rel = line.split()[0]
          stem = os.path.splitext(os.path.basename(rel))[0]
          cls = rel.replace('\\', '/').split('/')[0]
          items.append(base.Item(key=stem, path=index.get(stem, str(manual_dir / rel)),
                                 labels={'label': to_id[cls]}, video_id=stem))
      out[split] = items
    return out
