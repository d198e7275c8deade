"""Rotary position embeddings (RoPE), the "rotate half" convention of GPT-NeoX and Llama.

With rotary positions the model has no position table: instead, right after the qkv projection,
every query head and every key head is rotated by its token's absolute position t. A head vector
x of HS channels is cut into halves; channel i is paired with channel i + HS/2, and the pair is
rotated by the angle t * theta_i:

    out[i]        = x[i] cos(t theta_i) - x[i + HS/2] sin(t theta_i)        i = 0 .. HS/2 - 1
    out[i + HS/2] = x[i + HS/2] cos(t theta_i) + x[i] sin(t theta_i)
    theta_i = rope_theta ** (-2 i / HS)

Rotating q_t by t and k_s by s leaves q_t . k_s a function of t - s only (a rotation by a
composed with the inverse of a rotation by b is a rotation by a - b), so attention sees relative
positions. v is not rotated. The backward is the rotation by -t theta_i: a rotation's transpose
is its inverse.

Shapes:
    B batch, T sequence length, NH query heads, NKV key/value heads, HS head size
    qkv (B, T, (NH + 2 NKV) HS): [q (NH heads) | k (NKV heads) | v (NKV heads)], head h of a part
    at channels h*HS:(h+1)*HS of that part (docs/variants.md). GPT-2's layout is NKV = NH.
"""

from __future__ import annotations

import numpy as np


def rope_tables(
    T: int, head_size: int, theta: float, start: int = 0, dtype=np.float64
) -> tuple[np.ndarray, np.ndarray]:
    """The rotation of positions start .. start + T - 1.

    ->  cos (T, HS/2), sin (T, HS/2):  cos[t, i] = cos((start + t) theta_i),  theta_i = theta ** (-2 i / HS)

    The angles are computed in float64 and rounded once to `dtype`: a float32 angle (start + t) theta_i
    would already be off by up to ~(start + t) * 6e-8 radians (6e-5 at position 1024).
    """
    half = head_size // 2
    inv_freq = theta ** (-2.0 * np.arange(half, dtype=np.float64) / head_size)  # theta_i, (HS/2,)
    positions = np.arange(start, start + T, dtype=np.float64)  # (T,)
    angles = positions[:, None] * inv_freq[None, :]  # (T, HS/2)
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


def rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate each pair (i, i + HS/2) of every head vector by the angle whose cos and sin are given.

    x (B, T, heads, HS), cos/sin (T, HS/2)  ->  out (B, T, heads, HS)
        out[..., :HS/2] = x1 cos - x2 sin,   out[..., HS/2:] = x2 cos + x1 sin
    with x1 = x[..., :HS/2], x2 = x[..., HS/2:]. rotate(x, cos, -sin) is the inverse rotation.
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos[:, None, :], sin[:, None, :]  # (T, 1, HS/2): the same angle for every head
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def rope_forward(qkv: np.ndarray, n_head: int, n_kv_head: int, theta: float, start: int = 0) -> np.ndarray:
    """Rotate the q and k heads of a qkv tensor by their positions start .. start + T - 1.

    qkv (B, T, (NH + 2 NKV) HS)  ->  out (B, T, (NH + 2 NKV) HS), q and k rotated, v unchanged

    start > 0 when generating with a KV cache: the T tokens continue `start` cached ones and are
    rotated at their absolute positions.
    """
    B, T, width = qkv.shape
    HS = width // (n_head + 2 * n_kv_head)
    n_rot = (n_head + n_kv_head) * HS  # the q and k channels; the v channels follow
    cos, sin = rope_tables(T, HS, theta, start, dtype=qkv.dtype)
    qk = qkv[..., :n_rot].reshape(B, T, n_head + n_kv_head, HS)  # every q head, then every k head
    qk_rot = rotate(qk, cos, sin).reshape(B, T, n_rot)
    return np.concatenate([qk_rot, qkv[..., n_rot:]], axis=-1)


def rope_backward(dout: np.ndarray, n_head: int, n_kv_head: int, theta: float, start: int = 0) -> np.ndarray:
    """dout (B, T, (NH + 2 NKV) HS)  ->  dqkv (B, T, (NH + 2 NKV) HS)

    The forward is linear in qkv: each pair of q/k channels is multiplied by the rotation
    matrix R(a) = [[cos a, -sin a], [sin a, cos a]]. So the gradient is multiplied by R(a)ᵀ = R(-a):
        dx1 = d1 cos + d2 sin,   dx2 = d2 cos - d1 sin
    (rotate with -sin). The v channels pass their gradient unchanged.
    """
    B, T, width = dout.shape
    HS = width // (n_head + 2 * n_kv_head)
    n_rot = (n_head + n_kv_head) * HS
    cos, sin = rope_tables(T, HS, theta, start, dtype=dout.dtype)
    dqk = dout[..., :n_rot].reshape(B, T, n_head + n_kv_head, HS)
    dqk_in = rotate(dqk, cos, -sin).reshape(B, T, n_rot)
    return np.concatenate([dqk_in, dout[..., n_rot:]], axis=-1)
