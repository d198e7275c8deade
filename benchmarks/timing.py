"""Timing that tells the truth about asynchronous devices, and peak memory.

Two times per GPU benchmark of an op or a matmul shape:
- the call time (pytest-benchmark's own): one call from Python, then a synchronize. It includes
  the host's launch cost (Numba's argument marshalling is tens of microseconds per kernel; torch's
  dispatcher a few) and the GPU's idle wait for it: what one eager call costs a user.
- the device time (`record_device_time`): the same work queued DEVICE_LAUNCHES times into one CUDA
  graph, whose replays are timed with CUDA events on the device and divided by the launches. No
  host cost, no idle gaps: what the kernels themselves take, the number to set against the
  hardware's ceilings (cuBLAS's TFLOP/s, the copy bandwidth). The launches cycle over several
  copies of the inputs and outputs (`input_sets`), together >= ROTATE_BYTES, so that a kernel
  whose data would fit the 60 MB L2 cannot be timed reading it from there.
Both backends of a comparison are timed the same way.

CUDA work (torch or Numba) is queued: a kernel launch returns before the kernel has run. A
timer around the launch alone measures the launch. So every timed callable here ends with
the backend's synchronize (torch.cuda.synchronize / numba.cuda.synchronize), which waits
for the queue to drain, and the time pytest-benchmark records is the whole run.

First calls are different. Numba compiles each kernel (for its argument types) on its first
launch; torch initialises cuBLAS/cuDNN handles and its caching allocator. `first_call` times
that first synchronised call on its own, before any warm-up, and the benchmark records it in
extra_info["first_call_s"] next to the steady-state statistics: for Numba the difference is
the JIT compile time, a number users pay once per process. Warm-up rounds follow and are not
timed.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable

# (rounds, warmup_rounds) per size: enough rounds for a stable median, few enough that the
# CPU set runs in minutes and the GPU set in under six.
ROUNDS = {"tiny": (5, 1), "124m-cpu": (5, 1), "124m-gpu": (20, 3)}
MODEL_ROUNDS = {"tiny": (5, 1), "124m-cpu": (3, 1), "124m-gpu": (10, 2)}

# Timed rounds are cut so that one benchmark spends about this long timing (at least 3 rounds):
# a 124M step that takes seconds gets 3, a kernel that takes microseconds gets the full count.
ROUND_BUDGET_S = 3.0

# --bench-rounds=N (benchmarks/conftest.py) sets this: N timed rounds, no warm-up, for every benchmark.
ROUNDS_OVERRIDE: int | None = None


def synchronized(fn: Callable[[], object], sync: Callable[[], None]) -> Callable[[], object]:
    """fn followed by a device synchronize: its wall time is the time the device took."""

    def run():
        out = fn()
        sync()
        return out

    return run


def first_call(fn: Callable[[], object]) -> tuple[float, object]:
    """(seconds, result) of one call, e.g. the JIT-compiling first call of a synchronised fn."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run_benchmark(
    benchmark,
    backend,
    fn: Callable[[], object],
    rounds: tuple[int, int],
    extra: dict,
    read_result: Callable[[object], object] = lambda r: r,
) -> object:
    """Time fn on `backend` with pytest-benchmark: first call measured apart, then warm-up, then rounds.

    Returns read_result(result of the first call), read at once: later rounds may overwrite
    device buffers (accumulating kernels, optimizer updates) that the first result points to.
    With --benchmark-disable (CI smoke) fn runs once and no time is recorded.
    """
    fn = synchronized(fn, backend.sync)
    benchmark.extra_info.update(extra)
    benchmark.extra_info.update(backend=backend.name, device=backend.device, dtype=backend.dtype,
                                device_name=backend.device_name())  # fmt: skip
    if benchmark.disabled:
        return read_result(benchmark.pedantic(fn, rounds=1, iterations=1))
    seconds, out = first_call(fn)
    out = read_result(out)
    benchmark.extra_info["first_call_s"] = seconds
    n_rounds, warmup = rounds if ROUNDS_OVERRIDE is None else (ROUNDS_OVERRIDE, 0)
    if ROUNDS_OVERRIDE is None and seconds * n_rounds > ROUND_BUDGET_S:
        n_rounds, warmup = max(3, int(ROUND_BUDGET_S / seconds)), min(warmup, 1)
    benchmark.pedantic(fn, rounds=n_rounds, warmup_rounds=warmup, iterations=1)
    return out


DEVICE_LAUNCHES = 20  # launches per recorded CUDA graph
DEVICE_REPLAYS = (10, 2)  # timed replays, warm-up replays
ROTATE_BYTES = 256 << 20  # the input sets of one device timing cover at least this (> 4x the H200's L2)
MAX_INPUT_SETS = 8


def input_sets(set_bytes: int) -> int:
    """How many copies of an op's inputs and outputs (set_bytes each) the device timing cycles over."""
    if set_bytes <= 0:
        return 1
    return max(1, min(MAX_INPUT_SETS, -(-ROTATE_BYTES // set_bytes)))


def record_device_time(benchmark, backend, launches: list[Callable[[], object]], graph: bool = True) -> None:
    """The device time per call of `launches[i]` (each one call of the work on input set i), into
    extra_info: device_time_s (median over replays), device_time_min_s, device_time_method,
    device_input_sets. Recorded by the backend's own graph capture (impl_*.device_time); graph=False
    (torch's autograd backward, which a capture does not take) times DEVICE_LAUNCHES back-to-back calls
    between CUDA events instead, and says so in device_time_method. A capture that fails leaves
    device_time_error instead, and the report counts the number as missing."""
    if benchmark.disabled or backend.device != "cuda":
        return
    try:
        info = backend.impl().device_time(launches, DEVICE_LAUNCHES, *DEVICE_REPLAYS, graph=graph)
    except Exception as e:  # a capture failure is reported, never replaced by another number
        benchmark.extra_info["device_time_error"] = f"{type(e).__name__}: {e}"
        return
    benchmark.extra_info.update(info, device_input_sets=len(launches))


def numpy_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes NumPy allocated while fn ran (tracemalloc sees NumPy's data buffers), inputs excluded."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - base
