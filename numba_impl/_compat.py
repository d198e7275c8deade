"""The one place that adapts Numba CUDA to this toolchain and to the CUDA simulator.

Import ``cuda`` and the helpers from here, never ``numba.cuda`` directly, so that:

1. NumPy >= 2.5 works. numba-cuda 0.30 still calls ``np.row_stack`` while compiling, and
   NumPy 2.5 removed it; we restore the alias (it was always ``np.vstack``) *before*
   ``numba.cuda`` is imported.
2. Every kernel also runs in the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), which CI uses:
   - `kernel(...)` is ``cuda.jit`` minus the keywords the simulator refuses
     (``lineinfo``, ``launch_bounds``, ``max_registers``, ...);
   - `shfl_xor` is ``cuda.shfl_xor_sync`` on a GPU and an exchange through a per-block buffer
     in the simulator (which has no shuffles); `warp_sum` / `warp_max` reduce over the 32
     lanes of a warp with a butterfly of shuffles on a GPU, and with one exchange in the
     simulator (same result, far fewer of the barriers that make the simulator slow);
   - `block_size(gpu, sim)` picks a block size: the simulator runs one OS thread per CUDA
     thread, so it gets blocks of a few threads;
   - ``cuda.shared.array`` is replaced by a race-free version (the simulator's own lets two
     threads of a block end up with different "shared" arrays, rarely: see below).

Rules every kernel here follows (they are easy to break, hard to see):
- Literals are wrapped in ``float32(...)``: a bare Python float makes the arithmetic float64
  on the GPU (slow, and not what the float32 contract says).
- An int mixed with a float32 also promotes to float64: convert sizes with ``float32(n)``.
"""

from __future__ import annotations

import contextlib

import numpy as np

if not hasattr(np, "row_stack"):  # NumPy >= 2.5; numba-cuda 0.30 still calls it.
    np.row_stack = np.vstack

from numba import config as _numba_config  # noqa: E402
from numba import cuda, float32  # noqa: E402

SIMULATOR: bool = bool(_numba_config.ENABLE_CUDASIM)

# numba-cuda warns (NumbaPerformanceWarning) at every launch of a grid of fewer than 128 blocks. Ours are
# deliberate (a LayerNorm parameter-sum reduction of 48 blocks, one block per multiprocessor walking
# rows), and a warning per launch costs host time on every launch wherever warnings are recorded
# (pytest records each one: a 20 us kernel then took 760 us per call in the benchmarks).
_numba_config.CUDA_LOW_OCCUPANCY_WARNINGS = 0

WARP = 32
FULL_MASK = 0xFFFFFFFF

# Options the simulator's jit does not accept; on a GPU they pass through unchanged.
_GPU_ONLY_OPTIONS = ("lineinfo", "launch_bounds", "max_registers", "opt", "fastmath", "cache")


def kernel(fn=None, **options):
    """``@kernel`` or ``@kernel(lineinfo=True, ...)``: ``cuda.jit`` that also works in the simulator,
    and whose ``fn[grid, block](...)`` launches go on the current `launch_stream`."""
    if SIMULATOR:
        options = {k: v for k, v in options.items() if k not in _GPU_ONLY_OPTIONS}
    if fn is None:
        return lambda f: StreamKernel(cuda.jit(**options)(f))
    return StreamKernel(cuda.jit(**options)(fn))


# The stream that `fn[grid, block]` launches go on (None: CUDA's legacy default stream). A model
# sets it around its launches (`with launch_stream(s): ...`) so that a whole training step is
# queued on one stream, which a CUDA graph can then capture (numba_impl/graph.py): capture works
# on a created stream, never on the legacy default stream.
_LAUNCH_STREAM = [None]


@contextlib.contextmanager
def launch_stream(stream):
    """Inside the block, every `kernel` launched without an explicit stream goes on `stream`."""
    previous = _LAUNCH_STREAM[0]
    _LAUNCH_STREAM[0] = stream
    try:
        yield stream
    finally:
        _LAUNCH_STREAM[0] = previous


def current_stream():
    """The stream launches go on now (0 = the default stream): for copies that must queue with them."""
    return _LAUNCH_STREAM[0] or 0


class StreamKernel:
    """A ``cuda.jit`` kernel whose ``[grid, block]`` launch configuration gets the current launch
    stream added (``[grid, block, stream]``); an explicit stream or shared-memory size is kept.
    Everything else (``py_func``, ``overloads``, ``inspect_asm``, ...) is the wrapped dispatcher's."""

    __slots__ = ("dispatcher",)

    def __init__(self, dispatcher):
        self.dispatcher = dispatcher

    def __getitem__(self, config):
        stream = _LAUNCH_STREAM[0]
        if stream is not None and len(config) == 2:
            config = (config[0], config[1], stream)
        return self.dispatcher[config]

    def __getattr__(self, name):
        return getattr(self.dispatcher, name)

    def __repr__(self):
        return f"StreamKernel({self.dispatcher!r})"


