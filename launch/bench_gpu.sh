#!/usr/bin/env bash
# The side-by-side benchmark on one GPU machine, in one command, with no network:
#
#   launch/bench_gpu.sh OUT_DIR [WHEEL_DIR]
#
# Installs the wheels in WHEEL_DIR (the packages the benchmark needs that the machine lacks, e.g.
# ml_collections; README "Benchmarks" says how to fill it) into a temporary folder put on
# PYTHONPATH (the package itself runs from this checkout, not installed), prints nvidia-smi and the
# versions, runs the GPU tests (pytest -m gpu), then tools.benchmark for cast_k400 and
# ca2st_vggsound in bf16: JAX (the trainer's train and eval steps) and the PyTorch model with the
# reference's eager attention and with fused SDPA, at equal batch (halved once if JAX fails, e.g.
# out of memory). Every step runs under `timeout` and the script goes on after a failure; steps
# that would overrun the budget (BENCH_BUDGET_S, 400 s: the whole script in under 7 minutes) are
# skipped. Writes OUT_DIR/log.txt (everything), OUT_DIR/bench.jsonl (one JSON object per run) and
# OUT_DIR/bench.md (the table, compile times, memory and bytes per op kind).
#
# BENCH_TINY=1 runs the same steps on the :tiny configs at batch 2 on the CPU (no GPU touched):
# the check that the script works end to end. BENCH_BATCH_CAST / BENCH_BATCH_CA2ST set the batches
# (default 16 and 8).
set -uo pipefail

OUT=${1:?usage: launch/bench_gpu.sh OUT_DIR [WHEEL_DIR]}
WHEELS=${2:-}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/log.txt
JSONL=$OUT/bench.jsonl
: >"$LOG"
: >"$JSONL"
exec > >(tee -a "$LOG") 2>&1
PY=${PYTHON:-python3}
START=$SECONDS
BUDGET=${BENCH_BUDGET_S:-400}
TINY=${BENCH_TINY:-0}

if [ "$TINY" = 1 ]; then
  VARIANT=:tiny; BATCH_CAST=2; BATCH_CA2ST=2; STEPS=(--steps=1 --warmup=1)
  export JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES=
  JAX_BENCH_PLATFORMS=cpu
  BUDGET=${BENCH_BUDGET_S:-2400}
  SCALE=6  # this 2-core CPU compiles even the tiny steps slowly
else
  VARIANT=; BATCH_CAST=${BENCH_BATCH_CAST:-16}; BATCH_CA2ST=${BENCH_BATCH_CA2ST:-8}
  STEPS=(--steps=10 --warmup=3)
  SCALE=1
  JAX_BENCH_PLATFORMS=cuda  # fail at once rather than fall back to the CPU
fi
# JAX allocates as it goes (not 75% up front), so a PyTorch run in the same process could fit.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export TF_CPP_MIN_LOG_LEVEL=1

run() {  # run LIMIT_S NAME COMMAND...: bounded by LIMIT_S and by what is left of the budget.
  local limit=$1 name=$2
  shift 2
  local left=$((BUDGET - (SECONDS - START)))
  if ((left < 25)); then
    echo "== SKIPPED $name: ${left}s of the ${BUDGET}s budget left" >&2
    return 124
  fi
  ((limit > left)) && limit=$left
  echo "== $name (limit ${limit}s, at $((SECONDS - START))s) $(date -u +%T)" >&2
  echo "+ $*" >&2
  local t0=$SECONDS rc=0
  timeout -k 10 "$limit" "$@" || rc=$?
  echo "== $name: rc=$rc after $((SECONDS - t0))s" >&2
  return $rc
}

bench() {  # bench LIMIT_S CONFIG BATCH ARGS...: one tools.benchmark run, its JSON lines kept.
  local limit=$1 config=$2 batch=$3
  shift 3
  local out rc=0
  out=$(mktemp)
  run "$limit" "$config batch $batch $*" "$PY" -m ca2st_jax.tools.benchmark \
    --config="configs/$config.py$VARIANT" --batch="$batch" --dtype=bfloat16 "${STEPS[@]}" \
    --json "$@" >"$out" || rc=$?
  cat "$out"
  grep '^{' "$out" >>"$JSONL"
  rm -f "$out"
  return $rc
}

