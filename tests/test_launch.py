"""launch/*.sh: what the DRY_RUN=1 commands print, run through recording fakes (no cloud or cluster
call), and how local.sh starts, stops and signals its processes."""
import os
import shlex
import signal
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def no_cloud(tmp_path):
  """A PATH whose gcloud / srun / sbatch only record that they were called."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  called = tmp_path / "called"
  for name in ("gcloud", "srun", "sbatch"):
    tool = bin_dir / name
    tool.write_text(f"#!/bin/sh\necho {name} >> {called}\nexit 99\n")
    tool.chmod(0o755)
  yield str(bin_dir), called
  assert not called.exists(), f"a dry run called {called.read_text()}"


def dry_run(script, args, path, **env):
  full_env = dict(os.environ, DRY_RUN="1", PATH=f"{path}:{os.environ['PATH']}", **env)
  for name in ("XLA_FLAGS", "XLA_PYTHON_CLIENT_MEM_FRACTION"):  # conftest's would show up
    if name not in env:
      full_env.pop(name, None)
  script = script if os.path.isabs(script) else os.path.join(ROOT, "launch", script)
  return subprocess.run(["bash", script, *args], cwd=ROOT, env=full_env, capture_output=True,
                        text=True, timeout=60)


TPU_ENV = dict(TPU="my-v5e", ZONE="us-west4-a", ACCELERATOR="v5e-16", CONFIG="configs/cast_k400.py",
               WORKDIR="gs://bucket/run 1")


def replay(printed, tmp_path, **env):
  """Runs the commands a dry run printed, as a user pasting them would, against fakes: gcloud runs
  each ssh --command in a local shell (HOME is `tmp_path`/home, holding ~/ca2st_jax), srun runs
  its command, and every one of them, pip and python3 too, records its call. Returns the calls in
  order as (program, working directory, XLA settings, argv)."""
  bin_dir, calls = tmp_path / "replay_bin", tmp_path / "replay_calls"
  bin_dir.mkdir(parents=True)
  (tmp_path / "home" / "ca2st_jax").mkdir(parents=True)
  # One record per call: its fields each ended by NUL, then a newline and a NUL.
  record = ('printf "%s\\0" "$(basename "$0")" "$PWD" '
            '"${XLA_FLAGS:-} ${XLA_PYTHON_CLIENT_MEM_FRACTION:-}" "$@" >> ' + f'"{calls}"; '
            f'printf "\\n\\0" >> "{calls}"\n')
  fakes = dict(
      gcloud='for a in "$@"; do [[ "$a" == --command=* ]] && exec bash -c "${a#--command=}"; done; exit 0',
      srun='while [[ "$1" == --* ]]; do shift; done; exec "$@"',
      pip="echo pip ran", python3="echo python3 ran")
  for name, body in fakes.items():
    (bin_dir / name).write_text(f"#!/bin/bash\n{record}{body}\n")
    (bin_dir / name).chmod(0o755)
  full_env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", HOME=str(tmp_path / "home"),
                  **env)
  for name in ("XLA_FLAGS", "XLA_PYTHON_CLIENT_MEM_FRACTION"):  # conftest's
    full_env.pop(name, None)
  proc = subprocess.run(["bash", "-e"], input=printed, cwd=tmp_path, env=full_env,
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  records = [r.split("\0")[:-1] for r in calls.read_text().split("\n\0")[:-1]]
  return [(r[0], r[1], r[2], r[3:]) for r in records]


def test_tpu_vm_every_step_replayed_reaches_python_with_the_flags_whole(no_cloud, tmp_path):
  path, _ = no_cloud
  main_flags = ["--config.init.clip=/data/ViT B.pt", "--config.train.batch_size=64",
                "--config.note=it's $HOME"]
  proc = dry_run("tpu_vm.sh", ["create", "copy", "install", "run", "delete", "--", *main_flags],
                 path, SPOT="1", REPO="/src/ca2st jax", **TPU_ENV)
  assert proc.returncode == 0, proc.stderr
  calls = replay(proc.stdout, tmp_path)
  home = str(tmp_path / "home")
  programs = [(program, argv[:4] if program == "gcloud" else argv[:1])
              for program, _, _, argv in calls]
  assert programs == [
      ("gcloud", ["compute", "tpus", "queued-resources", "create"]),
      ("gcloud", ["compute", "tpus", "queued-resources", "describe"]),
      ("gcloud", ["compute", "tpus", "tpu-vm", "scp"]),
      ("gcloud", ["compute", "tpus", "tpu-vm", "ssh"]), ("pip", ["install"]),
      ("gcloud", ["compute", "tpus", "tpu-vm", "ssh"]), ("python3", ["-m"]),
      ("gcloud", ["compute", "tpus", "queued-resources", "delete"])]
  create = calls[0][3]
  # v5e-16 is spelled v5litepod-16 by the queued-resources API; SPOT=1 asks for a spot slice.
  assert "--accelerator-type=v5litepod-16" in create and "--spot" in create
  assert "--runtime-version=v2-alpha-tpuv5-lite" in create
  assert calls[2][3][-2:] == ["/src/ca2st jax", "my-v5e:~/ca2st_jax"]
  assert calls[4][1] == calls[6][1] == os.path.join(home, "ca2st_jax")
  assert calls[4][3] == ["install", "-q", "jax[tpu]", "-e", "."]
  assert calls[6][3] == ["-m", "ca2st_jax.main", "--config=configs/cast_k400.py",
                         "--workdir=gs://bucket/run 1", *main_flags]
  with open(os.path.join(home, "train.log")) as f:
    assert f.read() == "python3 ran\n"


def test_tpu_vm_old_form_copies_installs_and_runs(no_cloud, tmp_path):
  path, _ = no_cloud
  proc = dry_run("tpu_vm.sh", ["--config.train.batch_size=64"], path, REPO="/src", **TPU_ENV)
  assert proc.returncode == 0, proc.stderr
  calls = replay(proc.stdout, tmp_path)
  assert [call[0] for call in calls] == ["gcloud", "gcloud", "pip", "gcloud", "python3"]
  assert calls[-1][3][-1] == "--config.train.batch_size=64"


def test_tpu_vm_spot_only_when_asked(no_cloud):
  path, _ = no_cloud
  proc = dry_run("tpu_vm.sh", ["create"], path, **TPU_ENV)
  assert proc.returncode == 0, proc.stderr
  assert "--spot" not in shlex.split(proc.stdout.splitlines()[0])


@pytest.mark.parametrize("accelerator, runtime", [("v5p-8", "v2-alpha-tpuv5"),
                                                  ("v6e-8", "v2-alpha-tpuv6e"),
                                                  ("v4-32", "tpu-ubuntu2204-base")])
def test_tpu_vm_runtime_follows_the_accelerator(no_cloud, accelerator, runtime):
  path, _ = no_cloud
  proc = dry_run("tpu_vm.sh", ["create"], path, **dict(TPU_ENV, ACCELERATOR=accelerator))
  assert proc.returncode == 0, proc.stderr
  create = shlex.split(proc.stdout.splitlines()[0])
  assert f"--accelerator-type={accelerator}" in create and f"--runtime-version={runtime}" in create


def test_tpu_vm_refuses_missing_settings_and_unknown_steps(no_cloud):
  path, _ = no_cloud
  env = {k: v for k, v in TPU_ENV.items() if k != "WORKDIR"}
  proc = dry_run("tpu_vm.sh", ["run"], path, **env)
  assert proc.returncode != 0 and "WORKDIR" in proc.stderr and not proc.stdout
  proc = dry_run("tpu_vm.sh", ["creat"], path, **TPU_ENV)
  assert proc.returncode == 2 and "unknown step 'creat'" in proc.stderr


def test_gpu_slurm_task_command_is_what_srun_runs(no_cloud, tmp_path):
  """The task command the dry run prints and the one srun's task really runs (through gpu.sh)
  are the same program, directory, XLA settings and flags, the flags whole."""
  path, _ = no_cloud
  env = dict(CONFIG="configs/cava_vggsound.py", WORKDIR="/shared/ckpt/my run")
  flags = ["--config.init.clip=/w/ViT B-16.pt", "--config.note=$HOME"]
  proc = dry_run("gpu_slurm.sh", flags, path, **env)
  assert proc.returncode == 0, proc.stderr
  srun_line, task_line = proc.stdout.splitlines()
  via_srun = replay(srun_line, tmp_path / "srun", **env)
  printed = replay(f"cd {shlex.quote(ROOT)}\n{task_line}", tmp_path / "task")
  assert [c[0] for c in via_srun] == ["srun", "python3"] and printed[0][0] == "python3"
  assert via_srun[1] == printed[0]
  _, cwd, xla, argv = printed[0]
  assert cwd == ROOT
  assert xla == "--xla_gpu_enable_latency_hiding_scheduler=true 0.9"
  assert argv == ["-m", "ca2st_jax.main", "--config=configs/cava_vggsound.py",
                  "--workdir=/shared/ckpt/my run", *flags]


def test_gpu_slurm_finds_gpu_sh_from_the_spooled_copy(no_cloud, tmp_path):
  """sbatch runs a copy of the script from its spool directory, away from launch/gpu.sh."""
  path, _ = no_cloud
  spool = tmp_path / "spool"
  spool.mkdir()
  script = spool / "slurm_script"
  script.write_text(open(os.path.join(ROOT, "launch", "gpu_slurm.sh")).read())
  proc = dry_run(str(script), [], path, CONFIG="configs/cast_k400.py", WORKDIR="/shared/ckpt",
                 SLURM_SUBMIT_DIR=ROOT)
  assert proc.returncode == 0, proc.stderr
  srun = shlex.split(proc.stdout.splitlines()[0])
  assert srun[3] == os.path.join(ROOT, "launch", "gpu.sh")


# python3 as launch/local.sh starts it (-m ca2st_jax.main ...): says what it was given, then exits 3
# if it is process $FAIL_PROCESS, else waits for SIGTERM (and exits 0 on it).
FAKE_PYTHON = r'''#!/bin/bash
echo "process $JAX_PROCESS_ID of $JAX_NUM_PROCESSES, $JAX_NUM_CPU_DEVICES devices, $JAX_COORDINATOR_ADDRESS: $*"
[[ "$JAX_PROCESS_ID" == "${FAIL_PROCESS:-}" ]] && { sleep 1; exit 3; }
trap 'echo SIGTERM; exit 0' TERM
for ((i = 0; i < 3000; i++)); do sleep 0.1; done  # short sleeps: none outlives a SIGKILL long
'''


@pytest.fixture
def local_sh(tmp_path):
  """Starts launch/local.sh 2 with a fake python3; kills what is left of it at the end."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "python3").write_text(FAKE_PYTHON)
  (bin_dir / "python3").chmod(0o755)
  started = []

  def start(*args, **env):
    full_env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", PORT="12345", **env)
    p = subprocess.Popen([os.path.join(ROOT, "launch", "local.sh"), *args], env=full_env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    started.append(p)
    return p

  yield start
  for p in started:
    try:
      os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    p.wait()


@pytest.mark.timeout(120)
def test_local_sh_stops_the_others_when_one_process_fails(local_sh):
  proc = local_sh("2", "--config=configs/demo.py", "--workdir=/tmp/my run", FAIL_PROCESS="1")
  out = proc.communicate(timeout=60)[0]  # process 0 waits 300 s unless local.sh stops it
  assert proc.returncode == 3, out
  for i in (0, 1):
    assert (f"[{i}] process {i} of 2, 4 devices, localhost:12345: -m ca2st_jax.main "
            "--config=configs/demo.py --workdir=/tmp/my run") in out.splitlines(), out
  assert "exited with status 3; stopping the others" in out and "SIGTERM" not in out


@pytest.mark.timeout(120)
def test_local_sh_passes_sigterm_to_every_process(local_sh):
  proc = local_sh("2", "--workdir=/tmp/w")
  seen = []
  while sum(line.startswith(("[0] process", "[1] process")) for line in seen) < 2:
    seen.append(proc.stdout.readline())
    assert seen[-1], "".join(seen)
  proc.send_signal(signal.SIGTERM)
  out = "".join(seen) + proc.communicate(timeout=60)[0]
  assert proc.returncode == 0, out
  assert {"[0] SIGTERM", "[1] SIGTERM"} <= set(out.splitlines()), out


def test_local_sh_refuses_a_missing_process_count(local_sh):
  proc = local_sh("--config=configs/demo.py")
  out = proc.communicate(timeout=60)[0]
  assert proc.returncode == 2 and out.startswith("usage:"), out
