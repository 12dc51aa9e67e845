#!/usr/bin/env bash
# Multi-host GPU training under SLURM: one task per host, all of its GPUs per task;
# jax.distributed.initialize() reads the SLURM environment to find the coordinator.
#
#   CONFIG=configs/cast_k400.py WORKDIR=/shared/ckpt/cast_k400 sbatch --nodes=2 launch/gpu_slurm.sh
#
# DRY_RUN=1 bash launch/gpu_slurm.sh ... prints the srun command and the command each task runs.
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
set -euo pipefail
: "${CONFIG:?configs/<name>.py}" "${WORKDIR:?checkpoint directory on a shared filesystem}"
# sbatch runs a copy of this script from its spool directory: find launch/ from where sbatch ran.
launch_dir=$(dirname "$0")
[[ -f "$launch_dir/gpu.sh" ]] || launch_dir="${SLURM_SUBMIT_DIR:-.}/launch"
command=(srun --kill-on-bad-exit=1 bash "$launch_dir/gpu.sh" "$@")
if [[ -n "${DRY_RUN:-}" ]]; then
  printf '%q' "${command[0]}"; printf ' %q' "${command[@]:1}"; printf '\n'
  bash "$launch_dir/gpu.sh" "$@"  # with DRY_RUN set: prints what every task runs
  exit 0
fi
"${command[@]}"
