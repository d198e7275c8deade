#!/usr/bin/env bash
# The GPU benchmark set on one CUDA GPU (made for an H100): torch CUDA f32/bf16 and the Numba
# kernels, per op, whole model and attention scaling, then the report.
#
#   OUT=/some/folder bash benchmarks/run_gpu.sh
#
# Needs python3 with numpy, torch (CUDA build), numba-cuda and pytest-benchmark; matplotlib
# for the charts (without it the markdown is written and the charts can be drawn later from
# the JSON: python -m benchmarks.report bench-gpu.json --out docs/results/ --prefix bench-gpu).
# Writes under $OUT: bench-gpu.json (pytest-benchmark), bench-gpu.md, bench-gpu-*.png,
# pytest.log, nvidia-smi.txt. Time-boxed: benchmarks that would start after BENCH_DEADLINE
# seconds (default 270) are skipped, and the whole pytest run is killed at 330 s, so the
# script ends in under 6 minutes.
set -euo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:?set OUT to the folder the results go to}"
mkdir -p "$OUT"
export NUMBA_ENABLE_CUDASIM=0 PYTHONUNBUFFERED=1 PYTHONHASHSEED=0
DEADLINE="${BENCH_DEADLINE:-270}"

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed" >> "$OUT/nvidia-smi.txt"
python3 - <<'PY'
import torch
assert torch.cuda.is_available(), "run_gpu.sh needs a CUDA GPU visible to torch"
print("GPU:", torch.cuda.get_device_name(), "| torch", torch.__version__)
PY

# Order matters for the first-call numbers: the model runs first, so Numba's JIT compile time
# lands in the first model benchmark of each kernel set (tiny forward, then forward-backward).
status=0
timeout 330 python3 -m pytest \
    benchmarks/test_bench_model.py benchmarks/test_bench_ops.py benchmarks/test_bench_attention_scaling.py \
    --bench-device=cuda --bench-deadline="$DEADLINE" --benchmark-only \
    --benchmark-json="$OUT/bench-gpu.json" -p no:cacheprovider -q -rs --durations=15 \
    2>&1 | tee "$OUT/pytest.log" || status=$?

if [[ -s "$OUT/bench-gpu.json" ]]; then
    python3 -m benchmarks.report "$OUT/bench-gpu.json" --out "$OUT" --prefix bench-gpu \
        --title "Benchmarks on the GPU ($(python3 -c 'import torch; print(torch.cuda.get_device_name())'))" \
        || { echo "report failed"; status=1; }
else
    echo "no JSON written (pytest exit $status)"; [[ $status -eq 0 ]] && status=1
fi
exit "$status"
