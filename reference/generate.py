"""Text generation: greedy, temperature and top-k sampling, with or without a KV cache.

    tokens = generate(params, config, idx, max_new_tokens, temperature=0.0, top_k=None, seed=0, use_cache=True)

Without a cache every new token reruns the whole model on the whole sequence
(gpt2_forward). With the cache, each block keeps the keys and values of the positions it
has already seen, so a step only pushes the one new token through the model: its query
attends to the cached keys plus its own. Both give the same tokens and, up to rounding,
the same logits (tests/reference/test_generate.py).

The context window is n_ctx tokens. Past it, the window slides: the model sees only the
last n_ctx tokens, at positions 0..n_ctx-1. Sliding shifts every position, so the cached
keys go stale; from then on the cached path recomputes the window each step, exactly as
the uncached one does.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from reference.attention import causal_attention, merge_heads, split_heads
from reference.layers import (
    embedding_forward,
    gelu_forward,
    layernorm_forward,
    linear_forward,
    lm_head_forward,
    softmax_forward,
)
from reference.model import check_idx, check_params, gpt2_forward
from weights import GPT2Config


# ----------------------------------------------------------------------------- KV cache forward
def new_kv_cache(config: GPT2Config) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """One (k, v) pair per block, each (B, NH, T_cached, HS); None until the first tokens arrive."""
    return [None] * config.n_layer


def cache_length(cache: list) -> int:
    return 0 if cache[0] is None else cache[0][0].shape[2]


def forward_with_cache(
    params: Mapping[str, np.ndarray], config: GPT2Config, idx_new: np.ndarray, cache: list
) -> np.ndarray:
    """Run the tokens idx_new (B, Tn), which follow the cached positions, through the model.

    Appends their keys and values to `cache` (in place) and returns the logits of the last
    new position, (B, V). The same block math as gpt2_forward, inference only.
    """
    p = params
    eps = config.layer_norm_eps
    start = cache_length(cache)
    x = embedding_forward(p["wte.weight"], p["wpe.weight"], idx_new, start=start)  # (B, Tn, C)
    for i in range(config.n_layer):
        h = f"h.{i}."
        ln_1, _, _ = layernorm_forward(x, p[h + "ln_1.weight"], p[h + "ln_1.bias"], eps)
        qkv = linear_forward(ln_1, p[h + "attn.c_attn.weight"], p[h + "attn.c_attn.bias"])
        q, k, v = split_heads(qkv, config.n_head)  # (B, NH, Tn, HS) each
        if cache[i] is not None:
            k = np.concatenate([cache[i][0], k], axis=2)  # (B, NH, start + Tn, HS)
            v = np.concatenate([cache[i][1], v], axis=2)
        cache[i] = (k, v)
        y, _ = causal_attention(q, k, v)  # the Tn queries are the last Tn of the keys
        x = x + linear_forward(merge_heads(y), p[h + "attn.c_proj.weight"], p[h + "attn.c_proj.bias"])
        ln_2, _, _ = layernorm_forward(x, p[h + "ln_2.weight"], p[h + "ln_2.bias"], eps)
        fc = linear_forward(ln_2, p[h + "mlp.c_fc.weight"], p[h + "mlp.c_fc.bias"])
        x = x + linear_forward(gelu_forward(fc), p[h + "mlp.c_proj.weight"], p[h + "mlp.c_proj.bias"])
    ln_f, _, _ = layernorm_forward(x[:, -1], p["ln_f.weight"], p["ln_f.bias"], eps)  # (B, C)
    return lm_head_forward(ln_f, p["wte.weight"])  # (B, V)


# ----------------------------------------------------------------------------- sampling
def sample_next(logits: np.ndarray, temperature: float, top_k: int | None, rng: np.random.Generator) -> np.ndarray:
    """logits (B, V)  ->  next token ids (B,)

    temperature 0: greedy (argmax, the lowest id on ties). Otherwise sample from
    softmax(logits / temperature), restricted to the top_k largest logits when top_k is
    given (ids tied with the k-th largest are kept too). One uniform draw per row,
    inverted through the cumulative distribution, so the draw sequence depends only on the seed.
    """
    u = rng.random(logits.shape[0])  # drawn every step, greedy or not: same stream either way
    if temperature == 0.0:
        return logits.argmax(axis=-1)
    z = logits / temperature
    if top_k is not None and top_k < z.shape[-1]:
        kth = np.partition(z, -top_k, axis=-1)[:, -top_k][:, None]
        z = np.where(z < kth, -np.inf, z)
    cdf = np.cumsum(softmax_forward(z), axis=-1)
    # First id whose cdf exceeds u * total: it has nonzero probability, and u < 1 keeps it < V.
    return (cdf <= (u * cdf[:, -1])[:, None]).sum(axis=-1)


def generate(
    params: Mapping[str, np.ndarray],
    config: GPT2Config,
    idx,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 0,
    use_cache: bool = True,
    return_logits: bool = False,
):
    """idx (B, T) prompt ids  ->  tokens (B, T + max_new_tokens) int64 [, logits (B, max_new_tokens, V)]

    `logits[:, s]` are the logits (before temperature and top-k) that chose new token s.
    """
    check_params(params, config)
    idx = check_idx(idx, config)
    if not (isinstance(max_new_tokens, int) and max_new_tokens >= 0):
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if not (isinstance(temperature, (int, float)) and temperature >= 0.0):
        raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and not (isinstance(top_k, int) and 1 <= top_k <= config.vocab_size):
        raise ValueError(f"top_k must be None or an int in [1, vocab_size={config.vocab_size}], got {top_k!r}")
    rng = np.random.default_rng(seed)
    tokens = idx
    step_logits = []
    cache = new_kv_cache(config)
    pending = tokens  # tokens whose keys/values are not yet in the cache
    for _ in range(max_new_tokens):
        if use_cache:
            if cache_length(cache) + pending.shape[1] > config.n_ctx:  # the window slides: recompute it
                cache = new_kv_cache(config)
                pending = tokens[:, -config.n_ctx :]
            logits = forward_with_cache(params, config, pending, cache)
        else:
            logits = gpt2_forward(params, config, tokens[:, -config.n_ctx :])[0][:, -1]
        nxt = sample_next(logits, float(temperature), top_k, rng)[:, None]
        tokens = np.concatenate([tokens, nxt], axis=1)
        pending = nxt
        step_logits.append(logits)
    if not return_logits:
        return tokens
    V = config.vocab_size
    dtype = params["wte.weight"].dtype
    all_logits = np.stack(step_logits, axis=1) if step_logits else np.zeros((idx.shape[0], 0, V), dtype)
    return tokens, all_logits
