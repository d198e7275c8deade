"""The memory-bound kernels' fast versions against their naive twins, on ragged sizes: GELU and the
residual add with several elements per thread (a partial last block), the LayerNorm whose rows live
in registers (C not a multiple of 32, with scalar and with 16-byte accesses; more rows than the
backward's warps, so warps walk several rows and the blocks' parameter sums meet in the reduction),
and the online-softmax cross-entropy (a row
whose max comes late, an ignored target). Outputs are poisoned with NaN first where they are
written, not accumulated. Tolerance: KERNEL_REL (helpers.py)."""

from __future__ import annotations

import numpy as np
import pytest

from numba_impl.kernels import crossentropy, gelu, layernorm, residual
from reference import layers as ref_layers
from tests.numba_impl.helpers import KERNEL_REL, dev, host, max_rel, needs_cuda, rng

pytestmark = needs_cuda


def _nan(n):
    return dev(np.full(n, np.nan))


def test_gelu_ilp_matches_naive_twin_and_reference():
    N = 301  # 32-thread simulator blocks of 4 elements each: 3 blocks, the last one partial
    r = rng(40)
    x, dout = 3.0 * r.standard_normal(N), r.standard_normal(N)
    outs = {}
    for naive in (True, False):
        out, dx = _nan(N), _nan(N)
        gelu.gelu_forward(out, dev(x), N, naive=naive)
        gelu.gelu_backward(dx, dev(x), dev(dout), N, naive=naive)
        outs[naive] = host(out, (N,)), host(dx, (N,))
    assert max_rel(outs[False][0], outs[True][0]) <= KERNEL_REL
    assert max_rel(outs[False][1], outs[True][1]) <= KERNEL_REL
    assert max_rel(outs[False][0], ref_layers.gelu_forward(x)) <= KERNEL_REL
    assert max_rel(outs[False][1], ref_layers.gelu_backward(dout, x)) <= KERNEL_REL


def test_residual_ilp_matches_naive_twin():
    N = 301
    r = rng(41)
    a, b = r.standard_normal(N), r.standard_normal(N)
    got = {}
    for naive in (True, False):
        out = _nan(N)
        residual.residual_forward(out, dev(a), dev(b), N, naive=naive)
        got[naive] = host(out, (N,))
    assert np.array_equal(got[False], got[True])  # one float32 add each: identical
    assert max_rel(got[False], a + b) <= KERNEL_REL


