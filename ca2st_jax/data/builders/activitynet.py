"""ActivityNet 1.3 untrimmed video classification (manual download).

manual_dir: `activity_net.v1-3.min.json` ({"database": {id: {"subset", "duration",
"annotations": [{"segment": [s, e], "label"}]}}}) and the videos `v_{id}.mp4` (or `{id}.*`)
anywhere below. One example per labelled video (subsets training -> train, validation ->
validation; testing has no labels), label = its activity (200 classes, sorted names), the
annotated segments kept in `segments`. Untrimmed videos are long: the default config stores
8 fps at short side 256 (the pipeline samples TSN segments over the whole video).
"""

from __future__ import annotations

import json

from ca2st_jax.data.builders import base


class Activitynet(base.VideoBuilder):
  """ActivityNet 1.3 (200 classes, untrimmed)."""
  name = 'activitynet'
  DESCRIPTION = 'ActivityNet 1.3 untrimmed videos, 200 activity classes.'
  BUILDER_CONFIGS = [base.VideoBuilderConfig(name='default', fps=8.0,
                                             description='short side 256, 8 fps')]

  def _database(self, manual_dir):
    with open(base.find(manual_dir, 'activity_net.v1-3.min.json')) as f:
      return json.load(f)['database']

  def _classes(self, manual_dir):
    db = self._database(manual_dir)
    return {'label': sorted({a['label'] for v in db.values() for a in v.get('annotations', [])})}

  def _split_items(self, manual_dir):
    db = self._database(manual_dir)
    to_id = {n: i for i, n in enumerate(self._classes(manual_dir)['label'])}
    index = base.index_files(manual_dir)
    out = {'train': [], 'validation': []}
    subsets = {'training': 'train', 'validation': 'validation'}
    for vid, v in sorted(db.items()):
      split = subsets.get(v.get('subset'))
      anns = v.get('annotations') or []
      if split is None or not anns:
        continue
      path = index.get(f'v_{vid}') or index.get(vid) or str(manual_dir / f'v_{vid}.mp4')
      out[split].append(base.Item(key=vid, path=path, labels={'label': to_id[anns[0]['label']]},
                                  video_id=vid, segments=[a['segment'] for a in anns]))
    return out
