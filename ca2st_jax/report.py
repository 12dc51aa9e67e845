"""After-training outputs of a run, run by ca2st_jax.main when config.post asks (configs/demo.py
does): report.png (loss curve, val top-1 curve, per-video confusion matrix), a PyTorch export of
the final model and a ready predict command. Workdir files go through etils.epath (a gs://
workdir works like a local one)."""
from __future__ import annotations

import importlib.util
import io
import os
import tempfile

import numpy as np
from etils import epath

from ca2st_jax.checkpoints import labels as labels_lib
from ca2st_jax.train.writer import read_metrics


def class_names(workdir, n: int) -> list[str]:
  """The workdir's class names of the 'label' head (labels.json), else class indices."""
  found = labels_lib.find(workdir)
  names = labels_lib.read(found).get("label", []) if found else []
  return list(names) if len(names) == n else [str(i) for i in range(n)]


def write_report(workdir, out_name="report.png"):
  """report.png: the training curve and the confusion matrix of the last evaluation (videos, each
  predicted from the mean of its views' softmax, as top-1 counts them)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  recs = read_metrics(workdir)
  train = [r for r in recs if r.get("split") == "train"]
  val = [r for r in recs if r.get("split") == "val" and "top1" in r]
  cm_path = epath.Path(workdir) / "confusion_matrix.npy"
  fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
  ax = axes[0]
  ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
  ax.set_xlabel("step")
  ax.set_ylabel("loss")
  ax2 = ax.twinx()
  ax2.plot([r["step"] for r in val], [r["top1"] for r in val], "o-", color="C1", label="val top-1")
  ax2.set_ylim(0, 1.02)
  ax2.set_ylabel("val top-1")
  ax.set_title("training curve")
  ax.legend(loc="center left")
  ax2.legend(loc="center right")
  ax = axes[1]
  if cm_path.exists():
    with cm_path.open("rb") as f:
      cm = np.load(f)
    names = class_names(workdir, cm.shape[0])
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    for i in range(cm.shape[0]):
      for j in range(cm.shape[1]):
        if cm[i, j]:
          ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top1 = val[-1]["top1"] if val else float("nan")
    ax.set_title(f"confusion matrix: {int(cm.sum())} videos (val top-1 {top1:.3f})")
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=110)
  plt.close(fig)
  path = epath.Path(workdir) / out_name
  path.write_bytes(png.getvalue())
  return str(path)


def export_torch(config, workdir):
  """model_torch.pt (and model_torch.labels.json) in the workdir, from its latest checkpoint."""
  if importlib.util.find_spec("torch") is None:
    from ca2st_jax.tools.export_torch import TORCH_MISSING  # pylint: disable=g-import-not-at-top
    print(f"PyTorch export skipped: {TORCH_MISSING}", flush=True)
    return None
  from ca2st_jax.interop.torch_io import CheckpointError  # pylint: disable=g-import-not-at-top
  from ca2st_jax.tools import export_torch as exporter  # pylint: disable=g-import-not-at-top
  out = epath.Path(workdir) / "model_torch.pt"
  with tempfile.TemporaryDirectory() as tmp:  # the exporter writes a local file; copied after
    local = os.path.join(tmp, "model_torch.pt")
    try:
      exporter.export(config, local, workdir=workdir)
    except (CheckpointError, OSError, ValueError) as e:
      print(f"PyTorch export failed: {e}", flush=True)
      return None
    out.write_bytes(epath.Path(local).read_bytes())
    local_labels = epath.Path(labels_lib.beside(local))
    if local_labels.exists():  # the class names, where ca2st_jax.predict looks for them
      epath.Path(labels_lib.beside(out)).write_text(local_labels.read_text())
  print(f"PyTorch export: {out}", flush=True)
  return str(out)


def predict_command(config, workdir, config_args=()) -> str | None:
  """A ready `python -m ca2st_jax.predict` command on one of the run's own synthetic test clips
  (None for other data sets: the synthetic set is the one whose source videos are known files).
  None also when the clips are not there."""
  d = config.data
  if d.get("name", "") != "synthetic_av":
    return None
  from ca2st_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  # Where ca2st_jax.data.pipeline.dataset_dir puts the synthetic set.
  data_dir = d.get("data_dir", "") or os.environ.get(
      "TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))
  spec = synthetic.SyntheticSpec(**dict(d.get("synthetic", {}) or {}))
  clips = sorted((synthetic.raw_dir(os.path.join(data_dir, "synthetic_av"), spec) / "clips")
                 .glob("syntest*.mp4"))
  if not clips:
    return None
  return " ".join(["python -m ca2st_jax.predict", *config_args, f"--checkpoint={workdir}",
                   str(clips[0])])


def run_post(config, workdir, config_args=()):
  post = config.get("post", {}) or {}
  if post.get("report", False):
    print(f"report: {write_report(workdir)}", flush=True)
  if post.get("export_torch", False):
    export_torch(config, workdir)
  if post.get("predict_command", False):
    command = predict_command(config, workdir, config_args)
    if command:
      print(f"Predict on one of its clips:\n  {command}", flush=True)
