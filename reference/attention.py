"""Causal multi-head self-attention, two ways, each with a hand-written backward.

    naive   materialises the (T, T) score matrix of every head. Short and obviously right.
    tiled   walks over blocks of keys with an online softmax ("flash attention"): it never
            holds more than (T, block) scores per head, forward or backward, so its working
            memory grows like T * block instead of T^2. Same numbers up to rounding.

Shapes:
    B batch, T sequence length, C = NH * HS channels, NH heads, HS head size
    qkv (B, T, 3C): the output of c_attn, laid out [q | k | v] along the last axis, each
    C wide and split into NH heads of HS channels (head h owns channels h*HS:(h+1)*HS).

Both paths take qkv and return the heads merged back to (B, T, C), plus what their
backward needs. The scale is 1/sqrt(HS); position t attends to positions 0..t.
"""

from __future__ import annotations

import math

import numpy as np


# ----------------------------------------------------------------------------- head layout
def split_heads(qkv: np.ndarray, n_head: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """qkv (B, T, 3C)  ->  q, k, v each (B, NH, T, HS)"""
    B, T, C3 = qkv.shape
    HS = C3 // 3 // n_head
    qkv = qkv.reshape(B, T, 3, n_head, HS).transpose(2, 0, 3, 1, 4)  # (3, B, NH, T, HS)
    return qkv[0], qkv[1], qkv[2]


def merge_heads(y: np.ndarray) -> np.ndarray:
    """y (B, NH, T, HS)  ->  (B, T, NH * HS)"""
    B, NH, T, HS = y.shape
    return y.transpose(0, 2, 1, 3).reshape(B, T, NH * HS)


def join_qkv(dq: np.ndarray, dk: np.ndarray, dv: np.ndarray) -> np.ndarray:
    """dq, dk, dv each (B, NH, T, HS)  ->  dqkv (B, T, 3C), the inverse of split_heads."""
    B, NH, T, HS = dq.shape
    return np.stack([dq, dk, dv]).transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * NH * HS)


def causal_mask(Tq: int, Tk: int) -> np.ndarray:
    """(Tq, Tk) bool, True where query i may see key j.

    The Tq queries are the last Tq positions of the Tk keys (Tq == Tk in training; with a
    KV cache, Tk - Tq earlier positions are already cached), so query i sits at absolute
    position Tk - Tq + i and sees keys j <= Tk - Tq + i.
    """
    return np.arange(Tk)[None, :] <= np.arange(Tk - Tq, Tk)[:, None]


# ----------------------------------------------------------------------------- naive
def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Softmax attention on split heads, the (Tq, Tk) scores held in full.

    q (B, NH, Tq, HS), k and v (B, NH, Tk, HS), Tq <= Tk  ->  y (B, NH, Tq, HS), att (B, NH, Tq, Tk)
    att = softmax(q kᵀ / sqrt(HS) + mask),  y = att v
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = (q @ k.swapaxes(-1, -2)) * scale
    scores = np.where(causal_mask(q.shape[-2], k.shape[-2]), scores, -np.inf)
    scores -= scores.max(axis=-1, keepdims=True)  # every row sees at least one key: max is finite
    att = np.exp(scores)
    att /= att.sum(axis=-1, keepdims=True)
    return att @ v, att


def attention_forward(qkv: np.ndarray, n_head: int) -> tuple[np.ndarray, np.ndarray]:
    """Naive causal self-attention.

    qkv (B, T, 3C)  ->  out (B, T, C), att (B, NH, T, T) the attention probabilities
    """
    q, k, v = split_heads(qkv, n_head)
    y, att = causal_attention(q, k, v)
    return merge_heads(y), att


def attention_backward(dout: np.ndarray, qkv: np.ndarray, att: np.ndarray, n_head: int) -> np.ndarray:
    """dout (B, T, C), qkv (B, T, 3C), att (B, NH, T, T)  ->  dqkv (B, T, 3C)

        y = att v                        dv = attᵀ dy,   datt = dy vᵀ
        att = softmax(s) row-wise        ds = att * (datt - rowsum(datt * att))
        s = q kᵀ * scale                 dq = ds k * scale,   dk = dsᵀ q * scale
    Masked entries have att = 0, so they get ds = 0 without a second mask.
    """
    q, k, v = split_heads(qkv, n_head)
    B, NH, T, HS = q.shape
    scale = 1.0 / math.sqrt(HS)
    dy = dout.reshape(B, T, NH, HS).transpose(0, 2, 1, 3)  # (B, NH, T, HS)
    dv = att.swapaxes(-1, -2) @ dy
    datt = dy @ v.swapaxes(-1, -2)
    ds = att * (datt - (datt * att).sum(axis=-1, keepdims=True))
    dq = (ds @ k) * scale
    dk = (ds.swapaxes(-1, -2) @ q) * scale
    return join_qkv(dq, dk, dv)


