"""Attention as T grows: time and peak memory of naive vs tiled, forward + backward.

naive keeps the (T, T) probabilities of every head (memory O(T^2)); tiled streams over key
blocks (memory O(T) beyond the inputs). Shape: B = 1, NH = 12, C = 768 (GPT-2 124M's attention).
Peak memory is what the op allocates beyond its inputs (qkv, dout):

    NumPy   tracemalloc's peak during one call (NumPy reports its buffers to tracemalloc)
    torch   torch.cuda.max_memory_allocated() during one call, minus what was allocated before
            (CPU torch: not measured; its allocator is invisible to tracemalloc)
    Numba   the bytes of the output and scratch buffers the kernels are given
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from benchmarks.backends import BY_NAME
from benchmarks.cases import op_inputs
from benchmarks.timing import ROUNDS, numpy_peak_bytes, run_benchmark
from weights import GPT2Config

CPU_T = (64, 128, 256, 512, 1024)
GPU_T = CPU_T + (2048, 4096, 8192)
# Numba's naive kernels re-read the (T, T) arrays column-wise: beyond 4096 one call takes many seconds.
MAX_T = {"numba-cuda-f32": {"naive": 4096}}
SCALING_BACKENDS = ("numpy-f32", "torch-cpu-f32", "torch-cuda-f32", "torch-cuda-bf16", "numba-cuda-f32")


@dataclasses.dataclass(frozen=True)
class ScalingSize:
    """The attention shape at sequence length T (a Size-like object for op_inputs and the selectors)."""

    T: int
    B: int = 1
    config: GPT2Config = GPT2Config(n_layer=1, n_head=12, n_embd=768, vocab_size=8, n_ctx=8192)
    gpu_only: bool = False

    @property
    def name(self) -> str:
        return "tiny" if self.T <= 16 else f"T{self.T}"

    @property
    def tokens(self) -> int:
        return self.B * self.T


def _cases():
    for name in SCALING_BACKENDS:
        backend = BY_NAME[name]
        Ts = (16,) + (GPU_T if backend.device == "cuda" else CPU_T)
        for T in Ts:
            marks = [pytest.mark.smoke] if T == 16 else []
            yield pytest.param(backend, ScalingSize(T), id=f"{name}-T{T}", marks=marks)


@pytest.mark.parametrize("variant", ["naive", "tiled"])
@pytest.mark.parametrize("backend,scaling", list(_cases()))
def test_attention_scaling(benchmark, backend, scaling, variant):
    if scaling.T > MAX_T.get(backend.name, {}).get(variant, scaling.T):
        pytest.skip(f"{backend.name} {variant} is not run beyond T={MAX_T[backend.name][variant]} (seconds per call)")
    problem = backend.problem()
    if problem == "simulator":  # the ops benchmarks run these kernels at the tiny size already
        pytest.skip("Numba runs in the CUDA simulator here: too slow at attention-scaling shapes")
    if problem:
        pytest.skip(problem)
    benchmark.group = f"attention-scaling:{backend.name}"
    inputs = op_inputs(f"attention-{variant}", scaling)
    impl = backend.impl()
    fn = impl.attention_fwd_bwd(backend, inputs, variant)
    if backend.family == "numpy":
        peak = numpy_peak_bytes(fn)
    elif backend.family == "numba":
        peak = fn.work_bytes
    elif backend.device == "cuda":
        peak = impl.cuda_peak_bytes(fn)
    else:
        peak = None
    extra = {"kind": "attention-scaling", "variant": variant, "T": scaling.T, "B": scaling.B,
             "n_head": 12, "peak_bytes": peak, "size": scaling.name}  # fmt: skip
    rounds = ROUNDS["124m-gpu" if backend.device == "cuda" else "124m-cpu"]
    dqkv = run_benchmark(benchmark, backend, fn, rounds, extra)
    assert int(np.prod(dqkv.shape)) == scaling.B * scaling.T * 3 * 768, f"dqkv has shape {tuple(dqkv.shape)}"
    if variant == "naive" and peak is not None and scaling.T >= 256:
        # The (T, T) probabilities of 12 heads must be in the naive peak: if not, it is not naive.
        assert peak >= 12 * scaling.T * scaling.T * (2 if backend.dtype == "bfloat16" else 4)
