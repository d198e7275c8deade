#!/usr/bin/env bash
# The GPU benchmark set on one CUDA GPU, in one run: torch CUDA f32/bf16 and the Numba kernels
# (float32 eager, float32 with CUDA graphs, 3xTF32 tensor cores where the model has them): whole
# model, every GPT-2 matmul shape against cuBLAS float32, per op, the copy bandwidth, attention
# scaling; then the report, whose Goals section judges each goal (met / NOT met) on this run.
#
#   OUT=/some/folder bash benchmarks/run_gpu.sh
#
# Needs python3 with numpy, torch (CUDA build), numba-cuda, cuda-python (cuda.bindings, for the
# graphs) and pytest-benchmark; matplotlib for the charts (without it the markdown is written and
# the charts can be drawn later from the JSON: python -m benchmarks.report bench-gpu.json --out
# docs/results/ --prefix bench-gpu).
# Writes under $OUT: bench-gpu.json (pytest-benchmark), bench-gpu.md, bench-gpu-*.png, pytest.log,
# nvidia-smi.txt. Time-boxed: benchmarks that would start after BENCH_DEADLINE seconds (default
# 380) are skipped, and the whole pytest run is killed at BENCH_DEADLINE + 70 s, so the script ends
# in under 8 minutes. The files run in order of importance for the goals (model, matmul shapes,
# ops, attention scaling), so a deadline cuts attention scaling first.
# BENCH_SELECT: a pytest -k expression, for a partial (dry) run, e.g.
#   BENCH_DEADLINE=60 BENCH_SELECT="124m-cpu or c_fc" OUT=/tmp/dry bash benchmarks/run_gpu.sh
# BENCH_FILES: the benchmark files in the order to run them (default: model, matmul shapes, ops,
# attention scaling); a time-boxed run that must reach the goals' numbers puts matmul and ops first.
# Exit status: 0 = every benchmark passed and every goal is met; 3 = every benchmark passed, some
# goal is NOT met (the report says which); 1 = a benchmark failed or no JSON was written.
set -euo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:?set OUT to the folder the results go to}"
mkdir -p "$OUT"
export NUMBA_ENABLE_CUDASIM=0 PYTHONUNBUFFERED=1 PYTHONHASHSEED=0
DEADLINE="${BENCH_DEADLINE:-380}"
KILL_AFTER=$((${DEADLINE%.*} + 70))

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed" >> "$OUT/nvidia-smi.txt"
python3 - <<'PY'
import torch
assert torch.cuda.is_available(), "run_gpu.sh needs a CUDA GPU visible to torch"
print("GPU:", torch.cuda.get_device_name(), "| torch", torch.__version__)
PY

# Order matters for the first-call numbers: the model runs first, so Numba's JIT compile time
# lands in the first model benchmark of each kernel set (tiny forward, then forward-backward).
status=0
FILES="${BENCH_FILES:-benchmarks/test_bench_model.py benchmarks/test_bench_matmul.py benchmarks/test_bench_ops.py \
benchmarks/test_bench_attention_scaling.py}"
# shellcheck disable=SC2086  # FILES is a list of paths
timeout "$KILL_AFTER" python3 -m pytest $FILES \
    --bench-device=cuda --bench-deadline="$DEADLINE" --benchmark-only \
    --benchmark-json="$OUT/bench-gpu.json" -p no:cacheprovider -q -rs --durations=15 \
    ${BENCH_SELECT:+-k "$BENCH_SELECT"} \
    2>&1 | tee "$OUT/pytest.log" || status=$?

if [[ -s "$OUT/bench-gpu.json" ]]; then
    goals=0
    python3 -m benchmarks.report "$OUT/bench-gpu.json" --out "$OUT" --prefix bench-gpu --check-goals \
        --title "Benchmarks on the GPU ($(python3 -c 'import torch; print(torch.cuda.get_device_name())'))" \
        || goals=$?
    if [[ $goals -ne 0 && $goals -ne 3 ]]; then echo "report failed"; status=1; fi
    if [[ $status -eq 0 && $goals -eq 3 ]]; then status=3; fi
else
    echo "no JSON written (pytest exit $status)"; [[ $status -eq 0 ]] && status=1
fi
[[ $status -ne 0 && $status -ne 3 ]] && status=1
exit "$status"
