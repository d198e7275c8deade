"""What `python -m conformance inspect` computes from one forward pass: four views, NumPy only, float64.

Every view reads the named activations of docs/contract.md (weights.layout.activation_names(config)),
which any backend with `activations()` returns, so that the same pictures can be drawn for any backend:

    activation_stats(x)                      -> Stats: mean, std, rms, min, max, outlier fraction of one activation
    attention_probs(qkv, n_head, n_kv_head)  -> (B, NH, T, T): each head's causal softmax, from h.{i}.qkv
                                                (h.{i}.rope with rotary positions)
    head_pattern(att)                        -> HeadPattern: how much one head looks at position 0, the previous
                                                token, itself, and how spread out it is (entropy)
    logit_lens(acts, params, config, top)    -> Lens per residual stream: each stream through ln_f and the head
    divergence(acts, ref_acts, config, ...)  -> max|a - b| / max|b| per activation in forward order, and where
                                                the two backends part (conformance/localize.py)

The math here is written out again on purpose (no backend imports another backend's math): the final
norm (LayerNorm or RMSNorm, per the config) and the head (tied to wte.weight, or lm_head.weight) for the
logit lens, and scaled dot-product softmax with the causal mask and the key/value head groups for the
attention maps. tests/conformance/test_look.py checks both against the reference's own numbers.

Shapes: B batch (1 for a prompt), T positions, C = n_embd, V = vocab_size, NH query heads, NKV key/value
heads, HS = C // NH head size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from conformance.localize import Divergence, localize
from weights import GPT2Config

# An element more than this many standard deviations from its activation's mean counts as an outlier.
# Under a Gaussian 2e-9 of the elements would be, so any visible fraction means heavy tails (the few
# huge channels of a trained GPT-2's residual stream show up here).
OUTLIER_SIGMAS = 6.0


# ----------------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class Stats:
    """The statistics of one activation over every element (all positions, all channels)."""

    mean: float
    std: float  # population standard deviation (ddof = 0)
    rms: float  # sqrt(mean(x^2)): the typical size, whatever the mean
    min: float
    max: float
    outliers: float  # fraction of the elements with |x - mean| > OUTLIER_SIGMAS * std

    def as_dict(self) -> dict[str, float]:
        return dict(mean=self.mean, std=self.std, rms=self.rms, min=self.min, max=self.max, outliers=self.outliers)


def activation_stats(x: np.ndarray) -> Stats:
    """x: any float array (B, T, width)  ->  its Stats, computed in float64."""
    x = np.asarray(x, dtype=np.float64)
    mean = float(x.mean())
    std = float(x.std())
    outliers = float(np.mean(np.abs(x - mean) > OUTLIER_SIGMAS * std)) if std > 0 else 0.0
    return Stats(mean, std, float(np.sqrt(np.mean(x * x))), float(x.min()), float(x.max()), outliers)


# ----------------------------------------------------------------------------------- attention maps
def attention_probs(qkv: np.ndarray, n_head: int, n_kv_head: int | None = None) -> np.ndarray:
    """The causal attention probabilities of every head, recomputed from what attention reads.

    qkv (B, T, (NH + 2 NKV) HS): h.{i}.qkv, or h.{i}.rope (q and k rotated) with rotary positions;
    [q: NH heads | k: NKV heads | v: NKV heads], head h of a part at channels h*HS:(h+1)*HS of that part.
    ->  att (B, NH, T, T) float64: att[b, h, t, s] = softmax_s(q_t . k_s / sqrt(HS)) over s <= t, 0 for s > t.
    Query head h reads key head h // (NH / NKV) (grouped-query attention; NKV = NH for GPT-2).
    """
    NH = n_head
    NKV = n_head if n_kv_head is None else n_kv_head
    qkv = np.asarray(qkv, dtype=np.float64)
    B, T, width = qkv.shape
    HS = width // (NH + 2 * NKV)
    q = qkv[..., : NH * HS].reshape(B, T, NH, HS).transpose(0, 2, 1, 3)  # (B, NH, T, HS)
    k = qkv[..., NH * HS : (NH + NKV) * HS].reshape(B, T, NKV, HS).transpose(0, 2, 1, 3)  # (B, NKV, T, HS)
    k = np.repeat(k, NH // NKV, axis=1)  # (B, NH, T, HS): query head h -> key head h // group
    scores = (q @ k.transpose(0, 1, 3, 2)) / math.sqrt(HS)  # (B, NH, T, T)
    future = np.triu(np.ones((T, T), dtype=bool), k=1)  # s > t: a position may not look ahead
    scores[..., future] = -np.inf
    scores -= scores.max(axis=-1, keepdims=True)  # every row sees its own position: the max is finite
    att = np.exp(scores)
    return att / att.sum(axis=-1, keepdims=True)


def attention_input_name(config: GPT2Config, layer: int) -> str:
    """The activation attention reads in `layer`: h.{i}.rope with rotary positions, else h.{i}.qkv."""
    return f"h.{layer}.rope" if config.position == "rope" else f"h.{layer}.qkv"


def attention_maps(acts: Mapping[str, np.ndarray], config: GPT2Config, layers) -> tuple[dict[int, np.ndarray], str]:
    """{layer: att (NH, T, T)} for the layers asked for (batch row 0), and where the numbers came from.

    The reference's naive attention keeps its probabilities ("h.{i}.att" in its acts, when asked for):
    those are used as they are. For any other backend they are recomputed here from the backend's own
    h.{i}.qkv / h.{i}.rope (attention_probs), in float64.
    """
    if all(f"h.{i}.att" in acts for i in layers):
        maps = {i: np.asarray(acts[f"h.{i}.att"], dtype=np.float64)[0] for i in layers}
        return maps, "the reference's own softmax (h.{i}.att of its naive attention)"
    maps = {
        i: attention_probs(acts[attention_input_name(config, i)], config.n_head, config.kv_heads)[0] for i in layers
    }
    return maps, f"recomputed in NumPy (float64) from the backend's {attention_input_name(config, 0).split('.')[-1]}"


@dataclass(frozen=True)
class HeadPattern:
    """Where one head looks, averaged over the query positions t >= 1 (position 0 can only see itself);
    None for a one-token prompt. Each is a mean attention probability, except entropy (nats)."""

    first: float | None  # on position 0 (heads that park their attention there: an "attention sink")
    previous: float | None  # on position t - 1 (previous-token heads)
    self: float | None  # on position t itself
    entropy: float | None  # -sum_s p log p of each row: 0 = one key, log(t + 1) = spread evenly


def head_pattern(att: np.ndarray) -> HeadPattern:
    """att (T, T) of one head, rows summing to 1  ->  its HeadPattern."""
    T = att.shape[-1]
    if T < 2:
        return HeadPattern(None, None, None, None)
    rows = np.arange(1, T)
    p = att[1:]  # (T - 1, T)
    entropy = -np.sum(p * np.log(np.maximum(p, 1e-300)), axis=-1)  # (T - 1,); a masked 0 adds 0 * log(tiny) = 0
    return HeadPattern(
        float(att[rows, 0].mean()),
        float(att[rows, rows - 1].mean()),
        float(att[rows, rows].mean()),
        float(entropy.mean()),
    )


# ----------------------------------------------------------------------------------- logit lens
def final_norm(x: np.ndarray, params: Mapping[str, np.ndarray], config: GPT2Config) -> np.ndarray:
    """The model's ln_f on any residual stream, float64: LayerNorm (biased variance, bias if the config has
    one) or RMSNorm, eps = config.layer_norm_eps.  x (..., C)  ->  (..., C)"""
    x = np.asarray(x, dtype=np.float64)
    weight = np.asarray(params["ln_f.weight"], dtype=np.float64)
    if config.norm == "rmsnorm":
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + config.layer_norm_eps) * weight
    xc = x - x.mean(axis=-1, keepdims=True)
    out = xc / np.sqrt(np.mean(xc * xc, axis=-1, keepdims=True) + config.layer_norm_eps) * weight
    if "ln_f.bias" in params:
        out = out + np.asarray(params["ln_f.bias"], dtype=np.float64)
    return out


def head_matrix(params: Mapping[str, np.ndarray], config: GPT2Config) -> np.ndarray:
    """The output head (V, C), float64: wte.weight when tied, lm_head.weight otherwise."""
    return np.asarray(params["wte.weight" if config.tied_head else "lm_head.weight"], dtype=np.float64)


@dataclass(frozen=True)
class LensRow:
    """One residual stream read through ln_f and the head: the top-K next tokens at each position."""

    stream: str  # "embed", "h.{i}.resid_2", or "logits" (the model's own output, for comparison)
    ids: np.ndarray  # (T, K) token ids, most probable first
    probs: np.ndarray  # (T, K) their softmax probabilities


def top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """logits (T, V)  ->  ids (T, k) most probable first (ties: the lower id first), probs (T, k) of softmax."""
    logits = np.asarray(logits, dtype=np.float64)
    ids = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
    shifted = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=-1, keepdims=True)
    return ids, np.take_along_axis(probs, ids, axis=-1)


def lens_streams(config: GPT2Config) -> list[str]:
    """The residual streams the lens reads, in forward order: the embedding, then each block's output."""
    return ["embed"] + [f"h.{i}.resid_2" for i in range(config.n_layer)]


