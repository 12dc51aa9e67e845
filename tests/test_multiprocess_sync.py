"""Two processes that reach their first collectives far apart (one compiles late on a loaded
host) still run them: on CPU a new gloo group must form within a fixed 30 s on every process.

Two pairs of processes run at once, each process with 2 CPU devices, each pair joined by
jax.distributed over localhost. In each pair process 1 sleeps SKEW_S (> 30 s), in one pair before
(1) creating an Orbax CheckpointManager and saving, whose barriers would otherwise be a psum over
every device, in the other before (2) the first run of a jitted cross-process sum, which
`mesh.compile_then_sync` compiles and then waits for every process.
"""
import os
import signal
import socket
import subprocess
import sys

import pytest

from tests_helpers import env_without_host_devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKEW_S = 35  # past gloo's 30 s, with room for the processes' own differences
TIMEOUT_S = 240
# Mostly asleep: SKEW_S of wall time for a few seconds of work.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(TIMEOUT_S + 60)]

CHILD = r'''
import os, sys, time
import jax, jax.numpy as jnp, numpy as np
import orbax.checkpoint as ocp
from absl import flags
from jax.sharding import NamedSharding, PartitionSpec as P
from ca2st_jax.train import mesh as mesh_lib

flags.FLAGS(sys.argv[:1])  # as ca2st_jax.main (absl) does: Orbax reads its barrier flag from there
mesh_lib.maybe_initialize_distributed()
late_before = sys.argv[2] if jax.process_index() == 1 else ""
if late_before == "save":
  time.sleep({skew})
manager = ocp.CheckpointManager(sys.argv[1], item_names=("x",),
                                options=ocp.CheckpointManagerOptions(create=True))
mesh = mesh_lib.make_mesh({{"data": -1}})
x = jax.make_array_from_callback((8,), NamedSharding(mesh, P("data")),
                                 lambda idx: np.arange(8, dtype=np.float32)[idx])
manager.save(1, args=ocp.args.Composite(x=ocp.args.StandardSave({{"x": x}})))
manager.wait_until_finished()
if late_before == "sum":
  time.sleep({skew})
total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))
mesh_lib.compile_then_sync(total, x, name="sum")
print("sum", float(total(x)), flush=True)
manager.close()
'''


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_first_collectives_wait_for_a_late_process(tmp_path):
  script = tmp_path / "child.py"
  script.write_text(CHILD.format(skew=SKEW_S))
  env = env_without_host_devices(PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2",
                                 JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", JAX_NUM_PROCESSES="2")
  procs = {}
  for late_before in ("save", "sum"):
    pair_env = dict(env, JAX_COORDINATOR_ADDRESS=f"localhost:{_free_port()}")
    for i in range(2):
      procs[late_before, i] = subprocess.Popen(
          [sys.executable, str(script), str(tmp_path / late_before), late_before],
          env=dict(pair_env, JAX_PROCESS_ID=str(i)), stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT, text=True, start_new_session=True)
  outs = {}
  try:
    for key, p in procs.items():
      outs[key] = p.communicate(timeout=TIMEOUT_S)[0]
  finally:
    for p in procs.values():
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
  for key, p in procs.items():
    assert p.returncode == 0, f"{key}:\n{outs[key][-4000:]}"
    assert "sum 28.0" in outs[key], f"{key}:\n{outs[key][-4000:]}"
  for late_before in ("save", "sum"):
    assert (tmp_path / late_before / "1").is_dir()
