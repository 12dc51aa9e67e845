#!/usr/bin/env bash
# Train on a Cloud TPU VM (single host or pod slice): the same command runs on every worker and
# jax.distributed.initialize() finds the others. Data and checkpoints should live on GCS
# (tfds data_dir and --workdir as gs:// paths) so every worker sees them.
#
#   TPU=my-v5p-64 ZONE=us-east5-a CONFIG=configs/ca2st_vggsound.py WORKDIR=gs://bucket/run1 \
#     launch/tpu_vm.sh --config.init.clip=/data/ViT-B-16.pt ...
set -euo pipefail
: "${TPU:?name of the TPU VM}" "${ZONE:?its zone}" "${CONFIG:?configs/<name>.py}" "${WORKDIR:?gs:// workdir}"
REPO=${REPO:-$(git rev-parse --show-toplevel)}
EXTRA_ARGS=$(printf ' %q' "$@")

gcloud compute tpus tpu-vm scp --recurse --zone="$ZONE" --worker=all "$REPO" "$TPU":~/ca2st_jax
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="
  set -e; cd ~/ca2st_jax
  pip install -q 'jax[tpu]' -e .
  python3 -m ca2st_jax.main --config=$CONFIG --workdir=$WORKDIR$EXTRA_ARGS 2>&1 | tee -a ~/train.log"
