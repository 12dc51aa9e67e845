"""Metric output of a run (process 0 only): console lines are the loop's; this writes
workdir/metrics.jsonl (one JSON object per train log / eval) and TensorBoard events in workdir/tb.

Everything goes through `etils.epath`, so a gs:// workdir works like a local one. Object stores
have no append, so metrics.jsonl is rewritten whole at each write (a run logs a few thousand
lines at most), and TensorBoard events are buffered and uploaded whole at each flush.
"""
from __future__ import annotations

import io
import json

import jax
import numpy as np
from etils import epath


class _EpathEventFile:
  """A tensorboardX record writer for any epath (tensorboardX only knows local, s3:// and gs://
  through google-cloud-storage)."""

  def __init__(self, path):
    self.path, self.buffer = epath.Path(path), io.BytesIO()

  def write(self, data):
    self.buffer.write(data)

  def flush(self):
    self.path.write_bytes(self.buffer.getvalue())

  def close(self):
    self.flush()


class _EpathEventFactory:

  def open(self, path):
    return _EpathEventFile(path)

  def directory_check(self, path):
    epath.Path(path).mkdir(parents=True, exist_ok=True)


def _is_local(path) -> bool:
  return "://" not in str(path)


class MetricWriter:
  """DIR/metrics.jsonl and TensorBoard (process 0 only)."""

  def __init__(self, workdir):
    self.active = jax.process_index() == 0
    self.path = epath.Path(workdir) / "metrics.jsonl"
    self.lines = []
    self.tb = None
    if not self.active:
      return
    if self.path.exists():  # a resumed run continues the file
      self.lines = [l for l in self.path.read_text().splitlines() if l.strip()]
    try:
      import tensorboardX  # pylint: disable=g-import-not-at-top
    except ImportError:  # pragma: no cover
      return
    logdir = str(epath.Path(workdir) / "tb")
    if not _is_local(logdir):
      tensorboardX.record_writer.register_writer_factory(logdir.split(":")[0],
                                                         _EpathEventFactory())
    self.tb = tensorboardX.SummaryWriter(logdir)

  def write(self, step: int, split: str, values: dict):
    if not self.active:
      return
    rec = {"step": int(step), "split": split}
    rec.update({k: (float(v) if isinstance(v, (int, float, np.floating, np.integer)) else v)
                for k, v in values.items()})
    self.lines.append(json.dumps(rec))
    self.path.write_text("\n".join(self.lines) + "\n")
    if self.tb is not None:
      for k, v in values.items():
        if isinstance(v, (int, float, np.floating, np.integer)):
          self.tb.add_scalar(f"{split}/{k}", float(v), step)
      self.tb.flush()

  def close(self):
    if self.tb is not None:
      self.tb.close()


def read_metrics(workdir) -> list[dict]:
  path = epath.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def format_eta(seconds: float) -> str:
  """H:MM:SS, for the progress lines of training and prediction."""
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
