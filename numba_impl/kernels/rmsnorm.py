"""RMSNorm over the last axis (config.norm "rmsnorm"): out = x * rstd * weight, rstd = 1/sqrt(mean(x^2) + eps).
LayerNorm without the mean and without a bias (docs/variants.md).

Shapes (flat, row-major; N = B*T rows):
    inp, out, dout, dinp   (N, C)
    weight, dweight        (C,)
    rstd                   (N,)   saved by the forward for the backward

Backward, with xhat = x * rstd and g = dout * weight:
    dweight += sum over rows of dout * xhat
    dinp    += rstd * (g - xhat * mean_c(g * xhat))

Two versions of each, the design of kernels/layernorm.py's:
- naive: one thread per row, loops over C; dweight one thread per channel over all N rows (no atomics);
- warp: one 32-lane warp per row, the row in registers (numba_impl/rows.py: VPL values per lane, 16-byte
  runs of 4 channels when C % 4 == 0 and the arrays are 16-byte aligned), the row sum a warp shuffle.
  The backward sums dweight per lane in registers over the rows its warp handles; the block's warps
  combine theirs in shared memory and the block writes one partial per channel to a scratch buffer
  (blocks, C); a second kernel adds the blocks' partials in block order. No atomics: the same bits on
  every run (and in every CUDA-graph replay).

Bytes (memory-bound; float32): forward reads x and writes out (8 N C); backward reads dout, x and dinp
and writes dinp (16 N C).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from numba_impl import scratch
from numba_impl._compat import WARP, block_size, ceil_div, cuda, float32, kernel, warp_sum
from numba_impl.rows import row_vectorized, warp_row


# ----------------------------------------------------------------------------- naive
@kernel
def rmsnorm_forward_naive_kernel(out, rstd, inp, weight, N, C, eps):
    row = cuda.grid(1)
    if row < N:
        base = row * C
        s = float32(0.0)
        for c in range(C):
            x = inp[base + c]
            s += x * x
        r = float32(1.0) / math.sqrt(s / float32(C) + eps)
        for c in range(C):
            out[base + c] = inp[base + c] * r * weight[c]
        rstd[row] = r


@kernel
def rmsnorm_backward_naive_kernel(dinp, dout, inp, weight, rstd, N, C):
    """dinp += ... for one row per thread."""
    row = cuda.grid(1)
    if row < N:
        base = row * C
        r = rstd[row]
        gn_mean = float32(0.0)
        for c in range(C):
            gn_mean += dout[base + c] * weight[c] * inp[base + c] * r
        gn_mean = gn_mean / float32(C)
        for c in range(C):
            xhat = inp[base + c] * r
            dinp[base + c] += r * (dout[base + c] * weight[c] - xhat * gn_mean)


@kernel
def rmsnorm_dweight_naive_kernel(dweight, dout, inp, rstd, N, C):
    """One thread per channel: dweight[c] += sum over the N rows of dout * xhat, in row order."""
    c = cuda.grid(1)
    if c < C:
        dw = float32(0.0)
        for row in range(N):
            dw += dout[row * C + c] * inp[row * C + c] * rstd[row]
        dweight[c] += dw


def rmsnorm_forward_naive(out, rstd, inp, weight, N, C, eps):
    threads = block_size(128, 32)
    rmsnorm_forward_naive_kernel[ceil_div(N, threads), threads](out, rstd, inp, weight, N, C, np.float32(eps))


def rmsnorm_backward_naive(dinp, dweight, dout, inp, weight, rstd, N, C):
    """Accumulates into dinp and dweight (deterministic: each channel summed by one thread in row order)."""
    threads = block_size(128, 32)
    rmsnorm_backward_naive_kernel[ceil_div(N, threads), threads](dinp, dout, inp, weight, rstd, N, C)
    rmsnorm_dweight_naive_kernel[ceil_div(C, threads), threads](dweight, dout, inp, rstd, N, C)


# ----------------------------------------------------------------------------- one warp per row
# The launch shapes of kernels/layernorm.py's warp kernels (same reasons).
RMS_WARPS_FORWARD = 4  # rows per block of the forward (one per warp)
RMS_WARPS_BACKWARD = 4  # warps per block of the backward
RMS_BACKWARD_BLOCKS_PER_SM = 2  # blocks of the backward: about one resident set
RMS_REDUCE_WARPS = 16  # warps per block of the dweight reduction
SMS = 132  # H100 SXM and H200 multiprocessors (sizes the backward's grid; any GPU computes the same)


@functools.cache
def rmsnorm_warp_kernels(C: int, vec: bool = False):
    """(forward, backward, dweight_reduce) for rows of C channels, each row held in registers by one warp."""
    row_io = warp_row(C, vec)
    VPL, CP = row_io.VPL, row_io.CP
    channel, load_row, store_row = row_io.channel, row_io.load_row, row_io.store_row
    WB = block_size(RMS_WARPS_BACKWARD, 1)
    RW = block_size(RMS_REDUCE_WARPS, 1)

    @kernel(lineinfo=True)
    def rmsnorm_forward_warp_kernel(out, rstd, inp, weight, N, C, eps):
        """Block = 32 * (rows per block) threads; warp w of block b handles row b*rows_per_block + w.
        Every lane takes part in the shuffle, so the row bound is checked only at the memory accesses."""
        x = cuda.local.array(VPL, float32)
        w = cuda.local.array(VPL, float32)
        lane = cuda.threadIdx.x % WARP
        row = cuda.blockIdx.x * (cuda.blockDim.x // WARP) + cuda.threadIdx.x // WARP
        valid = row < N
        base = row * C
        load_row(x, inp, base, lane, valid)
        load_row(w, weight, 0, lane, True)
        s = float32(0.0)
        for k in range(VPL):
            s += x[k] * x[k]  # channels past C hold 0
        r = float32(1.0) / math.sqrt(warp_sum(s) / float32(C) + eps)
        if valid:
            for k in range(VPL):
                x[k] = x[k] * r * w[k]
            store_row(out, base, lane, x)
            if lane == 0:
                rstd[row] = r

    @kernel(lineinfo=True)
    def rmsnorm_backward_warp_kernel(dinp, partials, dout, inp, weight, rstd, N, C):
        """Blocks of WB warps; warp w of the grid takes rows w, w + (all warps), ... Each lane sums its
        channels' dweight terms over those rows in registers; the block's warps combine theirs in shared
        memory, and the block writes partials[block] = dweight sums (C)."""
        red = cuda.shared.array((WB, CP), float32)
        xn = cuda.local.array(VPL, float32)  # xhat of the row
        g = cuda.local.array(VPL, float32)  # dout of the row
        d = cuda.local.array(VPL, float32)  # dinp of the row (accumulated into)
        w = cuda.local.array(VPL, float32)
        dw = cuda.local.array(VPL, float32)  # this lane's running sums over its warp's rows
        lane = cuda.threadIdx.x % WARP
        warp = cuda.threadIdx.x // WARP
        load_row(w, weight, 0, lane, True)
        for k in range(VPL):
            dw[k] = float32(0.0)
        n_warps = cuda.gridDim.x * WB
        for row in range(cuda.blockIdx.x * WB + warp, N, n_warps):  # the same trip count for the warp's lanes
            base = row * C
            r = rstd[row]
            load_row(xn, inp, base, lane, True)
            load_row(g, dout, base, lane, True)
            load_row(d, dinp, base, lane, True)
            gn_sum = float32(0.0)
            for k in range(VPL):
                xn[k] = xn[k] * r
                gn_sum += g[k] * w[k] * xn[k]
                dw[k] += g[k] * xn[k]
            gn_mean = warp_sum(gn_sum) / float32(C)
            for k in range(VPL):
                d[k] += r * (g[k] * w[k] - xn[k] * gn_mean)
            store_row(dinp, base, lane, d)
        for k in range(VPL):
            red[warp, channel(lane, k)] = dw[k]
        cuda.syncthreads()
        for c in range(cuda.threadIdx.x, C, cuda.blockDim.x):
            total = float32(0.0)
            for wi in range(WB):
                total += red[wi, c]
            partials[cuda.blockIdx.x * C + c] = total

    @kernel
    def rmsnorm_dweight_reduce_kernel(dweight, partials, blocks, C):
        """dweight[c] += sum over blocks of partials[block, c]. A block takes 32 channels (one per lane);
        its RW warps each sum every RW-th block's partials, then warp 0 adds the RW sums in warp order:
        the same order on every run."""
        red = cuda.shared.array((RW, WARP), float32)
        lane = cuda.threadIdx.x % WARP
        warp = cuda.threadIdx.x // WARP
        c = cuda.blockIdx.x * WARP + lane
        total = float32(0.0)
        if c < C:
            for blk in range(warp, blocks, RW):
                total += partials[blk * C + c]
        red[warp, lane] = total
        cuda.syncthreads()
        if warp == 0 and c < C:
            total = float32(0.0)
            for wi in range(RW):
                total += red[wi, lane]
            dweight[c] += total

    return rmsnorm_forward_warp_kernel, rmsnorm_backward_warp_kernel, rmsnorm_dweight_reduce_kernel


def rmsnorm_forward(out, rstd, inp, weight, N, C, eps):
    """out (N, C) and rstd (N,) from inp (N, C), weight (C,)."""
    forward, _, _ = rmsnorm_warp_kernels(C, row_vectorized(C, out, inp, weight))
    threads = WARP * block_size(RMS_WARPS_FORWARD, 1)
    forward[ceil_div(N, threads // WARP), threads](out, rstd, inp, weight, N, C, np.float32(eps))


def rmsnorm_backward_blocks(N: int) -> int:
    """Blocks of the backward for N rows: about one resident set, fewer for small N. The dweight sums'
    order depends on this number only, so a shape always sums alike."""
    warps = block_size(RMS_WARPS_BACKWARD, 1)
    return max(1, min(ceil_div(N, warps), block_size(RMS_BACKWARD_BLOCKS_PER_SM * SMS, 2)))


def rmsnorm_backward(dinp, dweight, dout, inp, weight, rstd, N, C):
    """Accumulates into dinp (N, C) and dweight (C,): the warp kernel (dinp, and per-block dweight sums in
    a scratch buffer), then the reduction of those sums in block order."""
    _, backward, reduce = rmsnorm_warp_kernels(C, row_vectorized(C, dinp, dout, inp, weight))
    blocks = rmsnorm_backward_blocks(N)
    partials = scratch.buffer("rmsnorm backward", blocks * C)
    backward[blocks, WARP * block_size(RMS_WARPS_BACKWARD, 1)](dinp, partials, dout, inp, weight, rstd, N, C)
    reduce[ceil_div(C, WARP), WARP * block_size(RMS_REDUCE_WARPS, 1)](dweight, partials, blocks, C)
