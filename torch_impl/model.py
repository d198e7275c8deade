"""GPT-2 in PyTorch, in one file: the model, its weights in and out, and generation.

The network, with B = batch, T = sequence length, C = n_embd, NH = n_head, HS = C // NH,
V = vocab_size, L = n_layer:

    x = wte[idx] + wpe[0:T]                                   (B, T, C)   "embed"
    for each of the L blocks:
        x = x + attn(ln_1(x))                                 (B, T, C)   "resid_1"
        x = x + mlp(ln_2(x))                                  (B, T, C)   "resid_2"
    logits = ln_f(x) @ wte.T                                  (B, T, V)   the head is tied to wte

    attn(a): qkv = a @ W_attn + b        (B, T, 3C), split into q, k, v and into NH heads of HS
             y = softmax(q k^T / sqrt(HS), causal) v          (B, NH, T, HS), heads merged -> (B, T, C)
             y @ W_proj + b                                   (B, T, C)
    mlp(m):  gelu_tanh(m @ W_fc + b) @ W_proj + b             (B, T, 4C) -> (B, T, C)

The variants (weights/config.py, docs/variants.md) change a few of these lines; GPT-2 is the default:

    position "rope"    no wpe; q and k rotated after the qkv projection: each pair of channels
                       (i, i + HS/2) of a head at absolute position t turns by t * theta_i,
                       theta_i = rope_theta^(-2i/HS) (`rope_tables`, `apply_rope`)
    norm "rmsnorm"     ln_1, ln_2, ln_f are x / sqrt(mean(x^2) + eps) * w (`RMSNorm`)
    mlp "swiglu"       h = m @ W_fc (B, T, 2H): gate a = h[..., :H], up u = h[..., H:];
                       mlp(m) = (silu(a) * u) @ W_proj, hidden width H = config.hidden
    n_kv_head NKV      qkv (B, T, (NH + 2 NKV) HS): NH query heads, NKV key and NKV value heads;
                       query head h reads key/value head h // (NH / NKV)
    bias=False         no bias in any nn.Linear and none in LayerNorm
    tied_head=False    logits = ln_f(x) @ lm_head.T with a (V, C) matrix of its own

Weights. The shared checkpoint (`weights/`) stores the four projection matrices of a block as
Conv1D does, (in, out), and computes x @ W + b. `nn.Linear` stores (out, in) and computes
x @ W.T + b, so every one of them is transposed on the way in (`from_params`) and on the way
out (`to_params`, and the gradients in `torch_impl.contract`). `attn.c_proj` is square, so a
missed transpose would pass every shape check: the tests compare values. An untied head's
`lm_head.weight` is (V, C) like wte (and like nn.Linear's weight): it is copied as it is.

Parameter names. `model.named_parameters()` yields exactly the canonical names of
`weights.layout.param_shapes(config)` ("wte.weight", "h.3.attn.c_proj.weight", ...,
"lm_head.weight" when untied), in that order, so the mapping is one name to one name; only the
layout of the (C, ·) projection matrices differs.

Vocabulary padding. `padded_vocab_size` (e.g. 50304 = 393 * 128 instead of 50257) gives the
head's matrix (wte when tied, lm_head when untied) extra rows so the head matmul has a
GPU-friendly shape. The pad rows start at zero, are never looked up (ids are checked to be
< vocab_size), and their logits are cut off before anything sees them, so they are never scored
or sampled and get exactly zero gradient.

The loss. `model(idx, targets)` computes the (B, T, V) logits and F.cross_entropy over them in float32
(loss_impl "full", the default), or, with `set_loss_impl("chunked")`, the head and the cross-entropy
together over chunks of rows without ever holding all the logits (torch_impl/chunked_loss.py; for
training at large B*T: the same loss and gradients to rounding); "chunked-triton" is the same with
each chunk's softmax and gradient in one Triton kernel (torch_impl/cross_entropy_triton.py).

The MLP. `set_mlp_impl("triton")` runs a GELU MLP through a backward written out by hand, whose GELU
derivative and c_fc bias gradient are one Triton kernel (torch_impl/mlp_triton.py; bf16 training on a
GPU); "torch", the default, is the three lines of MLP.forward and autograd. Both compute the same
arithmetic up to summation order; activations are recorded (`acts`) by the plain lines only.

The LayerNorms. `set_norm_impl("triton")` has training forwards (no cache, no `acts`) run each residual
add and the LayerNorm after it as one op (Block.forward_residual_norms), whose backward is one Triton
kernel (torch_impl/layernorm_triton.py; bf16 autocast when compiled, as the trainer runs it; LayerNorm
models only). The math is Block.forward's: x + attn(ln_1(x)), then + mlp(ln_2(.)), every add followed by
the next LayerNorm; the c_proj biases are added in that op, with the residual, and their gradients are
summed in its kernel.

q, k and v. `set_qkv_impl("triton")` has training forwards compute c_attn and the split into heads as one
op whose backward gathers dq, dk, dv back into c_attn's output gradient and sums its bias gradient in one
Triton kernel (torch_impl/qkv_triton.py; bf16 training on a GPU). The math is the plain lines'. Measured
on an H200 the compiled step is slower with it (docs/training.md), so "torch" stays the default.

No dropout: GPT-2's 0.1 dropout is a training choice that conformance runs switch off anyway;
leaving it out keeps every forward pass deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from torch_impl.chunked_loss import DEFAULT_CHUNK_ROWS, chunked_linear_cross_entropy
from torch_impl.layernorm_triton import residual_layernorm
from torch_impl.mlp_triton import fused_mlp
from torch_impl.qkv_triton import qkv_projection
from weights import GPT2Config, param_shapes, tensor_kind, validate_params
from weights.layout import RESIDUAL_PROJECTIONS

ATTENTION_KINDS = ("math", "sdpa")
LOSS_IMPLS = ("full", "chunked", "chunked-triton")
MLP_IMPLS = ("torch", "triton")
NORM_IMPLS = ("torch", "triton")
QKV_IMPLS = ("torch", "triton")

# The four nn.Linear layers of a block; their canonical (Conv1D) weights are stored (in, out).
LINEAR_LAYERS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
CONV1D_WEIGHTS = tuple(f"{layer}.weight" for layer in LINEAR_LAYERS)

# The (V, C) matrices indexed by token id: the embedding, and the untied head. One of them is the
# head (wte when tied); that one carries the pad rows of padded_vocab_size.
VOCAB_MATRICES = ("wte.weight", "lm_head.weight")

INIT_STD = 0.02  # GPT-2's initializer_range

PARAM_DTYPES = (torch.float32, torch.float64)


# ----------------------------------------------------------------------------- input checks


def _compiling() -> bool:
    """True while torch.compile traces: the value checks below need a host sync, so they are skipped."""
    return torch.compiler.is_compiling()


def check_idx(idx: torch.Tensor, config: GPT2Config, start: int = 0, what: str = "idx", device=None) -> None:
    """Raise ValueError unless idx is an integer (B, T) tensor of ids in [0, V) that fits the context.

    `start` is the position of idx[:, 0] (non-zero when continuing a KV-cached sequence);
    `device`, when given, is where idx must be (the model's device).
    The messages are worded as the NumPy reference words them.
    """
    if not isinstance(idx, torch.Tensor):
        raise ValueError(f"{what}: token ids must be a torch.Tensor, got {type(idx).__name__}")
    if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
        raise ValueError(f"{what}: token ids must be an integer array, got dtype {idx.dtype}")
    if idx.dim() != 2:
        raise ValueError(f"{what}: expected shape (B, T), got {tuple(idx.shape)}")
    B, T = idx.shape
    if B < 1 or T < 1:
        raise ValueError(f"{what}: empty batch or sequence, shape {tuple(idx.shape)}")
    if start + T > config.n_ctx:
        if start == 0:
            raise ValueError(f"{what}: sequence length T={T} exceeds n_ctx={config.n_ctx}")
        raise ValueError(f"{what}: positions {start}..{start + T - 1} exceed n_ctx={config.n_ctx}")
    if device is not None and idx.device != device:
        raise ValueError(f"{what}: on {idx.device}, but the model is on {device}")
    if _compiling():
        return
    bad = (idx < 0) | (idx >= config.vocab_size)
    if bad.any():
        b, t = bad.nonzero()[0].tolist()
        raise ValueError(
            f"{what}: token id {int(idx[b, t])} at [{b}, {t}] is outside [0, vocab_size={config.vocab_size})"
        )


def check_targets(targets: torch.Tensor, idx: torch.Tensor, config: GPT2Config) -> None:
    """Raise ValueError unless targets is an integer tensor shaped like idx, each value in [0, V) or -1
    (ignored), with at least one position not ignored (else the mean loss is 0/0)."""
    if not isinstance(targets, torch.Tensor):
        raise ValueError(f"targets: must be a torch.Tensor, got {type(targets).__name__}")
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise ValueError(f"targets: must be an integer array, got dtype {targets.dtype}")
    if targets.shape != idx.shape:
        raise ValueError(f"targets: shape {tuple(targets.shape)} does not match idx shape {tuple(idx.shape)}")
    if targets.device != idx.device:
        raise ValueError(f"targets: on {targets.device}, but idx is on {idx.device}")
    if _compiling():
        return
    bad = (targets < -1) | (targets >= config.vocab_size)
    if bad.any():
        b, t = bad.nonzero()[0].tolist()
        raise ValueError(
            f"targets: id {int(targets[b, t])} at [{b}, {t}] is outside [0, vocab_size={config.vocab_size})"
            " and is not the ignore index -1"
        )
    if bool((targets == -1).all()):
        raise ValueError("targets: every position is -1 (ignored), so the mean loss is undefined")


def _record(acts: dict | None, name: str, value: torch.Tensor) -> None:
    """Keep a named intermediate activation when the caller asked for them (acts is a dict)."""
    if acts is not None:
        acts[name] = value


# ----------------------------------------------------------------------------- attention


def causal_mask(Tq: int, Tk: int, device) -> torch.Tensor:
    """(Tq, Tk) bool, True where query i may attend to key j.

    The Tq queries are the last Tq of the Tk positions (Tq < Tk when a KV cache holds the
    earlier ones), so query i sits at position Tk - Tq + i and sees keys 0 .. Tk - Tq + i.
    """
    return torch.ones(Tq, Tk, dtype=torch.bool, device=device).tril(diagonal=Tk - Tq)


def attention_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Explicit causal attention. q (B, NH, Tq, HS), k and v (B, NKV, Tk, HS) -> (B, NH, Tq, HS).

    att = softmax(q k^T / sqrt(HS) with future keys set to -inf); y = att v.
    With NKV < NH (grouped-query attention) each key/value head is repeated for its group of
    NH / NKV consecutive query heads, so query head h reads key/value head h // (NH / NKV).
    """
    group = q.size(1) // k.size(1)
    if group > 1:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (B, NH, Tk, HS)
    Tq, Tk, HS = q.size(-2), k.size(-2), q.size(-1)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(HS))  # (B, NH, Tq, Tk)
    att = att.masked_fill(~causal_mask(Tq, Tk, q.device), float("-inf"))
    att = F.softmax(att, dim=-1)
    return att @ v


def attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The same attention through F.scaled_dot_product_attention (flash / memory-efficient kernels on GPU).

    `is_causal=True` masks with the top-left triangle, right only when Tq == Tk. One new query
    against a cache sees every key (no mask); several new queries need the explicit mask.
    Grouped-query attention (k, v with NKV < NH heads) goes to SDPA as it is, with `enable_gqa=True`:
    SDPA then pairs query head h with key/value head h // (NH / NKV), as `attention_math`'s
    repeat_interleave does (PyTorch defines enable_gqa as that repeat_interleave), and a fused kernel
    that supports it skips materialising the repeated keys. Needs torch >= 2.5.
    """
    Tq, Tk, HS = q.size(-2), k.size(-2), q.size(-1)
    scale = 1.0 / math.sqrt(HS)
    gqa = {"enable_gqa": True} if q.size(1) != k.size(1) else {}
    if Tq == Tk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, **gqa)
    if Tq == 1:
        return F.scaled_dot_product_attention(q, k, v, scale=scale, **gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(Tq, Tk, q.device), scale=scale, **gqa)


ATTENTION_FUNCTIONS = {"math": attention_math, "sdpa": attention_sdpa}


# ----------------------------------------------------------------------------- rotary positions


def rope_tables(
    config: GPT2Config, start: int, T: int, device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (T, HS/2) of the angles t * theta_i at the absolute positions t = start .. start + T - 1.

    theta_i = rope_theta^(-2i/HS), i = 0 .. HS/2 - 1. The angles are computed in float64 and only cos
    and sin are rounded to `dtype`: t * theta_0 = t reaches n_ctx - 1 radians, and a float32 angle
    that large is itself off by up to t * 2^-24 (6e-5 rad at t = 1023).
    """
    HS = config.head_size
    i = torch.arange(HS // 2, dtype=torch.float64, device=device)
    theta = config.rope_theta ** (-2.0 * i / HS)  # (HS/2,)
    t = torch.arange(start, start + T, dtype=torch.float64, device=device)  # (T,)
    angles = torch.outer(t, theta)  # (T, HS/2)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate every head of x (B, heads, T, HS) by position, "rotate half" convention (GPT-NeoX, HF Llama).

    Channel i is paired with channel i + HS/2, and the pair turns by the angle t * theta_i:
        out[i]        = x[i] cos - x[i + HS/2] sin
        out[i + HS/2] = x[i + HS/2] cos + x[i] sin
    """
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # bf16 under autocast
    x1, x2 = x.chunk(2, dim=-1)  # channels [0, HS/2) and [HS/2, HS)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class KVCache:
    """Keys and values of every position processed so far, per layer: what cached generation reuses.

    k[layer], v[layer]: (B, NKV, max_len, HS) (NKV = NH for GPT-2), allocated on first use in the
    compute dtype (bf16 under autocast). With rotary positions the keys are stored already rotated
    (each at its own absolute position), so they are never rotated again. `length` positions are
    filled; the model advances it after each step.
    """

    def __init__(self, n_layer: int, max_len: int):
        self.max_len = max_len
        self.length = 0
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, NKV, T, HS) of the new positions; return those of all positions (B, NKV, length + T, HS)."""
        B, NKV, T, HS = k.shape
        end = self.length + T
        if end > self.max_len:
            raise ValueError(f"KVCache: {end} positions do not fit in a cache of max_len={self.max_len}")
        if self.k[layer] is None:
            self.k[layer] = k.new_zeros(B, NKV, self.max_len, HS)
            self.v[layer] = v.new_zeros(B, NKV, self.max_len, HS)
        self.k[layer][:, :, self.length : end] = k
        self.v[layer][:, :, self.length : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


# ----------------------------------------------------------------------------- layers


class RMSNorm(nn.Module):
    """x / rms(x) * weight over the channels, rms(x) = sqrt(mean(x^2) + eps): no mean, no bias."""

    def __init__(self, C: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rstd = torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)  # (..., 1)
        return x * rstd * self.weight


def make_norm(config: GPT2Config) -> nn.Module:
    """ln_1 / ln_2 / ln_f: GPT-2's LayerNorm (nn.LayerNorm divides by C: biased variance, as GPT-2
    does; no bias with bias=False), or RMSNorm. eps is config.layer_norm_eps for both."""
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, config.layer_norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.norm_bias)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, T, HS) -> (B, T, heads * HS)."""
    B, nh, T, HS = x.shape
    return x.transpose(1, 2).reshape(B, T, nh * HS)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPT2Config, layer: int):
        super().__init__()
        C = config.n_embd
        self.n_head, self.n_kv_head, self.head_size = config.n_head, config.kv_heads, config.head_size
        self.layer = layer
        self.attention = "sdpa"  # set by GPT2
        self.qkv_impl = "torch"  # or "triton": GPT2.set_qkv_impl
        # weight ((NH + 2 NKV) HS, C) = canonical (C, (NH + 2 NKV) HS) transposed; GPT-2: (3C, C)
        self.c_attn = nn.Linear(C, config.qkv_width, bias=config.bias)
        self.c_proj = nn.Linear(C, C, bias=config.bias)  # weight (C, C) = canonical (C, C) transposed

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        acts: dict | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        proj_bias: bool = True,
    ) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C). With a cache, x holds the T positions after the cached ones;
        `rope` is (cos, sin) of rope_tables for those positions (None: learned positions). proj_bias=False
        leaves c_proj's bias out (the caller adds it: Block.forward_residual_norms)."""
        B, T, C = x.shape
        NH, NKV, HS = self.n_head, self.n_kv_head, self.head_size
        p = f"h.{self.layer}."
        if self.qkv_impl == "triton" and cache is None and acts is None:
            # the lines below as one op, its backward written out (torch_impl/qkv_triton.py)
            q, k, v = qkv_projection(x, self.c_attn.weight, self.c_attn.bias, NH, NKV)
        else:
            qkv = self.c_attn(x)  # (B, T, (NH + 2 NKV) HS); GPT-2: (B, T, 3C)
            _record(acts, p + "qkv", qkv)
            q, k, v = qkv.split([NH * HS, NKV * HS, NKV * HS], dim=2)
            q = q.view(B, T, NH, HS).transpose(1, 2)  # (B, NH, T, HS)
            k = k.view(B, T, NKV, HS).transpose(1, 2)  # (B, NKV, T, HS)
            v = v.view(B, T, NKV, HS).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)  # v is not rotated
            if acts is not None:
                _record(acts, p + "rope", torch.cat([_merge_heads(q), _merge_heads(k), _merge_heads(v)], dim=2))
        if cache is not None:
            k, v = cache.append(self.layer, k, v)  # (B, NKV, Tk, HS), Tk = cached + T; keys rotated
        y = ATTENTION_FUNCTIONS[self.attention](q, k, v)  # (B, NH, T, HS)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads merged
        _record(acts, p + "attn", y)
        y = self.c_proj(y) if proj_bias else F.linear(y, self.c_proj.weight)
        _record(acts, p + "attn_proj", y)
        return y


