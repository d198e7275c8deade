"""Every kernel against a float64 NumPy oracle (the reference's layer functions) and the optimised
kernels against their naive twins. Shapes are tiny and deliberately ragged (not multiples of the
tile sizes) so that every boundary path runs; the CUDA simulator runs them in CI.
Tolerance: KERNEL_REL (see helpers.py for why that number)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from numba_impl._compat import cuda
from numba_impl.kernels import adamw, attention, crossentropy, encoder, gelu, layernorm, matmul, residual
from reference import attention as ref_attention
from reference import layers as ref_layers
from tests.numba_impl.helpers import KERNEL_REL, dev, host, max_rel, needs_cuda, rng

pytestmark = needs_cuda


# ----------------------------------------------------------------------------- encoder
def test_encoder_forward_and_both_backwards_match_numpy():
    B, T, C, V, maxT = 2, 5, 6, 7, 8
    r = rng(1)
    wte, wpe = r.standard_normal((V, C)), r.standard_normal((maxT, C))
    idx = r.integers(0, V, (B, T))
    idx[1, 2] = idx[0, 0]  # a repeated token: its gradient rows must add up
    dout = r.standard_normal((B, T, C))
    d_idx = dev(idx, np.int32)

    out = cuda.device_array(B * T * C, np.float32)
    encoder.encoder_forward(out, d_idx, dev(wte), dev(wpe), B, T, C)
    ref = ref_layers.embedding_forward(wte, wpe, idx)
    assert max_rel(host(out, (B, T, C)), ref) <= KERNEL_REL

    dwte_ref, dwpe_ref = ref_layers.embedding_backward(dout, idx, V, maxT)
    # naive: atomics
    dwte, dwpe = dev(np.ones((V, C))), dev(np.ones((maxT, C)))  # ones: the kernels accumulate
    encoder.encoder_backward_naive(dwte, dwpe, dev(dout), d_idx, B, T, C)
    assert max_rel(host(dwte, (V, C)) - 1, dwte_ref) <= KERNEL_REL
    assert max_rel(host(dwpe, (maxT, C)) - 1, dwpe_ref) <= KERNEL_REL
    # sorted: deterministic
    order, start, token = encoder.token_groups(idx)
    assert len(token) == len(np.unique(idx))
    dwte, dwpe = dev(np.ones((V, C))), dev(np.ones((maxT, C)))
    encoder.encoder_backward_sorted(
        dwte, dwpe, dev(dout), dev(order, np.int32), dev(start, np.int32), dev(token, np.int32), len(token), B, T, C
    )
    assert max_rel(host(dwte, (V, C)) - 1, dwte_ref) <= KERNEL_REL
    assert max_rel(host(dwpe, (maxT, C)) - 1, dwpe_ref) <= KERNEL_REL


# ----------------------------------------------------------------------------- layernorm
@pytest.mark.parametrize("version", ["naive", "warp"])
def test_layernorm_forward_backward_match_reference(version):
    N, C, eps = 5, 40, 1e-5  # C > 32: each lane of the warp kernel strides over two channels
    r = rng(2)
    x = 3.0 + 2.0 * r.standard_normal((N, C))  # an offset mean: a one-pass variance would lose digits
    w, b = 1.0 + 0.1 * r.standard_normal(C), 0.1 * r.standard_normal(C)
    dout = r.standard_normal((N, C))
    ref_out, ref_mean, ref_rstd = ref_layers.layernorm_forward(x, w, b, eps)
    ref_dx, ref_dw, ref_db = ref_layers.layernorm_backward(dout, x, w, ref_mean, ref_rstd)

    fwd = layernorm.layernorm_forward_naive if version == "naive" else layernorm.layernorm_forward
    bwd = layernorm.layernorm_backward_naive if version == "naive" else layernorm.layernorm_backward
    out, mean, rstd = (
        cuda.device_array(N * C, np.float32),
        cuda.device_array(N, np.float32),
        cuda.device_array(N, np.float32),
    )
    fwd(out, mean, rstd, dev(x), dev(w), dev(b), N, C, eps)
    assert max_rel(host(out, (N, C)), ref_out) <= KERNEL_REL
    assert max_rel(host(mean, (N, 1)), ref_mean) <= KERNEL_REL
    assert max_rel(host(rstd, (N, 1)), ref_rstd) <= KERNEL_REL

    dx, dw, db = dev(np.ones((N, C))), dev(np.ones(C)), dev(np.ones(C))  # the backward accumulates
    bwd(dx, dw, db, dev(dout), dev(x), dev(w), mean, rstd, N, C)
    assert max_rel(host(dx, (N, C)) - 1, ref_dx) <= KERNEL_REL
    assert max_rel(host(dw, (C,)) - 1, ref_dw) <= KERNEL_REL
    assert max_rel(host(db, (C,)) - 1, ref_db) <= KERNEL_REL


# ----------------------------------------------------------------------------- matmul
@pytest.mark.parametrize("layout", matmul.LAYOUTS)
@pytest.mark.parametrize("naive", [True, False], ids=["naive", "tiled"])
def test_matmul_layouts_bias_and_accumulate(layout, naive):
    M, N, K = 13, 11, 9  # none a multiple of any tile size
    r = rng(3)
    A = r.standard_normal((M, K))
    Bm = r.standard_normal((K, N))
    bias = r.standard_normal(N)
    base = r.standard_normal((M, N))
    a_stored = A.T if layout[0] == "T" else A
    b_stored = Bm.T if layout[1] == "T" else Bm

    out = dev(base)
    matmul.matmul(out, dev(a_stored), dev(b_stored), M, N, K, layout, bias=dev(bias), naive=naive)
    assert max_rel(host(out, (M, N)), A @ Bm + bias) <= KERNEL_REL
    out = dev(base)
    matmul.matmul(out, dev(a_stored), dev(b_stored), M, N, K, layout, accumulate=True, naive=naive)
    assert max_rel(host(out, (M, N)), base + A @ Bm) <= KERNEL_REL


@pytest.mark.parametrize("interleave", [True, False], ids=["interleaved", "contiguous"])
def test_tiled_matmul_matches_naive_twin_on_a_larger_ragged_shape(interleave):
    M, N, K = 37, 29, 23
    r = rng(4)
    a, b = dev(r.standard_normal((M, K))), dev(r.standard_normal((N, K)))
    out_naive, out_tiled = cuda.device_array(M * N, np.float32), cuda.device_array(M * N, np.float32)
    matmul.matmul(out_naive, a, b, M, N, K, "NT", naive=True)
    matmul.matmul(out_tiled, a, b, M, N, K, "NT", tile=(*matmul.SIM_TILE, interleave))
    naive_host = host(out_naive, (M, N))
    assert max_rel(host(out_tiled, (M, N)), naive_host) <= KERNEL_REL


@pytest.mark.parametrize("naive", [True, False], ids=["naive", "tiled"])
def test_matmul_backward_matches_reference(naive):
    BT, C, OC = 7, 6, 10
    r = rng(5)
    x, w, dout = r.standard_normal((BT, C)), r.standard_normal((C, OC)), r.standard_normal((BT, OC))
    ref_dx, ref_dw, ref_db = ref_layers.linear_backward(dout, x, w)
    dx, dw, db = cuda.device_array(BT * C, np.float32), dev(np.ones((C, OC))), dev(np.ones(OC))
    matmul.matmul_backward(dx, dw, db, dev(dout), dev(x), dev(w), BT, C, OC, naive=naive)
    assert max_rel(host(dx, (BT, C)), ref_dx) <= KERNEL_REL
    assert max_rel(host(dw, (C, OC)) - 1, ref_dw) <= KERNEL_REL  # dW and db accumulate
    assert max_rel(host(db, (OC,)) - 1, ref_db) <= KERNEL_REL


@pytest.mark.parametrize("layout", ["NN", "TN", "NT"])
@pytest.mark.parametrize("naive", [True, False], ids=["naive", "tiled"])
@pytest.mark.parametrize("k_chunk", [1, 5, 8, 100])
def test_split_k_equals_one_pass(layout, naive, k_chunk):
    """Summing K in chunks (each chunk's partial added to out) gives the same product, bias once, for
    chunk sizes that do and do not divide K or the tile's K slice (a chunk larger than K is one pass)."""
    M, N, K = 13, 11, 23
    r = rng(11)
    A, Bm, bias, base = (
        r.standard_normal((M, K)),
        r.standard_normal((K, N)),
        r.standard_normal(N),
        r.standard_normal((M, N)),
    )
    a_stored = A.T if layout[0] == "T" else A
    b_stored = Bm.T if layout[1] == "T" else Bm
    out = dev(base)
    matmul.matmul(out, dev(a_stored), dev(b_stored), M, N, K, layout, bias=dev(bias), naive=naive, k_chunk=k_chunk)
    assert max_rel(host(out, (M, N)), A @ Bm + bias) <= KERNEL_REL
    out = dev(base)
    matmul.matmul(out, dev(a_stored), dev(b_stored), M, N, K, layout, accumulate=True, naive=naive, k_chunk=k_chunk)
    assert max_rel(host(out, (M, N)), base + A @ Bm) <= KERNEL_REL


def test_matmul_rejects_unknown_layout():
    with pytest.raises(ValueError, match="layout"):
        matmul.matmul(None, None, None, 1, 1, 1, "TT")


# ----------------------------------------------------------------------------- attention
def _attention_case(B=2, T=6, C=8, NH=2, seed=6):
    r = rng(seed)
    qkv = r.standard_normal((B, T, 3 * C))
    dout = r.standard_normal((B, T, C))
    ref_out, ref_att = ref_attention.attention_forward(qkv, NH)
    ref_dqkv = ref_attention.attention_backward(dout, qkv, ref_att, NH)
    return qkv, dout, ref_out, ref_dqkv


def test_naive_attention_matches_reference():
    B, T, C, NH = 2, 6, 8, 2
    qkv, dout, ref_out, ref_dqkv = _attention_case(B, T, C, NH)
    out = cuda.device_array(B * T * C, np.float32)
    sq = [cuda.device_array(B * NH * T * T, np.float32) for _ in range(4)]
    attention.attention_forward_naive(out, sq[0], sq[1], dev(qkv), B, T, C, NH)
    assert max_rel(host(out, (B, T, C)), ref_out) <= KERNEL_REL
    dqkv = cuda.device_array(B * T * 3 * C, np.float32)
    attention.attention_backward_naive(dqkv, sq[2], sq[3], dev(dout), sq[1], dev(qkv), B, T, C, NH)
    assert max_rel(host(dqkv, (B, T, 3 * C)), ref_dqkv) <= KERNEL_REL


@pytest.mark.parametrize("T", [6, 9])  # 9: more than two tiles of the simulator's 4, the last one partial
def test_flash_attention_matches_reference_and_naive_twin(T):
    B, C, NH = 1, 8, 2
    qkv, dout, ref_out, ref_dqkv = _attention_case(B, T, C, NH, seed=7)
    d_qkv, d_dout = dev(qkv), dev(dout)
    out, lse = cuda.device_array(B * T * C, np.float32), cuda.device_array(B * NH * T, np.float32)
    attention.attention_forward_flash(out, lse, d_qkv, B, T, C, NH)
    flash_out = host(out, (B, T, C))
    assert max_rel(flash_out, ref_out) <= KERNEL_REL
    # lse is log sum_s exp(scale q.k): check it against the scores
    q, k, _ = ref_attention.split_heads(qkv, NH)
    s = np.where(ref_attention.causal_mask(T, T), (q @ k.swapaxes(-1, -2)) / math.sqrt(C // NH), -np.inf)
    ref_lse = np.log(np.exp(s - s.max(-1, keepdims=True)).sum(-1)) + s.max(-1)
    assert max_rel(host(lse, (B, NH, T)), ref_lse) <= KERNEL_REL

    dqkv, delta = cuda.device_array(B * T * 3 * C, np.float32), cuda.device_array(B * NH * T, np.float32)
    attention.attention_backward_flash(dqkv, delta, d_dout, out, lse, d_qkv, B, T, C, NH)
    flash_dqkv = host(dqkv, (B, T, 3 * C))
    assert max_rel(flash_dqkv, ref_dqkv) <= KERNEL_REL

    naive_out = cuda.device_array(B * T * C, np.float32)
    sq = [cuda.device_array(B * NH * T * T, np.float32) for _ in range(4)]
    attention.attention_forward_naive(naive_out, sq[0], sq[1], d_qkv, B, T, C, NH)
    naive_dqkv = cuda.device_array(B * T * 3 * C, np.float32)
    attention.attention_backward_naive(naive_dqkv, sq[2], sq[3], d_dout, sq[1], d_qkv, B, T, C, NH)
    naive_out_host = host(naive_out, (B, T, C))
    assert max_rel(flash_out, naive_out_host) <= KERNEL_REL
    assert max_rel(flash_dqkv, host(naive_dqkv, (B, T, 3 * C))) <= KERNEL_REL


# ----------------------------------------------------------------------------- elementwise
def test_gelu_forward_backward_match_reference():
    N = 70
    r = rng(8)
    x = 3.0 * r.standard_normal(N)
    dout = r.standard_normal(N)
    out, dx = cuda.device_array(N, np.float32), cuda.device_array(N, np.float32)
    gelu.gelu_forward(out, dev(x), N)
    gelu.gelu_backward(dx, dev(x), dev(dout), N)
    assert max_rel(host(out, (N,)), ref_layers.gelu_forward(x)) <= KERNEL_REL
    assert max_rel(host(dx, (N,)), ref_layers.gelu_backward(dout, x)) <= KERNEL_REL


def test_residual_forward_backward():
    N = 50
    r = rng(9)
    a, b, dout = r.standard_normal(N), r.standard_normal(N), r.standard_normal(N)
    out = cuda.device_array(N, np.float32)
    residual.residual_forward(out, dev(a), dev(b), N)
    assert max_rel(host(out, (N,)), ref_layers.residual_forward(a, b)) <= KERNEL_REL
    da, db = dev(np.full(N, 2.0)), dev(np.full(N, -1.0))  # the backward accumulates
    residual.residual_backward(da, db, dev(dout), N)
    ref_da, ref_db = ref_layers.residual_backward(dout)
    assert max_rel(host(da, (N,)) - 2.0, ref_da) <= KERNEL_REL
    assert max_rel(host(db, (N,)) + 1.0, ref_db) <= KERNEL_REL


@pytest.mark.parametrize("naive", [True, False], ids=["naive", "block"])
def test_fused_crossentropy_matches_reference(naive):
    B, T, V = 2, 3, 37
    r = rng(10)
    logits = 4.0 * r.standard_normal((B, T, V))
    targets = r.integers(0, V, (B, T))
    targets[1, 0] = -1  # ignored
    ref_loss, probs = ref_layers.crossentropy_forward(logits, targets)
    ref_dlogits = ref_layers.crossentropy_backward(probs, targets)
    n = int((targets >= 0).sum())
    N = B * T
    losses, dlogits = cuda.device_array(N, np.float32), cuda.device_array(N * V, np.float32)
    crossentropy.crossentropy(losses, dlogits, dev(logits), dev(targets, np.int32), N, V, 1.0 / n, naive=naive)
    per_row = host(losses, (B, T))
    assert per_row[1, 0] == 0.0
    assert abs(per_row.sum() / n - ref_loss) <= KERNEL_REL * abs(ref_loss)
    assert max_rel(host(dlogits, (B, T, V)), ref_dlogits) <= KERNEL_REL
    assert np.all(host(dlogits, (B, T, V))[1, 0] == 0.0)


def test_adamw_kernel_matches_reference_over_three_steps():
    from reference import adamw_step

    r = rng(11)
    # one 2-D tensor (decayed) and one 1-D tensor (not decayed), laid out 2-D first as the model does
    params = {"w": r.standard_normal((3, 4)), "b": r.standard_normal(5)}
    flat = np.concatenate([params["w"].ravel(), params["b"].ravel()]).astype(np.float32)
    d_p, d_m, d_v = dev(flat), dev(np.zeros(17)), dev(np.zeros(17))
    state = {}
    for step in range(1, 4):
        grads = {"w": r.standard_normal((3, 4)), "b": r.standard_normal(5)}
        g = np.concatenate([grads["w"].ravel(), grads["b"].ravel()])
        adamw.adamw_update(
            d_p, dev(g), d_m, d_v, 17, 12, step, lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1
        )
        adamw_step(params, grads, state, lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
    ref = np.concatenate([params["w"].ravel(), params["b"].ravel()])
    assert max_rel(host(d_p, (17,)), ref) <= KERNEL_REL
    with pytest.raises(ValueError, match="step"):
        adamw.adamw_update(d_p, d_p, d_m, d_v, 17, 12, 0, 1e-3, 0.9, 0.95, 1e-8, 0.1)


# ----------------------------------------------------------------------------- GPU tile choices
def test_gpu_tile_choices(monkeypatch):
    """The GPU defaults (the simulator uses its own tiny tiles): the matmul takes the 128x128 tile
    only with >= 2 waves of it. (The flash tiles: test_attention_flash.py.)"""
    monkeypatch.setattr(matmul, "SIMULATOR", False)
    assert matmul.default_tile(4096, 3072, "NN") == matmul.GPU_TILE  # 32 x 24 = 768 tiles of 128x128
    assert matmul.default_tile(4096, 768, "NN") == matmul.GPU_TILE_SMALL  # only 192
    assert matmul.default_tile(768, 3072, "TN") == matmul.GPU_TILE_SMALL_TN
