#!/usr/bin/env bash
# One GPU session's results, time-boxed to fit one 10-minute command on one H200 (or H100):
#
#   1. the conformance suite's full-shape cases on the GPU backends: GPT-2 124M and the llama-style
#      124M preset (the float64 reference on the host's CPU cores)
#   2. the GPU benchmark set (benchmarks/run_gpu.sh), restricted to what the Goals section judges and
#      the whole-model rows: matmul shapes and ops first, then the model; no tiny size, no bf16 ops, no
#      naive attention at 124M, no attention scaling, at B=1 T=128 only forward+backward (BENCH_SELECT)
#   3. the conformance suite's CI-sized variant cases (and two GPT-2 ones) on the GPU backends
#   4. the trainer on the llama-style 124M preset: 50 steps of B=16, T=1024 on Tiny Shakespeare, bf16
#   5. the GPU-only tests of numba_impl and torch_impl, with the time that is left
#   6. (only when ONLY names it: train-throughput) GPT-2 124M training throughput, bf16 + compile, 524,288
#      tokens per step: the plain run, then the fastest flags measured (our Triton kernels) at micro-batch 256
#      with 16,384-row loss chunks, at micro-batch 128, and at 256 again, profiled over 3 steps
#      (scripts/train_throughput.py --try; THROUGHPUT_RUNS below picks others; docs/training.md "Measured"):
#        ONLY=train-throughput STEP_S="0 0 0 0 0 560" bash scripts/gpu_results_run.sh
#   7. (only when ONLY names it: memory) the memory of one training step per GPT-2 size on the GPU backends,
#      B=1, T=1024 (scripts/memory_per_size.py; docs/sizes.md; MEMORY_SIZES, MEMORY_BACKENDS: comma-separated
#      subsets, e.g. MEMORY_SIZES=gpt2-xl MEMORY_BACKENDS=torch-cuda-bf16-chunked,numba-cuda-f32):
#        ONLY=memory STEP_S="0 0 0 0 0 0 400" bash scripts/gpu_results_run.sh
#   8. (only when ONLY names it: loss-kernel) one loss chunk's kernels timed: torch.compile's against the Triton
#      kernel of --loss-impl chunked-triton at several block sizes and warp counts (scripts/loss_kernel_sweep.py)
#   (the MLP's GELU-backward kernel of --mlp-impl triton is timed the same way by scripts/mlp_kernel_sweep.py,
#   run directly: `python3 scripts/mlp_kernel_sweep.py --json $OUT/mlp-kernel-sweep.json`)
#
#   OUT=/some/folder GPT2_GIT_COMMIT=<commit> GPT2_GIT_DIRTY=<0|1> GPT2_SHARED_DIR=<absolute path> \
#       bash scripts/gpu_results_run.sh
#
# GPT2_SHARED_DIR: Tiny Shakespeare and the GPT-2 tokenizer (weights/paths.py); the device machine has
# no ../shared, so copy them into an ignored folder of the checkout and carry it. Every step has its
# own timeout (STEP_S below) and the script goes on after a step that fails or runs out of time: what a
# step measured is kept. Writes $OUT/results.tar.gz (every file below) and, beside it, the ones the
# docs read first: bench-gpu.md, conformance-small.txt, conformance-full.txt, gpu-tests.log, status.txt.
# Exit status: 0 if every step passed, 1 otherwise (status.txt says which).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:?set OUT to the folder the results go to}"
WORK="$OUT/work"
mkdir -p "$WORK"
export NUMBA_ENABLE_CUDASIM=0 PYTHONUNBUFFERED=1 PYTHONHASHSEED=0
GPU_BACKENDS="${GPU_BACKENDS:-torch-cuda-f32,torch-cuda-bf16,numba-cuda-f32,numba-cuda-3xtf32}"
FULL_BACKENDS="torch-cuda-f32,numba-cuda-f32,numba-cuda-3xtf32"
SMALL_CASES="${SMALL_CASES:-tiny-rope,tiny-rmsnorm,tiny-swiglu,tiny-gqa,tiny-nobias,tiny-untied,tiny-llama,tiny-llama-trained,\
tiny-B2-T4-adamw,small-trained}"
# seconds per step: conformance full, benchmarks (the deadline; run_gpu.sh kills at +70), conformance small,
# training, tests, training throughput, memory, loss kernel
STEP_S=(${STEP_S:-140 180 60 45 30 560 400 120})
# GPU_BACKENDS, SMALL_CASES, FULL_CASES, BENCH_SELECT (a pytest -k expression), BENCH_FILES: override the
# defaults below, e.g. for a second call that measures what the first one ran out of time for.
# ONLY: a comma-separated subset of the steps (conformance-full, benchmarks, conformance-small, train-llama,
# gpu-tests, train-throughput, memory, loss-kernel; the default is all but the last three). The GPT-2 family's other sizes, in a second call of their own:
#   ONLY=conformance-full FULL_CASES=medium-B1-T128,xl-B1-T128 STEP_S="500 0 0 0 0" bash scripts/gpu_results_run.sh
FULL_CASES="${FULL_CASES:-124m-B4-T64,124m-B1-T1024,124m-llama-B4-T64}"
ONLY="${ONLY:-conformance-full,benchmarks,conformance-small,train-llama,gpu-tests}"
status=0
: > "$WORK/status.txt"

