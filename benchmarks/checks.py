"""What a benchmark asserts about the result it timed (speed is never asserted).

At the tiny and 124m-cpu sizes every op's output is compared with the NumPy reference in
float64 on the same inputs; at 124m-gpu (where a float64 reference would cost more than the
whole GPU run) the output must be finite. The tolerance is on the error scaled by the
largest reference value, max|out - ref| / max|ref|, per dtype:

    float64   1e-10  the same math in the same precision; only summation order differs
    float32   1e-4   eps = 6e-8, and sums over up to 4C = 3072 terms in a different order
                     (blocked BLAS, tiled kernels) grow the error like sqrt(K) * eps ~ 3e-6;
                     exp / tanh of different libraries add a few ulp. 1e-4 leaves 30x margin
                     while a wrong formula (a missed scale, an off-by-one mask) is off by > 1e-2.
    bfloat16  5e-2   eps = 2^-8 = 3.9e-3 per rounding; inputs and output are rounded (with
                     float32 accumulation inside), a handful of roundings stays under 5e-2.
"""

from __future__ import annotations

import functools

import numpy as np

from benchmarks.backends import BY_NAME
from conformance.checks import max_rel  # max|out - ref| / max|ref|, in float64

TOLERANCE = {"float64": 1e-10, "float32": 1e-4, "bfloat16": 5e-2}
CHECKED_SIZES = ("tiny", "124m-cpu")


@functools.lru_cache(maxsize=16)
def reference_op(op: str, direction: str, size) -> np.ndarray:
    """The float64 NumPy reference's output of `op` at `size` (cached: several backends compare to it)."""
    from benchmarks.cases import op_inputs

    backend = BY_NAME["numpy-f64"]
    fn, to_numpy = backend.impl().make_op(backend, op_inputs(op, size), direction)
    return to_numpy(fn())


def check_op_result(backend, op: str, direction: str, size, out: np.ndarray) -> float | None:
    """Assert the op's output is finite and (at checked sizes) matches the reference; returns the error."""
    assert np.all(np.isfinite(out)), f"{backend.name} {op} {direction}: non-finite output"
    if size.name not in CHECKED_SIZES:
        return None
    err = max_rel(out, reference_op(op, direction, size))
    tol = TOLERANCE[backend.dtype]
    assert err <= tol, f"{backend.name} {op} {direction} at {size.name}: scaled error {err:.2e} > {tol:.0e}"
    return err


@functools.lru_cache(maxsize=4)
def reference_loss(size) -> float:
    """The float64 reference's loss on the benchmark's batch (tiny size only: cheap)."""
    import reference
    from benchmarks.cases import model_inputs
    from weights import synthetic

    idx, targets = model_inputs(size)
    params = synthetic(size.config, seed=0, dtype=np.float64)
    return float(reference.forward(params, size.config, idx, targets)[1])


def check_loss(backend, task: str, size, loss: float) -> None:
    """The loss of the first (pre-update) call: finite, and at the tiny size equal to the reference's."""
    assert np.isfinite(loss), f"{backend.name} {task}: loss is {loss}"
    if size.name == "tiny":
        ref = reference_loss(size)
        tol = TOLERANCE[backend.dtype]
        assert abs(loss - ref) <= tol * abs(ref), f"{backend.name} {task}: loss {loss} vs reference {ref}"
