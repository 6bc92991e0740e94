#!/usr/bin/env bash
# Every GPU measurement of the project in one go, for a machine with one NVIDIA GPU (about 6 minutes on
# one H100). Writes one JSON object per benchmark under $OUT (default: ./gpu-suite), plus the GPU tests'
# log; a benchmark that fails leaves its stderr beside and the suite goes on. Usage, from the repository
# root with the project's virtualenv:  OUT=/path/to/results bash benchmarks/gpu_suite.sh
set -u
OUT="${OUT:-gpu-suite}"
PY="${PY:-.venv/bin/python}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv" 2>&1 || true

run() {  # run NAME SECONDS CMD...: stdout to NAME.json, stderr to NAME.err, bounded by a timeout
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.json" 2> "$OUT/$name.err"
    echo "$name: exit $? in $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
}

# The train step on one GPU: images/s, data wait / forward / backward / optimizer, memory, MFU; eager,
# channels_last, augmentation on the device, torch.compile; then Ray Train's GPU throughput.
run train_cuda 240 "$PY" benchmarks/train.py --only cuda --quick --json
# The device augmentation's cost per batch at 480x640, and a loader worker's rate with and without it.
run augment 75 "$PY" benchmarks/augment.py --quick --json
# Attention blocks on the GPU (APNB/AFNB vs non-local).
run attention_cuda 45 "$PY" benchmarks/attention.py --only cuda --quick --json
# The tests that need CUDA: no host sync in the step, the one-GPU run with bf16 and its resume.
timeout 100 "$PY" -m pytest -p no:cacheprovider -q -rA \
    tests/pipelines/test_train_step.py::test_the_cuda_step_never_syncs_the_host tests/pipelines/test_cuda.py \
    > "$OUT/gpu_tests.log" 2>&1
echo "gpu tests: exit $?" | tee -a "$OUT/summary.txt"
