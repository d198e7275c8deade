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

The variants of the config (docs/variants.md) change single steps of this and nothing else:

    position "rope"   embed = wte[idx] (no wpe); rope = RoPE(qkv) after the projection, and
                      attention reads rope instead of qkv
    norm "rmsnorm"    RMSNorm in place of each LayerNorm (ln_1, ln_2, ln_f)
    mlp "swiglu"      swiglu = SwiGLU(fc) in place of gelu, fc = [gate | up] (B, T, 2H)
    n_kv_head         grouped-query attention: qkv (B, T, (NH + 2 NKV) HS)
    bias False        no "+ b" in any linear layer or LayerNorm
    tied_head False   logits = ln_f @ lm_headᵀ

The forward records every activation by the names of docs/contract.md
(weights.layout.activation_names(config): "embed", "h.{i}.ln_1", ..., "logits") in the dict
`acts`, together with what the backward needs and the contract does not name: the norms'
means (LayerNorm only) and reciprocal standard deviations ("h.{i}.ln_1.mean", "h.{i}.ln_1.rstd", ...),
the attention probabilities ("h.{i}.att", naive) or per-row log-sum-exp ("h.{i}.att.lse", tiled),
and the softmax of the logits ("probs"). The backward walks the same names in reverse.

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
    rmsnorm_backward,
    rmsnorm_forward,
    swiglu_backward,
    swiglu_forward,
)
from reference.rope import rope_backward, rope_forward
from weights import GPT2Config, validate_params
from weights.layout import activation_names, block_activations

__all__ = ["activation_names", "block_activations", "gpt2_backward", "gpt2_forward"]

ATTENTION_KINDS = ("naive", "tiled")
DEFAULT_BLOCK_SIZE = 64  # keys per block of the tiled attention


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


