"""Derived figures: FLOPs per token, the peak of the device used, tokens/s, TFLOP/s and MFU.

FLOPs (llm.c's count, stated once here and in docs/benchmarks.md). Per token, a training
step (forward + backward) costs

    6 * N  +  6 * L * C * T

N is the number of parameters (124,439,808 for GPT-2 124M: the tied head counted once,
wpe included); each weight takes part in one multiply-add (2 FLOPs) per token in the
forward and two in the backward. The second term is attention's q k^T and att v: per
layer and token 2 * C * T FLOPs for each of the two products in the forward, counted as
if every query saw all T keys (the causal half is not discounted), times 3 for the
backward. A forward alone is one third of this: 2 * N + 2 * L * C * T. (nanoGPT's
estimate_mfu counts 6 * N + 12 * L * C * T, twice our attention term.)

MFU = achieved FLOP/s / the peak of the device actually used, for the dtype the math runs in.
"""

from __future__ import annotations

import os

from weights import GPT2Config, num_params

# Dense (no sparsity) peaks in TFLOP/s, from NVIDIA's data sheets:
#   H100 SXM5 (and H200, the same compute die): BF16 tensor 989.4, FP32 (CUDA cores) 66.9,
#   FP64 33.5;  H100 PCIe: 756, 51.2, 25.6;  H100 NVL: 835, 60, 30;  A100 (SXM/PCIe): 312, 19.5, 9.7.
# float32 is matched to the non-tensor FP32 figure: torch's default float32 matmuls do not
# use TF32, and the Numba kernels run on the CUDA cores.
GPU_PEAKS_TFLOPS = {
    # (substring of torch.cuda.get_device_name(), label): {dtype: peak}
    ("H100 PCIe", "NVIDIA H100 PCIe"): {"bfloat16": 756.0, "float32": 51.2, "float64": 25.6},
    ("H100 NVL", "NVIDIA H100 NVL"): {"bfloat16": 835.0, "float32": 60.0, "float64": 30.0},
    ("H100", "NVIDIA H100 SXM5"): {"bfloat16": 989.4, "float32": 66.9, "float64": 33.5},
    ("H200", "NVIDIA H200"): {"bfloat16": 989.4, "float32": 66.9, "float64": 33.5},
    ("A100", "NVIDIA A100"): {"bfloat16": 312.0, "float32": 19.5, "float64": 9.7},
}

PEAK_SOURCE = "NVIDIA data sheets, dense (no sparsity); override with BENCH_PEAK_TFLOPS"


def training_flops_per_token(config: GPT2Config, T: int) -> float:
    """6 * N + 6 * L * C * T (llm.c): forward + backward FLOPs per token at sequence length T."""
    return 6.0 * num_params(config) + 6.0 * config.n_layer * config.n_embd * T


def forward_flops_per_token(config: GPT2Config, T: int) -> float:
    """2 * N + 2 * L * C * T: one third of a training step."""
    return training_flops_per_token(config, T) / 3.0


def peak_tflops(device_name: str, dtype: str) -> float | None:
    """The dense peak of `device_name` for math in `dtype`, or None when unknown (e.g. a CPU).

    BENCH_PEAK_TFLOPS (a number) overrides the table, for a device it does not know.
    """
    override = os.environ.get("BENCH_PEAK_TFLOPS")
    if override:
        return float(override)
    for (key, _label), peaks in GPU_PEAKS_TFLOPS.items():
        if key in device_name:
            return peaks.get(dtype)
    return None


def derived(seconds: float, tokens: int | None, flops: float | None, peak: float | None) -> dict:
    """tokens/s, TFLOP/s and MFU (a fraction) for one call that took `seconds`; None where not defined."""
    out = {"tokens_per_s": None, "tflops": None, "mfu": None}
    if seconds <= 0:
        return out
    if tokens:
        out["tokens_per_s"] = tokens / seconds
    if flops:
        out["tflops"] = flops / seconds / 1e12
        if peak:
            out["mfu"] = out["tflops"] / peak
    return out