def device(fn):
    """A device function (inlined into the kernels that call it)."""
    return cuda.jit(device=True)(fn)


def zero_fill(arr, n: int, stream) -> None:
    """``arr[:n] = 0`` on `stream`: a memset, which CUDA graphs capture like a kernel, so no buffer of
    zeros (one as large as every parameter, for the gradients) has to live on the device to copy from.
    The simulator's driver has the same call (a fill of its host memory)."""
    from numba.cuda.cudadrv.driver import device_memset

    head = arr[:n]  # never past the array's end, whatever n is
    device_memset(head, 0, head.nbytes, stream=stream)


def block_size(gpu: int, sim: int) -> int:
    """Threads per block: `gpu` on a real device, `sim` in the simulator."""
    return sim if SIMULATOR else gpu


def ceil_div(a: int, b: int) -> int:
    return (a + b - 1) // b


if SIMULATOR:
    import sys
    import threading

    from numba.cuda.simulator import kernelapi as _kernelapi

    # cuda.shared.array in the simulator (numba-cuda 0.30, FakeCUDAShared.array) looks the array up in
    # a dict shared by the block's threads and creates it when missing: get, np.empty, set. A thread
    # switch between the get and the set (rare: the GIL is only handed over there if np.empty runs
    # the garbage collector, say) lets two threads each create an array, and the one whose array is
    # overwritten in the dict then reads and writes memory no other thread sees: silently wrong
    # results, in maybe one run of twenty of a conformance case. Real GPUs are not affected.
    # scripts/cudasim_shared_race.py reproduces it with numba alone; docs/numba_impl.md tells the story.
    # The replacement keys the array exactly as the original does (file and line of the call) and
    # makes the get-or-create atomic. It also reads the caller's frame directly instead of
    # formatting the whole stack (traceback.extract_stack), which made every call slow.
    _shared_array_lock = threading.Lock()
    _original_shared_array = _kernelapi.FakeCUDAShared.array

    def _shared_array(self, shape, dtype, alignment=None):
        if alignment is not None or shape == 0:  # dynamic shared memory: no lookup, nothing to race
            return _original_shared_array(self, shape, dtype, alignment)
        if isinstance(dtype, _kernelapi.types.Type):
            dtype = _kernelapi.numpy_support.as_dtype(dtype)
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)
        with _shared_array_lock:
            array = self._allocations.get(key)
            if array is None:
                array = self._allocations[key] = np.empty(shape, dtype)
        return array

    _kernelapi.FakeCUDAShared.array = _shared_array

    # The simulator's BlockManager.run waits for its threads by busy-polling them (is_alive() and a
    # "blocked" flag, over and over, holding the GIL while the simulated threads wait for it): about
    # two thirds of a simulated model's time went into that loop. This replacement keeps the
    # semantics (a barrier opens when every thread of the block that is still running waits at it;
    # a thread that fails aborts the others, and the launch raises its exception) with a condition
    # variable, so the launching thread sleeps until the block is done.
    from numba.cuda.simulator import kernel as _sim_kernel

    class _BlockBarrier:
        def __init__(self, threads):
            self.cond = threading.Condition()
            self.threads = threads
            self.running = len(threads)  # threads not yet finished
            self.waiting = 0  # threads waiting at the barrier now
            self.generation = 0  # bumped each time the barrier opens
            self.error = None  # the first failing thread's (exception, traceback)

        def open_if_all_wait(self):  # call with self.cond held
            if self.waiting and self.waiting == self.running:
                self.waiting = 0
                self.generation += 1
                self.cond.notify_all()

    def _block_run(self, grid_point, *args):
        def target():
            self._f(*args)

        threads = [
            _sim_kernel.BlockThread(target, self, grid_point, block_point, self._debug)
            for block_point in np.ndindex(*self._block_dim)
        ]
        barrier = self._barrier = _BlockBarrier(threads)
        for t in threads:
            t.start()
        with barrier.cond:
            while barrier.running:
                barrier.cond.wait()
        for t in threads:
            t.join()
        if barrier.error is not None:
            raise barrier.error[0].with_traceback(barrier.error[1])

    _original_thread_run = _sim_kernel.BlockThread.run

    def _thread_run(self):
        try:
            _original_thread_run(self)  # runs the kernel; an exception is stored in self.exception
        finally:
            barrier = self._manager._barrier
            with barrier.cond:
                barrier.running -= 1
                if self.exception is not None and barrier.error is None:
                    barrier.error = self.exception
                    for other in barrier.threads:
                        other.abort = True
                barrier.open_if_all_wait()
                barrier.cond.notify_all()

    def _thread_syncthreads(self):
        barrier = self._manager._barrier
        with barrier.cond:
            if self.abort:
                raise RuntimeError("abort flag set on syncthreads call")
            generation = barrier.generation
            barrier.waiting += 1
            barrier.open_if_all_wait()
            while barrier.generation == generation and not self.abort:
                barrier.cond.wait()
            if self.abort:
                raise RuntimeError("abort flag set on syncthreads clear")

    _sim_kernel.BlockManager.run = _block_run
    _sim_kernel.BlockThread.run = _thread_run
    _sim_kernel.BlockThread.syncthreads = _thread_syncthreads

    # The simulator's block manager busy-polls its threads for barriers while holding the GIL;
    # with Python's default 5 ms switch interval every barrier costs milliseconds. 0.5 ms makes
    # the simulated kernels ~4x faster and changes nothing else.
    sys.setswitchinterval(min(sys.getswitchinterval(), 5e-4))

    def _warp_exchange(value):
        """Publish `value` in the block's exchange buffer (kept on the simulator's block manager) and
        wait at a barrier; returns (buffer, first slot of this thread's warp, this thread's slot)."""
        thread = threading.current_thread()
        exchange = thread._manager.__dict__.setdefault("warp_exchange", np.zeros(1024, dtype=np.float64))
        tid = thread.threadIdx.x
        exchange[tid] = value
        thread.syncthreads()
        return exchange, tid & ~(WARP - 1), tid

    def shfl_xor(value, lane_mask):
        """``cuda.shfl_xor_sync(FULL_MASK, value, lane_mask)`` for the simulator, which has no shuffles.
        For 1-D blocks whose size is a multiple of 32; every thread of the block must call it (two
        barriers inside). Plain Python: the simulator runs kernels as Python."""
        exchange, warp0, tid = _warp_exchange(value)
        other = exchange[warp0 | ((tid - warp0) ^ lane_mask)]
        threading.current_thread().syncthreads()
        return type(value)(other)

    def _warp_reduce(value, op):
        # Same result as the shuffle butterfly, with 2 barriers instead of 10 (barriers are what is slow here).
        exchange, warp0, _ = _warp_exchange(value)
        result = op(exchange[warp0 : warp0 + WARP])
        threading.current_thread().syncthreads()
        return type(value)(result)

    def warp_sum(value):
        """Sum of `value` over the 32 lanes of the warp; every lane gets the total."""
        return _warp_reduce(value, np.sum)

    def warp_max(value):
        """Max of `value` over the 32 lanes of the warp; every lane gets it."""
        return _warp_reduce(value, np.max)

