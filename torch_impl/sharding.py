"""Sharded training with PyTorch's own engines: what `--shard none|zero1|fsdp` does to the model, the
optimizer and the checkpoint (torch_impl/train.py calls these; docs/training.md has the memory arithmetic).

    none    DistributedDataParallel: every rank holds everything (weights, gradients, AdamW's m and v);
            the gradients are all-reduced in the backward of the last micro-step.
    zero1   DDP as above, and torch.distributed.optim.ZeroRedundancyOptimizer around AdamW: AdamW's
            state is split between the ranks by whole tensors (each rank steps the parameters it owns,
            then broadcasts them); weights and gradients stay whole on every rank.
    fsdp    torch.distributed.fsdp.fully_shard (FSDP2) on every block, then on the model: weights,
            gradients and AdamW's state are DTensors split along dim 0 across the ranks; a block's
            weights are all-gathered just before its forward (and again in the backward) and freed
            after; its gradients are reduce-scattered after its backward.

One checkpoint layout for all three (decided here, see docs/training.md): the gathered one. Rank 0
writes the whole model (model.safetensors through weights.save, pad rows dropped, as every backend
reads it) and the whole AdamW state, in the layout `torch.optim.AdamW.state_dict()` has for the
unsharded model (tensors by index in the order of the parameter groups). So a checkpoint written
under any --shard mode, at any world size, resumes under any other, and every checkpoint is the
canonical one. `gather_full_state` builds it (a collective: every rank calls it), and
`load_optimizer_state` gives each rank its share of it on resume.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
from torch import nn

SHARD_MODES = ("none", "zero1", "fsdp")
FAMILY = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "llama-124m")  # the memory table's presets


# ----------------------------------------------------------------------------- wrapping
def wrap_model(raw_model: nn.Module, shard: str, device: torch.device, world: int, compile_model=None) -> nn.Module:
    """The module the training loop calls (forward, backward). `compile_model`: torch.compile, or None.

    fsdp: `raw_model` is sharded in place (its parameters become DTensor shards), then compiled.
    none, zero1: `raw_model` is left alone; its compiled form is wrapped in DDP when world > 1."""
    if shard == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        mesh = init_device_mesh(device.type, (world,))
        for block in raw_model.h:  # bottom-up: each block is one all-gather / reduce-scatter group
            fully_shard(block, mesh=mesh)
        fully_shard(raw_model, mesh=mesh)  # the rest: wte (and the tied head), wpe, ln_f, an untied lm_head
        # generate() calls forward_step, not forward: tell FSDP it is a forward too (all-gathers the root's
        # weights); every rank must then call it, as every rank calls forward.
        register_fsdp_forward_method(raw_model, "generate")
        # FSDP2 warns that the root returns a view (the logits, cut to the vocabulary): an in-place op on it
        # would skip a hook. The trainer never modifies the logits, so the warning is noise here.
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPGPT2\) returned a view tensor")
        return compile_model(raw_model) if compile_model else raw_model
    model = compile_model(raw_model) if compile_model else raw_model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


def set_grad_sync(model: nn.Module, shard: str, distributed: bool, last_micro_step: bool) -> None:
    """Before each micro-step's forward: DDP (none, zero1) all-reduces only in the last micro-step's backward
    (DDP decides during the forward). FSDP reduce-scatters in every micro-step's backward: accumulating
    without it would keep every layer's whole gradient on every rank, the memory fsdp is there to save."""
    if distributed and shard != "fsdp":
        model.require_backward_grad_sync = last_micro_step


# ----------------------------------------------------------------------------- the optimizer
def make_adamw(groups: list[dict], shard: str, **adamw_kwargs) -> torch.optim.Optimizer:
    """torch.optim.AdamW over `groups`; under zero1 inside a ZeroRedundancyOptimizer (same groups, same
    hyperparameters, each rank keeping the state of the tensors it owns). Under fsdp the parameters are
    already DTensor shards, so a plain AdamW keeps sharded state by itself."""
    if shard == "zero1":
        from torch.distributed.optim import ZeroRedundancyOptimizer

        return ZeroRedundancyOptimizer(groups, optimizer_class=torch.optim.AdamW, **adamw_kwargs)
    return torch.optim.AdamW(groups, **adamw_kwargs)


