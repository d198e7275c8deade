"""GELU, tanh form (GPT-2's "gelu_new"), elementwise over N values:

    gelu(x)  = 0.5 x (1 + tanh(u)),   u = sqrt(2/pi) (x + 0.044715 x^3)
    gelu'(x) = 0.5 (1 + tanh(u)) + 0.5 x (1 - tanh(u)^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)

One thread per element; the op is memory-bound, so there is no second, "optimised" version.
"""

from __future__ import annotations

import math

import numpy as np

from numba_impl._compat import block_size, ceil_div, cuda, float32, kernel

SQRT_2_OVER_PI = float32(np.sqrt(2.0 / np.pi))
GELU_COEF = float32(0.044715)


@kernel
def gelu_forward_kernel(out, inp, N):
    i = cuda.grid(1)
    if i < N:
        x = inp[i]
        u = SQRT_2_OVER_PI * (x + GELU_COEF * x * x * x)
        out[i] = float32(0.5) * x * (float32(1.0) + math.tanh(u))


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


def gelu_forward(out, inp, N):
    threads = block_size(256, 32)
    gelu_forward_kernel[ceil_div(N, threads), threads](out, inp, N)


def gelu_backward(dinp, inp, dout, N):
    threads = block_size(256, 32)
    gelu_backward_kernel[ceil_div(N, threads), threads](dinp, inp, dout, N)
