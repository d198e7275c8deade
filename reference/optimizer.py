"""AdamW, step for step as torch.optim.AdamW computes it (docs/contract.md), in place.

    state = {}                                    # or adamw_init(params)
    adamw_step(params, grads, state, lr=1e-3)     # updates params and state
    adamw_step(params, grads, state, lr=1e-4, decay="all")   # llm.c's choice: every tensor decays

For each tensor p with gradient g, at step t = 1, 2, ...:

    p = p * (1 - lr * wd)        only for the tensors of the decay set (below)
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    m_hat = m / (1 - beta1 ** t)          (bias correction: m and v start at zero)
    v_hat = v / (1 - beta2 ** t)
    p = p - lr * m_hat / (sqrt(v_hat) + eps)

The decay is "decoupled": it shrinks the weights directly instead of being added to the
gradient, so it does not pass through m and v. m and v live in `state`, in the dtype of
each parameter; `state["t"]` counts the steps taken.

The decay set (docs/contract.md), `decay=`:

    "matrices"   the 2-D tensors: embeddings and weight matrices; biases and norm weights are not
                 decayed (GPT-2's and torch_impl's choice; the default)
    "all"        every tensor (llm.c's train_gpt2.c decays every parameter)
    names        an explicit collection of parameter names (empty: nothing decays)
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

import numpy as np

DECAY_KEYWORDS = ("matrices", "all")


def decayed_names(params: Mapping[str, np.ndarray], decay="matrices") -> set[str]:
    """The names of the tensors of `params` that weight decay shrinks, for a decay set (module docstring)."""
    if isinstance(decay, str):
        if decay == "matrices":
            return {name for name, p in params.items() if p.ndim == 2}
        if decay == "all":
            return set(params)
        raise ValueError(f"adamw_step: decay must be one of {DECAY_KEYWORDS} or a collection of names, got {decay!r}")
    names = set(decay)
    unknown = sorted(names - set(params))
    if unknown:
        raise ValueError(f"adamw_step: decay names tensor(s) the params do not have: {unknown[:3]}")
    return names


def adamw_init(params: Mapping[str, np.ndarray]) -> dict:
    """A fresh optimizer state: t = 0 and zero moments shaped like each parameter."""
    return {
        "t": 0,
        "m": {name: np.zeros_like(p) for name, p in params.items()},
        "v": {name: np.zeros_like(p) for name, p in params.items()},
    }


def adamw_step(
    params: MutableMapping[str, np.ndarray],
    grads: Mapping[str, np.ndarray],
    state: MutableMapping,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.95,
    eps: float = 1e-8,
    weight_decay: float = 0.1,
    decay="matrices",
) -> None:
    """One AdamW step, in place on the arrays of `params` and on `state` (an empty dict is initialised).
    `decay` is the set of tensors weight decay applies to (module docstring)."""
    if set(grads) != set(params):
        missing = sorted(set(params) - set(grads))
        extra = sorted(set(grads) - set(params))
        raise ValueError(f"adamw_step: grads do not match params (missing {missing[:3]}, unknown {extra[:3]})")
    decayed = decayed_names(params, decay)
    if not state:
        state.update(adamw_init(params))
    state["t"] += 1
    t = state["t"]
    # Python floats keep each array's dtype (NumPy 2 promotion rules).
    lr, beta1, beta2, eps, weight_decay = (float(x) for x in (lr, beta1, beta2, eps, weight_decay))
    bias_correction1 = 1.0 - beta1**t
    bias_correction2 = 1.0 - beta2**t
    for name, p in params.items():
        g = grads[name]
        if g.shape != p.shape:
            raise ValueError(f"adamw_step: gradient {name!r} has shape {g.shape}, parameter has {p.shape}")
        m, v = state["m"][name], state["v"][name]
        if name in decayed:
            p *= 1.0 - lr * weight_decay
        m *= beta1
        m += (1.0 - beta1) * g
        v *= beta2
        v += (1.0 - beta2) * (g * g)
        m_hat = m / bias_correction1
        v_hat = v / bias_correction2
        p -= lr * m_hat / (np.sqrt(v_hat) + eps)
