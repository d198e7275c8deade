"""Whole-model benchmarks: forward, forward + backward, and a training step (+ AdamW).

Each backend runs GPT-2 the way its users would: the NumPy reference's `forward` /
`forward_backward` + `adamw_step`, torch_impl's GPT2 (SDPA attention; bf16 = autocast) with
torch.optim.AdamW, Numba's NumbaGPT2 (flash attention) with its AdamW kernel. All start from
the same synthetic weights and batch. extra_info carries tokens and FLOPs (llm.c's count, see
benchmarks/throughput.py) and the device's peak, from which the report derives tokens/s,
TFLOP/s and MFU.
"""

from __future__ import annotations

import functools

import pytest

from benchmarks.cases import MODEL_TASKS, backend_params, model_inputs, size_params
from benchmarks.checks import check_loss
from benchmarks.throughput import PEAK_SOURCE, forward_flops_per_token, peak_tflops, training_flops_per_token
from benchmarks.timing import MODEL_ROUNDS, run_benchmark
from weights import synthetic


@functools.lru_cache(maxsize=2)
def synthetic_params(config):
    """The synthetic checkpoint of `config` (seconds to build at 124M: built once per run; no backend mutates it)."""
    return synthetic(config, seed=0)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("task", MODEL_TASKS)
@pytest.mark.parametrize("size", size_params())
def test_model(benchmark, size, task, backend):
    reason = backend.skip_reason(size)
    if reason:
        pytest.skip(reason)
    if backend.problem() == "simulator":  # tens of seconds per call; the conformance suite runs it there
        pytest.skip("Numba runs in the CUDA simulator here: the whole model is too slow to benchmark")
    benchmark.group = f"model:{task}:{size.name}"
    cfg = size.config
    idx, targets = model_inputs(size)
    impl = backend.impl()
    fn, loss_of = impl.make_model(backend, synthetic_params(cfg), cfg, idx, targets, task)
    per_token = forward_flops_per_token if task == "forward" else training_flops_per_token
    extra = {
        "kind": "model", "task": task, "size": size.name, "B": size.B, "T": size.T, "tokens": size.tokens,
        "flops": per_token(cfg, size.T) * size.tokens, "flops_formula": "llm.c: 6N + 6LCT per token (x1/3 forward)",
        "attention": impl.MODEL_ATTENTION, "peak_tflops": None, "peak_source": PEAK_SOURCE,
    }  # fmt: skip
    if backend.device == "cuda":
        extra["peak_tflops"] = peak_tflops(backend.device_name(), backend.dtype)
    loss = run_benchmark(benchmark, backend, fn, MODEL_ROUNDS[size.name], extra, read_result=loss_of)
    check_loss(backend, task, size, loss)
