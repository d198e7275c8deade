"""The fast matmul kernel against its naive twin (and float64 NumPy) on ragged shapes.

Every shape here is deliberately not a multiple of the simulator's tile (FAST_SIM_TILE: 8x8
outputs, K steps of 4), so each block mixes the unchecked interior path with the checked edge
path; K is long enough for several K steps, so both shared stages of the double buffer are used.
Tolerance: KERNEL_REL (helpers.py): each output sums <= ~100 float32 products."""

from __future__ import annotations

import numpy as np
import pytest

from numba_impl._compat import cuda
from numba_impl.kernels import matmul
from tests.numba_impl.helpers import KERNEL_REL, dev, host, max_rel, needs_cuda, rng

pytestmark = needs_cuda


def _operands(layout, M, N, K, seed):
    r = rng(seed)
    A, Bm = r.standard_normal((M, K)), r.standard_normal((K, N))
    a_stored = A.T if layout[0] == "T" else A
    b_stored = Bm.T if layout[1] == "T" else Bm
    return A, Bm, dev(a_stored), dev(b_stored)


@pytest.mark.parametrize("layout", matmul.LAYOUTS)
@pytest.mark.parametrize("shape", [(19, 13, 23), (16, 16, 16), (5, 3, 2)], ids=["ragged", "whole-tiles", "tiny"])
def test_fast_matches_naive_twin_and_numpy(layout, shape):
    """Bias and accumulate, against the naive kernel on the same inputs and against float64 NumPy;
    the output starts poisoned (NaN) so that an element the kernel never writes fails."""
    M, N, K = shape
    A, Bm, a, b = _operands(layout, M, N, K, seed=M + N + K)
    bias = rng(1).standard_normal(N)
    outs = {}
    for kernel in ("naive", "fast"):
        out = dev(np.full((M, N), np.nan))
        matmul.matmul(out, a, b, M, N, K, layout, bias=dev(bias), kernel=kernel)
        outs[kernel] = host(out, (M, N))
    assert np.isfinite(outs["fast"]).all()
    assert max_rel(outs["fast"], outs["naive"]) <= KERNEL_REL
    assert max_rel(outs["fast"], A @ Bm + bias) <= KERNEL_REL
    base = rng(2).standard_normal((M, N))
    out = dev(base)
    matmul.matmul(out, a, b, M, N, K, layout, accumulate=True)
    assert max_rel(host(out, (M, N)), base + A @ Bm) <= KERNEL_REL


@pytest.mark.parametrize("layout", matmul.LAYOUTS)
def test_split_k_and_register_chunks_match_naive(layout):
    """K in 3 slices (one launch + the reduction) and running sums closed every 8 terms give the
    naive kernel's product; slices and chunks that do not divide K included, and slices short
    enough (<= k_chunk terms) to need no chunks in registers."""
    M, N, K = 11, 9, 37
    A, Bm, a, b = _operands(layout, M, N, K, seed=7)
    bias = rng(3).standard_normal(N)
    base = rng(4).standard_normal((M, N))
    ref = dev(base)
    matmul.matmul(ref, a, b, M, N, K, layout, bias=dev(bias), accumulate=True, kernel="naive")
    ref = host(ref, (M, N))
    for splits, k_chunk in ((3, None), (1, 8), (2, 8), (5, 8), (40, None)):  # (5, 8): slices of <= 8 terms
        out = dev(base)
        matmul.matmul(out, a, b, M, N, K, layout, bias=dev(bias), accumulate=True, splits=splits, k_chunk=k_chunk)
        assert max_rel(host(out, (M, N)), ref) <= KERNEL_REL, (splits, k_chunk)
    assert max_rel(ref, base + A @ Bm + bias) <= KERNEL_REL