def _names_in_group_order(raw_model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the order AdamW's state_dict numbers them (group after group)."""
    name_of = {id(p): n for n, p in raw_model.named_parameters()}
    return [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]


def _by_index(state: dict, names: list[str]) -> dict:
    """FSDP's full optimizer state (tensors keyed by parameter name) -> AdamW.state_dict()'s (by index)."""
    index = {n: i for i, n in enumerate(names)}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]]
    return {"state": {index[n]: s for n, s in state["state"].items()}, "param_groups": groups}


def _by_name(state: dict, names: list[str]) -> dict:
    """The inverse of _by_index."""
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]
    return {"state": {names[i]: s for i, s in state["state"].items()}, "param_groups": groups}


def load_optimizer_state(raw_model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict, shard: str) -> None:
    """Load a gathered AdamW state (the checkpoint's) on every rank; each keeps its own share."""
    if shard == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        by_name = _by_name(saved, _names_in_group_order(raw_model, optimizer))
        set_optimizer_state_dict(raw_model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))
    else:  # AdamW's own format; ZeroRedundancyOptimizer keeps the entries of the tensors this rank owns
        optimizer.load_state_dict(saved)


# ----------------------------------------------------------------------------- the gathered state
def gather_full_state(
    raw_model: nn.Module, optimizer: torch.optim.Optimizer, shard: str, master: bool
) -> tuple[dict[str, torch.Tensor] | None, dict | None]:
    """(every parameter whole, by name; AdamW's whole state in AdamW.state_dict()'s layout) on rank 0,
    (None, None) on the others. Every rank must call it: under zero1 and fsdp it is a collective.

    zero1: ZeroRedundancyOptimizer.consolidate_state_dict sends each rank's state to rank 0, which keeps
    it on the CPU (by broadcasts, torch 2.13: every rank receives each shard onto its GPU, pickled and
    unpickled, and drops it; about twice one rank's AdamW state, transiently).
    fsdp: torch.distributed.checkpoint.state_dict all-gathers one tensor at a time and moves it to rank 0's
    CPU (cpu_offload), so no GPU ever holds more than one whole tensor extra."""
    if shard == "fsdp":
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        tensors = get_model_state_dict(raw_model, options=options)
        state = get_optimizer_state_dict(raw_model, optimizer, options=options)
        if not master:
            return None, None
        return tensors, _by_index(state, _names_in_group_order(raw_model, optimizer))
    consolidate = getattr(optimizer, "consolidate_state_dict", None)  # a ZeroRedundancyOptimizer (zero1)
    if consolidate is not None:
        consolidate(to=0)
    if not master:
        return None, None
    return {n: p.detach() for n, p in raw_model.named_parameters()}, optimizer.state_dict()


def local_grad_norm(grad_norm: torch.Tensor) -> torch.Tensor:
    """clip_grad_norm_'s result as a plain tensor (under fsdp it is a replicated DTensor)."""
    full_tensor = getattr(grad_norm, "full_tensor", None)
    return full_tensor() if full_tensor is not None else grad_norm


# ----------------------------------------------------------------------------- what each rank holds
def _local_numel(t: torch.Tensor) -> int:
    to_local = getattr(t, "to_local", None)  # a DTensor: this rank's shard
    return (to_local() if to_local is not None else t).numel()


