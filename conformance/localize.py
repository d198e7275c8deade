"""The divergence localizer: at which op do two backends part?

When a backend breaches a ceiling, the worst tensor says *what* is wrong but not *where*: one bad
op early in the network corrupts every activation after it. The localizer runs both backends with
their named activations (docs/contract.md) and walks them in forward order:

    embed, h.0.ln_1, h.0.qkv, h.0.attn, h.0.attn_proj, h.0.resid_1, h.0.ln_2, h.0.fc, h.0.gelu,
    h.0.mlp_proj, h.0.resid_2, h.1.ln_1, ..., ln_f, logits

(a variant adds h.{i}.rope after qkv and has h.{i}.swiglu in place of h.{i}.gelu: docs/variants.md)

The first activation whose max|d| / max|ref| exceeds the threshold is where they part; the op that
produced it is the suspect (e.g. first divergence at `h.1.attn_proj` with `h.1.attn` still fine
means layer 1's c_proj).
"""

from __future__ import annotations

from dataclasses import dataclass

from conformance.checks import max_rel
from weights import GPT2Config, activation_names

# What computes each activation from the one before it: the suspect when it is the first to part.
OP_OF = {
    "embed": "token + position embedding (wte[idx] + wpe[:T]; wte[idx] alone with rotary positions)",
    "ln_1": "norm 1 (ln_1: LayerNorm or RMSNorm)",
    "qkv": "qkv projection (attn.c_attn, Conv1D (C, (NH + 2 NKV) HS) layout)",
    "rope": "rotary position embedding of q and k (rotate-half pairs, rope_theta)",
    "attn": "causal self-attention (scale, mask, softmax, heads, key/value head groups)",
    "attn_proj": "attention output projection (attn.c_proj)",
    "resid_1": "residual add after attention",
    "ln_2": "norm 2 (ln_2: LayerNorm or RMSNorm)",
    "fc": "MLP up projection (mlp.c_fc; gate and up halves for SwiGLU)",
    "gelu": "GELU (tanh form)",
    "swiglu": "SwiGLU (silu(gate) * up)",
    "mlp_proj": "MLP down projection (mlp.c_proj)",
    "resid_2": "residual add after the MLP",
    "ln_f": "final norm (ln_f)",
    "logits": "output head (x @ wte.T, or x @ lm_head.weight.T untied)",
}


def activation_order(config: GPT2Config) -> list[str]:
    """The contract's named activations in forward order (weights.layout.activation_names)."""
    return activation_names(config)


@dataclass
class Divergence:
    name: str | None  # first activation over the threshold, None if they never part
    op: str | None
    errors: list[tuple[str, float]]  # every activation in forward order with its max_rel
    threshold: float

    def describe(self) -> str:
        if self.name is None:
            return f"no activation differs by more than {self.threshold:g} (relative max)"
        i = [n for n, _ in self.errors].index(self.name)
        before = (
            f"; the activation before it, {self.errors[i - 1][0]}, is within {self.errors[i - 1][1]:.2e}" if i else ""
        )
        err = dict(self.errors)[self.name]
        return f"backends part at {self.name} ({err:.2e} > {self.threshold:g}): suspect op {self.op}{before}"


def localize(acts: dict, ref_acts: dict, config: GPT2Config, threshold: float) -> Divergence:
    """Walk the named activations in forward order; report the first that differs beyond `threshold`."""
    errors = []
    first = None
    for name in activation_order(config):
        if name not in acts or name not in ref_acts:
            raise KeyError(f"activation {name!r} missing ({'backend' if name not in acts else 'reference'})")
        e = max_rel(acts[name], ref_acts[name])
        errors.append((name, e))
        if first is None and e > threshold:
            first = name
    op = OP_OF[first.split(".")[-1]] if first else None
    if first and first.startswith("h."):
        op = f"layer {first.split('.')[1]}: {op}"
    return Divergence(first, op, errors, threshold)


def localize_backends(backend, reference, params, config, idx, threshold: float) -> Divergence:
    return localize(
        backend.activations(params, config, idx), reference.activations(params, config, idx), config, threshold
    )
