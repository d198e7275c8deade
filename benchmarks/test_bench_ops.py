"""Per-op benchmarks: each GPT-2 layer, forward and backward, on every backend and size.

Group `op:<op>:<direction>:<size>` holds one op at one size on all backends, so the report
(and `pytest-benchmark compare`) puts the backends side by side. extra_info["min_bytes"]: the bytes
a memory-bound op must move at least (benchmarks/cases.py), from which the report derives its
bandwidth against the device's copy bandwidth (test_bench_matmul.py's copy benchmark). On a GPU,
beside the call time, each op at the 124M sizes also gets its device time (benchmarks/timing.py:
CUDA graph replays over rotating input sets, no host launch cost): the number the goals judge.
"""

from __future__ import annotations

import pytest

from benchmarks.cases import DIRECTIONS, OPS, backend_params, min_bytes, op_inputs, size_params
from benchmarks.checks import check_op_result
from benchmarks.timing import ROUNDS, input_sets, record_device_time, run_benchmark

DEVICE_TIMED_SIZES = ("124m-cpu", "124m-gpu")  # tiny ops are all launch cost: no device time there


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("size", size_params())
def test_op(benchmark, size, op, direction, backend):
    reason = backend.skip_reason(size, what=f"op:{op}")
    if reason:
        pytest.skip(reason)
    benchmark.group = f"op:{op}:{direction}:{size.name}"
    inputs = op_inputs(op, size)
    fn, to_numpy = backend.impl().make_op(backend, inputs, direction)
    extra = {"kind": "op", "op": op, "direction": direction, "size": size.name, "tokens": size.tokens,
             "min_bytes": min_bytes(op, direction, inputs)}  # fmt: skip
    out = run_benchmark(benchmark, backend, fn, ROUNDS[size.name], extra, read_result=to_numpy)
    err = check_op_result(backend, op, direction, size, out)
    benchmark.extra_info["scaled_error_vs_reference"] = err
    if backend.device == "cuda" and size.name in DEVICE_TIMED_SIZES and not benchmark.disabled:
        del fn  # its buffers: the device timing makes its own copies
        set_bytes = 2 * 4 * sum(a.size for a in inputs.arrays.values())  # float32 inputs and about as much output
        launches = backend.impl().op_launches(backend, inputs, direction, input_sets(set_bytes))
        # torch's backward is autograd.grad: not captured in a graph (the capture invalidates the stream)
        record_device_time(
            benchmark, backend, launches, graph=not (backend.family == "torch" and direction == "backward")
        )
