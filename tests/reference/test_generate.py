"""Generation: the KV cache changes nothing but the cost; sampling is what it says."""

from __future__ import annotations

import numpy as np
import pytest

from reference import forward, generate
from weights import GPT2Config, synthetic

CFG = GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=64, n_ctx=12)
# Cached and uncached logits come from matmuls of different shapes (one row vs the whole
# window), so they differ by rounding only: float64 ~1e-16 per op, a few hundred ops deep.
LOGIT_ATOL = {np.float64: 1e-12, np.float32: 1e-5}


def prompt(B=2, T=4, seed=0):
    return np.random.default_rng(seed).integers(0, CFG.vocab_size, (B, T))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    "sampling",
    [{"temperature": 0.0}, {"temperature": 1.0}, {"temperature": 0.7, "top_k": 5}, {"temperature": 1.3, "top_k": 1}],
)
def test_cached_and_uncached_give_same_tokens_and_logits(dtype, sampling):
    params = synthetic(CFG, seed=1, dtype=dtype)
    # 4 prompt + 14 new = 18 > n_ctx = 12: the window slides for the last steps
    tok_c, log_c = generate(params, CFG, prompt(), 14, seed=3, use_cache=True, return_logits=True, **sampling)
    tok_u, log_u = generate(params, CFG, prompt(), 14, seed=3, use_cache=False, return_logits=True, **sampling)
    np.testing.assert_array_equal(tok_c, tok_u)
    assert log_c.shape == (2, 14, CFG.vocab_size) and log_c.dtype == dtype
    np.testing.assert_allclose(log_c, log_u, rtol=0, atol=LOGIT_ATOL[dtype])
    np.testing.assert_array_equal(tok_c[:, :4], prompt())


def test_greedy_is_argmax_of_the_full_forward():
    params = synthetic(CFG, seed=2, dtype=np.float64)
    tokens, logits = generate(params, CFG, prompt(), 5, return_logits=True)
    for s in range(5):
        full, _ = forward(params, CFG, tokens[:, : 4 + s])
        np.testing.assert_allclose(logits[:, s], full[:, -1], rtol=0, atol=1e-12)
        np.testing.assert_array_equal(tokens[:, 4 + s], full[:, -1].argmax(-1))


def test_top_k_one_is_greedy_and_top_k_limits_the_choices():
    params = synthetic(CFG, seed=2, dtype=np.float64)
    greedy = generate(params, CFG, prompt(), 6)
    np.testing.assert_array_equal(generate(params, CFG, prompt(), 6, temperature=2.0, top_k=1, seed=9), greedy)
    tokens, logits = generate(params, CFG, prompt(B=8), 6, temperature=5.0, top_k=3, seed=4, return_logits=True)
    top3 = np.argsort(logits, axis=-1)[..., -3:]
    chosen = tokens[:, 4:]
    assert np.all((top3 == chosen[..., None]).any(-1)), "a token outside the top 3 was sampled"


def test_sampling_follows_the_distribution_and_the_seed():
    """Temperature sampling of one step, many rows: empirical frequencies match softmax(logits / temp).
    8000 draws: each frequency's standard error is <= sqrt(0.25 / 8000) = 0.0056; 0.03 is > 5 of them."""
    params = synthetic(CFG, seed=2, dtype=np.float64)
    idx = np.tile(prompt(B=1), (8000, 1))
    tokens, logits = generate(params, CFG, idx, 1, temperature=0.2, seed=5, return_logits=True)
    z = logits[0, 0] / 0.2
    p = np.exp(z - z.max())
    p /= p.sum()
    freq = np.bincount(tokens[:, -1], minlength=CFG.vocab_size) / len(tokens)
    assert np.abs(freq - p).max() < 0.03
    again = generate(params, CFG, idx[:50], 3, temperature=1.0, seed=5)
    np.testing.assert_array_equal(again, generate(params, CFG, idx[:50], 3, temperature=1.0, seed=5))
    assert not np.array_equal(again, generate(params, CFG, idx[:50], 3, temperature=1.0, seed=6))


def test_zero_new_tokens_and_bad_arguments():
    params = synthetic(CFG, seed=2)
    tokens, logits = generate(params, CFG, prompt(), 0, return_logits=True)
    np.testing.assert_array_equal(tokens, prompt())
    assert logits.shape == (2, 0, CFG.vocab_size)
    for kwargs, message in [
        ({"temperature": -1.0}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": CFG.vocab_size + 1}, "top_k"),
    ]:
        with pytest.raises(ValueError, match=message):
            generate(params, CFG, prompt(), 2, **kwargs)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(params, CFG, prompt(), -1)
    with pytest.raises(ValueError, match="token id 64"):
        generate(params, CFG, np.array([[1, 64]]), 2)
