"""Matrix multiply with bias: out(M, N) [+]= A(M, K) @ B(K, N) [+ bias(N)].

Every linear layer of GPT-2 is one of three layouts of this product (flat row-major storage):

    "NN"  A stored (M, K), B stored (K, N)   forward x @ W;  lm-head backward dlogits @ wte
    "NT"  A stored (M, K), B stored (N, K)   lm head x @ wte^T;  backward dout @ W^T
    "TN"  A stored (K, M), B stored (K, N)   weight gradient x^T @ dout

A linear layer y = x @ W + b with x (BT, C), W (C, OC):
    forward    y  = x @ W + b                      NN   (+ gelu(y) or residual + y, fused)
    backward   dx = dy @ W^T                       NT   (dx (BT, C))
               dW += x^T @ dy                      TN   (dW (C, OC), accumulated; db += column sums of dy, fused)

Three kernels compute the product, float32 products and float32 sums in all of them (they differ
only in the order of the K sum):
- naive: one thread per output element, a K-long dot product straight from global memory;
- tiled: the previous optimised kernel, kept to compare against: a block computes a 128x128 or
  64x64 tile with one shared stage and an 8x8 (or 4x4) tile of scalar accumulators per thread;
- fast (the default, below): 8x8 register fragments read with 16-byte shared loads, padded shared
  tiles, register-prefetch double buffering, an unchecked path for interior tiles with 16-byte
  global loads (`load4`), a k loop unrolled by hand, fused epilogues, and split-K in one launch
  (+ a reduction) with the sum chunked in registers.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from numba_impl import scratch
from numba_impl._compat import SIMULATOR, block_size, ceil_div, cuda, device, float32, kernel
from numba_impl.vector import VEC, aligned16, load4

LAYOUTS = ("NN", "NT", "TN")

# GELU, tanh form (GPT-2's "gelu_new"): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
SQRT_2_OVER_PI = float32(np.sqrt(2.0 / np.pi))
GELU_COEF = float32(0.044715)

# Tiles of the tiled kernel: (BM, BN, BK, TM, TN). On a GPU both tiles use 256 threads. Chosen by a
# sweep on an H100 at the GPT-2 124M shapes (tests/numba_impl/gpu_report.py, section "sweep"): the
# 128x128 tile wins when the output has >= ~2 waves of such tiles (2 x 132 SMs), else the 64x64 tile
# keeps every SM busy.
GPU_TILE = (128, 128, 16, 8, 8)
GPU_TILE_SMALL = (64, 64, 8, 4, 4)
GPU_TILE_SMALL_TN = (64, 64, 16, 4, 4)  # the weight-gradient layout liked the longer K slice
LARGE_TILE_MIN_BLOCKS = 264
SIM_TILE = (8, 8, 4, 4, 4)  # 4 threads per block in the simulator


def default_tile(M: int, N: int, layout: str) -> tuple:
    if SIMULATOR:
        return SIM_TILE
    if ceil_div(M, GPU_TILE[0]) * ceil_div(N, GPU_TILE[1]) >= LARGE_TILE_MIN_BLOCKS:
        return GPU_TILE
    return GPU_TILE_SMALL_TN if layout == "TN" else GPU_TILE_SMALL


# ----------------------------------------------------------------------------- naive
@kernel
def matmul_naive_kernel(out, a, b, bias, M, N, K, k_start, k_stop, sa_row, sa_k, sb_k, sb_col, accumulate, has_bias):
    """out[i, j] (+)= sum over k in [k_start, k_stop) of a[i*sa_row + k*sa_k] * b[k*sb_k + j*sb_col] (+ bias[j]);
    one thread per (i, j)."""
    j, i = cuda.grid(2)
    if i < M and j < N:
        acc = float32(0.0)
        for k in range(k_start, k_stop):
            acc += a[i * sa_row + k * sa_k] * b[k * sb_k + j * sb_col]
        if has_bias:
            acc += bias[j]
        if accumulate:
            acc += out[i * N + j]
        out[i * N + j] = acc


def _strides(layout: str, M: int, N: int, K: int):
    """(sa_row, sa_k, sb_k, sb_col) of A and B stored as `layout` says."""
    sa = (1, M) if layout[0] == "T" else (K, 1)
    sb = (1, K) if layout[1] == "T" else (N, 1)
    return sa + sb


# ----------------------------------------------------------------------------- tiled
@functools.cache
def tiled_matmul_kernel(layout: str, BM: int, BN: int, BK: int, TM: int, TN: int, interleave: bool = True):
    """Build the tiled kernel for one layout and tile shape (constants are frozen at compile time).

    interleave=True: thread (ty, tx) owns rows ty + r*(BM/TM) and columns tx + c*(BN/TN);
    False: the contiguous block rows ty*TM + r, columns tx*TN + c."""
    if layout not in LAYOUTS:
        raise ValueError(f"matmul layout must be one of {LAYOUTS}, got {layout!r}")
    COLS = BN // TN  # threads along N
    ROWS = BM // TM  # threads along M
    THREADS = ROWS * COLS
    if BM * BK % THREADS or BN * BK % THREADS:
        raise ValueError(f"tile {(BM, BN, BK, TM, TN)}: a BKxBM / BKxBN slice must split evenly over {THREADS} threads")
    A_LOADS = BM * BK // THREADS
    B_LOADS = BN * BK // THREADS
    A_T = layout[0] == "T"
    B_T = layout[1] == "T"

    @kernel
    def matmul_tiled_kernel(out, a, b, bias, M, N, K, k_start, k_stop, accumulate, has_bias):
        a_tile = cuda.shared.array((BK, BM), float32)
        b_tile = cuda.shared.array((BK, BN), float32)
        acc = cuda.local.array((TM, TN), float32)
        a_frag = cuda.local.array(TM, float32)
        b_frag = cuda.local.array(TN, float32)
        tid = cuda.threadIdx.x
        tx = tid % COLS
        ty = tid // COLS
        m0 = cuda.blockIdx.y * BM
        n0 = cuda.blockIdx.x * BN
        for r in range(TM):
            for c in range(TN):
                acc[r, c] = float32(0.0)

        for k0 in range(k_start, k_stop, BK):
            # Stage A[m0:m0+BM, k0:k0+BK] as a_tile[k, m]; consecutive threads read consecutive addresses.
            for load in range(A_LOADS):
                e = tid + load * THREADS
                if A_T:  # stored (K, M): contiguous along m
                    m = e % BM
                    k = e // BM
                else:  # stored (M, K): contiguous along k
                    k = e % BK
                    m = e // BK
                gm = m0 + m
                gk = k0 + k
                value = float32(0.0)
                if gm < M and gk < k_stop:
                    value = a[gk * M + gm] if A_T else a[gm * K + gk]
                a_tile[k, m] = value
            # Stage B[k0:k0+BK, n0:n0+BN] as b_tile[k, n].
            for load in range(B_LOADS):
                e = tid + load * THREADS
                if B_T:  # stored (N, K): contiguous along k
                    k = e % BK
                    n = e // BK
                else:  # stored (K, N): contiguous along n
                    n = e % BN
                    k = e // BN
                gn = n0 + n
                gk = k0 + k
                value = float32(0.0)
                if gn < N and gk < k_stop:
                    value = b[gn * K + gk] if B_T else b[gk * N + gn]
                b_tile[k, n] = value
            cuda.syncthreads()

            for k in range(BK):
                for r in range(TM):
                    a_frag[r] = a_tile[k, ty + r * ROWS] if interleave else a_tile[k, ty * TM + r]
                for c in range(TN):
                    b_frag[c] = b_tile[k, tx + c * COLS] if interleave else b_tile[k, tx * TN + c]
                for r in range(TM):
                    for c in range(TN):
                        acc[r, c] += a_frag[r] * b_frag[c]
            cuda.syncthreads()

        for r in range(TM):
            gm = m0 + (ty + r * ROWS if interleave else ty * TM + r)
            if gm < M:
                for c in range(TN):
                    gn = n0 + (tx + c * COLS if interleave else tx * TN + c)
                    if gn < N:
                        value = acc[r, c]
                        if has_bias:
                            value += bias[gn]
                        if accumulate:
                            value += out[gm * N + gn]
                        out[gm * N + gn] = value

    return matmul_tiled_kernel


# ----------------------------------------------------------------------------- fast
# The fast kernel (`fast_matmul_kernel`). A block of THREADS = (BM/TM) * (BN/TN) threads computes
# a BM x BN tile of `out`; thread (ty, tx) keeps TM x TN accumulators in registers, as 2 x 2 blocks
# of (TM/2) x (TN/2): rows ty*TM/2 + [0, TM/2) and BM/2 + ty*TM/2 + [0, TM/2), columns likewise.
# Per K step (BK deep) the block stages A's slice as a_s[k, m] and B's as b_s[k, n] in shared
# memory; a thread then reads, per k, its TM/2 consecutive floats of a_s twice and its TN/2 of b_s
# twice: with TM = TN = 8, four 16-byte loads (ld.shared.v4.f32) for 64 FMAs. Rows are padded by
# PAD floats: the operands that are contiguous along k in global memory (A in NN/NT, B in NT) are
# written transposed, and without the pad the threads of a warp would write one bank.
# Interior tiles of 16-byte aligned operands read global memory with `load4` (ld.global.v4.f32: a
# quarter of the load instructions and of their 64-bit address arithmetic); the k loop over a slice
# is written out FAST_UNROLL times per iteration (NVVM does not unroll the whole loop by itself), so
# the compiler sees the next k's shared loads while this k's FMAs run.
# Double buffering: two shared stages; while the block computes on one, each thread holds the next
# slice in registers (loaded from global memory before the FMAs, stored to the other stage after
# them), so one barrier per K step suffices. Tiles that lie wholly inside (M, N) take loads without
# bounds checks, except on a last, partial K step (the branch is uniform over the block).
# Epilogues fused into the store: bias, accumulate, GELU (out2 = gelu(out), out keeps the
# pre-activation the backward needs), residual add (out2 = extra + out); and for the weight
# gradient (TN), the bias gradient (column sums of B = dout, which the kernel loads anyway).
# Split-K: gridDim.z slices of K, each written to its own (M, N) slice of a workspace and summed in
# a fixed order by `splitk_reduce_kernel` (deterministic, no atomics). kc > 0: every kc terms of K
# the running sum is added into a second set of accumulators, so no float32 register sums more
# than kc products (the head's backward sums K = 50,257; see `matmul`'s k_chunk).
FAST_PAD = 4  # floats of padding per shared row: keeps rows 16-byte aligned, spreads transposed writes over banks
# 16-byte aligned shared tiles: what lets the compiler merge 4 float loads into one ld.shared.v4.f32.
# (The simulator refuses the keyword; its numpy arrays are aligned anyway.)
SHARED_ALIGN = None if SIMULATOR else 16
# staging: each thread moves runs of VEC = 4 consecutive floats (16 bytes) from global to shared

EPILOGUES = ("none", "gelu", "residual")
_EPI_CODE = {name: i for i, name in enumerate(EPILOGUES)}

# (BM, BN, BK, TM, TN) of the fast kernel. The simulator gets FAST_SIM_TILE: 4 threads, 2x2
# fragments, the same code paths (fragments of halves, staging runs of 4).
FAST_TILE = (128, 128, 16, 8, 8)  # 256 threads
FAST_TILE_NARROW = (128, 64, 16, 8, 8)  # 128 threads, for outputs with few 128x128 tiles
FAST_SIM_TILE = (8, 8, 4, 4, 4)
SMS = 132  # H100 SXM and H200 multiprocessors; only used to judge waves of tiles
MIN_SPLIT_K = 512  # a split-K slice sums at least this many terms
FAST_UNROLL = 2  # k per iteration of the k loop (`fast_matmul_kernel`): 2 beat 4 and 1 at 128x128x16 on every
# GPT-2 product in the H200 sweep (docs/results/numba-matmul-sweep-h200.json)

# (tile, split-K, unroll) per product of a GPT-2 124M step at B*T = 4096: the fastest of the device-time sweep
# in docs/results/numba-matmul-sweep-device-h200.json (H200, code of commit 94876be: the tiles 128x128x16 at
# unroll 2, 128x64x16 at unroll 4 and 64x64x16 at unroll 2 and 4, each with every split count whose slices
# keep >= 256 terms, up to 16; each configuration timed as 10 launches in a CUDA graph, so that Numba's
# host-side launch cost is not in the number). The comment gives that time and cuBLAS float32's device time
# in the same run. The split count that wins is the one that fills the 132 multiprocessors in one or a few
# whole waves (e.g. dw attn_proj: 36 tiles x 7 slices = 252 blocks, one wave of 2 per SM). Other shapes take
# the rules in `fast_tile` / `split_k` and FAST_UNROLL. The head's backward runs as 50 slices of <= 1,024
# terms (its k_chunk): the 125-register kernel and a 629 MB workspace instead of the chunked kernel.
TUNED = {
    (4096, 2304, 768, "NN"): ((128, 64, 16, 8, 8), 1, 4),  # fwd qkv: 0.411 ms, cuBLAS 0.347 ms (84%)
    (4096, 768, 768, "NN"): ((128, 64, 16, 8, 8), 1, 4),  # fwd attn_proj: 0.143 ms, cuBLAS 0.119 ms (83%)
    (4096, 3072, 768, "NN"): ((128, 128, 16, 8, 8), 1, 2),  # fwd fc: 0.523 ms, cuBLAS 0.408 ms (78%)
    (4096, 768, 3072, "NN"): ((128, 64, 16, 8, 8), 1, 4),  # fwd mlp_proj: 0.529 ms, cuBLAS 0.408 ms (77%)
    (4096, 768, 2304, "NT"): ((128, 64, 16, 8, 8), 1, 4),  # bwd dx qkv: 0.408 ms, cuBLAS 0.323 ms (79%)
    (4096, 768, 768, "NT"): ((128, 64, 16, 8, 8), 1, 4),  # bwd dx attn_proj: 0.145 ms, cuBLAS 0.133 ms (92%)
    (4096, 768, 3072, "NT"): ((128, 64, 16, 8, 8), 1, 4),  # bwd dx fc: 0.540 ms, cuBLAS 0.415 ms (77%)
    (4096, 3072, 768, "NT"): ((128, 128, 16, 8, 8), 1, 2),  # bwd dx mlp_proj: 0.533 ms, cuBLAS 0.391 ms (73%)
    (768, 2304, 4096, "TN"): ((128, 128, 16, 8, 8), 6, 2),  # bwd dw qkv: 0.409 ms, cuBLAS 0.317 ms (77%)
    (768, 768, 4096, "TN"): ((128, 128, 16, 8, 8), 7, 2),  # bwd dw attn_proj: 0.151 ms, cuBLAS 0.108 ms (72%)
    (768, 3072, 4096, "TN"): ((128, 64, 16, 8, 8), 5, 4),  # bwd dw fc: 0.544 ms, cuBLAS 0.408 ms (75%)
    (3072, 768, 4096, "TN"): ((128, 64, 16, 8, 8), 5, 4),  # bwd dw mlp_proj: 0.544 ms, cuBLAS 0.409 ms (75%)
    (4096, 50257, 768, "NT"): ((128, 128, 16, 8, 8), 1, 2),  # head logits: 8.288 ms, cuBLAS 6.210 ms (75%)
    (4096, 768, 50257, "NN"): ((128, 128, 16, 8, 8), 50, 2),  # head dlnf (k_chunk=1024): 8.560 ms, cuBLAS 6.226 (73%)
    (50257, 768, 4096, "TN"): ((128, 128, 16, 8, 8), 1, 2),  # head dwte: 8.233 ms, cuBLAS 5.959 ms (72%)
}


# Register caps (ptxas -maxrregcount) per product, where the sweep found one faster; none elsewhere.
TUNED_REGS: dict[tuple[int, int, int, str], int] = {}


def fast_tile(M: int, N: int, layout: str) -> tuple:
    """Tile of the fast kernel by rule: 128x128 when that makes >= 2 waves of blocks, else 128x64."""
    if SIMULATOR:
        return FAST_SIM_TILE
    if ceil_div(M, FAST_TILE[0]) * ceil_div(N, FAST_TILE[1]) >= 2 * SMS:
        return FAST_TILE
    return FAST_TILE_NARROW


def split_k(M: int, N: int, K: int, tile: tuple) -> int:
    """How many K slices by rule: enough to give ~2 waves of blocks, each slice >= MIN_SPLIT_K terms."""
    if SIMULATOR:
        return 1
    blocks = ceil_div(M, tile[0]) * ceil_div(N, tile[1])
    if blocks >= 2 * SMS:
        return 1
    return max(1, min(ceil_div(2 * SMS, blocks), K // MIN_SPLIT_K))


def fast_config(M: int, N: int, K: int, layout: str) -> tuple[tuple, int, int]:
    """(tile, splits, unroll) of the fast kernel for one product: the measured best (`TUNED`), else the rules."""
    if not SIMULATOR and (M, N, K, layout) in TUNED:
        return TUNED[(M, N, K, layout)]
    tile = fast_tile(M, N, layout)
    return tile, split_k(M, N, K, tile), FAST_UNROLL


@device
def gelu_tanh(x):
    """GPT-2's GELU, tanh form (the same formula as kernels/gelu.py)."""
    u = SQRT_2_OVER_PI * (x + GELU_COEF * x * x * x)
    return float32(0.5) * x * (float32(1.0) + math.tanh(u))


