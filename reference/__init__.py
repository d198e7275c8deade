"""GPT-2 in plain NumPy: forward and hand-written backward, float32 or float64.

The ground truth the other backends are measured against (docs/contract.md), and the
code to read to learn how GPT-2 computes. One module per idea:

    layers.py      embedding, LayerNorm, linear, GELU, residual, tied head, cross-entropy;
                   for the variants RMSNorm, SiLU and SwiGLU
    rope.py        rotary position embeddings (the variant position="rope")
    attention.py   causal self-attention, naive and tiled (online softmax); grouped-query too
    model.py       gpt2_forward / gpt2_backward: the layers assembled into GPT-2 or any variant
    optimizer.py   AdamW
    generate.py    greedy / temperature / top-k sampling with a KV cache

The functions below are the contract's entry points. dtype follows the params. Every one takes
any weights.GPT2Config, GPT-2 or a variant (docs/variants.md).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from reference.generate import generate
from reference.model import activation_names, gpt2_backward, gpt2_forward
from reference.optimizer import adamw_init, adamw_step
from weights import GPT2Config

__all__ = [
    "activations",
    "adamw_init",
    "adamw_step",
    "forward",
    "forward_backward",
    "generate",
    "gpt2_backward",
    "gpt2_forward",
]


def forward(
    params: Mapping[str, np.ndarray], config: GPT2Config, idx, targets=None, attention: str = "naive"
) -> tuple[np.ndarray, float | None]:
    """idx (B, T) [, targets (B, T), -1 = ignored]  ->  logits (B, T, V), loss (None without targets)"""
    logits, loss, _ = gpt2_forward(params, config, idx, targets, attention=attention)
    return logits, loss


def forward_backward(
    params: Mapping[str, np.ndarray], config: GPT2Config, idx, targets, attention: str = "naive"
) -> tuple[np.ndarray, float, dict[str, np.ndarray]]:
    """idx, targets (B, T)  ->  logits (B, T, V), loss, grads (same names and shapes as params)"""
    if targets is None:
        raise ValueError("forward_backward needs targets: there is no loss to differentiate without them")
    logits, loss, acts = gpt2_forward(params, config, idx, targets, attention=attention)
    return logits, loss, gpt2_backward(params, config, acts)


def activations(
    params: Mapping[str, np.ndarray],
    config: GPT2Config,
    idx,
    attention: str = "naive",
    with_attention_probs: bool = False,
) -> dict[str, np.ndarray]:
    """Every named activation of docs/contract.md ("embed", "h.{i}.ln_1", ..., "logits"), in forward order:
    exactly weights.layout.activation_names(config), so a variant's "h.{i}.rope" or "h.{i}.swiglu" too.

    with_attention_probs=True (naive attention only) also returns "h.{i}.att", the
    attention probabilities (B, NH, T, T), for looking at what each head attends to.
    """
    if with_attention_probs and attention != "naive":
        raise ValueError("attention probabilities are only materialised by attention='naive'")
    _, _, acts = gpt2_forward(params, config, idx, attention=attention)
    out = {name: acts[name] for name in activation_names(config)}
    if with_attention_probs:
        out.update({f"h.{i}.att": acts[f"h.{i}.att"] for i in range(config.n_layer)})
    return out
