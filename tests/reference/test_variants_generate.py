"""Generation with a KV cache under every variant: the cache changes nothing but the cost.

With rope the cache holds keys already rotated at their absolute positions and new tokens are
rotated at start + t; with grouped-query attention it holds NKV heads. Both are checked against
full recomputation at every start position: whole prompts of several lengths, and a prompt fed
in chunks of different sizes.

Tolerances as test_generate.py: cached and full logits come from matmuls of different shapes, so
they differ by rounding only: float64 ~1e-16 per op, a few hundred ops deep: 1e-12.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from reference import forward, generate
from reference.attention import split_heads
from reference.generate import cache_length, forward_with_cache, new_kv_cache
from reference.model import gpt2_forward
from weights import GPT2Config, synthetic

BASE = GPT2Config(n_layer=2, n_head=4, n_embd=16, vocab_size=64, n_ctx=12)
VARIANTS = {
    "gpt2": {},
    "rope": dict(position="rope"),
    "rope-theta": dict(position="rope", rope_theta=50.0),
    "rmsnorm": dict(norm="rmsnorm"),
    "swiglu": dict(mlp="swiglu", mlp_hidden=24),
    "gqa": dict(n_kv_head=2),
    "mqa": dict(n_kv_head=1),
    "nobias": dict(bias=False),
    "untied": dict(tied_head=False),
    "all": dict(position="rope", norm="rmsnorm", mlp="swiglu", mlp_hidden=24, n_kv_head=2, bias=False,
                tied_head=False),
}  # fmt: skip
ATOL = 1e-12


def variant(name):
    return dataclasses.replace(BASE, **VARIANTS[name])


def tokens(B, T, seed=0):
    return np.random.default_rng(seed).integers(0, BASE.vocab_size, (B, T))


@pytest.mark.parametrize("prompt_len", [1, 3, 7])
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_cached_and_uncached_generation_agree(name, prompt_len):
    """Sampled (so that a wrong logit would show as a different token too), past n_ctx for the longer
    prompts: 7 + 8 = 15 > 12, where the window slides and the cache is rebuilt."""
    cfg = variant(name)
    params = synthetic(cfg, seed=1, dtype=np.float64)
    prompt = tokens(2, prompt_len, seed=prompt_len)
    kw = dict(temperature=0.9, top_k=8, seed=3, return_logits=True)
    tok_c, log_c = generate(params, cfg, prompt, 8, use_cache=True, **kw)
    tok_u, log_u = generate(params, cfg, prompt, 8, use_cache=False, **kw)
    np.testing.assert_array_equal(tok_c, tok_u)
    np.testing.assert_allclose(log_c, log_u, rtol=0, atol=ATOL)
    # and each step's logits are the last position of a full forward on the window
    for s in range(8):
        window = tok_c[:, : prompt_len + s][:, -cfg.n_ctx :]
        np.testing.assert_allclose(log_c[:, s], forward(params, cfg, window)[0][:, -1], rtol=0, atol=ATOL)


@pytest.mark.parametrize("chunks", [(4, 1, 5, 2), (1,) * 12, (12,), (2, 7, 3)])
@pytest.mark.parametrize("name", ["gpt2", "rope", "gqa", "all"])
def test_prompt_fed_in_chunks_gives_the_full_forward_at_every_position(name, chunks):
    """forward_with_cache on chunk after chunk: every position's logits, whatever start its chunk has,
    equal those of one forward over the whole sequence; up to n_ctx = 12 positions."""
    cfg = variant(name)
    params = synthetic(cfg, seed=2, dtype=np.float64)
    idx = tokens(2, sum(chunks), seed=5)
    full = forward(params, cfg, idx)[0]  # (B, T, V)
    cache = new_kv_cache(cfg)
    start = 0
    for n in chunks:
        assert cache_length(cache) == start
        got = forward_with_cache(params, cfg, idx[:, start : start + n], cache, last_only=False)  # (B, n, V)
        np.testing.assert_allclose(got, full[:, start : start + n], rtol=0, atol=ATOL, err_msg=f"chunk at {start}")
        start += n
    with pytest.raises(ValueError, match="exceed n_ctx"):
        forward_with_cache(params, cfg, idx[:, :1], cache)


@pytest.mark.parametrize("name", ["rope", "gqa", "all"])
def test_the_cache_holds_rotated_keys_of_the_kv_heads(name):
    """The cached k and v are the key/value heads of the full forward's attention input (its "rope"
    activation with rope: keys already rotated at their absolute positions), NKV of them."""
    cfg = variant(name)
    params = synthetic(cfg, seed=3, dtype=np.float64)
    idx = tokens(2, 9, seed=6)
    _, _, acts = gpt2_forward(params, cfg, idx)
    cache = new_kv_cache(cfg)
    forward_with_cache(params, cfg, idx[:, :4], cache)
    forward_with_cache(params, cfg, idx[:, 4:], cache)  # the second chunk starts at position 4
    for i in range(cfg.n_layer):
        att_in = acts[f"h.{i}.rope"] if cfg.position == "rope" else acts[f"h.{i}.qkv"]
        _, k, v = split_heads(att_in, cfg.n_head, cfg.kv_heads)
        assert cache[i][0].shape == (2, cfg.kv_heads, 9, cfg.head_size)
        np.testing.assert_allclose(cache[i][0], k, rtol=0, atol=ATOL)
        np.testing.assert_allclose(cache[i][1], v, rtol=0, atol=ATOL)
        if cfg.position == "rope":  # not the unrotated keys
            _, k_plain, _ = split_heads(acts[f"h.{i}.qkv"], cfg.n_head, cfg.kv_heads)
            assert np.abs(cache[i][0][:, :, 1:] - k_plain[:, :, 1:]).max() > 1e-3


@pytest.mark.parametrize("name", ["rope", "all"])
def test_float32_cached_generation_follows_float64(name):
    cfg = variant(name)
    p32 = synthetic(cfg, seed=4, dtype=np.float32)
    tok_c, log_c = generate(p32, cfg, tokens(2, 3), 10, return_logits=True)
    tok_u, log_u = generate(p32, cfg, tokens(2, 3), 10, use_cache=False, return_logits=True)
    assert log_c.dtype == np.float32
    np.testing.assert_array_equal(tok_c, tok_u)
    np.testing.assert_allclose(log_c, log_u, rtol=0, atol=1e-5)  # test_generate.py's float32 bound