class MLP(nn.Module):
    def __init__(self, config: GPT2Config, layer: int):
        super().__init__()
        C = config.n_embd
        self.layer = layer
        self.swiglu = config.mlp == "swiglu"
        self.hidden = config.hidden  # H: 4C for GPT-2
        # weight (H, C) = canonical (C, H) transposed; swiglu: (2H, C), the gate's H rows, then the up projection's
        self.c_fc = nn.Linear(C, config.fc_width, bias=config.bias)
        self.c_proj = nn.Linear(self.hidden, C, bias=config.bias)  # weight (C, H) = canonical (H, C) transposed
        self.impl = "torch"  # or "triton": GPT2.set_mlp_impl

    def forward(self, x: torch.Tensor, acts: dict | None = None, proj_bias: bool = True) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C) through a hidden layer of width H. proj_bias=False leaves c_proj's bias
        out (the caller adds it: Block.forward_residual_norms)."""
        if self.impl == "triton" and acts is None:  # the same lines, the backward fused (torch_impl/mlp_triton.py)
            b_proj = self.c_proj.bias if proj_bias else None
            return fused_mlp(x, self.c_fc.weight, self.c_fc.bias, self.c_proj.weight, b_proj)
        p = f"h.{self.layer}."
        h = self.c_fc(x)  # (B, T, H); swiglu: (B, T, 2H)
        _record(acts, p + "fc", h)
        if self.swiglu:
            gate, up = h.split(self.hidden, dim=-1)  # h[..., :H] and h[..., H:]
            h = F.silu(gate) * up  # silu(a) = a * sigmoid(a)
            _record(acts, p + "swiglu", h)
        else:
            # GELU, tanh form: 0.5 h (1 + tanh(sqrt(2/pi) (h + 0.044715 h^3))). Not the erf form.
            h = F.gelu(h, approximate="tanh")
            _record(acts, p + "gelu", h)
        h = self.c_proj(h) if proj_bias else F.linear(h, self.c_proj.weight)  # (B, T, C)
        _record(acts, p + "mlp_proj", h)
        return h


class Block(nn.Module):
    def __init__(self, config: GPT2Config, layer: int):
        super().__init__()
        self.layer = layer
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config, layer)

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        acts: dict | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C): pre-norm attention, then pre-norm MLP, each added to the residual."""
        p = f"h.{self.layer}."
        a = self.ln_1(x)
        _record(acts, p + "ln_1", a)
        x = x + self.attn(a, cache, acts, rope)
        _record(acts, p + "resid_1", x)
        m = self.ln_2(x)
        _record(acts, p + "ln_2", m)
        x = x + self.mlp(m, acts)
        _record(acts, p + "resid_2", x)
        return x

    def forward_residual_norms(
        self,
        x: torch.Tensor,
        a: torch.Tensor,
        next_norm: nn.Module,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """forward's math for training under --norm-impl triton: x (B, T, C) and a = ln_1(x), computed
        already -> (the block's output x', next_norm(x')), where next_norm is the next block's ln_1 or
        ln_f. Each residual add and the LayerNorm after it are one op (torch_impl/layernorm_triton.py),
        which adds c_proj's bias too (in float32, with the residual) and sums its gradient."""
        attn = self.attn(a, None, None, rope, proj_bias=False)  # c_proj(y) less its bias
        x, m = residual_layernorm(x, attn, self.ln_2, self.attn.c_proj.bias)  # x + attn(a), ln_2 of it
        mlp = self.mlp(m, proj_bias=False)
        return residual_layernorm(x, mlp, next_norm, self.mlp.c_proj.bias)  # x + mlp(m), next_norm of it


# ----------------------------------------------------------------------------- the model


class GPT2(nn.Module):
    """GPT-2, or one of its variants (weights/config.py). See the module docstring for the math and the
    weight layout."""

    def __init__(
        self,
        config: GPT2Config,
        attention: str = "sdpa",
        padded_vocab_size: int | None = None,
        loss_impl: str = "full",
    ):
        super().__init__()
        if not isinstance(config, GPT2Config):
            raise ValueError(f"config must be a weights.GPT2Config, got {type(config).__name__}")
        Vp = config.vocab_size if padded_vocab_size is None else padded_vocab_size
        if not isinstance(Vp, int) or isinstance(Vp, bool) or Vp < config.vocab_size:
            raise ValueError(
                f"padded_vocab_size must be an int >= vocab_size ({config.vocab_size}), got {padded_vocab_size!r}"
            )
        self.config = config
        self.padded_vocab_size = Vp
        C, tied = config.n_embd, config.tied_head
        # Registration order = the canonical order of weights.layout: wte, wpe, h.*, ln_f, lm_head.
        self.wte = nn.Embedding(Vp if tied else config.vocab_size, C)  # token embedding (and the tied head)
        if config.position == "learned":
            self.wpe = nn.Embedding(config.n_ctx, C)  # position embedding; rope has none
        self.h = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        self.ln_f = make_norm(config)
        if not tied:
            self.lm_head = nn.Linear(C, Vp, bias=False)  # weight (Vp, C): the canonical (V, C) plus pad rows
        self.set_attention(attention)
        self.set_loss_impl(loss_impl)
        self.mlp_impl = "torch"
        self.norm_impl = "torch"
        self.qkv_impl = "torch"
        if self.wte.weight.device.type != "meta":  # built on "meta": shapes only, call reset_parameters later
            self.reset_parameters()

    # ------------------------------------------------------------------ set-up
    @property
    def head_weight(self) -> torch.Tensor:
        """The output head's (Vp, C) matrix: wte's when tied, lm_head's when untied; it holds the pad rows."""
        return self.wte.weight if self.config.tied_head else self.lm_head.weight

    @property
    def attention(self) -> str:
        return self._attention

    def set_attention(self, attention: str) -> None:
        """Choose "math" (explicit masked softmax) or "sdpa" (F.scaled_dot_product_attention)."""
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}")
        self._attention = attention
        for block in self.h:
            block.attn.attention = attention

    def set_loss_impl(self, loss_impl: str, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> None:
        """How forward(idx, targets) computes the loss: "full" (the (B, T, V) logits, then F.cross_entropy;
        the logits are returned), "chunked" (the head and the cross-entropy in row chunks of
        `chunk_rows`, torch_impl/chunked_loss.py: the logits are never all held, None is returned for them)
        or "chunked-triton" (the same, each chunk's softmax and gradient in one Triton kernel)."""
        if loss_impl not in LOSS_IMPLS:
            raise ValueError(f"loss_impl must be one of {LOSS_IMPLS}, got {loss_impl!r}")
        if not isinstance(chunk_rows, int) or isinstance(chunk_rows, bool) or chunk_rows < 1:
            raise ValueError(f"chunk_rows must be an int >= 1, got {chunk_rows!r}")
        self.loss_impl, self.loss_chunk_rows = loss_impl, chunk_rows

    def set_mlp_impl(self, mlp_impl: str) -> None:
        """How each block's MLP runs: "torch" (MLP.forward's lines) or "triton" (its backward with GELU's
        derivative and c_fc's bias gradient in one Triton kernel, torch_impl/mlp_triton.py; GELU MLPs only)."""
        if mlp_impl not in MLP_IMPLS:
            raise ValueError(f"mlp_impl must be one of {MLP_IMPLS}, got {mlp_impl!r}")
        if mlp_impl == "triton" and self.config.mlp != "gelu":
            raise ValueError(f"mlp_impl 'triton' is for GELU MLPs; this model's MLP is {self.config.mlp!r}")
        self.mlp_impl = mlp_impl
        for block in self.h:
            block.mlp.impl = mlp_impl

    def set_qkv_impl(self, qkv_impl: str) -> None:
        """How each block's attention computes q, k, v: "torch" (c_attn, the split into heads and autograd) or
        "triton" (the backward's gather of dq, dk, dv and c_attn's bias gradient in one Triton kernel,
        torch_impl/qkv_triton.py). Forwards with a cache or `acts` run the torch lines either way."""
        if qkv_impl not in QKV_IMPLS:
            raise ValueError(f"qkv_impl must be one of {QKV_IMPLS}, got {qkv_impl!r}")
        self.qkv_impl = qkv_impl
        for block in self.h:
            block.attn.qkv_impl = qkv_impl

    def set_norm_impl(self, norm_impl: str) -> None:
        """How training forwards run the LayerNorms: "torch" (Block.forward's lines) or "triton" (each
        residual add and the LayerNorm after it as one op whose backward is one Triton kernel,
        torch_impl/layernorm_triton.py; LayerNorm models only). Forwards with a cache or `acts` run
        Block.forward either way."""
        if norm_impl not in NORM_IMPLS:
            raise ValueError(f"norm_impl must be one of {NORM_IMPLS}, got {norm_impl!r}")
        if norm_impl == "triton" and self.config.norm != "layernorm":
            raise ValueError(f"norm_impl 'triton' is for LayerNorm models; this model's norm is {self.config.norm!r}")
        self.norm_impl = norm_impl

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2 init: weights and embeddings N(0, 0.02) (an untied lm_head too); the two projections back
        into the residual stream N(0, 0.02 / sqrt(2 L)); norm weights 1 (LayerNorm and RMSNorm), biases 0;
        pad rows 0."""
        proj_std = INIT_STD / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            kind = tensor_kind(name)
            if kind in ("ln_1.weight", "ln_2.weight", "ln_f.weight"):
                nn.init.ones_(p)
            elif kind.endswith(".bias"):
                nn.init.zeros_(p)
            elif kind in RESIDUAL_PROJECTIONS:
                nn.init.normal_(p, mean=0.0, std=proj_std)
            else:  # wte, wpe, attn.c_attn.weight, mlp.c_fc.weight, lm_head.weight
                nn.init.normal_(p, mean=0.0, std=INIT_STD)
        self.head_weight[self.config.vocab_size :].zero_()

    def num_params(self) -> int:
        """Parameter values the model really has (= weights.num_params(config)): a tied head counted once,
        an untied one in full, pad rows not at all (only the head's matrix has them)."""
        pad = (self.padded_vocab_size - self.config.vocab_size) * self.config.n_embd
        return sum(p.numel() for p in self.parameters()) - pad

    # ------------------------------------------------------------------ forward
    def forward_step(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        acts: dict | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, V) for idx (B, T); with a cache, idx continues the sequence it holds.

        With `acts` (a dict), every named activation of docs/contract.md is stored in it.
        With `last_only`, only the last position goes through ln_f and the head: (B, 1, V),
        all that generation needs (the head is the widest matmul of a small GPT-2).
        """
        x = self.final_hidden(idx, cache, acts, last_only)  # (B, T, C)
        # The head (wte when tied, lm_head when not) over all Vp rows (the padded shape is the fast one);
        # pad columns are cut off here, so they are never scored, never sampled, and send no gradient
        # back to the pad rows.
        logits = F.linear(x, self.head_weight)[..., : self.config.vocab_size]  # (B, T, V)
        _record(acts, "logits", logits)
        return logits

    def final_hidden(self, idx: torch.Tensor, cache: KVCache | None = None, acts=None, last_only=False) -> torch.Tensor:
        """ln_f's output (B, T, C) for idx (B, T) (B, 1, C with `last_only`): everything before the head."""
        start = 0 if cache is None else cache.length
        check_idx(idx, self.config, start, device=self.wte.weight.device)
        T = idx.size(1)
        rope = None
        if self.config.position == "learned":
            pos = torch.arange(start, start + T, device=idx.device)  # (T,)
            x = self.wte(idx) + self.wpe(pos)  # (B, T, C)
        else:  # rotary: no table; q and k of the positions start .. start + T - 1 are rotated in attention
            x = self.wte(idx)
            rope = rope_tables(self.config, start, T, idx.device, self.wte.weight.dtype)  # (T, HS/2) each
        _record(acts, "embed", x)
        if self.norm_impl == "triton" and cache is None and acts is None and not last_only:
            a = self.h[0].ln_1(x)  # (B, T, C); every later LayerNorm follows a residual add
            for i, block in enumerate(self.h):
                next_norm = self.h[i + 1].ln_1 if i + 1 < len(self.h) else self.ln_f
                x, a = block.forward_residual_norms(x, a, next_norm, rope)
            return a  # ln_f's output
        for block in self.h:
            x = block(x, cache, acts, rope)
        if cache is not None:
            cache.length += T
        if last_only:
            x = x[:, -1:, :]  # (B, 1, C): ln_f and the head act on each position separately
        x = self.ln_f(x)
        _record(acts, "ln_f", x)
        return x

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """idx (B, T) -> (logits (B, T, V), loss or None); with targets and a chunked loss_impl,
        (None, loss): the logits are never all held (set_loss_impl).

        loss = mean cross-entropy over positions whose target is not -1 (computed in float32 at least).
        """
        if targets is not None and self.loss_impl != "full":
            check_targets(targets, idx, self.config)
            h = self.final_hidden(idx)  # (B, T, C)
            loss = chunked_linear_cross_entropy(
                h, self.head_weight, targets, self.config.vocab_size, self.loss_chunk_rows,
                rows_kernel="triton" if self.loss_impl == "chunked-triton" else "torch",
            )  # fmt: skip
            return None, loss
        logits = self.forward_step(idx)
        if targets is None:
            return logits, None
        check_targets(targets, idx, self.config)
        flat = logits.reshape(-1, logits.size(-1))
        if flat.dtype in (torch.float16, torch.bfloat16):
            flat = flat.float()
        loss = F.cross_entropy(flat, targets.reshape(-1).long(), ignore_index=-1)
        return logits, loss

    def forward_with_activations(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """The named intermediate activations of docs/contract.md (embed, h.{i}.*, ln_f, logits)."""
        acts: dict[str, torch.Tensor] = {}
        self.forward_step(idx, acts=acts)
        return acts

    # ------------------------------------------------------------------ weights in and out
    @classmethod
    def from_params(
        cls,
        params: Mapping[str, np.ndarray],
        config: GPT2Config,
        device="cpu",
        dtype: torch.dtype = torch.float32,
        attention: str = "sdpa",
        padded_vocab_size: int | None = None,
    ) -> GPT2:
        """A model holding exactly `params` (canonical dict of weights/, any layout of `config`), Conv1D
        weights transposed in; the pad rows of the head's matrix zero."""
        validate_params(params, config, what="GPT2.from_params")
        if dtype not in PARAM_DTYPES:
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype} (use autocast for bf16)")
        with torch.device("meta"):  # no time spent on an init that is overwritten at once
            model = cls(config, attention=attention, padded_vocab_size=padded_vocab_size)
        model = model.to(dtype).to_empty(device=device)  # dtype first: free on "meta"
        V = config.vocab_size
        with torch.no_grad():
            for name, p in model.named_parameters():
                value = np.asarray(params[name])
                if tensor_kind(name) in CONV1D_WEIGHTS:
                    value = value.T  # (in, out) -> nn.Linear's (out, in)
                src = torch.from_numpy(np.ascontiguousarray(value))
                if name in VOCAB_MATRICES:  # (V, C) as stored; the head's matrix has Vp - V pad rows
                    p[:V].copy_(src)
                    p[V:].zero_()
                else:
                    p.copy_(src)
        return model

    def to_params(self) -> dict[str, np.ndarray]:
        """The canonical params dict (model dtype: float32 or float64), pad rows dropped."""
        return to_canonical_layout(self, {n: p.detach() for n, p in self.named_parameters()})

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Extend idx (B, T0) by max_new_tokens ids -> (B, T0 + max_new_tokens).

        temperature 0 picks the most likely id (greedy); temperature > 0 samples from
        softmax(logits / temperature), restricted to the top_k most likely ids if top_k is given,
        drawing from `generator` (on the model's device) when one is passed.

        With use_cache, the prompt is run once and each later step runs only the newest token
        against the cached keys and values: the same tokens as without the cache, in O(T) per step.
        Past n_ctx tokens, the model sees the last n_ctx (a sliding window); every position shifts
        then, so those steps recompute the window whether or not the cache is on.
        """
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
        V = self.config.vocab_size
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= V):
            raise ValueError(f"top_k must be None or an int in [1, vocab_size={V}], got {top_k!r}")
        check_idx(idx, self.config, device=self.wte.weight.device)
        n_ctx = self.config.n_ctx
        out = idx.long()
        cache = KVCache(self.config.n_layer, min(out.size(1) + max_new_tokens, n_ctx)) if use_cache else None
        for _ in range(max_new_tokens):
            if cache is not None and out.size(1) <= n_ctx:
                fresh = out if cache.length == 0 else out[:, cache.length :]  # the prompt, then 1 token
                logits = self.forward_step(fresh, cache, last_only=True)
            else:
                logits = self.forward_step(out[:, -n_ctx:], last_only=True)
            next_id = sample_next_token(logits[:, -1, :], temperature, top_k, generator)  # (B, 1)
            out = torch.cat([out, next_id], dim=1)
        return out


def sample_next_token(
    logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None
) -> torch.Tensor:
    """logits (B, V) of the last position -> next ids (B, 1): argmax, or a draw at `temperature` from the top_k."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        kth_best = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


def to_canonical_layout(model: GPT2, tensors: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Model-layout tensors (parameters or their gradients, by parameter name) -> the canonical
    numpy dict: Conv1D weights transposed back to (in, out), the head's pad rows dropped, canonical order."""
    out: dict[str, np.ndarray] = {}
    for name in param_shapes(model.config):
        value = tensors[name].detach().cpu().numpy()
        if tensor_kind(name) in CONV1D_WEIGHTS:
            value = value.T  # nn.Linear's (out, in) -> (in, out)
        if name in VOCAB_MATRICES:
            value = value[: model.config.vocab_size]
        out[name] = np.ascontiguousarray(value)
    return out
