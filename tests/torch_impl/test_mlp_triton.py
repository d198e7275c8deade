"""torch_impl/mlp_triton.py: the MLP whose GELU and c_fc-bias backward is one Triton kernel (--mlp-impl triton).

The kernel runs on the GPU when there is one, else on the CPU in Triton's interpreter (TRITON_INTERPRET=1,
which noxfile.py sets on a machine without a GPU before anything imports triton).

Tolerances. The inputs are bf16; every reference is computed in float64 from those same bf16 values. The
kernel computes gelu'(h) dg in float32 (a few roundings: 1e-6 of |dg|) and rounds dh to bf16: half a
bf16 step (2^-8 relative) on the GPU, a whole step (2^-7) in the interpreter, which truncates; dh is
held to one step plus that. db_fc is the float32 sum of the kernel's own dh, held to 1e-5 of sum |dh|.
The autograd checks compare the fused MLP's gradients with autograd through the plain MLP at the suite's
BF16 ceilings (conformance/tolerances.py).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conformance.tolerances import BF16
from torch_impl import mlp_triton as mt
from torch_impl.model import GPT2
from weights import GPT2Config

REPO = Path(__file__).resolve().parents[2]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    mt.unavailable_reason(DEVICE) is not None, reason=str(mt.unavailable_reason(DEVICE))
)  # fmt: skip
STEP = 2.0**-7  # one bf16 step, relative (8 significant bits)

# Edges in every direction: M, N not multiples of any BLOCK_M / BLOCK_N (nor of SLOT), K not of BLOCK_K
M, C, H = 83, 40, 72


def _bf16(*shape, std=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (std * torch.randn(*shape, generator=g)).to(torch.bfloat16).to(DEVICE)


def _gelu64(h):
    # 0.5 h (1 + tanh(u)) = h sigmoid(2u): the same number, without the cancellation in 1 + tanh(u) for
    # h << 0 that costs even float64 its digits (at h = -7, 1 + tanh(u) ~ 1e-15 is off by ~4%)
    return h * torch.sigmoid(2 * mt.SQRT_2_OVER_PI * (h + 0.044715 * h**3))


def _dgelu64(h):
    t = torch.tanh(mt.SQRT_2_OVER_PI * (h + 0.044715 * h**3))
    return 0.5 * (1 + t) + 0.5 * h * (1 - t * t) * mt.SQRT_2_OVER_PI * (1 + 3 * 0.044715 * h * h)


def _within(got, ref, rel, abs_=0.0):
    err = (got.double().cpu() - ref.double().cpu()).abs()
    bound = rel * ref.double().cpu().abs() + abs_
    assert (err <= bound).all(), f"max excess {float((err - bound).max()):.3e}"


@pytest.mark.parametrize("bias_grad", [True, False], ids=["bias-grad", "no-bias-grad"])
def test_gelu_backward_bias_grad_is_gelus_derivative_and_its_column_sums(bias_grad):
    # rows: three programs of ROWS, the last one short and its last BLOCK_M rows masked; columns: a
    # second, partly masked, BLOCK_N block
    Mk, Hk = 2 * mt.ROWS + mt.BLOCK_M + 12, mt.BLOCK_N + 44
    dg, h = _bf16(Mk, Hk, seed=4), _bf16(Mk, Hk, std=2.0, seed=5)
    dh, db = mt.gelu_backward_bias_grad(dg, h, bias_grad)
    assert dh.shape == (Mk, Hk) and dh.dtype == torch.bfloat16
    ref = dg.double() * _dgelu64(h.double())
    _within(dh, ref, STEP, 1e-6 * dg.double().abs().cpu())
    if bias_grad:
        assert db.shape == (Hk,) and db.dtype == torch.float32
        _within(db, dh.double().sum(0), 0.0, 1e-5 * dh.double().abs().sum(0).cpu())  # the rows it was given
    else:
        assert db is None
    with pytest.raises(ValueError, match="need one \\(M, H\\) shape and dtype"):
        mt.gelu_backward_bias_grad(dg[:, :-1], h)


def test_gelu_forward_is_gelu_rounded_once():
    """gelu(h) computed in float32 and rounded to bf16 once: within one bf16 step of float64's gelu (a
    tiny absolute floor where gelu(h) underflows toward 0 for h << 0), over random h, h far out on either
    side (exp(-2u) clamped, never inf), and a length two blocks and a part, its tail masked."""
    n = 2 * mt.GELU_BLOCK + 37
    h = _bf16(n, std=3.0, seed=3)
    h[:6] = torch.tensor([-100.0, -12.0, -3.0, 0.0, 12.0, 100.0], dtype=torch.bfloat16)
    g = mt.gelu_forward(h.reshape(1, n))  # any shape: (1, n)
    assert g.shape == (1, n) and g.dtype == torch.bfloat16
    _within(g.reshape(n), _gelu64(h.double()), STEP, 1e-30)
    assert torch.isfinite(g).all() and abs(float(g[0, 0])) <= 1e-30 and float(g[0, 5]) == 100.0


def test_fused_mlp_gradients_match_the_plain_mlps():
    """FusedMLP's forward and its hand-written backward against autograd through model.py's three lines,
    both over the same bf16 inputs (the plain side in float64)."""
    ins = [_bf16(M, C, seed=7), _bf16(H, C, std=0.3, seed=8), _bf16(H, std=0.3, seed=9),
           _bf16(C, H, std=0.3, seed=10), _bf16(C, std=0.3, seed=11)]  # fmt: skip
    dy = _bf16(M, C, seed=12)
    fused = [t.clone().requires_grad_() for t in ins]
    y = mt.fused_mlp(*fused)
    y.backward(dy)
    plain = [t.double().requires_grad_() for t in ins]
    y64 = F.linear(F.gelu(F.linear(plain[0], plain[1], plain[2]), approximate="tanh"), plain[3], plain[4])
    y64.backward(dy.double())
    assert float((y.detach().double() - y64.detach()).abs().max() / y64.detach().abs().max()) <= BF16["logits"]
    for name, a, b in zip(("x", "w_fc", "b_fc", "w_proj", "b_proj"), fused, plain, strict=True):
        assert a.grad.dtype == torch.bfloat16, name
        assert float((a.grad.double() - b.grad).abs().max() / b.grad.abs().max()) <= BF16["grad_max"], name


def test_a_model_with_the_fused_mlp_under_autocast_matches_the_plain_one(monkeypatch):
    """GPT2.set_mlp_impl("triton") on a float32 model under bf16 autocast: the casts are autocast's (the
    fp32 weights get fp32 gradients), and loss and gradients stay within the suite's BF16 ceilings of the
    plain model's under the same autocast."""
    cfg = GPT2Config.tiny()
    torch.manual_seed(0)
    plain = GPT2(cfg).to(DEVICE)
    fused = GPT2(cfg).to(DEVICE)
    fused.load_state_dict(plain.state_dict())
    fused.set_mlp_impl("triton")
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, cfg.vocab_size, (2, 16), generator=g).to(DEVICE)
    targets = torch.randint(0, cfg.vocab_size, (2, 16), generator=g).to(DEVICE)
    calls = []
    real = mt.FusedMLP.apply

    def counted(*args):
        calls.append(args[0].dtype)
        return real(*args)

    monkeypatch.setattr(mt.FusedMLP, "apply", counted)
    losses, grads = [], []
    for model in (plain, fused):
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            _, loss = model(idx, targets)
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert calls == [torch.bfloat16] * cfg.n_layer  # the fused model only, every block, in bf16
    assert abs(losses[1] - losses[0]) / abs(losses[0]) <= BF16["loss"]
    for name, ref in grads[0].items():
        got = grads[1][name]
        assert got.dtype == torch.float32, name
        assert float((got - ref).abs().max() / ref.abs().max()) <= BF16["grad_max"], name


def test_bad_uses_are_refused():
    x = _bf16(4, C)
    w_fc, w_proj = _bf16(H, C), _bf16(C, H)
    with pytest.raises(ValueError, match="--mlp-impl triton computes in .*not torch.float32"):
        mt.fused_mlp(x.float(), w_fc.float(), None, w_proj.float(), None)
    swiglu = GPT2(dataclasses.replace(GPT2Config.tiny(), mlp="swiglu", mlp_hidden=48))
    with pytest.raises(ValueError, match="is for GELU MLPs; this model's MLP is 'swiglu'"):
        swiglu.set_mlp_impl("triton")
    with pytest.raises(ValueError, match="mlp_impl must be one of"):
        GPT2(GPT2Config.tiny()).set_mlp_impl("cuda")


def test_on_the_cpu_without_the_interpreter_it_is_refused_in_one_line():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "from torch_impl import mlp_triton as mt; print(mt.unavailable_reason('cpu'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().startswith("--mlp-impl triton runs on a CUDA GPU, not on cpu")
    assert "TRITON_INTERPRET=1" in out.stdout
