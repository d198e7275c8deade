"""A compact GPT-2 in plain torch, written for this example alone (it imports no backend of the project).

The parameters are the project's contract (weights/layout.py): a dict of float32 tensors under the
canonical names, Conv1D weights stored (in, out), so a linear layer is y = x @ W + b, and the head
tied to the token embedding. With C = n_embd, NH = n_head, HS = C // NH, V = vocab_size:

    x = wte[idx] + wpe[:T]                                  embed      (B, T, C)
    for each block i:
        a = LayerNorm(x) @ c_attn.W + b                     h.i.qkv    (B, T, 3C): q | k | v
        y = softmax(q k^T * scale, causal) v, heads merged  h.i.attn   (B, T, C), scale = 1/sqrt(HS)
        x = x + y @ attn.c_proj.W + b                       h.i.resid_1
        f = gelu_tanh(LayerNorm(x) @ c_fc.W + b)            h.i.gelu   (B, T, 4C)
        x = x + f @ mlp.c_proj.W + b                        h.i.resid_2
    logits = LayerNorm(x) @ wte^T                           logits     (B, T, V)

`record`, when given, collects every activation of the contract (docs/contract.md) under its name, in
forward order, as a float32 NumPy array: that is what the divergence localizer compares.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis, biased variance."""
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's GELU: the tanh approximation, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def causal_attention(qkv: torch.Tensor, n_head: int, scale: float) -> torch.Tensor:
    """(B, T, 3C) = [q | k | v] -> (B, T, C): each of NH heads attends to positions <= its own."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in qkv.split(C, dim=-1))  # (B, NH, T, HS)
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, NH, T, T)
    future = torch.ones(T, T, dtype=torch.bool).triu(diagonal=1)
    scores = scores.masked_fill(future, float("-inf"))
    y = scores.softmax(dim=-1) @ v  # (B, NH, T, HS)
    return y.transpose(1, 2).reshape(B, T, C)


def forward(
    p: dict[str, torch.Tensor],
    config,
    idx: torch.Tensor,
    record: dict[str, np.ndarray] | None = None,
    attention_scale: float | None = None,
) -> torch.Tensor:
    """Logits (B, T, V) of the int64 tokens `idx` (B, T). attention_scale None is GPT-2's 1/sqrt(HS)."""
    B, T = idx.shape
    eps = config.layer_norm_eps
    scale = 1.0 / math.sqrt(config.n_embd // config.n_head) if attention_scale is None else attention_scale

    def keep(name: str, value: torch.Tensor) -> torch.Tensor:
        if record is not None:
            record[name] = value.detach().numpy().copy()
        return value

    x = keep("embed", p["wte.weight"][idx] + p["wpe.weight"][:T])
    for i in range(config.n_layer):
        w = {name[len(f"h.{i}.") :]: t for name, t in p.items() if name.startswith(f"h.{i}.")}
        a = keep(f"h.{i}.ln_1", layer_norm(x, w["ln_1.weight"], w["ln_1.bias"], eps))
        qkv = keep(f"h.{i}.qkv", a @ w["attn.c_attn.weight"] + w["attn.c_attn.bias"])
        y = keep(f"h.{i}.attn", causal_attention(qkv, config.n_head, scale))
        y = keep(f"h.{i}.attn_proj", y @ w["attn.c_proj.weight"] + w["attn.c_proj.bias"])
        x = keep(f"h.{i}.resid_1", x + y)
        m = keep(f"h.{i}.ln_2", layer_norm(x, w["ln_2.weight"], w["ln_2.bias"], eps))
        m = keep(f"h.{i}.fc", m @ w["mlp.c_fc.weight"] + w["mlp.c_fc.bias"])
        m = keep(f"h.{i}.gelu", gelu_tanh(m))
        m = keep(f"h.{i}.mlp_proj", m @ w["mlp.c_proj.weight"] + w["mlp.c_proj.bias"])
        x = keep(f"h.{i}.resid_2", x + m)
    x = keep("ln_f", layer_norm(x, p["ln_f.weight"], p["ln_f.bias"], eps))
    return keep("logits", x @ p["wte.weight"].T)  # the tied head


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean of -log softmax(logits)[target] over the positions whose target is not -1 (ignored)."""
    kept = targets != -1
    log_probs = F.log_softmax(logits[kept], dim=-1)  # (N, V), N = positions kept
    return -log_probs.gather(-1, targets[kept].unsqueeze(-1)).mean()


@torch.no_grad()
def generate_greedy(
    p: dict[str, torch.Tensor], config, idx: torch.Tensor, n: int, attention_scale: float | None = None
) -> torch.Tensor:
    """`n` greedy tokens after `idx` (B, T) -> (B, T + n); each step recomputes the whole window (no KV cache)."""
    for _ in range(n):
        logits = forward(p, config, idx[:, -config.n_ctx :], attention_scale=attention_scale)
        idx = torch.cat([idx, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    return idx
