#!/usr/bin/env bash
# One call on a GPU machine: environment, GPU-marked tests, quick benchmark, offline compile report.
# Installs nothing from the network; uses the tree in place (PYTHONPATH=.).
#   usage: bash benchmarks/run_gpu.sh [OUT_DIR]     (default: $OUT, else ./gpu-run)
# The whole script keeps to FLOPSCALE_GPU_BUDGET_S seconds (default 480): each step gets a cap
# and never more than what is left.  Every table lands in OUT_DIR; a step that is cut short
# keeps what it finished (the benchmark writes its CSV row by row, stops starting rows at its
# own time limit and writes its Markdown table; if it is killed anyway the Markdown is rebuilt
# from the CSV).  Kernel tuning and ceilings are cached in OUT_DIR/cache and come back with it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-gpu-run}}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export FLOPSCALE_CACHE_DIR="$OUT_DIR/cache"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python}"
BUDGET="${FLOPSCALE_GPU_BUDGET_S:-480}"
T0=$(date +%s)
log() { echo "[run_gpu $(date +%H:%M:%S) +$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT_DIR/run.log"; }
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
# cap CAP RESERVE: seconds for a step = min(CAP, time left - RESERVE kept for later steps), >= 0
cap() { local l; l=$(( $(left) - $2 )); [ "$l" -lt "$1" ] && echo $(( l > 0 ? l : 0 )) || echo "$1"; }

log "environment (budget ${BUDGET} s)"
timeout -k 5 60 $PY -m flopscale env --json > "$OUT_DIR/env.json" 2>>"$OUT_DIR/run.log"
log "env exit $?"
timeout 20 nvidia-smi > "$OUT_DIR/nvidia-smi.txt" 2>&1 || true

T=$(cap 150 300)
if [ "$T" -ge 30 ]; then
  log "GPU-marked tests (limit ${T} s)"
  timeout -k 10 "$T" $PY -m pytest -v -m gpu -p no:cacheprovider --durations=15 tests > "$OUT_DIR/gpu-tests.txt" 2>&1
  log "gpu tests exit $? (124 = cut at the time limit)"; tail -3 "$OUT_DIR/gpu-tests.txt" | tee -a "$OUT_DIR/run.log"
else
  log "GPU-marked tests skipped: ${T} s left for them"
fi

T=$(cap 300 45)
if [ "$T" -ge 60 ]; then
  # the benchmark stops starting rows 40 s before its limit, so it ends by itself with both tables
  log "flopscale bench --quick (limit ${T} s)"
  FLOPSCALE_BENCH_TIME_LIMIT_S=$(( T - 40 )) timeout -k 15 "$T" $PY -m flopscale bench --quick \
    --only matmul,attention,blocksparse,overhead --out "$OUT_DIR" > "$OUT_DIR/bench.txt" 2>>"$OUT_DIR/run.log"
  log "bench exit $? (1 = some rows wrong or failed, 124 = cut at the time limit)"
else
  log "bench skipped: ${T} s left for it"
fi
for c in "$OUT_DIR"/*.csv; do
  [ -e "$c" ] || continue
  md="${c%.csv}.md"
  if [ ! -s "$md" ]; then
    log "rebuilding $md from $c"
    timeout 60 $PY -m flopscale.benchmarks.run --markdown-from "$c" >>"$OUT_DIR/run.log" 2>&1
  fi
done

T=$(cap 90 5)
if [ "$T" -ge 20 ]; then
  log "flopscale inspect (offline compile report, limit ${T} s)"
  timeout -k 5 "$T" $PY -m flopscale inspect --json > "$OUT_DIR/inspect.json" 2>>"$OUT_DIR/run.log"
  log "inspect exit $?"
else
  log "inspect skipped: ${T} s left (it needs no GPU: run it anywhere)"
fi

NGPU=$(timeout 30 $PY -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
T=$(cap 180 0)
if [ "${NGPU:-0}" -ge 2 ] && [ "$T" -ge 60 ]; then
  log "collectives and a data-parallel step on $NGPU GPUs (limit ${T} s)"
  timeout -k 10 $(( T / 2 )) $PY -m flopscale.benchmarks.run --only collectives --out "$OUT_DIR" > "$OUT_DIR/collectives.txt" 2>>"$OUT_DIR/run.log"
  timeout -k 10 $(( T / 2 )) $PY -m torch.distributed.run --standalone --nproc-per-node "$NGPU" -m flopscale.profiler.distributed ddp --fsdp \
    --n-layer 24 --d-model 1024 --n-head 16 --n-ctx 2048 --vocab 32000 --batch 8 > "$OUT_DIR/ddp.txt" 2>>"$OUT_DIR/run.log"
  log "distributed exit $?"
fi
log "done in $(( $(date +%s) - T0 )) s"
ls -la "$OUT_DIR" | tee -a "$OUT_DIR/run.log"
