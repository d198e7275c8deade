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

Grouped-query attention (n_kv_head = NKV < NH, docs/variants.md): qkv is (B, T, (NH + 2 NKV) HS),
NH query heads then NKV key heads then NKV value heads, and query head h reads key/value head
h // (NH / NKV). Each path repeats every key/value head over its group of NH / NKV query heads
(repeat_kv_forward), runs the attention above on NH heads, and in the backward sums the
repeated heads' gradients back onto their key/value head (repeat_kv_backward). With NKV = NH
(GPT-2, n_kv_head None) the repeat is the identity and the arithmetic is exactly GPT-2's.
"""

from __future__ import annotations

import math

import numpy as np


# ----------------------------------------------------------------------------- head layout
def split_heads(
    qkv: np.ndarray, n_head: int, n_kv_head: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """qkv (B, T, (NH + 2 NKV) HS)  ->  q (B, NH, T, HS), k and v each (B, NKV, T, HS)

    n_kv_head None means NKV = NH (GPT-2: qkv is (B, T, 3C)). Views into qkv, no copy.
    """
    NH = n_head
    NKV = n_head if n_kv_head is None else n_kv_head
    B, T, width = qkv.shape
    HS = width // (NH + 2 * NKV)
    q = qkv[..., : NH * HS].reshape(B, T, NH, HS)
    k = qkv[..., NH * HS : (NH + NKV) * HS].reshape(B, T, NKV, HS)
    v = qkv[..., (NH + NKV) * HS :].reshape(B, T, NKV, HS)
    return q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)


def merge_heads(y: np.ndarray) -> np.ndarray:
    """y (B, NH, T, HS)  ->  (B, T, NH * HS)"""
    B, NH, T, HS = y.shape
    return y.transpose(0, 2, 1, 3).reshape(B, T, NH * HS)


def join_qkv(dq: np.ndarray, dk: np.ndarray, dv: np.ndarray) -> np.ndarray:
    """dq (B, NH, T, HS), dk and dv each (B, NKV, T, HS)  ->  dqkv (B, T, (NH + 2 NKV) HS),
    the inverse of split_heads."""
    return np.concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)], axis=-1)


def repeat_kv_forward(kv: np.ndarray, n_head: int) -> np.ndarray:
    """Give every query head its key (or value) head: query head h reads head h // (NH / NKV).

    kv (B, NKV, T, HS)  ->  (B, NH, T, HS), each head repeated NH / NKV times in a row
    (NKV = NH: kv itself, untouched).
    """
    group = n_head // kv.shape[1]
    if group == 1:
        return kv
    return np.repeat(kv, group, axis=1)  # heads [0, 0, 1, 1, ...] for group 2


def repeat_kv_backward(dkv_rep: np.ndarray, n_kv_head: int) -> np.ndarray:
    """dkv_rep (B, NH, T, HS)  ->  dkv (B, NKV, T, HS)

    A head read by a group of query heads collects the gradient of each of them: the sum over
    the group (NKV = NH: dkv_rep itself).
    """
    B, NH, T, HS = dkv_rep.shape
    group = NH // n_kv_head
    if group == 1:
        return dkv_rep
    return dkv_rep.reshape(B, n_kv_head, group, T, HS).sum(axis=2)


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


def attention_forward(qkv: np.ndarray, n_head: int, *, n_kv_head: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Naive causal self-attention.

    qkv (B, T, (NH + 2 NKV) HS)  ->  out (B, T, C = NH HS), att (B, NH, T, T) the attention probabilities
    (n_kv_head None: NKV = NH, qkv (B, T, 3C).)
    """
    q, k, v = split_heads(qkv, n_head, n_kv_head)
    y, att = causal_attention(q, repeat_kv_forward(k, n_head), repeat_kv_forward(v, n_head))
    return merge_heads(y), att


