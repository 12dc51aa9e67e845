#!/usr/bin/env bash
# N training processes on this machine, joined by jax.distributed over localhost: the multi-host
# code paths (per-process data shards, cross-process collectives, Orbax multi-process saves,
# preemption sync) on one CPU machine. Each process gets its own CPU devices; collectives use gloo.
#
#   launch/local.sh 2 --config=configs/demo.py --workdir=/tmp/demo_2proc
#
# Environment: DEVICES_PER_PROCESS (default 4), PORT (coordinator port; default a free one).
# Waits for all processes; exits with the first non-zero status if any fails, after stopping the
# others (they could only hang in a collective). SIGTERM/SIGINT to this script reaches every process
# (they save a checkpoint at the same step and exit 0).
set -uo pipefail
if [[ $# -lt 1 || ! "$1" =~ ^[0-9]+$ || "$1" -lt 1 ]]; then
  echo "usage: $0 NUM_PROCESSES <ca2st_jax.main flags...>" >&2
  exit 2
fi
N=$1; shift
cd "$(dirname "$0")/.."
PORT=${PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')}

export JAX_PLATFORMS=cpu
export JAX_NUM_CPU_DEVICES=${DEVICES_PER_PROCESS:-4}
export JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo
export JAX_COORDINATOR_ADDRESS=localhost:$PORT
export JAX_NUM_PROCESSES=$N

pids=()
for ((i = 0; i < N; i++)); do
  JAX_PROCESS_ID=$i python3 -m ca2st_jax.main "$@" > >(sed -u "s/^/[$i] /") 2>&1 &
  pids+=($!)
  echo "local.sh: process $i pid ${pids[$i]}" >&2
done

forward() { kill -"$1" "${pids[@]}" 2>/dev/null; }
trap 'forward TERM' TERM
trap 'forward INT' INT

status=0
running=$N
declare -A done_pids=()
while ((running > 0)); do
  for pid in "${pids[@]}"; do
    [[ -n "${done_pids[$pid]:-}" ]] && continue
    kill -0 "$pid" 2>/dev/null && continue
    wait "$pid"
    rc=$?
    done_pids[$pid]=1
    running=$((running - 1))
    if ((rc != 0 && status == 0)); then
      status=$rc
      echo "local.sh: process pid $pid exited with status $rc; stopping the others" >&2
      forward KILL
    fi
  done
  ((running > 0)) && sleep 0.5
done
wait  # the output filters
exit $status