@pytest.mark.parametrize("kernel", ["fast", "naive"])
@pytest.mark.parametrize("splits", [1, 2])
def test_fused_gelu_and_residual_epilogues(kernel, splits):
    """epilogue="gelu": out keeps the pre-activation, out2 = GPT-2's tanh GELU of it;
    epilogue="residual": out2 = extra + out. Fused in the fast kernel (in the reduction when split),
    an elementwise pass after the naive one."""
    M, N, K = 13, 10, 21
    A, Bm, a, b = _operands("NN", M, N, K, seed=8)
    bias = rng(5).standard_normal(N)
    pre = A @ Bm + bias
    gelu = 0.5 * pre * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (pre + 0.044715 * pre**3)))
    out, out2 = dev(np.full((M, N), np.nan)), dev(np.full((M, N), np.nan))
    matmul.matmul(out, a, b, M, N, K, "NN", bias=dev(bias), kernel=kernel, splits=splits, epilogue="gelu", out2=out2)
    assert max_rel(host(out, (M, N)), pre) <= KERNEL_REL
    assert max_rel(host(out2, (M, N)), gelu) <= KERNEL_REL
    residual = rng(6).standard_normal((M, N))
    out, out2 = dev(np.full((M, N), np.nan)), dev(np.full((M, N), np.nan))
    matmul.matmul(out, a, b, M, N, K, "NN", bias=dev(bias), kernel=kernel, splits=splits, epilogue="residual",
                  out2=out2, extra=dev(residual))  # fmt: skip
    assert max_rel(host(out, (M, N)), pre) <= KERNEL_REL
    assert max_rel(host(out2, (M, N)), residual + pre) <= KERNEL_REL


@pytest.mark.parametrize("splits", [1, 3])
def test_fused_bias_gradient_in_the_weight_gradient(splits):
    """matmul_backward's fast path: dW += x^T @ dout with db += column sums of dout fused into the
    same kernel (TN layout), against the naive path; both accumulate into what is there."""
    BT, C, OC = 29, 7, 19  # BT is the weight gradient's K
    r = rng(9)
    x, w, dout = r.standard_normal((BT, C)), r.standard_normal((C, OC)), r.standard_normal((BT, OC))
    dw, db = dev(np.ones((C, OC))), dev(np.ones(OC))
    matmul.matmul(dw, dev(x), dev(dout), C, OC, BT, "TN", accumulate=True, dbias=db, splits=splits)
    assert max_rel(host(dw, (C, OC)) - 1, x.T @ dout) <= KERNEL_REL
    assert max_rel(host(db, (OC,)) - 1, dout.sum(axis=0)) <= KERNEL_REL
    results = {}
    for naive in (True, False):
        dx, dw, db = dev(np.full((BT, C), np.nan)), dev(np.ones((C, OC))), dev(np.ones(OC))
        matmul.matmul_backward(dx, dw, db, dev(dout), dev(x), dev(w), BT, C, OC, naive=naive)
        results[naive] = [host(dx, (BT, C)), host(dw, (C, OC)), host(db, (OC,))]
    for fast, naive in zip(results[False], results[True], strict=True):
        assert max_rel(fast, naive) <= KERNEL_REL


def test_matmul_forward_fused_epilogues_match_separate_ops():
    """matmul_forward(gelu_out=...) and (residual=..., residual_out=...), fast and naive."""
    BT, C, OC = 9, 6, 14
    r = rng(10)
    x, w, bias, res = (
        r.standard_normal((BT, C)),
        r.standard_normal((C, OC)),
        r.standard_normal(OC),
        r.standard_normal((BT, OC)),
    )
    pre = x @ w + bias
    for naive in (False, True):
        out, g = cuda.device_array(BT * OC, np.float32), cuda.device_array(BT * OC, np.float32)
        matmul.matmul_forward(out, dev(x), dev(w), dev(bias), BT, C, OC, naive=naive, gelu_out=g)
        ref_g = 0.5 * pre * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (pre + 0.044715 * pre**3)))
        assert max_rel(host(g, (BT, OC)), ref_g) <= KERNEL_REL
        out, x1 = cuda.device_array(BT * OC, np.float32), cuda.device_array(BT * OC, np.float32)
        matmul.matmul_forward(
            out, dev(x), dev(w), dev(bias), BT, C, OC, naive=naive, residual=dev(res), residual_out=x1
        )
        assert max_rel(host(out, (BT, OC)), pre) <= KERNEL_REL
        assert max_rel(host(x1, (BT, OC)), res + pre) <= KERNEL_REL


@pytest.mark.parametrize("layout", matmul.LAYOUTS)
def test_vector_loads_and_unrolled_k_loop_match_naive(layout):
    """The 16-byte global loads (`load4`) on a shape whose rows are multiples of 4 floats but whose
    tiles are partly outside (M, N): interior blocks take the vector loads, edge blocks the checked
    scalar ones. Each unroll of the k loop gives the naive kernel's product. In the simulator `load4`
    raises on an index that is not a multiple of 4 (a misaligned 16-byte load on the GPU)."""
    M, N, K = 20, 12, 28  # tiles of 8: 2 x 1 interior blocks, the rest on an edge; 7 K steps of 4
    A, Bm, a, b = _operands(layout, M, N, K, seed=11)
    assert matmul.vec_ok(layout, a, b, M, N, K) == (True, True)
    ref = dev(np.full((M, N), np.nan))
    matmul.matmul(ref, a, b, M, N, K, layout, kernel="naive")
    ref = host(ref, (M, N))
    for unroll in (1, 2, 4):
        out = dev(np.full((M, N), np.nan))
        matmul.matmul(out, a, b, M, N, K, layout, unroll=unroll)
        assert max_rel(host(out, (M, N)), ref) <= KERNEL_REL, unroll
    assert max_rel(ref, A @ Bm) <= KERNEL_REL


