"""The variants in the PyTorch model (docs/variants.md): each option alone and all of them at once.

What is checked here, on the tiny configs of tests/torch_impl/variants.py:
  * the parameters are exactly the canonical tensors of weights.layout (names, order, shapes), and
    from_params -> to_params gives them back bit for bit (float32, float64, padded vocabulary);
  * every named activation is the formula of docs/variants.md, recomputed in NumPy from the
    activation before it (RMSNorm, RoPE, grouped-query attention, SwiGLU, the untied head);
  * the "math" and "sdpa" attentions agree; generation through the KV cache (rotated keys, new
    tokens rotated at start + t) equals full recomputation, logits and greedy tokens;
  * an untied, padded head: pad rows never scored, exactly zero gradient; wte's gradient is the
    embedding's alone.
Gradients against finite differences: test_variants_gradients.py; against transformers' Llama:
test_vs_hf_llama.py.

Tolerances. float64 throughout unless said otherwise. Two float64 computations of the same math in
a different order (NumPy vs torch, math vs sdpa attention, cached vs one-shot) differ by rounding,
~1e-16 relative per op, ~1e-15 after two layers on O(1) values: 1e-12 leaves three orders of margin,
while the mistakes these tests are for (a wrong rotation pair or sign, the gate and up halves
swapped, the wrong key/value head, a bias left in) change the values by 1e-3 or more.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.torch_impl.variants import PADDED_V, VARIANTS, lively_params, variant
from torch_impl import contract
from torch_impl.model import CONV1D_WEIGHTS, GPT2, KVCache
from weights import GPT2Config, activation_names, num_params, param_shapes, synthetic, tensor_kind

F64 = 1e-12  # see the module docstring
NAMES = sorted(VARIANTS)


def _ids(config, B, T, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, config.vocab_size, size=(B, T)), rng.integers(0, config.vocab_size, size=(B, T))


# ----------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("name", NAMES)
def test_parameters_are_the_canonical_tensors(name):
    config = variant(name)
    model = GPT2(config, padded_vocab_size=PADDED_V)
    shapes = param_shapes(config)
    assert [n for n, _ in model.named_parameters()] == list(shapes)
    for n, p in model.named_parameters():
        want = shapes[n][::-1] if tensor_kind(n) in CONV1D_WEIGHTS else shapes[n]  # nn.Linear is (out, in)
        if n == ("wte.weight" if config.tied_head else "lm_head.weight"):
            want = (PADDED_V, config.n_embd)  # the head's matrix carries the pad rows
        assert tuple(p.shape) == want, n
    assert hasattr(model, "wpe") == (config.position == "learned")
    assert hasattr(model, "lm_head") == (not config.tied_head)
    assert model.num_params() == num_params(config)
    assert not any(b.numel() for b in model.buffers())  # nothing outside the params dict


def test_parameter_counts_of_the_124m_shapes():
    with torch.device("meta"):  # shapes only
        llama = GPT2(GPT2Config.llama_style_124m(), padded_vocab_size=50304)
        untied = GPT2(GPT2Config(position="rope", tied_head=False), padded_vocab_size=50304)
    assert llama.num_params() == 121_191_936
    assert untied.num_params() == 124_439_808 - 1024 * 768 + 50257 * 768  # no wpe, a head of its own


@pytest.mark.parametrize("padded", [None, PADDED_V])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_round_trip_is_bit_exact(name, dtype, padded):
    config = variant(name)
    params = synthetic(config, seed=5)
    out = GPT2.from_params(params, config, dtype=dtype, padded_vocab_size=padded).to_params()
    assert list(out) == list(param_shapes(config))
    for n, value in out.items():
        assert value.shape == params[n].shape and value.flags.c_contiguous, n
        np.testing.assert_array_equal(value.astype(np.float32), params[n], err_msg=n)


def test_from_config_init_of_the_variants():
    """GPT-2's init for the new tensors too: RMSNorm weights 1, an untied head N(0, 0.02) with zero pad rows."""
    config = GPT2Config(n_layer=2, n_head=4, n_embd=64, vocab_size=2000, n_ctx=32, **VARIANTS["all"])
    torch.manual_seed(0)
    model = GPT2(config, padded_vocab_size=2048)
    p = dict(model.named_parameters())
    assert all(torch.all(v == 1) for n, v in p.items() if tensor_kind(n).startswith(("ln_1", "ln_2", "ln_f")))
    head = p["lm_head.weight"]
    # 128k normal draws: the sample std is within 0.5% (> 5 sigma) of 0.02
    assert abs(head[: config.vocab_size].std().item() - 0.02) < 0.005 * 0.02
    assert torch.count_nonzero(head[config.vocab_size :]) == 0
    assert p["wte.weight"].shape == (config.vocab_size, 64)  # the embedding needs no pad rows when untied


