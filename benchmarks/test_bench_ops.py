"""Per-op benchmarks: each GPT-2 layer, forward and backward, on every backend and size.

Group `op:<op>:<direction>:<size>` holds one op at one size on all backends, so the report
(and `pytest-benchmark compare`) puts the backends side by side. extra_info["min_bytes"]: the bytes
a memory-bound op must move at least (benchmarks/cases.py), from which the report derives its
bandwidth against the device's copy bandwidth (test_bench_device.py).
"""

from __future__ import annotations

import pytest

from benchmarks.cases import DIRECTIONS, OPS, backend_params, min_bytes, op_inputs, size_params
from benchmarks.checks import check_op_result
from benchmarks.timing import ROUNDS, run_benchmark


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
