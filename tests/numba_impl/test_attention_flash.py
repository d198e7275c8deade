"""The register-tiled flash attention kernels (FlashAttention-2 forward, dq pass, dk/dv pass) against
their naive twin (which materialises the (B,NH,T,T) probabilities) and the float64 reference, on
ragged sequence lengths (not multiples of the tiles), odd head counts and head sizes that the lanes
of a row group do not divide. Outputs are poisoned with NaN first: every element must be written.
Tolerance: KERNEL_REL (helpers.py): each output sums at most ~T*HS < 100 float32 products here."""

from __future__ import annotations

import math

import numpy as np
import pytest

from numba_impl._compat import cuda
from numba_impl.kernels import attention
from numba_impl.kernels.attention import FlashTiles
from reference import attention as ref_attention
from tests.numba_impl.helpers import KERNEL_REL, dev, host, max_rel, needs_cuda, rng

pytestmark = needs_cuda


def _nan(n):
    return dev(np.full(n, np.nan))


def _run_flash(qkv, dout, B, T, C, NH, tiles=None, bwd_tiles=None):
    d_qkv, d_dout = dev(qkv), dev(dout)
    out, lse = _nan(B * T * C), _nan(B * NH * T)
    attention.attention_forward_flash(out, lse, d_qkv, B, T, C, NH, tiles=tiles)
    dqkv, delta = _nan(B * T * 3 * C), _nan(B * NH * T)
    bwd_tiles = bwd_tiles or tiles
    attention.attention_backward_flash(dqkv, delta, d_dout, out, lse, d_qkv, B, T, C, NH, tiles=bwd_tiles)
    return out, lse, dqkv, delta


def _run_naive(qkv, dout, B, T, C, NH):
    d_qkv = dev(qkv)
    out = cuda.device_array(B * T * C, np.float32)
    sq = [cuda.device_array(B * NH * T * T, np.float32) for _ in range(4)]
    attention.attention_forward_naive(out, sq[0], sq[1], d_qkv, B, T, C, NH)
    dqkv = cuda.device_array(B * T * 3 * C, np.float32)
    attention.attention_backward_naive(dqkv, sq[2], sq[3], dev(dout), sq[1], d_qkv, B, T, C, NH)
    return host(out, (B, T, C)), host(dqkv, (B, T, 3 * C))