step() {  # step NAME SECONDS LOG CMD...: run CMD (output to LOG) with a timeout, record its exit status
    local name=$1 seconds=$2 log=$3
    shift 3
    [[ ",$ONLY," == *",$name,"* ]] || return 0
    local t0=$SECONDS
    timeout --kill-after=10 "$seconds" "$@" > "$log" 2>&1
    local rc=$?
    echo "$name: exit $rc after $((SECONDS - t0)) s (limit $seconds s)" | tee -a "$WORK/status.txt"
    [[ $rc -eq 0 ]] || status=1
}

nvidia-smi > "$WORK/nvidia-smi.txt" 2>&1
python3 -m weights.provenance > "$WORK/provenance.json" 2>&1

step conformance-full "${STEP_S[0]}" "$WORK/conformance-full.txt" python3 -m conformance.report --only-full \
    --backends "$FULL_BACKENDS" --cases "$FULL_CASES" --json "$WORK/conformance-full.json"
BENCH_SELECT="${BENCH_SELECT:-not tiny and not bf16 and not attention-naive and not (test_op and 124m-cpu) and not (test_model \
and 124m-cpu and not forward-backward) and not (test_model and 124m-cpu and 3xtf32)}"
BENCH_FILES="${BENCH_FILES:-benchmarks/test_bench_matmul.py benchmarks/test_bench_ops.py benchmarks/test_bench_model.py}"
step benchmarks $((${STEP_S[1]} + 80)) "$WORK/bench.log" env BENCH_DEADLINE="${STEP_S[1]}" \
    BENCH_SELECT="$BENCH_SELECT" BENCH_FILES="$BENCH_FILES" OUT="$WORK/bench" bash benchmarks/run_gpu.sh
step conformance-small "${STEP_S[2]}" "$WORK/conformance-small.txt" python3 -m conformance.report \
    --backends "$GPU_BACKENDS" --cases "$SMALL_CASES" --json "$WORK/conformance-small.json"
step train-llama "${STEP_S[3]}" "$WORK/train-llama.log" bash -c "python3 -m torch_impl.data \
    $GPT2_SHARED_DIR/data/tinyshakespeare.txt --out $WORK/shakespeare && python3 -m torch_impl.train \
    --data $WORK/shakespeare --model llama-124m --batch-size 16 --seq-len 1024 --max-steps 50 --warmup-steps 5 \
    --eval-every 50 --eval-batches 4 --log-every 10 --no-save --no-plot --no-progress --out-dir $WORK/train-llama"
rm -rf "$WORK/shakespeare"  # (absent when train-llama was not run)
step gpu-tests "${STEP_S[4]}" "$WORK/gpu-tests.log" python3 -m pytest -q -p no:cacheprovider -rs \
    tests/numba_impl/test_graph.py tests/numba_impl/test_variants.py tests/torch_impl/test_cuda.py \
    tests/torch_impl/test_cuda_variants.py tests/torch_impl/test_cross_entropy_triton.py tests/torch_impl/test_mlp_triton.py \
    tests/torch_impl/test_layernorm_triton.py

# THROUGHPUT_RUNS: --profile N and the tries of scripts/train_throughput.py (the first run is always the plain
# loss), e.g. THROUGHPUT_RUNS="--try '--loss-impl chunked' --try '--loss-impl chunked --compile-mode max-autotune-no-cudagraphs'"
# The default: the fastest flags measured (bc574b6, docs/training.md "Measured") at micro-batches 256 and 128.
FAST="--loss-impl chunked-triton --mlp-impl triton --norm-impl triton"
THROUGHPUT_RUNS="${THROUGHPUT_RUNS:---try '$FAST --batch-size 256 --loss-chunk-rows 16384' --try '$FAST --batch-size 128' \
--try '$FAST --batch-size 256 --loss-chunk-rows 16384 --profile-steps 3'}"
step train-throughput "${STEP_S[5]:-560}" "$WORK/train-throughput.log" bash -c "python3 -m torch_impl.data \
    $GPT2_SHARED_DIR/data/tinyshakespeare.txt --out $WORK/shakespeare && python3 scripts/train_throughput.py \
    --data $WORK/shakespeare --gpus 1 --steps 20 --skip 8 --batch-size 64 --out $WORK/throughput-runs \
    --json $WORK/training-throughput.json $THROUGHPUT_RUNS"
rm -rf "$WORK/shakespeare" "$WORK/throughput-runs"
step memory "${STEP_S[6]:-400}" "$WORK/memory.log" python3 scripts/memory_per_size.py \
    --sizes "${MEMORY_SIZES:-gpt2,gpt2-medium,gpt2-large,gpt2-xl}" \
    --backends "${MEMORY_BACKENDS:-torch-cuda-f32,torch-cuda-bf16,torch-cuda-bf16-chunked,numba-cuda-f32}" --json "$WORK/memory-per-size.json"
step loss-kernel "${STEP_S[7]:-120}" "$WORK/loss-kernel.log" python3 scripts/loss_kernel_sweep.py \
    --json "$WORK/loss-kernel-sweep.json"

cp "$WORK/bench/bench-gpu.md" "$WORK/training-throughput.json" "$WORK/memory-per-size.json" "$OUT/" 2>/dev/null
cp "$WORK/loss-kernel-sweep.json" "$WORK/loss-kernel.log" "$OUT/" 2>/dev/null
cp "$WORK/conformance-small.txt" "$WORK/conformance-full.txt" "$WORK/gpu-tests.log" "$WORK/status.txt" "$OUT/" 2>/dev/null
rm -f "$WORK"/bench/*.png  # the charts are drawn again from the JSON on the development machine
tar -czf "$OUT/results.tar.gz" -C "$WORK" .
rm -rf "$WORK"
cat "$OUT/status.txt"
exit "$status"
