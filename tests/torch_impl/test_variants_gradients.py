"""Gradients of the variants, float64, against finite differences: the whole model on a tiny llama-style
config (central differences on the canonical params, as test_gradients.py does for GPT-2), and each new
building block alone through torch.autograd.gradcheck.

Perturbing params[name][i, j] of the canonical (in, out) dict and rebuilding the model is independent
of how the model stores its weights, so a gradient handed back in the wrong layout (a missed
transpose, the gate and up halves of c_fc swapped, q/k/v columns mixed up) fails here.

Tolerance: as in test_gradients.py. Central differences with h = 1e-6 have truncation error
~h^2 |f'''| ~ 1e-12 and rounding error ~1e-16 / h ~ 1e-10 on an O(1) loss; atol 1e-8 plus rtol 1e-6
sits two orders above both, while a wrong gradient is off by its whole size (1e-4 .. 1e-1 here).
gradcheck runs with its float64 defaults (eps 1e-6, atol 1e-5, rtol 1e-3), which catch any wrong term.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tests.torch_impl.variants import BASE, LLAMA, lively_params
from torch_impl import contract
from torch_impl.model import GPT2, MLP, RMSNorm, apply_rope, attention_math, attention_sdpa, rope_tables

H = 1e-6

# The tiny llama-style model (rope, rmsnorm, swiglu, no biases) with grouped-query attention and an
# untied head; and one with biases, multi-query attention and the tied head, for the bias gradients.
CONFIGS = {
    "llama-gqa-untied": dataclasses.replace(BASE, **LLAMA, n_kv_head=2, tied_head=False),
    "llama-mqa-bias-tied": dataclasses.replace(BASE, **{**LLAMA, "bias": True}, n_kv_head=1),
}


def _loss(params, config, idx, targets):
    return contract.forward(GPT2.from_params(params, config, dtype=torch.float64, attention="math"), idx, targets)[1]


@pytest.mark.parametrize("attention", ["math", "sdpa"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_gradients_match_finite_differences(name, attention):
    config = CONFIGS[name]
    params = lively_params(config, seed=3)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, config.vocab_size, size=(2, 9))
    targets = rng.integers(0, config.vocab_size, size=(2, 9))
    targets[1, 4] = -1
    model = GPT2.from_params(params, config, dtype=torch.float64, attention=attention)
    _, loss, grads = contract.forward_backward(model, idx, targets)
    assert list(grads) == list(params)
    assert loss == pytest.approx(_loss(params, config, idx, targets), abs=1e-14)

    checks = {}
    for n, value in params.items():
        entries = [tuple(int(rng.integers(0, s)) for s in value.shape) for _ in range(2)]
        if n.endswith("attn.c_attn.weight"):  # one column in each of q, k and v
            q, kv = config.n_head * config.head_size, config.kv_heads * config.head_size
            entries = [(int(rng.integers(0, config.n_embd)), c) for c in (q - 1, q + 3, q + kv + 5)]
        if n.endswith("mlp.c_fc.weight"):  # one column of the gate, one of the up projection
            entries = [(int(rng.integers(0, config.n_embd)), c) for c in (7, config.hidden + 7)]
        checks[n] = entries
    absent = next(v for v in range(config.vocab_size) if v not in idx)
    checks["wte.weight"] = [(int(idx[0, 0]), 3), (absent, 5)]  # a looked-up row, and one only the tied head reads
    for n, entries in checks.items():
        for index in entries:
            plus, minus = dict(params), dict(params)
            plus[n], minus[n] = params[n].copy(), params[n].copy()
            plus[n][index] += H
            minus[n][index] -= H
            numeric = (_loss(plus, config, idx, targets) - _loss(minus, config, idx, targets)) / (2 * H)
            assert grads[n][index] == pytest.approx(numeric, rel=1e-6, abs=1e-8), (n, index)
    # an untied head: the absent token's wte row gets nothing; tied: the head's term reaches it
    assert (abs(grads["wte.weight"][absent]).max() > 0) == config.tied_head


def _f64(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(True)


def test_rmsnorm_gradcheck():
    norm = RMSNorm(6, eps=1e-5).double()
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(6, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda x, w: torch.func.functional_call(norm, {"weight": w}, (x,)),
                                    (_f64(3, 4, 6), norm.weight.detach().clone().requires_grad_(True)))  # fmt: skip


def test_rope_gradcheck_at_a_start_position():
    config = dataclasses.replace(BASE, position="rope")
    cos, sin = rope_tables(config, 5, 4, "cpu", torch.float64)  # positions 5 .. 8
    assert torch.autograd.gradcheck(lambda x: apply_rope(x, cos, sin), (_f64(2, 3, 4, config.head_size),))


def test_swiglu_mlp_gradcheck():
    config = dataclasses.replace(BASE, n_embd=8, n_head=2, mlp="swiglu", mlp_hidden=6)
    mlp = MLP(config, 0).double()
    names = [n for n, _ in mlp.named_parameters()]
    values = [p.detach().clone().requires_grad_(True) for p in mlp.parameters()]
    assert torch.autograd.gradcheck(
        lambda x, *ps: torch.func.functional_call(mlp, dict(zip(names, ps, strict=True)), (x,)),
        (_f64(2, 3, 8), *values),
    )


@pytest.mark.parametrize("attention", [attention_math, attention_sdpa])
@pytest.mark.parametrize("Tq, Tk", [(5, 5), (1, 6), (3, 6)])  # one-shot, one cached step, a cached chunk
def test_grouped_query_attention_gradcheck(attention, Tq, Tk):
    q, k, v = _f64(2, 4, Tq, 3, seed=1), _f64(2, 2, Tk, 3, seed=2), _f64(2, 2, Tk, 3, seed=3)
    assert torch.autograd.gradcheck(attention, (q, k, v))
