"""Gradients of the contract, checked by central finite differences in float64 on the canonical params.

Perturbing params[name][i, j] of the canonical (in, out) dict and re-running the model is
independent of how the model stores its weights, so a gradient handed back in the wrong layout
(a missed transpose) or without one of wte's two terms fails here.

Tolerance: central differences with step h = 1e-6 have truncation error ~h^2 * |f'''| ~ 1e-12 and
rounding error ~1e-16 / h ~ 1e-10 on an O(1) loss; atol 1e-8 plus rtol 1e-6 sits two orders above
both, while a wrong gradient is off by its whole size (1e-4 .. 1e-1 here).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torch_impl import contract
from torch_impl.model import GPT2
from weights import GPT2Config, synthetic

TINY = GPT2Config.tiny()  # 2 layers, 2 heads, C = 16, V = 64, n_ctx = 16
H = 1e-6


def _loss(params, idx, targets, attention):
    model = GPT2.from_params(params, TINY, dtype=torch.float64, attention=attention)
    return contract.forward(model, idx, targets)[1]


def _entries(name, shape, rng, k=2):
    """k entries of a tensor; for the square attn.c_proj, off-diagonal ones (where a transpose shows)."""
    out = []
    while len(out) < k:
        index = tuple(int(rng.integers(0, n)) for n in shape)
        if name.endswith("attn.c_proj.weight") and index[0] == index[1]:
            continue
        out.append(index)
    return out


@pytest.mark.parametrize("attention", ["math", "sdpa"])
def test_gradients_match_finite_differences(attention):
    params = synthetic(TINY, seed=3, dtype=np.float64)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, TINY.vocab_size, size=(2, 9))
    targets = rng.integers(0, TINY.vocab_size, size=(2, 9))
    targets[1, 4] = -1
    model = GPT2.from_params(params, TINY, dtype=torch.float64, attention=attention)
    _, loss, grads = contract.forward_backward(model, idx, targets)
    assert loss == pytest.approx(_loss(params, idx, targets, attention), abs=1e-14)

    checks = {
        name: _entries(name, value.shape, rng)
        for name, value in params.items()
        if name.startswith(("h.1", "wpe", "ln_f"))
    }
    checks.update({name: _entries(name, params[name].shape, rng, k=1) for name in params if name.startswith("h.0")})
    # wte: a row of a token that appears in idx (embedding + head terms) and one that does not (head only).
    present = int(idx[0, 0])
    absent = next(v for v in range(TINY.vocab_size) if v not in idx)
    checks["wte.weight"] = [(present, 3), (absent, 5)]
    for name, entries in checks.items():
        for index in entries:
            plus, minus = dict(params), dict(params)
            plus[name], minus[name] = params[name].copy(), params[name].copy()
            plus[name][index] += H
            minus[name][index] -= H
            numeric = (_loss(plus, idx, targets, attention) - _loss(minus, idx, targets, attention)) / (2 * H)
            assert grads[name][index] == pytest.approx(numeric, rel=1e-6, abs=1e-8), (name, index)
    assert abs(grads["wte.weight"][absent]).max() > 0  # the head term alone reaches every row


def test_wte_gradient_is_head_plus_embedding_terms():
    """Split the tied parameter in two by hand: the gradient we return is the sum of both parts."""
    params = synthetic(TINY, seed=4, dtype=np.float64)
    rng = np.random.default_rng(1)
    idx = torch.from_numpy(rng.integers(0, TINY.vocab_size, size=(2, 7)))
    targets = torch.from_numpy(rng.integers(0, TINY.vocab_size, size=(2, 7)))
    model = GPT2.from_params(params, TINY, dtype=torch.float64)
    _, _, grads = contract.forward_backward(model, idx.numpy(), targets.numpy())

    # Re-run with the embedding lookup reading a separate copy of wte: the head and the lookup then
    # get separate gradients, which autograd sums on the one tied parameter.
    emb_copy = model.wte.weight.detach().clone().requires_grad_(True)
    original = model.wte.forward
    model.wte.forward = lambda ids: torch.nn.functional.embedding(ids, emb_copy)
    try:
        _, loss = model(idx, targets)
        head_term, emb_term = torch.autograd.grad(loss, [model.wte.weight, emb_copy])
    finally:
        model.wte.forward = original
    assert torch.count_nonzero(emb_term) > 0 and torch.count_nonzero(head_term) > 0
    np.testing.assert_allclose(grads["wte.weight"], (head_term + emb_term).numpy(), rtol=1e-12, atol=1e-15)
    assert not np.allclose(grads["wte.weight"], head_term.numpy(), atol=1e-6)  # both terms matter


def test_pad_rows_get_exactly_zero_gradient(cfg, params, ids):
    model = GPT2.from_params(params, cfg, padded_vocab_size=128)
    idx, targets = ids(seed=6)
    _, loss = model(torch.from_numpy(idx), torch.from_numpy(targets))
    loss.backward()
    grad = model.wte.weight.grad
    assert torch.count_nonzero(grad[: cfg.vocab_size]) > 0
    assert torch.count_nonzero(grad[cfg.vocab_size :]) == 0
    # and the contract's grads drop those rows, matching the unpadded model's gradients
    _, _, g_padded = contract.forward_backward(model, idx, targets)
    _, _, g_plain = contract.forward_backward(GPT2.from_params(params, cfg), idx, targets)
    assert g_padded["wte.weight"].shape == (cfg.vocab_size, cfg.n_embd)
    for name in g_plain:  # float32 rounding of the same math (~1e-7 relative); see test_weights_in_out
        np.testing.assert_allclose(g_padded[name], g_plain[name], rtol=1e-5, atol=1e-7, err_msg=name)


def test_forward_backward_leaves_dot_grad_alone(cfg, params, ids):
    model = GPT2.from_params(params, cfg)
    sentinel = torch.full_like(model.ln_f.bias, 7.0)
    model.ln_f.bias.grad = sentinel.clone()
    idx, targets = ids(seed=7)
    contract.forward_backward(model, idx, targets)
    assert torch.equal(model.ln_f.bias.grad, sentinel)
    assert model.wte.weight.grad is None
