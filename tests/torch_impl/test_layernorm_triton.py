"""torch_impl/layernorm_triton.py: a residual add and the LayerNorm after it as one op, its backward one
Triton kernel (--norm-impl triton).

The kernel runs on the GPU when there is one, else on the CPU in Triton's interpreter (TRITON_INTERPRET=1,
which noxfile.py sets on a machine without a GPU before anything imports triton).

Tolerances. The kernel computes in float32 what torch's layer_norm backward computes in float32, in
another summation order; every reference here is float64 from the same inputs. dx_new is held to 1e-6 of
its largest value (float32 sums over C = 40 or 1,100 channels: ~1e-7), dweight and dbias, sums over a few
hundred rows, to 1e-6 as well; dx_new's bf16 copy to one bf16 step (2^-7 relative, the interpreter
truncates). The whole model's loss and gradients in float32 are held to the suite's FP32 ceilings of the
plain model's, and under bf16 autocast to the BF16 ceilings (conformance/tolerances.py).
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

from conformance.tolerances import BF16, FP32
from torch_impl import layernorm_triton as lt
from torch_impl.model import GPT2
from weights import GPT2Config

REPO = Path(__file__).resolve().parents[2]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    lt.unavailable_reason(DEVICE) is not None, reason=str(lt.unavailable_reason(DEVICE))
)  # fmt: skip
STEP = 2.0**-7  # one bf16 step, relative (8 significant bits)


def _randn(*shape, std=1.0, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (std * torch.randn(*shape, generator=g)).to(dtype).to(DEVICE)


def _rel(got, ref):
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    return float((got - ref).abs().max() / ref.abs().max())


def _pair64(x, delta, b_proj, weight, bias, dres, dy):
    """Autograd in float64 through x_new = x + delta + b_proj, y = layer_norm(x_new): the reference
    gradients (of x, delta, b_proj, weight, bias)."""
    leaves = [t.detach().double().cpu().requires_grad_() for t in (x, delta, b_proj, weight, bias)]
    x_new = leaves[0] + leaves[1] + leaves[2]
    y = F.layer_norm(x_new, (x.shape[-1],), leaves[3], leaves[4], 1e-5)
    torch.autograd.backward([x_new, y], [dres.double().cpu(), dy.double().cpu()])
    return y.detach(), [t.grad for t in leaves]


# rows: two programs of ROWS and a short third one, whose second tile holds one row (the rest masked);
# columns: C not a power of two (BLOCK_C masks the rest), once small and once wider than GPT-2 124M's
@pytest.mark.parametrize("C", [40, 1100])
@pytest.mark.parametrize("delta_dtype", [torch.bfloat16, torch.float32], ids=["bf16-delta", "f32-delta"])
@pytest.mark.parametrize("with_b_proj", [True, False], ids=["b_proj", "no-b_proj"])
def test_residual_layernorm_gradients_are_the_float64_ones(C, delta_dtype, with_b_proj):
    M = 2 * lt.ROWS + lt.BLOCK_M + 1
    x, delta = _randn(M, C, seed=1), _randn(M, C, std=0.3, seed=2, dtype=delta_dtype)
    b_proj = _randn(C, std=0.3, seed=10).requires_grad_() if with_b_proj else None
    ln = torch.nn.LayerNorm(C).to(DEVICE)
    with torch.no_grad():
        ln.weight.copy_(_randn(C, std=0.2, seed=3) + 1)
        ln.bias.copy_(_randn(C, std=0.2, seed=4))
    dres, dy = _randn(M, C, seed=5), _randn(M, C, seed=6)
    xs, ds = x.clone().requires_grad_(), delta.clone().requires_grad_()
    x_new, y = lt.residual_layernorm(xs, ds, ln, b_proj)
    assert x_new.dtype == torch.float32 and y.dtype == torch.float32  # no autocast: x + delta's dtype
    torch.autograd.backward([x_new, y], [dres, dy])
    zero = torch.zeros(C, device=DEVICE)
    y64, (dx64, dd64, dp64, dw64, db64) = _pair64(x, delta, zero if b_proj is None else b_proj, ln.weight,
                                                  ln.bias, dres, dy)  # fmt: skip
    assert _rel(y, y64) <= 1e-6
    assert _rel(xs.grad, dx64) <= 1e-6
    assert ds.grad.dtype == delta_dtype
    assert _rel(ds.grad, dd64) <= (STEP if delta_dtype == torch.bfloat16 else 1e-6)
    if with_b_proj:  # sum_rows dx_new, float32 over M rows
        assert b_proj.grad.dtype == torch.float32 and _rel(b_proj.grad, dp64) <= 1e-6
    assert _rel(ln.weight.grad, dw64) <= 1e-6
    assert _rel(ln.bias.grad, db64) <= 1e-6


def test_layernorm_backward_without_a_residual_gradient_and_without_a_bias():
    """dres None: dx_new is layer_norm's backward alone; the bias-less LayerNorm gets no bias gradient."""
    M, C = lt.ROWS + 3, 40
    x, dy = _randn(M, C, seed=7), _randn(M, C, seed=8, dtype=torch.bfloat16)
    w = _randn(C, std=0.2, seed=9) + 1
    _, mean, rstd = torch.ops.aten.native_layer_norm(x, [C], w, None, 1e-5)
    dx, dlow, dw, db, dp = lt.layernorm_backward(dy, x, mean, rstd, w)
    assert dlow is dx and dp is None  # low_dtype None: x's dtype, no copy; no sum_dx: no db_proj
    leaves = [x.detach().double().cpu().requires_grad_(), w.detach().double().cpu().requires_grad_()]
    F.layer_norm(leaves[0], (C,), leaves[1], None, 1e-5).backward(dy.double().cpu())
    assert _rel(dx, leaves[0].grad) <= 1e-6 and _rel(dw, leaves[1].grad) <= 1e-6
    assert _rel(db, dy.double().sum(0)) <= 1e-6
    ln = torch.nn.LayerNorm(C, bias=False).to(DEVICE)
    with torch.no_grad():
        ln.weight.copy_(w)
    xs = x.clone().requires_grad_()
    _, y = lt.residual_layernorm(xs, torch.zeros_like(x), ln)
    y.sum().backward()  # x_new unused: autograd's zeros come in as dres
    assert ln.bias is None
    leaves = [x.detach().double().cpu().requires_grad_(), w.detach().double().cpu().requires_grad_()]
    F.layer_norm(leaves[0], (C,), leaves[1], None, 1e-5).sum().backward()
    assert _rel(xs.grad, leaves[0].grad) <= 1e-6 and _rel(ln.weight.grad, leaves[1].grad) <= 1e-6


