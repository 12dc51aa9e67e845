#!/usr/bin/env bash
# Train on the GPUs of one host: one process drives all local GPUs through the mesh.
#
#   CONFIG=configs/cast_k400.py WORKDIR=/checkpoints/cast_k400 launch/gpu.sh \
#     --config.init.clip=/weights/ViT-B-16.pt --config.init.videomae=/weights/vmae_k400_ft.pth
# First time: pip install 'jax[cuda12]' torch==2.13.0 && pip install -e .
# DRY_RUN=1 prints the command (and the XLA settings it runs with) instead of running it.
set -euo pipefail
: "${CONFIG:?configs/<name>.py}" "${WORKDIR:?checkpoint directory}"
cd "$(dirname "$0")/.."
# Let XLA overlap collectives with compute, and keep memory for the batch rather than preallocating 75%.
export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_enable_latency_hiding_scheduler=true"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
command=(python3 -m ca2st_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@")
if [[ -n "${DRY_RUN:-}" ]]; then
  printf 'XLA_FLAGS=%q XLA_PYTHON_CLIENT_MEM_FRACTION=%q' "$XLA_FLAGS" "$XLA_PYTHON_CLIENT_MEM_FRACTION"
  printf ' %q' "${command[@]}"; printf '\n'
  exit 0
fi
exec "${command[@]}"
