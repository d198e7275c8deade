"""GPU-only benchmarks: every matmul shape of GPT-2 124M against cuBLAS float32, and the device's
copy bandwidth.

Matmul shapes (benchmarks/cases.py MATMUL_SHAPES): the forward, input-gradient and weight-gradient
products of each linear layer and of the head, at B=4, T=1024, in the storage layouts the Numba
kernels take. Group `matmul:<shape>` holds torch float32 (cuBLAS, TF32 off), the Numba float32
kernel and, where it exists, the Numba 3xTF32 tensor-core kernel; the report gives each one's
TFLOP/s and its share of cuBLAS float32's. Each result's error against the same product in float64
(cuBLAS DGEMM) is recorded (max|out - ref| / max|ref|) and must be within the float32 tolerance of
benchmarks/checks.py, so a fast wrong kernel fails here.

Each shape is timed twice (benchmarks/timing.py): per call (from Python, with the host's launch
cost) and on the device (CUDA graph replays over rotating copies of the operands); the goal's
share of cuBLAS is taken between device times.

Copy bandwidth: a 1 GiB device-to-device copy through torch, bytes read + written over the time:
the ceiling against which the report judges the memory-bound ops (LayerNorm, GELU, cross-entropy).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from benchmarks.backends import BY_NAME
from benchmarks.cases import MATMUL_SHAPES, matmul_operands
from benchmarks.checks import TOLERANCE
from benchmarks.sizes import SIZES
from benchmarks.timing import ROUNDS, input_sets, record_device_time, run_benchmark
from conformance.checks import max_rel

MATMUL_BACKENDS = ("torch-cuda-f32", "numba-cuda-f32", "numba-cuda-3xtf32")
SIZE = SIZES["124m-gpu"]  # the shapes are that size's; GPU only
COPY_BYTES = 2**30


@functools.lru_cache(maxsize=1)
def _operands_and_reference(shape_name: str):
    """(A, B, A @ B in float64) of one shape; the last call's only (the head's operands are large)."""
    _, M, N, K, layout, _ = next(s for s in MATMUL_SHAPES if s[0] == shape_name)
    a, b = matmul_operands(M, N, K, layout)
    return a, b, BY_NAME["torch-cuda-f32"].impl().matmul_reference(M, N, K, layout, a, b)


def _skip_unless_runs(backend):
    reason = backend.skip_reason(SIZE, what="matmul")
    if reason:
        pytest.skip(reason)
    if backend.problem() == "simulator":
        pytest.skip("Numba runs in the CUDA simulator here: the matmul shapes are GPU-only")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", [BY_NAME[n] for n in MATMUL_BACKENDS], ids=list(MATMUL_BACKENDS))
@pytest.mark.parametrize("shape", MATMUL_SHAPES, ids=[s[0].replace(" ", "-") for s in MATMUL_SHAPES])
def test_matmul_shape(benchmark, shape, backend):
    _skip_unless_runs(backend)
    if BY_NAME["torch-cuda-f32"].problem():
        pytest.skip(f"the float64 reference needs torch on CUDA: {BY_NAME['torch-cuda-f32'].problem()}")
    name, M, N, K, layout, k_chunk = shape
    benchmark.group = f"matmul:{name}"
    a, b, ref = _operands_and_reference(name)
    fn, to_numpy = backend.impl().make_matmul(backend, M, N, K, layout, k_chunk, a, b)
    extra = {"kind": "matmul", "shape": name, "M": M, "N": N, "K": K, "layout": layout, "k_chunk": k_chunk,
             "flops": 2.0 * M * N * K, "size": SIZE.name}  # fmt: skip
    out = run_benchmark(benchmark, backend, fn, ROUNDS[SIZE.name], extra, read_result=to_numpy)
    err = max_rel(out, ref)
    benchmark.extra_info["max_rel_err_vs_float64"] = err
    tol = TOLERANCE[backend.dtype]
    assert err <= tol, f"{backend.name} {name}: error vs float64 {err:.2e} > {tol:.0e}"
    if not benchmark.disabled:
        del fn
        set_bytes = 4 * (M * K + K * N + M * N)
        launches = backend.impl().matmul_launches(backend, M, N, K, layout, k_chunk, a, b, input_sets(set_bytes))
        record_device_time(benchmark, backend, launches)


@pytest.mark.gpu
def test_device_copy_bandwidth(benchmark):
    backend = BY_NAME["torch-cuda-f32"]
    if backend.problem():
        pytest.skip(backend.problem())
    benchmark.group = "device-copy"
    fn = backend.impl().make_device_copy(COPY_BYTES)
    extra = {"kind": "device-copy", "moved_bytes": fn.moved_bytes, "size": SIZE.name}
    out = run_benchmark(benchmark, backend, fn, ROUNDS[SIZE.name], extra)
    assert out.numel() * 4 == COPY_BYTES and bool(np.isfinite(out[:1000].cpu().numpy()).all())
