"""Property test: at shapes on the edges, our float64 GPT2 equals the NumPy reference.

Tolerances as in test_vs_reference.py (float64: rounding only, ~1e-15; bound 1e-10).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torch_impl import contract
from torch_impl.model import GPT2
from weights import GPT2Config, synthetic

reference = pytest.importorskip("reference", reason="the NumPy reference (reference/) is not importable")
if not hasattr(reference, "forward_backward"):
    pytest.skip("reference/__init__.py does not export forward_backward yet", allow_module_level=True)


hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@hypothesis.settings(max_examples=12, deadline=None, derandomize=True)
@hypothesis.given(
    n_layer=st.integers(1, 2),
    n_head=st.sampled_from([1, 2, 4]),
    head_size=st.sampled_from([1, 4, 8]),
    vocab_size=st.integers(2, 40),
    n_ctx=st.integers(1, 12),
    B=st.integers(1, 3),
    data=st.data(),
)
def test_any_shape_matches_the_reference(n_layer, n_head, head_size, vocab_size, n_ctx, B, data):
    """Shapes at the edges (one head, head size 1, T = 1, T = n_ctx, tiny vocabularies), both attentions,
    float64: logits and gradients equal the reference's (tolerances as above)."""
    config = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_head * head_size, vocab_size=vocab_size, n_ctx=n_ctx)
    T = data.draw(st.integers(1, n_ctx), label="T")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    params = synthetic(config, seed=seed, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, vocab_size, size=(B, T))
    targets = rng.integers(0, vocab_size, size=(B, T))
    ref_logits, ref_loss, ref_grads = reference.forward_backward(params, config, idx, targets)
    for attention in ("math", "sdpa"):
        model = GPT2.from_params(params, config, dtype=torch.float64, attention=attention)
        logits, loss, grads = contract.forward_backward(model, idx, targets)
        np.testing.assert_allclose(logits, ref_logits, rtol=1e-10, atol=1e-10)
        assert loss == pytest.approx(ref_loss, rel=1e-10)
        for name in grads:
            np.testing.assert_allclose(grads[name], ref_grads[name], rtol=1e-9, atol=1e-12, err_msg=name)
