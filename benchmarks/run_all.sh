#!/usr/bin/env bash
# Run every benchmark of this folder in its standard configuration, one after the other, and
# write each one's table to OUT_DIR/<name>.md (its full output to OUT_DIR/<name>.log). Run it
# alone on a quiet machine: every table ends with the load average and warns when it was high.
#
#   benchmarks/run_all.sh [OUT_DIR]          # default OUT_DIR: benchmarks/results
#   PYTHON=/path/to/python benchmarks/run_all.sh
#
# An estimated 15 minutes on a quiet 2-core CPU (it prints each benchmark's time). The fastai and smp rows need the `bench` extra
# (`pip install -e '.[bench]'`); without it those rows are skipped and the tables say so.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${1:-benchmarks/results}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=1
mkdir -p "$OUT"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"

run() {
    local name=$1
    shift
    local start=$SECONDS
    if "$PYTHON" "benchmarks/$name.py" --out "$OUT/$name.md" "$@" >"$OUT/$name.log" 2>&1; then
        echo "$name: $((SECONDS - start)) s -> $OUT/$name.md"
    else
        echo "$name: FAILED after $((SECONDS - start)) s, see $OUT/$name.log"
    fi
}

run train_speed                       # (a) resnet18 128 px, (b) lite0 96 px from JPEGs
run unet                              # 128 px, batch 8, fastai widths and capped
run embed_speed                       # resnet18 128 px, model only and files to vectors
run presize_cache                     # 300 JPEGs 500x375, 2 workers
run detect --pretrained               # FCOS on lite0, nuclei tiles, 1 + 8 epochs
run accuracy --threads 2              # the fine-tuning recipe against fastai, one round
run startup --rounds 3                # import and --help times, a 10-image prediction
run defaults --sets digits --epochs 4 \
    --recipes "old: lr 2e-3, flip, crop 0.75" "lr 1e-2, flip, no crop" "lr 1e-2, no flip, no crop"
echo "total: ${SECONDS} s; tables in $OUT"
