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
  (register-prefetch double buffering: their latency hides behind the mma work); with STAGES = 2
  the tiles exist twice, so the next slice goes into the other copy and one barrier per slice
  suffices; blocks wholly inside the matrices load without bounds checks (but on a partial last slice);
- the tiles are flat, 16-byte aligned and laid out so that a lane reads its fragment values with
  8- or 16-byte loads (mma.load_f32x2 / load_f32x4; `shared_layout`): an operand stored contiguous
  along K (A in NN/NT, B in NT) as BK/8 sub-tiles [BMN][8] with k = t + 4h stored at 2t + h (a
  lane's (k = t, k = t + 4) pair is one 8-byte word), one stored contiguous along M or N (A in TN,
  B in NN/TN) as [BK][BMN + 8] with, in each group of 32 columns, column 8v + g stored at 4g + v
  (the four columns a lane of row group g needs are one 16-byte word); the pads keep both the
  fragment reads and the staging stores on 32 different banks;
  SMEM="fragment" (opt-in, `a_slot` / `b_slot`) instead stores each lane's whole fragment in the
  mma's register order, one 16-byte word per A fragment and per two B fragments;
- each thread's staging positions are fixed for the whole K loop (computed once), only the stage
  offset and k0 change per slice;
- per 8-wide k step each warp reads its A fragments (4 hi + 4 lo values per MI) and B fragments
  (2 hi + 2 lo per NI) from shared memory and issues 3 mma per (MI, NI) pair.
