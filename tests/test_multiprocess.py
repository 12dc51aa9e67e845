"""Multi-process runs on this machine through launch/local.sh: 2 processes x 4 CPU devices, a
depth-1 CA²ST (configs/demo.py) through the real Grain pipeline on mesh (data 4, fsdp 2), every
parameter sharded across processes, against the same config in this 1-process, 8-device pytest
process.

One test runs the two launches in turn (as separate tests sharing a module fixture, pytest-xdist
would run them once per worker, at the same time), each bounded by a timeout that kills its
process group, then checks what they left behind:
  A  1 process, in here (8 devices)
  B  2 processes, SIGTERM to process 1 only (after step 4) → both save the same step, exit 0
  B2 B's workdir resumed by 2 processes to the last step: the losses of every step, the final
     parameters and the eval metrics of B and B2 == A's
"""
import json
import os
import re
import signal
import subprocess
import threading

import jax
import numpy as np
import pytest

from ca2st_jax.checkpoints import orbax as orbax_ckpt
from ca2st_jax.train import trainer
from tests_helpers import ROOT, env_without_host_devices, load_config

# A hang guard, not a speed check: a launch takes a few minutes on a loaded 2-core machine.
LAUNCH_TIMEOUT_S = 600
# Two launches and a run in this process, inside the one test.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
STEPS = 6

# The launches' --config: run_config below, imported from this file.
CONFIG_FILE = '''
import sys
sys.path.insert(0, {tests!r})
from test_multiprocess import run_config


def get_config():
  return run_config({data!r})
'''


def run_config(data_dir):
  """configs/demo.py at depth 1 on a 32-video synthetic set in `data_dir`, 6 steps."""
  c = load_config("demo")
  c.model.depth = 1
  c.data.update(data_dir=data_dir, eval_batch_size=8, num_workers=0)
  c.data.synthetic.update(num_train=32, num_test=8)
  c.mesh.update(data=4, fsdp=2, fsdp_min_size=0)  # every parameter sharded over fsdp
  c.train.update(batch_size=16, total_steps=STEPS, warmup_steps=1, log_every=1, eval_every=0,
                 ckpt_every=3, mixup_prob=1.0)
  c.ckpt["async"] = False
  c.post.update(report=False, export_torch=False)
  return c


def _launch(cfg_path, workdir, *, on_line=None):
  """launch/local.sh 2 ...; returns (exit status, output lines)."""
  env = env_without_host_devices(PYTHONPATH=str(ROOT))  # local.sh gives each process 4
  p = subprocess.Popen([str(ROOT / "launch" / "local.sh"), "2", f"--config={cfg_path}",
                        f"--workdir={workdir}"], stdout=subprocess.PIPE,
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
  return rc, lines


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
  data = str(tmp / "data")
  cfg_path = str(tmp / "config.py")
  with open(cfg_path, "w") as f:
    f.write(CONFIG_FILE.format(tests=str(ROOT / "tests"), data=data))
  cfg = run_config(data)
  r = {}

  wd_a = str(tmp / "A")
  r["A"] = trainer.train_and_evaluate(cfg, wd_a, "train_and_eval")  # also builds the data set
  r["A_params"] = _final_params(cfg, wd_a)

  wd_b = str(tmp / "B")
  sent = {}

  # After the step-3 checkpoint: Orbax's save collectives are compiled on both processes by then
  # (first-time compiles skew the processes; gloo gives a new collective group 30 s to form).
  def preempt_process_1(line, pids):
    if line.startswith("[1] [train] step 4/") and not sent:
      os.kill(pids[1], signal.SIGTERM)
      sent["at"] = 1

  r["B_rc"], r["B_out"] = _launch(cfg_path, wd_b, on_line=preempt_process_1)
  r["B_sent"] = bool(sent)
  assert r["B_rc"] == 0, _out(r["B_out"])
  r["B2_rc"], r["B2_out"] = _launch(cfg_path, wd_b)
  assert r["B2_rc"] == 0, _out(r["B2_out"])
  r["B2_params"] = _final_params(cfg, wd_b)
  r["wd"] = dict(A=wd_a, B=wd_b)
  return r


def _check_sigterm_to_one_process_saves_same_step_everywhere(runs):
  out = "".join(runs["B_out"])
  assert runs["B_sent"] and runs["B_rc"] == 0, _out(runs["B_out"])
  saved = {line[:3]: line.split("step ")[1].split()[0] for line in out.splitlines()
           if "SIGTERM: saved checkpoint at step" in line}
  assert set(saved) == {"[0]", "[1]"} and len(set(saved.values())) == 1, saved
  assert int(saved["[0]"]) < STEPS
  assert runs["B2_rc"] == 0, _out(runs["B2_out"])


def _check_two_processes_match_one_process(runs):
  """The preempted and resumed 2-process run against the 1-process one: the same function of the
  same batches (data order, mixup and drop-path draws carried through the resume)."""
  train_a = [l for l in _metrics(runs["wd"]["A"]) if l["split"] == "train"]
  train_b = {l["step"]: l["loss"] for l in _metrics(runs["wd"]["B"]) if l["split"] == "train"}
  assert sorted(train_b) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([train_b[l["step"]] for l in train_a], [l["loss"] for l in train_a],
                             rtol=1e-5)
  a, b = runs["A_params"], runs["B2_params"]
  assert a[0] == b[0] == STEPS
  assert a[1].keys() == b[1].keys()
  for k in a[1]:
    np.testing.assert_allclose(b[1][k], a[1][k], rtol=1e-5, atol=1e-5, err_msg=k)
  val_b = [l for l in _metrics(runs["wd"]["B"]) if l["split"] == "val"][0]
  for k, v in runs["A"].items():
    assert val_b[k] == pytest.approx(v, abs=1e-6), k


def test_two_processes_match_one_and_a_preempted_run_resumes(tmp_path):
  runs = _launch_all(tmp_path)
  _check_sigterm_to_one_process_saves_same_step_everywhere(runs)
  _check_two_processes_match_one_process(runs)
