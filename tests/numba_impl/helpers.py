"""Shared pieces of the numba_impl tests: device round trips, the skip rule, the error metrics.

Tolerances (float32 kernels against float64 oracles; unit roundoff u = 2^-24 ~ 6e-8):
- KERNEL_REL = 1e-5: one kernel on the tiny test shapes sums at most ~100 terms per output,
  so its float32 error is below ~100 u ~ 6e-6 of the output scale; 1e-5 is that bound, not a
  fudge. Metric: max|d| / max|ref| over the output.
- The whole model uses the project's float32 ceilings against the float64 reference, read from
  conformance/tolerances.py (one table, one rule: docs/conformance.md): logits max|d| / max|ref|,
  loss |d| / |ref|, each gradient ||d||2 / ||ref||2 and max|d| / max|ref|.
"""

from __future__ import annotations

import numpy as np
import pytest

from conformance.tolerances import FP32
from numba_impl._compat import SIMULATOR, cuda

KERNEL_REL = 1e-5
LOGITS_MAX_REL = FP32["logits"]
LOSS_REL = FP32["loss"]
GRAD_L2_REL = FP32["grad_l2"]
GRAD_MAX_REL = FP32["grad_max"]

needs_cuda = pytest.mark.skipif(
    not (SIMULATOR or cuda.is_available()),
    reason="no CUDA GPU visible to Numba and NUMBA_ENABLE_CUDASIM is not 1 (set it to run the simulator)",
)


def dev(a, dtype=np.float32):
    """A flat device copy of `a`."""
    return cuda.to_device(np.ascontiguousarray(a, dtype=dtype).ravel())


def host(d, shape):
    return d.copy_to_host().reshape(shape).astype(np.float64)


def max_rel(a, ref) -> float:
    """max|a - ref| / max|ref|."""
    return float(np.abs(np.asarray(a, np.float64) - ref).max() / np.abs(ref).max())


def l2_rel(a, ref) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - ref) / np.linalg.norm(ref))


def rng(seed=0):
    return np.random.default_rng(seed)