@pytest.mark.parametrize(
    "B, T, C, NH",
    [
        (2, 11, 16, 2),  # HS = 8: two query tiles of the simulator's 8 rows, three key tiles of 4
        (1, 9, 12, 3),  # odd head count, HS = 4 (one output column per lane)
        (1, 10, 18, 3),  # HS = 6: the 4 lanes of a row do not divide the head (guarded columns)
        (1, 1, 16, 2),  # a single position
    ],
)
def test_flash_matches_naive_twin_and_reference(B, T, C, NH):
    r = rng(20 + T)
    qkv = r.standard_normal((B, T, 3 * C))
    dout = r.standard_normal((B, T, C))
    out, lse, dqkv, delta = _run_flash(qkv, dout, B, T, C, NH)
    naive_out, naive_dqkv = _run_naive(qkv, dout, B, T, C, NH)
    flash_out, flash_dqkv = host(out, (B, T, C)), host(dqkv, (B, T, 3 * C))
    assert np.isfinite(flash_out).all() and np.isfinite(flash_dqkv).all()  # every element written
    assert max_rel(flash_out, naive_out) <= KERNEL_REL
    assert max_rel(flash_dqkv, naive_dqkv) <= KERNEL_REL

    ref_out, ref_att = ref_attention.attention_forward(qkv, NH)
    assert max_rel(flash_out, ref_out) <= KERNEL_REL
    assert max_rel(flash_dqkv, ref_attention.attention_backward(dout, qkv, ref_att, NH)) <= KERNEL_REL
    # lse = log sum_{s<=t} exp(scale q.k) and delta = dout . out, per (b, h, t)
    q, k, _ = ref_attention.split_heads(qkv, NH)
    s = np.where(ref_attention.causal_mask(T, T), (q @ k.swapaxes(-1, -2)) / math.sqrt(C // NH), -np.inf)
    ref_lse = np.log(np.exp(s - s.max(-1, keepdims=True)).sum(-1)) + s.max(-1)
    assert max_rel(host(lse, (B, NH, T)), ref_lse) <= KERNEL_REL
    ref_delta = (dout.reshape(B, T, NH, -1) * ref_out.reshape(B, T, NH, -1)).sum(-1).transpose(0, 2, 1)
    assert max_rel(host(delta, (B, NH, T)), ref_delta) <= KERNEL_REL
    # and the stand-alone delta kernel (the naive twin of the dq kernel's delta) agrees
    naive_delta = cuda.device_array(B * NH * T, np.float32)
    threads = 32
    grid = (B * NH * T + threads - 1) // threads
    attention.attention_delta_kernel[grid, threads](naive_delta, dev(dout), out, B, T, C, NH)
    assert max_rel(host(delta, (B, NH, T)), host(naive_delta, (B, NH, T))) <= KERNEL_REL


def test_flash_with_the_gpu_block_layout_of_rows_and_lanes():
    """The GPU tiles' layout (8 lanes per row, 4 rows per thread, 4 score columns per lane), shrunk to
    one warp: 16 query rows x 32 keys per tile. T = 37 crosses both, with a partial last tile."""
    B, T, C, NH = 1, 37, 16, 2
    tiles = FlashTiles(warps=1, lanes=8, rt=4, ct=4)
    r = rng(31)
    qkv, dout = r.standard_normal((B, T, 3 * C)), r.standard_normal((B, T, C))
    out, _, dqkv, _ = _run_flash(qkv, dout, B, T, C, NH, tiles=tiles)
    naive_out, naive_dqkv = _run_naive(qkv, dout, B, T, C, NH)
    assert max_rel(host(out, (B, T, C)), naive_out) <= KERNEL_REL
    assert max_rel(host(dqkv, (B, T, 3 * C)), naive_dqkv) <= KERNEL_REL


@pytest.mark.parametrize(
    "tiles, B, T, C, NH",
    [
        (FlashTiles(warps=1, lanes=4, rt=1, ct=1, vec=True), 2, 11, 16, 2),
        (FlashTiles(warps=1, lanes=8, rt=4, ct=4, vec=True), 1, 37, 64, 2),  # the GPU's runs of 4, HS = 32
        (FlashTiles(warps=1, lanes=4, rt=1, ct=1, vec=True), 1, 10, 18, 3),  # HS = 6: zero-padded runs
        (FlashTiles(warps=1, lanes=8, rt=2, ct=4, vec=True), 1, 35, 40, 2),  # HS = 20: a lane's 2nd run past HS
        (FlashTiles(warps=1, lanes=4, rt=1, ct=1, vec=True), 1, 1, 16, 2),  # a single position
        # the fused backward (dq by atomic adds): square tiles of 16 and 8, ragged T, HS = 32 and 6
        (FlashTiles(warps=1, lanes=8, rt=4, ct=2, vec=True, fused=True), 2, 37, 64, 2),
        (FlashTiles(warps=1, lanes=4, rt=1, ct=2, vec=True, fused=True), 1, 19, 18, 3),
        (FlashTiles(warps=1, lanes=4, rt=1, ct=2, vec=True, fused=True), 1, 1, 16, 2),
    ],
    ids=["sim-tiles", "gpu-layout", "hs6", "hs20", "t1", "fused", "fused-hs6", "fused-t1"],
)
def test_flash_with_16_byte_loads_matches_naive_twin(tiles, B, T, C, NH):
    """The variants with 16-byte aligned shared tiles: the forward (flash_forward_vec_kernel, q and k
    transposed), both backward kernels (flash_backward_*_vec_kernel, runs of 4 along rows) and the
    fused backward (one kernel, dq by atomic adds after flash_backward_prep_kernel); every output
    must be written (NaN-poisoned first: the prep kernel must zero every dq before the adds)."""
    r = rng(50 + T)
    qkv, dout = r.standard_normal((B, T, 3 * C)), r.standard_normal((B, T, C))
    fwd_tiles = tiles if attention.flash_vec_supported(C // NH, tiles) else None  # the forward needs HS % lanes == 0
    out, _, dqkv, delta = _run_flash(qkv, dout, B, T, C, NH, tiles=fwd_tiles, bwd_tiles=tiles)
    naive_out, naive_dqkv = _run_naive(qkv, dout, B, T, C, NH)
    flash_out, flash_dqkv = host(out, (B, T, C)), host(dqkv, (B, T, 3 * C))
    assert np.isfinite(flash_out).all() and np.isfinite(flash_dqkv).all()
    assert max_rel(flash_out, naive_out) <= KERNEL_REL
    assert max_rel(flash_dqkv, naive_dqkv) <= KERNEL_REL
    ref_delta = (dout.reshape(B, T, NH, -1) * naive_out.reshape(B, T, NH, -1)).sum(-1).transpose(0, 2, 1)
    assert max_rel(host(delta, (B, NH, T)), ref_delta) <= KERNEL_REL


def test_flash_forward_with_16_byte_loads_refuses_ragged_runs(monkeypatch):
    monkeypatch.setattr(attention, "SIMULATOR", False)
    assert attention.flash_vec_supported(64, FlashTiles(4, 8, 4, 4, vec=True))
    assert not attention.flash_vec_supported(48, FlashTiles(4, 8, 4, 4, vec=True))  # 6 columns per lane
    assert not attention.flash_vec_supported(64, FlashTiles(4, 8, 2, 4, vec=True))  # runs of 2 rows
    with pytest.raises(ValueError, match="16-byte"):
        attention.flash_kernels(48, forward_tiles=FlashTiles(4, 8, 4, 4, vec=True))
    with pytest.raises(ValueError, match="runs of 4 keys"):  # the backward walks keys 4 at a time
        attention.flash_kernels(64, backward_tiles=FlashTiles(4, 2, 2, 1, vec=True))
    with pytest.raises(ValueError, match="square tiles"):  # fused: the query rows reuse the key rows' layout
        attention.flash_kernels(64, backward_tiles=FlashTiles(4, 8, 4, 4, vec=True, fused=True))


def test_flash_rejects_a_head_count_that_does_not_divide_the_width():
    with pytest.raises(ValueError, match="n_head"):
        attention.attention_forward_flash(None, None, None, 1, 4, 10, 3)


def test_gpu_flash_tiles_fit_static_shared_memory(monkeypatch):
    """On a GPU: GPT-2's HS = 64 gets 64 x 32 forward tiles and 32 x 32 backward tiles, and every head
    size's shapes keep each kernel within 48 KiB of static shared memory (ptxas rejects more)."""
    monkeypatch.setattr(attention, "SIMULATOR", False)
    fwd, bwd = attention.flash_tiles(64)
    assert (fwd.rows, fwd.cols, fwd.threads) == (64, 32, 128)
    assert (bwd.rows, bwd.cols, bwd.threads) == (32, 32, 128)
    for hs in (16, 32, 48, 64, 80, 96, 128, 256):
        fwd, bwd = attention.flash_tiles(hs)
        assert attention.flash_shared_bytes(hs, fwd, "forward") <= attention.FLASH_STATIC_SHARED
        for name in ("dq", "dkv"):
            assert attention.flash_shared_bytes(hs, bwd, name) <= attention.FLASH_STATIC_SHARED
    # the defaults load shared memory 16 bytes at a time; the backward stays the deterministic two passes
    assert attention.flash_tiles(64)[0].vec and attention.flash_tiles(64)[1].vec
    assert not attention.flash_tiles(64)[1].fused
    assert not attention.flash_tiles(80)[0].vec  # HS = 80: 10 columns per lane, no runs of 4


def test_fitting_a_fused_backward_keeps_its_tiles_square(monkeypatch):
    monkeypatch.setattr(attention, "SIMULATOR", False)
    fused = FlashTiles(warps=4, lanes=8, rt=2, ct=4, vec=True, fused=True)
    assert attention.fit_flash_tiles(64, fused, ("dq", "dkv")) == fused  # 48,896 bytes: fits as it is
    for hs in (80, 128):
        fitted = attention.fit_flash_tiles(hs, fused, ("dq", "dkv"))
        assert fitted.rows == fitted.cols or not fitted.fused
        assert max(attention.flash_shared_bytes(hs, fitted, n) for n in ("dq", "dkv")) <= attention.FLASH_STATIC_SHARED
        attention.flash_kernels(hs, backward_tiles=fitted)  # accepted by the launcher's checks
