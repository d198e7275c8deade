"""The tensor-core (3xTF32) matmul: the mma helper against NumPy, the kernel against its float32
naive twin (kernels/matmul.py) and a float64 product, and its PTX through ptxas.

In the CUDA simulator (CI) the helper is the Python emulation of numba_impl/mma.py, so these tests
check the kernel's tiling, staging, fragment indexing, split-K and epilogue on small ragged shapes;
on a GPU the same tests run the real instruction. `test_kernels_compile_for_sm90_without_spills`
needs no GPU and no simulator: it compiles every layout's kernel to PTX for sm_90 and reads ptxas'
report.

Tolerances:
- one m16n8k8 on TF32 inputs: the 8 products are exact in float32 and the sum is rounded to
  float32 (at most a few ulp of the accumulator): max|d| <= 1e-6 max|ref| (ref in float64).
- the 3xTF32 matmul against float64: each product carries ~2^-21 relative error from the dropped
  lo*lo term and the TF32 rounding of lo, plus float32 accumulation, over K <= ~40 terms here:
  KERNEL_REL (1e-5 of the output scale, helpers.py), the same bound as the float32 kernels.
- against the naive float32 kernel: both within KERNEL_REL of float64, so within 2 KERNEL_REL.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from numba_impl._compat import cuda
from numba_impl.kernels import matmul as matmul_f32
from numba_impl.kernels import matmul_3xtf32 as m3
from tests.numba_impl.helpers import KERNEL_REL, dev, host, max_rel, needs_cuda, rng

MMA_REL = 1e-6


def _tf32(x):
    """TF32 rounding in NumPy (nearest, ties away from zero): the oracle for mma.tf32_round."""
    bits = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x1000) & 0xFFFFE000).astype(np.uint32).view(np.float32)


def _operands(layout, M, N, K, r):
    a = r.standard_normal((M, K))
    b = r.standard_normal((K, N))
    a_stored = a.T if layout[0] == "T" else a
    b_stored = b.T if layout[1] == "T" else b
    return a, b, a_stored, b_stored


# ----------------------------------------------------------------------------- the helper
@needs_cuda
def test_mma_m16n8k8_and_tf32_split_match_numpy():
    from numba_impl._compat import float32, kernel
    from numba_impl.mma import mma_tf32_m16n8k8, tf32_round

    @kernel
    def one_mma(d, hi_out, lo_out, a, b, c, x):
        lane = cuda.threadIdx.x
        g, t = lane // 4, lane % 4
        hi = tf32_round(x[lane])
        hi_out[lane] = hi
        lo_out[lane] = tf32_round(x[lane] - hi)
        a0, a1 = tf32_round(a[g * 8 + t]), tf32_round(a[(g + 8) * 8 + t])
        a2, a3 = tf32_round(a[g * 8 + t + 4]), tf32_round(a[(g + 8) * 8 + t + 4])
        b0, b1 = tf32_round(b[t * 8 + g]), tf32_round(b[(t + 4) * 8 + g])
        c0, c1 = c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1]
        c2, c3 = c[(g + 8) * 8 + 2 * t], c[(g + 8) * 8 + 2 * t + 1]
        d0, d1, d2, d3 = mma_tf32_m16n8k8(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3)
        d[g * 8 + 2 * t] = d0
        d[g * 8 + 2 * t + 1] = d1
        d[(g + 8) * 8 + 2 * t] = d2
        d[(g + 8) * 8 + 2 * t + 1] = d3 + float32(0.0)

    r = rng(30)
    A, B, C = r.standard_normal((16, 8)), r.standard_normal((8, 8)), r.standard_normal((16, 8))
    x = (r.standard_normal(32) * 10.0 ** r.integers(-3, 4, 32)).astype(np.float32)
    d = dev(np.full((16, 8), np.nan))  # poisoned: every element must be written
    hi, lo = dev(np.full(32, np.nan)), dev(np.full(32, np.nan))
    one_mma[1, 32](d, hi, lo, dev(A), dev(B), dev(C), dev(x))

    ref = _tf32(A).astype(np.float64) @ _tf32(B).astype(np.float64) + C.astype(np.float32)
    assert max_rel(host(d, (16, 8)), ref) <= MMA_REL
    hi, lo = hi.copy_to_host(), lo.copy_to_host()
    assert np.array_equal(hi, _tf32(x)), "tf32_round must round to nearest, ties away from zero"
    assert not (hi.view(np.uint32) & 0x1FFF).any() and not (lo.view(np.uint32) & 0x1FFF).any()
    # hi + lo keeps x to ~2^-22 relative (one rounding of the remainder, whose size is <= 2^-11 |x|)
    assert np.all(np.abs((hi.astype(np.float64) + lo) - x) <= 2.0**-21 * np.abs(x))


# ----------------------------------------------------------------------------- the kernel
@needs_cuda
@pytest.mark.parametrize("layout", m3.LAYOUTS)
@pytest.mark.parametrize("mode", m3.ACCUMULATE_MODES)
def test_matmul_3xtf32_matches_float64_and_the_naive_float32_kernel(layout, mode):
    M, N, K = 19, 21, 27  # ragged: partial tiles in M, N and the last K slice
    r = rng(31)
    a, b, a_s, b_s = _operands(layout, M, N, K, r)
    bias = r.standard_normal(N)
    ref = a @ b + bias

    out = dev(np.full((M, N), np.nan))
    m3.matmul(out, dev(a_s), dev(b_s), M, N, K, layout, bias=dev(bias), accumulate_mode=mode)
    got = host(out, (M, N))
    assert np.isfinite(got).all(), "an output element was not written"
    assert max_rel(got, ref) <= KERNEL_REL

    naive = dev(np.zeros((M, N)))
    matmul_f32.matmul(naive, dev(a_s), dev(b_s), M, N, K, layout, bias=dev(bias), naive=True)
    assert max_rel(got, host(naive, (M, N))) <= 2 * KERNEL_REL


@needs_cuda
@pytest.mark.parametrize("layout", ["NN", "TN"])
def test_matmul_3xtf32_accumulates_and_splits_k(layout):
    """accumulate=True adds into `out`; k_chunk sums K in chunks (the head's long-K backward)."""
    M, N, K = 9, 17, 40
    r = rng(32)
    a, b, a_s, b_s = _operands(layout, M, N, K, r)
    start = r.standard_normal((M, N))
    out = dev(start)
    m3.matmul(out, dev(a_s), dev(b_s), M, N, K, layout, accumulate=True, k_chunk=12)  # 12 -> slices of 16
    assert max_rel(host(out, (M, N)), start + a @ b) <= KERNEL_REL


@needs_cuda
@pytest.mark.parametrize("layout", m3.LAYOUTS)
def test_matmul_3xtf32_with_the_gpu_tile(layout):
    """The GPU's default tile (several warps per block, two stages), here in the simulator too: one
    ragged block, two K slices. (The simulator's own default is a one-warp tile, for speed.)"""
    M, N, K = 50, 40, 20
    r = rng(37)
    a, b, a_s, b_s = _operands(layout, M, N, K, r)
    out = dev(np.full((M, N), np.nan))
    m3.matmul(out, dev(a_s), dev(b_s), M, N, K, layout, tile=m3.GPU_TILE)
    assert max_rel(host(out, (M, N)), a @ b) <= KERNEL_REL


@needs_cuda
@pytest.mark.parametrize("layout", m3.LAYOUTS)
@pytest.mark.parametrize("tile", [m3.SIM_TILE + ("fragment",), (2, 2, 2, 4, 16, 2, "fragment")])
def test_matmul_3xtf32_fragment_native_shared_tiles(layout, tile):
    """SMEM="fragment" (a_slot / b_slot: each lane's fragment one 16-byte word) computes the same product:
    one warp of 64 x 32 over several blocks, and the GPU's default tile over one ragged block."""
    M, N, K = 70, 40, 20
    r = rng(38)
    a, b, a_s, b_s = _operands(layout, M, N, K, r)
    out = dev(np.full((M, N), np.nan))
    m3.matmul(out, dev(a_s), dev(b_s), M, N, K, layout, tile=tile)
    assert max_rel(host(out, (M, N)), a @ b) <= KERNEL_REL


def test_fragment_native_slots_are_a_permutation_in_register_order():
    """a_slot / b_slot give every element of a slice its own slot, and lane (g, t)'s 16-byte word holds
    (a0, a1, a2, a3) / (b0, b1 of j, b0, b1 of j + 1) in that order (mma.py's layout)."""
    BM, BN, BK = 64, 64, 16
    assert sorted(m3.a_slot(m, k, BM) for m in range(BM) for k in range(BK)) == list(range(BM * BK))
    assert sorted(m3.b_slot(k, n, BN) for k in range(BK) for n in range(BN)) == list(range(BN * BK))
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        word = m3.a_slot(16 + g, 8 + t, BM)  # the A fragment of row group 1, k step 1
        assert word % 4 == 0
        assert [m3.a_slot(16 + r, 8 + k, BM) - word for r, k in ((g, t), (g + 8, t), (g, t + 4), (g + 8, t + 4))] == [
            0, 1, 2, 3]  # fmt: skip
        word = m3.b_slot(t, 16 + g, BN)  # B fragments of column groups 2 and 3, k step 0
        assert [m3.b_slot(k, 16 + c, BN) - word for k, c in ((t, g), (t + 4, g), (t, g + 8), (t + 4, g + 8))] == [
            0, 1, 2, 3]  # fmt: skip
    with pytest.raises(ValueError, match="SMEM='fragment'"):
        m3.staging_offsets(64, 16, 128, True, lambda m, k: (m * 7 + k * 3) % 11 * (m % 3))


@needs_cuda
@pytest.mark.parametrize("layout", ["NN", "TN"])
def test_matmul_3xtf32_one_shared_stage(layout):
    """STAGES=1 (one copy of the tiles, two barriers per K slice) computes the same product."""
    M, N, K = 18, 20, 30
    r = rng(36)
    a, b, a_s, b_s = _operands(layout, M, N, K, r)
    out = dev(np.full((M, N), np.nan))
    m3.matmul(out, dev(a_s), dev(b_s), M, N, K, layout, tile=m3.SIM_TILE[:5] + (1,))
    assert max_rel(host(out, (M, N)), a @ b) <= KERNEL_REL


@needs_cuda
def test_matmul_3xtf32_forward_backward_match_float64():
    BT, C, OC = 11, 13, 18
    r = rng(33)
    x, w, bias, dout = (r.standard_normal(s) for s in ((BT, C), (C, OC), (OC,), (BT, OC)))
    out = dev(np.full((BT, OC), np.nan))
    m3.matmul_forward(out, dev(x), dev(w), dev(bias), BT, C, OC)
    assert max_rel(host(out, (BT, OC)), x @ w + bias) <= KERNEL_REL
    dx, dw, db = dev(np.full((BT, C), np.nan)), dev(np.ones((C, OC))), dev(np.ones(OC))  # dW, db accumulate
    m3.matmul_backward(dx, dw, db, dev(dout), dev(x), dev(w), BT, C, OC)
    assert max_rel(host(dx, (BT, C)), dout @ w.T) <= KERNEL_REL
    assert max_rel(host(dw, (C, OC)) - 1, x.T @ dout) <= KERNEL_REL
    assert max_rel(host(db, (OC,)) - 1, dout.sum(0)) <= KERNEL_REL


def test_matmul_3xtf32_refuses_naive_and_bad_arguments():
    with pytest.raises(ValueError, match="no naive version"):
        m3.matmul(None, None, None, 1, 1, 1, naive=True)
    with pytest.raises(ValueError, match="layout"):
        m3.matmul_3xtf32_kernel("TT", *m3.GPU_TILE)
    with pytest.raises(ValueError, match="accumulate_mode"):
        m3.matmul_3xtf32_kernel("NN", *m3.GPU_TILE, mode="fused")
    with pytest.raises(ValueError, match="SMEM"):
        m3.matmul_3xtf32_kernel("NN", *m3.GPU_TILE, SMEM="padded")
    with pytest.raises(ValueError, match="multiple of 8"):
        m3.matmul_3xtf32_kernel("NN", 1, 1, 1, 1, 12)


# ----------------------------------------------------------------------------- the shared layout, no GPU needed
def _banks_of_vector_reads(addresses, width):
    """Bank-conflict degree of one warp-wide read of `width` floats per lane at these float offsets:
    the hardware serves 8-byte reads per half-warp and 16-byte reads per quarter-warp."""
    lanes_per_phase = {1: 32, 2: 16, 4: 8}[width]
    worst = 1
    for p in range(0, len(addresses), lanes_per_phase):
        banks = [(a + w) % 32 for a in addresses[p : p + lanes_per_phase] for w in range(width)]
        worst = max(worst, max(banks.count(b) for b in set(banks)))
    return worst


@pytest.mark.parametrize("BMN", [32, 64, 128])
@pytest.mark.parametrize("BK", [8, 16, 32])
def test_shared_layout_is_a_permutation_and_fragment_reads_are_conflict_free(BMN, BK):
    """The tile layouts of matmul_3xtf32.shared_layout: every (row, k) element gets its own slot, a
    lane's fragment pair / quad is one aligned 8- / 16-byte word, and a warp's fragment reads and
    staging stores hit each bank at most once per hardware phase."""
    assert sorted(m3._perm8(k) for k in range(8)) == list(range(8))
    assert sorted(m3._perm32(c) for c in range(BMN)) == list(range(BMN))
    lanes = [(lane >> 2, lane & 3) for lane in range(32)]  # (g, t)
    # K-contiguous: element (row, k) at (k // 8) * pitch + row * 8 + _perm8(k % 8)
    size, pitch = m3.shared_layout(BMN, BK, k_contiguous=True)
    slots = {(k // 8) * pitch + r * 8 + m3._perm8(k % 8) for r in range(BMN) for k in range(BK)}
    assert len(slots) == BMN * BK and max(slots) < size
    for row0 in range(0, BMN, 8):
        reads = [row0 * 8 + g * 8 + 2 * t for g, t in lanes]  # (k = t, k = t + 4) of row row0 + g
        assert all(a % 2 == 0 for a in reads) and _banks_of_vector_reads(reads, 2) == 1
    assert [m3._perm8(k) for k in (0, 4, 3, 7)] == [0, 1, 6, 7]  # (t, t + 4) side by side
    stores = [(k // 8) * pitch + (e // BK) * 8 + m3._perm8(k % 8) for e in range(32) for k in [e % BK]]
    assert _banks_of_vector_reads(stores, 1) == 1
    # M/N-contiguous: element (k, c) at k * pitch + _perm32(c)
    size, pitch = m3.shared_layout(BMN, BK, k_contiguous=False)
    slots = {k * pitch + m3._perm32(c) for k in range(BK) for c in range(BMN)}
    assert len(slots) == BMN * BK and max(slots) < size
    for c0 in range(0, BMN, 32):
        reads = [t * pitch + c0 + 4 * g for g, t in lanes]  # columns c0 + 8v + g, v = 0..3, at k row t
        assert all(a % 4 == 0 for a in reads) and _banks_of_vector_reads(reads, 4) == 1
        assert [m3._perm32(c0 + 8 * v + 3) for v in range(4)] == [c0 + 12 + v for v in range(4)]
    stores = [m3._perm32(c) for c in range(32)]
    assert _banks_of_vector_reads(stores, 1) == 1


# ----------------------------------------------------------------------------- ptxas, no GPU needed
SM90_SHARED_STATIC_LIMIT = 48 * 1024
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.skipif(shutil.which("ptxas") is None, reason="ptxas (CUDA toolkit) not on PATH")
def test_kernels_compile_for_sm90_without_spills():
    """Every layout of the kernel (default tile) compiled for sm_90 (Numba's real CUDA target, in a subprocess,
    so this runs in CI next to the simulator) and read through ptxas: the whole kernel's PTX holds the
    tensor-core instruction (inline assembly), no float64 arithmetic, no stack frame, no spills, and
    its shared memory fits the 48 KiB a block gets without opting in."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "numba_3xtf32_check.py"), "--ptxas"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout)
    assert len(rows) == len(m3.LAYOUTS)
    for row in rows:
        where = f"{row['layout']} {row['tile']}: {row['report']}"
        assert row["ptxas_rc"] == 0, where
        assert row["mma"] >= 3 and row["f64"] == 0, where
        assert row["stack"] == 0 and row["spill_stores"] == 0 and row["spill_loads"] == 0, where
        assert row["smem"] <= SM90_SHARED_STATIC_LIMIT, where


# ----------------------------------------------------------------------------- epilogues and the model
@needs_cuda
@pytest.mark.parametrize("which", ["gelu", "residual"])
def test_matmul_3xtf32_forward_epilogues(which):
    """matmul_forward's fused epilogues (the model's fc + GELU and projection + residual)."""
    BT, C, OC = 10, 12, 20
    r = rng(34)
    x, w, bias, res = (r.standard_normal(s) for s in ((BT, C), (C, OC), (OC,), (BT, OC)))
    pre = x @ w + bias
    out, out2 = dev(np.full((BT, OC), np.nan)), dev(np.full((BT, OC), np.nan))
    if which == "gelu":
        m3.matmul_forward(out, dev(x), dev(w), dev(bias), BT, C, OC, gelu_out=out2)
        want = 0.5 * pre * (1 + np.tanh(np.sqrt(2 / np.pi) * (pre + 0.044715 * pre**3)))
    else:
        m3.matmul_forward(out, dev(x), dev(w), dev(bias), BT, C, OC, residual=dev(res), residual_out=out2)
        want = res + pre
    assert max_rel(host(out, (BT, OC)), pre) <= KERNEL_REL
    assert max_rel(host(out2, (BT, OC)), want) <= KERNEL_REL


@needs_cuda
def test_model_with_3xtf32_matmuls_within_the_float32_ceilings():
    """The whole model with matmul="3xtf32" against the float64 reference, the float32 ceilings unchanged."""
    import reference
    from numba_impl.model import NumbaGPT2
    from tests.numba_impl.helpers import GRAD_L2_REL, GRAD_MAX_REL, LOGITS_MAX_REL, LOSS_REL, l2_rel
    from weights import GPT2Config, synthetic

    config = GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_ctx=8)
    params = synthetic(config, seed=3)
    r = rng(35)
    idx, targets = r.integers(0, 64, (1, 6)), r.integers(0, 64, (1, 6))
    targets[0, 2] = -1
    ref_logits, ref_loss, ref_grads = reference.forward_backward(
        {k: v.astype(np.float64) for k, v in params.items()}, config, idx, targets
    )
    m = NumbaGPT2(params, config, max_batch=1, max_seq=6, matmul="3xtf32")
    logits, loss, grads = m.forward_backward(idx, targets)
    assert max_rel(logits, ref_logits) <= LOGITS_MAX_REL
    assert abs(loss - ref_loss) <= LOSS_REL * abs(ref_loss)
    for name, g in ref_grads.items():
        assert l2_rel(grads[name], g) <= GRAD_L2_REL, name
        assert max_rel(grads[name], g) <= GRAD_MAX_REL, name
    with pytest.raises(ValueError, match="kernels='fast'"):
        NumbaGPT2(params, config, matmul="3xtf32", kernels="naive")
    with pytest.raises(ValueError, match="matmul must be one of"):
        NumbaGPT2(params, config, matmul="tf32")
