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

flash (tiled, online softmax; memory O(B*NH*T)):
    attention_forward_flash   one thread per query row; the block of BQ query rows walks the keys
                              in tiles of BQ staged in shared memory, keeping a running max m, a
                              running sum l and an un-normalised output row; stores
                              lse = m + log(l) (B,NH,T) for the backward.
    attention_backward_flash  recomputes p = exp(scale*q.k - lse) instead of reading att:
                              D[t] = dout[t] . out[t];  ds = p * (dout[t].v[s] - D[t])
                              dq[t] = scale * sum_s ds k[s]   (one thread per query)
                              dk[s] = scale * sum_t ds q[t];  dv[s] = sum_t p dout[t]   (one thread per key)
Head size is a compile-time constant of the flash kernels (built per HS by `flash_kernels`).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from numba_impl._compat import SIMULATOR, block_size, ceil_div, cuda, float32, kernel

NEG_INF = float32(-np.inf)


# ============================================================================= naive
@kernel
def attention_scores_kernel(preatt, qkv, B, T, C, NH, scale):
    """preatt[b,h,t,s] = scale * q[b,t,h] . k[b,s,h] for s <= t (entries above the diagonal unused)."""
    i = cuda.grid(1)
    if i < B * NH * T * T:
        s = i % T
        t = (i // T) % T
        h = (i // (T * T)) % NH
        b = i // (NH * T * T)
        if s <= t:
            HS = C // NH
            q = b * T * 3 * C + t * 3 * C + h * HS
            k = b * T * 3 * C + s * 3 * C + C + h * HS
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
def attention_values_kernel(out, att, qkv, B, T, C, NH):
    """out[b,t,h*HS+d] = sum_{s<=t} att[b,h,t,s] v[b,s,h,d]; one thread per output element."""
    i = cuda.grid(1)
    if i < B * T * C:
        c = i % C
        t = (i // C) % T
        b = i // (T * C)
        HS = C // NH
        h = c // HS
        arow = ((b * NH + h) * T + t) * T
        v = b * T * 3 * C + 2 * C + c
        acc = float32(0.0)
        for s in range(t + 1):
            acc += att[arow + s] * qkv[v + s * 3 * C]
        out[i] = acc


@kernel
def attention_datt_kernel(datt, dout, qkv, B, T, C, NH):
    """datt[b,h,t,s] = dout[b,t,h] . v[b,s,h] for s <= t."""
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
            v = b * T * 3 * C + s * 3 * C + 2 * C + h * HS
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
def attention_dqkv_kernel(dqkv, dpreatt, att, dout, qkv, B, T, C, NH, scale):
    """One thread per (b, p, c): dq at query p, dk and dv at key p, for channel c = h*HS + d."""
    i = cuda.grid(1)
    if i < B * T * C:
        c = i % C
        p = (i // C) % T
        b = i // (T * C)
        HS = C // NH
        h = c // HS
        rows = (b * NH + h) * T  # first row of this (b, h) in the (B,NH,T,T) arrays
        x = b * T * 3 * C  # qkv[b, 0, 0]
        dq = float32(0.0)
        for s in range(p + 1):  # dq[p] = scale * sum_s dpreatt[p, s] k[s]
            dq += dpreatt[(rows + p) * T + s] * qkv[x + s * 3 * C + C + c]
        dk = float32(0.0)
        dv = float32(0.0)
        for t in range(p, T):  # dk[p] = scale * sum_t dpreatt[t, p] q[t];  dv[p] = sum_t att[t, p] dout[t]
            dk += dpreatt[(rows + t) * T + p] * qkv[x + t * 3 * C + c]
            dv += att[(rows + t) * T + p] * dout[(b * T + t) * C + c]
        y = x + p * 3 * C
        dqkv[y + c] = dq * scale
        dqkv[y + C + c] = dk * scale
        dqkv[y + 2 * C + c] = dv


def attention_forward_naive(out, preatt, att, qkv, B, T, C, NH):
    """out (B,T,C) from qkv (B,T,3C); fills preatt and att (B,NH,T,T) for the backward."""
    scale = np.float32(1.0 / math.sqrt(C // NH))
    threads = block_size(256, 32)
    n_scores = B * NH * T * T
    attention_scores_kernel[ceil_div(n_scores, threads), threads](preatt, qkv, B, T, C, NH, scale)
    attention_softmax_kernel[ceil_div(B * NH * T, threads), threads](att, preatt, B * NH, T)
    attention_values_kernel[ceil_div(B * T * C, threads), threads](out, att, qkv, B, T, C, NH)


def attention_backward_naive(dqkv, datt, dpreatt, dout, att, qkv, B, T, C, NH):
    """dqkv (B,T,3C) written from dout (B,T,C); datt, dpreatt (B,NH,T,T) are scratch."""
    scale = np.float32(1.0 / math.sqrt(C // NH))
    threads = block_size(256, 32)
    attention_datt_kernel[ceil_div(B * NH * T * T, threads), threads](datt, dout, qkv, B, T, C, NH)
    attention_softmax_backward_kernel[ceil_div(B * NH * T, threads), threads](dpreatt, datt, att, B * NH, T)
    attention_dqkv_kernel[ceil_div(B * T * C, threads), threads](dqkv, dpreatt, att, dout, qkv, B, T, C, NH, scale)


# ============================================================================= flash
@functools.cache
def flash_kernels(HS: int, BQ: int):
    """The flash kernels for head size HS and tiles of BQ queries / BQ keys (BQ threads per block).

    Grid: (ceil(T / BQ), B * NH); block (b*NH + h, tile) owns rows tile*BQ .. tile*BQ+BQ-1 of head h."""

    @kernel
    def flash_forward_kernel(out, lse, qkv, B, T, C, NH, scale):
        k_tile = cuda.shared.array((BQ, HS), float32)
        v_tile = cuda.shared.array((BQ, HS), float32)
        q = cuda.local.array(HS, float32)
        acc = cuda.local.array(HS, float32)
        scores = cuda.local.array(BQ, float32)
        bh = cuda.blockIdx.y
        b = bh // NH
        h = bh % NH
        q0 = cuda.blockIdx.x * BQ
        t = q0 + cuda.threadIdx.x
        x = b * T * 3 * C + h * HS  # qkv[b, 0, h*HS]
        if t < T:
            for d in range(HS):
                q[d] = qkv[x + t * 3 * C + d] * scale
        for d in range(HS):
            acc[d] = float32(0.0)
        m = NEG_INF
        l_sum = float32(0.0)
        last_key = min(T, q0 + BQ)  # keys this block needs: 0 .. last_key-1
        for k0 in range(0, last_key, BQ):
            for e in range(cuda.threadIdx.x, BQ * HS, BQ):  # stage keys and values, coalesced along d
                s = k0 + e // HS
                d = e % HS
                if s < T:
                    k_tile[e // HS, d] = qkv[x + s * 3 * C + C + d]
                    v_tile[e // HS, d] = qkv[x + s * 3 * C + 2 * C + d]
            cuda.syncthreads()
            if t < T and k0 <= t:
                n_keys = min(BQ, t - k0 + 1)  # causal: keys k0 .. t
                tile_max = NEG_INF
                for j in range(n_keys):
                    dot = float32(0.0)
                    for d in range(HS):
                        dot += q[d] * k_tile[j, d]
                    scores[j] = dot
                    tile_max = max(tile_max, dot)
                m_new = max(m, tile_max)
                correction = math.exp(m - m_new)
                l_sum *= correction
                for d in range(HS):
                    acc[d] *= correction
                for j in range(n_keys):
                    p = math.exp(scores[j] - m_new)
                    l_sum += p
                    for d in range(HS):
                        acc[d] += p * v_tile[j, d]
                m = m_new
            cuda.syncthreads()
        if t < T:
            inv = float32(1.0) / l_sum
            o = (b * T + t) * C + h * HS
            for d in range(HS):
                out[o + d] = acc[d] * inv
            lse[bh * T + t] = m + math.log(l_sum)

    @kernel
    def flash_backward_dq_kernel(dqkv, delta, qkv, dout, lse, B, T, C, NH, scale):
        """One thread per query t: dq[t] = scale * sum_{s<=t} p (dout[t].v[s] - D[t]) k[s]."""
        k_tile = cuda.shared.array((BQ, HS), float32)
        v_tile = cuda.shared.array((BQ, HS), float32)
        q = cuda.local.array(HS, float32)
        g = cuda.local.array(HS, float32)
        dq = cuda.local.array(HS, float32)
        bh = cuda.blockIdx.y
        b = bh // NH
        h = bh % NH
        q0 = cuda.blockIdx.x * BQ
        t = q0 + cuda.threadIdx.x
        x = b * T * 3 * C + h * HS
        lse_t = float32(0.0)
        d_t = float32(0.0)
        if t < T:
            o = (b * T + t) * C + h * HS
            for d in range(HS):
                q[d] = qkv[x + t * 3 * C + d] * scale
                g[d] = dout[o + d]
            lse_t = lse[bh * T + t]
            d_t = delta[bh * T + t]
        for d in range(HS):
            dq[d] = float32(0.0)
        for k0 in range(0, min(T, q0 + BQ), BQ):
            for e in range(cuda.threadIdx.x, BQ * HS, BQ):
                s = k0 + e // HS
                d = e % HS
                if s < T:
                    k_tile[e // HS, d] = qkv[x + s * 3 * C + C + d]
                    v_tile[e // HS, d] = qkv[x + s * 3 * C + 2 * C + d]
            cuda.syncthreads()
            if t < T and k0 <= t:
                for j in range(min(BQ, t - k0 + 1)):
                    qk = float32(0.0)
                    gv = float32(0.0)
                    for d in range(HS):
                        qk += q[d] * k_tile[j, d]
                        gv += g[d] * v_tile[j, d]
                    ds = math.exp(qk - lse_t) * (gv - d_t)
                    for d in range(HS):
                        dq[d] += ds * k_tile[j, d]
            cuda.syncthreads()
        if t < T:
            y = (b * T + t) * 3 * C + h * HS
            for d in range(HS):
                dqkv[y + d] = dq[d] * scale

    @kernel
    def flash_backward_dkv_kernel(dqkv, delta, qkv, dout, lse, B, T, C, NH, scale):
        """One thread per key s: dk[s] = scale * sum_{t>=s} ds q[t];  dv[s] = sum_{t>=s} p dout[t]."""
        q_tile = cuda.shared.array((BQ, HS), float32)
        g_tile = cuda.shared.array((BQ, HS), float32)
        lse_tile = cuda.shared.array(BQ, float32)
        delta_tile = cuda.shared.array(BQ, float32)
        k = cuda.local.array(HS, float32)
        v = cuda.local.array(HS, float32)
        dk = cuda.local.array(HS, float32)
        dv = cuda.local.array(HS, float32)
        bh = cuda.blockIdx.y
        b = bh // NH
        h = bh % NH
        s0 = cuda.blockIdx.x * BQ
        s = s0 + cuda.threadIdx.x
        x = b * T * 3 * C + h * HS
        if s < T:
            for d in range(HS):
                k[d] = qkv[x + s * 3 * C + C + d] * scale
                v[d] = qkv[x + s * 3 * C + 2 * C + d]
        for d in range(HS):
            dk[d] = float32(0.0)
            dv[d] = float32(0.0)
        for t0 in range(s0, T, BQ):  # queries t >= s0 can see keys of this block
            for e in range(cuda.threadIdx.x, BQ * HS, BQ):
                t = t0 + e // HS
                d = e % HS
                if t < T:
                    q_tile[e // HS, d] = qkv[x + t * 3 * C + d]
                    g_tile[e // HS, d] = dout[(b * T + t) * C + h * HS + d]
            if t0 + cuda.threadIdx.x < T:
                lse_tile[cuda.threadIdx.x] = lse[bh * T + t0 + cuda.threadIdx.x]
                delta_tile[cuda.threadIdx.x] = delta[bh * T + t0 + cuda.threadIdx.x]
            cuda.syncthreads()
            if s < T:
                for j in range(max(0, s - t0), min(BQ, T - t0)):  # causal: queries t >= s
                    qk = float32(0.0)
                    gv = float32(0.0)
                    for d in range(HS):
                        qk += q_tile[j, d] * k[d]
                        gv += g_tile[j, d] * v[d]
                    p = math.exp(qk - lse_tile[j])
                    ds = p * (gv - delta_tile[j])
                    for d in range(HS):
                        dv[d] += p * g_tile[j, d]
                        dk[d] += ds * q_tile[j, d]
            cuda.syncthreads()
        if s < T:
            y = (b * T + s) * 3 * C + h * HS
            for d in range(HS):
                dqkv[y + C + d] = dk[d] * scale
                dqkv[y + 2 * C + d] = dv[d]

    return flash_forward_kernel, flash_backward_dq_kernel, flash_backward_dkv_kernel


@kernel
def attention_delta_kernel(delta, dout, out, B, T, C, NH):
    """delta[b,h,t] = dout[b,t,h] . out[b,t,h] (the row sum of att * datt)."""
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


FLASH_TILE_MAX = 128  # queries (and keys) per tile = threads per block, at most
FLASH_SHARED_BYTES = (
    32 * 1024
)  # the two staged (tile, HS) float32 tiles stay well inside 48 KiB of static shared memory
FLASH_TILE_SIM = 4


def flash_tile(HS: int) -> int:
    """Queries per block: the largest power of two <= 128 whose two (tile, HS) tiles fit in 32 KiB
    (64 at GPT-2's HS = 64). A sweep on an H100 at T=1024 ran 16 < 32 < 64 in time order."""
    if SIMULATOR:
        return FLASH_TILE_SIM
    tile = FLASH_TILE_MAX
    while tile > 16 and 2 * tile * HS * 4 > FLASH_SHARED_BYTES:
        tile //= 2
    return tile


def _flash_setup(B, T, C, NH, tile=None):
    HS = C // NH
    BQ = tile or flash_tile(HS)
    grid = (ceil_div(T, BQ), B * NH)
    return flash_kernels(HS, BQ), grid, BQ, np.float32(1.0 / math.sqrt(HS))


def attention_forward_flash(out, lse, qkv, B, T, C, NH, tile=None):
    """out (B,T,C) from qkv (B,T,3C); lse (B,NH,T) saved for the backward. tile: queries per block."""
    (fwd, _, _), grid, BQ, scale = _flash_setup(B, T, C, NH, tile)
    fwd[grid, BQ](out, lse, qkv, B, T, C, NH, scale)


def attention_backward_flash(dqkv, delta, dout, out, lse, qkv, B, T, C, NH, tile=None):
    """dqkv (B,T,3C) written from dout (B,T,C); delta (B,NH,T) is scratch. tile: as in the forward."""
    (_, dq_kernel, dkv_kernel), grid, BQ, scale = _flash_setup(B, T, C, NH, tile)
    threads = block_size(256, 32)
    attention_delta_kernel[ceil_div(B * NH * T, threads), threads](delta, dout, out, B, T, C, NH)
    dq_kernel[grid, BQ](dqkv, delta, qkv, dout, lse, B, T, C, NH, scale)
    dkv_kernel[grid, BQ](dqkv, delta, qkv, dout, lse, B, T, C, NH, scale)