def attention_backward(
    dout: np.ndarray, qkv: np.ndarray, att: np.ndarray, n_head: int, *, n_kv_head: int | None = None
) -> np.ndarray:
    """dout (B, T, C), qkv (B, T, (NH + 2 NKV) HS), att (B, NH, T, T)  ->  dqkv (B, T, (NH + 2 NKV) HS)

        y = att v                        dv = attᵀ dy,   datt = dy vᵀ
        att = softmax(s) row-wise        ds = att * (datt - rowsum(datt * att))
        s = q kᵀ * scale                 dq = ds k * scale,   dk = dsᵀ q * scale
    Masked entries have att = 0, so they get ds = 0 without a second mask. k and v here are the
    key/value heads repeated over the query heads; with NKV < NH their gradients are summed back
    over each group (repeat_kv_backward).
    """
    q, k, v = split_heads(qkv, n_head, n_kv_head)
    B, NH, T, HS = q.shape
    NKV = k.shape[1]
    k, v = repeat_kv_forward(k, NH), repeat_kv_forward(v, NH)  # (B, NH, T, HS)
    scale = 1.0 / math.sqrt(HS)
    dy = dout.reshape(B, T, NH, HS).transpose(0, 2, 1, 3)  # (B, NH, T, HS)
    dv = att.swapaxes(-1, -2) @ dy
    datt = dy @ v.swapaxes(-1, -2)
    ds = att * (datt - (datt * att).sum(axis=-1, keepdims=True))
    dq = (ds @ k) * scale
    dk = (ds.swapaxes(-1, -2) @ q) * scale
    return join_qkv(dq, repeat_kv_backward(dk, NKV), repeat_kv_backward(dv, NKV))


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


def attention_forward_tiled(
    qkv: np.ndarray, n_head: int, block_size: int = 64, *, n_kv_head: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Causal self-attention with an online softmax over blocks of keys.

    qkv (B, T, (NH + 2 NKV) HS)  ->  out (B, T, C = NH HS), lse (B, NH, T) the log-sum-exp of each score row

    For each query row we keep a running max m, a running sum l = sum exp(s - m) and a
    running output acc = sum exp(s - m) v. A new block with row max m_blk rescales the old
    terms by exp(m - m_new) before adding its own. At the end y = acc / l, and
    lse = m + log(l) is all the backward needs to rebuild any block of probabilities.
    Working memory: one (B, NH, T, block) score block plus O(B * NH * T * HS).
    With NKV < NH the key/value heads are first repeated over their query groups.
    """
    q, k, v = split_heads(qkv, n_head, n_kv_head)
    k, v = repeat_kv_forward(k, n_head), repeat_kv_forward(v, n_head)  # (B, NH, T, HS)
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
    dout: np.ndarray,
    qkv: np.ndarray,
    out: np.ndarray,
    lse: np.ndarray,
    n_head: int,
    block_size: int = 64,
    *,
    n_kv_head: int | None = None,
) -> np.ndarray:
    """dout (B, T, C), qkv (B, T, (NH + 2 NKV) HS), out (B, T, C), lse (B, NH, T)  ->  dqkv (B, T, (NH + 2 NKV) HS)

    The same math as attention_backward, one key block at a time. The probabilities of a
    block are recomputed as p = exp(s - lse). The row sum rowsum(datt * att) over all keys
    equals rowsum(dy * y) (since y = att v), so it is known before the loop:
        D = rowsum(dy * y)
        per block:  dv_blk = pᵀ dy,  datt = dy v_blkᵀ,  ds = p * (datt - D),
                    dq += ds k_blk * scale,  dk_blk = dsᵀ q * scale
    and with NKV < NH the repeated key/value heads' gradients are summed over each group at the end.
    """
    q, k, v = split_heads(qkv, n_head, n_kv_head)
    NKV = k.shape[1]
    k, v = repeat_kv_forward(k, n_head), repeat_kv_forward(v, n_head)  # (B, NH, T, HS)
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
    return join_qkv(dq, repeat_kv_backward(dk, NKV), repeat_kv_backward(dv, NKV))
