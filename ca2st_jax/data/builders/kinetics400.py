"""Kinetics-400 (manual download).

manual_dir layout (any nesting; videos are found by file stem):
  train.csv, validate.csv (or val.csv), optional test.csv: the official CSVs with header
    `label,youtube_id,time_start,time_end,split[,is_cc]`; videos named
    `{youtube_id}_{time_start:06d}_{time_end:06d}.mp4` (or `{youtube_id}.mp4`);
  or the CAST/VideoMAE lists `train.csv` / `val.csv` / `test.csv` with lines `path label`
    (integer label, no header), class names from `labels.txt` (one per line) when present.
Classes: the sorted label names of train.csv (Kinetics' standard alphabetical indexing).
"""

from __future__ import annotations

import os

from ca2st_jax.data.builders import base

_SPLIT_FILES = {'train': ('train.csv',), 'validation': ('validate.csv', 'val.csv'),
                'test': ('test.csv',)}


def _is_official(path) -> bool:
  with open(path) as f:
    return 'youtube_id' in f.readline()


def _list_rows(path, bad_rows):
  rows = []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      parts = line.replace(',', ' ').split()
      if len(parts) >= 2:
        rows.append((parts[0], int(parts[-1])))
      elif parts:
        problem = f'{path}:{number}: expected `path label`: {line.strip()!r}'
        base.log.warning('left out annotation row %s', problem)
        bad_rows.append(problem)
  return rows


class Kinetics400(base.VideoBuilder):
  """Kinetics-400 clips with audio, JPEG frames."""
  name = 'kinetics400'
  DESCRIPTION = 'Kinetics-400 (400 human action classes, ~10 s YouTube clips).'
  CLASS_FILTER: tuple[str, ...] | None = None   # Kinetics-Sounds keeps a subset

  def _official_rows(self, path):
    return [r for r in self.read_csv(path) if r.get('label')]

  def _split_files(self, manual_dir):
    out = {}
    for split, names in _SPLIT_FILES.items():
      for n in names:
        hits = [p for p in [manual_dir / n] if p.exists()] or sorted(manual_dir.rglob(n))
        if hits:
          out[split] = hits[0]
          break
    if 'train' not in out or 'validation' not in out:
      raise FileNotFoundError(f'{self.name}: need train.csv and validate.csv/val.csv in {manual_dir}')
    return out

  def _all_classes(self, manual_dir):
    train = self._split_files(manual_dir)['train']
    if _is_official(train):
      return sorted({r['label'] for r in self._official_rows(train)})
    labels = list(manual_dir.rglob('labels.txt'))
    if labels:
      return [l.strip() for l in open(labels[0]) if l.strip()]
    n = max(l for _, l in _list_rows(train, self.bad_rows)) + 1
    return [str(i) for i in range(n)]

  def _classes(self, manual_dir):
    names = self._all_classes(manual_dir)
    if self.CLASS_FILTER is not None:
      names = self._filtered(names)
    return {'label': names}

  def _filtered(self, names):
    missing = [c for c in self.CLASS_FILTER if c not in names]
    if missing:
      base.log.warning('%s: classes not in the annotations: %s', self.name, missing)
    return [c for c in self.CLASS_FILTER if c in names]

  def _split_items(self, manual_dir):
    files = self._split_files(manual_dir)
    index = base.index_files(manual_dir)
    all_names = self._all_classes(manual_dir)
    names = self._classes(manual_dir)['label']
    to_id = {n: i for i, n in enumerate(names)}
    out = {}
    for split, path in files.items():
      items = []
      if _is_official(path):
        rows = self._official_rows(path)
        if not rows:
          continue  # an unlabelled test.csv
        for r in rows:
          if r['label'] not in to_id:
            continue
          stem = f"{r['youtube_id']}_{int(float(r['time_start'])):06d}_{int(float(r['time_end'])):06d}"
          p = index.get(stem) or index.get(r['youtube_id'])
          items.append(base.Item(key=stem, path=p or str(manual_dir / (stem + '.mp4')),
                                 labels={'label': to_id[r['label']]}, video_id=stem))
      else:
        for rel, lab in _list_rows(path, self.bad_rows):
          name = all_names[lab]
          if name not in to_id:
            continue
          stem = os.path.splitext(os.path.basename(rel))[0]
          p = index.get(stem) or str(manual_dir / rel)
          items.append(base.Item(key=stem, path=p, labels={'label': to_id[name]}, video_id=stem))
      out[split] = items
    return out
