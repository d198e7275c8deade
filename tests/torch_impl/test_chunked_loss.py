"""torch_impl/chunked_loss.py: the head + cross-entropy in row chunks against the plain path.

Tolerances. In float64 both paths do the same arithmetic but sum dW chunk by chunk: they agree to
float64 rounding, checked at 1e-12 relative. In float32 and under bf16 autocast each path is judged
against the float64 plain path by the suite's own ceilings (conformance/tolerances.py FP32 and BF16:
loss, and every gradient tensor's max error relative to its largest entry), so the chunked path is
held to exactly what any float32 or bf16 backend is held to.
"""

from __future__ import annotations

import pytest
import torch

import weights
from conformance.tolerances import BF16, FP32
from torch_impl import cross_entropy_triton
from torch_impl.chunked_loss import chunked_linear_cross_entropy
from torch_impl.model import GPT2

# chunked-triton: each chunk's softmax and gradient in the Triton kernel (torch_impl/cross_entropy_triton.py),
# on the CPU in Triton's interpreter (TRITON_INTERPRET=1, set by noxfile.py); float32 and bf16 only
TRITON_REASON = cross_entropy_triton.unavailable_reason("cpu")
needs_triton = pytest.mark.skipif(TRITON_REASON is not None, reason=str(TRITON_REASON))
CHUNKED_IMPLS = ["chunked", pytest.param("chunked-triton", marks=needs_triton)]

CFG = weights.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_ctx=16, vocab_size=100)
UNTIED_LLAMA = weights.GPT2Config(
    n_layer=2, n_head=4, n_embd=32, n_ctx=16, vocab_size=100, position="rope", norm="rmsnorm", mlp="swiglu",
    mlp_hidden=48, n_kv_head=2, bias=False, tied_head=False,
)  # fmt: skip


def _batch(B=3, T=16, V=100, ignored=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, V, (B, T), generator=g)
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[0, :ignored] = -1  # ignored positions: not scored, no gradient
    return idx, targets


def _loss_and_grads(model, idx, targets, loss_impl, chunk_rows=8192, autocast=False):
    model.zero_grad(set_to_none=True)
    model.set_loss_impl(loss_impl, chunk_rows)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits, loss = model(idx, targets)
    loss.backward()
    return logits, loss.detach().double(), {n: p.grad.detach().double().clone() for n, p in model.named_parameters()}


def _worst_grad(grads, ref):
    """max over tensors of max|g - ref| / max|ref| (the suite's grad_max)."""
    return max(float((grads[n] - ref[n]).abs().max() / ref[n].abs().max()) for n in ref if ref[n].abs().max() > 0)


def _model(config, dtype, seed=0):
    torch.manual_seed(seed)
    return GPT2(config, padded_vocab_size=128).to(dtype)


@pytest.mark.parametrize("config", [CFG, UNTIED_LLAMA], ids=["gpt2", "llama-untied"])
@pytest.mark.parametrize("chunk_rows", [1, 7, 48, 1000])
def test_float64_chunked_equals_the_plain_loss_and_gradients(config, chunk_rows):
    model = _model(config, torch.float64)
    idx, targets = _batch()
    _, loss_full, g_full = _loss_and_grads(model, idx, targets, "full")
    logits, loss_chunked, g_chunked = _loss_and_grads(model, idx, targets, "chunked", chunk_rows)
    assert logits is None  # the chunked path never returns (or holds) all the logits
    assert float(abs(loss_chunked - loss_full)) <= 1e-12 * float(loss_full)
    assert g_chunked.keys() == g_full.keys()
    assert _worst_grad(g_chunked, g_full) <= 1e-12
    head = "wte.weight" if config.tied_head else "lm_head.weight"
    assert torch.count_nonzero(g_chunked[head][config.vocab_size :]) == 0  # pad rows: exactly no gradient


@pytest.mark.parametrize(("dtype", "autocast", "ceilings"), [(torch.float32, False, FP32), (torch.float32, True, BF16)],
                         ids=["float32", "bf16-autocast"])  # fmt: skip
@pytest.mark.parametrize("chunked", CHUNKED_IMPLS)
def test_float32_and_bf16_chunked_within_the_suite_ceilings(dtype, autocast, ceilings, chunked):
    ref_model = _model(CFG, torch.float64)
    idx, targets = _batch(B=4)
    _, loss_ref, g_ref = _loss_and_grads(ref_model, idx, targets, "full")
    model = _model(CFG, dtype)
    for impl in ("full", chunked):  # the plain path passes too: the comparison is fair
        _, loss, grads = _loss_and_grads(model, idx, targets, impl, chunk_rows=24, autocast=autocast)
        assert float(abs(loss - loss_ref) / abs(loss_ref)) <= ceilings["loss"], impl
        assert _worst_grad(grads, g_ref) <= ceilings["grad_max"], impl


