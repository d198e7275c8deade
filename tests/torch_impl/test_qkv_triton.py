"""torch_impl/qkv_triton.py: c_attn and its split into heads, whose backward gathers dq, dk, dv and c_attn's
bias gradient in one Triton kernel (--qkv-impl triton).

The kernel runs on the GPU when there is one, else on the CPU in Triton's interpreter (TRITON_INTERPRET=1,
which noxfile.py sets on a machine without a GPU before anything imports triton).

Tolerances. The gather is a copy: dqkv must equal the concatenation bit for bit. db is the float32 sum of
those same values, held to 1e-5 of the sum of their magnitudes (float32 rounding over a few hundred rows).
The op's gradients are bf16 results of float32 sums (cuBLAS's matmuls, the kernel's column sums) of the
same bf16 values the plain lines see; against float64 autograd through the plain lines each gradient, and
each of its q, k and v parts, is held to STEP (one bf16 step, 2^-7) of that part's largest value. A model
with the op against the plain model under the same autocast: the same matmuls on the same values, only
c_attn's bias gradient summed in another order, so every gradient is held to one bf16 step too.
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
from torch_impl import qkv_triton as qt
from torch_impl.model import GPT2
from weights import GPT2Config

REPO = Path(__file__).resolve().parents[2]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    qt.unavailable_reason(DEVICE) is not None, reason=str(qt.unavailable_reason(DEVICE))
)  # fmt: skip
STEP = 2.0**-7  # one bf16 step, relative (8 significant bits)


def _bf16(*shape, std=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (std * torch.randn(*shape, generator=g)).to(torch.bfloat16).to(DEVICE)


def _heads(t, B, T, n, HS):
    """(B, T, n HS) -> (B, n, T, HS), a view (the plain path's layout)."""
    return t.view(B, T, n, HS).transpose(1, 2)


# B*T rows: two programs of ROWS, a third short with its last BLOCK_M tile partly masked
B, T = 3, (2 * qt.ROWS + qt.BLOCK_M + 5 + 2) // 3


@pytest.mark.parametrize(
    "NH, NKV, HS, layout",
    [(4, 4, 8, "views"), (4, 2, 16, "views"), (3, 1, 6, "contiguous"), (2, 2, 8, "mixed")],
    ids=["gpt2-views", "gqa-views", "mqa-head6-contiguous", "dk-dv-strides-differ"],
)
@pytest.mark.parametrize("bias_grad", [True, False], ids=["bias-grad", "no-bias-grad"])
def test_gather_is_the_concatenation_and_its_column_sums(NH, NKV, HS, layout, bias_grad):
    """dqkv equals cat(q's heads merged, k's, v's) exactly, for dq, dk, dv as views of one (B, T, W)
    tensor (the plain forward's layout), as contiguous (B, heads, T, HS) tensors, and with dk and dv of
    different strides; grouped-query shapes (NKV < NH) and a head size that is not a power of two."""
    W = (NH + 2 * NKV) * HS
    g = _bf16(B, T, W, seed=3)
    q, k, v = g.split([NH * HS, NKV * HS, NKV * HS], dim=2)
    dq, dk, dv = _heads(q, B, T, NH, HS), _heads(k, B, T, NKV, HS), _heads(v, B, T, NKV, HS)
    if layout == "contiguous":
        dq, dk, dv = dq.contiguous(), dk.contiguous(), dv.contiguous()
    elif layout == "mixed":
        dk = dk.contiguous()
    dqkv, db = qt.qkv_backward_gather(dq, dk, dv, bias_grad)
    assert dqkv.shape == (B * T, W) and dqkv.dtype == torch.bfloat16
    assert torch.equal(dqkv, g.reshape(B * T, W))
    if bias_grad:
        assert db.shape == (W,) and db.dtype == torch.float32
        ref = g.double().reshape(B * T, W)
        err = (db.double() - ref.sum(0)).abs()
        assert (err <= 1e-5 * ref.abs().sum(0)).all()
    else:
        assert db is None


def test_the_gather_refuses_mismatched_inputs():
    dq, dk = _bf16(2, 4, 5, 8), _bf16(2, 2, 5, 8)
    with pytest.raises(ValueError, match="need dq \\(B, NH, T, HS\\)"):
        qt.qkv_backward_gather(dq, dk, _bf16(2, 2, 6, 8))
    with pytest.raises(ValueError, match="need dq \\(B, NH, T, HS\\)"):
        qt.qkv_backward_gather(dq, _bf16(2, 2, 5, 4), _bf16(2, 2, 5, 4))
    with pytest.raises(ValueError, match="need one dtype"):
        qt.qkv_backward_gather(dq, dk, dk.float())


@pytest.mark.parametrize("NKV, bias", [(4, True), (2, False)], ids=["gpt2", "gqa-no-bias"])
def test_the_ops_gradients_match_the_plain_lines(NKV, bias):
    """QKVProjection's forward and its hand-written backward against autograd through model.py's lines
    (c_attn, split, views), both over the same bf16 inputs (the plain side in float64). The loss mixes
    q, k and v unevenly, so a gradient sent to the wrong head or part shows."""
    NH, HS, C, Bk, Tk = 4, 8, 24, 2, 7
    W = (NH + 2 * NKV) * HS
    ins = [_bf16(Bk, Tk, C, seed=7), _bf16(W, C, std=0.3, seed=8), _bf16(W, std=0.3, seed=9) if bias else None]
    wq, wk, wv = _bf16(NH, Tk, HS, seed=10), _bf16(NKV, Tk, HS, seed=11), _bf16(NKV, Tk, HS, seed=12)

    def loss(q, k, v):
        return (q * wq).sum() + (k * k * wk).sum() + (v * wv * 0.5).sum() + (q[:, :NKV] * v).sum()

    fused = [None if t is None else t.clone().requires_grad_() for t in ins]
    q, k, v = qt.qkv_projection(fused[0], fused[1], fused[2], NH, NKV)
    assert q.shape == (Bk, NH, Tk, HS) and k.shape == v.shape == (Bk, NKV, Tk, HS)
    loss(q.double(), k.double(), v.double()).backward()
    plain = [None if t is None else t.double().requires_grad_() for t in ins]
    qkv = F.linear(plain[0], plain[1], plain[2])
    q64, k64, v64 = qkv.split([NH * HS, NKV * HS, NKV * HS], dim=2)
    q64, k64, v64 = _heads(q64, Bk, Tk, NH, HS), _heads(k64, Bk, Tk, NKV, HS), _heads(v64, Bk, Tk, NKV, HS)
    for a, b in ((q, q64), (k, k64), (v, v64)):  # x w^T + b in bf16: one rounding of float32 sums
        assert _rel(a.detach(), b.detach()) <= STEP
    loss(q64, k64, v64).backward()
    assert fused[0].grad.dtype == torch.bfloat16
    assert _rel(fused[0].grad, plain[0].grad) <= STEP, "x"
    parts = {"q": slice(0, NH * HS), "k": slice(NH * HS, (NH + NKV) * HS), "v": slice((NH + NKV) * HS, W)}
    for part, rows in parts.items():  # w's rows (and b's entries) of each part: a part lost or scaled shows
        for name, a, b in (("w", fused[1], plain[1]), ("b", fused[2], plain[2])):
            if b is None:
                continue
            assert a.grad.dtype == torch.bfloat16, name
            assert _rel(a.grad[rows], b.grad[rows]) <= STEP, f"{name}, {part}'s part"


def _rel(got, ref):
    """max |got - ref| over max |ref|, in float64."""
    ref = ref.double().cpu()
    return float((got.double().cpu() - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize(
    "variant",
    [{}, {"n_kv_head": 1, "position": "rope", "bias": False}],
    ids=["gpt2", "mqa-rope-no-bias"],
)
def test_a_model_with_the_op_under_autocast_matches_the_plain_one(monkeypatch, variant):
    """GPT2.set_qkv_impl("triton") on a float32 model under bf16 autocast, parameters moved off the init
    (nonzero biases): the casts are autocast's (the fp32 weights get fp32 gradients); the loss is the plain
    model's under the same autocast within the suite's BF16 ceiling, and every gradient within one bf16 step
    of the plain one's largest value (module docstring), c_attn's weight and bias gradients part by part
    (q, k, v). The op is counted: every block, in bf16."""
    cfg = dataclasses.replace(GPT2Config.tiny(), **variant)
    torch.manual_seed(0)
    plain = GPT2(cfg).to(DEVICE)
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(0.05 * torch.randn_like(p))
    fused = GPT2(cfg).to(DEVICE)
    fused.load_state_dict(plain.state_dict())
    fused.set_qkv_impl("triton")
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, cfg.vocab_size, (2, 16), generator=g).to(DEVICE)
    targets = torch.randint(0, cfg.vocab_size, (2, 16), generator=g).to(DEVICE)
    calls = []
    real = qt.QKVProjection.apply

    def counted(*args):
        calls.append(args[0].dtype)
        return real(*args)

    monkeypatch.setattr(qt.QKVProjection, "apply", counted)
    losses, grads = [], []
    for model in (plain, fused):
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            _, loss = model(idx, targets)
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert calls == [torch.bfloat16] * cfg.n_layer  # the fused model only, every block, in bf16
    assert abs(losses[1] - losses[0]) / abs(losses[0]) <= BF16["loss"]
    assert grads[0].keys() == grads[1].keys()
    qkv = cfg.qkv_width
    q_w, kv_w = cfg.n_head * cfg.head_size, cfg.kv_heads * cfg.head_size
    parts = {"q": slice(0, q_w), "k": slice(q_w, q_w + kv_w), "v": slice(q_w + kv_w, qkv)}
    for name, ref in grads[0].items():
        got = grads[1][name]
        assert got.dtype == torch.float32, name
        for part, rows in parts.items() if ".c_attn." in name else (("all", slice(None)),):
            assert _rel(got[rows], ref[rows]) <= STEP, f"{name}, {part}"


def test_generation_and_recorded_activations_take_the_plain_lines(monkeypatch):
    """With a cache (generation) or `acts`, the attention runs its plain lines even under --qkv-impl triton:
    the op is never called, and activations still record qkv."""
    model = GPT2(GPT2Config.tiny()).to(DEVICE)
    model.set_qkv_impl("triton")
    monkeypatch.setattr(qt.QKVProjection, "apply", lambda *a: pytest.fail("the op ran"))
    idx = torch.zeros((1, 3), dtype=torch.long, device=DEVICE)
    model.generate(idx, max_new_tokens=2)
    assert "h.0.qkv" in model.forward_with_activations(idx)


def test_bad_uses_are_refused():
    x, w = _bf16(2, 3, 16), _bf16(48, 16)
    with pytest.raises(ValueError, match="--qkv-impl triton computes in .*not torch.float32"):
        qt.qkv_projection(x.float(), w.float(), None, 2, 2)
    with pytest.raises(ValueError, match="need w"):
        qt.qkv_projection(x, _bf16(47, 16), None, 2, 2)
    with pytest.raises(ValueError, match="need w"):
        qt.qkv_projection(x, w, _bf16(40), 2, 2)
    with pytest.raises(ValueError, match="qkv_impl must be one of"):
        GPT2(GPT2Config.tiny()).set_qkv_impl("cuda")


def test_on_the_cpu_without_the_interpreter_it_is_refused_in_one_line():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "from torch_impl import qkv_triton as qt; print(qt.unavailable_reason('cpu'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().startswith("--qkv-impl triton runs on a CUDA GPU, not on cpu")
    assert "TRITON_INTERPRET=1" in out.stdout
