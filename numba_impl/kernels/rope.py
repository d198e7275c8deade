"""Rotary position embeddings (config.position "rope", docs/variants.md): the "rotate half" convention.

Shapes (flat, row-major), HS head size (even), HALF = HS/2, NH query heads, NKV key/value heads,
W = (NH + 2 NKV) HS the qkv width:
    inp, out   (B, T, W)   [q (NH heads) | k (NKV heads) | v (NKV heads)]; out may be inp (in place)
    cos, sin   (P, HALF)   cos[p, i] = cos(p theta_i), theta_i = rope_theta^(-2i/HS), for positions
                           p = 0 .. P-1 (the model keeps P = n_ctx); `rope_tables` makes them

Forward: every q and k head vector x of the token at position p = start + t (its absolute position)
is rotated pair by pair (channel i with channel i + HALF):
    out[i]        = x[i] cos(p theta_i) - x[i + HALF] sin(p theta_i)
    out[i + HALF] = x[i + HALF] cos(p theta_i) + x[i] sin(p theta_i)
and v is copied unchanged (not even read when in place). Backward: the rotation by -p theta_i (a
rotation's transpose is its inverse), the same kernel with sin negated; dv passes unchanged.

The angles: p theta_i in float32 would be off by ~p * 6e-8 radians (6e-5 at p = 1024), so the tables
are computed on the host in float64 and rounded once to float32, as the reference does (its
rope_tables); the kernel only multiplies and adds.

One version: the op is memory-bound (read and write (NH + NKV) HS floats per token, plus the v copy
out of place) and one thread per pair already reads and writes whole 128-byte lines (consecutive
threads take consecutive pairs of one head: x[i] and x[i + HALF] are two coalesced runs); the
(P, HALF) tables are shared by every head of a token and stay in cache. It is a pass of its own,
not fused into the flash attention kernels: docs/numba_impl.md says why.
"""

from __future__ import annotations

import numpy as np

from numba_impl._compat import block_size, ceil_div, cuda, kernel


def rope_tables(n_positions: int, head_size: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin (n_positions, HS/2) float32 of the angles p * theta^(-2i/HS), p = 0 .. n_positions - 1:
    computed in float64, rounded once (host arrays; the model copies them to the device once)."""
    if head_size % 2:
        raise ValueError(f"rope rotates pairs of channels: the head size ({head_size}) must be even")
    half = head_size // 2
    inv_freq = float(theta) ** (-2.0 * np.arange(half, dtype=np.float64) / head_size)
    angles = np.arange(n_positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


@kernel
def rope_kernel(out, inp, cos, sin, BT, T, start, n_pairs, HALF, W, items, sign):
    """One thread per (row, item): item j < n_pairs = (NH + NKV) * HALF rotates pair j % HALF of head
    j // HALF; items past it (out of place only: items = W / 2) copy the v floats 2j, 2j + 1.
    sign +1: the forward rotation; -1: the inverse (the backward)."""
    i = cuda.grid(1)
    if i < BT * items:
        row = i // items
        j = i - row * items
        base = row * W
        if j < n_pairs:
            head = j // HALF
            pair = j - head * HALF
            p = (row % T + start) * HALF + pair  # absolute position start + t
            c = cos[p]
            s = sin[p] * sign
            a = base + head * 2 * HALF + pair
            x1 = inp[a]
            x2 = inp[a + HALF]
            out[a] = x1 * c - x2 * s
            out[a + HALF] = x2 * c + x1 * s
        else:
            v = base + 2 * j
            out[v] = inp[v]
            out[v + 1] = inp[v + 1]


def _rope(out, inp, cos, sin, B, T, NH, NKV, HS, start, sign):
    if HS % 2:
        raise ValueError(f"rope rotates pairs of channels: the head size ({HS}) must be even")
    if start < 0 or start + T > cos.size // (HS // 2):
        raise ValueError(f"rope: positions {start} .. {start + T - 1} are outside the tables' {cos.size // (HS // 2)}")
    HALF = HS // 2
    W = (NH + 2 * NKV) * HS
    n_pairs = (NH + NKV) * HALF
    items = n_pairs if out is inp else W // 2  # in place: v stays where it is
    threads = block_size(256, 32)
    rope_kernel[ceil_div(B * T * items, threads), threads](
        out, inp, cos, sin, B * T, T, start, n_pairs, HALF, W, items, np.float32(sign)
    )


def rope_forward(out, inp, cos, sin, B, T, NH, NKV, HS, start=0):
    """out (B, T, W) = inp with every q and k head rotated by its absolute position start + t (v copied).
    cos, sin: device tables (P, HS/2) from `rope_tables`, P >= start + T. out may be inp."""
    _rope(out, inp, cos, sin, B, T, NH, NKV, HS, start, 1.0)


def rope_backward(dinp, dout, cos, sin, B, T, NH, NKV, HS, start=0):
    """dinp (B, T, W) = dout with every q and k head rotated back by -(start + t) theta (dv copied).
    dinp may be dout: the model rotates the attention's dqkv in place."""
    _rope(dinp, dout, cos, sin, B, T, NH, NKV, HS, start, -1.0)
