"""The variant configs the PyTorch tests run: each option alone, and combinations, on one tiny shape.

BASE has 4 heads of 8 channels (so grouped-query attention can share a key/value head between 2 or
all 4 query heads), a vocabulary of 101 (no power of two: padding it to 128 is a real pad) and a
context of 24. SwiGLU runs at hidden width 48, neither C nor the default, so a mix-up of H with C or
with 2H shows in the shapes.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from weights import GPT2Config, synthetic

BASE = GPT2Config(n_layer=2, n_head=4, n_embd=32, vocab_size=101, n_ctx=24)
PADDED_V = 128
LLAMA = dict(position="rope", norm="rmsnorm", mlp="swiglu", mlp_hidden=48, bias=False)

VARIANTS = {
    "rope": dict(position="rope"),
    "rmsnorm": dict(norm="rmsnorm"),
    "swiglu": dict(mlp="swiglu", mlp_hidden=48),
    "gqa": dict(n_kv_head=2),
    "mqa": dict(n_kv_head=1),
    "nobias": dict(bias=False),
    "untied": dict(tied_head=False),
    # every option at once: the llama-style combination, with grouped-query attention and an untied head
    "all": dict(LLAMA, n_kv_head=2, tied_head=False),
}


def variant(name: str, **extra) -> GPT2Config:
    return dataclasses.replace(BASE, **VARIANTS[name], **extra)


def lively_params(config: GPT2Config, seed: int = 0, dtype=np.float64) -> dict[str, np.ndarray]:
    """synthetic() weights with the qkv and c_fc projections scaled up (x15, x10).

    At GPT-2's init scale (std 0.02) the attention scores of a 32-wide model are ~1e-2, so the
    softmax is nearly uniform and a wrong rotation, head grouping or mask would hardly move the
    logits. Scaled, the scores are O(1) and every part of the block matters.
    """
    params = synthetic(config, seed=seed, dtype=dtype)
    for name in params:
        if name.endswith("attn.c_attn.weight"):
            params[name] = params[name] * 15
        elif name.endswith("mlp.c_fc.weight"):
            params[name] = params[name] * 10
    return params
