"""Matrix multiply with bias: out(M, N) [+]= A(M, K) @ B(K, N) [+ bias(N)].

Every linear layer of GPT-2 is one of three layouts of this product (flat row-major storage):

    "NN"  A stored (M, K), B stored (K, N)   forward x @ W;  lm-head backward dlogits @ wte
    "NT"  A stored (M, K), B stored (N, K)   lm head x @ wte^T;  backward dout @ W^T
    "TN"  A stored (K, M), B stored (K, N)   weight gradient x^T @ dout

A linear layer y = x @ W + b with x (BT, C), W (C, OC):
    forward    y  = x @ W + b                      NN
    backward   dx = dy @ W^T                       NT   (dx (BT, C))
               dW += x^T @ dy                      TN   (dW (C, OC), accumulated)
               db += column sums of dy             `bias_backward`

Two kernels compute the product:
- naive: one thread per output element, a K-long dot product straight from global memory;
- tiled: a block computes a BM x BN tile of `out` (128x128 or 64x64, see `default_tile`),
  stepping over K in slices of BK that the block stages in shared memory; each thread keeps a
  TM x TN sub-tile of accumulators in registers and its rows/columns are strided by the thread
  grid (row ty + r * BM/TM), so shared-memory reads are conflict-free and global stores
  coalesce. Tile sizes are compile-time constants (the kernel is built per layout and tile
  shape by `tiled_matmul_kernel`).
Accumulation is float32 in both; the order of the K sum differs, nothing else.
"""

from __future__ import annotations

import functools

import numpy as np

from numba_impl._compat import SIMULATOR, block_size, ceil_div, cuda, float32, kernel

LAYOUTS = ("NN", "NT", "TN")

# (BM, BN, BK, TM, TN). On a GPU both tiles use 256 threads. Chosen by a sweep on an H100 at the
# GPT-2 124M shapes (tests/numba_impl/gpu_report.py, section "sweep"): the 128x128 tile wins when
# the output has >= ~2 waves of such tiles (2 x 132 SMs), else the 64x64 tile keeps every SM busy.
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


# ----------------------------------------------------------------------------- launchers
_NO_BIAS = {}


def _dummy_bias():
    """A 1-element device array to pass where a kernel takes a bias but none is used."""
    if "array" not in _NO_BIAS:
        _NO_BIAS["array"] = cuda.to_device(np.zeros(1, dtype=np.float32))
    return _NO_BIAS["array"]


def matmul(out, a, b, M, N, K, layout="NN", bias=None, accumulate=False, naive=False, tile=None, k_chunk=None):
    """The standalone launcher: out(M, N) (+)= A @ B (+ bias), A and B stored as `layout` says.

    out, a, b, bias: flat float32 device arrays. accumulate=True adds into `out`.
    tile: (BM, BN, BK, TM, TN[, interleave]) for the tiled kernel (default: `default_tile`).
    k_chunk: sum over K in chunks of this many terms, one launch per chunk, each chunk's partial sum
    added to `out` (split-K). Each output is otherwise one float32 register summed over all of K,
    whose rounding error grows like sqrt(K) * eps: at K = 50,257 (the head's backward,
    dlnf = dlogits @ wte) that is ~1e-5 relative, above the project's float32 gradient ceiling.
    Chunks of 1024 bring it to ~sqrt(1024 + K/1024) * eps."""
    if layout not in LAYOUTS:
        raise ValueError(f"matmul layout must be one of {LAYOUTS}, got {layout!r}")
    has_bias = bias is not None
    bias = bias if has_bias else _dummy_bias()
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


def matmul_forward(out, inp, weight, bias, BT, C, OC, naive=False):
    """out(BT, OC) = inp(BT, C) @ weight(C, OC) + bias(OC); bias may be None."""
    matmul(out, inp, weight, BT, OC, C, "NN", bias=bias, naive=naive)


def matmul_backward(dinp, dweight, dbias, dout, inp, weight, BT, C, OC, naive=False, accumulate_dinp=False):
    """Backward of `matmul_forward`. dinp(BT, C) = dout @ weight^T (or += with accumulate_dinp);
    dweight(C, OC) += inp^T @ dout; dbias(OC) += column sums of dout (skipped when dbias is None)."""
    matmul(dinp, dout, weight, BT, C, OC, "NT", accumulate=accumulate_dinp, naive=naive)
    matmul(dweight, inp, dout, C, OC, BT, "TN", accumulate=True, naive=naive)
    if dbias is not None:
        bias_backward(dbias, dout, BT, OC, naive=naive)
