"""Residual add, elementwise over N values: out = a + b.

Backward: the gradient flows unchanged into both branches, da += dout and db += dout.
(The model saves this launch where it can: a branch's gradient buffer *is* dout, so the
accumulation happens in the kernels that add into it; see numba_impl/model.py.)
Memory-bound (12 bytes per element forward). Two versions of the forward: naive, one thread per
element; ILP, ELEMS elements per thread one block-width apart, all loads issued before the adds.
"""

from __future__ import annotations

from numba_impl._compat import block_size, ceil_div, cuda, float32, kernel


@kernel
def residual_forward_kernel(out, a, b, N):
    i = cuda.grid(1)
    if i < N:
        out[i] = a[i] + b[i]


ELEMS = 4  # elements per thread of the ILP kernel


@kernel
def residual_forward_ilp_kernel(out, a, b, N):
    x = cuda.local.array(ELEMS, float32)
    y = cuda.local.array(ELEMS, float32)
    first = cuda.blockIdx.x * cuda.blockDim.x * ELEMS + cuda.threadIdx.x
    for k in range(ELEMS):
        i = first + k * cuda.blockDim.x
        x[k] = a[i] if i < N else float32(0.0)
        y[k] = b[i] if i < N else float32(0.0)
    for k in range(ELEMS):
        i = first + k * cuda.blockDim.x
        if i < N:
            out[i] = x[k] + y[k]


@kernel
def residual_backward_kernel(da, db, dout, N):
    i = cuda.grid(1)
    if i < N:
        g = dout[i]
        da[i] += g
        db[i] += g


def residual_forward(out, a, b, N, naive=False):
    threads = block_size(256, 32)
    if naive:
        residual_forward_kernel[ceil_div(N, threads), threads](out, a, b, N)
    else:
        residual_forward_ilp_kernel[ceil_div(N, threads * ELEMS), threads](out, a, b, N)


def residual_backward(da, db, dout, N):
    threads = block_size(256, 32)
    residual_backward_kernel[ceil_div(N, threads), threads](da, db, dout, N)
