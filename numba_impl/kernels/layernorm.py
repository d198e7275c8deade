"""LayerNorm over the last axis: out = (x - mean) * rstd * weight + bias, rstd = 1/sqrt(var + eps),
biased variance (divide by C).

Shapes (flat, row-major; N = B*T rows):
    inp, out, dout, dinp   (N, C)
    weight, bias, dweight, dbias   (C,)
    mean, rstd   (N,)   saved by the forward for the backward

Backward, with norm = (x - mean) * rstd and g = dout * weight:
    dbias   += sum over rows of dout
    dweight += sum over rows of dout * norm
    dinp    += rstd * (g - mean_c(g) - norm * mean_c(g * norm))

Two versions of each:
- naive: one thread per row, loops over C (and one thread per channel for dweight/dbias);
- warp: one 32-lane warp per row, lanes stride over C and reduce with warp shuffles; the
  parameter gradients are summed over chunks of rows per thread and added with atomics.
Both compute the mean and variance in two passes (no E[x^2] - E[x]^2 cancellation).
"""

from __future__ import annotations

import math

import numpy as np

from numba_impl._compat import WARP, block_size, ceil_div, cuda, float32, kernel, warp_sum


# ----------------------------------------------------------------------------- naive
@kernel
def layernorm_forward_naive_kernel(out, mean, rstd, inp, weight, bias, N, C, eps):
    row = cuda.grid(1)
    if row < N:
        base = row * C
        s = float32(0.0)
        for c in range(C):
            s += inp[base + c]
        m = s / float32(C)
        v = float32(0.0)
        for c in range(C):
            d = inp[base + c] - m
            v += d * d
        r = float32(1.0) / math.sqrt(v / float32(C) + eps)
        for c in range(C):
            out[base + c] = (inp[base + c] - m) * r * weight[c] + bias[c]
        mean[row] = m
        rstd[row] = r


@kernel
def layernorm_backward_naive_kernel(dinp, dout, inp, weight, mean, rstd, N, C):
    """dinp += ... for one row per thread."""
    row = cuda.grid(1)
    if row < N:
        base = row * C
        m = mean[row]
        r = rstd[row]
        g_mean = float32(0.0)
        gn_mean = float32(0.0)
        for c in range(C):
            norm = (inp[base + c] - m) * r
            g = dout[base + c] * weight[c]
            g_mean += g
            gn_mean += g * norm
        g_mean = g_mean / float32(C)
        gn_mean = gn_mean / float32(C)
        for c in range(C):
            norm = (inp[base + c] - m) * r
            g = dout[base + c] * weight[c]
            dinp[base + c] += r * (g - g_mean - norm * gn_mean)


@kernel
def layernorm_param_grads_kernel(dweight, dbias, dout, inp, mean, rstd, N, C, rows_per_thread):
    """One thread per (channel, chunk of rows): sums dout and dout*norm over its rows, then adds
    them to dweight/dbias (atomically: several chunks share a channel)."""
    i = cuda.grid(1)
    n_chunks = (N + rows_per_thread - 1) // rows_per_thread
    if i < n_chunks * C:
        c = i % C
        chunk = i // C
        row_end = min(N, (chunk + 1) * rows_per_thread)
        db = float32(0.0)
        dw = float32(0.0)
        for row in range(chunk * rows_per_thread, row_end):
            d = dout[row * C + c]
            db += d
            dw += d * (inp[row * C + c] - mean[row]) * rstd[row]
        cuda.atomic.add(dbias, c, db)
        cuda.atomic.add(dweight, c, dw)


def layernorm_forward_naive(out, mean, rstd, inp, weight, bias, N, C, eps):
    threads = block_size(128, 32)
    layernorm_forward_naive_kernel[ceil_div(N, threads), threads](
        out, mean, rstd, inp, weight, bias, N, C, np.float32(eps)
    )


def layernorm_backward_naive(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C):
    """Accumulates into dinp, dweight, dbias. The parameter sums use one chunk of all N rows per
    channel, so each channel is summed by one thread in row order (deterministic)."""
    threads = block_size(128, 32)
    layernorm_backward_naive_kernel[ceil_div(N, threads), threads](dinp, dout, inp, weight, mean, rstd, N, C)
    layernorm_param_grads_kernel[ceil_div(C, threads), threads](dweight, dbias, dout, inp, mean, rstd, N, C, N)


# ----------------------------------------------------------------------------- one warp per row
@kernel
def layernorm_forward_warp_kernel(out, mean, rstd, inp, weight, bias, N, C, eps):
    """Block = (32 * rows per block) threads; warp w of block b handles row b*rows_per_block + w.
    Every lane of a warp takes part in the shuffles, so the row bound is checked only at the stores."""
    lane = cuda.threadIdx.x % WARP
    row = cuda.blockIdx.x * (cuda.blockDim.x // WARP) + cuda.threadIdx.x // WARP
    valid = row < N
    base = row * C
    s = float32(0.0)
    if valid:
        for c in range(lane, C, WARP):
            s += inp[base + c]
    m = warp_sum(s) / float32(C)
    v = float32(0.0)
    if valid:
        for c in range(lane, C, WARP):
            d = inp[base + c] - m
            v += d * d
    r = float32(1.0) / math.sqrt(warp_sum(v) / float32(C) + eps)
    if valid:
        for c in range(lane, C, WARP):
            out[base + c] = (inp[base + c] - m) * r * weight[c] + bias[c]
        if lane == 0:
            mean[row] = m
            rstd[row] = r


@kernel
def layernorm_backward_warp_kernel(dinp, dout, inp, weight, mean, rstd, N, C):
    lane = cuda.threadIdx.x % WARP
    row = cuda.blockIdx.x * (cuda.blockDim.x // WARP) + cuda.threadIdx.x // WARP
    valid = row < N
    base = row * C
    m = float32(0.0)
    r = float32(0.0)
    g_sum = float32(0.0)
    gn_sum = float32(0.0)
    if valid:
        m = mean[row]
        r = rstd[row]
        for c in range(lane, C, WARP):
            g = dout[base + c] * weight[c]
            g_sum += g
            gn_sum += g * (inp[base + c] - m) * r
    g_mean = warp_sum(g_sum) / float32(C)
    gn_mean = warp_sum(gn_sum) / float32(C)
    if valid:
        for c in range(lane, C, WARP):
            norm = (inp[base + c] - m) * r
            g = dout[base + c] * weight[c]
            dinp[base + c] += r * (g - g_mean - norm * gn_mean)


ROWS_PER_PARAM_CHUNK = 64  # rows each thread sums before one atomic add (124M, N=4096: 64 adds per channel)


def layernorm_forward(out, mean, rstd, inp, weight, bias, N, C, eps):
    threads = block_size(128, 32)
    rows_per_block = threads // WARP
    layernorm_forward_warp_kernel[ceil_div(N, rows_per_block), threads](
        out, mean, rstd, inp, weight, bias, N, C, np.float32(eps)
    )


def layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C):
    """Accumulates into dinp, dweight, dbias."""
    threads = block_size(128, 32)
    rows_per_block = threads // WARP
    layernorm_backward_warp_kernel[ceil_div(N, rows_per_block), threads](dinp, dout, inp, weight, mean, rstd, N, C)
    chunk = block_size(ROWS_PER_PARAM_CHUNK, 4)
    n_threads = ceil_div(N, chunk) * C
    layernorm_param_grads_kernel[ceil_div(n_threads, threads), threads](
        dweight, dbias, dout, inp, mean, rstd, N, C, chunk
    )
