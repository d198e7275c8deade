"""The variants' kernels (docs/variants.md) against the float64 reference and against their naive twins, on
ragged shapes (not multiples of any block, lane or run of 4): RMSNorm, LayerNorm without bias, SwiGLU,
RoPE (its tables, forward, backward, in place, a non-zero start), the embedding without a position
table, and grouped-query attention in the naive and every flash kernel (NH/NKV = 4/2, 4/1, 6/3; head
sizes that are and are not multiples of 4; the fused backward). Outputs that are written (not
accumulated) are poisoned with NaN first: every element must be written.
Tolerance: KERNEL_REL (helpers.py): each output sums at most ~100 float32 terms here."""

from __future__ import annotations

import numpy as np
import pytest

from numba_impl._compat import cuda
from numba_impl.kernels import attention, encoder, layernorm, rmsnorm, rope, swiglu
from numba_impl.kernels.attention import FlashTiles
from reference import attention as ref_attention
from reference import layers as ref_layers
from reference import rope as ref_rope
from tests.numba_impl.helpers import KERNEL_REL, dev, host, max_rel, needs_cuda, rng

pytestmark = needs_cuda


def _nan(n):
    return dev(np.full(n, np.nan))


# ----------------------------------------------------------------------------- RMSNorm
@pytest.mark.parametrize(
    "C, vec",
    [
        (70, False),  # 3 values per lane, the last lane slice partial: scalar accesses
        (72, True),  # runs of 4: one per lane, 18 of the 32 lanes hold one
        (136, True),  # two runs per lane, the second on 2 lanes only
    ],
)
def test_rmsnorm_naive_and_warp_match_reference_and_each_other(C, vec):
    N, eps = 13, 1e-5  # 13 rows over the backward's 2 blocks (one warp each in the simulator)
    assert layernorm._row_vectorized(C, dev(np.zeros(4))) == vec
    r = rng(60)
    x = 1.5 + r.standard_normal((N, C))  # an offset: the mean square is not the variance
    w = 1.0 + 0.1 * r.standard_normal(C)
    dout = r.standard_normal((N, C))
    ref_out, ref_rstd = ref_layers.rmsnorm_forward(x, w, eps)
    ref_dx, ref_dw = ref_layers.rmsnorm_backward(dout, x, w, ref_rstd)
    got = {}
    for name, fwd, bwd in (
        ("naive", rmsnorm.rmsnorm_forward_naive, rmsnorm.rmsnorm_backward_naive),
        ("warp", rmsnorm.rmsnorm_forward, rmsnorm.rmsnorm_backward),
    ):
        out, rstd = _nan(N * C), _nan(N)
        fwd(out, rstd, dev(x), dev(w), N, C, eps)
        dx, dw = dev(np.ones((N, C))), dev(np.ones(C))  # the backward accumulates
        bwd(dx, dw, dev(dout), dev(x), dev(w), rstd, N, C)
        got[name] = [host(out, (N, C)), host(rstd, (N, 1)), host(dx, (N, C)) - 1, host(dw, (C,)) - 1]
        for g, want in zip(got[name], (ref_out, ref_rstd, ref_dx, ref_dw), strict=True):
            assert np.isfinite(g).all() and max_rel(g, want) <= KERNEL_REL, name
    for g, want in zip(got["warp"], got["naive"], strict=True):
        assert max_rel(g, want) <= KERNEL_REL
    # no atomics in the dweight sums: a second backward gives the same bits
    dx, dw = dev(np.ones((N, C))), dev(np.ones(C))
    out, rstd = _nan(N * C), _nan(N)
    rmsnorm.rmsnorm_forward(out, rstd, dev(x), dev(w), N, C, eps)
    rmsnorm.rmsnorm_backward(dx, dw, dev(dout), dev(x), dev(w), rstd, N, C)
    assert np.array_equal(host(dw, (C,)) - 1, got["warp"][3])


