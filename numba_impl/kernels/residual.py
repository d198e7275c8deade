"""Residual add, elementwise over N values: out = a + b.

Backward: the gradient flows unchanged into both branches, da += dout and db += dout.
(The model saves this launch where it can: a branch's gradient buffer *is* dout, so the
accumulation happens in the kernels that add into it; see numba_impl/model.py.)
One thread per element; memory-bound, no second version.
"""

from __future__ import annotations

from numba_impl._compat import block_size, ceil_div, cuda, kernel


@kernel
def residual_forward_kernel(out, a, b, N):
    i = cuda.grid(1)
    if i < N:
        out[i] = a[i] + b[i]


@kernel
def residual_backward_kernel(da, db, dout, N):
    i = cuda.grid(1)
    if i < N:
        g = dout[i]
        da[i] += g
        db[i] += g


def residual_forward(out, a, b, N):
    threads = block_size(256, 32)
    residual_forward_kernel[ceil_div(N, threads), threads](out, a, b, N)


def residual_backward(da, db, dout, N):
    threads = block_size(256, 32)
    residual_backward_kernel[ceil_div(N, threads), threads](da, db, dout, N)
