"""CUDA: the same GPT-2 on the GPU, in float32 (TF32 off), bf16 autocast, flash/memory-efficient SDPA.

Every test here is marked `gpu` and skips without a CUDA device. All together they take a few
seconds on one H100 (the 124M step is the largest: one forward/backward of 4 x 1024 tokens).

Tolerances:
  float32 CUDA vs a float64 CPU model: measured float32-vs-float64 error on this config is
    ~1e-7 on logits and ~3e-8 on gradients (CPU); GPU kernels sum in another order, same size of
    error. Bounds: 2e-5 (logits, loss; as on CPU) and 1e-6 (gradients, up to ~0.1 in size).
    TF32 (10-bit mantissa, ~5e-4 relative) would not stay inside them reliably.
  bf16 autocast vs float32: 8-bit mantissa (~4e-3 relative): logits within 0.05 (they are O(0.5)),
    loss within 1%, gradients pointing the same way (cosine > 0.99).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from torch_impl import contract
from torch_impl.model import GPT2
from weights import GPT2Config

pytestmark = pytest.mark.gpu

MATMUL = torch.backends.cuda.matmul


@pytest.fixture
def tf32_on():
    """Turn TF32 matmuls on (as a trainer would), hand back a reader of the flag, restore afterwards."""
    if hasattr(MATMUL, "fp32_precision"):  # torch >= 2.9
        saved = MATMUL.fp32_precision
        MATMUL.fp32_precision = "tf32"
        yield lambda: MATMUL.fp32_precision == "tf32"
        MATMUL.fp32_precision = saved
    else:
        saved = MATMUL.allow_tf32
        MATMUL.allow_tf32 = True
        yield lambda: MATMUL.allow_tf32
        MATMUL.allow_tf32 = saved


@pytest.mark.parametrize("attention", ["math", "sdpa"])
def test_float32_cuda_matches_float64_cpu(cfg, params, params64, ids, attention, tf32_on):
    # TF32 is on: the contract must switch it off by itself, and give it back.
    idx, targets = ids(B=4, T=cfg.n_ctx, seed=31)
    ref_logits, ref_loss, ref_grads = contract.forward_backward(
        GPT2.from_params(params64, cfg, dtype=torch.float64), idx, targets
    )
    model = GPT2.from_params(params, cfg, device="cuda", attention=attention)
    logits, loss, grads = contract.forward_backward(model, idx, targets)
    assert tf32_on()
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=2e-5)
    assert loss == pytest.approx(ref_loss, abs=2e-5)
    for name in ref_grads:
        np.testing.assert_allclose(grads[name], ref_grads[name], rtol=0, atol=1e-6, err_msg=name)


def test_tf32_disabled_really_changes_cuda_matmuls(tf32_on):
    """On Ampere/Hopper a TF32 matmul is off by ~3e-4 of the largest entry; inside tf32_disabled() ~1e-7."""
    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(512, 512, device="cuda", generator=g)
    b = torch.randn(512, 512, device="cuda", generator=g)
    exact = (a.double() @ b.double()).float()
    scale = exact.abs().max().item()
    tf32_err = ((a @ b) - exact).abs().max().item() / scale
    with contract.tf32_disabled():
        ieee_err = ((a @ b) - exact).abs().max().item() / scale
    if torch.cuda.get_device_capability()[0] >= 8:  # TF32 exists from Ampere (sm_80) on
        # TF32 keeps 10 mantissa bits; emulated on these inputs its error is ~3e-4 of the largest entry.
        assert tf32_err > 1e-4
    assert tf32_on()
    assert ieee_err < 1e-5  # 512-term float32 sums: ~1e-6 relative


@pytest.mark.parametrize("attention", ["math", "sdpa"])
def test_bf16_autocast_on_cuda_is_close_to_float32(cfg, params, ids, attention):
    model = GPT2.from_params(params, cfg, device="cuda", attention=attention)
    idx, targets = ids(B=4, T=cfg.n_ctx, seed=32)
    ref_logits, ref_loss, ref_grads = contract.forward_backward(model, idx, targets)
    logits, loss, grads = contract.forward_backward(model, idx, targets, autocast_dtype=torch.bfloat16)
    assert not np.array_equal(logits, ref_logits)  # it really ran in bf16
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=0.05)
    assert loss == pytest.approx(ref_loss, rel=0.01)
    for name in ("wte.weight", "h.0.attn.c_attn.weight", "h.2.mlp.c_proj.weight"):
        a, b = grads[name].ravel(), ref_grads[name].ravel()
        assert a @ b / np.sqrt((a @ a) * (b @ b)) > 0.99, name


@pytest.mark.parametrize("attention", ["math", "sdpa"])
def test_cuda_generation_cached_equals_uncached_and_stays_in_vocab(cfg, params, attention):
    model = GPT2.from_params(params, cfg, device="cuda", attention=attention, padded_vocab_size=128)
    prompt = torch.from_numpy(np.random.default_rng(33).integers(0, cfg.vocab_size, (3, 4))).cuda()
    greedy = model.generate(prompt, 25)  # runs past n_ctx = 24: the window slides
    assert torch.equal(greedy, model.generate(prompt, 25, use_cache=False))
    draws = [
        model.generate(prompt, 12, 1.0, 10, torch.Generator(device="cuda").manual_seed(7), use_cache=c)
        for c in (True, False)
    ]
    assert torch.equal(draws[0], draws[1])
    assert greedy.device.type == "cuda" and int(greedy.max()) < cfg.vocab_size and int(draws[0].max()) < cfg.vocab_size


def test_cuda_bad_ids_raise_the_same_errors(cfg, params):
    model = GPT2.from_params(params, cfg, device="cuda")
    with pytest.raises(ValueError, match=r"idx: token id 101 at \[1, 0\] is outside \[0, vocab_size=101\)"):
        model(torch.tensor([[1, 2], [101, 3]], device="cuda"))
    with pytest.raises(ValueError, match="idx: sequence length T=25 exceeds n_ctx=24"):
        model(torch.zeros(1, 25, dtype=torch.long, device="cuda"))


def test_124m_shape_step_on_cuda_in_bf16():
    """A freshly initialised 124M GPT-2 (padded vocab, SDPA) runs a bf16 step; its loss is ~ln(V).

    At GPT-2 init the logits are ~N(0, 0.02^2 * 768), so the loss is ln(50257) + ~0.15 = ~11.0;
    bf16 and float32 agree on it within 1%.
    """
    config = GPT2Config.gpt2_124m()
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = GPT2(config, attention="sdpa", padded_vocab_size=50304)
    assert model.num_params() == 124_439_808
    g = torch.Generator(device="cuda").manual_seed(1)
    idx = torch.randint(0, config.vocab_size, (4, 1024), device="cuda", generator=g)
    targets = torch.randint(0, config.vocab_size, (4, 1024), device="cuda", generator=g)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits, loss = model(idx, targets)
    loss.backward()
    assert logits.shape == (4, 1024, config.vocab_size)
    assert abs(loss.item() - math.log(config.vocab_size)) < 0.5
    assert torch.count_nonzero(model.wte.weight.grad[config.vocab_size :]) == 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.no_grad(), contract.tf32_disabled():
        _, loss32 = model(idx, targets)
    assert loss.item() == pytest.approx(loss32.item(), rel=0.01)


def _loss_grads(model, idx, targets, autocast: bool, run=None):
    """(loss, {canonical name: gradient}) of one forward/backward; `run` (e.g. torch.compile(model)) does
    the forward when given (its parameters are model's, under a prefix)."""
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        _, loss = (model if run is None else run)(idx, targets)  # (an OptimizedModule has no truth value)
    loss.backward()
    return float(loss.detach()), {n: p.grad.detach().double().cpu() for n, p in model.named_parameters()}


@pytest.mark.parametrize("loss_impl", ["chunked", "chunked-triton"])
@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bf16-autocast"])
def test_compiled_chunked_loss_on_cuda_within_the_suite_ceilings(cfg, params, params64, ids, autocast, loss_impl):
    """torch.compile of --loss-impl chunked (torch_impl/chunked_loss.py, a custom autograd Function with
    a loop over row chunks) and of chunked-triton (the same with each chunk's softmax and gradient in the
    Triton kernel of torch_impl/cross_entropy_triton.py, a torch.library triton_op that torch.compile
    traces) against the float64 CPU model, by the suite's ceilings (FP32 or BF16 of
    conformance/tolerances.py: loss, and each gradient's max error relative to its largest entry)."""
    from conformance.tolerances import BF16, FP32

    ceilings = BF16 if autocast else FP32
    idx, targets = ids(B=4, T=cfg.n_ctx, seed=33)
    ref = GPT2.from_params(params64, cfg, dtype=torch.float64)
    ref_loss, ref_grads = _loss_grads(ref, torch.from_numpy(idx), torch.from_numpy(targets), autocast=False)
    model = GPT2.from_params(params, cfg, device="cuda")
    model.set_loss_impl(loss_impl, chunk_rows=24)
    idx, targets = torch.from_numpy(idx).cuda(), torch.from_numpy(targets).cuda()
    loss, grads = _loss_grads(model, idx, targets, autocast, run=torch.compile(model))
    assert abs(loss - ref_loss) / abs(ref_loss) <= ceilings["loss"]
    for name, g in ref_grads.items():
        assert float((grads[name] - g).abs().max() / g.abs().max()) <= ceilings["grad_max"], name


def test_compiled_fused_mlp_on_cuda_within_the_bf16_ceilings(cfg, params, params64, ids):
    """torch.compile of --mlp-impl triton (torch_impl/mlp_triton.py: the MLP's backward written out, with
    GELU's derivative and c_fc's bias gradient in one torch.library triton_op) with the chunked-triton
    loss, under bf16 autocast, against the float64 CPU model by the suite's BF16 ceilings."""
    from conformance.tolerances import BF16

    idx, targets = ids(B=4, T=cfg.n_ctx, seed=34)
    ref = GPT2.from_params(params64, cfg, dtype=torch.float64)
    ref_loss, ref_grads = _loss_grads(ref, torch.from_numpy(idx), torch.from_numpy(targets), autocast=False)
    model = GPT2.from_params(params, cfg, device="cuda")
    model.set_loss_impl("chunked-triton", chunk_rows=24)
    model.set_mlp_impl("triton")
    idx, targets = torch.from_numpy(idx).cuda(), torch.from_numpy(targets).cuda()
    loss, grads = _loss_grads(model, idx, targets, True, run=torch.compile(model))
    assert abs(loss - ref_loss) / abs(ref_loss) <= BF16["loss"]
    for name, g in ref_grads.items():
        assert float((grads[name] - g).abs().max() / g.abs().max()) <= BF16["grad_max"], name


def test_compiled_fused_layernorms_on_cuda_within_the_bf16_ceilings(cfg, params, params64, ids):
    """torch.compile of --norm-impl triton (torch_impl/layernorm_triton.py: each residual add and the
    LayerNorm after it as one op, its backward one torch.library triton_op) with --mlp-impl triton and the
    chunked-triton loss (the trainer's fastest flags together), under bf16 autocast, against the float64
    CPU model by the suite's BF16 ceilings. A backward that lost dy (dweight = 0) misses them on every
    LayerNorm's weight."""
    from conformance.tolerances import BF16

    idx, targets = ids(B=4, T=cfg.n_ctx, seed=35)
    ref = GPT2.from_params(params64, cfg, dtype=torch.float64)
    ref_loss, ref_grads = _loss_grads(ref, torch.from_numpy(idx), torch.from_numpy(targets), autocast=False)
    model = GPT2.from_params(params, cfg, device="cuda")
    model.set_loss_impl("chunked-triton", chunk_rows=24)
    model.set_mlp_impl("triton")
    model.set_norm_impl("triton")
    idx, targets = torch.from_numpy(idx).cuda(), torch.from_numpy(targets).cuda()
    loss, grads = _loss_grads(model, idx, targets, True, run=torch.compile(model))
    assert abs(loss - ref_loss) / abs(ref_loss) <= BF16["loss"]
    for name, g in ref_grads.items():
        assert float((grads[name] - g).abs().max() / g.abs().max()) <= BF16["grad_max"], name


def test_compiled_fused_qkv_with_every_fused_op_on_cuda_within_the_bf16_ceilings(cfg, params, params64, ids):
    """torch.compile of --qkv-impl triton (torch_impl/qkv_triton.py: c_attn and the split into heads as one
    op, its backward's gather of dq, dk, dv and c_attn's bias gradient one torch.library triton_op) with
    --mlp-impl triton, --norm-impl triton and the chunked-triton loss, under bf16 autocast, against the
    float64 CPU model by the suite's BF16 ceilings; dq, dk, dv come from SDPA's own backward kernel."""
    from conformance.tolerances import BF16

    idx, targets = ids(B=4, T=cfg.n_ctx, seed=36)
    ref = GPT2.from_params(params64, cfg, dtype=torch.float64)
    ref_loss, ref_grads = _loss_grads(ref, torch.from_numpy(idx), torch.from_numpy(targets), autocast=False)
    model = GPT2.from_params(params, cfg, device="cuda")
    model.set_loss_impl("chunked-triton", chunk_rows=24)
    model.set_mlp_impl("triton")
    model.set_norm_impl("triton")
    model.set_qkv_impl("triton")
    idx, targets = torch.from_numpy(idx).cuda(), torch.from_numpy(targets).cuda()
    loss, grads = _loss_grads(model, idx, targets, True, run=torch.compile(model))
    assert abs(loss - ref_loss) / abs(ref_loss) <= BF16["loss"]
    for name, g in ref_grads.items():
        assert float((grads[name] - g).abs().max() / g.abs().max()) <= BF16["grad_max"], name
