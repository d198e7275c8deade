"""The toolchain shims of numba_impl/_compat.py: the NumPy alias, the jit wrapper, the warp reductions, the
zero fill."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest

from numba_impl._compat import (
    SIMULATOR,
    WARP,
    block_max,
    block_sum,
    cuda,
    float32,
    kernel,
    shfl_xor,
    warp_max,
    warp_sum,
    zero_fill,
)
from tests.numba_impl.helpers import dev, needs_cuda

pytestmark = needs_cuda


def test_row_stack_alias_is_present_for_numba_cuda():
    # NumPy < 2.5 still has its own (deprecated) alias; from 2.5 on _compat supplies np.vstack.
    assert hasattr(np, "row_stack")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        stacked = np.row_stack([np.ones(2), np.zeros(2)])
    assert np.array_equal(stacked, np.vstack([np.ones(2), np.zeros(2)]))


@kernel(lineinfo=True)  # a GPU-only keyword: the wrapper must drop it in the simulator
def _reductions_kernel(out, inp):
    scratch = cuda.shared.array(32, float32)
    tid = cuda.threadIdx.x
    x = inp[tid]
    out[0, tid] = shfl_xor(x, 1)
    out[1, tid] = warp_sum(x)
    out[2, tid] = warp_max(x)
    out[3, tid] = block_sum(x, scratch)
    out[4, tid] = block_max(x, scratch)


def test_warp_and_block_reductions():
    n = 2 * WARP  # two warps: the warp results differ per warp, the block results do not
    x = np.random.default_rng(0).integers(-50, 50, n).astype(np.float32)  # integers: sums are exact
    out = cuda.to_device(np.zeros((5, n), dtype=np.float32))
    _reductions_kernel[1, n](out, dev(x))
    got = out.copy_to_host()
    lanes = np.arange(n)
    assert np.array_equal(got[0], x[lanes ^ 1])
    warps = x.reshape(2, WARP)
    assert np.array_equal(got[1], np.repeat(warps.sum(1), WARP))
    assert np.array_equal(got[2], np.repeat(warps.max(1), WARP))
    assert np.all(got[3] == x.sum())
    assert np.all(got[4] == x.max())


@kernel
def _shared_sum_kernel(out):
    buf = cuda.shared.array(8, float32)
    other = cuda.shared.array(8, float32)  # a second array on another line: must stay distinct
    tid = cuda.threadIdx.x
    buf[tid] = float32(tid)
    other[tid] = float32(100.0)
    cuda.syncthreads()
    if tid == 0:
        total = float32(0.0)
        for i in range(8):
            total += buf[i]
        out[0] = total


@pytest.mark.skipif(not SIMULATOR, reason="the race is in Numba's CUDA simulator; a GPU has real shared memory")
def test_simulator_shared_array_is_one_array_per_block_under_thread_switches(monkeypatch):
    """Stress test for the simulator's shared-array race (numba_impl/_compat.py). The window between
    the simulator's lookup and its insert is widened by making np.empty hand the GIL to another
    thread; with the simulator's own cuda.shared.array about 1 launch in 6 then sees threads with
    different arrays (sum != 28), so 50 clean launches in a row do not happen by chance (p ~ 1e-4)."""
    real_empty = np.empty

    def yielding_empty(*args, **kwargs):
        time.sleep(0.001)
        return real_empty(*args, **kwargs)

    monkeypatch.setattr(np, "empty", yielding_empty)
    sums = []
    for _ in range(50):
        out = cuda.to_device(np.zeros(1, dtype=np.float32))
        _shared_sum_kernel[1, 8](out)
        sums.append(float(out.copy_to_host()[0]))
    assert sums == [28.0] * 50


@kernel
def _early_exit_kernel(out, n_active):
    """Threads >= n_active leave before the barrier; the others swap values across it."""
    buf = cuda.shared.array(8, float32)
    tid = cuda.threadIdx.x
    if tid >= n_active:
        return
    buf[tid] = float32(tid + 1)
    cuda.syncthreads()
    out[tid] = buf[n_active - 1 - tid]
    cuda.syncthreads()
    buf[tid] = float32(0.0)


def test_barrier_opens_for_the_threads_still_running():
    out = cuda.to_device(np.zeros(8, dtype=np.float32))
    _early_exit_kernel[1, 8](out, 5)
    assert out.copy_to_host().tolist() == [5, 4, 3, 2, 1, 0, 0, 0]


@kernel
def _failing_kernel(out, bad_thread):
    tid = cuda.threadIdx.x
    if tid == bad_thread:
        out[tid + 1000] = float32(1.0)  # out of bounds: an IndexError in the simulator
    cuda.syncthreads()  # the other threads wait here; the failure must release them
    out[tid] = float32(1.0)


@pytest.mark.skipif(not SIMULATOR, reason="an out-of-bounds write is undefined behaviour on a GPU, an error only here")
def test_a_failing_thread_fails_the_launch_instead_of_hanging_it():
    out = cuda.to_device(np.zeros(8, dtype=np.float32))
    with pytest.raises(IndexError, match="tid=\\[3, 0, 0\\]"):
        _failing_kernel[1, 8](out, 3)


def test_zero_fill_zeroes_the_first_n_values_on_the_stream_and_nothing_else():
    stream = cuda.stream()
    arr = dev(np.arange(1, 11, dtype=np.float32))
    zero_fill(arr, 7, stream)
    stream.synchronize()
    np.testing.assert_array_equal(arr.copy_to_host(), [0, 0, 0, 0, 0, 0, 0, 8, 9, 10])
