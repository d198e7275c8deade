"""Our GPT2 against the NumPy reference (the project's ground truth): same logits, loss, gradients,
activations, greedy tokens and bad-input errors.

Tolerances (same reasoning as test_vs_transformers.py):
  float64: two orders of summation of the same math differ by rounding only (~1e-15 relative);
    1e-10 leaves five orders of margin below the smallest real mistake (~1e-6).
  float32: float32 rounding through 3 layers gives ~1e-6 on O(1) logits; 2e-5 bounds it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torch_impl import contract
from torch_impl.model import GPT2

reference = pytest.importorskip("reference", reason="the NumPy reference (reference/) is not importable")
if not hasattr(reference, "forward_backward"):
    pytest.skip("reference/__init__.py does not export forward_backward yet", allow_module_level=True)


@pytest.mark.parametrize("attention", ["math", "sdpa"])
def test_float64_logits_loss_grads_match_the_reference(cfg, params64, ids, attention):
    idx, targets = ids(B=2, T=cfg.n_ctx, seed=21)
    ref_logits, ref_loss, ref_grads = reference.forward_backward(params64, cfg, idx, targets)
    model = GPT2.from_params(params64, cfg, dtype=torch.float64, attention=attention)
    logits, loss, grads = contract.forward_backward(model, idx, targets)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-10, atol=1e-10)
    assert loss == pytest.approx(ref_loss, rel=1e-10)
    assert list(grads) == list(ref_grads)
    for name in grads:
        np.testing.assert_allclose(grads[name], ref_grads[name], rtol=1e-9, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("attention", ["math", "sdpa"])
def test_float32_logits_and_loss_match_the_reference(cfg, params, ids, attention):
    idx, targets = ids(B=3, T=15, seed=22)
    ref_logits, ref_loss = reference.forward(params, cfg, idx, targets)
    logits, loss = contract.forward(GPT2.from_params(params, cfg, attention=attention), idx, targets)
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=2e-5)
    assert loss == pytest.approx(ref_loss, abs=2e-5)


def test_activations_match_the_reference(cfg, params64, ids):
    idx, _ = ids(B=2, T=10, seed=23)
    ref = reference.activations(params64, cfg, idx)
    acts = contract.activations(GPT2.from_params(params64, cfg, dtype=torch.float64), idx)
    assert list(acts) == list(ref)
    for name in acts:
        np.testing.assert_allclose(acts[name], ref[name], rtol=1e-10, atol=1e-10, err_msg=name)


@pytest.mark.parametrize("prompt_len", [4, 20])  # 20 + 10 runs 6 tokens past n_ctx = 24: the window slides
def test_greedy_tokens_match_the_reference(cfg, params64, ids, prompt_len):
    idx, _ = ids(B=2, T=prompt_len, seed=24)
    ref = reference.generate(params64, cfg, idx, 10, temperature=0.0)
    ours = GPT2.from_params(params64, cfg, dtype=torch.float64).generate(torch.from_numpy(idx), 10)
    np.testing.assert_array_equal(ours.numpy(), ref)


BAD_IDX = [
    np.array([[1, 2, 101]]),
    np.array([[1, -1, 2]]),
    np.zeros((1, 25), dtype=np.int64),
    np.zeros((1, 0), dtype=np.int64),
    np.zeros((4,), dtype=np.int64),
    np.zeros((1, 3), dtype=np.float32),
]
BAD_TARGETS = [
    np.array([[1, 2, 101]]),
    np.array([[1, -2, 3]]),
    np.array([[1, 2]]),
    np.array([[-1, -1, -1]]),
    np.array([[1.0, 2.0, 3.0]]),
]


def _message(fn, *args):
    with pytest.raises(ValueError) as info:
        fn(*args)
    return str(info.value)


@pytest.mark.parametrize("case", range(len(BAD_IDX)))
def test_bad_idx_raises_the_reference_error(cfg, params, case):
    model = GPT2.from_params(params, cfg)
    idx = BAD_IDX[case]
    assert _message(contract.forward, model, idx) == _message(reference.forward, params, cfg, idx)


@pytest.mark.parametrize("case", range(len(BAD_TARGETS)))
def test_bad_targets_raise_the_reference_error(cfg, params, case):
    model = GPT2.from_params(params, cfg)
    idx, targets = np.array([[1, 2, 3]]), BAD_TARGETS[case]
    ours = _message(contract.forward_backward, model, idx, targets)
    assert ours == _message(reference.forward_backward, params, cfg, idx, targets)
