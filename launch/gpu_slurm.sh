#!/usr/bin/env bash
# Multi-host GPU training under SLURM: one task per host, all of its GPUs per task;
# jax.distributed.initialize() reads the SLURM environment to find the coordinator.
#
#   CONFIG=configs/cast_k400.py WORKDIR=/shared/ckpt/cast_k400 sbatch --nodes=2 launch/gpu_slurm.sh
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
set -euo pipefail
: "${CONFIG:?configs/<name>.py}" "${WORKDIR:?checkpoint directory on a shared filesystem}"
srun --kill-on-bad-exit=1 bash "$(dirname "$0")/gpu.sh" "$@"
