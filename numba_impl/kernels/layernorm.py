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
- warp: one 32-lane warp per row, and the row lives in registers: lane l holds the channels
  l, l+32, l+64, ... (VPL = ceil(C/32) values, a compile-time constant: the kernels are built
  per C), so each element is read from memory once and the reductions are warp shuffles. The
  backward is one kernel: each warp also sums dout and dout*norm of its rows into its own slice
  of shared memory, and at the end each block adds its per-channel totals to dweight/dbias
  (2C atomic adds per block, not per row).
Both compute the mean and variance in two passes over the values (no E[x^2] - E[x]^2 cancellation).

Bytes (memory-bound; float32): forward reads x and writes out (8 N C); backward reads dout, x and
dinp and writes dinp (16 N C).
"""

from __future__ import annotations

import functools
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
LN_WARPS_FORWARD = 4  # rows per block in the forward
LN_PARAM_SHARED_BYTES = 32 * 1024  # the backward's per-warp dweight/dbias slices stay within this
LN_BACKWARD_BLOCKS = 264  # blocks of the backward (2 per SM of an H100/H200); each walks rows


def _ln_backward_warps(C: int) -> int:
    """Warps per block of the backward: as many as fit two (warps, C) float32 slices in shared memory,
    <= 8 (one in the simulator, whose barriers need the same trip count in every warp of a block)."""
    return block_size(max(1, min(8, LN_PARAM_SHARED_BYTES // (8 * ceil_div(C, WARP) * WARP))), 1)


@functools.cache
def layernorm_warp_kernels(C: int):
    """(forward, backward) for rows of C channels, each row held in registers by one warp."""
    VPL = ceil_div(C, WARP)  # values per lane
    WB = _ln_backward_warps(C)
    CP = VPL * WARP  # C rounded up to whole warps: the shared slices' row length

    @kernel(lineinfo=True)
    def layernorm_forward_warp_kernel(out, mean, rstd, inp, weight, bias, N, C, eps):
        """Block = 32 * (rows per block) threads; warp w of block b handles row b*rows_per_block + w.
        Every lane of a warp takes part in the shuffles, so the row bound is checked only at the memory accesses."""
        x = cuda.local.array(VPL, float32)
        lane = cuda.threadIdx.x % WARP
        row = cuda.blockIdx.x * (cuda.blockDim.x // WARP) + cuda.threadIdx.x // WARP
        valid = row < N
        base = row * C
        s = float32(0.0)
        for k in range(VPL):
            c = lane + k * WARP
            x[k] = inp[base + c] if valid and c < C else float32(0.0)
            s += x[k]
        m = warp_sum(s) / float32(C)
        v = float32(0.0)
        for k in range(VPL):
            d = x[k] - m if lane + k * WARP < C else float32(0.0)
            v += d * d
        r = float32(1.0) / math.sqrt(warp_sum(v) / float32(C) + eps)
        if valid:
            for k in range(VPL):
                c = lane + k * WARP
                if c < C:
                    out[base + c] = (x[k] - m) * r * weight[c] + bias[c]
            if lane == 0:
                mean[row] = m
                rstd[row] = r

    @kernel(lineinfo=True)
    def layernorm_backward_warp_kernel(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C):
        """Blocks of WB warps; warp w of the grid takes rows w, w + (all warps), ... Shared slices
        dw_s[w], db_s[w] hold warp w's running sums per channel (only that warp touches them until
        the end, so no barrier inside the row loop)."""
        dw_s = cuda.shared.array((WB, CP), float32)
        db_s = cuda.shared.array((WB, CP), float32)
        x = cuda.local.array(VPL, float32)  # norm of the row
        g = cuda.local.array(VPL, float32)  # dout of the row
        lane = cuda.threadIdx.x % WARP
        warp = cuda.threadIdx.x // WARP
        for k in range(VPL):
            dw_s[warp, lane + k * WARP] = float32(0.0)
            db_s[warp, lane + k * WARP] = float32(0.0)
        n_warps = cuda.gridDim.x * WB
        for row in range(cuda.blockIdx.x * WB + warp, N, n_warps):  # the same trip count for the warp's lanes
            base = row * C
            m = mean[row]
            r = rstd[row]
            g_sum = float32(0.0)
            gn_sum = float32(0.0)
            for k in range(VPL):
                c = lane + k * WARP
                if c < C:
                    x[k] = (inp[base + c] - m) * r
                    g[k] = dout[base + c]
                    wg = g[k] * weight[c]
                    g_sum += wg
                    gn_sum += wg * x[k]
            g_mean = warp_sum(g_sum) / float32(C)
            gn_mean = warp_sum(gn_sum) / float32(C)
            for k in range(VPL):
                c = lane + k * WARP
                if c < C:
                    dinp[base + c] += r * (g[k] * weight[c] - g_mean - x[k] * gn_mean)
                    db_s[warp, c] += g[k]
                    dw_s[warp, c] += g[k] * x[k]
        cuda.syncthreads()
        for c in range(cuda.threadIdx.x, C, cuda.blockDim.x):  # the block's totals, one atomic per channel
            dw = float32(0.0)
            db = float32(0.0)
            for w in range(WB):
                dw += dw_s[w, c]
                db += db_s[w, c]
            cuda.atomic.add(dweight, c, dw)
            cuda.atomic.add(dbias, c, db)

    return layernorm_forward_warp_kernel, layernorm_backward_warp_kernel


def layernorm_forward(out, mean, rstd, inp, weight, bias, N, C, eps):
    forward, _ = layernorm_warp_kernels(C)
    threads = WARP * block_size(LN_WARPS_FORWARD, 1)
    forward[ceil_div(N, threads // WARP), threads](out, mean, rstd, inp, weight, bias, N, C, np.float32(eps))


def layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C):
    """Accumulates into dinp, dweight, dbias (dweight/dbias through one atomic add per channel per block)."""
    _, backward = layernorm_warp_kernels(C)
    warps = _ln_backward_warps(C)
    blocks = min(ceil_div(N, warps), block_size(LN_BACKWARD_BLOCKS, 2))
    backward[blocks, WARP * warps](dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C)
