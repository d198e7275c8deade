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
- warp: one 32-lane warp per row, and the row lives in registers (VPL = ceil(C/32) values per
  lane, a compile-time constant: the kernels are built per C), so each element is read from memory
  once and the row sums are warp shuffles. When C is a multiple of 4 and the arrays are 16-byte
  aligned, lane l holds the runs of 4 channels 4l + 128j .. 4l + 128j + 3 and moves each run with
  one 16-byte load or store (numba_impl/vector.py); otherwise it holds channels l, l + 32, ...
  The backward also needs dweight and dbias, sums over all N rows. Each lane adds its channels'
  terms of every row its warp handles into registers; at the end the warps of a block combine
  theirs through shared memory and the block writes one partial sum per channel to a scratch
  buffer (blocks, 2C); a second kernel adds the blocks' partials in block order. No atomics: the
  result is the same bits on every run (and in every CUDA-graph replay).
Both compute the mean and variance in two passes over the values (no E[x^2] - E[x]^2 cancellation).

Without bias (config.bias False, docs/variants.md): the launchers take bias=None / dbias=None; the
warp kernels are then built without the bias (a compile-time flag: no bias load, no dbias sums, C
partials per block instead of 2C), the naive ones skip it at run time. GPT-2's kernels are unchanged.

Bytes (memory-bound; float32): forward reads x and writes out (8 N C); backward reads dout, x and
dinp and writes dinp (16 N C; the partial sums add 8 C per block, ~1.6 MB at N = 4096, C = 768).
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
def layernorm_forward_naive_kernel(out, mean, rstd, inp, weight, bias, N, C, eps, has_bias):
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
            if has_bias:
                out[base + c] = (inp[base + c] - m) * r * weight[c] + bias[c]
            else:
                out[base + c] = (inp[base + c] - m) * r * weight[c]
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
def layernorm_param_grads_kernel(dweight, dbias, dout, inp, mean, rstd, N, C, rows_per_thread, has_bias):
    """One thread per (channel, chunk of rows): sums dout and dout*norm over its rows, then adds
    them to dweight/dbias (atomically: several chunks share a channel). has_bias False: dweight only."""
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
        if has_bias:
            cuda.atomic.add(dbias, c, db)
        cuda.atomic.add(dweight, c, dw)


def layernorm_forward_naive(out, mean, rstd, inp, weight, bias, N, C, eps):
    """As `layernorm_forward`; bias None: no bias."""
    threads = block_size(128, 32)
    has_bias = bias is not None
    layernorm_forward_naive_kernel[ceil_div(N, threads), threads](
        out, mean, rstd, inp, weight, bias if has_bias else scratch.dummy(), N, C, np.float32(eps), has_bias
    )


def layernorm_backward_naive(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C):
    """Accumulates into dinp, dweight, dbias (dbias None: no bias). The parameter sums use one chunk of
    all N rows per channel, so each channel is summed by one thread in row order (deterministic)."""
    threads = block_size(128, 32)
    has_bias = dbias is not None
    dbias = dbias if has_bias else scratch.dummy()
    layernorm_backward_naive_kernel[ceil_div(N, threads), threads](dinp, dout, inp, weight, mean, rstd, N, C)
    layernorm_param_grads_kernel[ceil_div(C, threads), threads](dweight, dbias, dout, inp, mean, rstd, N, C, N,
                                                                has_bias)  # fmt: skip


# ----------------------------------------------------------------------------- one warp per row
LN_WARPS_FORWARD = 4  # rows per block of the forward (one per warp)
LN_WARPS_BACKWARD = 4  # warps per block of the backward
LN_BACKWARD_BLOCKS_PER_SM = 2  # blocks of the backward: as many as are resident at once (189 registers)
LN_REDUCE_WARPS = 16  # warps per block of the parameter-sum reduction: each sums blocks / 16 partials
SMS = 132  # H100 SXM and H200 multiprocessors (sizes the backward's grid; any GPU computes the same)


def _row_vectorized(C: int, *arrays) -> bool:
    """Can the warp kernels move runs of 4 channels with 16-byte accesses? (numba_impl/rows.py)"""
    return row_vectorized(C, *arrays)


