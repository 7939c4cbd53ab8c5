#!/usr/bin/env bash
# One call on a GPU machine: GPU-marked tests, offline compile report, quick benchmark.
# Installs nothing from the network; uses the tree in place (PYTHONPATH=.).
#   usage: bash benchmarks/run_gpu.sh [OUT_DIR]     (default: $OUT, else ./gpu-run)
# Every table lands in OUT_DIR; an interrupted step keeps what it finished.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-gpu-run}}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export FLOPSCALE_CACHE_DIR="$OUT_DIR/cache"
PY="${PYTHON:-python}"
log() { echo "[run_gpu $(date +%H:%M:%S)] $*" | tee -a "$OUT_DIR/run.log"; }

log "environment"
$PY -m profiler.cli env --json > "$OUT_DIR/env.json" 2>>"$OUT_DIR/run.log"
nvidia-smi > "$OUT_DIR/nvidia-smi.txt" 2>&1 || true

log "GPU-marked tests"
timeout 240 $PY -m pytest -q -m gpu -p no:cacheprovider tests > "$OUT_DIR/gpu-tests.txt" 2>&1
log "gpu tests exit $?"; tail -3 "$OUT_DIR/gpu-tests.txt" | tee -a "$OUT_DIR/run.log"

log "flopscale inspect"
timeout 120 $PY -m profiler.cli inspect --json > "$OUT_DIR/inspect.json" 2>>"$OUT_DIR/run.log"
log "inspect exit $?"

log "flopscale bench --quick"
timeout 300 $PY -m profiler.cli bench --quick --out "$OUT_DIR" > "$OUT_DIR/bench.txt" 2>>"$OUT_DIR/run.log"
log "bench exit $?"
NGPU=$($PY -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [ "${NGPU:-0}" -ge 2 ]; then
  log "collectives and a data-parallel step on $NGPU GPUs"
  timeout 180 $PY -m benchmarks.run --only collectives --out "$OUT_DIR" > "$OUT_DIR/collectives.txt" 2>>"$OUT_DIR/run.log"
  timeout 180 $PY -m torch.distributed.run --standalone --nproc-per-node "$NGPU" -m profiler.distributed ddp --fsdp \
    --n-layer 24 --d-model 1024 --n-head 16 --n-ctx 2048 --vocab 32000 --batch 8 > "$OUT_DIR/ddp.txt" 2>>"$OUT_DIR/run.log"
  log "distributed exit $?"
fi
ls -la "$OUT_DIR" | tee -a "$OUT_DIR/run.log"