# ----------------------------------------------------------------------------- LayerNorm without bias
@pytest.mark.parametrize("C", [70, 72])  # scalar and 16-byte row accesses
def test_layernorm_without_bias_matches_reference_and_the_zero_bias_kernels(C):
    """bias=None / dbias=None (config.bias False): the reference's layernorm_forward(x, w, None) and its
    backward with bias=False; and bit for bit the kernels with a zero bias (x + 0 is x), dweight too."""
    N, eps = 13, 1e-5
    r = rng(61)
    x = 3.0 + 2.0 * r.standard_normal((N, C))
    w = 1.0 + 0.1 * r.standard_normal(C)
    dout = r.standard_normal((N, C))
    ref_out, ref_mean, ref_rstd = ref_layers.layernorm_forward(x, w, None, eps)
    ref_dx, ref_dw, ref_db = ref_layers.layernorm_backward(dout, x, w, ref_mean, ref_rstd, bias=False)
    assert ref_db is None
    for fwd, bwd in (
        (layernorm.layernorm_forward_naive, layernorm.layernorm_backward_naive),
        (layernorm.layernorm_forward, layernorm.layernorm_backward),
    ):
        res = {}
        for bias in (None, np.zeros(C)):
            out, mean, rstd = _nan(N * C), _nan(N), _nan(N)
            fwd(out, mean, rstd, dev(x), dev(w), None if bias is None else dev(bias), N, C, eps)
            dx, dw = dev(np.ones((N, C))), dev(np.ones(C))
            db = None if bias is None else dev(np.ones(C))
            bwd(dx, dw, db, dev(dout), dev(x), dev(w), mean, rstd, N, C)
            res[bias is None] = [host(out, (N, C)), host(mean, (N, 1)), host(rstd, (N, 1)), host(dx, (N, C)) - 1,
                                 host(dw, (C,)) - 1]  # fmt: skip
        for g, want in zip(res[True], (ref_out, ref_mean, ref_rstd, ref_dx, ref_dw), strict=True):
            assert np.isfinite(g).all() and max_rel(g, want) <= KERNEL_REL
        for g, with_zero_bias in zip(res[True], res[False], strict=True):
            assert np.array_equal(g, with_zero_bias)


# ----------------------------------------------------------------------------- SwiGLU
def test_swiglu_naive_and_ilp_match_reference_and_each_other():
    N, H = 7, 37  # 259 outputs: 32-thread simulator blocks of 4 elements, the last block partial
    r = rng(62)
    fc = 3.0 * r.standard_normal((N, 2 * H))
    fc[0, 0], fc[1, 1], fc[2, 2] = -60.0, 60.0, 0.0  # the gate's limits: silu -> 0, silu -> a
    dout = r.standard_normal((N, H))
    ref_out = ref_layers.swiglu_forward(fc)
    ref_dfc = ref_layers.swiglu_backward(dout, fc)
    got = {}
    for naive in (True, False):
        out, dfc = _nan(N * H), _nan(N * 2 * H)
        swiglu.swiglu_forward(out, dev(fc), N, H, naive=naive)
        swiglu.swiglu_backward(dfc, dev(fc), dev(dout), N, H, naive=naive)
        got[naive] = host(out, (N, H)), host(dfc, (N, 2 * H))
        assert np.isfinite(got[naive][1]).all()
        assert max_rel(got[naive][0], ref_out) <= KERNEL_REL
        assert max_rel(got[naive][1], ref_dfc) <= KERNEL_REL
    # the same arithmetic in the same order: identical
    assert np.array_equal(got[True][0], got[False][0]) and np.array_equal(got[True][1], got[False][1])


