"""Something-Something-V2 (manual download).

manual_dir: `something-something-v2-labels.json` ({template: "index"}),
`something-something-v2-train.json`, `something-something-v2-validation.json` (lists of
{id, label, template, placeholders}) and the videos `{id}.webm` anywhere below.
The class of a video is its template with the brackets removed, looked up in labels.json.
"""

from __future__ import annotations

import json

from ca2st_jax.data.builders import base


def _template(t: str) -> str:
  return t.replace('[', '').replace(']', '')


class Ssv2(base.VideoBuilder):
  """Something-Something-V2 (174 classes, webm, no audio)."""
  name = 'ssv2'
  DESCRIPTION = 'Something-Something-V2 (174 template classes).'
  BUILDER_CONFIGS = [base.VideoBuilderConfig(name='default', with_audio=False,
                                             description='short side 256, native fps, no audio')]

  def _label_map(self, manual_dir):
    with open(base.find(manual_dir, 'something-something-v2-labels.json', 'labels.json')) as f:
      return {k: int(v) for k, v in json.load(f).items()}

  def _classes(self, manual_dir):
    m = self._label_map(manual_dir)
    names = [''] * len(m)
    for k, v in m.items():
      names[v] = k
    return {'label': names}

  def _split_items(self, manual_dir):
    m = self._label_map(manual_dir)
    index = base.index_files(manual_dir)
    out = {}
    for split, fname in [('train', 'something-something-v2-train.json'),
                         ('validation', 'something-something-v2-validation.json')]:
      with open(base.find(manual_dir, fname)) as f:
        rows = json.load(f)
      out[split] = [base.Item(key=str(r['id']), path=index.get(str(r['id']), str(r['id']) + '.webm'),
                              labels={'label': m[_template(r['template'])]}, video_id=str(r['id']))
                    for r in rows]
    return out
