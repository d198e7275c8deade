"""A race in Numba's CUDA simulator, reproduced with numba alone (none of this project's code).

The simulator runs each CUDA thread of a block as a Python thread. Its `cuda.shared.array`
(numba-cuda 0.30: numba/cuda/simulator/kernelapi.py, FakeCUDAShared.array) does

    res = self._allocations.get(caller)        # caller = (file, line) of the call
    if res is None:
        res = np.empty(shape, dtype)
        self._allocations[caller] = res

with no lock. When the running thread is switched out between the get and the set, a second
thread also finds nothing and creates its own array; one of the two arrays is then overwritten in
the dict, and the thread that holds it reads and writes "shared" memory that no other thread of
the block sees. In a real run the switch there is rare (the GIL must change hands inside that
window), so results are wrong in a small fraction of runs. Here the window is widened on purpose:
np.empty, as the simulator calls it, first sleeps 1 ms, which hands the GIL to another thread.

    python scripts/cudasim_shared_race.py            # the simulator as shipped: some launches wrong
    python scripts/cudasim_shared_race.py --locked   # get-or-create under a lock: none wrong

Exit status: 1 if any launch was wrong, else 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

import numpy as np  # noqa: E402

if not hasattr(np, "row_stack"):  # numba-cuda 0.30 still calls it; NumPy 2.5 removed it
    np.row_stack = np.vstack

from numba import cuda, float32  # noqa: E402
from numba.cuda.simulator import kernelapi  # noqa: E402

THREADS = 8


class _NumpyWithSlowEmpty:
    """numpy as the simulator's kernelapi module sees it, except that np.empty yields first."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def empty(*args, **kwargs):
        time.sleep(0.001)
        return np.empty(*args, **kwargs)


def _locked_shared_array():
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if isinstance(dtype, kernelapi.types.Type):
            dtype = kernelapi.numpy_support.as_dtype(dtype)
        frame = sys._getframe(1)
        key = (frame.f_code.co_filename, frame.f_lineno)
        with lock:
            res = self._allocations.get(key)
            if res is None:
                res = self._allocations[key] = kernelapi.np.empty(shape, dtype)
        return res

    return array


@cuda.jit
def shared_sum(out):
    """Every thread writes its index into a shared array; after the barrier thread 0 sums it."""
    buf = cuda.shared.array(THREADS, float32)
    tid = cuda.threadIdx.x
    buf[tid] = tid
    cuda.syncthreads()
    if tid == 0:
        total = float32(0.0)
        for i in range(THREADS):
            total += buf[i]
        out[0] = total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--locked", action="store_true", help="make the simulator's get-or-create atomic")
    parser.add_argument("--launches", type=int, default=100)
    args = parser.parse_args()
    kernelapi.np = _NumpyWithSlowEmpty()
    if args.locked:
        kernelapi.FakeCUDAShared.array = _locked_shared_array()
    expected = THREADS * (THREADS - 1) / 2
    wrong = 0
    for _ in range(args.launches):
        out = np.zeros(1, dtype=np.float32)
        shared_sum[1, THREADS](out)
        wrong += int(out[0] != expected)
    print(f"{'locked' if args.locked else 'as shipped'}: {wrong} of {args.launches} launches wrong")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