# ----------------------------------------------------------------------------- RoPE
def test_rope_tables_are_the_float64_angles_rounded_once():
    P, HS, theta = 37, 10, 500.0
    cos, sin = rope.rope_tables(P, HS, theta)
    ref_cos, ref_sin = ref_rope.rope_tables(P, HS, theta, 0, dtype=np.float32)
    assert cos.dtype == np.float32 and cos.shape == (P, HS // 2)
    assert np.array_equal(cos, ref_cos) and np.array_equal(sin, ref_sin)
    with pytest.raises(ValueError, match="even"):
        rope.rope_tables(4, 7, theta)


@pytest.mark.parametrize(
    "NH, NKV, HS, start",
    [
        (4, 2, 6, 0),  # 3 pairs per head: pairs do not fill a run of 4
        (4, 2, 8, 5),  # a non-zero start: the tokens continue 5 earlier ones
        (3, 3, 4, 2),  # multi-head (GPT-2's layout: NKV = NH)
    ],
)
def test_rope_forward_backward_match_reference_out_of_place_and_in_place(NH, NKV, HS, start):
    B, T, theta, P = 2, 5, 500.0, 16
    W = (NH + 2 * NKV) * HS
    r = rng(63)
    qkv, dout = r.standard_normal((B, T, W)), r.standard_normal((B, T, W))
    cos, sin = (dev(t) for t in rope.rope_tables(P, HS, theta))
    ref_fwd = ref_rope.rope_forward(qkv, NH, NKV, theta, start)
    ref_bwd = ref_rope.rope_backward(dout, NH, NKV, theta, start)
    out = _nan(B * T * W)
    rope.rope_forward(out, dev(qkv), cos, sin, B, T, NH, NKV, HS, start=start)
    got = host(out, (B, T, W))
    assert np.isfinite(got).all() and max_rel(got, ref_fwd) <= KERNEL_REL
    assert np.array_equal(got[..., (NH + NKV) * HS :], qkv[..., (NH + NKV) * HS :].astype(np.float32))  # v copied
    din = _nan(B * T * W)
    rope.rope_backward(din, dev(dout), cos, sin, B, T, NH, NKV, HS, start=start)
    assert max_rel(host(din, (B, T, W)), ref_bwd) <= KERNEL_REL
    # in place (how the model rotates attention's dqkv back); v untouched
    buf = dev(dout)
    rope.rope_backward(buf, buf, cos, sin, B, T, NH, NKV, HS, start=start)
    assert np.array_equal(host(buf, (B, T, W)), host(din, (B, T, W)))
    # the backward is the inverse rotation: it undoes the forward (to float32 rounding)
    rope.rope_backward(out, out, cos, sin, B, T, NH, NKV, HS, start=start)
    assert max_rel(host(out, (B, T, W)), qkv) <= KERNEL_REL


def test_rope_refuses_positions_past_its_tables():
    cos = dev(np.zeros((8, 2)))
    with pytest.raises(ValueError, match="outside the tables"):
        rope.rope_forward(cos, cos, cos, cos, 1, 5, 1, 1, 4, start=4)


# ----------------------------------------------------------------------------- embedding without wpe
def test_embedding_without_position_table_forward_and_every_backward():
    B, T, C, V = 2, 5, 6, 7
    r = rng(64)
    wte = r.standard_normal((V, C))
    idx = r.integers(0, V, (B, T))
    idx[1, 2] = idx[0, 0]  # a repeated token: its gradient rows must add up
    dout = r.standard_normal((B, T, C))
    d_idx = dev(idx, np.int32)
    out = _nan(B * T * C)
    encoder.encoder_forward(out, d_idx, dev(wte), None, B, T, C)
    assert max_rel(host(out, (B, T, C)), ref_layers.embedding_forward(wte, None, idx)) <= KERNEL_REL
    ref_dwte, ref_dwpe = ref_layers.embedding_backward(dout, idx, V, None)
    assert ref_dwpe is None
    order, start, token = (dev(a, np.int32) for a in encoder.token_groups(idx))
    n_groups = len(np.unique(idx))
    next_pos, is_first = (cuda.device_array(B * T, np.int32) for _ in range(2))
    for name in ("naive", "sorted", "chained"):
        dwte = dev(np.ones((V, C)))  # the backward accumulates
        if name == "naive":
            encoder.encoder_backward_naive(dwte, None, dev(dout), d_idx, B, T, C)
        elif name == "sorted":
            encoder.encoder_backward_sorted(dwte, None, dev(dout), order, start, token, n_groups, B, T, C)
        else:
            encoder.encoder_backward_chained(dwte, None, dev(dout), d_idx, next_pos, is_first, B, T, C)
        assert max_rel(host(dwte, (V, C)) - 1, ref_dwte) <= KERNEL_REL, name


# ----------------------------------------------------------------------------- grouped-query attention
def _gqa_case(B, T, NH, NKV, HS, seed):
    r = rng(seed)
    C, W = NH * HS, (NH + 2 * NKV) * HS
    qkv, dout = r.standard_normal((B, T, W)), r.standard_normal((B, T, C))
    ref_out, ref_att = ref_attention.attention_forward(qkv, NH, n_kv_head=NKV)
    ref_dqkv = ref_attention.attention_backward(dout, qkv, ref_att, NH, n_kv_head=NKV)
    return qkv, dout, ref_out, ref_dqkv


def _naive_gqa(qkv, dout, B, T, NH, NKV, HS):
    C, W = NH * HS, (NH + 2 * NKV) * HS
    out = _nan(B * T * C)
    sq = [cuda.device_array(B * NH * T * T, np.float32) for _ in range(4)]
    attention.attention_forward_naive(out, sq[0], sq[1], dev(qkv), B, T, C, NH, n_kv_head=NKV)
    dqkv = _nan(B * T * W)
    attention.attention_backward_naive(dqkv, sq[2], sq[3], dev(dout), sq[1], dev(qkv), B, T, C, NH, n_kv_head=NKV)
    return host(out, (B, T, C)), host(dqkv, (B, T, W))


def _flash_gqa(qkv, dout, B, T, NH, NKV, HS, fwd_tiles=None, bwd_tiles=None):
    C, W = NH * HS, (NH + 2 * NKV) * HS
    d_qkv = dev(qkv)
    out, lse = _nan(B * T * C), _nan(B * NH * T)
    attention.attention_forward_flash(out, lse, d_qkv, B, T, C, NH, tiles=fwd_tiles, n_kv_head=NKV)
    dqkv, delta = _nan(B * T * W), _nan(B * NH * T)
    attention.attention_backward_flash(dqkv, delta, dev(dout), out, lse, d_qkv, B, T, C, NH, tiles=bwd_tiles,
                                       n_kv_head=NKV)  # fmt: skip
    return host(out, (B, T, C)), host(dqkv, (B, T, W))


@pytest.mark.parametrize(
    "B, T, NH, NKV, HS",
    [
        (2, 11, 4, 2, 4),  # two query tiles of the simulator's 8 rows, three key tiles of 4
        (1, 10, 4, 1, 6),  # one kv head for all (multi-query); HS = 6: the scalar forward, padded runs
        (1, 9, 6, 3, 4),  # groups of 2 over 3 kv heads
    ],
)
def test_gqa_naive_and_flash_match_reference(B, T, NH, NKV, HS):
    qkv, dout, ref_out, ref_dqkv = _gqa_case(B, T, NH, NKV, HS, seed=70 + T)
    naive_out, naive_dqkv = _naive_gqa(qkv, dout, B, T, NH, NKV, HS)
    flash_out, flash_dqkv = _flash_gqa(qkv, dout, B, T, NH, NKV, HS)
    for got in (naive_out, naive_dqkv, flash_out, flash_dqkv):
        assert np.isfinite(got).all()  # every element written
    assert max_rel(naive_out, ref_out) <= KERNEL_REL
    assert max_rel(naive_dqkv, ref_dqkv) <= KERNEL_REL
    assert max_rel(flash_out, naive_out) <= KERNEL_REL
    assert max_rel(flash_dqkv, naive_dqkv) <= KERNEL_REL
    assert max_rel(flash_out, ref_out) <= KERNEL_REL
    assert max_rel(flash_dqkv, ref_dqkv) <= KERNEL_REL
    # the default backward sums the group's dk, dv in registers in a fixed order: the same bits again
    assert np.array_equal(_flash_gqa(qkv, dout, B, T, NH, NKV, HS)[1], flash_dqkv)


@pytest.mark.parametrize(
    "fwd_tiles, bwd_tiles, B, T, NH, NKV, HS",
    [
        # the GPU's row/lane layout (8 lanes, 4 rows per thread, 4 columns per lane) shrunk to one warp, 16-byte loads
        (FlashTiles(1, 8, 4, 4, vec=True), FlashTiles(1, 8, 2, 4, vec=True), 1, 37, 4, 2, 32),
        # the scalar kernels of every direction, HS = 6
        (FlashTiles(1, 4, 1, 1), FlashTiles(1, 4, 1, 1), 1, 10, 4, 2, 6),
        # the fused backward (dq by atomic adds): the prep kernel zeroes the q columns of the wider rows
        (None, FlashTiles(1, 4, 1, 2, vec=True, fused=True), 1, 19, 6, 3, 4),
    ],
    ids=["gpu-layout", "scalar", "fused"],
)
def test_gqa_flash_variants_match_naive_twin(fwd_tiles, bwd_tiles, B, T, NH, NKV, HS):
    qkv, dout, ref_out, ref_dqkv = _gqa_case(B, T, NH, NKV, HS, seed=80 + T)
    naive_out, naive_dqkv = _naive_gqa(qkv, dout, B, T, NH, NKV, HS)
    flash_out, flash_dqkv = _flash_gqa(qkv, dout, B, T, NH, NKV, HS, fwd_tiles, bwd_tiles)
    assert np.isfinite(flash_out).all() and np.isfinite(flash_dqkv).all()
    assert max_rel(flash_out, naive_out) <= KERNEL_REL
    assert max_rel(flash_dqkv, naive_dqkv) <= KERNEL_REL
    assert max_rel(flash_dqkv, ref_dqkv) <= KERNEL_REL


def test_gqa_kernels_are_built_per_group_size_and_refuse_a_group_that_does_not_divide():
    assert attention.flash_kernels(8, group=2).forward is not attention.flash_kernels(8).forward
    assert attention.flash_kernels(8, group=1).forward is attention.flash_kernels(8).forward
    with pytest.raises(ValueError, match="n_kv_head"):
        attention.attention_forward_flash(None, None, None, 1, 4, 12, 3, n_kv_head=2)
    with pytest.raises(ValueError, match="n_kv_head"):
        attention.attention_forward_naive(None, None, None, None, 1, 4, 12, 3, n_kv_head=2)
