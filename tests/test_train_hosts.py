"""What a pod needs that one process never shows: per-host augmentation draws, and a gs:// workdir
(through an offline stand-in for Cloud Storage registered as fsspec's 'gs' file system)."""
import importlib
import json
import os

import ml_collections
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from ca2st_jax import config_lib
from ca2st_jax import report
from ca2st_jax.data import pipeline, synthetic
from ca2st_jax.train import workdir as workdir_lib
from ca2st_jax.train import writer as writer_lib
from tests_helpers import forget_gs_clients

SPEC = dict(num_train=12, num_test=4, num_frames=16, size=40)


# Its module fixtures run once, on one worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("test_train_hosts")


@pytest.fixture(scope="module")
def train_split(tmp_path_factory):
  d = tmp_path_factory.mktemp("syn")
  ds_dir = synthetic.prepare(d / "synthetic_av", synthetic.SyntheticSpec(**SPEC))
  cfg = ml_collections.ConfigDict(dict(
      model=dict(num_frames=8, tubelet_size=2, image_size=32, num_mel_bins=32,
                 spectrogram_length=48),
      data=config_lib.data_config(frame_stride=2, randaugment="rand-m7-n2-mstd0.5-inc1"),
      train=dict(batch_size=4)))
  src, info = pipeline.open_split(ds_dir, "train")
  return src, pipeline.clip_options(cfg, info)


def _batches(src, opts, host, seed=0, n=2):
  it = iter(pipeline.train_dataset(src, opts, batch_size=3, seed=seed, host_index=host,
                                   host_count=2))
  return [next(it) for _ in range(n)]


def test_hosts_draw_different_augmentations_reproducibly(train_split):
  src, opts = train_split
  same = [src[0]] * len(src)  # every example the same clip: only the draws can differ
  h0, h1 = _batches(same, opts, 0), _batches(same, opts, 1)
  for b0, b1 in zip(h0, h1):
    for key in ("video", "audio"):
      for i in range(3):  # host 1's i-th clip is not host 0's i-th clip
        assert not np.array_equal(b0[key][i], b1[key][i]), key
  # reproducible per (seed, step, host): the same draws when rebuilt, other draws for another seed
  for a, b in zip(_batches(same, opts, 1), h1):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(_batches(same, opts, 1, seed=1)[0]["video"], h1[0]["video"])


class FakeGcs(MemoryFileSystem):
  """An in-memory 'gs' file system (what gcsfs is to etils.epath, without a network)."""
  protocol = ("gs", "gcs")
  store, pseudo_dirs = {}, [""]

  @classmethod
  def _strip_protocol(cls, path):
    for prefix in ("gs://", "gcs://"):
      path = path.removeprefix(prefix)
    return "/" + path.strip("/")


@pytest.fixture
def fake_gcs(monkeypatch, tmp_path):
  registry = importlib.import_module("fsspec.registry")  # `fsspec.registry` is a read-only view
  for name in ("gs", "gcs"):  # epath asks fsspec for either
    monkeypatch.setitem(registry._registry, name, FakeGcs)  # pylint: disable=protected-access
  FakeGcs.store.clear()
  forget_gs_clients()
  monkeypatch.chdir(tmp_path)  # where a gs:// path taken for a local one would land
  yield FakeGcs()
  forget_gs_clients()
  assert not os.path.exists(tmp_path / "gs:"), "a gs:// path was written as a local folder"


def test_gs_workdir_files_go_to_the_bucket(fake_gcs):
  wd = "gs://bucket/run"
  config = ml_collections.ConfigDict(dict(model=dict(width=32, remat="none"),
                                          data=dict(name="synthetic_av", data_dir="/a")))
  workdir_lib.check_config(config, wd)
  workdir_lib.write_config(config, wd)
  moved = ml_collections.ConfigDict(config.to_dict())
  moved.data.data_dir, moved.model.remat, moved.model.layer_loop = "/b", "full", "scan"
  workdir_lib.check_config(moved, wd)  # resumes: same learned function
  other = ml_collections.ConfigDict(config.to_dict())
  other.model.width = 64
  with pytest.raises(ValueError, match="config.model.width"):
    workdir_lib.check_config(other, wd)
  other = ml_collections.ConfigDict(config.to_dict())
  other.data.synthetic = dict(num_train=8)
  with pytest.raises(ValueError, match="config.data.synthetic"):
    workdir_lib.check_config(other, wd)
  # A workdir of a real data set written before config.data.synthetic existed resumes.
  k400 = ml_collections.ConfigDict(dict(model=dict(width=32), data=dict(name="kinetics400")))
  workdir_lib.write_config(k400, "gs://bucket/k400")
  k400.data.synthetic = {}
  workdir_lib.check_config(k400, "gs://bucket/k400")

  w = writer_lib.MetricWriter(wd)
  w.write(1, "train", {"loss": 2.0})
  w.write(2, "val", {"top1": 0.5})
  w.close()
  w = writer_lib.MetricWriter(wd)  # a resumed run continues the file
  w.write(3, "train", {"loss": 1.0})
  w.close()
  assert [r["step"] for r in writer_lib.read_metrics(wd)] == [1, 2, 3]
  with fake_gcs.open("bucket/run/confusion_matrix.npy", "wb") as f:
    np.save(f, np.eye(2, dtype=np.int64))
  report.write_report(wd)

  files = set(fake_gcs.find("bucket/run"))
  assert {"/bucket/run/config.json", "/bucket/run/metrics.jsonl",
          "/bucket/run/report.png"} <= files, files
  assert any(f.startswith("/bucket/run/tb/events.out.tfevents") for f in files), files
  assert json.loads(fake_gcs.cat("bucket/run/config.json"))["model"]["width"] == 32
