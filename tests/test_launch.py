"""launch/*.sh with DRY_RUN=1: the commands they would run, and no cloud or cluster call."""
import os
import shlex
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


def test_tpu_vm_every_step(no_cloud):
  path, _ = no_cloud
  proc = dry_run("tpu_vm.sh", ["create", "copy", "install", "run", "delete", "--",
                               "--config.init.clip=/data/ViT B.pt", "--config.train.batch_size=64"],
                 path, SPOT="1", REPO="/src/ca2st_jax", **TPU_ENV)
  assert proc.returncode == 0, proc.stderr
  lines = [shlex.split(line) for line in proc.stdout.splitlines()]
  assert len(lines) == 6
  create, describe, copy, install, run, delete = lines
  assert create == ["gcloud", "compute", "tpus", "queued-resources", "create", "my-v5e",
                    "--node-id=my-v5e", "--zone=us-west4-a", "--accelerator-type=v5litepod-16",
                    "--runtime-version=v2-alpha-tpuv5-lite", "--spot"]
  assert describe[:6] == ["gcloud", "compute", "tpus", "queued-resources", "describe", "my-v5e"]
  assert copy == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse", "--zone=us-west4-a",
                  "--worker=all", "/src/ca2st_jax", "my-v5e:~/ca2st_jax"]
  for ssh in (install, run):
    assert ssh[:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-v5e", "--zone=us-west4-a",
                       "--worker=all"]
  assert "pip install -q 'jax[tpu]' -e ." in install[8]
  # The command each worker runs, as its shell will split it: the flags stay whole.
  remote = shlex.split(run[8].removeprefix("--command="))
  i = remote.index("python3")
  assert remote[i:i + 7] == ["python3", "-m", "ca2st_jax.main", "--config=configs/cast_k400.py",
                             "--workdir=gs://bucket/run 1", "--config.init.clip=/data/ViT B.pt",
                             "--config.train.batch_size=64"]
  assert delete == ["gcloud", "compute", "tpus", "queued-resources", "delete", "my-v5e",
                    "--zone=us-west4-a", "--force", "--quiet"]


def test_tpu_vm_old_form_copies_installs_and_runs(no_cloud):
  path, _ = no_cloud
  proc = dry_run("tpu_vm.sh", ["--config.train.batch_size=64"], path, **TPU_ENV)
  assert proc.returncode == 0, proc.stderr
  lines = [shlex.split(line) for line in proc.stdout.splitlines()]
  assert [line[4] for line in lines] == ["scp", "ssh", "ssh"]
  assert lines[2][-1].endswith("--config.train.batch_size=64 2>&1 | tee -a ~/train.log")


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


def test_gpu_slurm_prints_srun_and_each_task_command(no_cloud):
  path, _ = no_cloud
  proc = dry_run("gpu_slurm.sh", ["--config.init.clip=/w/ViT-B-16.pt"], path,
                 CONFIG="configs/cava_vggsound.py", WORKDIR="/shared/ckpt/cava")
  assert proc.returncode == 0, proc.stderr
  srun, task = [shlex.split(line) for line in proc.stdout.splitlines()]
  assert srun == ["srun", "--kill-on-bad-exit=1", "bash", os.path.join(ROOT, "launch", "gpu.sh"),
                  "--config.init.clip=/w/ViT-B-16.pt"]
  assert task[0] == "XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true"
  assert task[1] == "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9"
  assert task[2:] == ["python3", "-m", "ca2st_jax.main", "--config=configs/cava_vggsound.py",
                      "--workdir=/shared/ckpt/cava", "--config.init.clip=/w/ViT-B-16.pt"]


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
