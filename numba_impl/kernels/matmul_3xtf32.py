"""Matrix multiply on the tensor cores at float32 accuracy (3xTF32): out(M, N) [+]= A(M, K) @ B(K, N) [+ bias(N)].

Same layouts and launcher signature as kernels/matmul.py (NN, NT, TN; see there), so the model can
switch between the two; the float32 naive kernel of matmul.py is the twin this one is tested against.

Why three products. A tensor core multiplies TF32 values: float32 with 10 mantissa bits instead of 23,
so one TF32 product carries a relative error of ~2^-11 (~5e-4) per operand. Split every float32 x
into a TF32 high part and a TF32 low part,

    hi = tf32(x),   lo = tf32(x - hi)          (x - hi is exact in float32; hi + lo = x to ~2^-22 |x|)

then  a * b = a_hi b_hi + a_hi b_lo + a_lo b_hi + a_lo b_lo,  and the last term is ~2^-22 of the
product, below float32's own rounding (2^-24 per operation, accumulated over K terms): dropping it
leaves three tensor-core products per step, at float32 accuracy. The small terms go first, so that
they meet the accumulator before the big one.

The kernel. A block of WARPS_M x WARPS_N warps computes a BM x BN tile of `out`; each warp owns a
(MI*16) x (NI*8) piece of it: MI x NI m16n8 accumulator fragments (4 float32 per lane each, see
numba_impl/mma.py for the lane layout). K advances in slices of BK:
- the block stages A[m0:m0+BM, k0:k0+BK] and B[k0:k0+BK, n0:n0+BN] into shared memory, already
  split into hi and lo tiles (each element is split once, not once per warp that reads it);
  the next slice's global loads are issued into registers before the current slice is computed
  (register-prefetch double buffering: their latency hides behind the mma work);
- an operand stored contiguous along K (A in NN/NT, B in NT) is kept as tile[mn, BK + 4], one
  stored contiguous along M or N (A in TN, B in NN/TN) as tile[BK, BMN + 8]: both pads make the
  fragment reads of a warp hit 32 different banks and keep the staging stores coalesced;
- per 8-wide k step each warp reads its A fragments (4 hi + 4 lo per MI) and B fragments
  (2 hi + 2 lo per NI) from shared memory and issues 3 mma per (MI, NI) pair.
Products inside the tensor core are exact; its float32 accumulation is not IEEE round-to-nearest
for every addition. `accumulate_mode="separate"` (the default) runs the three mma of one k step
into a zero accumulator and adds that partial sum to the running total with an ordinary float32
add; "chained" passes the running total through the tensor core as C.
Long K: `k_chunk` sums K in chunks, one launch each, as kernels/matmul.py does.
"""

from __future__ import annotations

import functools

import numpy as np

from numba_impl._compat import SIMULATOR, ceil_div, cuda, float32, kernel
from numba_impl.kernels.matmul import bias_backward
from numba_impl.mma import mma_tf32_m16n8k8, tf32_round

# (WARPS_M, WARPS_N, MI, NI, BK): BM = WARPS_M * MI * 16, BN = WARPS_N * NI * 8.
# Warp tiles of 32 x 32 (MI=2, NI=4): 64 x 32 ones (MI=4) need 255 registers and spill (ptxas, sm_90).
GPU_TILE = (4, 2, 2, 4, 16)  # 128 x 64, 256 threads, ~240 registers, 29 KiB of shared tiles
# for outputs with few large tiles: 64 x 64, 256 threads, warp tiles 32 x 16, ~128 registers
GPU_TILE_SMALL = (2, 4, 2, 2, 16)
LARGE_TILE_MIN_BLOCKS = 264  # 2 waves of large tiles over 132 SMs
SIM_TILE = (1, 1, 1, 2, 8)  # 16 x 16, one warp: the simulator runs one OS thread per CUDA thread
ACCUMULATE_MODES = ("separate", "chained")
LAYOUTS = ("NN", "NT", "TN")


def tile_shape(tile) -> tuple[int, int, int]:
    """(BM, BN, threads) of a tile tuple."""
    wm, wn, mi, ni, _ = tile[:5]
    return wm * mi * 16, wn * ni * 8, 32 * wm * wn


def default_tile(M: int, N: int, layout: str) -> tuple:
    if SIMULATOR:
        return SIM_TILE
    BM, BN, _ = tile_shape(GPU_TILE)
    return GPU_TILE if ceil_div(M, BM) * ceil_div(N, BN) >= LARGE_TILE_MIN_BLOCKS else GPU_TILE_SMALL


