"""The variants' ops (docs/variants.md) against float64 finite differences, by hand, and by their properties.

Gradients: as in test_ops_gradcheck.py, each op is made scalar as f = sum(out * R), every
coordinate of every input is differentiated with reference.gradcheck's 6th-order stencil and

    rel = |num - ana| / max(|num|, |ana|, 1e-5) <= 1e-6

per coordinate. The by-hand checks recompute a formula with the math module, element by
element, in float64: the same few operations in another order, so 1e-14 relative (a few dozen
ulps of 2.2e-16). Properties that hold exactly in real arithmetic (a rotation keeps norms,
scores depend on t - s only) are checked to 1e-13 of the values' scale, rounding of a few
dozen float64 operations.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from reference import attention as A
from reference import layers as L
from reference import rope as R
from reference.gradcheck import numerical_gradient, relative_error

TOL = 1e-6
B, T, C = 2, 5, 8


def rand(rng, *shape, scale=1.0):
    return scale * rng.standard_normal(shape)


def assert_grad(name, f, x, ana):
    num = numerical_gradient(f, x)
    assert ana.shape == x.shape, f"{name}: gradient shape {ana.shape} != input shape {x.shape}"
    assert ana.dtype == np.float64
    rel = relative_error(num, ana)
    worst = np.unravel_index(rel.argmax(), rel.shape)
    assert rel.max() <= TOL, (
        f"{name}: worst relative error {rel.max():.2e} at {worst}: numerical {num[worst]!r}, analytic {ana[worst]!r}"
    )


# ----------------------------------------------------------------------------- rmsnorm
def test_rmsnorm_all_inputs():
    rng = np.random.default_rng(20)
    x = rand(rng, B, T, C) * 3.0 + 1.0  # a nonzero mean: RMSNorm must not remove it
    w = 1.0 + 0.3 * rand(rng, C)
    Rr = rand(rng, B, T, C)
    f = lambda: float((L.rmsnorm_forward(x, w)[0] * Rr).sum())
    _, rstd = L.rmsnorm_forward(x, w)
    dx, dw = L.rmsnorm_backward(Rr, x, w, rstd)
    assert_grad("x", f, x, dx)
    assert_grad("weight", f, w, dw)


def test_rmsnorm_by_hand_no_mean_no_bias():
    x = np.array([[1.0, 2.0, 3.0, 4.0]])
    w = np.array([0.5, 1.0, 2.0, -1.0])
    out, rstd = L.rmsnorm_forward(x, w, eps=1e-5)
    ms = (1 + 4 + 9 + 16) / 4  # mean of squares 7.5; LayerNorm would use the variance 1.25
    np.testing.assert_allclose(rstd[0, 0], 1.0 / math.sqrt(ms + 1e-5), rtol=1e-15)
    expect = [xi / math.sqrt(ms + 1e-5) * wi for xi, wi in zip(x[0], w, strict=True)]
    np.testing.assert_allclose(out[0], expect, rtol=1e-15)


def test_layernorm_without_bias():
    rng = np.random.default_rng(21)
    x, w, Rr = rand(rng, B, T, C) + 0.5, 1.0 + 0.3 * rand(rng, C), rand(rng, B, T, C)
    f = lambda: float((L.layernorm_forward(x, w, None)[0] * Rr).sum())
    out, mean, rstd = L.layernorm_forward(x, w, None)
    np.testing.assert_array_equal(out, L.layernorm_forward(x, w, np.zeros(C))[0])  # the same as a zero bias
    dx, dw, db = L.layernorm_backward(Rr, x, w, mean, rstd, bias=False)
    assert db is None
    assert_grad("x", f, x, dx)
    assert_grad("weight", f, w, dw)


# ----------------------------------------------------------------------------- linear, embedding: no bias, no wpe
def test_linear_without_bias():
    rng = np.random.default_rng(22)
    OC = 6
    x, w, Rr = rand(rng, B, T, C), rand(rng, C, OC), rand(rng, B, T, OC)
    f = lambda: float((L.linear_forward(x, w, None) * Rr).sum())
    np.testing.assert_array_equal(L.linear_forward(x, w, None), x @ w)
    dx, dw, db = L.linear_backward(Rr, x, w, bias=False)
    assert db is None
    assert_grad("x", f, x, dx)
    assert_grad("weight", f, w, dw)


def test_embedding_without_position_table():
    rng = np.random.default_rng(23)
    V = 7
    wte = rand(rng, V, C)
    idx = np.array([[1, 3, 1, 1, 6], [3, 0, 6, 1, 1]])
    Rr = rand(rng, B, T, C)
    np.testing.assert_array_equal(L.embedding_forward(wte, None, idx), wte[idx])
    np.testing.assert_array_equal(L.embedding_forward(wte, None, idx, start=4), wte[idx])  # no table, no offset
    f = lambda: float((L.embedding_forward(wte, None, idx) * Rr).sum())
    dwte, dwpe = L.embedding_backward(Rr, idx, V, None)
    assert dwpe is None
    assert_grad("wte", f, wte, dwte)


# ----------------------------------------------------------------------------- silu, swiglu
def test_silu_gradient_by_hand_and_extremes():
    rng = np.random.default_rng(24)
    x, Rr = rand(rng, B, T, C, scale=3.0), rand(rng, B, T, C)
    f = lambda: float((L.silu_forward(x) * Rr).sum())
    assert_grad("x", f, x, L.silu_backward(Rr, x))
    for v in (-3.0, -0.5, 0.0, 1.0, 4.0):
        np.testing.assert_allclose(L.silu_forward(np.array([v]))[0], v / (1.0 + math.exp(-v)), rtol=1e-15, atol=0)
    with np.errstate(over="raise", invalid="raise"):  # no overflow warning reaches the caller; the limits are right
        big = L.silu_forward(np.array([-1000.0, 1000.0]))
        dbig = L.silu_backward(np.ones(2), np.array([-1000.0, 1000.0]))
    np.testing.assert_array_equal(big, [0.0, 1000.0])
    np.testing.assert_array_equal(dbig, [0.0, 1.0])


def test_swiglu_gradient():
    rng = np.random.default_rng(25)
    H = 6
    fc, Rr = rand(rng, B, T, 2 * H, scale=2.0), rand(rng, B, T, H)
    f = lambda: float((L.swiglu_forward(fc) * Rr).sum())
    assert_grad("fc", f, fc, L.swiglu_backward(Rr, fc))


def test_swiglu_by_hand_gate_first_then_up():
    rng = np.random.default_rng(26)
    H = 3
    fc = rand(rng, 1, 2, 2 * H)
    out = L.swiglu_forward(fc)
    assert out.shape == (1, 2, H)
    for t in range(2):
        for j in range(H):
            a, u = fc[0, t, j], fc[0, t, H + j]  # the gate's H columns come first, then the up projection's
            np.testing.assert_allclose(out[0, t, j], a / (1.0 + math.exp(-a)) * u, rtol=1e-14)
    swapped = np.concatenate([fc[..., H:], fc[..., :H]], axis=-1)
    assert not np.allclose(L.swiglu_forward(swapped), out)  # the order matters: silu(u) * a is not it


# ----------------------------------------------------------------------------- rope
NH_R, NKV_R, HS_R = 4, 2, 6  # a GQA layout: q's 4 heads, then k's 2, then v's 2; HS/2 = 3 pairs
W_R = (NH_R + 2 * NKV_R) * HS_R


@pytest.mark.parametrize("start,theta", [(0, 10000.0), (7, 10000.0), (3, 500.0)])
def test_rope_gradient(start, theta):
    rng = np.random.default_rng(27 + start)
    qkv, Rr = rand(rng, B, T, W_R), rand(rng, B, T, W_R)
    f = lambda: float((R.rope_forward(qkv, NH_R, NKV_R, theta, start) * Rr).sum())
    assert_grad(f"qkv start={start}", f, qkv, R.rope_backward(Rr, NH_R, NKV_R, theta, start))


@pytest.mark.parametrize("start", [0, 5])
def test_rope_by_hand_rotate_half(start):
    """Element by element with the math module: channel i pairs with i + HS/2 (not 2i with 2i + 1),
    angle (start + t) * theta ** (-2i / HS); q and k heads rotated, v copied."""
    rng = np.random.default_rng(28)
    theta = 100.0
    qkv = rand(rng, 1, 3, W_R)
    out = R.rope_forward(qkv, NH_R, NKV_R, theta, start)
    half = HS_R // 2
    expect = qkv.copy()
    for t in range(3):
        for head in range(NH_R + NKV_R):  # the q heads, then the k heads: contiguous HS-wide slices
            x = qkv[0, t, head * HS_R : (head + 1) * HS_R]
            for i in range(half):
                a = (start + t) * theta ** (-2 * i / HS_R)
                expect[0, t, head * HS_R + i] = x[i] * math.cos(a) - x[i + half] * math.sin(a)
                expect[0, t, head * HS_R + i + half] = x[i + half] * math.cos(a) + x[i] * math.sin(a)
    np.testing.assert_allclose(out, expect, rtol=0, atol=1e-14)
    n_rot = (NH_R + NKV_R) * HS_R
    np.testing.assert_array_equal(out[..., n_rot:], qkv[..., n_rot:])  # v is not rotated


def heads(x, n):
    """(B, T, n * HS) -> (B, T, n, HS)"""
    return x.reshape(*x.shape[:2], n, -1)


def test_rope_keeps_every_head_vector_norm_and_is_undone_by_its_backward():
    rng = np.random.default_rng(29)
    qkv = rand(rng, B, 9, W_R)
    out = R.rope_forward(qkv, NH_R, NKV_R, 10000.0, start=11)
    norms_in = np.linalg.norm(heads(qkv, NH_R + 2 * NKV_R), axis=-1)
    norms_out = np.linalg.norm(heads(out, NH_R + 2 * NKV_R), axis=-1)
    np.testing.assert_allclose(norms_out, norms_in, rtol=1e-14)
    assert not np.allclose(out, qkv)  # it did rotate
    # the backward is the transpose, and a rotation's transpose is its inverse
    np.testing.assert_allclose(R.rope_backward(out, NH_R, NKV_R, 10000.0, start=11), qkv, rtol=0, atol=1e-14)


def scores(qkv_rot):
    """Every q head against every k head, all position pairs: (B, NH, NKV, T, T) of q_t . k_s"""
    q = heads(qkv_rot[..., : NH_R * HS_R], NH_R)
    k = heads(qkv_rot[..., NH_R * HS_R : (NH_R + NKV_R) * HS_R], NKV_R)
    return np.einsum("btha,bsga->bhgts", q, k)


def test_rope_scores_depend_only_on_the_distance():
    """Shift every position by d (start = d): each q_t . k_s is unchanged, though q and k themselves move.
    And with the same q and k vector at every position, the score matrix is constant along diagonals."""
    rng = np.random.default_rng(30)
    qkv = rand(rng, B, 6, W_R)
    base = R.rope_forward(qkv, NH_R, NKV_R, 10000.0, start=0)
    scale = np.abs(scores(base)).max()
    for d in (1, 13, 400):
        shifted = R.rope_forward(qkv, NH_R, NKV_R, 10000.0, start=d)
        assert not np.allclose(shifted, base)
        np.testing.assert_allclose(scores(shifted), scores(base), rtol=0, atol=1e-13 * scale)
    same = np.broadcast_to(qkv[:, :1], qkv.shape).copy()  # position-independent content
    S = scores(R.rope_forward(same, NH_R, NKV_R, 10000.0))
    np.testing.assert_allclose(S[..., 1:, 1:], S[..., :-1, :-1], rtol=0, atol=1e-13 * np.abs(S).max())
    assert not np.allclose(S[..., 3, 3], S[..., 3, 0])  # but the distance does matter


def test_rope_theta_and_start_matter():
    rng = np.random.default_rng(31)
    qkv = rand(rng, 1, 8, W_R)
    a = R.rope_forward(qkv, NH_R, NKV_R, 10000.0)
    b = R.rope_forward(qkv, NH_R, NKV_R, 500.0)
    np.testing.assert_array_equal(a[:, 0], qkv[:, 0])  # position 0: angle 0 for every theta
    assert np.abs(a[:, 1:] - b[:, 1:]).max() > 1e-2
    # the tail of a sequence, rotated on its own from its absolute start, is the tail of the whole
    np.testing.assert_allclose(R.rope_forward(qkv[:, 5:], NH_R, NKV_R, 10000.0, start=5), a[:, 5:], rtol=1e-15)
    assert not np.allclose(R.rope_forward(qkv[:, 5:], NH_R, NKV_R, 10000.0, start=0), a[:, 5:])


def test_rope_tables_keep_the_dtype_and_use_exact_angles():
    cos32, sin32 = R.rope_tables(4, 8, 10000.0, start=1000, dtype=np.float32)
    cos64, sin64 = R.rope_tables(4, 8, 10000.0, start=1000)
    assert cos32.dtype == sin32.dtype == np.float32 and cos64.shape == (4, 4)
    np.testing.assert_array_equal(cos32, cos64.astype(np.float32))  # rounded once from the float64 angle
    np.testing.assert_allclose(cos64[2, 1], math.cos(1002 * 10000.0 ** (-2 / 8)), rtol=1e-14)
    np.testing.assert_allclose(sin64[3, 3], math.sin(1003 * 10000.0 ** (-6 / 8)), rtol=1e-14)
    rng = np.random.default_rng(32)
    qkv32 = rand(rng, 1, 3, W_R).astype(np.float32)
    assert R.rope_forward(qkv32, NH_R, NKV_R, 10000.0).dtype == np.float32
    assert R.rope_backward(qkv32, NH_R, NKV_R, 10000.0).dtype == np.float32


# ----------------------------------------------------------------------------- grouped-query attention
GQA_LAYOUTS = [(4, 2), (4, 1), (6, 3)]  # (NH, NKV): groups of 2, multi-query (one kv head), groups of 2 with 3 kv heads


def gqa_paths(NH, NKV):
    return {
        "naive": (lambda x: A.attention_forward(x, NH, n_kv_head=NKV), None),
        "tiled-block2": (lambda x: A.attention_forward_tiled(x, NH, 2, n_kv_head=NKV), 2),
        "tiled-block3": (lambda x: A.attention_forward_tiled(x, NH, 3, n_kv_head=NKV), 3),
    }


def gqa_backward(path, dout, qkv, NH, NKV):
    fwd, block = gqa_paths(NH, NKV)[path]
    out, saved = fwd(qkv)
    if block is None:
        return A.attention_backward(dout, qkv, saved, NH, n_kv_head=NKV)
    return A.attention_backward_tiled(dout, qkv, out, saved, NH, block, n_kv_head=NKV)


@pytest.mark.parametrize("NH,NKV", GQA_LAYOUTS)
@pytest.mark.parametrize("path", ["naive", "tiled-block2", "tiled-block3"])
def test_gqa_attention_gradient(path, NH, NKV):
    rng = np.random.default_rng(33)
    HS = 2
    qkv = rand(rng, B, T, (NH + 2 * NKV) * HS, scale=1.5)
    Rr = rand(rng, B, T, NH * HS)
    fwd = gqa_paths(NH, NKV)[path][0]
    f = lambda: float((fwd(qkv)[0] * Rr).sum())
    assert_grad(f"{path} NH={NH} NKV={NKV}", f, qkv, gqa_backward(path, Rr, qkv, NH, NKV))


def expand_to_mha(qkv, NH, NKV, HS):
    """Write a GQA qkv as an ordinary multi-head one: query head h gets k/v head h // (NH / NKV) as its own,
    column by column (a loop, not the code under test)."""
    group = NH // NKV
    q = qkv[..., : NH * HS]
    k_cols, v_cols = [], []
    for h in range(NH):
        g = h // group
        k_cols.append(qkv[..., (NH + g) * HS : (NH + g + 1) * HS])
        v_cols.append(qkv[..., (NH + NKV + g) * HS : (NH + NKV + g + 1) * HS])
    return np.concatenate([q, *k_cols, *v_cols], axis=-1)


@pytest.mark.parametrize("NH,NKV", GQA_LAYOUTS)
def test_gqa_is_multi_head_attention_with_shared_kv_heads(NH, NKV):
    """Forward: GQA = MHA on the expanded qkv. Backward: a kv head's gradient is the sum of its group's."""
    rng = np.random.default_rng(34)
    HS = 4
    qkv = rand(rng, B, 7, (NH + 2 * NKV) * HS, scale=1.5)
    dout = rand(rng, B, 7, NH * HS)
    mha = expand_to_mha(qkv, NH, NKV, HS)
    out, att = A.attention_forward(qkv, NH, n_kv_head=NKV)
    out_mha, att_mha = A.attention_forward(mha, NH)
    np.testing.assert_allclose(out, out_mha, rtol=0, atol=1e-15 * 10)
    dqkv = A.attention_backward(dout, qkv, att, NH, n_kv_head=NKV)
    dmha = A.attention_backward(dout, mha, att_mha, NH)
    group = NH // NKV
    col = lambda head: slice(head * HS, (head + 1) * HS)  # the columns of head number `head` of qkv
    expect = np.zeros_like(qkv)
    expect[..., : NH * HS] = dmha[..., : NH * HS]
    for h in range(NH):  # scatter each query head's k and v gradient onto the head it read
        g = h // group
        expect[..., col(NH + g)] += dmha[..., col(NH + h)]  # k
        expect[..., col(NH + NKV + g)] += dmha[..., col(2 * NH + h)]  # v
    np.testing.assert_allclose(dqkv, expect, rtol=0, atol=1e-14 * np.abs(expect).max())


def test_gqa_with_as_many_kv_heads_as_query_heads_is_gpt2_exactly():
    rng = np.random.default_rng(35)
    NH, HS = 3, 4
    qkv = rand(rng, B, 6, 3 * NH * HS)
    dout = rand(rng, B, 6, NH * HS)
    out, att = A.attention_forward(qkv, NH)
    out_k, att_k = A.attention_forward(qkv, NH, n_kv_head=NH)
    np.testing.assert_array_equal(out_k, out)
    np.testing.assert_array_equal(A.attention_backward(dout, qkv, att, NH, n_kv_head=NH),
                                  A.attention_backward(dout, qkv, att, NH))  # fmt: skip
    out_t, lse = A.attention_forward_tiled(qkv, NH, 2)
    np.testing.assert_array_equal(A.attention_forward_tiled(qkv, NH, 2, n_kv_head=NH)[0], out_t)
    np.testing.assert_array_equal(A.attention_backward_tiled(dout, qkv, out_t, lse, NH, 2, n_kv_head=NH),
                                  A.attention_backward_tiled(dout, qkv, out_t, lse, NH, 2))  # fmt: skip


def test_split_and_join_heads_of_a_gqa_layout():
    NH, NKV, HS = 4, 2, 3
    qkv = np.arange(2 * 5 * (NH + 2 * NKV) * HS, dtype=np.float64).reshape(2, 5, -1)
    q, k, v = A.split_heads(qkv, NH, NKV)
    assert q.shape == (2, NH, 5, HS) and k.shape == v.shape == (2, NKV, 5, HS)
    np.testing.assert_array_equal(k[1, 1, 2], qkv[1, 2, (NH + 1) * HS : (NH + 2) * HS])
    np.testing.assert_array_equal(v[0, 0, 4], qkv[0, 4, (NH + NKV) * HS : (NH + NKV + 1) * HS])
    np.testing.assert_array_equal(A.join_qkv(q, k, v), qkv)
    assert np.shares_memory(q, qkv)  # views, no copy
    np.testing.assert_array_equal(A.repeat_kv_forward(k, NH)[:, [0, 1, 2, 3]], k[:, [0, 0, 1, 1]])
