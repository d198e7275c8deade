"""Text generation: greedy, temperature and top-k sampling, with or without a KV cache.

    tokens = generate(params, config, idx, max_new_tokens, temperature=0.0, top_k=None, seed=0, use_cache=True)

Without a cache every new token reruns the whole model on the whole sequence
(gpt2_forward). With the cache, each block keeps the keys and values of the positions it
has already seen, so a step only pushes the one new token through the model: its query
attends to the cached keys plus its own. Both give the same tokens and, up to rounding,
the same logits (tests/reference/test_generate.py).

Every variant of the config is generated the same way. With rotary positions the cache holds
the keys already rotated (at their absolute positions), and new tokens are rotated at theirs,
start + t; with grouped-query attention it holds the NKV key/value heads, not NH.

The context window is n_ctx tokens. Past it, the window slides: the model sees only the
last n_ctx tokens, at positions 0..n_ctx-1. Sliding shifts every position, so the cached
keys go stale; from then on the cached path recomputes the window each step, exactly as
the uncached one does.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from reference.attention import causal_attention, merge_heads, repeat_kv_forward, split_heads
from reference.layers import embedding_forward, linear_forward, lm_head_forward, softmax_forward
from reference.model import check_idx, check_params, gpt2_forward, mlp_act_forward, norm_forward
from reference.rope import rope_forward
from weights import GPT2Config


# ----------------------------------------------------------------------------- KV cache forward
def new_kv_cache(config: GPT2Config) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """One (k, v) pair per block, each (B, NKV, T_cached, HS) (NKV = NH for GPT-2; k already rotated
    with rope); None until the first tokens arrive."""
    return [None] * config.n_layer


def cache_length(cache: list) -> int:
    return 0 if cache[0] is None else cache[0][0].shape[2]


def forward_with_cache(
    params: Mapping[str, np.ndarray], config: GPT2Config, idx_new: np.ndarray, cache: list, last_only: bool = True
) -> np.ndarray:
    """Run the tokens idx_new (B, Tn), which follow the cached positions, through the model.

    Appends their keys and values to `cache` (in place) and returns the logits of the last
    new position, (B, V), or of every new position, (B, Tn, V), with last_only=False. The same
    block math as gpt2_forward, inference only. The new tokens sit at the absolute positions
    start .. start + Tn - 1, start = cache_length(cache): that is where wpe is read and where
    rope rotates their q and k.
    """
    p = params
    NH, NKV = config.n_head, config.kv_heads
    start = cache_length(cache)
    if start + idx_new.shape[1] > config.n_ctx:
        Tn = idx_new.shape[1]
        raise ValueError(f"forward_with_cache: {start} cached + {Tn} new tokens exceed n_ctx={config.n_ctx}")
    x = embedding_forward(p["wte.weight"], p.get("wpe.weight"), idx_new, start=start)  # (B, Tn, C)
    for i in range(config.n_layer):
        h = f"h.{i}."
        ln_1, _ = norm_forward(config, x, p[h + "ln_1.weight"], p.get(h + "ln_1.bias"))
        qkv = linear_forward(ln_1, p[h + "attn.c_attn.weight"], p.get(h + "attn.c_attn.bias"))
        if config.position == "rope":
            qkv = rope_forward(qkv, NH, NKV, config.rope_theta, start=start)  # at positions start + t
        q, k, v = split_heads(qkv, NH, NKV)  # q (B, NH, Tn, HS), k and v (B, NKV, Tn, HS)
        if cache[i] is not None:
            k = np.concatenate([cache[i][0], k], axis=2)  # (B, NKV, start + Tn, HS)
            v = np.concatenate([cache[i][1], v], axis=2)
        cache[i] = (k, v)
        # the Tn queries are the last Tn of the keys
        y, _ = causal_attention(q, repeat_kv_forward(k, NH), repeat_kv_forward(v, NH))
        x = x + linear_forward(merge_heads(y), p[h + "attn.c_proj.weight"], p.get(h + "attn.c_proj.bias"))
        ln_2, _ = norm_forward(config, x, p[h + "ln_2.weight"], p.get(h + "ln_2.bias"))
        fc = linear_forward(ln_2, p[h + "mlp.c_fc.weight"], p.get(h + "mlp.c_fc.bias"))
        x = x + linear_forward(mlp_act_forward(config, fc), p[h + "mlp.c_proj.weight"], p.get(h + "mlp.c_proj.bias"))
    if last_only:
        x = x[:, -1]  # (B, C)
    ln_f, _ = norm_forward(config, x, p["ln_f.weight"], p.get("ln_f.bias"))
    head = p["wte.weight"] if config.tied_head else p["lm_head.weight"]
    return lm_head_forward(ln_f, head)  # (B, V), or (B, Tn, V)


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
