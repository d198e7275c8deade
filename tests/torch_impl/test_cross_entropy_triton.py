"""torch_impl/cross_entropy_triton.py: the Triton kernel for a chunk's cross-entropy and its gradient.

It runs on the GPU when there is one, else on the CPU in Triton's interpreter (TRITON_INTERPRET=1, which
noxfile.py sets on a machine without a GPU before anything imports triton); the kernel is the same.

Tolerances. The reference is F.cross_entropy of the same logits in float64 and its autograd gradient.
The kernel computes in float32, so its loss per row is held to 1e-6 relative to the row's logsumexp (a few
float32 roundings of a sum of ~10^3 exponentials), and its float32 dz to 1e-6 of the row's largest
|dz|; a bf16 dz to one bf16 step (2^-7 relative: 8 significant bits) plus that. On the GPU the cast
rounds to nearest (half a step); Triton's interpreter truncates, which is what needs the whole step.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from torch_impl import cross_entropy_triton as ce

REPO = Path(__file__).resolve().parents[2]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    ce.unavailable_reason(DEVICE) is not None, reason=str(ce.unavailable_reason(DEVICE))
)  # fmt: skip

# V > BLOCK and V not a multiple of it: both passes take several blocks, the last one partly masked
V = ce.BLOCK + 905
VP = V + 23  # pad columns


def _reference(z: torch.Tensor, targets: torch.Tensor, vocab_size: int):
    """(loss per row, dz) in float64: F.cross_entropy over the real columns and its autograd gradient."""
    z64 = z.double().detach().requires_grad_(True)
    rows = F.cross_entropy(z64[:, :vocab_size], targets, ignore_index=-1, reduction="none")  # 0 on ignored rows
    n_valid = max(int((targets != -1).sum()), 1)
    (dz,) = torch.autograd.grad(rows.sum() / n_valid, z64)
    return rows.detach(), dz, torch.tensor(float(n_valid))


def _logits(R: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = 4 * torch.randn(R, VP, generator=g)
    z[1, V - 3] = 60.0  # the row's max in its last block: the running sum is rescaled there
    z[2, :] -= 50.0  # a row far below zero
    targets = torch.randint(0, V, (R,), generator=g)
    targets[3] = -1  # ignored rows
    targets[5] = -1
    targets[1] = V - 1  # the last real column
    targets[4] = 0
    return z.to(dtype).to(DEVICE), targets.to(DEVICE)


@pytest.fixture(params=[True, False], ids=["whole-rows", "two-pass"])
def whole_rows(request, monkeypatch):
    """Each test below runs with the whole-row kernel allowed (it takes bf16 rows with a gradient) and
    without it (every row through the two-pass kernel)."""
    monkeypatch.setattr(ce, "WHOLE_ROWS", request.param)
    return request.param


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
def test_loss_and_gradient_match_cross_entropy(dtype, whole_rows):
    z, targets = _logits(9, dtype)
    assert ce.uses_whole_rows(z, need_grad=True) == (whole_rows and dtype == torch.bfloat16)
    ref_rows, ref_dz, n_valid = _reference(z, targets, V)
    loss, dz = ce.cross_entropy_rows(z, targets, n_valid, V)
    assert loss.dtype == torch.float32 and dz.dtype == dtype and dz.shape == z.shape
    lse = torch.logsumexp(z.double()[:, :V], dim=1).abs().cpu()
    assert ((loss.double().cpu() - ref_rows.cpu()).abs() <= 1e-6 * lse + 1e-6).all()
    err = (dz.double().cpu() - ref_dz.cpu()).abs()
    row_max = ref_dz.abs().amax(dim=1, keepdim=True).cpu()
    bound = 1e-6 * row_max + (2.0**-7 * ref_dz.abs().cpu() if dtype == torch.bfloat16 else 0.0)
    assert (err <= bound).all(), float((err - bound).max())
    assert torch.count_nonzero(dz[:, V:]) == 0  # pad columns: exactly no gradient
    assert torch.count_nonzero(dz[3]) == 0 and torch.count_nonzero(dz[5]) == 0  # ignored rows
    assert loss[3] == 0 and loss[5] == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
def test_without_the_gradient_the_loss_is_the_same_and_no_dz_is_made(dtype, whole_rows):
    """The loss alone (the two-pass kernel's forward, always) against the loss with the gradient (from the
    whole-row kernel, for bf16 rows when it is allowed): the same to float32 rounding of the sums."""
    z, targets = _logits(6, dtype, seed=1)
    n_valid = (targets != -1).sum().float()
    loss, dz = ce.cross_entropy_rows(z, targets, n_valid, V)
    loss_only, none = ce.cross_entropy_rows(z, targets, n_valid, V, need_grad=False)
    assert none is None
    assert torch.allclose(loss_only, loss, rtol=1e-6, atol=1e-6)
    if not ce.uses_whole_rows(z, need_grad=True):  # one kernel, the same sums in the same order
        assert torch.equal(loss_only, loss)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
def test_a_strided_chunk_and_every_row_ignored(dtype, whole_rows):
    """A view with a row stride wider than Vp (columns contiguous) is read in place; rows that are all
    ignored give loss 0 and dz 0."""
    z, targets = _logits(6, dtype, seed=2)
    wide = torch.zeros(6, VP + 64, device=DEVICE, dtype=dtype)
    wide[:, :VP] = z
    ignored = torch.full_like(targets, -1)
    loss, dz = ce.cross_entropy_rows(wide[:, :VP], ignored, torch.tensor(1.0), V)
    assert torch.count_nonzero(loss) == 0 and torch.count_nonzero(dz) == 0
    loss_view, dz_view = ce.cross_entropy_rows(wide[:, :VP], targets, torch.tensor(3.0), V)
    loss_dense, dz_dense = ce.cross_entropy_rows(z, targets, torch.tensor(3.0), V)
    assert torch.equal(loss_view, loss_dense) and torch.equal(dz_view, dz_dense)


@pytest.mark.parametrize(
    "Vp, pieces",
    [(50304, (32768, 16384, 2048)), (VP, (2048, 512, 512)), (64, (64, 1, 1)), (72, (64, 8, 1)), (100, (64, 32, 4))],
)
def test_row_pieces_cover_the_row_with_powers_of_two(Vp, pieces):
    assert ce.row_pieces(Vp) == pieces
    p0, p1, p2 = pieces
    assert p0 >= p1 >= p2 and sum(pieces) >= Vp and p0 + p1 <= Vp + (p1 == 1)


@pytest.mark.parametrize("Vk, Vpk", [(2040, 2048), (2050, 2056)], ids=["pieces-2048-1-1", "pieces-2048-8-1"])
def test_the_whole_row_kernel_with_one_column_pieces(Vk, Vpk, monkeypatch):
    """Rows whose second or third piece is the single masked column row_pieces leaves there: the loss and
    dz are F.cross_entropy's (bf16, the tolerances above), the pad columns get no gradient. (The whole-row
    kernel is switched on here: the module has it off.)"""
    monkeypatch.setattr(ce, "WHOLE_ROWS", True)
    assert ce.row_pieces(Vpk)[2] == 1 and ce.uses_whole_rows(torch.empty(1, Vpk, dtype=torch.bfloat16), True)
    g = torch.Generator().manual_seed(6)
    z = (4 * torch.randn(5, Vpk, generator=g)).to(torch.bfloat16).to(DEVICE)
    targets = torch.tensor([0, Vk - 1, 7, -1, 1000]).to(DEVICE)
    ref_rows, ref_dz, n_valid = _reference(z, targets, Vk)
    loss, dz = ce.cross_entropy_rows(z, targets, n_valid, Vk)
    lse = torch.logsumexp(z.double()[:, :Vk], dim=1).abs().cpu()
    assert ((loss.double().cpu() - ref_rows.cpu()).abs() <= 1e-6 * lse + 1e-6).all()
    err = (dz.double().cpu() - ref_dz.cpu()).abs()
    bound = 1e-6 * ref_dz.abs().amax(dim=1, keepdim=True).cpu() + 2.0**-7 * ref_dz.abs().cpu()
    assert (err <= bound).all(), float((err - bound).max())
    assert torch.count_nonzero(dz[:, Vk:]) == 0 and torch.count_nonzero(dz[3]) == 0


def test_no_scored_row_gives_zero_gradient_not_nan(whole_rows):
    """Every row ignored and n_valid = 0 (the chunked loss clamps it to 1; the kernel alone need not be
    handed that): loss and dz are 0 from both kernels, never 0/0."""
    z, _ = _logits(6, torch.bfloat16, seed=3)
    loss, dz = ce.cross_entropy_rows(z, torch.full((6,), -1, device=DEVICE), torch.tensor(0.0), V)
    assert torch.count_nonzero(loss) == 0 and torch.count_nonzero(dz) == 0


def test_rows_too_wide_for_registers_take_the_two_pass_kernel(monkeypatch):
    """Which rows the whole-row kernel takes when it is on (the module has it off: then none)."""
    bf = torch.empty(2, 50304, dtype=torch.bfloat16, device="meta")
    assert not ce.WHOLE_ROWS and not ce.uses_whole_rows(bf, need_grad=True)  # off: measured slower on the H200
    monkeypatch.setattr(ce, "WHOLE_ROWS", True)
    assert ce.uses_whole_rows(bf, need_grad=True)  # GPT-2's head: 51,200 <= WHOLE_ROW_MAX
    assert not ce.uses_whole_rows(bf, need_grad=False)  # the loss alone: one pass already
    assert not ce.uses_whole_rows(bf.float(), need_grad=True)  # float32: twice the registers
    assert not ce.uses_whole_rows(torch.empty(2, 51201, dtype=torch.bfloat16, device="meta"), need_grad=True)


def test_bad_inputs_are_refused():
    z, targets = _logits(6, torch.float32)
    with pytest.raises(ValueError, match="takes .* logits, not torch.float64"):
        ce.cross_entropy_rows(z.double(), targets, torch.tensor(1.0), V)
    with pytest.raises(ValueError, match="need z \\(R, Vp\\)"):
        ce.cross_entropy_rows(z, targets[:1], torch.tensor(1.0), V)
    with pytest.raises(ValueError, match="0 < vocab_size <= Vp"):
        ce.cross_entropy_rows(z, targets, torch.tensor(1.0), VP + 1)


def test_on_the_cpu_without_the_interpreter_it_is_refused_in_one_line():
    """Without a GPU and without TRITON_INTERPRET the kernel cannot run: the reason says what to do."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "from torch_impl import cross_entropy_triton as ce; print(ce.unavailable_reason('cpu'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().startswith("--loss-impl chunked-triton runs on a CUDA GPU, not on cpu")
    assert "TRITON_INTERPRET=1" in out.stdout


def test_the_kernels_compile_for_sm90_without_spills():
    """Triton's own compiler and ptxas, for an H100/H200 (sm_90a), without a GPU: the two-pass kernel at the
    configuration the trainer launches (BLOCK, NUM_WARPS) and the whole-row kernel holding GPT-2's padded
    row (50,304 columns, WHOLE_ROW_NUM_WARPS) use no local memory (no spills)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"PYTHONPATH": str(REPO)}
    probe = REPO / "tests" / "torch_impl" / "triton_ptxas_probe.py"
    out = subprocess.run([sys.executable, str(probe)], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    report = out.stdout
    assert report.count("Compiling entry function '_cross_entropy_rows_kernel' for 'sm_90a'") == 2, report
    assert report.count("Compiling entry function '_cross_entropy_whole_rows_kernel' for 'sm_90a'") == 1, report
    assert report.count("0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads") == 3, report
