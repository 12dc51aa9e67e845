#!/usr/bin/env bash
# Train on a Cloud TPU VM (single host or pod slice): the same command runs on every worker and
# jax.distributed.initialize() finds the others. Data and checkpoints should live on GCS
# (tfds data_dir and --workdir as gs:// paths) so every worker sees them.
#
#   launch/tpu_vm.sh [STEP...] [-- <ca2st_jax.main flags>]
#
# Steps, run in the order given (default: copy install run, on a TPU VM that already exists):
#   create   request the slice as a queued resource and wait until it is ACTIVE
#   copy     copy this repository to ~/ca2st_jax on every worker
#   install  pip install 'jax[tpu]' and the package on every worker
#   run      python3 -m ca2st_jax.main on every worker (output appended to ~/train.log there)
#   delete   delete the queued resource and its TPU VM
#
#   TPU=my-v5p-64 ZONE=us-east5-a ACCELERATOR=v5p-64 CONFIG=configs/ca2st_vggsound.py \
#     WORKDIR=gs://bucket/run1 launch/tpu_vm.sh create copy install run -- --config.init.clip=...
#   TPU=my-v5p-64 ZONE=us-east5-a launch/tpu_vm.sh delete
#
# Environment: TPU, ZONE (always); ACCELERATOR (create: v4-N, v5p-N, v5litepod-N, v6e-N);
# RUNTIME (create; default by accelerator), SPOT=1 (create a spot slice); CONFIG, WORKDIR (run);
# REPO (copy; default this repository). DRY_RUN=1 prints every command instead of running it.
# Check first that the step fits the slice (no TPU needed):
#   python -m ca2st_jax.tools.aot --config=$CONFIG --topology=$ACCELERATOR
set -euo pipefail

steps=()
while (($#)) && [[ "$1" != "--" ]]; do
  case "$1" in
    create | copy | install | run | delete) steps+=("$1"); shift ;;
    -*) break ;;  # the old form: launch/tpu_vm.sh <main flags>
    *) echo "tpu_vm.sh: unknown step '$1' (create, copy, install, run, delete)" >&2; exit 2 ;;
  esac
done
[[ "${1:-}" == "--" ]] && shift
((${#steps[@]})) || steps=(copy install run)

: "${TPU:?name of the TPU VM}" "${ZONE:?its zone}"

# The command, quoted so that it can be pasted back into a shell; run unless DRY_RUN is set.
cmd() {
  if [[ -n "${DRY_RUN:-}" ]]; then
    printf '%q' "$1"; shift; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

on_all_workers() {
  cmd gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="$1"
}

default_runtime() {
  case "$1" in
    v4-*) echo tpu-ubuntu2204-base ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) echo "tpu_vm.sh: ACCELERATOR=$1: expected v4-N, v5p-N, v5litepod-N or v6e-N" >&2; return 2 ;;
  esac
}

for step in "${steps[@]}"; do
  case "$step" in
    create)
      : "${ACCELERATOR:?accelerator type, e.g. v5p-64}"
      runtime=${RUNTIME:-$(default_runtime "$ACCELERATOR")}
      cmd gcloud compute tpus queued-resources create "$TPU" --node-id="$TPU" --zone="$ZONE" \
        --accelerator-type="${ACCELERATOR/v5e-/v5litepod-}" --runtime-version="$runtime" \
        ${SPOT:+--spot}
      describe=(gcloud compute tpus queued-resources describe "$TPU" --zone="$ZONE"
                --format='value(state.state)')
      if [[ -n "${DRY_RUN:-}" ]]; then
        cmd "${describe[@]}"  # repeated every 30 s until ACTIVE
      else
        until [[ "$("${describe[@]}")" == ACTIVE ]]; do
          echo "tpu_vm.sh: waiting for $TPU to become ACTIVE" >&2
          sleep 30
        done
      fi
      ;;
    copy)
      cmd gcloud compute tpus tpu-vm scp --recurse --zone="$ZONE" --worker=all \
        "${REPO:-$(git rev-parse --show-toplevel)}" "$TPU":~/ca2st_jax
      ;;
    install)
      on_all_workers "set -e; cd ~/ca2st_jax; pip install -q 'jax[tpu]' -e ."
      ;;
    run)
      : "${CONFIG:?configs/<name>.py}" "${WORKDIR:?gs:// workdir}"
      extra=$( (($#)) && printf ' %q' "$@" || true)
      on_all_workers "set -eo pipefail; cd ~/ca2st_jax; python3 -m ca2st_jax.main \
--config=$(printf %q "$CONFIG") --workdir=$(printf %q "$WORKDIR")$extra 2>&1 | tee -a ~/train.log"
      ;;
    delete)
      cmd gcloud compute tpus queued-resources delete "$TPU" --zone="$ZONE" --force --quiet
      ;;
  esac
done