def held_numel(raw_model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Elements this rank holds (measured): its parameters, its gradients (call between backward and
    zero_grad), AdamW's m and v. Not counted: DDP's all-reduce buckets, FSDP's transient all-gathered
    blocks, activations."""
    local = getattr(optimizer, "optim", optimizer)  # ZeroRedundancyOptimizer: the rank's own AdamW
    moments = sum(_local_numel(v) for s in local.state.values() for k, v in s.items() if k in ("exp_avg", "exp_avg_sq"))
    params = list(raw_model.parameters())
    return {
        "params": sum(_local_numel(p) for p in params),
        "grads": sum(_local_numel(p.grad) for p in params if p.grad is not None),
        "adamw": moments,
    }


def expected_numel(groups: Iterable[Iterable[torch.Size]], world: int, shard: str) -> list[dict[str, int]]:
    """Elements each rank holds (arithmetic), per rank; `groups`: the shapes of AdamW's parameter groups,
    in order. The rules of the two engines, as torch 2.13 implements them:

    zero1  ZeroRedundancyOptimizer._partition_parameters: group by group, the tensors largest first
           (stable), each to the rank with the fewest elements so far (the lowest rank on a tie).
    fsdp   fully_shard's dim-0 sharding: rank r holds torch.chunk(tensor, world, dim=0)[r] (the last
           ranks may hold fewer rows, or none; the padded buffer is ceil(rows / world) rows on every rank).
    """
    groups = [list(g) for g in groups]
    every = [s for g in groups for s in g]
    total = sum(s.numel() for s in every)
    if shard == "none":
        return [{"params": total, "grads": total, "adamw": 2 * total} for _ in range(world)]
    if shard == "zero1":
        owned = [0] * world
        for g in groups:
            for s in sorted(g, key=lambda s: s.numel(), reverse=True):
                owned[owned.index(min(owned))] += s.numel()
        return [{"params": total, "grads": total, "adamw": 2 * n} for n in owned]
    if shard == "fsdp":
        held = [0] * world
        for s in every:
            rows, row = s[0], s[1:].numel()
            per = -(-rows // world)  # torch.chunk's chunk size
            for r in range(world):
                held[r] += max(0, min(per, rows - r * per)) * row
        return [{"params": n, "grads": n, "adamw": 2 * n} for n in held]
    raise ValueError(f"shard must be one of {SHARD_MODES}, got {shard!r}")


# ----------------------------------------------------------------------------- the memory table
def adamw_shapes(config, padded_vocab: int) -> list[list[torch.Size]]:
    """The shapes of the trainer's AdamW groups (decayed, then not) for `config`, without allocating."""
    from torch_impl.model import GPT2
    from torch_impl.optim import adamw_groups

    with torch.device("meta"):
        model = GPT2(config, padded_vocab_size=max(padded_vocab, config.vocab_size))
    return [[p.shape for p in g["params"]] for g in adamw_groups(model.named_parameters(), 0.1)]


def memory_table(presets: list[str], worlds: list[int], padded_vocab: int = 50304) -> str:
    """Per-rank GiB of float32 weights + gradients + AdamW's m and v (the fullest rank), as markdown."""
    import weights

    def gib(elements: int) -> str:
        return f"{4 * elements / 2**30:.2f}"

    rows = [
        "| preset | parameters (padded vocab) | ranks | none (DDP) | zero1 | fsdp |",
        "|---|---|---|---|---|---|",
    ]
    for name in presets:
        groups = adamw_shapes(weights.GPT2Config.preset(name), padded_vocab)
        total = sum(s.numel() for g in groups for s in g)
        for world in worlds:
            cells = [gib(max(sum(r.values()) for r in expected_numel(groups, world, shard))) for shard in SHARD_MODES]
            rows.append(f"| `{name}` | {total:,} | {world} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """python -m torch_impl.sharding: the per-rank memory table of docs/training.md."""
    from weights.errors import ArgumentParser, UsageError, run_cli

    def body(args: list[str]) -> int:
        ap = ArgumentParser(prog="python -m torch_impl.sharding", description=main.__doc__)
        ap.add_argument("--model", nargs="+", default=list(FAMILY), choices=FAMILY, help="presets (weights/config.py)")
        ap.add_argument("--world", nargs="+", type=int, default=[2, 4, 8], help="numbers of ranks")
        ap.add_argument("--padded-vocab", type=int, default=50304, help="the trainer's --padded-vocab")
        a = ap.parse_args(args)
        if min(a.world) < 1:
            raise UsageError(f"--world {min(a.world)}: must be >= 1")
        print(memory_table(a.model, a.world, a.padded_vocab))
        return 0

    return run_cli(body, argv)


__all__ = [
    "SHARD_MODES",
    "adamw_shapes",
    "expected_numel",
    "gather_full_state",
    "held_numel",
    "load_optimizer_state",
    "local_grad_norm",
    "make_adamw",
    "memory_table",
    "set_grad_sync",
    "wrap_model",
]


if __name__ == "__main__":
    raise SystemExit(main())