def test_vector_loads_fall_back_when_misaligned():
    """An operand that starts one float into its buffer (not 16-byte aligned), or rows that are not a
    multiple of 4 floats, takes the scalar loads (the other operand keeps the vector loads), with the
    same result."""
    M, N, K = 20, 12, 28
    A, Bm, _, b = _operands("NN", M, N, K, seed=12)
    shifted = dev(np.concatenate([[0.0], A.ravel()]))[1:]  # A's values, one float past an aligned start
    assert matmul.vec_ok("NN", shifted, b, M, N, K) == (False, True)
    assert matmul.vec_ok("NN", dev(A[:, :27]), b, M, N, 27) == (False, True)  # rows of 27 floats
    assert matmul.vec_ok("NT", dev(A), dev(Bm.T[:, :27]), M, N, 27) == (False, False)
    out = dev(np.full((M, N), np.nan))
    matmul.matmul(out, shifted, b, M, N, K, "NN")
    assert max_rel(host(out, (M, N)), A @ Bm) <= KERNEL_REL


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="kernel"):
        matmul.matmul(None, None, None, 1, 1, 1, "NN", kernel="cublas")
    with pytest.raises(ValueError, match="epilogue"):
        matmul.matmul(None, None, None, 1, 1, 1, "NN", epilogue="relu")
    with pytest.raises(ValueError, match="out2"):
        matmul.matmul(None, None, None, 1, 1, 1, "NN", epilogue="gelu")
    with pytest.raises(ValueError, match="TN"):
        matmul.matmul(None, None, None, 1, 1, 1, "NN", dbias=object())
    with pytest.raises(ValueError, match="split evenly"):
        matmul.fast_matmul_kernel("NN", 8, 8, 4, 3, 4)
    with pytest.raises(ValueError, match="split evenly"):
        matmul.fast_matmul_kernel("NN", 8, 8, 4, 4, 4, unroll=3)


def test_gpu_tile_and_split_choices(monkeypatch):
    """The GPU defaults: GPT-2 124M's products (B*T = 4096) take the sweep's fastest (tile, splits),
    each a valid fast-kernel configuration; other shapes take the rules: 128x128 tiles with >= 2
    waves of them, else 128x64; split-K only when even those make < 2 waves, slices >= MIN_SPLIT_K."""
    monkeypatch.setattr(matmul, "SIMULATOR", False)
    for (M, N, K, layout), (tile, splits, unroll) in matmul.TUNED.items():
        assert matmul.fast_config(M, N, K, layout) == (tile, splits, unroll)
        assert splits >= 1 and len(tile) == 5 and unroll in (1, 2, 4)
    # the head's backward: slices of <= 1,024 terms (its k_chunk), so no chunks in registers
    tile, splits, _ = matmul.fast_config(4096, 768, 50257, "NN")
    assert matmul.ceil_div(matmul.ceil_div(50257, splits), tile[2]) * tile[2] <= 1024
    unroll = matmul.FAST_UNROLL
    assert matmul.fast_config(2048, 3072, 768, "NN") == (matmul.FAST_TILE, 1, unroll)  # 16 x 24 = 384 tiles
    assert matmul.fast_config(2048, 768, 768, "NN") == (matmul.FAST_TILE_NARROW, 1, unroll)  # 192 of 128x64
    assert matmul.split_k(768, 768, 4096, matmul.FAST_TILE_NARROW) == 4  # 72 blocks -> 288
    assert matmul.split_k(768, 768, 700, matmul.FAST_TILE_NARROW) == 1  # K too short to slice


def test_tuned_tiles_build():
    """Every tile of the tuned table is one the kernel factory accepts (threads split the tiles evenly)."""
    for (_, _, _, layout), (tile, _, unroll) in matmul.TUNED.items():
        assert callable(matmul.fast_matmul_kernel(layout, *tile, unroll=unroll).py_func)