def logit_lens(acts: Mapping[str, np.ndarray], params: Mapping[str, np.ndarray], config: GPT2Config, top: int):
    """[LensRow] for every stream of lens_streams(config) (batch row 0), then the model's own logits.

    A stream x (T, C) is read as the model would read its last one: logits = final_norm(x) @ head.T (T, V).
    The last block's output read this way is the model's logits, up to the backend's rounding.
    """
    head = head_matrix(params, config)  # (V, C)
    rows = []
    for name in lens_streams(config):
        x = np.asarray(acts[name], dtype=np.float64)[0]  # (T, C)
        rows.append(LensRow(name, *top_k(final_norm(x, params, config) @ head.T, top)))
    rows.append(LensRow("logits", *top_k(np.asarray(acts["logits"], dtype=np.float64)[0], top)))
    return rows


# ----------------------------------------------------------------------------------- divergence
def divergence(acts: Mapping[str, np.ndarray], ref_acts: Mapping[str, np.ndarray], config: GPT2Config, threshold):
    """max|a - b| / max|b| of every named activation in forward order (a = acts, b = ref_acts) and the first
    one over `threshold`: conformance/localize.py's localizer, which names the op that produced it."""
    return localize(acts, ref_acts, config, threshold)


__all__ = [
    "OUTLIER_SIGMAS",
    "Divergence",
    "HeadPattern",
    "LensRow",
    "Stats",
    "activation_stats",
    "attention_input_name",
    "attention_maps",
    "attention_probs",
    "divergence",
    "final_norm",
    "head_matrix",
    "head_pattern",
    "lens_streams",
    "logit_lens",
    "top_k",
]