bench_config() {  # bench_config CONFIG BATCH JAX_LIMIT_S TORCH_LIMIT_S
  local config=$1 batch=$2 rc=0
  JAX_PLATFORMS=$JAX_BENCH_PLATFORMS bench "$3" "$config" "$batch" --backend=jax --bytes_by_op ||
    rc=$?
  # A failed step (out of memory: exit 1) is retried at half the batch; a timeout is not.
  if ((rc != 0 && rc != 124 && rc != 137)); then
    batch=$((batch / 2))
    if ((batch >= 1)); then
      echo "== $config: JAX failed; again at batch $batch"
      JAX_PLATFORMS=$JAX_BENCH_PLATFORMS bench "$3" "$config" "$batch" --backend=jax --bytes_by_op
    fi
  fi
  # JAX on the CPU here: it only counts the model's FLOPs; PyTorch has the GPU to itself.
  JAX_PLATFORMS=cpu bench "$4" "$config" "$batch" --backend=torch --torch_attention=eager,sdpa
}

cd "$ROOT" || exit 1
echo "== bench_gpu.sh $(date -u +%FT%TZ) in $ROOT (commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')), out $OUT"

SITE=
if [ -n "$WHEELS" ]; then
  SITE=$(mktemp -d /tmp/ca2st_bench_site.XXXXXX)
  trap 'rm -rf "$SITE"' EXIT
  run 120 "install wheels from $WHEELS" "$PY" -m pip install --no-index --no-deps --quiet \
    --target "$SITE" "$WHEELS"/*.whl
fi
export PYTHONPATH=$ROOT${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}

if command -v nvidia-smi >/dev/null && [ "$TINY" != 1 ]; then
  run 30 nvidia-smi nvidia-smi
fi
run 60 versions "$PY" - <<'EOF'
import importlib.metadata, platform, sys
print('python', sys.version.split()[0], platform.platform())
for name in ('jax', 'jaxlib', 'jax-cuda13-plugin', 'flax', 'optax', 'orbax-checkpoint',
             'ml_collections', 'numpy', 'torch', 'einops', 'absl-py'):
  try:
    print(f'{name:20s} {importlib.metadata.version(name)}')
  except importlib.metadata.PackageNotFoundError:
    print(f'{name:20s} (absent)')
import jax
print('jax devices:', jax.devices())
import torch
print('torch cuda:', torch.cuda.is_available(), torch.version.cuda,
      torch.cuda.get_device_name() if torch.cuda.is_available() else '')
EOF

# Only the test files that mark a test `gpu` (the others may import the absent data stack).
# tests/conftest.py puts JAX on the CPU unless JAX_PLATFORMS is set.
mapfile -t GPU_TESTS < <(grep -l 'pytest.mark.gpu' tests/test_*.py)
if ((${#GPU_TESTS[@]})); then
  JAX_PLATFORMS=${JAX_PLATFORMS:-cuda,cpu} run $((100 * SCALE)) "GPU tests (pytest -m gpu)" \
    "$PY" -m pytest -q -rfE --tb=short -p no:xdist -p no:cacheprovider -m gpu "${GPU_TESTS[@]}"
else
  echo "== no test is marked gpu"
fi

bench_config cast_k400 "$BATCH_CAST" $((140 * SCALE)) $((50 * SCALE))
bench_config ca2st_vggsound "$BATCH_CA2ST" $((140 * SCALE)) $((50 * SCALE))

{
  echo "# tools.benchmark, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo
  JAX_PLATFORMS=cpu timeout 120 "$PY" -m ca2st_jax.tools.benchmark --report="$JSONL"
} >"$OUT/bench.md"
cat "$OUT/bench.md"
echo "== done in $((SECONDS - START))s: $OUT/bench.md, $OUT/bench.jsonl, $OUT/log.txt"