# ----------------------------------------------------------------------------- tiled
def _key_blocks(T: int, block_size: int):
    if not (isinstance(block_size, int) and block_size >= 1):
        raise ValueError(f"attention block_size must be a positive int, got {block_size!r}")
    for k0 in range(0, T, block_size):
        yield k0, min(k0 + block_size, T)


def _block_scores(q: np.ndarray, k: np.ndarray, k0: int, k1: int, scale: float) -> np.ndarray:
    """Masked scores of queries k0..T-1 against keys k0..k1-1: (B, NH, T - k0, k1 - k0).

    Queries before k0 cannot see any key of the block (causality), so they are skipped;
    every query from k0 on sees at least key k0, so no row is all -inf.
    """
    s = (q[:, :, k0:] @ k[:, :, k0:k1].swapaxes(-1, -2)) * scale
    T = q.shape[2]
    visible = np.arange(k0, k1)[None, :] <= np.arange(k0, T)[:, None]
    return np.where(visible, s, -np.inf)


def attention_forward_tiled(qkv: np.ndarray, n_head: int, block_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Causal self-attention with an online softmax over blocks of keys.

    qkv (B, T, 3C)  ->  out (B, T, C), lse (B, NH, T) the log-sum-exp of each score row

    For each query row we keep a running max m, a running sum l = sum exp(s - m) and a
    running output acc = sum exp(s - m) v. A new block with row max m_blk rescales the old
    terms by exp(m - m_new) before adding its own. At the end y = acc / l, and
    lse = m + log(l) is all the backward needs to rebuild any block of probabilities.
    Working memory: one (B, NH, T, block) score block plus O(B * NH * T * HS).
    """
    q, k, v = split_heads(qkv, n_head)
    B, NH, T, HS = q.shape
    scale = 1.0 / math.sqrt(HS)
    m = np.full((B, NH, T, 1), -np.inf, dtype=qkv.dtype)
    l = np.zeros((B, NH, T, 1), dtype=qkv.dtype)
    acc = np.zeros((B, NH, T, HS), dtype=qkv.dtype)
    for k0, k1 in _key_blocks(T, block_size):
        s = _block_scores(q, k, k0, k1, scale)  # (B, NH, T - k0, blk)
        m_old = m[:, :, k0:]
        m_new = np.maximum(m_old, s.max(axis=-1, keepdims=True))
        p = np.exp(s - m_new)  # masked entries: exp(-inf) = 0
        rescale = np.exp(m_old - m_new)  # first block: exp(-inf) = 0
        l[:, :, k0:] = l[:, :, k0:] * rescale + p.sum(axis=-1, keepdims=True)
        acc[:, :, k0:] = acc[:, :, k0:] * rescale + p @ v[:, :, k0:k1]
        m[:, :, k0:] = m_new
    y = acc / l
    lse = (m + np.log(l))[..., 0]
    return merge_heads(y), lse


def attention_backward_tiled(
    dout: np.ndarray, qkv: np.ndarray, out: np.ndarray, lse: np.ndarray, n_head: int, block_size: int = 64
) -> np.ndarray:
    """dout (B, T, C), qkv (B, T, 3C), out (B, T, C), lse (B, NH, T)  ->  dqkv (B, T, 3C)

    The same math as attention_backward, one key block at a time. The probabilities of a
    block are recomputed as p = exp(s - lse). The row sum rowsum(datt * att) over all keys
    equals rowsum(dy * y) (since y = att v), so it is known before the loop:
        D = rowsum(dy * y)
        per block:  dv_blk = pᵀ dy,  datt = dy v_blkᵀ,  ds = p * (datt - D),
                    dq += ds k_blk * scale,  dk_blk = dsᵀ q * scale
    """
    q, k, v = split_heads(qkv, n_head)
    B, NH, T, HS = q.shape
    scale = 1.0 / math.sqrt(HS)
    dy = dout.reshape(B, T, NH, HS).transpose(0, 2, 1, 3)
    y = out.reshape(B, T, NH, HS).transpose(0, 2, 1, 3)
    D = (dy * y).sum(axis=-1, keepdims=True)  # (B, NH, T, 1)
    lse = lse[..., None]
    dq = np.zeros_like(q)
    dk = np.zeros_like(k)
    dv = np.zeros_like(v)
    for k0, k1 in _key_blocks(T, block_size):
        p = np.exp(_block_scores(q, k, k0, k1, scale) - lse[:, :, k0:])  # (B, NH, T - k0, blk)
        dy_rows = dy[:, :, k0:]
        dv[:, :, k0:k1] = p.swapaxes(-1, -2) @ dy_rows
        ds = p * (dy_rows @ v[:, :, k0:k1].swapaxes(-1, -2) - D[:, :, k0:])
        dq[:, :, k0:] += (ds @ k[:, :, k0:k1]) * scale
        dk[:, :, k0:k1] = (ds.swapaxes(-1, -2) @ q[:, :, k0:]) * scale
    return join_qkv(dq, dk, dv)