@functools.cache
def matmul_3xtf32_kernel(layout: str, WARPS_M: int, WARPS_N: int, MI: int, NI: int, BK: int, mode: str = "separate"):
    """Build the kernel for one layout, tile and accumulation mode (all compile-time constants)."""
    if layout not in LAYOUTS:
        raise ValueError(f"matmul layout must be one of {LAYOUTS}, got {layout!r}")
    if mode not in ACCUMULATE_MODES:
        raise ValueError(f"accumulate_mode must be one of {ACCUMULATE_MODES}, got {mode!r}")
    if BK % 8:
        raise ValueError(f"BK={BK} must be a multiple of 8 (the mma's k)")
    BM, BN, THREADS = tile_shape((WARPS_M, WARPS_N, MI, NI, BK))
    if BM * BK % THREADS or BN * BK % THREADS:
        raise ValueError(f"a {BM}x{BK} / {BN}x{BK} slice must split evenly over {THREADS} threads")
    A_LOADS = BM * BK // THREADS
    B_LOADS = BN * BK // THREADS
    A_T = layout[0] == "T"  # A stored (K, M)
    B_T = layout[1] == "T"  # B stored (N, K)
    # Shared tiles: [BK, BMN + 8] for an operand contiguous along M/N, [BMN, BK + 4] for one contiguous along K.
    A_SHAPE = (BK, BM + 8) if A_T else (BM, BK + 4)
    B_SHAPE = (BK, BN + 8) if not B_T else (BN, BK + 4)
    CHAINED = mode == "chained"

    @kernel
    def matmul_3xtf32(out, a, b, bias, M, N, K, k_start, k_stop, accumulate, has_bias):
        a_hi = cuda.shared.array(A_SHAPE, float32)
        a_lo = cuda.shared.array(A_SHAPE, float32)
        b_hi = cuda.shared.array(B_SHAPE, float32)
        b_lo = cuda.shared.array(B_SHAPE, float32)
        a_next = cuda.local.array(A_LOADS, float32)  # the next K slice, in flight while this one is computed
        b_next = cuda.local.array(B_LOADS, float32)
        acc = cuda.local.array((MI, NI, 4), float32)
        fa_hi = cuda.local.array((MI, 4), float32)
        fa_lo = cuda.local.array((MI, 4), float32)
        fb_hi = cuda.local.array((NI, 2), float32)
        fb_lo = cuda.local.array((NI, 2), float32)

        tid = cuda.threadIdx.x
        lane = tid % 32
        warp = tid // 32
        g = lane // 4  # the fragment's row group (mma.py)
        t = lane % 4  # the thread in the group
        wm0 = (warp // WARPS_N) * (MI * 16)  # this warp's rows / columns inside the block tile
        wn0 = (warp % WARPS_N) * (NI * 8)
        m0 = cuda.blockIdx.y * BM
        n0 = cuda.blockIdx.x * BN
        for i in range(MI):
            for j in range(NI):
                acc[i, j, 0] = acc[i, j, 1] = acc[i, j, 2] = acc[i, j, 3] = float32(0.0)

        # ---- global loads of one K slice into registers (zero outside the matrices)
        k0 = k_start
        for load in range(A_LOADS):
            e = tid + load * THREADS
            if A_T:
                m, k = e % BM, e // BM
            else:
                k, m = e % BK, e // BK
            gm, gk = m0 + m, k0 + k
            value = float32(0.0)
            if gm < M and gk < k_stop:
                value = a[gk * M + gm] if A_T else a[gm * K + gk]
            a_next[load] = value
        for load in range(B_LOADS):
            e = tid + load * THREADS
            if B_T:
                k, n = e % BK, e // BK
            else:
                n, k = e % BN, e // BN
            gn, gk = n0 + n, k0 + k
            value = float32(0.0)
            if gn < N and gk < k_stop:
                value = b[gn * K + gk] if B_T else b[gk * N + gn]
            b_next[load] = value

        while k0 < k_stop:
            # ---- registers -> shared, split into TF32 hi and lo
            for load in range(A_LOADS):
                e = tid + load * THREADS
                x = a_next[load]
                hi = tf32_round(x)
                lo = tf32_round(x - hi)
                if A_T:
                    a_hi[e // BM, e % BM] = hi
                    a_lo[e // BM, e % BM] = lo
                else:
                    a_hi[e // BK, e % BK] = hi
                    a_lo[e // BK, e % BK] = lo
            for load in range(B_LOADS):
                e = tid + load * THREADS
                x = b_next[load]
                hi = tf32_round(x)
                lo = tf32_round(x - hi)
                if B_T:
                    b_hi[e // BK, e % BK] = hi
                    b_lo[e // BK, e % BK] = lo
                else:
                    b_hi[e // BN, e % BN] = hi
                    b_lo[e // BN, e % BN] = lo
            cuda.syncthreads()

            # ---- prefetch the next slice while the tensor cores work on this one
            k1 = k0 + BK
            if k1 < k_stop:
                for load in range(A_LOADS):
                    e = tid + load * THREADS
                    if A_T:
                        m, k = e % BM, e // BM
                    else:
                        k, m = e % BK, e // BK
                    gm, gk = m0 + m, k1 + k
                    value = float32(0.0)
                    if gm < M and gk < k_stop:
                        value = a[gk * M + gm] if A_T else a[gm * K + gk]
                    a_next[load] = value
                for load in range(B_LOADS):
                    e = tid + load * THREADS
                    if B_T:
                        k, n = e % BK, e // BK
                    else:
                        n, k = e % BN, e // BN
                    gn, gk = n0 + n, k1 + k
                    value = float32(0.0)
                    if gn < N and gk < k_stop:
                        value = b[gn * K + gk] if B_T else b[gk * N + gn]
                    b_next[load] = value

            # ---- the slice on the tensor cores: 8-wide k steps
            for kk in range(0, BK, 8):
                for i in range(MI):
                    r = wm0 + i * 16 + g
                    if A_T:
                        fa_hi[i, 0], fa_lo[i, 0] = a_hi[kk + t, r], a_lo[kk + t, r]
                        fa_hi[i, 1], fa_lo[i, 1] = a_hi[kk + t, r + 8], a_lo[kk + t, r + 8]
                        fa_hi[i, 2], fa_lo[i, 2] = a_hi[kk + t + 4, r], a_lo[kk + t + 4, r]
                        fa_hi[i, 3], fa_lo[i, 3] = a_hi[kk + t + 4, r + 8], a_lo[kk + t + 4, r + 8]
                    else:
                        fa_hi[i, 0], fa_lo[i, 0] = a_hi[r, kk + t], a_lo[r, kk + t]
                        fa_hi[i, 1], fa_lo[i, 1] = a_hi[r + 8, kk + t], a_lo[r + 8, kk + t]
                        fa_hi[i, 2], fa_lo[i, 2] = a_hi[r, kk + t + 4], a_lo[r, kk + t + 4]
                        fa_hi[i, 3], fa_lo[i, 3] = a_hi[r + 8, kk + t + 4], a_lo[r + 8, kk + t + 4]
                for j in range(NI):
                    c = wn0 + j * 8 + g
                    if B_T:
                        fb_hi[j, 0], fb_lo[j, 0] = b_hi[c, kk + t], b_lo[c, kk + t]
                        fb_hi[j, 1], fb_lo[j, 1] = b_hi[c, kk + t + 4], b_lo[c, kk + t + 4]
                    else:
                        fb_hi[j, 0], fb_lo[j, 0] = b_hi[kk + t, c], b_lo[kk + t, c]
                        fb_hi[j, 1], fb_lo[j, 1] = b_hi[kk + t + 4, c], b_lo[kk + t + 4, c]
                for i in range(MI):
                    for j in range(NI):
                        if CHAINED:
                            d0, d1, d2, d3 = acc[i, j, 0], acc[i, j, 1], acc[i, j, 2], acc[i, j, 3]
                        else:
                            d0 = d1 = d2 = d3 = float32(0.0)
                        # small terms first: lo*hi, hi*lo, then hi*hi
                        d0, d1, d2, d3 = mma_tf32_m16n8k8(
                            fa_lo[i, 0], fa_lo[i, 1], fa_lo[i, 2], fa_lo[i, 3], fb_hi[j, 0], fb_hi[j, 1], d0, d1, d2, d3
                        )
                        d0, d1, d2, d3 = mma_tf32_m16n8k8(
                            fa_hi[i, 0], fa_hi[i, 1], fa_hi[i, 2], fa_hi[i, 3], fb_lo[j, 0], fb_lo[j, 1], d0, d1, d2, d3
                        )
                        d0, d1, d2, d3 = mma_tf32_m16n8k8(
                            fa_hi[i, 0], fa_hi[i, 1], fa_hi[i, 2], fa_hi[i, 3], fb_hi[j, 0], fb_hi[j, 1], d0, d1, d2, d3
                        )
                        if CHAINED:
                            acc[i, j, 0], acc[i, j, 1], acc[i, j, 2], acc[i, j, 3] = d0, d1, d2, d3
                        else:
                            acc[i, j, 0] += d0
                            acc[i, j, 1] += d1
                            acc[i, j, 2] += d2
                            acc[i, j, 3] += d3
            cuda.syncthreads()  # everyone is done with the tiles before they are overwritten
            k0 = k1

        # ---- epilogue: fragment element r of (i, j) is out[row g (+8 for r >= 2), column 2t (+1 for odd r)]
        def store(value, gm, gn):  # an inner function: Numba inlines it
            if gm < M and gn < N:
                if has_bias:
                    value += bias[gn]
                if accumulate:
                    value += out[gm * N + gn]
                out[gm * N + gn] = value

        # (the four are written out: a loop over r would index `acc` at run time and push it to local memory)
        for i in range(MI):
            for j in range(NI):
                gm = m0 + wm0 + i * 16 + g
                gn = n0 + wn0 + j * 8 + 2 * t
                store(acc[i, j, 0], gm, gn)
                store(acc[i, j, 1], gm, gn + 1)
                store(acc[i, j, 2], gm + 8, gn)
                store(acc[i, j, 3], gm + 8, gn + 1)

    return matmul_3xtf32


# ----------------------------------------------------------------------------- launchers
_NO_BIAS = {}


def _dummy_bias():
    """A 1-element device array to pass where the kernel takes a bias but none is used."""
    if "array" not in _NO_BIAS:
        _NO_BIAS["array"] = cuda.to_device(np.zeros(1, dtype=np.float32))
    return _NO_BIAS["array"]


def matmul(
    out, a, b, M, N, K, layout="NN", bias=None, accumulate=False, naive=False, tile=None, k_chunk=None,
    accumulate_mode="separate",
):  # fmt: skip
    """out(M, N) (+)= A @ B (+ bias) on the tensor cores (3xTF32); the arguments are kernels/matmul.py's.

    tile: (WARPS_M, WARPS_N, MI, NI, BK) (default: `default_tile`). k_chunk: split-K, one launch per
    chunk of K, each chunk's partial sum added to `out` in float32 (as in kernels/matmul.py).
    naive=True is refused: the naive twin of this kernel is kernels/matmul.py's float32 one."""
    if naive:
        raise ValueError("matmul_3xtf32 has no naive version; the naive twin is kernels/matmul.py's float32 kernel")
    if layout not in LAYOUTS:
        raise ValueError(f"matmul layout must be one of {LAYOUTS}, got {layout!r}")
    has_bias = bias is not None
    bias = bias if has_bias else _dummy_bias()
    tile = tuple(tile or default_tile(M, N, layout))
    BM, BN, threads = tile_shape(tile)
    BK = tile[4]
    fn = matmul_3xtf32_kernel(layout, *tile[:5], accumulate_mode)
    grid = (ceil_div(N, BN), ceil_div(M, BM))
    step = K if not k_chunk else max(1, int(k_chunk))
    step = ceil_div(step, BK) * BK  # chunks start on a slice boundary
    for i, k0 in enumerate(range(0, max(K, 1), step)):
        # the first chunk writes (or accumulates, if asked) and adds the bias; the others accumulate
        fn[grid, threads](out, a, b, bias, M, N, K, k0, min(K, k0 + step), accumulate or i > 0, has_bias and i == 0)


def matmul_forward(out, inp, weight, bias, BT, C, OC, naive=False):
    """out(BT, OC) = inp(BT, C) @ weight(C, OC) + bias(OC); bias may be None."""
    matmul(out, inp, weight, BT, OC, C, "NN", bias=bias, naive=naive)


def matmul_backward(dinp, dweight, dbias, dout, inp, weight, BT, C, OC, naive=False, accumulate_dinp=False):
    """Backward of `matmul_forward`: dinp(BT, C) (+)= dout @ weight^T; dweight(C, OC) += inp^T @ dout;
    dbias(OC) += column sums of dout (kernels/matmul.py's bias_backward; skipped when dbias is None)."""
    matmul(dinp, dout, weight, BT, C, OC, "NT", accumulate=accumulate_dinp, naive=naive)
    matmul(dweight, inp, dout, C, OC, BT, "TN", accumulate=True, naive=naive)
    if dbias is not None:
        bias_backward(dbias, dout, BT, OC)
