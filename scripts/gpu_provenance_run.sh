#!/usr/bin/env bash
# The GPU measurements behind the ceilings and the training-throughput numbers, each file written by
# the script that measured it and stamped with weights/provenance.py's record. Made for one H200 (or
# H100) with 16 CPU cores for the float64 reference; at most 9.5 minutes (each step has its timeout).
#
#   OUT=/some/folder GPT2_GIT_COMMIT=<commit> GPT2_GIT_DIRTY=<0|1> bash scripts/gpu_provenance_run.sh
#
# GPT2_GIT_COMMIT / GPT2_GIT_DIRTY: the commit the working tree was copied from (`git rev-parse HEAD` and
# whether `git status --porcelain --untracked-files=no` printed anything, on the machine it was copied
# from). They take precedence over a .git the copy may carry, which can be older than its files.
# Tiny Shakespeare and the GPT-2 tokenizer are found through GPT2_SHARED_DIR (or ../shared); without
# them the cases that read them are skipped (with the reason, in the JSON) and the throughput run
# trains on uniformly random token ids (same speed; the JSON's settings.data says which).
#
# Writes under $OUT (7 files):
#   ceiling-spread-gpu.json       conformance.spread, CI-sized cases, 3 seeds: every GPU backend (numba-cuda-f32,
#                                 numba-cuda-3xtf32, torch-cuda-f32, torch-cuda-bf16) vs the float64 reference
#                                                                                  -> docs/results/
#   ceiling-spread-gpu-124m.json  the same at the full 124M shape, 2 seeds           -> docs/results/
#   training-throughput-gpu.json  scripts/train_throughput.py, 1 GPU, 20 steps       -> docs/results/
#   spread.log, spread-124m.log, throughput.log, nvidia-smi.txt                      (not committed)
# Then, on the development machine: `python -m conformance.spread --check` says whether the ceilings
# in conformance/tolerances.py still follow the rule with the new measurements.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:?set OUT to the folder the results go to}"
mkdir -p "$OUT"
export NUMBA_ENABLE_CUDASIM=0 PYTHONUNBUFFERED=1 PYTHONHASHSEED=0
PY="${PYTHON:-python3}"
# Every GPU backend of the registry (numba-cuda-f32, numba-cuda-3xtf32, torch-cuda-f32, torch-cuda-bf16, ...).
GPU_BACKENDS="${GPU_BACKENDS:-$("$PY" -c 'from conformance.backends import registry
print(",".join(b.name for b in registry() if b.device == "cuda"))')}"
echo "GPU backends: $GPU_BACKENDS"
status=0

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed" >> "$OUT/nvidia-smi.txt"
[[ -n "${GPT2_GIT_COMMIT:-}" ]] || echo "warning: GPT2_GIT_COMMIT is not set; the results record what git says here"
"$PY" -m weights.provenance | tee -a "$OUT/nvidia-smi.txt" | grep -E '"commit"|"dirty"|"source"|"gpus"' -A1 | head -10

# 1. Ceiling spread on the GPU: the CI-sized cases (several seeds), then the full 124M shape.
timeout "${SPREAD_SMALL_S:-180}" "$PY" -m conformance.spread --backends "$GPU_BACKENDS" --seeds 3 \
    --out "$OUT/ceiling-spread-gpu.json" > "$OUT/spread.log" 2>&1 || status=1
tail -12 "$OUT/spread.log"
timeout "${SPREAD_FULL_S:-230}" "$PY" -m conformance.spread --backends "$GPU_BACKENDS" --only-full --seeds 2 \
    --out "$OUT/ceiling-spread-gpu-124m.json" > "$OUT/spread-124m.log" 2>&1 || status=1
tail -12 "$OUT/spread-124m.log"

# 2. Training throughput, 1 GPU: GPT-2 124M from scratch, T=1024, bf16, torch.compile, 524,288 tokens per step.
DATA="$(mktemp -d)"
TEXT="$("$PY" -c 'from weights.paths import tinyshakespeare_path as p; print(p() or "")')"
if [[ -n "$TEXT" ]]; then
    "$PY" -m torch_impl.data "$TEXT" --out "$DATA/tinyshakespeare" > "$OUT/throughput.log" 2>&1 \
        && SHARDS="$DATA/tinyshakespeare"
fi
if [[ -z "${SHARDS:-}" ]]; then
    SHARDS="$DATA/random-tokens"
    "$PY" - "$SHARDS" >> "$OUT/throughput.log" 2>&1 <<'PY'
import sys
from pathlib import Path

import numpy as np

from torch_impl.data import write_shard

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
for i in range(4):  # 4 x 8M tokens: more than 20 steps of 524,288 read
    write_shard(out / f"random_train_{i:06d}.bin", rng.integers(0, 50257, 8_000_000))
write_shard(out / "random_val_000000.bin", rng.integers(0, 50257, 1_000_000))
print("no Tiny Shakespeare here: uniformly random token ids in", out)
PY
fi
if [[ "${SKIP_THROUGHPUT:-0}" == 1 ]]; then  # (testing this script on a machine without a GPU)
    echo "SKIP_THROUGHPUT=1: shards in $SHARDS ($(ls "$SHARDS" | wc -l) files), no training run"
else
    timeout "${THROUGHPUT_S:-130}" "$PY" scripts/train_throughput.py --data "$SHARDS" --gpus 1 --steps 20 --skip 8 \
        --out "$DATA/runs" --json "$OUT/training-throughput-gpu.json" >> "$OUT/throughput.log" 2>&1 || status=1
    tail -5 "$OUT/throughput.log"
fi
rm -rf "$DATA"
exit "$status"