@functools.cache
def layernorm_warp_kernels(C: int, vec: bool = False, bias: bool = True, dbias_shared: bool | None = None):
    """(forward, backward, param_reduce) for rows of C channels, each row held in registers by one warp.

    Lane `lane` holds the row's channels `channel(lane, k)`, k < VPL: with vec, runs of 4 (k = 4j + u:
    channel 4 lane + 128 j + u, one 16-byte access per run); without, channel lane + 32 k (numba_impl/rows.py).
    bias=False (config.bias False): no bias in the forward, no dbias in the backward; the kernels take the
    same arguments (the bias / dbias array is not read), the per-block partials are C floats instead of 2C.
    dbias_shared: where the backward keeps its running dbias sums above 32 values per lane (below: always
    registers); None = in shared memory where both sums' rows fit the static 48 KiB (the tests force both)."""
    row = warp_row(C, vec)
    VPL, CP = row.VPL, row.CP  # values per lane; C rounded up to whole lanes: the shared rows' length
    channel, load_row, store_row = row.channel, row.load_row, row.store_row
    BIAS = bool(bias)  # (the kernels' `bias` argument is the array)
    NS = 2 if BIAS else 1  # parameter sums per channel: dweight (and dbias)
    WB = block_size(LN_WARPS_BACKWARD, 1)
    RW = block_size(LN_REDUCE_WARPS, 1)
    # The backward holds six rows of VPL values per lane (norm, dout, dinp, weight, the two running sums):
    # 144 registers at C = 768, past ptxas' 255 (spills) from C = 1280 on (GPT-2 large and xl). Above 32
    # values per lane it keeps three: dinp's row is read only when its new terms are ready (into the norm's
    # registers, no longer needed), the weights are read from global memory (L1) where they are used, and
    # the running dweight sums live in the warp's row of the shared reduction buffer (each lane owns its
    # channels there: no barrier in the loop). The arithmetic and its order, and so every result, are the
    # same; at C <= 1024 the kernel is the six-row one.
    LEAN = VPL > 32
    if dbias_shared is None:
        dbias_shared = 2 * WB * CP * 4 <= 0xC000  # dbias's sums in shared too, where they fit (not at xl)
    DB_SHARED = LEAN and BIAS and bool(dbias_shared)

    @kernel(lineinfo=True)
    def layernorm_forward_warp_kernel(out, mean, rstd, inp, weight, bias, N, C, eps):
        """Block = 32 * (rows per block) threads; warp w of block b handles row b*rows_per_block + w.
        Every lane of a warp takes part in the shuffles, so the row bound is checked only at the memory accesses."""
        x = cuda.local.array(VPL, float32)
        w = cuda.local.array(VPL, float32)
        b = cuda.local.array(VPL, float32)
        lane = cuda.threadIdx.x % WARP
        row = cuda.blockIdx.x * (cuda.blockDim.x // WARP) + cuda.threadIdx.x // WARP
        valid = row < N
        base = row * C
        load_row(x, inp, base, lane, valid)
        load_row(w, weight, 0, lane, True)
        if BIAS:
            load_row(b, bias, 0, lane, True)
        s = float32(0.0)
        for k in range(VPL):
            s += x[k]
        m = warp_sum(s) / float32(C)
        v = float32(0.0)
        for k in range(VPL):
            d = x[k] - m if channel(lane, k) < C else float32(0.0)
            v += d * d
        r = float32(1.0) / math.sqrt(warp_sum(v) / float32(C) + eps)
        if valid:
            for k in range(VPL):
                x[k] = (x[k] - m) * r * w[k] + b[k] if BIAS else (x[k] - m) * r * w[k]
            store_row(out, base, lane, x)
            if lane == 0:
                mean[row] = m
                rstd[row] = r

    @kernel(lineinfo=True)
    def layernorm_backward_warp_kernel(dinp, partials, dout, inp, weight, mean, rstd, N, C):
        """Blocks of WB warps; warp w of the grid takes rows w, w + (all warps), ... Each lane sums its
        channels' dbias and dweight terms over those rows in registers (LEAN: in its warp's row of shared
        memory, dbias's too where DB_SHARED); the block's warps then combine theirs in shared memory, and
        the block writes partials[block] = (dweight sums (C), dbias sums (C))."""
        red = cuda.shared.array((WB, CP), float32)
        red_db = cuda.shared.array((WB, CP) if DB_SHARED else (1, 1), float32)
        xn = cuda.local.array(VPL, float32)  # norm of the row (LEAN: then dinp's row, accumulated into)
        g = cuda.local.array(VPL, float32)  # dout of the row (LEAN: then dout * weight, then the new dinp terms)
        d = cuda.local.array(1 if LEAN else VPL, float32)  # dinp of the row (accumulated into)
        w = cuda.local.array(1 if LEAN else VPL, float32)
        dw = cuda.local.array(1 if LEAN else VPL, float32)  # this lane's running sums over its warp's rows
        db = cuda.local.array(VPL, float32)  # (LEAN: dweight's are red[warp, its channels])
        lane = cuda.threadIdx.x % WARP
        warp = cuda.threadIdx.x // WARP
        if not LEAN:
            load_row(w, weight, 0, lane, True)
        for k in range(VPL):
            if LEAN:
                red[warp, channel(lane, k)] = float32(0.0)
            else:
                dw[k] = float32(0.0)
            if DB_SHARED:
                red_db[warp, channel(lane, k)] = float32(0.0)
            else:
                db[k] = float32(0.0)
        n_warps = cuda.gridDim.x * WB
        for row in range(cuda.blockIdx.x * WB + warp, N, n_warps):  # the same trip count for the warp's lanes
            base = row * C
            m = mean[row]
            r = rstd[row]
            load_row(xn, inp, base, lane, True)
            load_row(g, dout, base, lane, True)
            if not LEAN:
                load_row(d, dinp, base, lane, True)
            g_sum = float32(0.0)
            gn_sum = float32(0.0)
            for k in range(VPL):
                xn[k] = (xn[k] - m) * r
                if LEAN:
                    c = channel(lane, k)
                    wk = weight[c] if c < C else float32(0.0)
                else:
                    wk = w[k]
                wg = g[k] * wk
                g_sum += wg
                gn_sum += wg * xn[k]
                if DB_SHARED:
                    red_db[warp, channel(lane, k)] += g[k]
                elif BIAS:
                    db[k] += g[k]
                if LEAN:
                    red[warp, channel(lane, k)] += g[k] * xn[k]
                    g[k] = wg  # the weights are not needed again: dout * weight is what the dinp terms use
                else:
                    dw[k] += g[k] * xn[k]
            g_mean = warp_sum(g_sum) / float32(C)
            gn_mean = warp_sum(gn_sum) / float32(C)
            if LEAN:
                for k in range(VPL):
                    g[k] = r * (g[k] - g_mean - xn[k] * gn_mean)  # g[k] = dout * weight, the same product
                load_row(xn, dinp, base, lane, True)
                for k in range(VPL):
                    xn[k] += g[k]
                store_row(dinp, base, lane, xn)
            else:
                for k in range(VPL):
                    d[k] += r * (g[k] * w[k] - g_mean - xn[k] * gn_mean)
                store_row(dinp, base, lane, d)
        # the block's totals per channel: each warp's lane sums through shared memory, dweight then dbias
        for half in range(NS):
            if (half == 1 and not DB_SHARED) or (half == 0 and not LEAN):  # (else the sums are in shared)
                for k in range(VPL):
                    red[warp, channel(lane, k)] = dw[k] if half == 0 else db[k]
            cuda.syncthreads()
            for c in range(cuda.threadIdx.x, C, cuda.blockDim.x):
                total = float32(0.0)
                for wi in range(WB):
                    total += red_db[wi, c] if DB_SHARED and half == 1 else red[wi, c]
                partials[cuda.blockIdx.x * NS * C + half * C + c] = total
            cuda.syncthreads()

    @kernel
    def layernorm_param_reduce_kernel(dweight, dbias, partials, blocks, C):
        """dweight[c] += sum over blocks of partials[block, c], dbias[c] likewise from partials[block, C + c]
        (bias=False: the partials are dweight's alone). A block takes 32 of the NS*C values (one per lane);
        its RW warps each sum every RW-th block's partials, then warp 0 adds the RW sums in warp order:
        the same order on every run."""
        red = cuda.shared.array((RW, WARP), float32)
        lane = cuda.threadIdx.x % WARP
        warp = cuda.threadIdx.x // WARP
        i = cuda.blockIdx.x * WARP + lane
        total = float32(0.0)
        if i < NS * C:
            for blk in range(warp, blocks, RW):
                total += partials[blk * NS * C + i]
        red[warp, lane] = total
        cuda.syncthreads()
        if warp == 0 and i < NS * C:
            total = float32(0.0)
            for wi in range(RW):
                total += red[wi, lane]
            if i < C:
                dweight[i] += total
            else:
                dbias[i - C] += total

    return layernorm_forward_warp_kernel, layernorm_backward_warp_kernel, layernorm_param_reduce_kernel


def layernorm_forward(out, mean, rstd, inp, weight, bias, N, C, eps):
    """out (N, C), mean and rstd (N,) from inp (N, C); bias None: no bias (config.bias False)."""
    if bias is None:
        forward, _, _ = layernorm_warp_kernels(C, _row_vectorized(C, out, inp, weight), bias=False)
        bias = scratch.dummy()
    else:
        forward, _, _ = layernorm_warp_kernels(C, _row_vectorized(C, out, inp, weight, bias))
    threads = WARP * block_size(LN_WARPS_FORWARD, 1)
    forward[ceil_div(N, threads // WARP), threads](out, mean, rstd, inp, weight, bias, N, C, np.float32(eps))


def layernorm_backward_blocks(N: int) -> int:
    """Blocks of the backward for N rows: about one resident set (LN_BACKWARD_BLOCKS_PER_SM per SM), fewer
    for small N. The parameter sums' order depends on this number only, so a shape always sums alike."""
    warps = block_size(LN_WARPS_BACKWARD, 1)
    return max(1, min(ceil_div(N, warps), block_size(LN_BACKWARD_BLOCKS_PER_SM * SMS, 2)))


def layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C):
    """Accumulates into dinp, dweight, dbias: the warp kernel (dinp, and per-block parameter sums in a
    scratch buffer), then the reduction of those sums in block order. dbias None: the forward had no
    bias (only dweight is summed)."""
    bias = dbias is not None
    _, backward, reduce = layernorm_warp_kernels(C, _row_vectorized(C, dinp, dout, inp, weight), bias=bias)
    sums = 2 if bias else 1
    blocks = layernorm_backward_blocks(N)
    partials = scratch.buffer("layernorm backward", blocks * sums * C)
    dbias = dbias if bias else scratch.dummy()
    backward[blocks, WARP * block_size(LN_WARPS_BACKWARD, 1)](dinp, partials, dout, inp, weight, mean, rstd, N, C)
    reduce[ceil_div(sums * C, WARP), WARP * block_size(LN_REDUCE_WARPS, 1)](dweight, dbias, partials, blocks, C)