@pytest.mark.parametrize(
    "variant, autocast",
    [({}, False), ({}, True), (dict(bias=False), False), (dict(n_layer=1), False), (dict(position="rope"), False)],
    ids=["float32", "bf16-autocast", "no-biases", "one-layer", "rope"],
)
def test_a_model_with_the_fused_layernorms_matches_the_plain_one(monkeypatch, variant, autocast):
    """GPT2.set_norm_impl("triton") on a float32 model: loss and every gradient within the suite's FP32
    ceilings of the plain model's, and within the BF16 ceilings under the same bf16 autocast; 2 L of the
    2 L + 1 LayerNorms go through the op (block 0's ln_1 follows no add). Also with no biases anywhere
    (no c_proj bias to add in the op, no LayerNorm bias), one block (ln_f follows its MLP), and rotary
    positions. Every parameter is moved off GPT-2's init (whose biases are 0), so that a c_proj bias
    left out or added twice shows."""
    cfg = dataclasses.replace(GPT2Config.tiny(), **variant)
    ceilings = BF16 if autocast else FP32
    torch.manual_seed(0)
    plain = GPT2(cfg).to(DEVICE)
    with torch.no_grad():
        for t in plain.parameters():
            t.add_(0.1 * torch.randn_like(t))
    fused = GPT2(cfg).to(DEVICE)
    fused.load_state_dict(plain.state_dict())
    fused.set_norm_impl("triton")
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, cfg.vocab_size, (2, 16), generator=g).to(DEVICE)
    targets = torch.randint(0, cfg.vocab_size, (2, 16), generator=g).to(DEVICE)
    calls = []
    real = lt.ResidualLayerNorm.apply

    def counted(*args):
        calls.append(args[6])  # out_dtype
        return real(*args)

    monkeypatch.setattr(lt.ResidualLayerNorm, "apply", counted)
    losses, grads = [], []
    for model in (plain, fused):
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
            _, loss = model(idx, targets)
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert calls == [torch.bfloat16 if autocast else torch.float32] * (2 * cfg.n_layer)
    assert abs(losses[1] - losses[0]) / abs(losses[0]) <= ceilings["loss"]
    assert grads[1].keys() == grads[0].keys()
    for name, ref in grads[0].items():
        got = grads[1][name]
        assert got.dtype == torch.float32, name
        assert float((got - ref).abs().max() / ref.abs().max()) <= ceilings["grad_max"], name


def test_generation_and_activations_take_the_plain_lines():
    """With a cache or `acts` the model runs Block.forward (the op is for training forwards): the same
    tokens and activations as the plain model."""
    cfg = GPT2Config.tiny()
    torch.manual_seed(0)
    model = GPT2(cfg).to(DEVICE)
    prompt = torch.randint(0, cfg.vocab_size, (1, 3)).to(DEVICE)
    tokens, acts = model.generate(prompt, 4), model.forward_with_activations(prompt)
    model.set_norm_impl("triton")
    assert torch.equal(model.generate(prompt, 4), tokens)
    assert all(torch.equal(v, model.forward_with_activations(prompt)[k]) for k, v in acts.items())


def test_bad_uses_are_refused():
    ln = torch.nn.LayerNorm(40).to(DEVICE)
    with pytest.raises(ValueError, match="keeps the residual stream in float32"):
        lt.residual_layernorm(_randn(3, 40, dtype=torch.bfloat16), _randn(3, 40, dtype=torch.bfloat16), ln)
    x = _randn(5, 40)
    _, mean, rstd = torch.ops.aten.native_layer_norm(x, [40], ln.weight, ln.bias, 1e-5)
    with pytest.raises(ValueError, match="need dy, x \\(and dres\\) of one \\(M, C\\) shape"):
        lt.layernorm_backward(x[:, :-1], x, mean, rstd, ln.weight)
    with pytest.raises(ValueError, match="b_proj \\(39,\\): need \\(40,\\)"):
        lt.residual_layernorm(x, x, ln, _randn(39))
    rms = GPT2(dataclasses.replace(GPT2Config.tiny(), norm="rmsnorm"))
    with pytest.raises(ValueError, match="is for LayerNorm models; this model's norm is 'rmsnorm'"):
        rms.set_norm_impl("triton")
    with pytest.raises(ValueError, match="norm_impl must be one of"):
        GPT2(GPT2Config.tiny()).set_norm_impl("cuda")


def test_on_the_cpu_without_the_interpreter_it_is_refused_in_one_line():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "from torch_impl import layernorm_triton as lt; print(lt.unavailable_reason('cpu'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().startswith("--norm-impl triton runs on a CUDA GPU, not on cpu")
    assert "TRITON_INTERPRET=1" in out.stdout
