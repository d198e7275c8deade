#!/usr/bin/env bash
# The conformance suite and every GPU-only test on one CUDA GPU (made for an H100).
#
#   OUT=/some/folder bash conformance/run_gpu.sh
#
# Writes under $OUT: gpu-tests.log (pytest -m gpu over tests/, plus tests/numba_impl on the real
# GPU), conformance-small.{json,txt} (the CI-sized cases), conformance-124m.{json,txt} (the full
# 124M-shape cases), nvidia-smi.txt. The float64 reference runs on the host's CPU cores.
# Cases that read Tiny Shakespeare or the tokenizer find them through GPT2_SHARED_DIR (or ../shared);
# without them those cases are reported as skipped, with the reason.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:?set OUT to the folder the results go to}"
mkdir -p "$OUT"
export NUMBA_ENABLE_CUDASIM=0 PYTHONUNBUFFERED=1 PYTHONHASHSEED=0
status=0

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python3 -m pytest -q -m gpu tests -p no:cacheprovider -rs 2>&1 | tee "$OUT/gpu-tests.log" || status=1
python3 -m pytest -q tests/numba_impl -p no:cacheprovider -rs 2>&1 | tee -a "$OUT/gpu-tests.log" || status=1
python3 -m conformance.report --json "$OUT/conformance-small.json" 2>&1 | tee "$OUT/conformance-small.txt" || status=1
python3 -m conformance.report --only-full --json "$OUT/conformance-124m.json" 2>&1 | tee "$OUT/conformance-124m.txt" || status=1
exit "$status"
