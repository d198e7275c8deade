"""GPT-2 assembled from the layers: the full forward pass and its hand-written backward.

    gpt2_forward(params, config, idx, targets=None, attention="naive")  ->  logits, loss, acts
    gpt2_backward(params, config, acts)                                  ->  grads

One block of the residual stream x (B, T, C), as GPT-2 computes it (pre-LayerNorm):

    ln_1   = LayerNorm(x)                      attn_proj = attn @ c_proj + b
    qkv    = ln_1 @ c_attn + b                 resid_1   = x + attn_proj
    attn   = CausalSelfAttention(qkv)          ln_2      = LayerNorm(resid_1)
    fc     = ln_2 @ c_fc + b                   mlp_proj  = gelu @ mlp.c_proj + b
    gelu   = GELU(fc)                          resid_2   = resid_1 + mlp_proj

and around the blocks: embed = wte[idx] + wpe[:T] before, ln_f = LayerNorm(x) and
logits = ln_f @ wteᵀ (the head is tied to the token embedding) after.

The forward records every activation by the names of docs/contract.md ("embed",
"h.{i}.ln_1", ..., "logits") in the dict `acts`, together with what the backward needs
and the contract does not name: LayerNorm means and reciprocal standard deviations
("h.{i}.ln_1.mean", ...), the attention probabilities ("h.{i}.att", naive) or per-row
log-sum-exp ("h.{i}.att.lse", tiled), and the softmax of the logits ("probs").
The backward walks the same names in reverse.

dtype: everything is computed in the dtype of the params (float32 or float64).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from reference.attention import (
    attention_backward,
    attention_backward_tiled,
    attention_forward,
    attention_forward_tiled,
)
from reference.layers import (
    IGNORE_INDEX,
    crossentropy_backward,
    crossentropy_forward,
    embedding_backward,
    embedding_forward,
    gelu_backward,
    gelu_forward,
    layernorm_backward,
    layernorm_forward,
    linear_backward,
    linear_forward,
    lm_head_backward,
    lm_head_forward,
    residual_backward,
    residual_forward,
)
from weights import GPT2Config, validate_params

ATTENTION_KINDS = ("naive", "tiled")
DEFAULT_BLOCK_SIZE = 64  # keys per block of the tiled attention

# The activation names of docs/contract.md, per block and around the blocks.
BLOCK_ACTIVATIONS = (
    "ln_1", "qkv", "attn", "attn_proj", "resid_1", "ln_2", "fc", "gelu", "mlp_proj", "resid_2",
)  # fmt: skip


def activation_names(config: GPT2Config) -> list[str]:
    """The contract's activation names in forward order."""
    names = ["embed"]
    for i in range(config.n_layer):
        names += [f"h.{i}.{a}" for a in BLOCK_ACTIVATIONS]
    return names + ["ln_f", "logits"]


# ----------------------------------------------------------------------------- input checks
def check_params(params: Mapping[str, np.ndarray], config: GPT2Config) -> np.dtype:
    """Every tensor present with its shape, finite, and all of one float dtype; returns that dtype."""
    if not isinstance(config, GPT2Config):
        raise TypeError(f"config must be a weights.GPT2Config, got {type(config).__name__}")
    validate_params(params, config)
    dtypes = {params[n].dtype for n in params}
    if len(dtypes) != 1:
        raise ValueError(f"params: mixed dtypes {sorted(str(d) for d in dtypes)}; use one of float32 or float64")
    return dtypes.pop()


def check_idx(idx, config: GPT2Config, what: str = "idx") -> np.ndarray:
    """idx must be an integer array (B, T) with 1 <= T <= n_ctx and every id in [0, vocab_size)."""
    idx = np.asarray(idx)
    if idx.dtype.kind not in "iu":
        raise ValueError(f"{what}: token ids must be an integer array, got dtype {idx.dtype}")
    if idx.ndim != 2:
        raise ValueError(f"{what}: expected shape (B, T), got {idx.shape}")
    B, T = idx.shape
    if B < 1 or T < 1:
        raise ValueError(f"{what}: empty batch or sequence, shape {idx.shape}")
    if T > config.n_ctx:
        raise ValueError(f"{what}: sequence length T={T} exceeds n_ctx={config.n_ctx}")
    bad = (idx < 0) | (idx >= config.vocab_size)
    if bad.any():
        b, t = np.argwhere(bad)[0]
        raise ValueError(
            f"{what}: token id {int(idx[b, t])} at [{b}, {t}] is outside [0, vocab_size={config.vocab_size})"
        )
    return idx.astype(np.int64, copy=False)


