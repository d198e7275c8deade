"""Generation: the KV cache changes nothing but speed; sampling draws from what it claims to."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torch_impl.model import GPT2, KVCache


def _prompt(cfg, B, T, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, cfg.vocab_size, size=(B, T)))


@pytest.mark.parametrize("attention", ["math", "sdpa"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cached_greedy_equals_uncached(cfg, params, attention, dtype):
    model = GPT2.from_params(params, cfg, dtype=dtype, attention=attention)
    prompt = _prompt(cfg, B=3, T=4)
    cached = model.generate(prompt, max_new_tokens=12, use_cache=True)
    uncached = model.generate(prompt, max_new_tokens=12, use_cache=False)
    assert cached.shape == (3, 16) and cached.dtype == torch.int64
    assert torch.equal(cached[:, :4], prompt)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("attention", ["math", "sdpa"])
def test_cached_sampling_equals_uncached_with_the_same_generator(cfg, params64, attention):
    # float64, so the two paths' logits agree to ~1e-15 and cannot move a draw across a bin edge.
    model = GPT2.from_params(params64, cfg, dtype=torch.float64, attention=attention)
    prompt = _prompt(cfg, B=2, T=3, seed=1)
    for temperature, top_k in [(1.0, None), (0.7, 5), (1.5, 1)]:
        runs = [
            model.generate(prompt, 10, temperature, top_k, torch.Generator().manual_seed(42), use_cache=c)
            for c in (True, False)
        ]
        assert torch.equal(runs[0], runs[1]), (temperature, top_k)


@pytest.mark.parametrize("use_cache", [True, False])
def test_past_n_ctx_the_window_slides(cfg, params64, use_cache):
    """Beyond n_ctx tokens each step sees the last n_ctx: checked against a hand-written window loop."""
    model = GPT2.from_params(params64, cfg, dtype=torch.float64)
    prompt = _prompt(cfg, B=2, T=cfg.n_ctx - 3, seed=2)
    out = model.generate(prompt, max_new_tokens=8, use_cache=use_cache)  # ends 5 tokens past n_ctx
    seq = prompt
    with torch.no_grad():
        for _ in range(8):
            logits, _ = model(seq[:, -cfg.n_ctx :])
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert out.shape == (2, cfg.n_ctx + 5)
    assert torch.equal(out, seq)


@pytest.mark.parametrize("attention", ["math", "sdpa"])
def test_chunked_forward_through_the_cache_equals_one_forward(cfg, params64, attention):
    """Feeding a sequence in chunks (5, 1, 7, 1, 10 tokens) through the cache gives the full forward's logits.

    Chunks longer than one token against a non-empty cache take the explicit-mask path of sdpa.
    """
    model = GPT2.from_params(params64, cfg, dtype=torch.float64, attention=attention)
    idx = _prompt(cfg, B=2, T=cfg.n_ctx, seed=3)
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache(cfg.n_layer, max_len=cfg.n_ctx)
        pieces, start = [], 0
        for n in (5, 1, 7, 1, 10):
            pieces.append(model.forward_step(idx[:, start : start + n], cache))
            start += n
        assert cache.length == cfg.n_ctx
        # float64, different matmul shapes: rounding only (~1e-16 relative); 1e-12 bounds it with margin.
        torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-12, atol=1e-12)
        with pytest.raises(ValueError, match=f"positions {cfg.n_ctx}..{cfg.n_ctx} exceed n_ctx={cfg.n_ctx}"):
            model.forward_step(idx[:, :1], cache)


def test_cache_under_bf16_autocast_holds_bf16_and_matches_the_one_shot_forward(cfg, params):
    """Under autocast the cache stores keys/values in the compute dtype (bf16), and the cached pass
    stays within bf16 rounding of the one-shot bf16 pass (8-bit mantissa: logits of O(0.5) within 0.05)."""
    model = GPT2.from_params(params, cfg)
    idx = _prompt(cfg, B=2, T=12, seed=9)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        full, _ = model(idx)
        cache = KVCache(cfg.n_layer, max_len=12)
        pieces = [model.forward_step(idx[:, :7], cache)] + [
            model.forward_step(idx[:, t : t + 1], cache) for t in range(7, 12)
        ]
    assert cache.k[0].dtype == torch.bfloat16 and cache.v[cfg.n_layer - 1].dtype == torch.bfloat16
    torch.testing.assert_close(torch.cat(pieces, dim=1).float(), full.float(), rtol=0, atol=0.05)


def test_top_k_1_is_greedy_and_top_k_limits_the_choice(cfg, params64):
    model = GPT2.from_params(params64, cfg, dtype=torch.float64)
    prompt = _prompt(cfg, B=4, T=2, seed=4)
    greedy = model.generate(prompt, 8)
    assert torch.equal(
        model.generate(prompt, 8, temperature=2.0, top_k=1, generator=torch.Generator().manual_seed(0)), greedy
    )
    out = model.generate(prompt, 8, temperature=5.0, top_k=3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, _ = model(out[:, :-1])
    for s in range(2, out.size(1)):  # each new token is among the 3 best at its step
        top3 = logits[:, s - 1].topk(3).indices
        assert (top3 == out[:, s : s + 1]).any(dim=1).all(), s
    assert not torch.equal(out, greedy)  # at temperature 5 the draws do leave the argmax


def test_samples_follow_softmax_of_logits_over_temperature(cfg, params64):
    """One step for 10,000 copies of a prompt: token frequencies match softmax(logits / T)."""
    model = GPT2.from_params(params64, cfg, dtype=torch.float64)
    # These synthetic logits span only ~0.5, so a low temperature is needed for a peaked distribution
    # in which a wrong temperature shows (at 0.05, using 0.06 or 0.045 instead fails the bound).
    n, temperature = 10_000, 0.05
    prompt = _prompt(cfg, B=1, T=3, seed=5).expand(n, 3)
    out = model.generate(prompt, 1, temperature=temperature, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        probs = torch.softmax(model(prompt[:1])[0][0, -1] / temperature, dim=-1).numpy()
    freq = np.bincount(out[:, -1].numpy(), minlength=cfg.vocab_size) / n
    # Each frequency is a binomial mean: standard error sqrt(p (1 - p) / n) <= 0.005; 5 sigma + 1e-3 slack.
    bound = 5 * np.sqrt(probs * (1 - probs) / n) + 1e-3
    assert np.all(np.abs(freq - probs) <= bound), np.abs(freq - probs).max()
    with torch.no_grad():
        untempered = torch.softmax(model(prompt[:1])[0][0, -1], dim=-1).numpy()
    assert not np.all(np.abs(freq - untempered) <= bound)  # ignoring the temperature would be caught


def test_padded_rows_are_never_sampled(cfg, params):
    """Pad rows set up to win every argmax if they were scored; they never appear."""
    model = GPT2.from_params(params, cfg, padded_vocab_size=128)
    with torch.no_grad():
        model.ln_f.bias.fill_(10.0)  # ln_f output ~ 10 everywhere ...
        model.wte.weight[cfg.vocab_size :] = 1.0  # ... so a pad row's logit would be ~ 10 * C = 320
    prompt = _prompt(cfg, B=8, T=3, seed=6)
    with torch.no_grad():
        x = model.forward_with_activations(prompt)["ln_f"]
        assert (torch.nn.functional.linear(x, model.wte.weight).argmax(-1) >= cfg.vocab_size).all()  # the trap is set
    for kwargs in [{}, {"temperature": 1.0}, {"temperature": 3.0, "top_k": 20}]:
        for use_cache in (True, False):
            out = model.generate(prompt, 15, generator=torch.Generator().manual_seed(0), use_cache=use_cache, **kwargs)
            assert int(out.max()) < cfg.vocab_size, kwargs
    logits, _ = model(prompt)
    assert logits.shape[-1] == cfg.vocab_size


def test_seeded_generator_is_reproducible(cfg, params):
    model = GPT2.from_params(params, cfg)
    prompt = _prompt(cfg, B=2, T=3, seed=7)
    a = model.generate(prompt, 10, temperature=1.0, generator=torch.Generator().manual_seed(5))
    b = model.generate(prompt, 10, temperature=1.0, generator=torch.Generator().manual_seed(5))
    c = model.generate(prompt, 10, temperature=1.0, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_zero_new_tokens_returns_the_prompt(cfg, params):
    model = GPT2.from_params(params, cfg)
    prompt = _prompt(cfg, B=2, T=5, seed=8)
    assert torch.equal(model.generate(prompt, 0), prompt)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_new_tokens": -1}, "max_new_tokens must be an int >= 0"),
        ({"max_new_tokens": 2.5}, "max_new_tokens must be an int >= 0"),
        ({"max_new_tokens": 3, "temperature": -0.1}, "temperature must be a finite number >= 0"),
        ({"max_new_tokens": 3, "temperature": float("nan")}, "temperature must be a finite number >= 0"),
        (
            {"max_new_tokens": 3, "temperature": 1.0, "top_k": 0},
            r"top_k must be None or an int in \[1, vocab_size=101\]",
        ),
        (
            {"max_new_tokens": 3, "temperature": 1.0, "top_k": 102},
            r"top_k must be None or an int in \[1, vocab_size=101\]",
        ),
    ],
)
def test_bad_generation_arguments(cfg, params, kwargs, message):
    model = GPT2.from_params(params, cfg)
    with pytest.raises(ValueError, match=message):
        model.generate(_prompt(cfg, B=1, T=2), **kwargs)


def test_bad_prompts(cfg, params):
    model = GPT2.from_params(params, cfg)
    with pytest.raises(ValueError, match=r"idx: token id 101 at \[0, 1\] is outside \[0, vocab_size=101\)"):
        model.generate(torch.tensor([[3, 101]]), 2)
    with pytest.raises(ValueError, match=f"idx: sequence length T=25 exceeds n_ctx={cfg.n_ctx}"):
        model.generate(torch.zeros(1, 25, dtype=torch.long), 2)
