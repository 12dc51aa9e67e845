"""After-training outputs of a run (configs/demo.py turns them on with config.post):
report.png (loss curve, val top-1 curve, confusion matrix) and a PyTorch export of the final model.
Workdir files go through etils.epath (a gs:// workdir works like a local one)."""
from __future__ import annotations

import io
import os
import tempfile

import numpy as np
from etils import epath

from ca2st_jax.checkpoints import labels as labels_lib
from ca2st_jax.train.writer import read_metrics


def class_names(config, n):
  if config.data.get("name", "") == "synthetic_av":
    try:
      from ca2st_jax.data import synthetic  # pylint: disable=g-import-not-at-top
      if len(synthetic.CLASSES) == n:
        return sorted(synthetic.CLASSES)  # the VGGSound builder's label order
    except ImportError:
      pass
  return [str(i) for i in range(n)]


def write_report(config, workdir, out_name="report.png"):
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
    names = class_names(config, cm.shape[0])
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
    ax.set_title(f"confusion matrix (val top-1 {top1:.3f})")
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=110)
  plt.close(fig)
  path = epath.Path(workdir) / out_name
  path.write_bytes(png.getvalue())
  return str(path)


def export_torch(config, workdir, config_args=()):
  """Runs the interop helper's exporter (python -m ca2st_jax.tools.export_torch) on the workdir.

  A subprocess, because that tool defines its own absl flags; `config_args` are this run's
  --config / --config.x=y arguments so the exporter sees the same config.
  """
  import importlib.util  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  if importlib.util.find_spec("torch") is None:
    print("PyTorch export skipped: torch is not installed (pip install torch==2.13.0 && "
          "pip install -e '.[torch]')", flush=True)
    return None
  out = epath.Path(workdir) / "model_torch.pt"
  with tempfile.TemporaryDirectory() as tmp:  # the exporter writes a local file; copied after
    local = os.path.join(tmp, "model_torch.pt")
    cmd = [sys.executable, "-m", "ca2st_jax.tools.export_torch", *config_args,
           f"--workdir={workdir}", f"--output={local}"]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode:
      print(f"PyTorch export failed ({' '.join(cmd)}):\n{r.stderr[-2000:]}", flush=True)
      return None
    out.write_bytes(epath.Path(local).read_bytes())
    local_labels = epath.Path(labels_lib.beside(local))
    if local_labels.exists():  # the class names, where ca2st_jax.predict looks for them
      epath.Path(labels_lib.beside(out)).write_text(local_labels.read_text())
  print(f"PyTorch export: {out}", flush=True)
  return str(out)


def predict_command(config, workdir, config_args=()) -> str | None:
  """A ready `python -m ca2st_jax.predict` command on one of the run's own synthetic test clips
  (None for other data sets, or when the clips are not there)."""
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
    print(f"report: {write_report(config, workdir)}", flush=True)
  if post.get("export_torch", False):
    export_torch(config, workdir, config_args)
  if post.get("predict_command", False):
    command = predict_command(config, workdir, config_args)
    if command:
      print(f"Predict on one of its clips:\n  {command}", flush=True)
