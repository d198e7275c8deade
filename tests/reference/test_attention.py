"""Naive and tiled attention agree, forward and backward; the tiled one's memory grows like T, not T^2."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from reference import attention as A

# float64: the two paths sum the same terms in a different order, so they agree to a few ulps
# of the outputs' size (~1e-16 each); 1e-12 relative leaves room for T = 67 terms per row.
# float32: the same argument at float32's 6e-8 per operation gives ~1e-6.
RTOL = {np.float64: 1e-12, np.float32: 2e-5}


def both_paths(qkv, dout, n_head, block_size):
    out_n, att = A.attention_forward(qkv, n_head)
    dqkv_n = A.attention_backward(dout, qkv, att, n_head)
    out_t, lse = A.attention_forward_tiled(qkv, n_head, block_size)
    dqkv_t = A.attention_backward_tiled(dout, qkv, out_t, lse, n_head, block_size)
    return (out_n, dqkv_n), (out_t, dqkv_t), att, lse


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("block_size", [1, 5, 16, 67, 200])  # 67 = T (one block), 200 > T
def test_tiled_equals_naive(dtype, block_size):
    rng = np.random.default_rng(block_size)
    B, T, NH, HS = 2, 67, 3, 8
    qkv = (1.5 * rng.standard_normal((B, T, 3 * NH * HS))).astype(dtype)
    dout = rng.standard_normal((B, T, NH * HS)).astype(dtype)
    (out_n, dqkv_n), (out_t, dqkv_t), att, lse = both_paths(qkv, dout, NH, block_size)
    assert out_t.dtype == dqkv_t.dtype == lse.dtype == dtype
    for what, a, b in (("out", out_n, out_t), ("dqkv", dqkv_n, dqkv_t)):
        err = np.abs(a - b).max() / np.abs(a).max()
        assert err <= RTOL[dtype], f"{what}: tiled differs from naive by {err:.2e} (relative to max)"
    # lse is the log of the softmax normaliser: exp(score - lse) must be exactly the naive probabilities
    scale = 1.0 / np.sqrt(HS)
    q, k, _ = A.split_heads(qkv.astype(np.float64), NH)
    s = np.where(A.causal_mask(T, T), q @ k.swapaxes(-1, -2) * scale, -np.inf)
    np.testing.assert_allclose(np.exp(s - lse[..., None].astype(np.float64)), att, atol=RTOL[dtype] * 10)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("block_size", [1, 16, 200])
@pytest.mark.parametrize("NH,NKV", [(6, 2), (6, 1)])  # groups of 3; multi-query
def test_tiled_equals_naive_for_grouped_query_attention(dtype, block_size, NH, NKV):
    """The same bound as GPT-2's layout above: the two paths differ only in the order of summation
    (the kv-group sum of the backward is the same in both)."""
    rng = np.random.default_rng(100 + block_size + NKV)
    B, T, HS = 2, 37, 4
    qkv = (1.5 * rng.standard_normal((B, T, (NH + 2 * NKV) * HS))).astype(dtype)
    dout = rng.standard_normal((B, T, NH * HS)).astype(dtype)
    out_n, att = A.attention_forward(qkv, NH, n_kv_head=NKV)
    dqkv_n = A.attention_backward(dout, qkv, att, NH, n_kv_head=NKV)
    out_t, lse = A.attention_forward_tiled(qkv, NH, block_size, n_kv_head=NKV)
    dqkv_t = A.attention_backward_tiled(dout, qkv, out_t, lse, NH, block_size, n_kv_head=NKV)
    assert out_t.shape == (B, T, NH * HS) and dqkv_t.shape == qkv.shape and lse.shape == (B, NH, T)
    assert out_t.dtype == dqkv_t.dtype == dtype
    for what, a, b in (("out", out_n, out_t), ("dqkv", dqkv_n, dqkv_t)):
        err = np.abs(a - b).max() / np.abs(a).max()
        assert err <= RTOL[dtype], f"{what}: tiled differs from naive by {err:.2e} (relative to max)"


def test_probabilities_rows_sum_to_one_and_are_causal():
    rng = np.random.default_rng(0)
    _, att = A.attention_forward(rng.standard_normal((1, 6, 3 * 8)), 2)
    np.testing.assert_allclose(att.sum(-1), 1.0, rtol=1e-15)
    assert np.all(att[..., np.triu_indices(6, k=1)[0], np.triu_indices(6, k=1)[1]] == 0)


def test_bad_block_size_is_refused():
    qkv = np.zeros((1, 4, 12))
    with pytest.raises(ValueError, match="block_size"):
        A.attention_forward_tiled(qkv, 2, block_size=0)


# ----------------------------------------------------------------------------- memory
NH_MEM, HS_MEM, BLOCK_MEM = 4, 8, 32


def peak_bytes(path, T):
    """Peak bytes NumPy allocates during one attention forward + backward (tracemalloc sees NumPy's buffers)."""
    rng = np.random.default_rng(T)
    qkv = rng.standard_normal((1, T, 3 * NH_MEM * HS_MEM))
    dout = rng.standard_normal((1, T, NH_MEM * HS_MEM))
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        if path == "naive":
            out, att = A.attention_forward(qkv, NH_MEM)
            A.attention_backward(dout, qkv, att, NH_MEM)
        else:
            out, lse = A.attention_forward_tiled(qkv, NH_MEM, BLOCK_MEM)
            A.attention_backward_tiled(dout, qkv, out, lse, NH_MEM, BLOCK_MEM)
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_tiled_memory_grows_linearly_naive_quadratically():
    """Doubling T: O(T^2) memory quadruples, O(T * block) memory doubles.

    Measured (B=1, NH=4, HS=8, block 32): naive 6.9 MB -> 26.5 MB (x3.8), tiled 1.3 MB -> 2.7 MB (x2.0).
    Thresholds: naive x >= 3.5 (a T^2 term dominates), tiled x <= 2.3 (no T^2 term: even a small
    one would push the ratio toward 4), and at T = 512 the tiled path peaks below half of one
    (NH, T, T) float64 score matrix, which the naive path must hold several of.
    """
    T1, T2 = 256, 512
    naive1, naive2 = peak_bytes("naive", T1), peak_bytes("naive", T2)
    tiled1, tiled2 = peak_bytes("tiled", T1), peak_bytes("tiled", T2)
    one_score_matrix = NH_MEM * T2 * T2 * 8
    assert naive2 / naive1 >= 3.5, (naive1, naive2)
    assert tiled2 / tiled1 <= 2.3, (tiled1, tiled2)
    assert naive2 >= one_score_matrix
    assert tiled2 < one_score_matrix / 2, (tiled2, one_score_matrix)