# ----------------------------------------------------------------------------- the config's choices
def norm_forward(
    config: GPT2Config, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The config's norm. x (..., C)  ->  out (..., C), saved: {"mean", "rstd"} (LayerNorm) or {"rstd"} (RMSNorm)"""
    if config.norm == "layernorm":
        out, mean, rstd = layernorm_forward(x, weight, bias, config.layer_norm_eps)
        return out, {"mean": mean, "rstd": rstd}
    out, rstd = rmsnorm_forward(x, weight, config.layer_norm_eps)
    return out, {"rstd": rstd}


def norm_backward(
    config: GPT2Config, dout: np.ndarray, x: np.ndarray, weight: np.ndarray, saved: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """dout (..., C), x (..., C)  ->  dx (..., C), dweight (C,), dbias (C,) or None (no bias)"""
    if config.norm == "layernorm":
        return layernorm_backward(dout, x, weight, saved["mean"], saved["rstd"], bias=config.norm_bias)
    dx, dweight = rmsnorm_backward(dout, x, weight, saved["rstd"])
    return dx, dweight, None


def mlp_act_forward(config: GPT2Config, fc: np.ndarray) -> np.ndarray:
    """The MLP's nonlinearity: gelu (B, T, H) -> (B, T, H), or swiglu (B, T, 2H) -> (B, T, H)."""
    return gelu_forward(fc) if config.mlp == "gelu" else swiglu_forward(fc)


def mlp_act_backward(config: GPT2Config, dout: np.ndarray, fc: np.ndarray) -> np.ndarray:
    """dout (B, T, H), fc (B, T, H or 2H)  ->  dfc, shaped like fc."""
    return gelu_backward(dout, fc) if config.mlp == "gelu" else swiglu_backward(dout, fc)


def _saved(acts: Mapping[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    """The norm statistics recorded under `name` ("h.0.ln_1" -> {"mean": ..., "rstd": ...})."""
    return {k: acts[f"{name}.{k}"] for k in ("mean", "rstd") if f"{name}.{k}" in acts}


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
    A tensor the config does not have (a bias with bias=False, wpe with rope, ...) is None here:
    params.get(name) of validated params.
    """
    check_params(params, config)
    check_attention(attention)
    idx = check_idx(idx, config)
    if targets is not None:
        targets = check_targets(targets, idx, config)
    p = params
    NH, NKV = config.n_head, config.kv_heads
    acts: dict[str, np.ndarray] = {"idx": idx}

    x = embedding_forward(p["wte.weight"], p.get("wpe.weight"), idx)  # (B, T, C); rope: no wpe
    acts["embed"] = x
    for i in range(config.n_layer):
        h = f"h.{i}."
        ln_1, saved_1 = norm_forward(config, x, p[h + "ln_1.weight"], p.get(h + "ln_1.bias"))
        qkv = linear_forward(ln_1, p[h + "attn.c_attn.weight"], p.get(h + "attn.c_attn.bias"))  # (B, T, (NH+2NKV) HS)
        rope = rope_forward(qkv, NH, NKV, config.rope_theta) if config.position == "rope" else None
        att_in = qkv if rope is None else rope  # what attention reads
        if attention == "naive":
            attn, acts[h + "att"] = attention_forward(att_in, NH, n_kv_head=NKV)  # att (B, NH, T, T)
        else:
            attn, acts[h + "att.lse"] = attention_forward_tiled(att_in, NH, block_size, n_kv_head=NKV)  # (B, NH, T)
        attn_proj = linear_forward(attn, p[h + "attn.c_proj.weight"], p.get(h + "attn.c_proj.bias"))
        resid_1 = residual_forward(x, attn_proj)
        ln_2, saved_2 = norm_forward(config, resid_1, p[h + "ln_2.weight"], p.get(h + "ln_2.bias"))
        fc = linear_forward(ln_2, p[h + "mlp.c_fc.weight"], p.get(h + "mlp.c_fc.bias"))  # (B, T, H), swiglu (B, T, 2H)
        act = mlp_act_forward(config, fc)  # gelu or swiglu, (B, T, H)
        mlp_proj = linear_forward(act, p[h + "mlp.c_proj.weight"], p.get(h + "mlp.c_proj.bias"))
        resid_2 = residual_forward(resid_1, mlp_proj)
        named = {"ln_1": ln_1, "qkv": qkv, "rope": rope, "attn": attn, "attn_proj": attn_proj, "resid_1": resid_1,
                 "ln_2": ln_2, "fc": fc, config.mlp: act, "mlp_proj": mlp_proj, "resid_2": resid_2}  # fmt: skip
        for name in block_activations(config):  # the contract's names for this config, in order
            acts[h + name] = named[name]
        acts.update({h + "ln_1." + stat: value for stat, value in saved_1.items()})  # mean (LayerNorm), rstd
        acts.update({h + "ln_2." + stat: value for stat, value in saved_2.items()})
        x = resid_2

    ln_f, saved_f = norm_forward(config, x, p["ln_f.weight"], p.get("ln_f.bias"))
    acts.update({"ln_f." + stat: value for stat, value in saved_f.items()})
    head = p["wte.weight"] if config.tied_head else p["lm_head.weight"]  # (V, C)
    logits = lm_head_forward(ln_f, head)  # (B, T, V)
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
    kind is read from it (probabilities for naive, log-sum-exp for tiled). A backward of a
    tensor the config does not have returns None, and is dropped at the end.
    """
    if "probs" not in acts:
        raise ValueError("gpt2_backward needs the activations of a forward pass that was given targets")
    p = params
    NH, NKV = config.n_head, config.kv_heads
    bias = config.bias
    grads: dict[str, np.ndarray | None] = {}

    dlogits = crossentropy_backward(acts["probs"], acts["targets"])  # (B, T, V)
    head = p["wte.weight"] if config.tied_head else p["lm_head.weight"]
    dln_f, dhead = lm_head_backward(dlogits, acts["ln_f"], head)
    x_last = acts[f"h.{config.n_layer - 1}.resid_2"]  # the input of ln_f
    dx, grads["ln_f.weight"], grads["ln_f.bias"] = norm_backward(
        config, dln_f, x_last, p["ln_f.weight"], _saved(acts, "ln_f")
    )
    for i in reversed(range(config.n_layer)):
        h = f"h.{i}."
        x_in = acts[f"h.{i - 1}.resid_2"] if i > 0 else acts["embed"]
        # resid_2 = resid_1 + mlp_proj
        dresid_1, dmlp_proj = residual_backward(dx)
        dact, grads[h + "mlp.c_proj.weight"], grads[h + "mlp.c_proj.bias"] = linear_backward(
            dmlp_proj, acts[h + config.mlp], p[h + "mlp.c_proj.weight"], bias
        )
        dfc = mlp_act_backward(config, dact, acts[h + "fc"])  # through gelu or swiglu
        dln_2, grads[h + "mlp.c_fc.weight"], grads[h + "mlp.c_fc.bias"] = linear_backward(
            dfc, acts[h + "ln_2"], p[h + "mlp.c_fc.weight"], bias
        )
        dresid_1_ln, grads[h + "ln_2.weight"], grads[h + "ln_2.bias"] = norm_backward(
            config, dln_2, acts[h + "resid_1"], p[h + "ln_2.weight"], _saved(acts, h + "ln_2")
        )
        dresid_1 = dresid_1 + dresid_1_ln
        # resid_1 = x_in + attn_proj
        dx_in, dattn_proj = residual_backward(dresid_1)
        dattn, grads[h + "attn.c_proj.weight"], grads[h + "attn.c_proj.bias"] = linear_backward(
            dattn_proj, acts[h + "attn"], p[h + "attn.c_proj.weight"], bias
        )
        att_in = acts[h + "rope"] if config.position == "rope" else acts[h + "qkv"]  # what attention read
        if h + "att" in acts:
            datt_in = attention_backward(dattn, att_in, acts[h + "att"], NH, n_kv_head=NKV)
        else:
            datt_in = attention_backward_tiled(
                dattn, att_in, acts[h + "attn"], acts[h + "att.lse"], NH, block_size, n_kv_head=NKV
            )
        if config.position == "rope":  # rope = RoPE(qkv): rotate the gradient back
            dqkv = rope_backward(datt_in, NH, NKV, config.rope_theta)
        else:
            dqkv = datt_in
        dln_1, grads[h + "attn.c_attn.weight"], grads[h + "attn.c_attn.bias"] = linear_backward(
            dqkv, acts[h + "ln_1"], p[h + "attn.c_attn.weight"], bias
        )
        dx_in_ln, grads[h + "ln_1.weight"], grads[h + "ln_1.bias"] = norm_backward(
            config, dln_1, x_in, p[h + "ln_1.weight"], _saved(acts, h + "ln_1")
        )
        dx = dx_in + dx_in_ln

    if config.tied_head:
        # tied: the wte gradient is the head's term plus the embedding's scatter-add (accumulated into it)
        dwte_head = dhead
    else:
        # untied: lm_head gets the head's term, wte only the embedding's scatter-add
        grads["lm_head.weight"], dwte_head = dhead, None
    if config.position == "learned":
        grads["wte.weight"], grads["wpe.weight"] = embedding_backward(
            dx, acts["idx"], config.vocab_size, config.n_ctx, dwte=dwte_head
        )
    else:  # rope: no wpe, so no dwpe
        grads["wte.weight"], _ = embedding_backward(dx, acts["idx"], config.vocab_size, None, dwte=dwte_head)
    return {name: grads[name] for name in params}  # in the params' order; the Nones are not params
