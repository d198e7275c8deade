"""The variants against the NumPy reference's (reference/, written separately from this backend): each option
alone and all at once, float64 logits, loss, every gradient, every named activation, greedy tokens.

Tolerances as in test_vs_reference.py: float64 on both sides computes the same math in another order,
so the two differ by rounding only (measured on these configs, lively weights: logits <= 1.0e-15,
gradients <= 1.2e-15, activations <= 1.2e-14); 1e-10 (gradients 1e-9 relative + 1e-12) leaves five
orders of margin below the smallest real mistake.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.torch_impl.variants import VARIANTS, lively_params, variant
from torch_impl import contract
from torch_impl.model import GPT2

reference = pytest.importorskip("reference", reason="the NumPy reference (reference/) is not importable")


@pytest.mark.parametrize("attention", ["math", "sdpa"])
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_float64_logits_loss_grads_and_activations_match_the_reference(name, attention):
    config = variant(name)
    params = lively_params(config, seed=2)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, config.vocab_size, (2, config.n_ctx))
    targets = rng.integers(0, config.vocab_size, (2, config.n_ctx))
    targets[0, :2] = -1
    ref_logits, ref_loss, ref_grads = reference.forward_backward(params, config, idx, targets)
    model = GPT2.from_params(params, config, dtype=torch.float64, attention=attention)
    logits, loss, grads = contract.forward_backward(model, idx, targets)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-10, atol=1e-10)
    assert loss == pytest.approx(ref_loss, rel=1e-10)
    assert list(grads) == list(ref_grads)
    for n in grads:
        np.testing.assert_allclose(grads[n], ref_grads[n], rtol=1e-9, atol=1e-12, err_msg=n)
    ref_acts = reference.activations(params, config, idx)
    acts = contract.activations(model, idx)
    assert list(acts) == list(ref_acts)
    for n in acts:
        np.testing.assert_allclose(acts[n], ref_acts[n], rtol=1e-10, atol=1e-10, err_msg=n)


@pytest.mark.parametrize("name", ["all", "rope", "mqa"])
def test_greedy_tokens_match_the_reference(name):
    config = variant(name)
    params = lively_params(config, seed=3)
    prompt = np.random.default_rng(3).integers(0, config.vocab_size, (2, 5))
    ref = reference.generate(params, config, prompt, max_new_tokens=config.n_ctx)  # runs past n_ctx
    ours = GPT2.from_params(params, config, dtype=torch.float64).generate(torch.from_numpy(prompt), config.n_ctx)
    np.testing.assert_array_equal(ours.numpy(), ref)
