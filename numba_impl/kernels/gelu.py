"""GELU, tanh form (GPT-2's "gelu_new"), elementwise over N values:

    gelu(x)  = 0.5 x (1 + tanh(u)),   u = sqrt(2/pi) (x + 0.044715 x^3)
    gelu'(x) = 0.5 (1 + tanh(u)) + 0.5 x (1 - tanh(u)^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)

Memory-bound (8 bytes per element forward, 12 backward). Two versions: naive, one thread per
element; and ILP, each thread handles ELEMS elements one block-width apart (coalesced), issuing
all its loads before the first use, so more bytes are in flight per thread.
"""

from __future__ import annotations

import math

import numpy as np

from numba_impl._compat import block_size, ceil_div, cuda, device, float32, kernel

SQRT_2_OVER_PI = float32(np.sqrt(2.0 / np.pi))
GELU_COEF = float32(0.044715)


ELEMS = 4  # elements per thread of the ILP kernels


@device
def gelu(x):
    u = SQRT_2_OVER_PI * (x + GELU_COEF * x * x * x)
    return float32(0.5) * x * (float32(1.0) + math.tanh(u))


@device
def gelu_grad(x):
    """d gelu / dx."""
    u = SQRT_2_OVER_PI * (x + GELU_COEF * x * x * x)
    th = math.tanh(u)
    du = SQRT_2_OVER_PI * (float32(1.0) + float32(3.0) * GELU_COEF * x * x)
    return float32(0.5) * (float32(1.0) + th) + float32(0.5) * x * (float32(1.0) - th * th) * du


@kernel
def gelu_forward_kernel(out, inp, N):
    i = cuda.grid(1)
    if i < N:
        x = inp[i]
        u = SQRT_2_OVER_PI * (x + GELU_COEF * x * x * x)
        out[i] = float32(0.5) * x * (float32(1.0) + math.tanh(u))


@kernel
def gelu_forward_ilp_kernel(out, inp, N):
    x = cuda.local.array(ELEMS, float32)
    first = cuda.blockIdx.x * cuda.blockDim.x * ELEMS + cuda.threadIdx.x
    for k in range(ELEMS):
        i = first + k * cuda.blockDim.x
        x[k] = inp[i] if i < N else float32(0.0)
    for k in range(ELEMS):
        i = first + k * cuda.blockDim.x
        if i < N:
            out[i] = gelu(x[k])


@kernel
def gelu_backward_ilp_kernel(dinp, inp, dout, N):
    x = cuda.local.array(ELEMS, float32)
    g = cuda.local.array(ELEMS, float32)
    first = cuda.blockIdx.x * cuda.blockDim.x * ELEMS + cuda.threadIdx.x
    for k in range(ELEMS):
        i = first + k * cuda.blockDim.x
        x[k] = inp[i] if i < N else float32(0.0)
        g[k] = dout[i] if i < N else float32(0.0)
    for k in range(ELEMS):
        i = first + k * cuda.blockDim.x
        if i < N:
            dinp[i] = gelu_grad(x[k]) * g[k]


@kernel
def gelu_backward_kernel(dinp, inp, dout, N):
    """dinp = gelu'(inp) * dout (written, not accumulated)."""
    i = cuda.grid(1)
    if i < N:
        x = inp[i]
        u = SQRT_2_OVER_PI * (x + GELU_COEF * x * x * x)
        th = math.tanh(u)
        du = SQRT_2_OVER_PI * (float32(1.0) + float32(3.0) * GELU_COEF * x * x)
        local = float32(0.5) * (float32(1.0) + th) + float32(0.5) * x * (float32(1.0) - th * th) * du
        dinp[i] = local * dout[i]


def gelu_forward(out, inp, N, naive=False):
    threads = block_size(256, 32)
    if naive:
        gelu_forward_kernel[ceil_div(N, threads), threads](out, inp, N)
    else:
        gelu_forward_ilp_kernel[ceil_div(N, threads * ELEMS), threads](out, inp, N)


def gelu_backward(dinp, inp, dout, N, naive=False):
    threads = block_size(256, 32)
    if naive:
        gelu_backward_kernel[ceil_div(N, threads), threads](dinp, inp, dout, N)
    else:
        gelu_backward_ilp_kernel[ceil_div(N, threads * ELEMS), threads](dinp, inp, dout, N)