@pytest.mark.parametrize(
    "C, vec, dbias_shared",
    [
        (70, False, None),  # 3 values per lane, the last lane slice partial
        (72, True, None),  # runs of 4: one per lane, 18 lanes of 32 hold one
        (136, True, None),  # two runs per lane, the second one on 2 lanes only
        # above 32 values per lane (GPT-2 large and xl) the backward keeps fewer rows in registers:
        (1100, True, True),  # 36 per lane: the parameter sums in shared memory (as at large, C = 1280)
        (1100, True, False),  # dbias's sums in registers (as at xl, C = 1600, where both rows do not fit)
        (1061, False, None),  # 34 per lane, scalar accesses, the last lane slice partial
    ],
)
def test_layernorm_registers_version_matches_naive_twin(C, vec, dbias_shared, monkeypatch):
    N, eps = 13, 1e-5  # 13 rows over the backward's 2 blocks (of one warp in the simulator)
    assert layernorm._row_vectorized(C, dev(np.zeros(4))) == vec
    if dbias_shared is not None:
        build = layernorm.layernorm_warp_kernels
        monkeypatch.setattr(
            layernorm, "layernorm_warp_kernels", lambda *a, **k: build(*a, **k, dbias_shared=dbias_shared)
        )
    r = rng(42)
    x = 2.0 + r.standard_normal((N, C))
    w, b = 1.0 + 0.1 * r.standard_normal(C), 0.1 * r.standard_normal(C)
    dout = r.standard_normal((N, C))
    res = {}
    for name, fwd, bwd in (
        ("naive", layernorm.layernorm_forward_naive, layernorm.layernorm_backward_naive),
        ("warp", layernorm.layernorm_forward, layernorm.layernorm_backward),
    ):
        out, mean, rstd = _nan(N * C), _nan(N), _nan(N)
        fwd(out, mean, rstd, dev(x), dev(w), dev(b), N, C, eps)
        dx, dw, db = dev(np.ones((N, C))), dev(np.ones(C)), dev(np.ones(C))  # the backward accumulates
        bwd(dx, dw, db, dev(dout), dev(x), dev(w), mean, rstd, N, C)
        res[name] = [
            host(a, s) for a, s in ((out, (N, C)), (mean, (N,)), (rstd, (N,)), (dx, (N, C)), (dw, (C,)), (db, (C,)))
        ]
    for got, want in zip(res["warp"], res["naive"], strict=True):
        assert np.isfinite(got).all()
        assert max_rel(got, want) <= KERNEL_REL
    # no atomics in the parameter sums: a second backward from the same state gives the same bits
    dx, dw, db = dev(np.ones((N, C))), dev(np.ones(C)), dev(np.ones(C))
    out, mean, rstd = _nan(N * C), _nan(N), _nan(N)
    layernorm.layernorm_forward(out, mean, rstd, dev(x), dev(w), dev(b), N, C, eps)
    layernorm.layernorm_backward(dx, dw, db, dev(dout), dev(x), dev(w), mean, rstd, N, C)
    assert np.array_equal(host(dw, (C,)), res["warp"][4]) and np.array_equal(host(db, (C,)), res["warp"][5])
    ref_dx, ref_dw, ref_db = ref_layers.layernorm_backward(dout, x, w, *ref_layers.layernorm_forward(x, w, b, eps)[1:])
    assert max_rel(res["warp"][4] - 1, ref_dw) <= KERNEL_REL
    assert max_rel(res["warp"][5] - 1, ref_db) <= KERNEL_REL


@pytest.mark.parametrize(
    "version, N, V, offset",
    [
        ("block", 4, 97, 0),
        ("rows", 4, 97, 0),  # rows start 0, 1, 2, 3 floats past a 16-byte boundary: every head length
        ("rows", 5, 1037, 0),  # a thread folds several groups of runs; 5 rows over 2 blocks
        ("rows", 3, 1037, 1),  # logits and dlogits not 16-byte aligned: the scalar-load kernel
        ("rows", 2, 3, 0),  # fewer values than one run
    ],
)
def test_online_softmax_crossentropy_matches_naive_twin(version, N, V, offset):
    r = rng(43)
    logits = 3.0 * r.standard_normal((N, V))
    logits[0, V - 1] = 40.0  # the row max in the last element: every running sum is rescaled
    logits[1, 0] = 40.0  # and in the first
    targets = r.integers(0, V, N)
    targets[N - 2] = -1
    targets[N - 1] = V - 1  # the target in a row's last value (a tail or a run's last lane)
    got = {}
    for naive in (True, False):
        losses = _nan(N)
        # `offset` floats into larger buffers: the rows kernel must notice the misalignment
        d_logits = dev(np.concatenate([np.zeros(offset), logits.ravel()]))[offset:]
        d_dlogits = _nan(N * V + offset)[offset:]
        crossentropy.crossentropy(losses, d_dlogits, d_logits, dev(targets, np.int32), N, V, 1.0 / 3,
                                  version="naive" if naive else version)  # fmt: skip
        got[naive] = host(losses, (N,)), host(d_dlogits, (N, V))
    assert max_rel(got[False][0], got[True][0]) <= KERNEL_REL
    assert max_rel(got[False][1], got[True][1]) <= KERNEL_REL
    assert got[False][0][N - 2] == 0.0 and np.all(got[False][1][N - 2] == 0.0)
    assert np.isfinite(got[False][1]).all()
