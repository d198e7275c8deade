"""FLOPs per token and the peaks of the devices: the one count the trainer, the benchmarks and the
Numba model's reports share.

FLOPs per token of a training step (forward + backward), llm.c's count:

    6 * N  +  6 * L * C * T

N counts the parameters that take part in a matmul: every one of them does one multiply-add (2
FLOPs) per token in the forward and two in the backward (the gradient of its input and of itself).
A tied wte is the head's matmul and counts once; an untied model's wte is only looked up (a row
copy, no matmul) and is left out, while its lm_head counts. GPT-2's wpe, also a lookup, stays in N
as llm.c counts it (0.6% of 124M), so the GPT-2 numbers are llm.c's.

The second term is attention's two matmuls, q k^T and att v. Per layer and token, against all T
keys each would cost 2 * C * T FLOPs in the forward (NH heads of HS channels, NH * HS = C), 4 * C * T
for both, 12 * C * T with the backward's two products per forward product. A causal query sees on
average half the keys, and flash attention skips the masked half: 6 * L * C * T is that causal half.
(nanoGPT's estimate_mfu counts the full 12 * L * C * T.) Grouped-query attention changes nothing
here: every query head still takes its dot products with every key. A forward alone is one third of
the whole: 2 * N + 2 * L * C * T.

MFU = achieved FLOP/s / the dense peak of the device actually used, for the dtype the matmuls run in,
per device: with W devices, the FLOP/s of all of them over W times one device's peak.
"""

from __future__ import annotations

import os

from weights.config import GPT2Config
from weights.layout import num_params

# Dense (no sparsity) peaks in TFLOP/s, from NVIDIA's data sheets, by a substring of the device name:
#   H100 SXM5 and H200 (the same compute die): BF16 tensor 989.4, FP32 (CUDA cores) 66.9, FP64 33.5;
#   H100 PCIe: 756, 51.2, 25.6; H100 NVL: 835, 60, 30; A100 (SXM/PCIe): 312, 19.5, 9.7; L40S and
#   RTX 4090: BF16 tensor (FP32 accumulate) 362.1 and 165.2.
# float32 is matched to the non-tensor FP32 figure: torch's default float32 matmuls do not use TF32,
# and the Numba kernels run on the CUDA cores. The first matching substring wins (PCIe before H100).
GPU_PEAKS_TFLOPS = (
    ("H100 PCIe", {"bfloat16": 756.0, "float32": 51.2, "float64": 25.6}),
    ("H100 NVL", {"bfloat16": 835.0, "float32": 60.0, "float64": 30.0}),
    ("GH200", {"bfloat16": 989.4, "float32": 66.9, "float64": 33.5}),
    ("H100", {"bfloat16": 989.4, "float32": 66.9, "float64": 33.5}),
    ("H200", {"bfloat16": 989.4, "float32": 66.9, "float64": 33.5}),
    ("A100", {"bfloat16": 312.0, "float32": 19.5, "float64": 9.7}),
    ("L40S", {"bfloat16": 362.1}),
    ("RTX 4090", {"bfloat16": 165.2}),
)
PEAK_SOURCE = "NVIDIA data sheets, dense (no sparsity); override with BENCH_PEAK_TFLOPS (benchmarks) or --peak-flops"


def matmul_params(config: GPT2Config) -> int:
    """N of the count: the parameters that take part in a matmul (all but an untied model's wte)."""
    n = num_params(config)
    if not config.tied_head:
        n -= config.vocab_size * config.n_embd
    return n


def training_flops_per_token(config: GPT2Config, T: int) -> int:
    """6 * N + 6 * L * C * T: forward + backward FLOPs per token at sequence length T."""
    return 6 * matmul_params(config) + 6 * config.n_layer * config.n_embd * T


def forward_flops_per_token(config: GPT2Config, T: int) -> float:
    """2 * N + 2 * L * C * T: one third of a training step."""
    return training_flops_per_token(config, T) / 3.0


def peak_tflops(device_name: str, dtype: str) -> float | None:
    """The dense peak (TFLOP/s) of `device_name` for math in `dtype` ("bfloat16", "float32", "float64"),
    None when unknown (a CPU, an unlisted GPU). BENCH_PEAK_TFLOPS (a number) overrides the table."""
    override = os.environ.get("BENCH_PEAK_TFLOPS")
    if override:
        return float(override)
    for key, peaks in GPU_PEAKS_TFLOPS:
        if key in device_name:
            return peaks.get(dtype)
    return None


def mfu(flops_per_token: float, tokens_per_s: float, peak_flops: float | None, devices: int = 1) -> float | None:
    """Model FLOPs utilisation per device: the FLOP/s of `devices` devices together (tokens_per_s is their
    total) over `devices` times one device's peak (FLOP/s). None without a peak."""
    if not peak_flops:
        return None
    return flops_per_token * tokens_per_s / (peak_flops * devices)


__all__ = [
    "GPU_PEAKS_TFLOPS",
    "PEAK_SOURCE",
    "forward_flops_per_token",
    "matmul_params",
    "mfu",
    "peak_tflops",
    "training_flops_per_token",
]