# ----------------------------------------------------------------------------- 16-byte global loads
# `load4` (numba_impl/vector.py): one 16-byte load of arr[i : i + 4] (ld.global.v4.f32), the promise that
# &arr[i] is 16-byte aligned made explicit. The launcher takes the vector path only when both operands'
# pointers are 16-byte aligned and their rows are a multiple of 4 floats long (`vec_ok`), and the kernel
# calls it only at indices that are multiples of 4.


def _log2(n: int) -> int:
    """log2 of a power of two, else -1."""
    return n.bit_length() - 1 if n > 0 and n & (n - 1) == 0 else -1


@functools.cache
def fast_matmul_kernel(layout: str, BM: int, BN: int, BK: int, TM: int, TN: int, epilogue: str = "none",
                       kc: int = 0, fuse_dbias: bool = False, vec_a: bool = False, vec_b: bool = False,
                       unroll: int = 1, regs: int = 0):  # fmt: skip
    """Build the fast kernel for one layout, tile shape, epilogue, K-chunk and bias-gradient choice.

    vec_a, vec_b: interior tiles load A (B) 16 bytes at a time (`load4`; only for an operand that is
    16-byte aligned with rows a multiple of 4 floats: the launcher decides, per operand). unroll (1, 2 or 4): the
    k loop over a shared slice does this many k per iteration, written out, so that the compiler
    can issue the next k's shared loads during this k's FMAs. regs: a register cap (ptxas
    -maxrregcount; 0 = none): 128 lets two blocks of 256 threads share a multiprocessor.

    Kernel arguments: (out, a, b, bias, out2, extra, dbias, M, N, K, k_start, k_stop, k_split,
    accumulate, has_bias). Block z of the grid sums K over [k_start + z*k_split, ... + k_split) and
    writes its slice z of `out` (out + z*M*N): the launcher passes a workspace when gridDim.z > 1."""
    if layout not in LAYOUTS:
        raise ValueError(f"matmul layout must be one of {LAYOUTS}, got {layout!r}")
    if epilogue not in EPILOGUES:
        raise ValueError(f"matmul epilogue must be one of {EPILOGUES}, got {epilogue!r}")
    if fuse_dbias and layout != "TN":
        raise ValueError("the fused bias gradient needs the TN layout (B = dout stored (K, N))")
    TX, TY = BN // TN, BM // TM  # threads along N, along M
    TX_SHIFT = _log2(TX)
    THREADS = TX * TY
    HM, HN = TM // 2, TN // 2
    # runs of VEC floats: how many lie side by side along each operand's contiguous axis (a power of two)
    A_RUN_COLS = (BM if layout[0] == "T" else BK) // VEC
    B_RUN_COLS = (BK if layout[1] == "T" else BN) // VEC
    A_SHIFT, B_SHIFT = _log2(A_RUN_COLS), _log2(B_RUN_COLS)
    ok = TM % 2 == 0 and TN % 2 == 0 and BM % TM == 0 and BN % TN == 0 and BK % VEC == 0 and BM % VEC == 0
    ok = ok and BN % VEC == 0 and (BM * BK) % (VEC * THREADS) == 0 and (BN * BK) % (VEC * THREADS) == 0
    ok = ok and THREADS % (BN // VEC) == 0 and (kc == 0 or kc % BK == 0) and TX_SHIFT >= 0
    ok = ok and A_SHIFT >= 0 and B_SHIFT >= 0 and unroll in (1, 2, 4) and BK % unroll == 0
    if not ok:
        raise ValueError(f"fast matmul tile {(BM, BN, BK, TM, TN)} (kc={kc}, unroll={unroll}) does not split "
                         "evenly over its threads")  # fmt: skip
    A_RUNS = BM * BK // (VEC * THREADS)  # runs of VEC floats each thread stages per K step
    B_RUNS = BN * BK // (VEC * THREADS)
    A_T, B_T = layout[0] == "T", layout[1] == "T"
    EPI = _EPI_CODE[epilogue]
    KC_STEPS = kc // BK
    VEC_A, VEC_B = bool(vec_a), bool(vec_b)
    UNROLL = unroll
    DB_ROWS = THREADS // (BN // VEC)  # threads that stage the same columns of B
    HALF_M, HALF_N = BM // 2, BN // 2
    A_ROW, B_ROW = BM + FAST_PAD, BN + FAST_PAD  # shared row lengths (floats)
    A_STAGE, B_STAGE = A_RUNS * VEC, B_RUNS * VEC  # floats each thread holds for the next K step
    RED_ROWS, RED_COLS = (DB_ROWS, BN) if fuse_dbias else (1, 1)  # shared scratch of the bias-gradient sums

    # Staging: thread tid moves runs e = tid + run*THREADS; run e covers VEC consecutive floats along the
    # operand's contiguous axis, at (e & (RUN_COLS - 1)) * VEC on that axis and e >> SHIFT on the other.
    # (Bit operations on a non-negative tid: the compiler sees non-negative, 16-byte aligned offsets.)
    @device
    def load_run(stage, s, src, lead, row0, col0, row_end, col_end, checked, vec):
        """VEC floats of a row-major (rows, lead) operand at (row0, col0 .. col0 + VEC) into stage[s:s+VEC];
        checked: zero outside row < row_end, col < col_end; vec: one 16-byte load (unchecked only)."""
        i = row0 * lead + col0
        if not checked:
            if vec:
                v0, v1, v2, v3 = load4(src, i)
                stage[s] = v0
                stage[s + 1] = v1
                stage[s + 2] = v2
                stage[s + 3] = v3
            else:
                for j in range(VEC):
                    stage[s + j] = src[i + j]
        else:
            for j in range(VEC):
                stage[s + j] = src[i + j] if row0 < row_end and col0 + j < col_end else float32(0.0)

    @device
    def load_a(stage, a, M, K, m0, k0, k_end, tid, checked):
        """A[m0:m0+BM, k0:k0+BK] into registers, runs along A's contiguous axis."""
        for run in range(A_RUNS):
            e = tid + run * THREADS
            along, across = (e & (A_RUN_COLS - 1)) * VEC, e >> A_SHIFT
            if A_T:  # stored (K, M): runs along m
                load_run(stage, run * VEC, a, M, k0 + across, m0 + along, k_end, M, checked, VEC_A)
            else:  # stored (M, K): runs along k
                load_run(stage, run * VEC, a, K, m0 + across, k0 + along, M, k_end, checked, VEC_A)

    @device
    def load_b(stage, b, N, K, n0, k0, k_end, tid, checked):
        """B[k0:k0+BK, n0:n0+BN] into registers, runs along B's contiguous axis."""
        for run in range(B_RUNS):
            e = tid + run * THREADS
            along, across = (e & (B_RUN_COLS - 1)) * VEC, e >> B_SHIFT
            if B_T:  # stored (N, K): runs along k
                load_run(stage, run * VEC, b, K, n0 + across, k0 + along, N, k_end, checked, VEC_B)
            else:  # stored (K, N): runs along n
                load_run(stage, run * VEC, b, N, k0 + across, n0 + along, k_end, N, checked, VEC_B)

    @device
    def store_a(a_s, buf, stage, tid):
        for run in range(A_RUNS):
            e = tid + run * THREADS
            along, across = (e & (A_RUN_COLS - 1)) * VEC, e >> A_SHIFT
            for j in range(VEC):
                if A_T:
                    a_s[buf, across, along + j] = stage[run * VEC + j]
                else:  # transposed into a_s[k, m]: the padding spreads a warp's stores over the banks
                    a_s[buf, along + j, across] = stage[run * VEC + j]

    @device
    def store_b(b_s, buf, stage, tid):
        for run in range(B_RUNS):
            e = tid + run * THREADS
            along, across = (e & (B_RUN_COLS - 1)) * VEC, e >> B_SHIFT
            for j in range(VEC):
                if B_T:
                    b_s[buf, along + j, across] = stage[run * VEC + j]
                else:
                    b_s[buf, across, along + j] = stage[run * VEC + j]

    @device
    def fma_k(acc, a_frag, b_frag, a_s, b_s, buf, k, a_col, b_col):
        """acc(TM, TN) += outer product of this thread's fragments of row k of the two shared slices."""
        k = k & (BK - 1)  # visibly in [0, BK): no negative-index fix-up, so the loads stay 16 bytes wide
        for r in range(HM):
            a_frag[r] = a_s[buf, k, a_col + r]
            a_frag[HM + r] = a_s[buf, k, HALF_M + a_col + r]
        for c in range(HN):
            b_frag[c] = b_s[buf, k, b_col + c]
            b_frag[HN + c] = b_s[buf, k, HALF_N + b_col + c]
        for r in range(TM):
            for c in range(TN):
                acc[r, c] += a_frag[r] * b_frag[c]

    options = {"max_registers": regs} if regs else {}

    @kernel(**options)
    def matmul_fast_kernel(out, a, b, bias, out2, extra, dbias, M, N, K, k_start, k_stop, k_split, accumulate,
                           has_bias):  # fmt: skip
        a_s = cuda.shared.array((2, BK, A_ROW), float32, alignment=SHARED_ALIGN)
        b_s = cuda.shared.array((2, BK, B_ROW), float32, alignment=SHARED_ALIGN)
        acc = cuda.local.array((TM, TN), float32)
        total = cuda.local.array((TM, TN), float32)  # kc > 0 only
        a_frag = cuda.local.array(TM, float32)
        b_frag = cuda.local.array(TN, float32)
        a_stage = cuda.local.array(A_STAGE, float32)
        b_stage = cuda.local.array(B_STAGE, float32)
        db_sum = cuda.local.array(VEC, float32)  # fuse_dbias only
        tid = cuda.threadIdx.x & 1023  # bit operations: the compiler sees tid, tx, ty >= 0, so the four
        tx = tid & (TX - 1)  # fragment loads share one aligned address (ld.shared.v4.f32)
        ty = tid >> TX_SHIFT
        a_col, b_col = ty * HM, tx * HN  # this thread's first fragment row of A, column of B
        m0 = cuda.blockIdx.y * BM
        n0 = cuda.blockIdx.x * BN
        z = cuda.blockIdx.z
        k_begin = k_start + z * k_split
        k_end = min(k_stop, k_begin + k_split)
        n_steps = (k_end - k_begin + BK - 1) // BK
        interior = m0 + BM <= M and n0 + BN <= N
        edge = not interior  # loads need bounds checks on every K step
        k_tail = (k_end - k_begin) % BK != 0  # ... or only on the last, partial one
        do_dbias = fuse_dbias and cuda.blockIdx.y == 0
        for r in range(TM):
            for c in range(TN):
                acc[r, c] = float32(0.0)
                total[r, c] = float32(0.0)
        for j in range(VEC):
            db_sum[j] = float32(0.0)

        if n_steps > 0:
            checked = edge or (k_tail and n_steps == 1)
            load_a(a_stage, a, M, K, m0, k_begin, k_end, tid, checked)
            load_b(b_stage, b, N, K, n0, k_begin, k_end, tid, checked)
            store_a(a_s, 0, a_stage, tid)
            store_b(b_s, 0, b_stage, tid)
            if do_dbias:
                for run in range(B_RUNS):
                    for j in range(VEC):
                        db_sum[j] += b_stage[run * VEC + j]
        cuda.syncthreads()

        for step in range(n_steps):
            buf = step & 1
            more = step + 1 < n_steps
            if more:  # the next slice into registers; its loads are in flight during the FMAs below
                k_next = k_begin + (step + 1) * BK
                checked = edge or (k_tail and step + 2 == n_steps)
                load_a(a_stage, a, M, K, m0, k_next, k_end, tid, checked)
                load_b(b_stage, b, N, K, n0, k_next, k_end, tid, checked)
            for k in range(0, BK, UNROLL):
                fma_k(acc, a_frag, b_frag, a_s, b_s, buf, k, a_col, b_col)
                if UNROLL >= 2:
                    fma_k(acc, a_frag, b_frag, a_s, b_s, buf, k + 1, a_col, b_col)
                if UNROLL == 4:
                    fma_k(acc, a_frag, b_frag, a_s, b_s, buf, k + 2, a_col, b_col)
                    fma_k(acc, a_frag, b_frag, a_s, b_s, buf, k + 3, a_col, b_col)
            if KC_STEPS > 0 and (step + 1) % KC_STEPS == 0:  # close a chunk of kc terms
                for r in range(TM):
                    for c in range(TN):
                        total[r, c] += acc[r, c]
                        acc[r, c] = float32(0.0)
            if more:
                store_a(a_s, 1 - buf, a_stage, tid)
                store_b(b_s, 1 - buf, b_stage, tid)
                if do_dbias:
                    for run in range(B_RUNS):
                        for j in range(VEC):
                            db_sum[j] += b_stage[run * VEC + j]
            cuda.syncthreads()

        if do_dbias:  # column sums of this block's B rows: DB_ROWS threads hold partial sums of each column
            col = (tid % (BN // VEC)) * VEC
            red = cuda.shared.array((RED_ROWS, RED_COLS), float32)
            for j in range(VEC):
                red[tid // (BN // VEC), col + j] = db_sum[j]
            cuda.syncthreads()
            for n in range(tid, BN, THREADS):
                if n0 + n < N:
                    s = float32(0.0)
                    for row in range(DB_ROWS):
                        s += red[row, n]
                    cuda.atomic.add(dbias, n0 + n, s)

        out_base = z * M * N
        for r in range(TM):
            gm = m0 + (r // HM) * HALF_M + ty * HM + r % HM
            for c in range(TN):
                gn = n0 + (c // HN) * HALF_N + tx * HN + c % HN
                if interior or (gm < M and gn < N):
                    value = acc[r, c]
                    if KC_STEPS > 0:
                        value += total[r, c]
                    if has_bias:
                        value += bias[gn]
                    i = gm * N + gn
                    if accumulate:
                        value += out[out_base + i]
                    out[out_base + i] = value
                    if EPI == 1:
                        out2[i] = gelu_tanh(value)
                    elif EPI == 2:
                        out2[i] = extra[i] + value

    return matmul_fast_kernel


@kernel
def splitk_reduce_kernel(out, partials, bias, out2, extra, M, N, splits, accumulate, has_bias, epilogue):
    """out(M, N) (+)= sum over z of partials[z] (+ bias), in the order z = 0, 1, ...; then the epilogue."""
    i = cuda.grid(1)
    MN = M * N
    if i < MN:
        value = float32(0.0)
        for z in range(splits):
            value += partials[z * MN + i]
        if has_bias:
            value += bias[i % N]
        if accumulate:
            value += out[i]
        out[i] = value
        if epilogue == 1:
            out2[i] = gelu_tanh(value)
        elif epilogue == 2:
            out2[i] = extra[i] + value


# ----------------------------------------------------------------------------- launchers
def splitk_workspace(n: int):
    """A device buffer of >= n floats for split-K partial sums, allocated once and grown when needed
    (allocate it before capturing a CUDA graph: the first call with the largest shape does)."""
    return scratch.buffer("matmul split-K", n)


KERNELS = ("fast", "tiled", "naive")


def matmul(out, a, b, M, N, K, layout="NN", bias=None, accumulate=False, naive=False, tile=None, k_chunk=None,
           kernel=None, splits=None, epilogue="none", out2=None, extra=None, dbias=None, vec=None,
           unroll=None, regs=None):  # fmt: skip
    """The standalone launcher: out(M, N) (+)= A @ B (+ bias), A and B stored as `layout` says.

    out, a, b, bias: flat float32 device arrays. accumulate=True adds into `out`.
    kernel: "fast" (default), "tiled" (the previous kernel, kept for comparison) or "naive" (also
    naive=True). tile: (BM, BN, BK, TM, TN) of the fast kernel (default `fast_config`), or of the
    tiled kernel; a 6-tuple (..., interleave) selects the tiled kernel.
    epilogue (fast kernel): "gelu" also writes out2 = gelu(out); "residual" writes out2 = extra + out.
    dbias (fast kernel, layout TN): dbias(N) += column sums of B, fused into the product's loads.
    splits (fast kernel): K in this many slices, one launch plus a reduction (default `fast_config`).
    With k_chunk, slices of <= k_chunk terms need no chunks in registers (a kernel with half the
    accumulators), at the price of a workspace of splits * M * N floats.
    vec (fast kernel): 16-byte global loads; None (default) = for each operand `vec_ok` allows, False = never.
    unroll (fast kernel): k per iteration of the inner loop (1, 2 or 4; default `fast_config`).
    regs (fast kernel): a register cap for ptxas (more blocks per multiprocessor; default `TUNED_REGS`, else none).
    k_chunk: keep each float32 running sum to at most this many terms of K. Each output is otherwise
    one float32 register summed over all of K, whose rounding error grows like sqrt(K) * eps: at
    K = 50,257 (the head's backward, dlnf = dlogits @ wte) that is ~1e-5 relative, above the project's
    float32 gradient ceiling; chunks of 1024 bring it to ~sqrt(1024 + K/1024) * eps. The fast kernel
    does it in registers in one launch; the tiled and naive kernels launch once per chunk."""
    if layout not in LAYOUTS:
        raise ValueError(f"matmul layout must be one of {LAYOUTS}, got {layout!r}")
    if kernel is None:
        kernel = "naive" if naive else ("tiled" if tile is not None and len(tile) == 6 else "fast")
    if kernel not in KERNELS:
        raise ValueError(f"matmul kernel must be one of {KERNELS}, got {kernel!r}")
    if epilogue not in EPILOGUES:
        raise ValueError(f"matmul epilogue must be one of {EPILOGUES}, got {epilogue!r}")
    if epilogue != "none" and (out2 is None or (epilogue == "residual" and extra is None)):
        raise ValueError(f"matmul epilogue {epilogue!r} needs out2" + (" and extra" if epilogue == "residual" else ""))
    if dbias is not None and layout != "TN":
        raise ValueError("matmul: the fused bias gradient (dbias) needs the TN layout")
    has_bias = bias is not None
    bias = bias if has_bias else scratch.dummy()
    if kernel == "fast":
        _matmul_fast(out, a, b, M, N, K, layout, bias, has_bias, accumulate, tile, k_chunk, splits, epilogue,
                     out2, extra, dbias, vec, unroll, regs)  # fmt: skip
        return
    _matmul_per_chunk(out, a, b, M, N, K, layout, bias, has_bias, accumulate, kernel == "naive", tile, k_chunk)
    if epilogue != "none":  # the naive and tiled kernels have no fused epilogue: an elementwise pass
        _elementwise_epilogue(out, out2, extra, M, N, epilogue)
    if dbias is not None:
        bias_backward(dbias, b, K, N, naive=kernel == "naive")


def vec_ok(layout: str, a, b, M: int, N: int, K: int) -> tuple[bool, bool]:
    """Can the fast kernel read A, and B, 16 bytes at a time? The operand's pointer 16-byte aligned and
    its rows (the stored contiguous axis) a multiple of 4 floats, so that every run of 4 floats the
    kernel loads starts on a 16-byte boundary. GPT-2's activations and weights are (C = 768, and every
    tensor of the model's flat parameter and gradient buffers has a multiple of 4 elements); the
    logits' rows (V = 50,257 floats) are not: dlogits takes scalar loads."""
    lead_a = M if layout[0] == "T" else K
    lead_b = K if layout[1] == "T" else N
    return lead_a % VEC == 0 and aligned16(a), lead_b % VEC == 0 and aligned16(b)


def _matmul_fast(out, a, b, M, N, K, layout, bias, has_bias, accumulate, tile, k_chunk, splits, epilogue, out2,
                 extra, dbias, vec=None, unroll=None, regs=None):  # fmt: skip
    if tile is None:
        tile, tuned_splits, tuned_unroll = fast_config(M, N, K, layout)
        splits = tuned_splits if splits is None else splits
        unroll = tuned_unroll if unroll is None else unroll
        regs = TUNED_REGS.get((M, N, K, layout), 0) if regs is None and not SIMULATOR else regs
    BM, BN, BK, TM, TN = tile
    kc = ceil_div(int(k_chunk), BK) * BK if k_chunk else 0
    splits = max(1, int(splits if splits is not None else split_k(M, N, K, (BM, BN))))
    k_split = ceil_div(ceil_div(max(K, 1), splits), BK) * BK  # slices start on a BK boundary
    splits = ceil_div(max(K, 1), k_split)
    if kc and k_split <= int(k_chunk):  # each slice's running sum is short enough: no chunks in registers
        kc = 0
    vec_a, vec_b = vec_ok(layout, a, b, M, N, K) if vec is not False else (False, False)
    unroll = FAST_UNROLL if unroll is None else int(unroll)
    fn = fast_matmul_kernel(layout, BM, BN, BK, TM, TN, epilogue if splits == 1 else "none", kc, dbias is not None,
                            vec_a, vec_b, min(unroll, BK), int(regs or 0))  # fmt: skip
    threads = (BM // TM) * (BN // TN)
    grid = (ceil_div(N, BN), ceil_div(M, BM), splits)
    out2_ = out2 if out2 is not None else scratch.dummy()
    extra_ = extra if extra is not None else scratch.dummy()
    dbias_ = dbias if dbias is not None else scratch.dummy()
    if splits == 1:
        fn[grid, threads](out, a, b, bias, out2_, extra_, dbias_, M, N, K, 0, K, k_split, accumulate, has_bias)
        return
    ws = splitk_workspace(splits * M * N)
    fn[grid, threads](ws, a, b, bias, out2_, extra_, dbias_, M, N, K, 0, K, k_split, False, False)
    t = block_size(256, 32)
    splitk_reduce_kernel[ceil_div(M * N, t), t](out, ws, bias, out2_, extra_, M, N, splits, accumulate, has_bias,
                                                _EPI_CODE[epilogue])  # fmt: skip


def _matmul_per_chunk(out, a, b, M, N, K, layout, bias, has_bias, accumulate, naive, tile, k_chunk):
    """The naive and tiled kernels: one launch per chunk of K, each adding its partial to `out`."""
    if naive:
        threads = block_size(16, 4)
        grid = (ceil_div(N, threads), ceil_div(M, threads))
        launch = lambda k0, k1, acc, with_bias: matmul_naive_kernel[grid, (threads, threads)](  # noqa: E731
            out, a, b, bias, M, N, K, k0, k1, *_strides(layout, M, N, K), acc, with_bias
        )
    else:
        tile = tile or default_tile(M, N, layout)
        BM, BN, BK, TM, TN = tile[:5]
        fn = tiled_matmul_kernel(layout, *tile)
        grid = (ceil_div(N, BN), ceil_div(M, BM))
        launch = lambda k0, k1, acc, with_bias: fn[grid, (BM // TM) * (BN // TN)](  # noqa: E731
            out, a, b, bias, M, N, K, k0, k1, acc, with_bias
        )
    step = K if not k_chunk else max(1, int(k_chunk))
    if not naive:
        step = ceil_div(step, BK) * BK  # chunks start on a tile boundary
    for i, k0 in enumerate(range(0, max(K, 1), step)):
        # the first chunk writes (or accumulates, if asked) and adds the bias; the others accumulate
        launch(k0, min(K, k0 + step), accumulate or i > 0, has_bias and i == 0)


@kernel
def epilogue_kernel(out, out2, extra, n, epilogue):
    """The fused epilogues as their own pass (for the naive and tiled kernels): gelu or residual."""
    i = cuda.grid(1)
    if i < n:
        if epilogue == 1:
            out2[i] = gelu_tanh(out[i])
        elif epilogue == 2:
            out2[i] = extra[i] + out[i]


def _elementwise_epilogue(out, out2, extra, M, N, epilogue):
    t = block_size(256, 32)
    extra = extra if extra is not None else scratch.dummy()
    epilogue_kernel[ceil_div(M * N, t), t](out, out2, extra, M * N, _EPI_CODE[epilogue])


@kernel
def bias_backward_kernel(dbias, dout, M, N, rows_per_thread):
    """One thread per (column, chunk of rows): dbias[j] += sum of dout[rows of the chunk, j]."""
    i = cuda.grid(1)
    n_chunks = (M + rows_per_thread - 1) // rows_per_thread
    if i < n_chunks * N:
        j = i % N
        chunk = i // N
        acc = float32(0.0)
        for row in range(chunk * rows_per_thread, min(M, (chunk + 1) * rows_per_thread)):
            acc += dout[row * N + j]
        cuda.atomic.add(dbias, j, acc)


ROWS_PER_BIAS_CHUNK = 64


def bias_backward(dbias, dout, M, N, naive=False):
    """dbias(N) += column sums of dout(M, N). naive: one thread per column over all rows (deterministic)."""
    chunk = M if naive else block_size(ROWS_PER_BIAS_CHUNK, 4)
    threads = block_size(256, 32)
    bias_backward_kernel[ceil_div(ceil_div(M, chunk) * N, threads), threads](dbias, dout, M, N, chunk)


def matmul_forward(out, inp, weight, bias, BT, C, OC, naive=False, gelu_out=None, residual=None, residual_out=None):
    """out(BT, OC) = inp(BT, C) @ weight(C, OC) + bias(OC); bias may be None.
    gelu_out(BT, OC): also write gelu(out) (out keeps the pre-activation). residual(BT, OC) with
    residual_out(BT, OC): also write residual_out = residual + out. Fused into the store of the fast
    kernel; a separate elementwise pass after the naive one."""
    if gelu_out is not None:
        matmul(out, inp, weight, BT, OC, C, "NN", bias=bias, naive=naive, epilogue="gelu", out2=gelu_out)
    elif residual_out is not None:
        matmul(out, inp, weight, BT, OC, C, "NN", bias=bias, naive=naive, epilogue="residual", out2=residual_out,
               extra=residual)  # fmt: skip
    else:
        matmul(out, inp, weight, BT, OC, C, "NN", bias=bias, naive=naive)


def matmul_backward(dinp, dweight, dbias, dout, inp, weight, BT, C, OC, naive=False, accumulate_dinp=False):
    """Backward of `matmul_forward`. dinp(BT, C) = dout @ weight^T (or += with accumulate_dinp);
    dweight(C, OC) += inp^T @ dout; dbias(OC) += column sums of dout (skipped when dbias is None;
    fused into the weight gradient's kernel unless naive)."""
    matmul(dinp, dout, weight, BT, C, OC, "NT", accumulate=accumulate_dinp, naive=naive)
    if naive:
        matmul(dweight, inp, dout, C, OC, BT, "TN", accumulate=True, naive=True)
        if dbias is not None:
            bias_backward(dbias, dout, BT, OC, naive=True)
    else:
        matmul(dweight, inp, dout, C, OC, BT, "TN", accumulate=True, dbias=dbias)