def test_every_target_ignored_in_a_chunk_and_a_mean_over_the_valid_rows():
    """Rows of one chunk all ignored: that chunk adds nothing; the mean is over the valid rows only."""
    model = _model(CFG, torch.float64)
    idx, targets = _batch(B=2, ignored=16)  # the whole first sequence ignored = the first chunk of 16 rows
    _, loss_full, g_full = _loss_and_grads(model, idx, targets, "full")
    _, loss_chunked, g_chunked = _loss_and_grads(model, idx, targets, "chunked", chunk_rows=16)
    assert float(abs(loss_chunked - loss_full)) <= 1e-12 * float(loss_full)
    assert _worst_grad(g_chunked, g_full) <= 1e-12


def test_the_function_alone_matches_cross_entropy_of_the_logits():
    g = torch.Generator().manual_seed(3)
    h = torch.randn(37, 8, dtype=torch.float64, generator=g, requires_grad=True)
    W = torch.randn(12, 8, dtype=torch.float64, generator=g, requires_grad=True)  # 12 rows, the last 2 padding
    targets = torch.randint(0, 10, (37,), generator=g)
    targets[::5] = -1
    ref = torch.nn.functional.cross_entropy((h @ W.t())[:, :10], targets, ignore_index=-1)
    dh_ref, dW_ref = torch.autograd.grad(ref, (h, W))
    loss = chunked_linear_cross_entropy(h, W, targets, vocab_size=10, chunk_rows=6)
    dh, dW = torch.autograd.grad(loss * 3.0, (h, W))  # the incoming gradient scales both
    assert float(abs(loss - ref).detach()) <= 1e-12 * float(ref.detach())
    assert torch.allclose(dh, 3.0 * dh_ref, rtol=1e-12, atol=1e-15)
    assert torch.allclose(dW, 3.0 * dW_ref, rtol=1e-12, atol=1e-15)
    assert torch.count_nonzero(dW[10:]) == 0


@needs_triton
def test_the_triton_rows_kernel_gives_the_torch_rows_loss_and_gradients():
    """rows_kernel "triton" against "torch" in float32 on the same model and batch, ignored rows included:
    the same float32 formulas, so the same loss and gradients to float32 rounding (1e-6 relative). Under
    bf16 autocast the gradients of the layers below differ by bf16 roundings that the backward carries
    and grows, so there each path is judged against float64 by the suite's BF16 ceilings instead (above)."""
    model = _model(CFG, torch.float32)
    idx, targets = _batch(B=4, ignored=9)
    _, loss_torch, g_torch = _loss_and_grads(model, idx, targets, "chunked", chunk_rows=24)
    _, loss_triton, g_triton = _loss_and_grads(model, idx, targets, "chunked-triton", chunk_rows=24)
    assert float(abs(loss_triton - loss_torch)) <= 1e-6 * float(loss_torch)
    assert _worst_grad(g_triton, g_torch) <= 1e-6
    assert torch.count_nonzero(g_triton["wte.weight"][CFG.vocab_size :]) == 0  # pad rows: no gradient


@needs_triton
def test_the_triton_rows_kernel_refuses_a_float64_model():
    model = _model(CFG, torch.float64)
    idx, targets = _batch()
    model.set_loss_impl("chunked-triton", 7)
    with pytest.raises(ValueError, match="not torch.float64; use --loss-impl chunked"):
        model(idx, targets)


def test_bad_settings_are_refused():
    model = _model(CFG, torch.float32)
    with pytest.raises(ValueError, match="loss_impl must be one of"):
        model.set_loss_impl("fused")
    with pytest.raises(ValueError, match="chunk_rows must be an int >= 1"):
        model.set_loss_impl("chunked", 0)
    with pytest.raises(ValueError, match="rows_kernel must be one of"):
        chunked_linear_cross_entropy(torch.zeros(2, 4), torch.zeros(3, 4), torch.zeros(2), 3, rows_kernel="cuda")
    with pytest.raises(ValueError, match="h is torch.float32 but W is torch.float64"):
        chunked_linear_cross_entropy(torch.zeros(2, 4), torch.zeros(3, 4, dtype=torch.float64), torch.zeros(2), 3)


@pytest.mark.parametrize(("loss_impl", "dtype", "rtol"), [
    ("chunked", torch.float64, 1e-12),
    pytest.param("chunked-triton", torch.float32, 1e-6, marks=needs_triton),  # the kernel computes in float32
])  # fmt: skip
def test_under_no_grad_the_loss_alone_is_the_same(loss_impl, dtype, rtol):
    """Evaluation (torch.no_grad): the chunked path computes the loss without the gradient matmuls; same value."""
    model = _model(CFG, dtype)
    idx, targets = _batch()
    model.set_loss_impl(loss_impl, 7)
    with torch.no_grad():
        _, loss_eval = model(idx, targets)
    _, loss_train = model(idx, targets)
    assert not loss_eval.requires_grad and loss_train.requires_grad
    assert float(abs(loss_eval - loss_train.detach())) <= rtol * float(loss_eval)
