#!/usr/bin/env bash
# The GPU path measured in one run (issue 12): about 5 minutes on an H200, each step under its
# own timeout so one failure does not lose the rest.
#
#   bench/gpu_check.sh            on a GPU machine: env, 10K JPEGs, accuracy, model-only,
#                                 build-index --decode cpu and --decode gpu, FAISS IVF at 1M x 512
#   bench/gpu_check.sh --dry      tiny sizes on the CPU: proves the script runs, measures nothing
#
# Python: $PYTHON if set, else the repository's .venv if it has torch, else python3 (the GPU machine's has torch and
# torchvision). What it lacks (open_clip, duckdb, faiss) is installed from wheels in .whl/ if that
# folder exists (bench/gpu_wheels.sh fetches them on a machine with a registry); else it says
# what is missing and the steps that need it fail alone. Figures: bench/results/gpu.jsonl, and
# with the log into $OUT when that is set (the device machine's output folder).
set -u
cd "$(dirname "$0")/.."
DRY=""
[ "${1:-}" = "--dry" ] && DRY="--dry"
OUT_DIR="${OUT:-bench/work/gpu_check_out}"
mkdir -p "$OUT_DIR" bench/work
LOG="$OUT_DIR/gpu_check.log"
: >"$LOG"
say() { echo "$@" | tee -a "$LOG"; }

PY=${PYTHON:-python3}
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; then
    PY=.venv/bin/python
fi
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    say "installing $(ls .whl/*.whl | wc -l) carried wheels into /tmp/site"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        >>"$LOG" 2>&1 || say "WARNING: pip install of .whl/ failed (see $LOG)"
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
say "python: $($PY -c 'import sys; print(sys.executable, sys.version.split()[0])')"
MISSING=""
for m in torch torchvision open_clip duckdb faiss PIL click numpy; do
    $PY -c "import $m" 2>/dev/null || MISSING="$MISSING $m"
done
[ -n "$MISSING" ] && say "MISSING python modules:$MISSING (carry wheels in .whl/: bench/gpu_wheels.sh)"

FAILED=""
step() {  # step NAME SECONDS ARGS...: one gpu_check.py step under its own timeout
    local name=$1 limit=$2
    shift 2
    say "=== $name (limit ${limit}s) ==="
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" $PY bench/gpu_check.py "$@" $DRY 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    say "--- $name: exit $rc in $((SECONDS - t0)) s"
    [ "$rc" = 0 ] || FAILED="$FAILED $name"
    [ -z "$DRY" ] && [ -f bench/results/gpu.jsonl ] && cp bench/results/gpu.jsonl "$OUT_DIR/gpu.jsonl"
    return 0
}

[ -z "$DRY" ] && command -v nvidia-smi >/dev/null && nvidia-smi >>"$LOG" 2>&1
step env 60 env
step jpegs 120 jpegs
step accuracy 90 accuracy
step model 90 model
step build-decode-cpu 150 build --decode cpu
if [ -z "$DRY" ]; then step build-decode-gpu 150 build --decode gpu; fi
step faiss 200 faiss

[ -n "$DRY" ] && rm -f bench/work/gpu_dry.jsonl
rm -rf bench/work/gpu-ws-* bench/work/gpu-src-*.tmp
say "done; failed steps:${FAILED:- none}"