# ----------------------------------------------------------------------------- the math, op by op
def _np_rmsnorm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _np_layernorm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    out = (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * w
    return out if b is None else out + b


def _np_rope(x, t0, theta, HS):
    """x (B, T, heads * HS): each head's pairs (i, i + HS/2) turned by t * theta^(-2i/HS), written out per pair."""
    B, T, W = x.shape
    out = x.copy()
    for head in range(W // HS):
        for i in range(HS // 2):
            a, b = head * HS + i, head * HS + i + HS // 2
            angle = (t0 + np.arange(T)) * theta ** (-2 * i / HS)
            out[:, :, a] = x[:, :, a] * np.cos(angle) - x[:, :, b] * np.sin(angle)
            out[:, :, b] = x[:, :, b] * np.cos(angle) + x[:, :, a] * np.sin(angle)
    return out


def _np_attention(qkv, NH, NKV, HS):
    """Causal attention with query head h reading key/value head h // (NH / NKV), one head at a time."""
    B, T, _ = qkv.shape
    q, k, v = qkv[..., : NH * HS], qkv[..., NH * HS : (NH + NKV) * HS], qkv[..., (NH + NKV) * HS :]
    out = np.zeros((B, T, NH * HS))
    for h in range(NH):
        g = h // (NH // NKV)
        qh, kh, vh = q[..., h * HS : (h + 1) * HS], k[..., g * HS : (g + 1) * HS], v[..., g * HS : (g + 1) * HS]
        s = qh @ kh.transpose(0, 2, 1) / math.sqrt(HS)
        s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
        a = np.exp(s - s.max(-1, keepdims=True))
        out[..., h * HS : (h + 1) * HS] = (a / a.sum(-1, keepdims=True)) @ vh
    return out


@pytest.mark.parametrize("name", NAMES)
def test_every_named_activation_is_the_formula_of_the_spec(name):
    """Each named activation recomputed in NumPy from the one before it and the stored (in, out) weights."""
    config = variant(name)
    params = lively_params(config, seed=1)
    idx, _ = _ids(config, B=2, T=11, seed=2)
    acts = contract.activations(GPT2.from_params(params, config, dtype=torch.float64), idx)
    assert list(acts) == activation_names(config)
    C, H, HS, NH, NKV, eps = config.n_embd, config.hidden, config.head_size, config.n_head, config.kv_heads, 1e-5
    widths = {"qkv": config.qkv_width, "rope": config.qkv_width, "fc": config.fc_width, "gelu": H, "swiglu": H}
    for n, value in acts.items():
        assert value.shape == (2, 11, config.vocab_size if n == "logits" else widths.get(n.rsplit(".", 1)[-1], C)), n

    def norm(x, prefix):
        if config.norm == "rmsnorm":
            return _np_rmsnorm(x, params[prefix + ".weight"], eps)
        return _np_layernorm(x, params[prefix + ".weight"], params.get(prefix + ".bias"), eps)

    def linear(x, prefix):
        return x @ params[prefix + ".weight"] + params.get(prefix + ".bias", 0.0)

    expected = {"embed": params["wte.weight"][idx] + (params["wpe.weight"][:11] if "wpe.weight" in params else 0)}
    x = acts["embed"]
    for i in range(config.n_layer):
        p = f"h.{i}."
        expected[p + "ln_1"] = norm(x, p + "ln_1")
        expected[p + "qkv"] = linear(acts[p + "ln_1"], p + "attn.c_attn")
        qkv = acts[p + "qkv"]
        if config.position == "rope":
            qk = (NH + NKV) * HS  # q and k rotated, v left as it is
            expected[p + "rope"] = np.concatenate(
                [_np_rope(qkv[..., :qk], 0, config.rope_theta, HS), qkv[..., qk:]], axis=-1
            )
            qkv = acts[p + "rope"]
        expected[p + "attn"] = _np_attention(qkv, NH, NKV, HS)
        expected[p + "attn_proj"] = linear(acts[p + "attn"], p + "attn.c_proj")
        expected[p + "resid_1"] = x + acts[p + "attn_proj"]
        expected[p + "ln_2"] = norm(acts[p + "resid_1"], p + "ln_2")
        expected[p + "fc"] = linear(acts[p + "ln_2"], p + "mlp.c_fc")
        fc = acts[p + "fc"]
        if config.mlp == "swiglu":
            a, u = fc[..., :H], fc[..., H:]  # the gate's H columns first, then the up projection's
            expected[p + "swiglu"] = a / (1 + np.exp(-a)) * u
            hidden = acts[p + "swiglu"]
        else:
            expected[p + "gelu"] = 0.5 * fc * (1 + np.tanh(np.sqrt(2 / np.pi) * (fc + 0.044715 * fc**3)))
            hidden = acts[p + "gelu"]
        expected[p + "mlp_proj"] = linear(hidden, p + "mlp.c_proj")
        expected[p + "resid_2"] = acts[p + "resid_1"] + acts[p + "mlp_proj"]
        x = acts[p + "resid_2"]
    expected["ln_f"] = norm(x, "ln_f")
    expected["logits"] = acts["ln_f"] @ params["wte.weight" if config.tied_head else "lm_head.weight"].T
    assert sorted(expected) == sorted(acts)
    for n in acts:
        np.testing.assert_allclose(acts[n], expected[n], rtol=0, atol=F64, err_msg=n)


# ----------------------------------------------------------------------------- attention and the cache
@pytest.mark.parametrize("name", NAMES)
def test_math_and_sdpa_attention_agree(name):
    config = variant(name)
    params = lively_params(config, seed=3)
    idx, targets = _ids(config, B=2, T=config.n_ctx, seed=3)
    runs = [
        contract.forward_backward(GPT2.from_params(params, config, dtype=torch.float64, attention=a), idx, targets)
        for a in ("math", "sdpa")
    ]
    (l1, loss1, g1), (l2, loss2, g2) = runs
    np.testing.assert_allclose(l2, l1, rtol=0, atol=F64)
    assert loss2 == pytest.approx(loss1, abs=F64)
    for n in g1:
        np.testing.assert_allclose(g2[n], g1[n], rtol=0, atol=F64, err_msg=n)


CACHE_VARIANTS = ["rope", "gqa", "mqa", "all"]


@pytest.mark.parametrize("attention", ["math", "sdpa"])
@pytest.mark.parametrize("name", CACHE_VARIANTS)
def test_chunks_through_the_cache_equal_one_forward(name, attention):
    """A sequence fed through the KV cache in chunks starting at positions 0, 1, 4, 11, 12 and 19 gives
    the one-shot logits: keys cached rotated, new tokens rotated at start + t, NKV heads cached."""
    config = variant(name)
    model = GPT2.from_params(lively_params(config, seed=4), config, dtype=torch.float64, attention=attention)
    idx = torch.from_numpy(_ids(config, B=2, T=config.n_ctx, seed=4)[0])
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache(config.n_layer, max_len=config.n_ctx)
        pieces, start = [], 0
        for n in (1, 3, 7, 1, 7, 5):
            pieces.append(model.forward_step(idx[:, start : start + n], cache))
            start += n
    assert cache.length == config.n_ctx
    assert cache.k[0].shape == (2, config.kv_heads, config.n_ctx, config.head_size)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=0, atol=F64)


@pytest.mark.parametrize("prompt_len", [1, 6, 13])
@pytest.mark.parametrize("attention", ["math", "sdpa"])
@pytest.mark.parametrize("name", CACHE_VARIANTS)
def test_cached_generation_equals_full_recomputation(name, attention, prompt_len):
    """Greedy tokens with the cache = without it = the argmax of a full forward over the whole sequence
    at every step; sampled tokens (same generator) too; and each cached step's logits, on the sampled
    sequence, are the full forward's at that position."""
    config = variant(name)
    model = GPT2.from_params(lively_params(config, seed=5), config, dtype=torch.float64, attention=attention)
    prompt = torch.from_numpy(_ids(config, B=2, T=prompt_len, seed=prompt_len)[0])
    new = config.n_ctx - prompt_len  # up to the full context
    greedy = model.generate(prompt, new, use_cache=True)
    assert torch.equal(greedy, model.generate(prompt, new, use_cache=False))
    sampled = [
        model.generate(prompt, new, temperature=1.0, generator=torch.Generator().manual_seed(1), use_cache=c)
        for c in (True, False)
    ]
    assert torch.equal(sampled[0], sampled[1])
    seq = sampled[0]
    with torch.no_grad():
        full, _ = model(greedy[:, :-1])  # every position of the final sequence, one shot
        assert torch.equal(full[:, prompt_len - 1 :].argmax(-1), greedy[:, prompt_len:])
        full, _ = model(seq[:, :-1])
        cache = KVCache(config.n_layer, max_len=config.n_ctx)
        steps = [model.forward_step(seq[:, :prompt_len], cache, last_only=True)]
        steps += [model.forward_step(seq[:, t : t + 1], cache) for t in range(prompt_len, config.n_ctx - 1)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full[:, prompt_len - 1 :], rtol=0, atol=F64)


def test_past_n_ctx_rotary_positions_restart_with_the_window():
    """Beyond n_ctx each step sees the last n_ctx tokens at positions 0 .. n_ctx - 1 (a sliding window)."""
    config = variant("all")
    model = GPT2.from_params(lively_params(config, seed=6), config, dtype=torch.float64)
    prompt = torch.from_numpy(_ids(config, B=2, T=config.n_ctx - 2, seed=6)[0])
    out = model.generate(prompt, 6)
    seq = prompt
    with torch.no_grad():
        for _ in range(6):
            logits, _ = model(seq[:, -config.n_ctx :])
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


def test_bf16_autocast_of_all_variants_with_the_cache():
    """Under bf16 autocast the rotary tables follow q and k into bf16 and the cache holds bf16 keys of
    NKV heads; cached and one-shot bf16 logits agree within bf16 rounding (8-bit mantissa: 0.05 on
    logits of O(1)), and both stay near float32."""
    config = variant("all")
    model = GPT2.from_params(lively_params(config, seed=7, dtype=np.float32), config)
    idx = torch.from_numpy(_ids(config, B=2, T=12, seed=7)[0])
    with torch.no_grad():
        ref, _ = model(idx)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            full, _ = model(idx)
            cache = KVCache(config.n_layer, max_len=12)
            pieces = [model.forward_step(idx[:, :5], cache)] + [
                model.forward_step(idx[:, t : t + 1], cache) for t in range(5, 12)
            ]
    assert cache.k[0].dtype == torch.bfloat16 and cache.k[0].shape[1] == config.kv_heads
    torch.testing.assert_close(torch.cat(pieces, dim=1).float(), full.float(), rtol=0, atol=0.05)
    torch.testing.assert_close(full.float(), ref, rtol=0, atol=0.1)


# ----------------------------------------------------------------------------- the untied head
def test_untied_padded_head_pad_rows_are_never_scored_and_get_zero_gradient():
    config = variant("all")
    params = lively_params(config, seed=8, dtype=np.float32)
    model = GPT2.from_params(params, config, padded_vocab_size=PADDED_V)
    assert model.lm_head.weight.shape == (PADDED_V, config.n_embd) and model.wte.weight.shape[0] == config.vocab_size
    idx, targets = _ids(config, B=2, T=config.n_ctx, seed=8)
    _, loss = model(torch.from_numpy(idx), torch.from_numpy(targets))
    loss.backward()
    grad = model.lm_head.weight.grad
    assert torch.count_nonzero(grad[: config.vocab_size]) > 0
    assert torch.count_nonzero(grad[config.vocab_size :]) == 0
    _, _, g_padded = contract.forward_backward(model, idx, targets)
    _, _, g_plain = contract.forward_backward(GPT2.from_params(params, config), idx, targets)
    assert g_padded["lm_head.weight"].shape == (config.vocab_size, config.n_embd)
    for n in g_plain:  # float32 rounding of the same math (~1e-7 relative); see test_weights_in_out.py
        np.testing.assert_allclose(g_padded[n], g_plain[n], rtol=1e-5, atol=1e-7, err_msg=n)
    # rig the pad rows to win every argmax: they still never come out
    with torch.no_grad():
        model.lm_head.weight[config.vocab_size :] = 50 * model.forward_with_activations(torch.from_numpy(idx))[
            "ln_f"
        ].mean((0, 1))
    prompt = torch.from_numpy(idx[:, :3])
    for kwargs in [{}, {"temperature": 1.0}, {"temperature": 3.0, "top_k": 20}]:
        out = model.generate(prompt, 10, generator=torch.Generator().manual_seed(0), **kwargs)
        assert int(out.max()) < config.vocab_size, kwargs


def test_untied_wte_gradient_is_the_embedding_term_alone():
    """With a head of its own, wte's gradient comes from the lookup only: rows of absent tokens are zero,
    while the head's gradient reaches every row of lm_head (the softmax touches every logit)."""
    config = variant("untied")
    params = lively_params(config, seed=9)
    idx, targets = _ids(config, B=2, T=9, seed=9)
    _, _, grads = contract.forward_backward(GPT2.from_params(params, config, dtype=torch.float64), idx, targets)
    absent = [v for v in range(config.vocab_size) if v not in idx]
    present = sorted(set(idx.ravel().tolist()))
    assert np.all(grads["wte.weight"][absent] == 0)
    assert np.all(np.abs(grads["wte.weight"][present]).max(axis=1) > 0)
    assert np.all(np.abs(grads["lm_head.weight"]).max(axis=1) > 0)
