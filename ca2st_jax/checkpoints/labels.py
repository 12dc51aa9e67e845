"""Class names that travel with a model: `labels.json` in a training workdir, in every checkpoint's
meta, and beside every PyTorch export (`model.pth` -> `model.labels.json`).

The file is JSON `{head: [name of class 0, name of class 1, ...]}` with the model's heads
('label', or 'verb' and 'noun'). `read` also takes a plain text file, one class name a line, for a
single-head model (the form most released checkpoints' class lists come in).
"""
from __future__ import annotations

import json
import os

from etils import epath

WORKDIR_FILE = 'labels.json'
EXPORT_SUFFIX = '.labels.json'


def beside(export_path) -> str:
  """The labels file of an export: `dir/model.pth` -> `dir/model.labels.json`."""
  return os.path.splitext(os.fspath(export_path))[0] + EXPORT_SUFFIX


def write(path, names: dict[str, list[str]]) -> str:
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({k: list(v) for k, v in names.items()}, indent=1))
  return os.fspath(path)


def read(path) -> dict[str, list[str]]:
  """{head: class names} from a labels JSON file or a text file of one name a line."""
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f'labels file {path} does not exist')
  text = path.read_text()
  if os.fspath(path).endswith('.json'):
    names = json.loads(text)
    if not isinstance(names, dict) or not all(
        isinstance(v, list) and all(isinstance(n, str) for n in v) for v in names.values()):
      raise ValueError(f'{path}: expected {{"label": ["name", ...]}} (or "verb" and "noun" lists)')
    return names
  names = [line.strip() for line in text.splitlines() if line.strip()]
  if not names:
    raise ValueError(f'{path}: no class names (expected one a line)')
  return {'label': names}


def find(checkpoint) -> str | None:
  """The labels file that came with `checkpoint` (a workdir or an export), or None."""
  checkpoint = epath.Path(checkpoint)
  candidates = ([checkpoint / WORKDIR_FILE] if checkpoint.is_dir() else
                [epath.Path(beside(checkpoint)), checkpoint.parent / WORKDIR_FILE])
  for c in candidates:
    if c.exists():
      return os.fspath(c)
  return None
