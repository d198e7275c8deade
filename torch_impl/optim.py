"""AdamW's parameter groups: which tensors weight decay applies to, in one place for the trainer
(torch_impl/train.py), the conformance suite's torch-based backends (conformance/backends.py) and the
benchmarks (benchmarks/impl_torch.py).

    decay="matrices"  the 2-D tensors (every weight matrix, wte, wpe, an untied lm_head): GPT-2's
                      and torch's convention, and the default of docs/contract.md's AdamW
    decay="all"       every tensor, biases and norm weights too (llm.c's `gpt2_update`)
    decay=[names]     exactly the tensors named (canonical names, weights/layout.py)

The parameters come as (canonical name, tensor) pairs, so that a named set means the same tensors in
every backend.
"""

from __future__ import annotations

from collections.abc import Iterable

DECAY_SETS = ("matrices", "all")


def decayed_names(named: list, decay="matrices") -> set[str]:
    """The names, among (name, tensor) pairs, of the tensors the decay set names."""
    if isinstance(decay, str):
        if decay == "matrices":
            return {n for n, p in named if p.dim() == 2}
        if decay == "all":
            return {n for n, _ in named}
        raise ValueError(f"AdamW decay must be one of {DECAY_SETS} or a collection of names, got {decay!r}")
    names = set(decay)
    unknown = sorted(names - {n for n, _ in named})
    if unknown:
        raise ValueError(f"AdamW decay names tensor(s) the model does not have: {unknown[:3]}")
    return names


def adamw_groups(named_parameters: Iterable, weight_decay: float, decay="matrices") -> list[dict]:
    """torch.optim.AdamW's parameter groups: weight_decay on the tensors of the decay set, 0 on the
    others (an empty group is left out: "all" has none without decay)."""
    named = list(named_parameters)
    decayed = decayed_names(named, decay)
    groups = [
        {"params": [p for n, p in named if n in decayed], "weight_decay": weight_decay},
        {"params": [p for n, p in named if n not in decayed], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


__all__ = ["DECAY_SETS", "adamw_groups", "decayed_names"]
