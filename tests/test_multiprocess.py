"""Multi-process runs on this machine through launch/local.sh: 2 processes x 4 CPU devices, the real
tiny CA²ST (configs/demo.py) through the real Grain pipeline on mesh (data 4, fsdp 2), parameters
sharded across processes and imported from a PyTorch checkpoint (config.init), against the same
config in this 1-process, 8-device pytest process.

One test runs every launch once (they are slow on a 2-core machine; as separate tests sharing a
module fixture, pytest-xdist ran the launches once per worker, both at the same time), each bounded
by a timeout that kills the whole process group, then checks what the runs left behind:
  B  2 processes, uninterrupted                         == A (1 process, in here)
  C  2 processes, SIGTERM to process 1 only (after step 4) → both save the same step, exit 0
  C2 C's workdir resumed by 2 processes                 == B bit for bit
  C1 a copy of C's checkpoint resumed by 1 process      == A
  A' 1 process stopped by SIGTERM at step 3, resumed by 2 processes == A
  E2 --mode=eval of A's workdir by 2 processes; E1 --mode=eval of B's by 1 process.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest

from ca2st_jax.checkpoints import orbax as orbax_ckpt
from ca2st_jax.train import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH_TIMEOUT_S = 900
# Every launch runs inside the one test: more than the suite's 600 s per test.
pytestmark = pytest.mark.timeout(2400)
STEPS = 6

CONFIG = '''
import importlib.util
import os


def get_config():
  spec = importlib.util.spec_from_file_location("demo", {demo!r})
  demo = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(demo)
  c = demo.get_config()
  c.data.update(data_dir={data!r}, eval_batch_size=8, num_workers=0)
  c.data.synthetic.update(num_train=32, num_test=8)
  c.mesh.update(data=4, fsdp=2, fsdp_min_size=0)  # every parameter sharded over fsdp
  c.train.update(batch_size=16, total_steps={steps}, warmup_steps=1, log_every=1, eval_every=0,
                 ckpt_every=3, mixup_prob=1.0)
  c.init = dict(checkpoint={init!r})
  c.ckpt["async"] = False
  c.post.update(report=False, export_torch=False)
  return c
'''


def _load_config(path):
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location("mp_config", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def _launch(cfg_path, workdir, *flags, cache_dir, on_line=None):
  """launch/local.sh 2 ...; returns (exit status, output lines, child pids)."""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_COMPILATION_CACHE_DIR=cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  env.pop("XLA_FLAGS", None)  # conftest's 8 host devices; local.sh gives each process 4
  p = subprocess.Popen([os.path.join(ROOT, "launch", "local.sh"), "2", f"--config={cfg_path}",
                        f"--workdir={workdir}", *flags], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
  lines, pids = [], {}

  def read():
    for line in p.stdout:
      lines.append(line)
      started = re.match(r"local\.sh: process (\d+) pid (\d+)$", line.strip())
      if started:
        pids[int(started.group(1))] = int(started.group(2))
      if on_line is not None:
        on_line(line, pids)

  reader = threading.Thread(target=read, daemon=True)
  reader.start()
  try:
    rc = p.wait(timeout=LAUNCH_TIMEOUT_S)
  except subprocess.TimeoutExpired:
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    raise AssertionError(f"launch/local.sh hung for {LAUNCH_TIMEOUT_S} s:\n{''.join(lines[-40:])}")
  reader.join(timeout=30)
  return rc, lines, pids


def _final_params(cfg, workdir):
  setup = trainer.build_setup(cfg)
  ckpt = trainer.checkpointer(cfg, workdir, setup)
  state, _, _, _ = ckpt.restore()
  step = ckpt.latest_step()
  ckpt.close()
  return step, {k: np.asarray(jax.device_get(v))
                for k, v in orbax_ckpt.flatten(state["params"]).items()}


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f if l.strip()]


def _out(lines):
  return "".join(lines[-60:])


def _launch_all(tmp):
  from absl import flags  # pylint: disable=import-outside-toplevel
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  from ca2st_jax.tools import export_torch  # pylint: disable=import-outside-toplevel
  cache = str(tmp / "jax_cache")
  init = str(tmp / "init.pth")
  cfg_path = str(tmp / "config.py")
  with open(cfg_path, "w") as f:
    f.write(CONFIG.format(demo=os.path.join(ROOT, "configs", "demo.py"), data=str(tmp / "data"),
                          steps=STEPS, init=init))
  cfg = _load_config(cfg_path)
  # The config.init checkpoint: a fresh model of another seed, in the reference layout.
  fresh = _load_config(cfg_path)
  fresh.seed, fresh.init = 7, {}
  export_torch.export(fresh, init)
  r = {"cfg": cfg, "tmp": tmp}

  wd_a = str(tmp / "A")
  r["A"] = trainer.train_and_evaluate(cfg, wd_a, "train_and_eval")
  r["A_params"] = _final_params(cfg, wd_a)

  wd_b = str(tmp / "B")
  r["B_rc"], r["B_out"], _ = _launch(cfg_path, wd_b, cache_dir=cache)
  assert r["B_rc"] == 0, _out(r["B_out"])
  r["B_params"] = _final_params(cfg, wd_b)

  wd_c = str(tmp / "C")
  sent = {}

  # After the step-3 checkpoint: Orbax's save collectives are compiled on both processes by then
  # (first-time compiles skew the processes; gloo gives a new collective group 30 s to form).
  def preempt_process_1(line, pids):
    if line.startswith("[1] [train] step 4/") and not sent:
      os.kill(pids[1], signal.SIGTERM)
      sent["at"] = 1

  r["C_rc"], r["C_out"], _ = _launch(cfg_path, wd_c, cache_dir=cache, on_line=preempt_process_1)
  r["C_sent"] = bool(sent)
  assert r["C_rc"] == 0, _out(r["C_out"])
  wd_c1 = str(tmp / "C1")
  shutil.copytree(wd_c, wd_c1)
  r["C2_rc"], r["C2_out"], _ = _launch(cfg_path, wd_c, cache_dir=cache)
  assert r["C2_rc"] == 0, _out(r["C2_out"])
  r["C2_params"] = _final_params(cfg, wd_c)
  r["C1"] = trainer.train_and_evaluate(cfg, wd_c1, "train_and_eval")
  r["C1_params"] = _final_params(cfg, wd_c1)

  wd_a2 = str(tmp / "A2")

  def sigterm_at_3(step):
    if step == 3:
      os.kill(os.getpid(), signal.SIGTERM)

  r["A2_first"] = trainer.train_and_evaluate(cfg, wd_a2, "train_and_eval", step_hook=sigterm_at_3)
  r["A2_rc"], r["A2_out"], _ = _launch(cfg_path, wd_a2, cache_dir=cache)
  assert r["A2_rc"] == 0, _out(r["A2_out"])
  r["A2_params"] = _final_params(cfg, wd_a2)

  r["E2_rc"], r["E2_out"], _ = _launch(cfg_path, wd_a, "--mode=eval", cache_dir=cache)
  r["E1"] = trainer.train_and_evaluate(cfg, wd_b, "eval")
  r["wd"] = dict(A=wd_a, B=wd_b, C=wd_c, A2=wd_a2)
  return r


def _assert_params_close(a, b, what):
  assert a[0] == b[0] == STEPS, what
  assert a[1].keys() == b[1].keys()
  for k in a[1]:
    np.testing.assert_allclose(a[1][k], b[1][k], rtol=1e-5, atol=1e-5, err_msg=f"{what}: {k}")


def _check_two_processes_match_one_process(runs):
  out = "".join(runs["B_out"])
  assert "Initialised from config.init" in out  # the import ran with parameters sharded
  train_a = [l for l in _metrics(runs["wd"]["A"]) if l["split"] == "train"]
  train_b = [l for l in _metrics(runs["wd"]["B"]) if l["split"] == "train"]
  assert [l["step"] for l in train_b] == list(range(1, STEPS + 1))
  np.testing.assert_allclose([l["loss"] for l in train_b], [l["loss"] for l in train_a],
                             rtol=1e-5)
  _assert_params_close(runs["B_params"], runs["A_params"], "2 processes vs 1")
  val_b = [l for l in _metrics(runs["wd"]["B"]) if l["split"] == "val"][0]
  for k, v in runs["A"].items():
    assert val_b[k] == pytest.approx(v, abs=1e-6), k


def _check_sigterm_to_one_process_saves_same_step_everywhere(runs):
  out = "".join(runs["C_out"])
  assert runs["C_sent"] and runs["C_rc"] == 0, _out(runs["C_out"])
  saved = {line[:3]: line.split("step ")[1].split()[0] for line in out.splitlines()
           if "SIGTERM: saved checkpoint at step" in line}
  assert set(saved) == {"[0]", "[1]"} and len(set(saved.values())) == 1, saved
  assert int(saved["[0]"]) < STEPS
  assert runs["C2_rc"] == 0, _out(runs["C2_out"])
  a, b = runs["C2_params"], runs["B_params"]
  assert a[0] == b[0] == STEPS
  for k in a[1]:
    np.testing.assert_array_equal(a[1][k], b[1][k], err_msg=k)


def _check_checkpoints_move_between_process_counts(runs):
  # 2-process checkpoint resumed by 1 process, and a 1-process one by 2 processes.
  _assert_params_close(runs["C1_params"], runs["A_params"], "2-process ckpt resumed by 1")
  assert runs["A2_first"] == {"preempted": True, "step": 3}
  assert runs["A2_rc"] == 0, _out(runs["A2_out"])
  _assert_params_close(runs["A2_params"], runs["A_params"], "1-process ckpt resumed by 2")
  # --mode=eval both ways reproduces the final eval of the run that wrote the workdir.
  assert runs["E2_rc"] == 0, _out(runs["E2_out"])
  evals = [l for l in "".join(runs["E2_out"]).splitlines() if l.startswith("[0] [eval] step")]
  assert evals and f"top1 {runs['A']['top1']:.4f}" in evals[-1], evals
  val_b = [l for l in _metrics(runs["wd"]["B"]) if l["split"] == "val"][0]
  for k, v in runs["E1"].items():
    assert val_b[k] == pytest.approx(v, abs=1e-6), k


def test_multi_process_runs(tmp_path):
  runs = _launch_all(tmp_path)
  _check_two_processes_match_one_process(runs)
  _check_sigterm_to_one_process_saves_same_step_everywhere(runs)
  _check_checkpoints_move_between_process_counts(runs)
