"""SwiGLU, the gated MLP's nonlinearity (config.mlp "swiglu", docs/variants.md), over N rows:

    fc (N, 2H) row-major = [gate a (H) | up u (H)] per row (c_fc's fused output)   ->   out (N, H)
    out = silu(a) * u,   silu(a) = a * s,   s = sigmoid(a) = 1 / (1 + exp(-a))

Backward (dfc written, not accumulated):
    du = dout * silu(a)
    da = dout * u * s * (1 + a * (1 - s))
    dfc = [da | du] (N, 2H)

exp(-a) overflows to inf for a < -88 in float32; 1 / (1 + inf) = 0, sigmoid's limit, as the
reference's silenced overflow gives.

Memory-bound (12 bytes per output element forward, 20 backward). Two versions, as kernels/gelu.py:
naive, one output element per thread; and ILP, each thread handles ELEMS elements one block-width
apart (coalesced), issuing all its loads before the first use.
"""

from __future__ import annotations

import math

from numba_impl._compat import block_size, ceil_div, cuda, device, float32, kernel

ELEMS = 4  # output elements per thread of the ILP kernels


@device
def sigmoid(x):
    return float32(1.0) / (float32(1.0) + math.exp(-x))


@kernel
def swiglu_forward_kernel(out, fc, N, H):
    """One thread per output element i = row * H + j."""
    i = cuda.grid(1)
    if i < N * H:
        row = i // H
        j = i - row * H
        a = fc[row * 2 * H + j]
        u = fc[row * 2 * H + H + j]
        out[i] = a * sigmoid(a) * u


@kernel
def swiglu_backward_kernel(dfc, fc, dout, N, H):
    """One thread per output element: writes da and du of its (row, j)."""
    i = cuda.grid(1)
    if i < N * H:
        row = i // H
        j = i - row * H
        a = fc[row * 2 * H + j]
        u = fc[row * 2 * H + H + j]
        g = dout[i]
        s = sigmoid(a)
        dfc[row * 2 * H + j] = g * u * s * (float32(1.0) + a * (float32(1.0) - s))
        dfc[row * 2 * H + H + j] = g * a * s


@kernel
def swiglu_forward_ilp_kernel(out, fc, N, H):
    a = cuda.local.array(ELEMS, float32)
    u = cuda.local.array(ELEMS, float32)
    first = cuda.blockIdx.x * cuda.blockDim.x * ELEMS + cuda.threadIdx.x
    n = N * H
    for k in range(ELEMS):
        i = first + k * cuda.blockDim.x
        if i < n:
            row = i // H
            gate = row * H + i  # = row * 2H + j
            a[k] = fc[gate]
            u[k] = fc[gate + H]
        else:
            a[k] = float32(0.0)
            u[k] = float32(0.0)
    for k in range(ELEMS):
        i = first + k * cuda.blockDim.x
        if i < n:
            out[i] = a[k] * sigmoid(a[k]) * u[k]


@kernel
def swiglu_backward_ilp_kernel(dfc, fc, dout, N, H):
    a = cuda.local.array(ELEMS, float32)
    u = cuda.local.array(ELEMS, float32)
    g = cuda.local.array(ELEMS, float32)
    first = cuda.blockIdx.x * cuda.blockDim.x * ELEMS + cuda.threadIdx.x
    n = N * H
    for k in range(ELEMS):
        i = first + k * cuda.blockDim.x
        if i < n:
            gate = (i // H) * H + i
            a[k] = fc[gate]
            u[k] = fc[gate + H]
            g[k] = dout[i]
        else:
            a[k] = float32(0.0)
            u[k] = float32(0.0)
            g[k] = float32(0.0)
    for k in range(ELEMS):
        i = first + k * cuda.blockDim.x
        if i < n:
            gate = (i // H) * H + i
            s = sigmoid(a[k])
            dfc[gate] = g[k] * u[k] * s * (float32(1.0) + a[k] * (float32(1.0) - s))
            dfc[gate + H] = g[k] * a[k] * s


def swiglu_forward(out, fc, N, H, naive=False):
    """out (N, H) = silu(fc[:, :H]) * fc[:, H:], fc (N, 2H)."""
    threads = block_size(256, 32)
    if naive:
        swiglu_forward_kernel[ceil_div(N * H, threads), threads](out, fc, N, H)
    else:
        swiglu_forward_ilp_kernel[ceil_div(N * H, threads * ELEMS), threads](out, fc, N, H)


def swiglu_backward(dfc, fc, dout, N, H, naive=False):
    """dfc (N, 2H) = [da | du] from dout (N, H) and the forward's fc (N, 2H) (written, not accumulated)."""
    threads = block_size(256, 32)
    if naive:
        swiglu_backward_kernel[ceil_div(N * H, threads), threads](dfc, fc, dout, N, H)
    else:
        swiglu_backward_ilp_kernel[ceil_div(N * H, threads * ELEMS), threads](dfc, fc, dout, N, H)
