"""Causal multi-head self-attention, from the packed qkv of c_attn to the merged heads.

Shapes (flat, row-major), HS = C // NH, scale = 1 / sqrt(HS):
    qkv   (B, T, 3C)   q = qkv[..., 0:C], k = qkv[..., C:2C], v = qkv[..., 2C:3C];
                       head h uses the HS columns h*HS .. h*HS+HS-1 of each
    out   (B, T, C)    heads merged: out[b, t, h*HS + d]

    out[t] = sum_{s <= t} softmax_s(scale * q[t] . k[s]) v[s]

Two versions:

naive (as the math reads; allocates B*NH*T*T twice):
    attention_forward_naive   preatt (B,NH,T,T) scores; att (B,NH,T,T) softmax (0 above the diagonal)
    attention_backward_naive  datt, dpreatt (B,NH,T,T) scratch; dqkv (B,T,3C) written

flash (FlashAttention-2 on CUDA cores, online softmax; memory O(B*NH*T)):
    attention_forward_flash   a block owns 64 query rows, walks the keys in tiles of 32 staged in
                              shared memory, keeps a running max m, a running sum l and an
                              un-normalised output per row in registers; stores
                              lse = m + log(l) (B,NH,T) for the backward.
    attention_backward_flash  recomputes p = exp(scale*q.k - lse) instead of reading att:
                              D[t] = dout[t] . out[t];  ds = p * (dout[t].v[s] - D[t])
                              dq pass: a block owns 32 queries, walks the keys (D on the way):
                                  dq[t] = scale * sum_s ds k[s]
                              dk/dv pass: a block owns 32 keys, walks the queries t >= its keys:
                                  dk[s] = scale * sum_t ds q[t];  dv[s] = sum_t p dout[t]
                              registers hold each block's sums: no atomics, deterministic.
                              Opt-in (FlashTiles(fused=True)): one kernel per key block that also
                              adds its share of dq by atomics (5 tile products, not 7; faster,
                              not bitwise repeatable).
Head size and block shape (FlashTiles) are compile-time constants: kernels are built per (HS, tiles)
by `flash_forward_kernel`, `flash_backward_dq_kernel`, `flash_backward_dkv_kernel` and their 16-byte
shared-load versions (`*_vec_kernel`, the defaults); `flash_kernels(HS)` returns the three with the
default shapes of `flash_tiles(HS)`. The register tiling is described above `FlashTiles`.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
from numba import uint32

from numba_impl._compat import SIMULATOR, WARP, block_size, ceil_div, cuda, float32, kernel, shfl_xor

NEG_INF = float32(-np.inf)


# ============================================================================= naive
@kernel
def attention_scores_kernel(preatt, qkv, B, T, C, NH, NKV, scale):
    """preatt[b,h,t,s] = scale * q[b,t,h] . k[b,s,h // (NH/NKV)] for s <= t (entries above the diagonal unused)."""
    i = cuda.grid(1)
    if i < B * NH * T * T:
        s = i % T
        t = (i // T) % T
        h = (i // (T * T)) % NH
        b = i // (NH * T * T)
        if s <= t:
            HS = C // NH
            W = C + 2 * NKV * HS
            q = b * T * W + t * W + h * HS
            k = b * T * W + s * W + C + (h // (NH // NKV)) * HS
            acc = float32(0.0)
            for d in range(HS):
                acc += qkv[q + d] * qkv[k + d]
            preatt[i] = acc * scale


@kernel
def attention_softmax_kernel(att, preatt, BNH, T):
    """One thread per row (b,h,t): att[.., s] = softmax over s <= t of preatt, 0 for s > t."""
    row = cuda.grid(1)
    if row < BNH * T:
        t = row % T
        base = row * T
        m = NEG_INF
        for s in range(t + 1):
            m = max(m, preatt[base + s])
        total = float32(0.0)
        for s in range(t + 1):
            e = math.exp(preatt[base + s] - m)
            att[base + s] = e
            total += e
        inv = float32(1.0) / total
        for s in range(T):
            att[base + s] = att[base + s] * inv if s <= t else float32(0.0)


@kernel
def attention_values_kernel(out, att, qkv, B, T, C, NH, NKV):
    """out[b,t,h*HS+d] = sum_{s<=t} att[b,h,t,s] v[b,s,h // (NH/NKV),d]; one thread per output element."""
    i = cuda.grid(1)
    if i < B * T * C:
        c = i % C
        t = (i // C) % T
        b = i // (T * C)
        HS = C // NH
        h = c // HS
        W = C + 2 * NKV * HS
        arow = ((b * NH + h) * T + t) * T
        v = b * T * W + C + NKV * HS + (h // (NH // NKV)) * HS + c - h * HS
        acc = float32(0.0)
        for s in range(t + 1):
            acc += att[arow + s] * qkv[v + s * W]
        out[i] = acc


@kernel
def attention_datt_kernel(datt, dout, qkv, B, T, C, NH, NKV):
    """datt[b,h,t,s] = dout[b,t,h] . v[b,s,h // (NH/NKV)] for s <= t."""
    i = cuda.grid(1)
    if i < B * NH * T * T:
        s = i % T
        t = (i // T) % T
        h = (i // (T * T)) % NH
        b = i // (NH * T * T)
        acc = float32(0.0)
        if s <= t:
            HS = C // NH
            g = (b * T + t) * C + h * HS
            W = C + 2 * NKV * HS
            v = b * T * W + s * W + C + NKV * HS + (h // (NH // NKV)) * HS
            for d in range(HS):
                acc += dout[g + d] * qkv[v + d]
        datt[i] = acc


@kernel
def attention_softmax_backward_kernel(dpreatt, datt, att, BNH, T):
    """dpreatt[.., s] = att[s] * (datt[s] - sum_u att[u] datt[u]) on one row per thread."""
    row = cuda.grid(1)
    if row < BNH * T:
        t = row % T
        base = row * T
        dot = float32(0.0)
        for s in range(t + 1):
            dot += att[base + s] * datt[base + s]
        for s in range(T):
            dpreatt[base + s] = att[base + s] * (datt[base + s] - dot) if s <= t else float32(0.0)


@kernel
def attention_dqkv_kernel(dqkv, dpreatt, att, dout, qkv, B, T, C, NH, NKV, scale):
    """One thread per (b, p, c), c < C = NH*HS: dq at query p for channel c = h*HS + d; and, for c <
    NKV*HS (kv head c // HS), dk and dv at key p, each summed over the NH/NKV query heads of the group."""
    i = cuda.grid(1)
    if i < B * T * C:
        c = i % C
        p = (i // C) % T
        b = i // (T * C)
        HS = C // NH
        h = c // HS
        G = NH // NKV  # query heads per kv head
        W = C + 2 * NKV * HS  # qkv row: q (NH heads), k (NKV heads), v (NKV heads)
        rows = (b * NH + h) * T  # first row of this (b, h) in the (B,NH,T,T) arrays
        x = b * T * W  # qkv[b, 0, 0]
        kc = C + (h // G) * HS + c - h * HS  # k channel of query channel c
        dq = float32(0.0)
        for s in range(p + 1):  # dq[p] = scale * sum_s dpreatt[p, s] k[s]
            dq += dpreatt[(rows + p) * T + s] * qkv[x + s * W + kc]
        y = x + p * W
        dqkv[y + c] = dq * scale
        if c < NKV * HS:  # c is a kv channel: kv head c // HS, channel d of it
            d = c % HS
            dk = float32(0.0)
            dv = float32(0.0)
            for hq in range((c // HS) * G, (c // HS) * G + G):  # the group's query heads, in order
                rows = (b * NH + hq) * T
                for t in range(p, T):  # dk[p] = scale * sum_t dpreatt[t, p] q[t];  dv[p] = sum_t att[t, p] dout[t]
                    dk += dpreatt[(rows + t) * T + p] * qkv[x + t * W + hq * HS + d]
                    dv += att[(rows + t) * T + p] * dout[(b * T + t) * C + hq * HS + d]
            dqkv[y + C + c] = dk * scale
            dqkv[y + C + NKV * HS + c] = dv


def _kv_heads(C: int, NH: int, n_kv_head) -> int:
    """NKV (None: NH), checked: NH heads of C // NH channels, NKV dividing NH."""
    if C % NH:
        raise ValueError(f"n_embd={C} is not a multiple of n_head={NH}")
    NKV = NH if n_kv_head is None else int(n_kv_head)
    if NKV < 1 or NH % NKV:
        raise ValueError(f"n_head={NH} is not a multiple of n_kv_head={NKV}")
    return NKV


def attention_forward_naive(out, preatt, att, qkv, B, T, C, NH, n_kv_head=None):
    """out (B,T,C) from qkv (B,T,(NH+2NKV)HS) (GPT-2: (B,T,3C)); fills preatt and att (B,NH,T,T) for the backward."""
    NKV = _kv_heads(C, NH, n_kv_head)
    scale = np.float32(1.0 / math.sqrt(C // NH))
    threads = block_size(256, 32)
    n_scores = B * NH * T * T
    attention_scores_kernel[ceil_div(n_scores, threads), threads](preatt, qkv, B, T, C, NH, NKV, scale)
    attention_softmax_kernel[ceil_div(B * NH * T, threads), threads](att, preatt, B * NH, T)
    attention_values_kernel[ceil_div(B * T * C, threads), threads](out, att, qkv, B, T, C, NH, NKV)


def attention_backward_naive(dqkv, datt, dpreatt, dout, att, qkv, B, T, C, NH, n_kv_head=None):
    """dqkv (B,T,(NH+2NKV)HS) written from dout (B,T,C); datt, dpreatt (B,NH,T,T) are scratch."""
    NKV = _kv_heads(C, NH, n_kv_head)
    scale = np.float32(1.0 / math.sqrt(C // NH))
    threads = block_size(256, 32)
    attention_datt_kernel[ceil_div(B * NH * T * T, threads), threads](datt, dout, qkv, B, T, C, NH, NKV)
    attention_softmax_backward_kernel[ceil_div(B * NH * T, threads), threads](dpreatt, datt, att, B * NH, T)
    attention_dqkv_kernel[ceil_div(B * T * C, threads), threads](dqkv, dpreatt, att, dout, qkv, B, T, C, NH, NKV,
                                                                 scale)  # fmt: skip


# ============================================================================= flash
# FlashAttention-2 on CUDA cores. The GPU never holds a (T, T) matrix: a block owns a tile of rows
# (queries in the forward and the dq pass, keys in the dk/dv pass), walks the other side in tiles
# staged in shared memory, and keeps its partial results in registers.
#
# Inside a block, one tile product S = A @ B^T (A: BA rows, B: BB rows, both (., HS) in shared
# memory) is register-tiled like a matmul: threads come in groups of LANES consecutive lanes
# (one group = one slice of RT rows of A; 32 / LANES groups per warp), and lane g of a group
# computes the RT x CT entries S[rows, g + LANES*c] (c < CT). Per step d of the dot products a
# thread reads RT values of A and CT of B from shared memory and does RT*CT FMAs (16 for 8 loads
# at RT = CT = 4; the old one-thread-per-query kernels did one load per FMA). The rows of a
# group are its own, so a row-wise reduction (the softmax max, the sum l, the delta dot product)
# is log2(LANES) shuffles inside the group. The second product of each step (P @ V in the
# forward, dS @ K for dq, P^T @ dO and dS^T @ Q for dk/dv) goes through a small shared tile:
# lane g then owns the output columns g + LANES*t (t < DT = ceil(HS / LANES)) of its RT rows.
# Shared tiles of HS columns are padded to HS + 1 so that the rows read by one warp fall in
# different banks.
class FlashTiles(NamedTuple):
    """One block's shape: `warps` warps, LANES lanes per row group, RT rows per thread, CT columns of
    the score tile per lane. Rows per block = warps * 32 / LANES * RT; columns per tile = LANES * CT."""

    warps: int
    lanes: int
    rt: int
    ct: int
    vec: bool = False  # the 16-byte shared-load kernels (flash_forward_vec_kernel, flash_backward_*_vec_kernel)
    fused: bool = False  # backward only, with vec: dq, dk, dv in one kernel, dq summed by atomic adds

    @property
    def threads(self) -> int:
        return self.warps * WARP

    @property
    def rows(self) -> int:
        return self.warps * WARP // self.lanes * self.rt

    @property
    def cols(self) -> int:
        return self.lanes * self.ct


# GPU: 64 queries x 32 keys per forward step (4 warps, 4 rows per thread); 32 x 32 in the two
# backward kernels (they stage four (32, HS) tiles), 4 warps with 2 rows per thread; 16-byte shared
# loads in both. Measured on an H200 at B=4 T=1024 HS=64 (docs/results/numba-attention-h200.json):
# forward 0.498 ms (0.695 with scalar loads, 0.639 at 32x32); backward 1.524 ms (2.451 scalar;
# 1.900 / 1.944 with 2 warps x 4 rows / 8 warps x 1 row). The fused backward (fused=True) took
# 1.152 ms, but its dq is summed by atomic adds in a varying order: it is opt-in, so that the
# default backward stays bitwise repeatable (a CUDA-graph replay equals the eager step bit for bit).
# Simulator: one warp of 32 Python threads, 4 lanes per row, one row per thread: tiles of 8 rows x 4
# columns, so a ragged T of ~10 crosses tile edges; the same (16-byte) kernels as on the GPU.
FLASH_FORWARD_TILES = FlashTiles(warps=4, lanes=8, rt=4, ct=4, vec=True)
FLASH_BACKWARD_TILES = FlashTiles(warps=4, lanes=8, rt=2, ct=4, vec=True)
FLASH_TILES_SIM = FlashTiles(warps=1, lanes=4, rt=1, ct=1)
FLASH_FORWARD_TILES_SIM = FLASH_TILES_SIM._replace(vec=FLASH_FORWARD_TILES.vec)  # the GPU's kernels, small
FLASH_BACKWARD_TILES_SIM = FLASH_TILES_SIM._replace(vec=FLASH_BACKWARD_TILES.vec)
FLASH_STATIC_SHARED = 48 * 1024  # bytes of static shared memory a block may use


def flash_shared_bytes(HS: int, tiles: FlashTiles, kernel_name: str) -> int:
    """Bytes of shared memory one block of `kernel_name` ("forward", "dq", "dkv") declares."""
    R, K = tiles.rows, tiles.cols
    if kernel_name == "forward" and tiles.vec:  # qT (HS, R+4), kT (HS, K+4), v (K, HS+4), pT (K, R+4)
        words = HS * (R + 4) + HS * (K + 4) + K * (HS + 4) + K * (R + 4)
    elif tiles.vec:  # rows of HSW + 4 (see _vec_widths): dq: q, dout (R), k, v (K); ds (R, K+4)
        HSV = _vec_widths(HS, tiles)[1] + 4  # dkv: k, v (R), q, dout (K); p, ds (R, K+4); lse, delta (K)
        words = (2 * R + 2 * K) * HSV + (1 if kernel_name == "dq" else 2) * R * (K + 4)
        if kernel_name == "dkv":  # and ds^T (K, R+4) when fused
            words += 2 * K + (K * (R + 4) if tiles.fused else 4)
    elif kernel_name == "forward":  # q (R, HS+1), k (K, HS+1), v (K, HS), p (R, K+1)
        words = R * (HS + 1) + K * (HS + 1) + K * HS + R * (K + 1)
    elif kernel_name == "dq":  # q, dout (R, HS+1); k, v (K, HS+1); ds (R, K+1)
        words = 2 * R * (HS + 1) + 2 * K * (HS + 1) + R * (K + 1)
    else:  # k, v (R, HS+1); q, dout (K, HS+1); p, ds (R, K+1); lse, delta (K)
        words = 2 * R * (HS + 1) + 2 * K * (HS + 1) + 2 * R * (K + 1) + 2 * K
    return 4 * words


@functools.cache
def flash_forward_kernel(HS: int, tiles: FlashTiles, group: int = 1):
    """Forward for head size HS. Grid (B*NH, ceil(T / rows)); block (bh, y) owns query rows
    tile*R .. tile*R+R-1 with tile = (number of tiles - 1 - y): the longest rows (most keys) start first."""
    LANES, RT, CT = tiles.lanes, tiles.rt, tiles.ct
    R, K, NTHREADS = tiles.rows, tiles.cols, tiles.threads
    G, GQA = group, group > 1  # query heads per kv head (grouped-query attention: a compile-time constant)
    DT = ceil_div(HS, LANES)
    HSP, KP = HS + 1, K + 1  # padded row lengths (shared array shapes must be compile-time constants)

    @kernel(lineinfo=True)
    def flash_forward(out, lse, qkv, B, T, C, NH, scale):
        q_s = cuda.shared.array((R, HSP), float32)  # scale * q of this block's queries
        k_s = cuda.shared.array((K, HSP), float32)
        v_s = cuda.shared.array((K, HS), float32)
        p_s = cuda.shared.array((R, KP), float32)  # exp(s - m) of the current key tile
        s = cuda.local.array((RT, CT), float32)
        o = cuda.local.array((RT, DT), float32)  # un-normalised output rows
        m = cuda.local.array(RT, float32)  # running row max
        l_part = cuda.local.array(RT, float32)  # this lane's share of the running row sum
        k_reg = cuda.local.array(CT, float32)
        v_reg = cuda.local.array(DT, float32)
        tid = cuda.threadIdx.x
        g = tid % LANES
        r0 = (tid // LANES) * RT
        bh = cuda.blockIdx.x
        b = bh // NH
        h = bh % NH
        q0 = (cuda.gridDim.y - 1 - cuda.blockIdx.y) * R
        x = b * T * 3 * C + h * HS  # qkv[b, 0, h*HS]
        if GQA:  # qkv rows of W = C + 2 NKV HS floats: q (NH heads), k, v (NKV heads); kv head h // G
            W = C + 2 * (NH // G) * HS
            x = b * T * W + h * HS
            xk = b * T * W + C + (h // G) * HS
            xv = xk + (NH // G) * HS
        for e in range(tid, R * HS, NTHREADS):
            t = q0 + e // HS
            q_s[e // HS, e % HS] = (
                qkv[(x + t * W if GQA else x + t * 3 * C) + e % HS] * scale if t < T else float32(0.0)
            )
        for i in range(RT):
            m[i] = NEG_INF
            l_part[i] = float32(0.0)
            for c in range(DT):
                o[i, c] = float32(0.0)
        for k0 in range(0, min(T, q0 + R), K):
            cuda.syncthreads()  # everyone is done with the previous k_s, v_s, p_s
            for e in range(tid, K * HS, NTHREADS):
                j = e // HS
                d = e % HS
                key = k0 + j
                if key < T:
                    k_s[j, d] = qkv[(xk + key * W if GQA else x + key * 3 * C + C) + d]
                    v_s[j, d] = qkv[(xv + key * W if GQA else x + key * 3 * C + 2 * C) + d]
                else:
                    k_s[j, d] = float32(0.0)
                    v_s[j, d] = float32(0.0)
            cuda.syncthreads()
            # s = (scale q) k^T for this thread's RT x CT entries
            for i in range(RT):
                for c in range(CT):
                    s[i, c] = float32(0.0)
            for d in range(HS):
                for c in range(CT):
                    k_reg[c] = k_s[g + LANES * c, d]
                for i in range(RT):
                    qv = q_s[r0 + i, d]
                    for c in range(CT):
                        s[i, c] += qv * k_reg[c]
            # online softmax, row by row: the new max over the group, rescale, p into shared memory
            for i in range(RT):
                t = q0 + r0 + i
                mx = NEG_INF
                for c in range(CT):
                    key = k0 + g + LANES * c
                    if key > t or key >= T:  # causal mask; keys past the end
                        s[i, c] = NEG_INF
                    mx = max(mx, s[i, c])
                lane_mask = 1
                while lane_mask < LANES:
                    mx = max(mx, shfl_xor(mx, lane_mask))
                    lane_mask *= 2
                m_new = max(m[i], mx)  # finite: key 0 is in the first tile of every row
                correction = math.exp(m[i] - m_new)
                row_sum = float32(0.0)
                for c in range(CT):
                    p = math.exp(s[i, c] - m_new)
                    p_s[r0 + i, g + LANES * c] = p
                    row_sum += p
                l_part[i] = l_part[i] * correction + row_sum
                for c in range(DT):
                    o[i, c] *= correction
                m[i] = m_new
            cuda.syncthreads()
            # o += p v
            for j in range(K):
                for c in range(DT):
                    dd = g + LANES * c
                    v_reg[c] = v_s[j, dd] if dd < HS else float32(0.0)
                for i in range(RT):
                    p = p_s[r0 + i, j]
                    for c in range(DT):
                        o[i, c] += p * v_reg[c]
        for i in range(RT):
            l_row = l_part[i]
            lane_mask = 1
            while lane_mask < LANES:
                l_row += shfl_xor(l_row, lane_mask)
                lane_mask *= 2
            t = q0 + r0 + i
            if t < T:
                inv = float32(1.0) / l_row
                row = (b * T + t) * C + h * HS
                for c in range(DT):
                    dd = g + LANES * c
                    if dd < HS:
                        out[row + dd] = o[i, c] * inv
                if g == 0:
                    lse[bh * T + t] = m[i] + math.log(l_row)

    return flash_forward


# 16-byte shared loads in the forward (the default: 0.498 ms against 0.695 ms scalar). The scalar kernels
# read shared memory one float at a time: per step d of s = q k^T a thread issues RT + CT loads for
# RT * CT FMAs. If each thread's RT rows and CT keys are *contiguous* in shared memory and the
# tiles are 16-byte aligned, the compiler merges 4 float loads into one ld.shared.v4.f32 (as the
# fast matmul does): q and k are staged transposed (qT[d, r], kT[d, j]), lane g owns the keys
# CT*g .. CT*g+CT-1 and the output columns DT*g .. DT*g+DT-1, and p goes through pT[j, r]. Per d:
# 2 loads for 16 FMAs; per key j of o += p v: 3 loads for 32 FMAs (against 8 and 12).
SHARED_ALIGN = None if SIMULATOR else 16  # the simulator refuses the keyword (its arrays are aligned anyway)
VEC_PAD = 4  # floats of padding per transposed row: keeps rows 16-byte aligned


def flash_vec_supported(HS: int, tiles: FlashTiles) -> bool:
    """The 16-byte-load forward needs whole 4-float runs: RT, CT and HS / LANES multiples of 4 on a
    GPU (the simulator takes any whole split, to run the same code on small tiles)."""
    if HS % tiles.lanes:
        return False
    if SIMULATOR:
        return True
    return tiles.rt % 4 == 0 and tiles.ct % 4 == 0 and (HS // tiles.lanes) % 4 == 0


@functools.cache
def flash_forward_vec_kernel(HS: int, tiles: FlashTiles, group: int = 1):
    """The forward of `flash_forward_kernel` (same arguments, grid and results) with transposed,
    16-byte aligned shared tiles and contiguous per-thread runs (see the comment above)."""
    LANES, RT, CT = tiles.lanes, tiles.rt, tiles.ct
    R, K, NTHREADS = tiles.rows, tiles.cols, tiles.threads
    G, GQA = group, group > 1  # query heads per kv head (grouped-query attention: a compile-time constant)
    DT = HS // LANES
    LANE_SHIFT = LANES.bit_length() - 1  # LANES is a power of two: tid >> LANE_SHIFT = tid // LANES
    RP, KPV, HSV = R + VEC_PAD, K + VEC_PAD, HS + VEC_PAD

    @kernel(lineinfo=True)
    def flash_forward_vec(out, lse, qkv, B, T, C, NH, scale):
        qT = cuda.shared.array((HS, RP), float32, alignment=SHARED_ALIGN)  # scale * q, transposed
        kT = cuda.shared.array((HS, KPV), float32, alignment=SHARED_ALIGN)
        v_s = cuda.shared.array((K, HSV), float32, alignment=SHARED_ALIGN)
        pT = cuda.shared.array((K, RP), float32, alignment=SHARED_ALIGN)
        s = cuda.local.array((RT, CT), float32)
        o = cuda.local.array((RT, DT), float32)
        m = cuda.local.array(RT, float32)
        l_part = cuda.local.array(RT, float32)
        q_reg = cuda.local.array(RT, float32)
        k_reg = cuda.local.array(CT, float32)
        p_reg = cuda.local.array(RT, float32)
        v_reg = cuda.local.array(DT, float32)
        tid = cuda.threadIdx.x
        g = tid & (LANES - 1)  # bit operations: the compiler sees non-negative, aligned offsets, so no
        r0 = ((tid & 1023) >> LANE_SHIFT) * RT  # negative-index fix-up hides the 16-byte alignment
        c0 = g * CT  # this lane's keys: c0 .. c0+CT-1 of the tile
        d0 = g * DT  # and output columns d0 .. d0+DT-1
        bh = cuda.blockIdx.x
        b = bh // NH
        h = bh % NH
        q0 = (cuda.gridDim.y - 1 - cuda.blockIdx.y) * R
        x = b * T * 3 * C + h * HS
        if GQA:  # qkv rows of W = C + 2 NKV HS floats: q (NH heads), k, v (NKV heads); kv head h // G
            W = C + 2 * (NH // G) * HS
            x = b * T * W + h * HS
            xk = b * T * W + C + (h // G) * HS
            xv = xk + (NH // G) * HS
        for e in range(tid, R * HS, NTHREADS):
            t = q0 + e // HS
            qT[e % HS, e // HS] = qkv[(x + t * W if GQA else x + t * 3 * C) + e % HS] * scale if t < T else float32(0.0)
        for i in range(RT):
            m[i] = NEG_INF
            l_part[i] = float32(0.0)
            for c in range(DT):
                o[i, c] = float32(0.0)
        for k0 in range(0, min(T, q0 + R), K):
            cuda.syncthreads()
            for e in range(tid, K * HS, NTHREADS):
                j = e // HS
                d = e % HS
                key = k0 + j
                if key < T:
                    kT[d, j] = qkv[(xk + key * W if GQA else x + key * 3 * C + C) + d]
                    v_s[j, d] = qkv[(xv + key * W if GQA else x + key * 3 * C + 2 * C) + d]
                else:
                    kT[d, j] = float32(0.0)
                    v_s[j, d] = float32(0.0)
            cuda.syncthreads()
            for i in range(RT):
                for c in range(CT):
                    s[i, c] = float32(0.0)
            for d in range(HS):
                du = uint32(d)  # unsigned, for the same reason
                for i in range(RT):
                    q_reg[i] = qT[du, r0 + i]
                for c in range(CT):
                    k_reg[c] = kT[du, c0 + c]
                for i in range(RT):
                    for c in range(CT):
                        s[i, c] += q_reg[i] * k_reg[c]
            for i in range(RT):
                t = q0 + r0 + i
                mx = NEG_INF
                for c in range(CT):
                    key = k0 + c0 + c
                    if key > t or key >= T:
                        s[i, c] = NEG_INF
                    mx = max(mx, s[i, c])
                lane_mask = 1
                while lane_mask < LANES:
                    mx = max(mx, shfl_xor(mx, lane_mask))
                    lane_mask *= 2
                m_new = max(m[i], mx)
                correction = math.exp(m[i] - m_new)
                row_sum = float32(0.0)
                for c in range(CT):
                    p = math.exp(s[i, c] - m_new)
                    pT[c0 + c, r0 + i] = p
                    row_sum += p
                l_part[i] = l_part[i] * correction + row_sum
                for c in range(DT):
                    o[i, c] *= correction
                m[i] = m_new
            cuda.syncthreads()
            for j in range(K):
                for i in range(RT):
                    p_reg[i] = pT[j, r0 + i]
                for c in range(DT):
                    v_reg[c] = v_s[j, d0 + c]
                for i in range(RT):
                    for c in range(DT):
                        o[i, c] += p_reg[i] * v_reg[c]
        for i in range(RT):
            l_row = l_part[i]
            lane_mask = 1
            while lane_mask < LANES:
                l_row += shfl_xor(l_row, lane_mask)
                lane_mask *= 2
            t = q0 + r0 + i
            if t < T:
                inv = float32(1.0) / l_row
                row = (b * T + t) * C + h * HS
                for c in range(DT):
                    out[row + d0 + c] = o[i, c] * inv
                if g == 0:
                    lse[bh * T + t] = m[i] + math.log(l_row)

    return flash_forward_vec


@functools.cache
def flash_backward_dq_kernel(HS: int, tiles: FlashTiles, group: int = 1):
    """dq for head size HS, and delta = rowsum(dout * out) on the way (the dk/dv kernel reads it).
    Grid and row ownership as in the forward: block (bh, y) owns R query rows and walks the keys.

        p = exp(scale q.k - lse);  ds = p * (dout.v - delta);  dq = scale * sum_s ds k[s]"""
    LANES, RT, CT = tiles.lanes, tiles.rt, tiles.ct
    R, K, NTHREADS = tiles.rows, tiles.cols, tiles.threads
    G, GQA = group, group > 1  # query heads per kv head (grouped-query attention: a compile-time constant)
    DT = ceil_div(HS, LANES)
    HSP, KP = HS + 1, K + 1  # padded row lengths (shared array shapes must be compile-time constants)

    @kernel(lineinfo=True)
    def flash_backward_dq(dqkv, delta, qkv, dout, out, lse, B, T, C, NH, scale):
        q_s = cuda.shared.array((R, HSP), float32)  # scale * q
        g_s = cuda.shared.array((R, HSP), float32)  # dout
        k_s = cuda.shared.array((K, HSP), float32)
        v_s = cuda.shared.array((K, HSP), float32)
        ds_s = cuda.shared.array((R, KP), float32)
        s = cuda.local.array((RT, CT), float32)
        dp = cuda.local.array((RT, CT), float32)
        dq = cuda.local.array((RT, DT), float32)
        lse_row = cuda.local.array(RT, float32)
        delta_row = cuda.local.array(RT, float32)
        k_reg = cuda.local.array(CT, float32)
        v_reg = cuda.local.array(CT, float32)
        kd_reg = cuda.local.array(DT, float32)
        tid = cuda.threadIdx.x
        g = tid % LANES
        r0 = (tid // LANES) * RT
        bh = cuda.blockIdx.x
        b = bh // NH
        h = bh % NH
        q0 = (cuda.gridDim.y - 1 - cuda.blockIdx.y) * R
        x = b * T * 3 * C + h * HS
        if GQA:  # qkv rows of W = C + 2 NKV HS floats: q (NH heads), k, v (NKV heads); kv head h // G
            W = C + 2 * (NH // G) * HS
            x = b * T * W + h * HS
            xk = b * T * W + C + (h // G) * HS
            xv = xk + (NH // G) * HS
        for e in range(tid, R * HS, NTHREADS):
            t = q0 + e // HS
            d = e % HS
            if t < T:
                q_s[e // HS, d] = qkv[(x + t * W if GQA else x + t * 3 * C) + d] * scale
                g_s[e // HS, d] = dout[(b * T + t) * C + h * HS + d]
            else:
                q_s[e // HS, d] = float32(0.0)
                g_s[e // HS, d] = float32(0.0)
        cuda.syncthreads()
        for i in range(RT):  # delta[t] = dout[t] . out[t]: the lanes of the group split the HS terms
            t = q0 + r0 + i
            acc = float32(0.0)
            if t < T:
                row = (b * T + t) * C + h * HS
                for c in range(DT):
                    dd = g + LANES * c
                    if dd < HS:
                        acc += g_s[r0 + i, dd] * out[row + dd]
            lane_mask = 1
            while lane_mask < LANES:
                acc += shfl_xor(acc, lane_mask)
                lane_mask *= 2
            delta_row[i] = acc
            lse_row[i] = lse[bh * T + t] if t < T else float32(0.0)
            if t < T and g == 0:
                delta[bh * T + t] = acc
            for c in range(DT):
                dq[i, c] = float32(0.0)
        for k0 in range(0, min(T, q0 + R), K):
            cuda.syncthreads()
            for e in range(tid, K * HS, NTHREADS):
                j = e // HS
                d = e % HS
                key = k0 + j
                if key < T:
                    k_s[j, d] = qkv[(xk + key * W if GQA else x + key * 3 * C + C) + d]
                    v_s[j, d] = qkv[(xv + key * W if GQA else x + key * 3 * C + 2 * C) + d]
                else:
                    k_s[j, d] = float32(0.0)
                    v_s[j, d] = float32(0.0)
            cuda.syncthreads()
            for i in range(RT):
                for c in range(CT):
                    s[i, c] = float32(0.0)
                    dp[i, c] = float32(0.0)
            for d in range(HS):  # s = (scale q) k^T, dp = dout v^T
                for c in range(CT):
                    k_reg[c] = k_s[g + LANES * c, d]
                    v_reg[c] = v_s[g + LANES * c, d]
                for i in range(RT):
                    qv = q_s[r0 + i, d]
                    gv = g_s[r0 + i, d]
                    for c in range(CT):
                        s[i, c] += qv * k_reg[c]
                        dp[i, c] += gv * v_reg[c]
            for i in range(RT):
                t = q0 + r0 + i
                for c in range(CT):
                    key = k0 + g + LANES * c
                    ds = float32(0.0)
                    if key <= t and t < T:  # (key <= t < T also keeps key < T)
                        ds = math.exp(s[i, c] - lse_row[i]) * (dp[i, c] - delta_row[i])
                    ds_s[r0 + i, g + LANES * c] = ds
            cuda.syncthreads()
            for j in range(K):  # dq += ds k
                for c in range(DT):
                    dd = g + LANES * c
                    kd_reg[c] = k_s[j, dd] if dd < HS else float32(0.0)
                for i in range(RT):
                    dsv = ds_s[r0 + i, j]
                    for c in range(DT):
                        dq[i, c] += dsv * kd_reg[c]
        for i in range(RT):
            t = q0 + r0 + i
            if t < T:
                row = (b * T + t) * W + h * HS if GQA else (b * T + t) * 3 * C + h * HS
                for c in range(DT):
                    dd = g + LANES * c
                    if dd < HS:
                        dqkv[row + dd] = dq[i, c] * scale

    return flash_backward_dq


@functools.cache
def flash_backward_dkv_kernel(HS: int, tiles: FlashTiles, group: int = 1):
    """dk, dv for head size HS. Grid (B*NH, ceil(T / rows)); block (bh, y) owns key rows y*R ..
    y*R+R-1 (the first keys are seen by the most queries: they start first) and walks the queries
    t >= its first key in tiles of `cols`, accumulating in registers (no atomics, deterministic):

        dv[s] = sum_{t>=s} p dout[t];   dk[s] = sum_{t>=s} ds (scale q[t])"""
    LANES, RT, CT = tiles.lanes, tiles.rt, tiles.ct
    R, K, NTHREADS = tiles.rows, tiles.cols, tiles.threads
    G, GQA = group, group > 1  # query heads per kv head (grouped-query attention: a compile-time constant)
    DT = ceil_div(HS, LANES)
    HSP, KP = HS + 1, K + 1  # padded row lengths (shared array shapes must be compile-time constants)

    @kernel(lineinfo=True)
    def flash_backward_dkv(dqkv, delta, qkv, dout, lse, B, T, C, NH, scale):
        k_s = cuda.shared.array((R, HSP), float32)
        v_s = cuda.shared.array((R, HSP), float32)
        q_s = cuda.shared.array((K, HSP), float32)  # scale * q
        g_s = cuda.shared.array((K, HSP), float32)  # dout
        p_s = cuda.shared.array((R, KP), float32)  # p^T: keys x queries
        ds_s = cuda.shared.array((R, KP), float32)
        lse_s = cuda.shared.array(K, float32)
        delta_s = cuda.shared.array(K, float32)
        st = cuda.local.array((RT, CT), float32)  # s^T = k (scale q)^T
        dpt = cuda.local.array((RT, CT), float32)  # dp^T = v dout^T
        dk = cuda.local.array((RT, DT), float32)
        dv = cuda.local.array((RT, DT), float32)
        q_reg = cuda.local.array(CT, float32)
        g_reg = cuda.local.array(CT, float32)
        qd_reg = cuda.local.array(DT, float32)
        gd_reg = cuda.local.array(DT, float32)
        tid = cuda.threadIdx.x
        g = tid % LANES
        r0 = (tid // LANES) * RT
        bh = cuda.blockIdx.x
        b = bh // NH
        h = bh % NH
        k0 = cuda.blockIdx.y * R
        x = b * T * 3 * C + h * HS
        if GQA:  # the block is (batch, kv head): its dk, dv sum the terms of the G query heads of the group
            NKV = NH // G
            W = C + 2 * NKV * HS
            b = bh // NKV
            kvh = bh % NKV
            xk = b * T * W + C + kvh * HS
            xv = xk + NKV * HS
        for e in range(tid, R * HS, NTHREADS):
            key = k0 + e // HS
            d = e % HS
            if key < T:
                k_s[e // HS, d] = qkv[(xk + key * W if GQA else x + key * 3 * C + C) + d]
                v_s[e // HS, d] = qkv[(xv + key * W if GQA else x + key * 3 * C + 2 * C) + d]
            else:
                k_s[e // HS, d] = float32(0.0)
                v_s[e // HS, d] = float32(0.0)
        for i in range(RT):
            for c in range(DT):
                dk[i, c] = float32(0.0)
                dv[i, c] = float32(0.0)
        if GQA:  # the query tiles t0 >= k0 of each of the group's G heads, one head after the other
            span = (T - k0 + K - 1) // K * K
        for t0 in range(k0, k0 + G * span if GQA else T, K):
            if GQA:
                hg = (t0 - k0) // span  # query head h of the group, its tile t0
                h = kvh * G + hg
                bh = b * NH + h
                x = b * T * W + h * HS
                t0 = t0 - hg * span
            cuda.syncthreads()
            for e in range(tid, K * HS, NTHREADS):
                j = e // HS
                d = e % HS
                t = t0 + j
                if t < T:
                    q_s[j, d] = qkv[(x + t * W if GQA else x + t * 3 * C) + d] * scale
                    g_s[j, d] = dout[(b * T + t) * C + h * HS + d]
                else:
                    q_s[j, d] = float32(0.0)
                    g_s[j, d] = float32(0.0)
            for j in range(tid, K, NTHREADS):
                t = t0 + j
                lse_s[j] = lse[bh * T + t] if t < T else float32(0.0)
                delta_s[j] = delta[bh * T + t] if t < T else float32(0.0)
            cuda.syncthreads()
            for i in range(RT):
                for c in range(CT):
                    st[i, c] = float32(0.0)
                    dpt[i, c] = float32(0.0)
            for d in range(HS):
                for c in range(CT):
                    q_reg[c] = q_s[g + LANES * c, d]
                    g_reg[c] = g_s[g + LANES * c, d]
                for i in range(RT):
                    kv = k_s[r0 + i, d]
                    vv = v_s[r0 + i, d]
                    for c in range(CT):
                        st[i, c] += kv * q_reg[c]
                        dpt[i, c] += vv * g_reg[c]
            for i in range(RT):
                key = k0 + r0 + i
                for c in range(CT):
                    j = g + LANES * c
                    t = t0 + j
                    p = float32(0.0)
                    ds = float32(0.0)
                    if key <= t and t < T:
                        p = math.exp(st[i, c] - lse_s[j])
                        ds = p * (dpt[i, c] - delta_s[j])
                    p_s[r0 + i, j] = p
                    ds_s[r0 + i, j] = ds
            cuda.syncthreads()
            for j in range(K):  # dv += p^T dout;  dk += ds^T (scale q)
                for c in range(DT):
                    dd = g + LANES * c
                    gd_reg[c] = g_s[j, dd] if dd < HS else float32(0.0)
                    qd_reg[c] = q_s[j, dd] if dd < HS else float32(0.0)
                for i in range(RT):
                    pv = p_s[r0 + i, j]
                    dsv = ds_s[r0 + i, j]
                    for c in range(DT):
                        dv[i, c] += pv * gd_reg[c]
                        dk[i, c] += dsv * qd_reg[c]
        for i in range(RT):
            key = k0 + r0 + i
            if key < T:
                row = (b * T + key) * W + kvh * HS if GQA else (b * T + key) * 3 * C + h * HS
                for c in range(DT):
                    dd = g + LANES * c
                    if dd < HS:
                        dqkv[row + C + dd] = dk[i, c]
                        dqkv[row + (C + NKV * HS if GQA else 2 * C) + dd] = dv[i, c]

    return flash_backward_dkv


# The backward with 16-byte shared loads. Both backward kernels read every staged tile two ways:
# along the head dimension for the score products (s = q k^T, dp = dout v^T) and along the key (or
# query) index for the second products (dq += ds k, dv += p^T dout, dk += ds^T q). Row-major tiles
# serve both if each thread reads runs of 4 consecutive floats from 16-byte aligned rows:
#   score products: per step of 4 in d, RT runs q[row, d:d+4] (shared by the 8 lanes of a group:
#     one broadcast) and CT runs k[g + LANES*c, d:d+4]: (RT + CT) loads for 4*RT*CT FMAs;
#   second products: per 4 keys j, RT runs ds[row, j:j+4] and the lane's output columns of those
#     4 keys, in runs of 4 (lane g owns columns 4g + 4*LANES*c + w, w < 4: the 8 lanes of a
#     quarter-warp read 32 consecutive words, one wavefront per load).
# Rows are padded to HSW + 4 floats (HSW a multiple of 4*LANES): the rows g + LANES*c that the 8
# lanes of a group read at one d start 4 words apart in the banks, so their 16-byte loads do not
# collide. Columns from HS to HSW are staged as zeros. Needs cols % 4 == 0 (runs of 4 keys).
def _vec_widths(HS: int, tiles: FlashTiles) -> tuple[int, int, int]:
    """(HS4, HSW, DT4): HS rounded up to 4 (the score loop's extent), the staged row width (whole runs
    of 4 columns for every lane) and the number of 4-column runs each lane owns."""
    HS4 = ceil_div(HS, 4) * 4
    DT4 = ceil_div(HS4, 4 * tiles.lanes)
    return HS4, 4 * tiles.lanes * DT4, DT4


@functools.cache
def flash_backward_dq_vec_kernel(HS: int, tiles: FlashTiles, group: int = 1):
    """`flash_backward_dq_kernel` (same arguments, grid and results) with 16-byte shared loads."""
    LANES, RT, CT = tiles.lanes, tiles.rt, tiles.ct
    R, K, NTHREADS = tiles.rows, tiles.cols, tiles.threads
    G, GQA = group, group > 1  # query heads per kv head (grouped-query attention: a compile-time constant)
    HS4, HSW, DT4 = _vec_widths(HS, tiles)
    HSV, KV = HSW + VEC_PAD, K + VEC_PAD
    LANE_SHIFT = LANES.bit_length() - 1

    @kernel(lineinfo=True)
    def flash_backward_dq_vec(dqkv, delta, qkv, dout, out, lse, B, T, C, NH, scale):
        q_s = cuda.shared.array((R, HSV), float32, alignment=SHARED_ALIGN)  # scale * q
        g_s = cuda.shared.array((R, HSV), float32, alignment=SHARED_ALIGN)  # dout
        k_s = cuda.shared.array((K, HSV), float32, alignment=SHARED_ALIGN)
        v_s = cuda.shared.array((K, HSV), float32, alignment=SHARED_ALIGN)
        ds_s = cuda.shared.array((R, KV), float32, alignment=SHARED_ALIGN)
        s = cuda.local.array((RT, CT), float32)
        dp = cuda.local.array((RT, CT), float32)
        dq = cuda.local.array((RT, DT4, 4), float32)
        lse_row = cuda.local.array(RT, float32)
        delta_row = cuda.local.array(RT, float32)
        a_reg = cuda.local.array((RT, 4), float32)
        b_reg = cuda.local.array((RT, 4), float32)
        c_reg = cuda.local.array((CT, 4), float32)
        e_reg = cuda.local.array((CT, 4), float32)
        kd_reg = cuda.local.array((4, DT4, 4), float32)
        tid = cuda.threadIdx.x
        g = tid & (LANES - 1)
        r0 = ((tid & 1023) >> LANE_SHIFT) * RT
        bh = cuda.blockIdx.x
        b = bh // NH
        h = bh % NH
        q0 = (cuda.gridDim.y - 1 - cuda.blockIdx.y) * R
        x = b * T * 3 * C + h * HS
        if GQA:  # qkv rows of W = C + 2 NKV HS floats: q (NH heads), k, v (NKV heads); kv head h // G
            W = C + 2 * (NH // G) * HS
            x = b * T * W + h * HS
            xk = b * T * W + C + (h // G) * HS
            xv = xk + (NH // G) * HS
        for e in range(tid, R * HSW, NTHREADS):
            j = e // HSW
            d = e % HSW
            t = q0 + j
            if t < T and d < HS:
                q_s[j, d] = qkv[(x + t * W if GQA else x + t * 3 * C) + d] * scale
                g_s[j, d] = dout[(b * T + t) * C + h * HS + d]
            else:
                q_s[j, d] = float32(0.0)
                g_s[j, d] = float32(0.0)
        cuda.syncthreads()
        for i in range(RT):  # delta[t] = dout[t] . out[t]: the lanes of the group split the HS terms
            t = q0 + r0 + i
            acc = float32(0.0)
            if t < T:
                row = (b * T + t) * C + h * HS
                for c in range(DT4):
                    for w in range(4):
                        dd = 4 * g + 4 * LANES * c + w
                        if dd < HS:
                            acc += g_s[r0 + i, dd] * out[row + dd]
            lane_mask = 1
            while lane_mask < LANES:
                acc += shfl_xor(acc, lane_mask)
                lane_mask *= 2
            delta_row[i] = acc
            lse_row[i] = lse[bh * T + t] if t < T else float32(0.0)
            if t < T and g == 0:
                delta[bh * T + t] = acc
            for c in range(DT4):
                for w in range(4):
                    dq[i, c, w] = float32(0.0)
        for k0 in range(0, min(T, q0 + R), K):
            cuda.syncthreads()
            for e in range(tid, K * HSW, NTHREADS):
                j = e // HSW
                d = e % HSW
                key = k0 + j
                if key < T and d < HS:
                    k_s[j, d] = qkv[(xk + key * W if GQA else x + key * 3 * C + C) + d]
                    v_s[j, d] = qkv[(xv + key * W if GQA else x + key * 3 * C + 2 * C) + d]
                else:
                    k_s[j, d] = float32(0.0)
                    v_s[j, d] = float32(0.0)
            cuda.syncthreads()
            for i in range(RT):
                for c in range(CT):
                    s[i, c] = float32(0.0)
                    dp[i, c] = float32(0.0)
            for d in range(0, HS4, 4):  # s = (scale q) k^T, dp = dout v^T, 4 terms per step
                du = uint32(d)  # unsigned: no negative-index fix-up between the 4 loads of a run
                for i in range(RT):
                    for w in range(4):
                        a_reg[i, w] = q_s[r0 + i, du + w]
                        b_reg[i, w] = g_s[r0 + i, du + w]
                for c in range(CT):
                    for w in range(4):
                        c_reg[c, w] = k_s[g + LANES * c, du + w]
                        e_reg[c, w] = v_s[g + LANES * c, du + w]
                for w in range(4):
                    for i in range(RT):
                        for c in range(CT):
                            s[i, c] += a_reg[i, w] * c_reg[c, w]
                            dp[i, c] += b_reg[i, w] * e_reg[c, w]
            for i in range(RT):
                t = q0 + r0 + i
                for c in range(CT):
                    key = k0 + g + LANES * c
                    ds = float32(0.0)
                    if key <= t and t < T:  # (key <= t < T also keeps key < T)
                        ds = math.exp(s[i, c] - lse_row[i]) * (dp[i, c] - delta_row[i])
                    ds_s[r0 + i, g + LANES * c] = ds
            cuda.syncthreads()
            for j in range(0, K, 4):  # dq += ds k, 4 keys per step
                ju = uint32(j)
                for i in range(RT):
                    for u in range(4):
                        a_reg[i, u] = ds_s[r0 + i, ju + u]
                for u in range(4):
                    for c in range(DT4):
                        for w in range(4):
                            kd_reg[u, c, w] = k_s[ju + u, 4 * g + 4 * LANES * c + w]
                for u in range(4):
                    for i in range(RT):
                        for c in range(DT4):
                            for w in range(4):
                                dq[i, c, w] += a_reg[i, u] * kd_reg[u, c, w]
        for i in range(RT):
            t = q0 + r0 + i
            if t < T:
                row = (b * T + t) * W + h * HS if GQA else (b * T + t) * 3 * C + h * HS
                for c in range(DT4):
                    for w in range(4):
                        dd = 4 * g + 4 * LANES * c + w
                        if dd < HS:
                            dqkv[row + dd] = dq[i, c, w] * scale

    return flash_backward_dq_vec


@functools.cache
def flash_backward_dkv_vec_kernel(HS: int, tiles: FlashTiles, group: int = 1):
    """`flash_backward_dkv_kernel` (same arguments, grid and results) with 16-byte shared loads.

    tiles.fused: the one-kernel backward (5 tile products instead of 7). Each (key block, query tile)
    step also computes that tile's share of dq, scale * ds^T k (ds^T staged in shared memory), and
    adds it into dqkv's q columns with atomic adds: dq must be zero first and delta known
    (`flash_backward_prep_kernel`). The order of the adds varies from run to run, so dq is not
    bitwise repeatable. Needs rows == cols (the query rows of a tile reuse the key rows' layout)."""
    LANES, RT, CT = tiles.lanes, tiles.rt, tiles.ct
    R, K, NTHREADS = tiles.rows, tiles.cols, tiles.threads
    G, GQA = group, group > 1  # query heads per kv head (grouped-query attention: a compile-time constant)
    HS4, HSW, DT4 = _vec_widths(HS, tiles)
    HSV, KV = HSW + VEC_PAD, K + VEC_PAD
    LANE_SHIFT = LANES.bit_length() - 1
    FUSED = tiles.fused
    DQ_ROWS, DQ_COLS = (K, R + VEC_PAD) if FUSED else (1, VEC_PAD)  # ds^T (queries x keys) when fused

    @kernel(lineinfo=True)
    def flash_backward_dkv_vec(dqkv, delta, qkv, dout, lse, B, T, C, NH, scale):
        k_s = cuda.shared.array((R, HSV), float32, alignment=SHARED_ALIGN)
        v_s = cuda.shared.array((R, HSV), float32, alignment=SHARED_ALIGN)
        q_s = cuda.shared.array((K, HSV), float32, alignment=SHARED_ALIGN)  # scale * q
        g_s = cuda.shared.array((K, HSV), float32, alignment=SHARED_ALIGN)  # dout
        p_s = cuda.shared.array((R, KV), float32, alignment=SHARED_ALIGN)  # p^T: keys x queries
        ds_s = cuda.shared.array((R, KV), float32, alignment=SHARED_ALIGN)
        dsT_s = cuda.shared.array((DQ_ROWS, DQ_COLS), float32, alignment=SHARED_ALIGN)
        lse_s = cuda.shared.array(K, float32)
        delta_s = cuda.shared.array(K, float32)
        dq = cuda.local.array((RT, DT4, 4), float32)  # fused: this step's share of dq (query rows r0 + i)
        st = cuda.local.array((RT, CT), float32)  # s^T = k (scale q)^T
        dpt = cuda.local.array((RT, CT), float32)  # dp^T = v dout^T
        dk = cuda.local.array((RT, DT4, 4), float32)
        dv = cuda.local.array((RT, DT4, 4), float32)
        a_reg = cuda.local.array((RT, 4), float32)
        b_reg = cuda.local.array((RT, 4), float32)
        c_reg = cuda.local.array((CT, 4), float32)
        e_reg = cuda.local.array((CT, 4), float32)
        qd_reg = cuda.local.array((DT4, 4), float32)
        gd_reg = cuda.local.array((DT4, 4), float32)
        tid = cuda.threadIdx.x
        g = tid & (LANES - 1)
        r0 = ((tid & 1023) >> LANE_SHIFT) * RT
        bh = cuda.blockIdx.x
        b = bh // NH
        h = bh % NH
        k0 = cuda.blockIdx.y * R
        x = b * T * 3 * C + h * HS
        if GQA:  # the block is (batch, kv head): its dk, dv sum the terms of the G query heads of the group
            NKV = NH // G
            W = C + 2 * NKV * HS
            b = bh // NKV
            kvh = bh % NKV
            xk = b * T * W + C + kvh * HS
            xv = xk + NKV * HS
        for e in range(tid, R * HSW, NTHREADS):
            j = e // HSW
            d = e % HSW
            key = k0 + j
            if key < T and d < HS:
                k_s[j, d] = qkv[(xk + key * W if GQA else x + key * 3 * C + C) + d]
                v_s[j, d] = qkv[(xv + key * W if GQA else x + key * 3 * C + 2 * C) + d]
            else:
                k_s[j, d] = float32(0.0)
                v_s[j, d] = float32(0.0)
        for i in range(RT):
            for c in range(DT4):
                for w in range(4):
                    dk[i, c, w] = float32(0.0)
                    dv[i, c, w] = float32(0.0)
        if GQA:  # the query tiles t0 >= k0 of each of the group's G heads, one head after the other
            span = (T - k0 + K - 1) // K * K
        for t0 in range(k0, k0 + G * span if GQA else T, K):
            if GQA:
                hg = (t0 - k0) // span  # query head h of the group, its tile t0
                h = kvh * G + hg
                bh = b * NH + h
                x = b * T * W + h * HS
                t0 = t0 - hg * span
            cuda.syncthreads()
            for e in range(tid, K * HSW, NTHREADS):
                j = e // HSW
                d = e % HSW
                t = t0 + j
                if t < T and d < HS:
                    q_s[j, d] = qkv[(x + t * W if GQA else x + t * 3 * C) + d] * scale
                    g_s[j, d] = dout[(b * T + t) * C + h * HS + d]
                else:
                    q_s[j, d] = float32(0.0)
                    g_s[j, d] = float32(0.0)
            for j in range(tid, K, NTHREADS):
                t = t0 + j
                lse_s[j] = lse[bh * T + t] if t < T else float32(0.0)
                delta_s[j] = delta[bh * T + t] if t < T else float32(0.0)
            cuda.syncthreads()
            for i in range(RT):
                for c in range(CT):
                    st[i, c] = float32(0.0)
                    dpt[i, c] = float32(0.0)
            for d in range(0, HS4, 4):
                du = uint32(d)
                for i in range(RT):
                    for w in range(4):
                        a_reg[i, w] = k_s[r0 + i, du + w]
                        b_reg[i, w] = v_s[r0 + i, du + w]
                for c in range(CT):
                    for w in range(4):
                        c_reg[c, w] = q_s[g + LANES * c, du + w]
                        e_reg[c, w] = g_s[g + LANES * c, du + w]
                for w in range(4):
                    for i in range(RT):
                        for c in range(CT):
                            st[i, c] += a_reg[i, w] * c_reg[c, w]
                            dpt[i, c] += b_reg[i, w] * e_reg[c, w]
            for i in range(RT):
                key = k0 + r0 + i
                for c in range(CT):
                    j = g + LANES * c
                    t = t0 + j
                    p = float32(0.0)
                    ds = float32(0.0)
                    if key <= t and t < T:
                        p = math.exp(st[i, c] - lse_s[j])
                        ds = p * (dpt[i, c] - delta_s[j])
                    p_s[r0 + i, j] = p
                    ds_s[r0 + i, j] = ds
                    if FUSED:
                        dsT_s[j, r0 + i] = ds
            cuda.syncthreads()
            for j in range(0, K, 4):  # dv += p^T dout;  dk += ds^T (scale q), 4 queries per step
                ju = uint32(j)
                for i in range(RT):
                    for u in range(4):
                        a_reg[i, u] = p_s[r0 + i, ju + u]
                        b_reg[i, u] = ds_s[r0 + i, ju + u]
                for u in range(4):
                    for c in range(DT4):
                        for w in range(4):
                            gd_reg[c, w] = g_s[ju + u, 4 * g + 4 * LANES * c + w]
                            qd_reg[c, w] = q_s[ju + u, 4 * g + 4 * LANES * c + w]
                    for i in range(RT):
                        for c in range(DT4):
                            for w in range(4):
                                dv[i, c, w] += a_reg[i, u] * gd_reg[c, w]
                                dk[i, c, w] += b_reg[i, u] * qd_reg[c, w]
            if FUSED:  # dq[t0 + r0 + i] += scale * sum_s ds[s, t] k[s] over this block's keys s
                for i in range(RT):
                    for c in range(DT4):
                        for w in range(4):
                            dq[i, c, w] = float32(0.0)
                for j in range(0, R, 4):
                    ju = uint32(j)
                    for i in range(RT):
                        for u in range(4):
                            a_reg[i, u] = dsT_s[r0 + i, ju + u]
                    for u in range(4):
                        for c in range(DT4):
                            for w in range(4):
                                qd_reg[c, w] = k_s[ju + u, 4 * g + 4 * LANES * c + w]
                        for i in range(RT):
                            for c in range(DT4):
                                for w in range(4):
                                    dq[i, c, w] += a_reg[i, u] * qd_reg[c, w]
                for i in range(RT):
                    t = t0 + r0 + i
                    if t < T:
                        row = (b * T + t) * W + h * HS if GQA else (b * T + t) * 3 * C + h * HS
                        for c in range(DT4):
                            for w in range(4):
                                dd = 4 * g + 4 * LANES * c + w
                                if dd < HS:
                                    cuda.atomic.add(dqkv, row + dd, dq[i, c, w] * scale)
        for i in range(RT):
            key = k0 + r0 + i
            if key < T:
                row = (b * T + key) * W + kvh * HS if GQA else (b * T + key) * 3 * C + h * HS
                for c in range(DT4):
                    for w in range(4):
                        dd = 4 * g + 4 * LANES * c + w
                        if dd < HS:
                            dqkv[row + C + dd] = dk[i, c, w]
                            dqkv[row + (C + NKV * HS if GQA else 2 * C) + dd] = dv[i, c, w]

    return flash_backward_dkv_vec


@kernel
def flash_backward_prep_kernel(dqkv, delta, dout, out, B, T, C, NH, W):
    """Before the fused backward: delta[b,h,t] = dout[b,t,h] . out[b,t,h], and dq (the q columns of
    dqkv, rows of W = (NH + 2 NKV) HS floats) zeroed for the atomic adds. One thread per (b, t, h),
    h fastest (neighbours read neighbours)."""
    i = cuda.grid(1)
    if i < B * T * NH:
        h = i % NH
        bt = i // NH
        HS = C // NH
        o = bt * C + h * HS
        q = bt * W + h * HS
        acc = float32(0.0)
        for d in range(HS):
            acc += dout[o + d] * out[o + d]
            dqkv[q + d] = float32(0.0)
        delta[((bt // T) * NH + h) * T + bt % T] = acc


class FlashKernels(NamedTuple):
    forward: object
    backward_dq: object
    backward_dkv: object
    forward_tiles: FlashTiles
    backward_tiles: FlashTiles


def fit_flash_tiles(HS: int, tiles: FlashTiles, names: tuple[str, ...]) -> FlashTiles:
    """`tiles` made to work for head size HS in the kernels `names` ("forward", "dq", "dkv"): the
    16-byte forward is dropped where HS does not give whole runs of 4; then, until every kernel's
    shared tiles fit in FLASH_STATIC_SHARED, rows per thread are halved, then columns per lane, then
    warps (a fused backward halves rows and columns together, to stay square, else stops being fused)."""
    while True:
        if "forward" in names and tiles.vec and not flash_vec_supported(HS, tiles):
            tiles = tiles._replace(vec=False)
        if max(flash_shared_bytes(HS, tiles, n) for n in names) <= FLASH_STATIC_SHARED:
            return tiles
        if tiles.fused:
            if tiles.rt > 1 and tiles.ct > 1:
                tiles = tiles._replace(rt=tiles.rt // 2, ct=tiles.ct // 2)
            else:
                tiles = tiles._replace(fused=False)
        elif tiles.rt > 1:
            tiles = tiles._replace(rt=tiles.rt // 2)
        elif tiles.ct > 1:
            tiles = tiles._replace(ct=tiles.ct // 2)
        elif tiles.warps > 1:
            tiles = tiles._replace(warps=tiles.warps // 2)
        else:
            raise ValueError(f"head size {HS} is too large for the flash kernels' shared tiles")


def flash_tiles(HS: int) -> tuple[FlashTiles, FlashTiles]:
    """(forward, backward) block shapes for head size HS: the defaults, fitted by `fit_flash_tiles`."""
    if SIMULATOR:
        fwd, bwd = FLASH_FORWARD_TILES_SIM, FLASH_BACKWARD_TILES_SIM
    else:
        fwd, bwd = FLASH_FORWARD_TILES, FLASH_BACKWARD_TILES
    return fit_flash_tiles(HS, fwd, ("forward",)), fit_flash_tiles(HS, bwd, ("dq", "dkv"))


def flash_kernels(HS: int, forward_tiles: FlashTiles | None = None, backward_tiles: FlashTiles | None = None,
                  group: int = 1):  # fmt: skip
    """The three flash kernels for head size HS (default block shapes from `flash_tiles`) and `group` query
    heads per kv head (1: multi-head attention, GPT-2; the kernels are built per group, a compile-time
    constant, so that GPT-2's are exactly the multi-head kernels)."""
    default_fwd, default_bwd = flash_tiles(HS)
    ft, bt = forward_tiles or default_fwd, backward_tiles or default_bwd
    if ft.vec and not flash_vec_supported(HS, ft):
        raise ValueError(f"the 16-byte-load forward needs whole 4-float runs; {ft} does not give them at HS={HS}")
    if bt.vec and bt.cols % 4:
        raise ValueError(f"the 16-byte-load backward walks runs of 4 keys; {bt} has {bt.cols} per tile")
    if bt.fused and not (bt.vec and bt.rows == bt.cols):
        raise ValueError(f"the fused backward needs vec=True and square tiles (rows == cols); {bt} is not")
    G = int(group)
    forward = flash_forward_vec_kernel(HS, ft, G) if ft.vec else flash_forward_kernel(HS, ft, G)
    if bt.fused:
        return FlashKernels(forward, flash_backward_prep_kernel, flash_backward_dkv_vec_kernel(HS, bt, G), ft, bt)
    if bt.vec:
        dq, dkv = flash_backward_dq_vec_kernel(HS, bt, G), flash_backward_dkv_vec_kernel(HS, bt, G)
        return FlashKernels(forward, dq, dkv, ft, bt)
    return FlashKernels(forward, flash_backward_dq_kernel(HS, bt, G), flash_backward_dkv_kernel(HS, bt, G), ft, bt)


@kernel
def attention_delta_kernel(delta, dout, out, B, T, C, NH):
    """delta[b,h,t] = dout[b,t,h] . out[b,t,h] (the row sum of att * datt). The flash backward
    computes it inside its dq kernel; this stand-alone kernel is its naive twin for the tests."""
    i = cuda.grid(1)
    if i < B * NH * T:
        t = i % T
        h = (i // T) % NH
        b = i // (NH * T)
        HS = C // NH
        o = (b * T + t) * C + h * HS
        acc = float32(0.0)
        for d in range(HS):
            acc += dout[o + d] * out[o + d]
        delta[i] = acc


def attention_forward_flash(out, lse, qkv, B, T, C, NH, tiles=None, n_kv_head=None):
    """out (B,T,C) from qkv (B,T,(NH+2NKV)HS) (GPT-2: (B,T,3C)); lse (B,NH,T) saved for the backward.
    tiles: a FlashTiles. n_kv_head: NKV key/value heads (None: NH); query head h reads kv head h // (NH/NKV)."""
    NKV = _kv_heads(C, NH, n_kv_head)
    ks = flash_kernels(C // NH, forward_tiles=tiles, group=NH // NKV)
    ft = ks.forward_tiles
    grid = (B * NH, ceil_div(T, ft.rows))
    ks.forward[grid, ft.threads](out, lse, qkv, B, T, C, NH, np.float32(1.0 / math.sqrt(C // NH)))


def attention_backward_flash(dqkv, delta, dout, out, lse, qkv, B, T, C, NH, tiles=None, n_kv_head=None):
    """dqkv (B,T,(NH+2NKV)HS) written from dout (B,T,C); delta (B,NH,T) is scratch (written by the dq
    kernel, read by the dk/dv kernel). tiles: a FlashTiles for both backward kernels. With NKV < NH a
    dk/dv block owns a key tile of one kv head and walks the query tiles of each of the group's heads in
    turn, summing their terms in registers: still no atomics, deterministic (the fused opt-in adds dq by
    atomics, as for GPT-2)."""
    NKV = _kv_heads(C, NH, n_kv_head)
    ks = flash_kernels(C // NH, backward_tiles=tiles, group=NH // NKV)
    bt = ks.backward_tiles
    grid = (B * NH, ceil_div(T, bt.rows))
    scale = np.float32(1.0 / math.sqrt(C // NH))
    if bt.fused:
        threads = block_size(256, 32)
        W = C + 2 * NKV * (C // NH)
        ks.backward_dq[ceil_div(B * T * NH, threads), threads](dqkv, delta, dout, out, B, T, C, NH, W)
    else:
        ks.backward_dq[grid, bt.threads](dqkv, delta, qkv, dout, out, lse, B, T, C, NH, scale)
    ks.backward_dkv[(B * NKV, grid[1]), bt.threads](dqkv, delta, qkv, dout, lse, B, T, C, NH, scale)