Accumulation: `accumulate_mode="separate"` (the default) runs the three mma of one k step into a
zero accumulator and adds that partial sum to the running total with an ordinary float32 add;
"chained" passes the running total through the tensor core as C. Measured on an H200
(docs/results/numba-3xtf32-h200-run2.json), chained leaves 7e-6 to 3e-5 relative error at K = 3,072 to
50,257 (above the project's 1e-5 gradient ceiling), separate 4e-7 to 1e-6, as cuBLAS float32 does:
the tensor core's own addition into C rounds less accurately than float32's round-to-nearest (we
found no promise of IEEE rounding for it), so the long running sum must stay out of it.
Long K: `k_chunk` sums K in chunks, one launch each, as kernels/matmul.py's tiled kernel does.
"""

from __future__ import annotations

import functools
import math

from numba_impl import scratch
from numba_impl._compat import SIMULATOR, ceil_div, cuda, float32, kernel
from numba_impl.kernels.matmul import bias_backward
from numba_impl.mma import load_f32x2, load_f32x4, mma_tf32_m16n8k8, tf32_round

# (WARPS_M, WARPS_N, MI, NI, BK, STAGES): BM = WARPS_M * MI * 16, BN = WARPS_N * NI * 8; STAGES shared
# copies of the tiles (2: one barrier per K slice; 1: two). The default was the fastest tile of the
# previous kernel's sweep (docs/results/numba-3xtf32-h200-run2.json). On this kernel
# (docs/results/numba-3xtf32-h200.json) it ran fc forward in 937 us and the logits in 11,010 us; the
# best of the sweep, 880 us with (2, 2, 4, 4, 16, 1) and 10,772 us with (2, 2, 4, 4, 8, 2), are 6% and
# 2% faster in one run each, and the TN shape of the sweep was not reached: kept until measured again.
GPU_TILE = (2, 2, 2, 4, 16, 2)  # 64 x 64, 4 warps of 32 x 32, 128 threads, 132-135 registers, 33-36 KiB shared
SWEEP_TILES = (  # each fits the 48 KiB of static shared memory and compiles without spills or stack (ptxas, sm_90)
    (2, 2, 2, 4, 16, 2, "fragment"),  # the default tile with fragment-native shared tiles (SMEM="fragment")
    (2, 2, 4, 4, 16, 1, "fragment"),  # 128 x 64, 4 warps of 64 x 32, fragment-native
    (2, 2, 2, 4, 8, 2),  # 64 x 64, 4 warps of 32 x 32, BK = 8
    (2, 2, 2, 4, 32, 1),  # the same, BK = 32, one stage
    (4, 2, 2, 4, 8, 2),  # 128 x 64, 8 warps of 32 x 32
    (2, 4, 2, 4, 8, 2),  # 64 x 128, 8 warps of 32 x 32
    (2, 2, 4, 4, 8, 2),  # 128 x 64, 4 warps of 64 x 32 (each fragment read feeds twice the mma)
    (2, 2, 4, 4, 16, 1),  # the same, BK = 16, one stage
    (2, 2, 2, 8, 16, 1),  # 64 x 128, 4 warps of 32 x 64
)
SIM_TILE = (1, 1, 4, 4, 8, 2)  # 64 x 32, one warp: the simulator runs one OS thread per CUDA thread
ACCUMULATE_MODES = ("separate", "chained")
SMEM_LAYOUTS = ("vector", "fragment")
SHARED_ALIGN = None if SIMULATOR else 16  # the simulator refuses the keyword; 16: the fragment reads are 16-byte loads
EPILOGUES = ("none", "gelu", "residual")
SQRT_2_OVER_PI = float32(math.sqrt(2.0 / math.pi))
GELU_COEF = float32(0.044715)
LAYOUTS = ("NN", "NT", "TN")


def tile_shape(tile) -> tuple[int, int, int]:
    """(BM, BN, threads) of a tile tuple."""
    wm, wn, mi, ni = tile[:4]
    return wm * mi * 16, wn * ni * 8, 32 * wm * wn


def default_tile(M: int, N: int, layout: str) -> tuple:
    return SIM_TILE if SIMULATOR else GPU_TILE


def _perm32(col):
    """Position of column `col` of an M- or N-contiguous tile row: within each aligned group of 32
    columns, column v * 8 + g (g = 0..7, v = 0..3) goes to g * 4 + v, so that the four columns a lane
    of fragment row group g needs (v = the (MI, half) or NI index) sit in one 16-byte word."""
    return (col & ~31) | ((col & 7) << 2) | ((col >> 3) & 3)


def _perm8(k):
    """Position of k (0..7) in an 8-wide K group of a K-contiguous tile row: k = t + 4 h goes to 2 t + h,
    so a lane's (k = t, k = t + 4) pair (a0/a2, a1/a3, b0/b1) is one 8-byte word."""
    return ((k & 3) << 1) | ((k >> 2) & 1)


def shared_layout(BMN: int, BK: int, k_contiguous: bool) -> tuple[int, int]:
    """(floats per stage, row pitch) of one operand's hi (or lo) shared tile.

    K-contiguous operand (A in NN/NT, B in NT): BK/8 sub-tiles of [BMN][8] (k permuted by `_perm8`),
    each padded by 256/BK floats so that a warp's staging stores (32 // BK rows of BK) hit 32 banks;
    the row pitch returned is the sub-tile's size. M/N-contiguous operand (A in TN, B in NN/TN):
    [BK][BMN + 8] with columns permuted by `_perm32`; the pad of 8 makes the 16-byte fragment reads
    of a quarter-warp (rows t = 0..3, two row groups) hit 32 different banks."""
    if k_contiguous:
        sub = BMN * 8 + (0 if BK == 8 else 256 // BK)
        return (BK // 8) * sub, sub
    return BK * (BMN + 8), BMN + 8


def a_slot(m: int, k: int, BM: int) -> int:
    """SMEM="fragment": where element (m, k) of a BM x BK slice of A sits in its shared tile.

    For each 8-wide k step and 16-row group the tile holds the 32 lanes' (a0, a1, a2, a3) (mma.py:
    A[g, t], A[g + 8, t], A[g, t + 4], A[g + 8, t + 4]) as 32 consecutive 16-byte words: a lane's whole
    A fragment is one 16-byte read that lands in the four registers the mma takes, in their order."""
    tile = (k >> 3) * (BM // 16) + (m >> 4)
    lane = ((m & 7) << 2) | (k & 3)  # g = m % 8, t = k % 4
    return (tile * 32 + lane) * 4 + ((m >> 3) & 1) + ((k >> 1) & 2)


def b_slot(k: int, n: int, BN: int) -> int:
    """SMEM="fragment": where element (k, n) of a BK x BN slice of B sits: for each 8-wide k step and pair
    of 8-column groups (NI j, j + 1), a lane's (b0, b1) of j then of j + 1 (B[t, g], B[t + 4, g]) are
    one 16-byte word: one read gives two B fragments, each an aligned register pair."""
    tile = (k >> 3) * (BN // 16) + (n >> 4)
    lane = ((n & 7) << 2) | (k & 3)
    return (tile * 32 + lane) * 4 + ((n >> 2) & 2) + ((k >> 2) & 1)


def staged_element(tid: int, load: int, BMN: int, BK: int, threads: int, k_contiguous: bool) -> tuple[int, int]:
    """(row or column in M/N, k) of the element thread `tid` stages in its load-th global load."""
    if k_contiguous:
        return tid // BK + load * (threads // BK), tid % BK
    if threads % BMN == 0:
        return tid % BMN, tid // BMN + load * (threads // BMN)
    per = BMN // threads
    return tid + (load % per) * threads, load // per


def staging_offsets(BMN: int, BK: int, threads: int, k_contiguous: bool, slot) -> tuple[int, ...]:
    """SMEM="fragment": slot(load l) - slot(load 0), the same for every thread (checked here, else the
    tile is refused), so that the kernel stores at one per-thread base plus compile-time offsets."""
    rows = set()
    for tid in range(threads):
        elements = [staged_element(tid, ld, BMN, BK, threads, k_contiguous) for ld in range(BMN * BK // threads)]
        slots = [slot(*e) for e in elements]
        rows.add(tuple(x - slots[0] for x in slots))
    if len(rows) != 1:
        raise ValueError(f"SMEM='fragment': the staging positions of a {BMN} x {BK} slice over {threads} threads "
                         "are not one base plus fixed offsets")  # fmt: skip
    return rows.pop()


@functools.cache
def matmul_3xtf32_kernel(
    layout: str, WARPS_M: int, WARPS_N: int, MI: int, NI: int, BK: int, STAGES: int = 2, SMEM: str = "vector",
    mode: str = "separate", epilogue: str = "none",
):  # fmt: skip
    """Build the kernel for one layout, tile, shared layout, accumulation mode and epilogue (all
    compile-time constants).

    SMEM: "vector" (`shared_layout`: 8/16-byte reads, the values then moved into the mma's register
    order) or "fragment" (`a_slot` / `b_slot`: each 16-byte read is a lane's fragment in register order).
    epilogue: "none"; "gelu" also writes out2 = gelu(out); "residual" also writes out2 = extra + out."""
    if layout not in LAYOUTS:
        raise ValueError(f"matmul layout must be one of {LAYOUTS}, got {layout!r}")
    if mode not in ACCUMULATE_MODES:
        raise ValueError(f"accumulate_mode must be one of {ACCUMULATE_MODES}, got {mode!r}")
    if epilogue not in EPILOGUES:
        raise ValueError(f"matmul epilogue must be one of {EPILOGUES}, got {epilogue!r}")
    if SMEM not in SMEM_LAYOUTS:
        raise ValueError(f"SMEM must be one of {SMEM_LAYOUTS}, got {SMEM!r}")
    if STAGES not in (1, 2):
        raise ValueError(f"STAGES={STAGES}: one shared stage (two barriers per K slice) or two (one barrier)")
    if BK not in (8, 16, 32):
        raise ValueError(f"BK={BK} must be a multiple of 8 (the mma's k): 8, 16 or 32")
    if MI not in (2, 4) or NI % 4:
        raise ValueError(f"warp tile MI={MI}, NI={NI}: MI 2 or 4, NI a multiple of 4 (16-byte fragment reads)")
    BM, BN, THREADS = tile_shape((WARPS_M, WARPS_N, MI, NI))
    if BM * BK % THREADS or BN * BK % THREADS:
        raise ValueError(f"a {BM}x{BK} / {BN}x{BK} slice must split evenly over {THREADS} threads")
    for bmn in (BM, BN):
        if THREADS % bmn and bmn % THREADS:
            raise ValueError(f"tile side {bmn} and {THREADS} threads: one must divide the other")
    A_LOADS = BM * BK // THREADS
    B_LOADS = BN * BK // THREADS
    A_T = layout[0] == "T"  # A stored (K, M): M-contiguous
    B_T = layout[1] == "T"  # B stored (N, K): K-contiguous
    A_KC, B_KC = not A_T, B_T
    FRAG = SMEM == "fragment"
    if FRAG:  # fragment-native tiles, no padding; A_DELTA[l]: load l's store offset from the thread's base
        A_STAGE, A_PITCH, B_STAGE, B_PITCH = BM * BK, 0, BN * BK, 0
        A_DELTA = staging_offsets(BM, BK, THREADS, A_KC, lambda m, k: a_slot(m, k, BM))
        B_DELTA = staging_offsets(BN, BK, THREADS, B_KC, lambda n, k: b_slot(k, n, BN))
    else:
        A_STAGE, A_PITCH = shared_layout(BM, BK, A_KC)
        B_STAGE, B_PITCH = shared_layout(BN, BK, B_KC)
        A_DELTA, B_DELTA = (0,) * A_LOADS, (0,) * B_LOADS
    MT, NT2 = BM // 16, BN // 16  # SMEM="fragment": tiles per 8-wide k step (A's 16-row groups, B's column pairs)
    A_SHARED, B_SHARED = STAGES * A_STAGE, STAGES * B_STAGE
    RP = THREADS // BK  # K-contiguous staging: rows per pass
    A_PASS = THREADS // BM if THREADS % BM == 0 else 0  # M/N-contiguous staging: K rows per pass (or 0 ...)
    A_PER = BM // THREADS if BM % THREADS == 0 else 0  # ... passes per K row)
    B_PASS = THREADS // BN if THREADS % BN == 0 else 0
    B_PER = BN // THREADS if BN % THREADS == 0 else 0
    CHAINED = mode == "chained"
    GELU = epilogue == "gelu"
    RESIDUAL = epilogue == "residual"

    @kernel
    def matmul_3xtf32(out, a, b, bias, out2, extra, M, N, K, k_start, k_stop, accumulate, has_bias):
        a_hi = cuda.shared.array(A_SHARED, float32, alignment=SHARED_ALIGN)
        a_lo = cuda.shared.array(A_SHARED, float32, alignment=SHARED_ALIGN)
        b_hi = cuda.shared.array(B_SHARED, float32, alignment=SHARED_ALIGN)
        b_lo = cuda.shared.array(B_SHARED, float32, alignment=SHARED_ALIGN)
        a_next = cuda.local.array(A_LOADS, float32)  # the next K slice, in flight while this one is computed
        b_next = cuda.local.array(B_LOADS, float32)
        acc = cuda.local.array((MI, NI, 4), float32)
        fa_hi = cuda.local.array((MI, 4), float32)
        fa_lo = cuda.local.array((MI, 4), float32)
        fb_hi = cuda.local.array((NI, 2), float32)
        fb_lo = cuda.local.array((NI, 2), float32)

        # bit operations: the compiler then knows every index below is >= 0 and drops Numba's
        # negative-index wraparound code from each shared-memory access
        tid = cuda.threadIdx.x & 1023
        lane = tid & 31
        warp = tid >> 5
        g = lane >> 2  # the fragment's row group (mma.py)
        t = lane & 3  # the thread in the group
        wm0 = (warp // WARPS_N) * (MI * 16)  # this warp's rows / columns inside the block tile
        wn0 = (warp % WARPS_N) * (NI * 8)
        m0 = cuda.blockIdx.y * BM
        n0 = cuda.blockIdx.x * BN
        interior = m0 + BM <= M and n0 + BN <= N  # no bounds checks but on a last, partial K slice

        # Per-thread staging geometry, fixed for the whole K loop: for load l the element is
        #   K-contiguous: row (tid // BK + l * RP), k (tid % BK);  stored at ks + l * RP * 8
        #   M/N-contiguous: column c, k row r (see A_PASS / A_PER);  stored at r * PITCH + _perm32(c)
        # (the position helpers _perm8 / _perm32, written out: Numba would need a GPU to compile a call)
        kc = tid % BK
        k_row = tid // BK
        k_perm = ((kc & 3) << 1) | ((kc >> 2) & 1)  # _perm8(kc % 8)
        ks_pos = (kc >> 3) * A_PITCH + k_row * 8 + k_perm  # A's store position when K-contiguous
        kb_pos = (kc >> 3) * B_PITCH + k_row * 8 + k_perm
        a_col = tid % BM if A_PASS else tid  # A's column (M) when M-contiguous, first pass
        a_kr = tid // BM if A_PASS else 0
        b_col = tid % BN if B_PASS else tid
        b_kr = tid // BN if B_PASS else 0
        a_pos = a_kr * A_PITCH + ((a_col & ~31) | ((a_col & 7) << 2) | ((a_col >> 3) & 3))  # _perm32(a_col)
        b_pos = b_kr * B_PITCH + ((b_col & ~31) | ((b_col & 7) << 2) | ((b_col >> 3) & 3))
        # fragment read positions (stage 0, k step 0): see shared_layout and mma.py's lane layout
        fa_pos = (wm0 + g) * 8 + 2 * t if A_KC else t * A_PITCH + wm0 + 4 * g
        fb_pos = (wn0 + g) * 8 + 2 * t if B_KC else t * B_PITCH + wn0 + 4 * g
        # SMEM="fragment": load 0's slot (a_slot / b_slot written out), the first A / B tile of the warp
        am, ak = (k_row, kc) if A_KC else (a_col, a_kr)
        bn, bk = (k_row, kc) if B_KC else (b_col, b_kr)
        a_base = (((ak >> 3) * MT + (am >> 4)) * 32 + (((am & 7) << 2) | (ak & 3))) * 4
        a_base += ((am >> 3) & 1) + ((ak >> 1) & 2)
        b_base = (((bk >> 3) * NT2 + (bn >> 4)) * 32 + (((bn & 7) << 2) | (bk & 3))) * 4
        b_base += ((bn >> 2) & 2) + ((bk >> 2) & 1)
        wa = (warp // WARPS_N) * MI
        wb = (warp % WARPS_N) * (NI // 2)

        for i in range(MI):
            for j in range(NI):
                acc[i, j, 0] = acc[i, j, 1] = acc[i, j, 2] = acc[i, j, 3] = float32(0.0)

        def fetch(k0):  # global -> registers: the K slice at k0 (zero outside the matrices); Numba inlines it
            checked = not interior or k0 + BK > k_stop
            for load in range(A_LOADS):
                if A_KC:
                    gm, gk = m0 + k_row + load * RP, k0 + kc
                elif A_PASS:
                    gm, gk = m0 + a_col, k0 + a_kr + load * A_PASS
                else:
                    gm, gk = m0 + a_col + (load % A_PER) * THREADS, k0 + load // A_PER
                value = float32(0.0)
                if not checked or (gm < M and gk < k_stop):
                    value = a[gk * M + gm] if A_T else a[gm * K + gk]
                a_next[load] = value
            for load in range(B_LOADS):
                if B_KC:
                    gn, gk = n0 + k_row + load * RP, k0 + kc
                elif B_PASS:
                    gn, gk = n0 + b_col, k0 + b_kr + load * B_PASS
                else:
                    gn, gk = n0 + b_col + (load % B_PER) * THREADS, k0 + load // B_PER
                value = float32(0.0)
                if not checked or (gn < N and gk < k_stop):
                    value = b[gn * K + gk] if B_T else b[gk * N + gn]
                b_next[load] = value

        def stage(s):  # registers -> shared stage s, split into TF32 hi and lo; Numba inlines it
            for load in range(A_LOADS):
                if FRAG:
                    p = s * A_STAGE + a_base + A_DELTA[load]
                elif A_KC:
                    p = s * A_STAGE + ks_pos + load * (RP * 8)
                elif A_PASS:
                    p = s * A_STAGE + a_pos + load * (A_PASS * A_PITCH)
                else:
                    p = s * A_STAGE + a_pos + (load // A_PER) * A_PITCH + (load % A_PER) * THREADS
                x = a_next[load]
                hi = tf32_round(x)
                a_hi[p] = hi
                a_lo[p] = tf32_round(x - hi)
            for load in range(B_LOADS):
                if FRAG:
                    p = s * B_STAGE + b_base + B_DELTA[load]
                elif B_KC:
                    p = s * B_STAGE + kb_pos + load * (RP * 8)
                elif B_PASS:
                    p = s * B_STAGE + b_pos + load * (B_PASS * B_PITCH)
                else:
                    p = s * B_STAGE + b_pos + (load // B_PER) * B_PITCH + (load % B_PER) * THREADS
                x = b_next[load]
                hi = tf32_round(x)
                b_hi[p] = hi
                b_lo[p] = tf32_round(x - hi)

        n_steps = (k_stop - k_start + BK - 1) // BK
        if n_steps > 0:
            fetch(k_start)
            stage(0)
        cuda.syncthreads()
        for step in range(n_steps):
            s = step & 1 if STAGES == 2 else 0
            more = step + 1 < n_steps
            if more:  # the next slice's global loads are in flight while the tensor cores work on this one
                fetch(k_start + (step + 1) * BK)
            pa = s * A_STAGE + fa_pos
            pb = s * B_STAGE + fb_pos

            # ---- the slice on the tensor cores: 8-wide k steps
            for kk in range(0, BK, 8):
                if FRAG:  # (a0, a1, a2, a3): one 16-byte read of hi and one of lo per MI
                    for i in range(MI):
                        p = s * A_STAGE + ((kk // 8) * MT + wa + i) * 128 + lane * 4
                        fa_hi[i, 0], fa_hi[i, 1], fa_hi[i, 2], fa_hi[i, 3] = load_f32x4(a_hi, p)
                        fa_lo[i, 0], fa_lo[i, 1], fa_lo[i, 2], fa_lo[i, 3] = load_f32x4(a_lo, p)
                elif A_KC:  # one 8-byte read per (row, k pair): (a0, a2) at row g, (a1, a3) at row g + 8
                    for i in range(MI):
                        p = pa + (kk // 8) * A_PITCH + i * 128
                        fa_hi[i, 0], fa_hi[i, 2] = load_f32x2(a_hi, p)
                        fa_lo[i, 0], fa_lo[i, 2] = load_f32x2(a_lo, p)
                        fa_hi[i, 1], fa_hi[i, 3] = load_f32x2(a_hi, p + 64)
                        fa_lo[i, 1], fa_lo[i, 3] = load_f32x2(a_lo, p + 64)
                else:  # one 16-byte read per k row (t, t + 4) and pair of MI: rows g, g + 8 of both
                    for i2 in range(MI // 2):
                        p = pa + kk * A_PITCH + i2 * 32
                        i = 2 * i2
                        fa_hi[i, 0], fa_hi[i, 1], fa_hi[i + 1, 0], fa_hi[i + 1, 1] = load_f32x4(a_hi, p)
                        fa_lo[i, 0], fa_lo[i, 1], fa_lo[i + 1, 0], fa_lo[i + 1, 1] = load_f32x4(a_lo, p)
                        q = p + 4 * A_PITCH
                        fa_hi[i, 2], fa_hi[i, 3], fa_hi[i + 1, 2], fa_hi[i + 1, 3] = load_f32x4(a_hi, q)
                        fa_lo[i, 2], fa_lo[i, 3], fa_lo[i + 1, 2], fa_lo[i + 1, 3] = load_f32x4(a_lo, q)
                if FRAG:  # (b0, b1) of j and of j + 1: one 16-byte read of hi and one of lo
                    for j2 in range(NI // 2):
                        p = s * B_STAGE + ((kk // 8) * NT2 + wb + j2) * 128 + lane * 4
                        j = 2 * j2
                        fb_hi[j, 0], fb_hi[j, 1], fb_hi[j + 1, 0], fb_hi[j + 1, 1] = load_f32x4(b_hi, p)
                        fb_lo[j, 0], fb_lo[j, 1], fb_lo[j + 1, 0], fb_lo[j + 1, 1] = load_f32x4(b_lo, p)
                elif B_KC:  # (b0, b1) of column g: one 8-byte read
                    for j in range(NI):
                        p = pb + (kk // 8) * B_PITCH + j * 64
                        fb_hi[j, 0], fb_hi[j, 1] = load_f32x2(b_hi, p)
                        fb_lo[j, 0], fb_lo[j, 1] = load_f32x2(b_lo, p)
                else:  # b0 of four NI at k row t: one 16-byte read; b1 at row t + 4
                    for j4 in range(NI // 4):
                        p = pb + kk * B_PITCH + j4 * 32
                        j = 4 * j4
                        fb_hi[j, 0], fb_hi[j + 1, 0], fb_hi[j + 2, 0], fb_hi[j + 3, 0] = load_f32x4(b_hi, p)
                        fb_lo[j, 0], fb_lo[j + 1, 0], fb_lo[j + 2, 0], fb_lo[j + 3, 0] = load_f32x4(b_lo, p)
                        q = p + 4 * B_PITCH
                        fb_hi[j, 1], fb_hi[j + 1, 1], fb_hi[j + 2, 1], fb_hi[j + 3, 1] = load_f32x4(b_hi, q)
                        fb_lo[j, 1], fb_lo[j + 1, 1], fb_lo[j + 2, 1], fb_lo[j + 3, 1] = load_f32x4(b_lo, q)
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
            if STAGES == 2 and more:  # into the other stage: nobody reads it now (the last barrier closed it)
                stage(1 - s)
            cuda.syncthreads()
            if STAGES == 1 and more:  # the only stage: overwritten once every warp is done with it
                stage(0)
                cuda.syncthreads()

        # ---- epilogue: fragment element r of (i, j) is out[row g (+8 for r >= 2), column 2t (+1 for odd r)]
        def store(value, gm, gn):  # an inner function: Numba inlines it
            if gm < M and gn < N:
                if has_bias:
                    value += bias[gn]
                if accumulate:
                    value += out[gm * N + gn]
                out[gm * N + gn] = value
                if GELU:  # GPT-2's GELU, tanh form (kernels/gelu.py)
                    u = SQRT_2_OVER_PI * (value + GELU_COEF * value * value * value)
                    out2[gm * N + gn] = float32(0.5) * value * (float32(1.0) + math.tanh(u))
                if RESIDUAL:
                    out2[gm * N + gn] = extra[gm * N + gn] + value

        # (the four are written out: a loop over r would index `acc` at run time and push it to local memory;
        # for the same reason the rows i are called one by one: NVVM leaves a loop of MI = 4 such rows rolled)
        def store_row(i):
            for j in range(NI):
                gm = m0 + wm0 + i * 16 + g
                gn = n0 + wn0 + j * 8 + 2 * t
                store(acc[i, j, 0], gm, gn)
                store(acc[i, j, 1], gm, gn + 1)
                store(acc[i, j, 2], gm + 8, gn)
                store(acc[i, j, 3], gm + 8, gn + 1)

        store_row(0)
        store_row(1)
        if MI > 2:
            store_row(2)
            store_row(3)

    return matmul_3xtf32


# ----------------------------------------------------------------------------- launchers
def matmul(
    out, a, b, M, N, K, layout="NN", bias=None, accumulate=False, naive=False, tile=None, k_chunk=None,
    epilogue="none", out2=None, extra=None, accumulate_mode="separate",
):  # fmt: skip
    """out(M, N) (+)= A @ B (+ bias) on the tensor cores (3xTF32); the arguments are kernels/matmul.py's.

    tile: (WARPS_M, WARPS_N, MI, NI, BK, STAGES) (default: `default_tile`). k_chunk: split-K, one launch per
    chunk of K, each chunk's partial sum added to `out` in float32 (as kernels/matmul.py's tiled kernel).
    epilogue: "gelu" also writes out2 = gelu(out); "residual" writes out2 = extra + out (fused into the store).
    naive=True is refused: the naive twin of this kernel is kernels/matmul.py's float32 one."""
    if naive:
        raise ValueError("matmul_3xtf32 has no naive version; the naive twin is kernels/matmul.py's float32 kernel")
    if layout not in LAYOUTS:
        raise ValueError(f"matmul layout must be one of {LAYOUTS}, got {layout!r}")
    if epilogue != "none" and (out2 is None or (epilogue == "residual" and extra is None)):
        raise ValueError(f"matmul epilogue {epilogue!r} needs out2" + (" and extra" if epilogue == "residual" else ""))
    has_bias = bias is not None
    bias = bias if has_bias else scratch.dummy()
    out2 = out2 if out2 is not None else scratch.dummy()
    extra = extra if extra is not None else scratch.dummy()
    tile = tuple(tile or default_tile(M, N, layout))
    BM, BN, threads = tile_shape(tile)
    BK = tile[4]
    grid = (ceil_div(N, BN), ceil_div(M, BM))
    step = K if not k_chunk else max(1, int(k_chunk))
    step = ceil_div(step, BK) * BK  # chunks start on a slice boundary
    starts = range(0, max(K, 1), step)
    for i, k0 in enumerate(starts):
        # the first chunk writes (or accumulates, if asked) and adds the bias; the others accumulate;
        # the last one applies the epilogue
        last = i == len(starts) - 1
        fn = matmul_3xtf32_kernel(layout, *tile, mode=accumulate_mode, epilogue=epilogue if last else "none")
        fn[grid, threads](
            out, a, b, bias, out2, extra, M, N, K, k0, min(K, k0 + step), accumulate or i > 0, has_bias and i == 0
        )


def matmul_forward(out, inp, weight, bias, BT, C, OC, naive=False, gelu_out=None, residual=None, residual_out=None):
    """out(BT, OC) = inp(BT, C) @ weight(C, OC) + bias(OC); bias may be None. gelu_out(BT, OC): also
    write gelu(out); residual with residual_out (BT, OC): also write residual_out = residual + out."""
    if gelu_out is not None:
        matmul(out, inp, weight, BT, OC, C, "NN", bias=bias, naive=naive, epilogue="gelu", out2=gelu_out)
    elif residual_out is not None:
        matmul(out, inp, weight, BT, OC, C, "NN", bias=bias, naive=naive, epilogue="residual", out2=residual_out,
               extra=residual)  # fmt: skip
    else:
        matmul(out, inp, weight, BT, OC, C, "NN", bias=bias, naive=naive)


def matmul_backward(dinp, dweight, dbias, dout, inp, weight, BT, C, OC, naive=False, accumulate_dinp=False):
    """Backward of `matmul_forward`: dinp(BT, C) (+)= dout @ weight^T; dweight(C, OC) += inp^T @ dout;
    dbias(OC) += column sums of dout (kernels/matmul.py's bias_backward; skipped when dbias is None)."""
    matmul(dinp, dout, weight, BT, C, OC, "NT", accumulate=accumulate_dinp, naive=naive)
    matmul(dweight, inp, dout, C, OC, BT, "TN", accumulate=True, naive=naive)
    if dbias is not None:
        bias_backward(dbias, dout, BT, OC)