else:

    @device
    def shfl_xor(value, lane_mask):
        return cuda.shfl_xor_sync(FULL_MASK, value, lane_mask)

    @device
    def warp_sum(value):
        """Sum of `value` over the 32 lanes of the warp; every lane gets the total (butterfly of shuffles)."""
        offset = 16
        while offset > 0:
            value += shfl_xor(value, offset)
            offset //= 2
        return value

    @device
    def warp_max(value):
        """Max of `value` over the 32 lanes of the warp; every lane gets it."""
        offset = 16
        while offset > 0:
            value = max(value, shfl_xor(value, offset))
            offset //= 2
        return value


@device
def block_sum(value, scratch):
    """Sum over a 1-D block (size a multiple of 32, at most 1024); every thread gets the total.

    scratch: a shared float32 array of >= 32 slots owned by the caller."""
    lane = cuda.threadIdx.x % WARP
    warp_id = cuda.threadIdx.x // WARP
    n_warps = cuda.blockDim.x // WARP
    value = warp_sum(value)
    if lane == 0:
        scratch[warp_id] = value
    cuda.syncthreads()
    value = scratch[lane] if lane < n_warps else float32(0.0)
    value = warp_sum(value)
    cuda.syncthreads()  # scratch may be reused right after
    return value


@device
def block_max(value, scratch):
    """Max over a 1-D block (size a multiple of 32); every thread gets it. scratch as in `block_sum`."""
    lane = cuda.threadIdx.x % WARP
    warp_id = cuda.threadIdx.x // WARP
    n_warps = cuda.blockDim.x // WARP
    value = warp_max(value)
    if lane == 0:
        scratch[warp_id] = value
    cuda.syncthreads()
    value = scratch[lane] if lane < n_warps else float32(-np.inf)
    value = warp_max(value)
    cuda.syncthreads()
    return value


__all__ = [
    "SIMULATOR",
    "WARP",
    "block_max",
    "block_size",
    "block_sum",
    "ceil_div",
    "cuda",
    "current_stream",
    "device",
    "float32",
    "kernel",
    "launch_stream",
    "shfl_xor",
    "warp_max",
    "warp_sum",
]