def check_targets(targets, idx: np.ndarray, config: GPT2Config) -> np.ndarray:
    """targets: integer array of idx's shape, each id in [0, vocab_size) or -1 (ignored)."""
    targets = np.asarray(targets)
    if targets.dtype.kind not in "iu":
        raise ValueError(f"targets: must be an integer array, got dtype {targets.dtype}")
    if targets.shape != idx.shape:
        raise ValueError(f"targets: shape {targets.shape} does not match idx shape {idx.shape}")
    bad = ((targets < 0) & (targets != IGNORE_INDEX)) | (targets >= config.vocab_size)
    if bad.any():
        b, t = np.argwhere(bad)[0]
        raise ValueError(
            f"targets: id {int(targets[b, t])} at [{b}, {t}] is outside [0, vocab_size={config.vocab_size})"
            f" and is not the ignore index {IGNORE_INDEX}"
        )
    return targets.astype(np.int64, copy=False)


def check_attention(attention: str) -> None:
    if attention not in ATTENTION_KINDS:
        raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}")


# ----------------------------------------------------------------------------- forward
def gpt2_forward(
    params: Mapping[str, np.ndarray],
    config: GPT2Config,
    idx,
    targets=None,
    attention: str = "naive",
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> tuple[np.ndarray, float | None, dict[str, np.ndarray]]:
    """idx (B, T) [, targets (B, T)]  ->  logits (B, T, V), loss (float, or None without targets), acts

    `acts` holds every intermediate activation by name (see the module docstring).
    """
    check_params(params, config)
    check_attention(attention)
    idx = check_idx(idx, config)
    if targets is not None:
        targets = check_targets(targets, idx, config)
    p = params
    eps = config.layer_norm_eps
    acts: dict[str, np.ndarray] = {"idx": idx}

    x = embedding_forward(p["wte.weight"], p["wpe.weight"], idx)  # (B, T, C)
    acts["embed"] = x
    for i in range(config.n_layer):
        h = f"h.{i}."
        ln_1, acts[h + "ln_1.mean"], acts[h + "ln_1.rstd"] = layernorm_forward(
            x, p[h + "ln_1.weight"], p[h + "ln_1.bias"], eps
        )
        qkv = linear_forward(ln_1, p[h + "attn.c_attn.weight"], p[h + "attn.c_attn.bias"])  # (B, T, 3C)
        if attention == "naive":
            attn, acts[h + "att"] = attention_forward(qkv, config.n_head)  # att (B, NH, T, T)
        else:
            attn, acts[h + "att.lse"] = attention_forward_tiled(qkv, config.n_head, block_size)  # lse (B, NH, T)
        attn_proj = linear_forward(attn, p[h + "attn.c_proj.weight"], p[h + "attn.c_proj.bias"])
        resid_1 = residual_forward(x, attn_proj)
        ln_2, acts[h + "ln_2.mean"], acts[h + "ln_2.rstd"] = layernorm_forward(
            resid_1, p[h + "ln_2.weight"], p[h + "ln_2.bias"], eps
        )
        fc = linear_forward(ln_2, p[h + "mlp.c_fc.weight"], p[h + "mlp.c_fc.bias"])  # (B, T, 4C)
        gelu = gelu_forward(fc)
        mlp_proj = linear_forward(gelu, p[h + "mlp.c_proj.weight"], p[h + "mlp.c_proj.bias"])
        resid_2 = residual_forward(resid_1, mlp_proj)
        for name, value in zip(
            BLOCK_ACTIVATIONS, (ln_1, qkv, attn, attn_proj, resid_1, ln_2, fc, gelu, mlp_proj, resid_2), strict=True
        ):
            acts[h + name] = value
        x = resid_2

    ln_f, acts["ln_f.mean"], acts["ln_f.rstd"] = layernorm_forward(x, p["ln_f.weight"], p["ln_f.bias"], eps)
    logits = lm_head_forward(ln_f, p["wte.weight"])  # (B, T, V)
    acts["ln_f"] = ln_f
    acts["logits"] = logits

    loss = None
    if targets is not None:
        loss, acts["probs"] = crossentropy_forward(logits, targets)
        acts["targets"] = targets
    return logits, loss, acts


# ----------------------------------------------------------------------------- backward
def gpt2_backward(
    params: Mapping[str, np.ndarray],
    config: GPT2Config,
    acts: Mapping[str, np.ndarray],
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> dict[str, np.ndarray]:
    """Gradients of the mean loss for every parameter, same names and shapes as params.

    `acts` must come from gpt2_forward(..., targets=...) on the same params; the attention
    kind is read from it (probabilities for naive, log-sum-exp for tiled).
    """
    if "probs" not in acts:
        raise ValueError("gpt2_backward needs the activations of a forward pass that was given targets")
    p = params
    grads: dict[str, np.ndarray] = {}

    dlogits = crossentropy_backward(acts["probs"], acts["targets"])  # (B, T, V)
    dln_f, dwte_head = lm_head_backward(dlogits, acts["ln_f"], p["wte.weight"])
    x_last = acts[f"h.{config.n_layer - 1}.resid_2"]  # the input of ln_f
    dx, grads["ln_f.weight"], grads["ln_f.bias"] = layernorm_backward(
        dln_f, x_last, p["ln_f.weight"], acts["ln_f.mean"], acts["ln_f.rstd"]
    )
    for i in reversed(range(config.n_layer)):
        h = f"h.{i}."
        x_in = acts[f"h.{i - 1}.resid_2"] if i > 0 else acts["embed"]
        # resid_2 = resid_1 + mlp_proj
        dresid_1, dmlp_proj = residual_backward(dx)
        dgelu, grads[h + "mlp.c_proj.weight"], grads[h + "mlp.c_proj.bias"] = linear_backward(
            dmlp_proj, acts[h + "gelu"], p[h + "mlp.c_proj.weight"]
        )
        dfc = gelu_backward(dgelu, acts[h + "fc"])
        dln_2, grads[h + "mlp.c_fc.weight"], grads[h + "mlp.c_fc.bias"] = linear_backward(
            dfc, acts[h + "ln_2"], p[h + "mlp.c_fc.weight"]
        )
        dresid_1_ln, grads[h + "ln_2.weight"], grads[h + "ln_2.bias"] = layernorm_backward(
            dln_2, acts[h + "resid_1"], p[h + "ln_2.weight"], acts[h + "ln_2.mean"], acts[h + "ln_2.rstd"]
        )
        dresid_1 = dresid_1 + dresid_1_ln
        # resid_1 = x_in + attn_proj
        dx_in, dattn_proj = residual_backward(dresid_1)
        dattn, grads[h + "attn.c_proj.weight"], grads[h + "attn.c_proj.bias"] = linear_backward(
            dattn_proj, acts[h + "attn"], p[h + "attn.c_proj.weight"]
        )
        if h + "att" in acts:
            dqkv = attention_backward(dattn, acts[h + "qkv"], acts[h + "att"], config.n_head)
        else:
            dqkv = attention_backward_tiled(
                dattn, acts[h + "qkv"], acts[h + "attn"], acts[h + "att.lse"], config.n_head, block_size
            )
        dln_1, grads[h + "attn.c_attn.weight"], grads[h + "attn.c_attn.bias"] = linear_backward(
            dqkv, acts[h + "ln_1"], p[h + "attn.c_attn.weight"]
        )
        dx_in_ln, grads[h + "ln_1.weight"], grads[h + "ln_1.bias"] = layernorm_backward(
            dln_1, x_in, p[h + "ln_1.weight"], acts[h + "ln_1.mean"], acts[h + "ln_1.rstd"]
        )
        dx = dx_in + dx_in_ln

    # tied: the wte gradient is the head's term plus the embedding's scatter-add (accumulated into it)
    grads["wte.weight"], grads["wpe.weight"] = embedding_backward(
        dx, acts["idx"], config.vocab_size, config.n_ctx, dwte=dwte_head
    )
    return {name: grads[name] for name in params}  # in the params' order
