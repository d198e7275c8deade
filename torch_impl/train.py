"""Train GPT-2 with PyTorch: from scratch or from a checkpoint, on CPU, one GPU or many (DDP).

    python -m torch_impl.data ../shared/data/tinyshakespeare.txt --out data-cache/shakespeare
    python -m torch_impl.train --data data-cache/shakespeare --init gpt2 --max-steps 200 ...
    python -m torch_impl.train --data ... --init scratch --model llama-124m ...   # every variant on
    torchrun --standalone --nproc-per-node 8 -m torch_impl.train --data ... --compile
    torchrun ... -m torch_impl.train --data ... --shard fsdp    # or zero1: torch_impl/sharding.py

The model is GPT-2 or any of its variants (weights/config.py, docs/variants.md): `--model` picks a
preset for --init scratch (`MODEL_PRESETS`; the llama-* ones have rotary positions, RMSNorm, SwiGLU,
grouped-query attention and no biases), `--n-kv-head`, `--mlp-hidden` and `--untied-head` change it;
a checkpoint (--init or --resume) brings its own config.json, variant included.

One optimizer step ("step") is:

    for each of `grad_accum` micro-steps:
        x, y = this rank's next (B, T) batch
        (DDP: all-reduce gradients only on the last micro-step, decided before its forward; fsdp reduce-scatters
        in every micro-step)
        loss = model(x, y) / grad_accum  under bf16 autocast;  loss.backward()
    grad_norm = clip_grad_norm_(params, grad_clip)
    lr = warmup + cosine schedule(step);  AdamW step, skipped if loss or grad_norm is not finite
    stop if loss or grad_norm is not finite (the weights untouched);  zero the gradients

    grad_accum = total_batch_tokens / (B * T * world_size)

The code follows that order. `_train` is the outline of a run, each line a named function below
it: set up (check_launch, set_precision, load_starting_point, batch_geometry, build_loaders,
build_model_and_optimizer, restore_train_state, log_start), then for each step: validate, sample,
train_step (forward_backward: the micro-steps; clip_gradients, check_finite, the schedule, AdamW),
log_step, write_checkpoint; then a last validate and sample, and finish (the plot, the summary).
What the steps share is a `Run`, passed to each explicitly.

Rank 0 logs (log.jsonl in the output folder, the console, a tqdm bar), writes checkpoints
(torch_impl.checkpoint; gathered under --shard: one layout for every mode) and samples; every rank
evaluates its share of the val batches. A failed write on rank 0 stops every rank with the error.
Settings come from flags, optionally on top of a JSON or TOML file (--config); every flag
is a field of `TrainConfig`.

Throughput is reported as tokens/s of all ranks together and MFU per device: the FLOP/s of the W
ranks over W times one device's peak, with FLOPs per token (forward + backward) counted the way llm.c
counts them, 6 * N + 6 * n_layer * n_embd * T (weights/flops.py: the one count the trainer and the
benchmarks share, and what each term means for GPT-2 and for every variant: grouped-query attention
narrows c_attn in N and leaves the attention term alone, SwiGLU's three matrices are in N, an untied
model's looked-up wte is not).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import torch

import weights
from torch_impl import cross_entropy_triton, layernorm_triton, mlp_triton, qkv_triton
from torch_impl.checkpoint import checkpoint_dir, latest_checkpoint, load_checkpoint, save_checkpoint
from torch_impl.chunked_loss import DEFAULT_CHUNK_ROWS
from torch_impl.data import ShardLoader, shard_paths
from torch_impl.devices import SDPA_BACKENDS, choose_device, sdpa_backend, wants_bf16
from torch_impl.lr_schedule import lr_at
from torch_impl.optim import adamw_groups, device_skippable, skip_if_not_finite
from torch_impl.profiling import StepProfiler
from torch_impl.sharding import (
    SHARD_MODES,
    gather_full_state,
    held_numel,
    load_optimizer_state,
    local_grad_norm,
    make_adamw,
    set_grad_sync,
    wrap_model,
)
from torch_impl.shuffled_loader import ShuffledLoader
from weights import CheckpointError
from weights.checkpoint import atomic_write
from weights.errors import ArgumentParser, DataError, UsageError, UserError, one_line, run_cli
from weights.flops import mfu as flops_mfu
from weights.flops import peak_tflops, training_flops_per_token


def _opt(default, help: str, choices: tuple[str, ...] | None = None):
    return field(default=default, metadata={"help": help, "choices": choices})


def _llama_style(base: weights.GPT2Config, n_kv_head: int) -> weights.GPT2Config:
    """`base`'s shape with the options of GPT2Config.llama_style_124m: rotary positions, RMSNorm, SwiGLU of
    hidden width 3C, n_kv_head key/value heads, no biases; the head stays tied."""
    options = dict(position="rope", norm="rmsnorm", mlp="swiglu", mlp_hidden=3 * base.n_embd, bias=False)
    return dataclasses.replace(base, n_kv_head=n_kv_head, **options)


# The configs --model names (for --init scratch). llama-124m is weights' preset (= _llama_style(124m, 4)).
MODEL_PRESETS = {
    "124m": weights.GPT2Config.gpt2_124m,
    "gpt2-medium": weights.GPT2Config.gpt2_medium,  # the released family's other sizes, from scratch
    "gpt2-large": weights.GPT2Config.gpt2_large,
    "gpt2-xl": weights.GPT2Config.gpt2_xl,
    "small": weights.GPT2Config.small,
    "tiny": weights.GPT2Config.tiny,
    "llama-124m": weights.GPT2Config.llama_style_124m,
    "llama-small": lambda: _llama_style(weights.GPT2Config.small(), n_kv_head=2),  # 4 query heads, 2 kv heads
    "llama-tiny": lambda: _llama_style(weights.GPT2Config.tiny(), n_kv_head=1),  # 2 query heads, 1 kv head
}


CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # the torch.compile modes that capture CUDA graphs


@dataclass
class TrainConfig:
    # data and model
    data: str = _opt("", "folder of token shards (*_train_*.bin, *_val_*.bin) from `python -m torch_impl.data`")
    data_order: str = _opt(
        "sequential",
        "how train batches are read: the shards in order, or a seeded permutation of windows of T+1 tokens, "
        "a new one each epoch (val is always read in order)",
        ("sequential", "shuffled"),
    )
    data_seed: int = _opt(0, "seed of the window permutations of --data-order shuffled")
    init: str = _opt("scratch", "'scratch' (GPT-2 init), a hub id ('gpt2') or a local checkpoint file/folder")
    init_sha256: str = _opt(
        "",
        "the --init file's expected SHA-256, checked before training (a weights.save "
        "checkpoint's .sha256 sidecar is checked anyway)",
    )
    model: str = _opt("124m", "config preset for --init scratch (llama-*: every variant but the untied head)",
                      tuple(MODEL_PRESETS))  # fmt: skip
    n_layer: int = _opt(0, "override the preset's n_layer (0: keep)")
    n_head: int = _opt(0, "override the preset's n_head (0: keep)")
    n_embd: int = _opt(0, "override the preset's n_embd (0: keep)")
    n_kv_head: int = _opt(0, "override the preset's key/value heads, < n_head for grouped-query attention (0: keep)")
    mlp_hidden: int = _opt(0, "override the preset's MLP hidden width (0: keep)")
    untied_head: bool = _opt(False, "give the model an output head of its own (lm_head.weight) instead of wte")
    padded_vocab: int = _opt(50304, "embedding/head rows, padded for fast matmuls; pad ids never scored or sampled")
    attention: str = _opt("sdpa", "attention: F.scaled_dot_product_attention, or the explicit masked softmax",
                          ("sdpa", "math"))  # fmt: skip
    sdpa_backend: str = _opt(
        "auto",
        "the kernel --attention sdpa uses (auto: torch's choice, cuDNN's on an H200; cudnn and efficient need CUDA)",
        SDPA_BACKENDS,
    )
    loss_impl: str = _opt(
        "full",
        "the head + cross-entropy: full (all B*T x V logits), chunked (in row chunks, never all the logits), "
        "or chunked-triton (chunked, each chunk's softmax and gradient in one Triton kernel; CUDA)",
        ("full", "chunked", "chunked-triton"),
    )
    loss_chunk_rows: int = _opt(DEFAULT_CHUNK_ROWS, "rows (of B*T) per chunk of the chunked --loss-impl")
    mlp_impl: str = _opt(
        "torch",
        "the MLP: torch (c_fc, GELU, c_proj and autograd) or triton (the backward's GELU derivative and c_fc "
        "bias gradient in one Triton kernel, torch_impl/mlp_triton.py; bf16 on CUDA, GELU models)",
        ("torch", "triton"),
    )
    qkv_impl: str = _opt(
        "torch",
        "attention's q, k, v: torch (c_attn, the split into heads and autograd) or triton (the backward's "
        "gather of dq, dk, dv and c_attn's bias gradient in one Triton kernel, torch_impl/qkv_triton.py; bf16 "
        "on CUDA; slower in the compiled step on an H200: docs/training.md)",
        ("torch", "triton"),
    )
    norm_impl: str = _opt(
        "torch",
        "the LayerNorms: torch (nn.LayerNorm and autograd) or triton (each residual add and the LayerNorm after "
        "it as one op whose backward is one Triton kernel, torch_impl/layernorm_triton.py; CUDA, LayerNorm models)",
        ("torch", "triton"),
    )
    # batch and optimizer
    batch_size: int = _opt(8, "micro-batch size B per rank")
    seq_len: int = _opt(1024, "sequence length T")
    total_batch_tokens: int = _opt(0, "tokens per optimizer step over all ranks (0: B*T*world, no accumulation)")
    max_steps: int = _opt(1000, "optimizer steps in the whole run (the cosine schedule ends here)")
    stop_step: int = _opt(0, "end this invocation after this step count, checkpointed, schedule unchanged (0: run on)")
    lr: float = _opt(6e-4, "peak learning rate")
    min_lr_frac: float = _opt(0.1, "final learning rate as a fraction of --lr")
    warmup_steps: int = _opt(100, "linear warmup steps")
    weight_decay: float = _opt(0.1, "AdamW weight decay, applied to 2-D weights only")
    beta1: float = _opt(0.9, "AdamW beta1")
    beta2: float = _opt(0.95, "AdamW beta2")
    eps: float = _opt(1e-8, "AdamW epsilon")
    grad_clip: float = _opt(1.0, "clip the global gradient norm to this (0: no clipping)")
    # sharding (torchrun jobs; torch_impl/sharding.py)
    shard: str = _opt(
        "none",
        "what the ranks split between them: none (DDP, all replicated), zero1 (AdamW's state), "
        "fsdp (weights, gradients and AdamW's state); checkpoints are gathered either way",
        SHARD_MODES,
    )
    # precision and speed
    device: str = _opt("auto", "where to train (auto: CUDA if available)", ("auto", "cpu", "cuda"))
    dtype: str = _opt("auto", "autocast dtype (auto: bf16 on CUDA, fp32 on CPU)", ("auto", "bf16", "fp32"))
    compile: bool = _opt(False, "torch.compile the model")
    compile_mode: str = _opt(
        "default", "torch.compile mode", ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
    )
    coordinate_descent_tuning: bool = _opt(
        False,
        "torch.compile tunes the block sizes of each kernel it generates by coordinate descent (a longer compile; "
        "--compile-mode default: the max-autotune modes tune this way already)",
    )
    tf32: bool = _opt(True, "allow TF32 matmuls for float32 work on CUDA")
    seed: int = _opt(1337, "seed of the initialisation (same on every rank)")
    peak_flops: float = _opt(0.0, "device peak FLOP/s for MFU (0: look the device up)")
    profile_steps: int = _opt(
        0, "torch.profiler over this many steps from the third on: out_dir/profile.txt and profile.json (0: off)"
    )
    # evaluation, samples, logging, checkpoints
    eval_every: int = _opt(250, "validation loss every N steps and at the end (0: never)")
    eval_batches: int = _opt(20, "validation batches per rank per evaluation")
    sample_every: int = _opt(0, "print a sample every N steps and at the end (0: never)")
    sample_tokens: int = _opt(64, "tokens per sample")
    sample_prompt: str = _opt("\n", "prompt the samples start from")
    log_every: int = _opt(1, "print a log line every N steps (log.jsonl gets every step)")
    out_dir: str = _opt("runs/gpt2", "folder for log.jsonl, loss.png and checkpoints")
    save: bool = _opt(True, "write checkpoints (--no-save for benchmarks)")
    ckpt_every: int = _opt(0, "checkpoint every N steps (0: only at the end)")
    keep_last: int = _opt(0, "keep only the newest N checkpoints (0: keep all)")
    resume: bool = _opt(False, "continue from out_dir/latest if it exists")
    progress: bool = _opt(True, "tqdm progress bar")
    plot: bool = _opt(True, "write out_dir/loss.png at the end")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            choices, value = f.metadata["choices"], getattr(self, f.name)
            kind = type(f.default)  # a --config file can hold any type; flags are converted by argparse
            if kind is bool:
                ok_type = isinstance(value, bool)
            else:
                numeric = (int, float) if kind is float else kind
                ok_type = isinstance(value, numeric) and not isinstance(value, bool)
            if not ok_type:
                raise UsageError(f"{_flag(f.name)} must be {kind.__name__}; got {value!r}")
            if choices and value not in choices:
                raise UsageError(f"{_flag(f.name)} must be one of {', '.join(choices)}; got {value!r}")
        for name, ok, rule in _ranges(self):  # NaN fails every comparison, so it is never ok
            value = getattr(self, name)
            if not (ok and math.isfinite(value)):
                raise UsageError(f"{_flag(name)} {value!r}: must be {rule}")


def _ranges(c: TrainConfig) -> list[tuple[str, bool, str]]:
    """(setting, whether its value can work, the rule in words) for every numeric setting."""
    return [
        ("n_layer", c.n_layer >= 0, ">= 0 (0 keeps the preset)"),
        ("n_head", c.n_head >= 0, ">= 0 (0 keeps the preset)"),
        ("n_embd", c.n_embd >= 0, ">= 0 (0 keeps the preset)"),
        ("n_kv_head", c.n_kv_head >= 0, ">= 0 (0 keeps the preset)"),
        ("mlp_hidden", c.mlp_hidden >= 0, ">= 0 (0 keeps the preset)"),
        ("padded_vocab", c.padded_vocab >= 1, ">= 1"),
        ("batch_size", c.batch_size >= 1, ">= 1"),
        ("loss_chunk_rows", c.loss_chunk_rows >= 1, ">= 1"),
        ("profile_steps", c.profile_steps >= 0, ">= 0 (0: off)"),
        ("seq_len", c.seq_len >= 1, ">= 1"),
        ("data_seed", c.data_seed >= 0, ">= 0"),
        ("total_batch_tokens", c.total_batch_tokens >= 0, ">= 0 (0: B*T*world)"),
        ("max_steps", c.max_steps >= 1, ">= 1"),
        ("stop_step", c.stop_step >= 0, ">= 0 (0: run on)"),
        ("lr", c.lr > 0, "> 0"),
        ("min_lr_frac", 0 <= c.min_lr_frac <= 1, "in [0, 1]"),
        ("warmup_steps", c.warmup_steps >= 0, ">= 0"),
        ("weight_decay", c.weight_decay >= 0, ">= 0"),
        ("beta1", 0 <= c.beta1 < 1, "in [0, 1)"),
        ("beta2", 0 <= c.beta2 < 1, "in [0, 1)"),
        ("eps", c.eps > 0, "> 0"),
        ("grad_clip", c.grad_clip >= 0, ">= 0 (0: no clipping)"),
        ("peak_flops", c.peak_flops >= 0, ">= 0 (0: look the device up)"),
        ("eval_every", c.eval_every >= 0, ">= 0 (0: never)"),
        ("eval_batches", c.eval_batches >= 1, ">= 1"),
        ("sample_every", c.sample_every >= 0, ">= 0 (0: never)"),
        ("sample_tokens", c.sample_tokens >= 1, ">= 1"),
        ("log_every", c.log_every >= 0, ">= 0"),
        ("ckpt_every", c.ckpt_every >= 0, ">= 0 (0: only at the end)"),
        ("keep_last", c.keep_last >= 0, ">= 0 (0: keep all)"),
    ]


class NonFiniteError(RuntimeError):
    """The loss or the gradient norm became NaN/inf; training stopped before the weights changed."""


# ----------------------------------------------------------------------------- throughput
flops_per_token = training_flops_per_token  # forward + backward FLOPs per token (weights/flops.py)


def device_peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The device's dense bf16 peak in FLOP/s (weights/flops.py's table), or None when unknown (CPU, an
    unlisted GPU, fp32 runs: their matmuls are not what the bf16 peak counts)."""
    if device.type != "cuda" or dtype != torch.bfloat16:
        return None
    peak = peak_tflops(torch.cuda.get_device_name(device), "bfloat16")
    return None if peak is None else peak * 1e12


# ----------------------------------------------------------------------------- distributed
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    group: bool = False  # in a process group (launched by torchrun, even with one process)
    owns_group: bool = False  # setup_distributed created it (and train() destroys it at the end)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def master(self) -> bool:
        return self.rank == 0


def setup_distributed(device_pref: str) -> Dist:
    """Join the process group when launched by torchrun (RANK/WORLD_SIZE set), else one process.

    NCCL on CUDA, gloo on CPU. Each rank owns the GPU of its LOCAL_RANK."""
    use_cuda = choose_device(device_pref).type == "cuda"
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Dist(device=torch.device("cuda" if use_cuda else "cpu"))
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    owns = not dist.is_initialized()  # a caller that made the group itself keeps it (tests/training/shard_probe.py)
    if owns:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", rank=rank, world_size=world)
        global _JOINED_GROUP
        _JOINED_GROUP = True  # the program then ends by exit_process
    return Dist(rank=rank, world=world, local_rank=local_rank, device=device, group=True, owns_group=owns)


def _all_reduce_mean(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= d.world
    return t


# ----------------------------------------------------------------------------- model and optimizer
def model_config(cfg: TrainConfig) -> weights.GPT2Config:
    """The --init scratch model: the --model preset with the overrides that are set (0 / False: keep).

    The overrides replace the preset's numbers and nothing else follows them: --n-embd on a SwiGLU
    preset keeps its mlp_hidden unless --mlp-hidden is given, and --n-head must stay a multiple of the
    preset's n_kv_head (or give --n-kv-head)."""
    base = MODEL_PRESETS[cfg.model]()
    names = ("n_layer", "n_head", "n_embd", "n_kv_head", "mlp_hidden")
    overrides = {k: getattr(cfg, k) for k in names if getattr(cfg, k)}
    if cfg.untied_head:
        overrides["tied_head"] = False
    try:
        return dataclasses.replace(base, **overrides)
    except weights.ConfigError as e:
        flags = " ".join(f"{_flag(k)} {v}" for k, v in overrides.items() if k != "tied_head")
        raise UsageError(f"--model {cfg.model} {flags}: {e}") from None


def build_model(cfg: TrainConfig, device: torch.device, params: dict | None, config: weights.GPT2Config):
    """GPT-2 from `params` (fine-tune / resume) or freshly initialised (seeded by cfg.seed)."""
    from torch_impl.model import GPT2

    padded = max(cfg.padded_vocab, config.vocab_size)
    if params is not None:
        model = GPT2.from_params(
            params, config, device=device, dtype=torch.float32, attention=cfg.attention, padded_vocab_size=padded
        )
    else:
        torch.manual_seed(cfg.seed)
        model = GPT2(config, attention=cfg.attention, padded_vocab_size=padded).to(device)
    model.set_loss_impl(cfg.loss_impl, cfg.loss_chunk_rows)
    if cfg.mlp_impl == "triton" and config.mlp != "gelu":
        raise UsageError(f"--mlp-impl triton is for GELU MLPs; this model's MLP is {config.mlp}")
    model.set_mlp_impl(cfg.mlp_impl)
    if cfg.norm_impl == "triton" and config.norm != "layernorm":
        raise UsageError(f"--norm-impl triton is for LayerNorm models; this model's norm is {config.norm}")
    model.set_norm_impl(cfg.norm_impl)
    model.set_qkv_impl(cfg.qkv_impl)
    return model


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """AdamW, weight decay on 2-D tensors only (matrices, embeddings, an untied lm_head), none on biases
    and norm weights (LayerNorm or RMSNorm); fused (on CUDA and the CPU), so that a step whose loss or
    gradient norm is not finite skips its update on the device (train_step). Under --shard zero1 inside a
    ZeroRedundancyOptimizer; under fsdp over the model's DTensor shards (torch_impl/sharding.py)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = adamw_groups(named, cfg.weight_decay)  # the default set: the 2-D tensors (torch_impl/optim.py)
    extra = {"fused": True} if device.type in ("cuda", "cpu") else {}  # fused: the update can skip itself
    return make_adamw(groups, cfg.shard, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, **extra)


def _pad_rows(tensors: dict[str, torch.Tensor], vocab_size: int) -> dict[str, torch.Tensor]:
    """Rows beyond vocab_size of every padded-vocab parameter (the head's matrix: wte when tied,
    lm_head when untied; the params dict drops them), from whole tensors by parameter name."""
    from torch_impl.model import VOCAB_MATRICES

    return {
        name: p.detach()[vocab_size:].cpu().clone()
        for name, p in tensors.items()
        if p.dim() == 2 and p.shape[0] > vocab_size and name.endswith(VOCAB_MATRICES)
    }


def _restore_pad_rows(model: torch.nn.Module, rows: dict[str, torch.Tensor], vocab_size: int) -> None:
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in rows.items():
            named[name][vocab_size:].copy_(value.to(named[name].device))


# ----------------------------------------------------------------------------- logging
def log_lines_before(path: Path, start_step: int) -> list[str]:
    """The lines of a log.jsonl whose step is before start_step (what a resume keeps).

    A last line that is not JSON is half a line, from a run that stopped while writing it: dropped. Any
    other line that is not a JSON object with an integer "step" is a DataError naming the file and line."""
    lines = path.read_text().splitlines()
    kept = []
    for i, ln in enumerate(lines):
        if not ln:
            continue
        try:
            entry = json.loads(ln)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            entry = None
        step = entry.get("step") if isinstance(entry, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            what = "a JSON object with an integer step"
            raise DataError(f"{path}: line {i + 1} is not a log entry ({what}): {ln[:60]!r}")
        if step < start_step:
            kept.append(ln)
    return kept


class RunLog:
    """Rank 0's record: out_dir/log.jsonl (one JSON object per line), out_dir/provenance.json (commit,
    versions, device, date of the run that wrote it), console lines, a tqdm bar."""

    def __init__(self, out_dir: Path, start_step: int, max_steps: int, enabled: bool, progress: bool):
        self.enabled = enabled
        self.bar = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / "log.jsonl"
        if self.path.exists():  # keep only the history before the step we (re)start from
            text = "".join(ln + "\n" for ln in log_lines_before(self.path, start_step))
            atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))  # a crash here keeps the old log
        self.file = open(self.path, "a")
        # Which code, libraries and GPUs made these numbers (weights/provenance.py), rewritten at every (re)start.
        from weights.provenance import provenance

        record = json.dumps({"start_step": start_step, **provenance()}, indent=1) + "\n"
        atomic_write(out_dir / "provenance.json", lambda tmp: Path(tmp).write_text(record))
        if progress:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=max_steps, initial=start_step, desc="train", unit="step", file=sys.stderr)
            except ImportError:
                pass

    def record(self, entry: dict, line: str | None = None) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(entry) + "\n")
        self.file.flush()
        if line is not None:
            (self.bar.write if self.bar else print)(line)

    def warn(self, step: int, text: str) -> None:
        """A warning: one line on stderr (above the bar) and a {"step", "warning"} entry in log.jsonl."""
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, "warning": text}) + "\n")
        self.file.flush()
        if self.bar:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def advance(self, loss: float) -> None:
        if self.bar:
            self.bar.set_postfix(loss=f"{loss:.4f}")
            self.bar.update(1)

    def close(self) -> None:
        if self.enabled:
            if self.bar:
                self.bar.close()
            self.file.close()


# ----------------------------------------------------------------------------- evaluation and samples
@torch.no_grad()
def evaluate(model, loader: ShardLoader, batches: int, device, autocast, d: Dist) -> tuple[float, int]:
    """(mean loss, distinct tokens) over the first `batches` val batches of every rank (the same batches
    each time).

    distinct tokens: the val targets those batches hold, all ranks together, each counted once. A split
    smaller than batches * world*B*T (+ the skipped tails) makes the loader wrap around and read the same
    batches again; they are then fewer than batches * world*B*T. A step is known by the loader's
    state after it (the same on every rank), so the count needs no communication."""
    model.eval()
    loader.reset()
    total = torch.zeros((), device=device)
    steps = set()
    for _ in range(batches):
        x, y = (torch.from_numpy(a).to(device) for a in loader.next_batch())
        steps.add(tuple(sorted(loader.state().items())))
        with autocast:
            _, loss = model(x, y)
        total += loss.float()
    model.train()
    return _all_reduce_mean(total / batches, d).item(), len(steps) * loader.step_tokens


def sample_prompt_ids(cfg: TrainConfig) -> list[int]:
    """--sample-prompt's GPT-2 token ids (an empty prompt: <|endoftext|> alone)."""
    from weights.tokenizer import get_tokenizer

    enc = get_tokenizer()
    return enc.encode_ordinary(cfg.sample_prompt) or [enc.eot_token]


@torch.no_grad()
def sample_text(raw_model, cfg: TrainConfig, device, step: int) -> str:
    """A sample from the prompt, with its own seeded generator (the training RNG is untouched)."""
    from weights.tokenizer import get_tokenizer

    idx = torch.tensor([sample_prompt_ids(cfg)], dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed + step)
    raw_model.eval()
    out = raw_model.generate(idx, cfg.sample_tokens, temperature=1.0, top_k=40, generator=gen)
    raw_model.train()
    return get_tokenizer().decode(out[0].tolist())


# ----------------------------------------------------------------------------- a run
@dataclass
class Run:
    """What the steps of a run share, built once by `_train` and passed to each step explicitly.

    model is what the forward and backward passes go through (sharding.wrap_model): raw_model,
    compiled under --compile, in DDP when world > 1; under fsdp raw_model itself, sharded in place
    (then compiled). raw_model is the GPT2 module underneath, whose parameters are clipped, gathered
    into checkpoints and sampled from. summary is what train() returns: it grows by one entry per
    step (losses, gradient norms, throughput) and per evaluation."""

    cfg: TrainConfig
    d: Dist
    config: weights.GPT2Config  # the model's shape and variant
    out_dir: Path  # log.jsonl, provenance.json, loss.png, step_* checkpoints
    amp_dtype: torch.dtype  # bfloat16 under autocast, else float32
    autocast: contextlib.AbstractContextManager  # torch.autocast(bf16), or a no-op for fp32
    raw_model: torch.nn.Module
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    train_loader: ShardLoader | ShuffledLoader  # this rank's (B, T) train batches
    val_loader: ShardLoader | None  # None without --eval-every
    grad_accum: int  # micro-steps per optimizer step
    tokens_per_step: int  # B * T * world * grad_accum: every rank's tokens of one optimizer step
    start_step: int  # 0, or the step of the checkpoint resumed from
    flops_per_token: int  # forward + backward (weights/flops.py)
    peak_flops: float | None  # one device's peak FLOP/s for MFU (None: unknown, no MFU)
    log: RunLog
    summary: dict


@dataclass
class StepStats:
    """One optimizer step, as logged: the same numbers on every rank except dt."""

    loss: float  # mean training loss of the step: over its grad_accum micro-batches and every rank
    grad_norm: float  # global gradient norm before clipping
    lr: float  # the learning rate the step used
    dt: float  # wall time of the step on this rank, seconds


# ----------------------------------------------------------------------------- the training loop
def train(cfg: TrainConfig) -> dict:
    """Run training as configured; returns a summary (losses per step, val losses, last checkpoint).

    Launched by torchrun, each process calls this and they train as one DDP job."""
    d = setup_distributed(cfg.device)
    try:
        if cfg.sdpa_backend != "auto" and cfg.attention != "sdpa":
            raise UsageError(
                f"--sdpa-backend {cfg.sdpa_backend} chooses a kernel of --attention sdpa, not {cfg.attention}"
            )
        with sdpa_backend(cfg.sdpa_backend, d.device):
            return _train(cfg, d)
    finally:
        if d.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train(cfg: TrainConfig, d: Dist) -> dict:
    """One run on this rank: set up, resume, then step by step (evaluate, sample, optimize, log,
    checkpoint), then a last evaluation, sample and plot. What can refuse the run before it trains
    (flags, data, the checkpoint) is checked before anything is written: RunLog makes out_dir."""
    check_launch(cfg, d)
    amp_dtype, autocast = set_precision(cfg, d.device)
    out_dir = Path(cfg.out_dir)

    # --- where the weights come from, what one step reads, the model and AdamW
    resume_from, params, config, state = load_starting_point(cfg, d, out_dir)
    tokens_per_step, grad_accum = batch_geometry(cfg, config, d.world)
    check_sample_prompt(cfg, config)
    train_loader, val_loader = build_loaders(cfg, d, config, model_from_checkpoint=params is not None)
    pad_rows = state["pad_rows"] if state is not None else None
    raw_model, model, optimizer = build_model_and_optimizer(cfg, d, params, config, pad_rows)
    start_step = 0
    if state is not None:  # the checkpoint's state is whole (gathered); each rank keeps its share
        start_step = restore_train_state(cfg, d.device, raw_model, optimizer, train_loader, state, resume_from)

    end_step = min(cfg.max_steps, cfg.stop_step) if cfg.stop_step else cfg.max_steps
    check_profile_steps(cfg, start_step, end_step)
    fpt = flops_per_token(config, cfg.seq_len)
    peak = cfg.peak_flops or device_peak_flops(d.device, amp_dtype)
    log = RunLog(out_dir, start_step, cfg.max_steps, d.master, cfg.progress)
    run = Run(
        cfg=cfg, d=d, config=config, out_dir=out_dir, amp_dtype=amp_dtype, autocast=autocast,
        raw_model=raw_model, model=model, optimizer=optimizer, train_loader=train_loader, val_loader=val_loader,
        grad_accum=grad_accum, tokens_per_step=tokens_per_step, start_step=start_step,
        flops_per_token=fpt, peak_flops=peak, log=log, summary=new_summary(resume_from),
    )  # fmt: skip
    if d.master:
        log_start(run, resume_from)

    # --- the loop: steps start_step .. end_step - 1 (--stop-step ends it early, the schedule unchanged)
    profiler = StepProfiler(out_dir, start_step, cfg.profile_steps, d.device, d.master)
    try:
        for step in range(start_step, end_step):
            if val_loader is not None and step % cfg.eval_every == 0:
                validate(run, step)
            if cfg.sample_every and step % cfg.sample_every == 0 and step > start_step:
                sample(run, step)
            profiler.before(step)
            stats = train_step(run, step)
            profiler.after(step)
            log_step(run, step, stats)
            done = step + 1
            if cfg.save and ((cfg.ckpt_every and done % cfg.ckpt_every == 0) or done == end_step):
                write_checkpoint(run, done)

        if end_step == cfg.max_steps > start_step:  # the run's end (not a --stop-step pause)
            if val_loader is not None:
                validate(run, cfg.max_steps)
            if cfg.sample_every:
                sample(run, cfg.max_steps)
    finally:
        log.close()
    return finish(run)


# ----------------------------------------------------------------------------- setting up a run
def check_profile_steps(cfg: TrainConfig, start_step: int, end_step: int) -> None:
    """Refuse --profile-steps N when this invocation ends before the N steps from its third step on."""
    first = start_step + 2
    if cfg.profile_steps and first + cfg.profile_steps > end_step:
        raise UsageError(
            f"--profile-steps {cfg.profile_steps}: this run does steps {start_step}..{end_step - 1}, and profiling "
            f"covers steps {first}..{first + cfg.profile_steps - 1}; raise --max-steps or lower --profile-steps"
        )


def check_launch(cfg: TrainConfig, d: Dist) -> None:
    """Refuse a run that cannot start: no --data, a --shard mode outside a torchrun job,
    --coordinate-descent-tuning without the compile mode it tunes, or --loss-impl chunked-triton,
    --mlp-impl, --qkv-impl or --norm-impl triton where its kernels cannot run."""
    if not cfg.data:
        raise UsageError("--data is required: a folder of token shards (make them with `python -m torch_impl.data`)")
    if cfg.loss_impl == "chunked-triton" and (reason := cross_entropy_triton.unavailable_reason(d.device)):
        raise UsageError(reason)
    for flag, impl, module in (("--mlp-impl", cfg.mlp_impl, mlp_triton), ("--qkv-impl", cfg.qkv_impl, qkv_triton)):
        if impl != "triton":
            continue
        if reason := module.unavailable_reason(d.device):
            raise UsageError(reason)
        if not wants_bf16(cfg.dtype, d.device):
            raise UsageError(
                f"{flag} triton computes in bf16 (--dtype bf16, the default on CUDA); use {flag} torch for a "
                "float32 run"
            )
    if cfg.norm_impl == "triton":
        if reason := layernorm_triton.unavailable_reason(d.device):
            raise UsageError(reason)
        if not wants_bf16(cfg.dtype, d.device):
            raise UsageError(
                "--norm-impl triton trains under bf16 autocast (--dtype bf16, the default on CUDA); use "
                "--norm-impl torch for a float32 run (compiled without autocast, torch 2.11 hands its backward "
                "zeros for dy: docs/torch_impl.md)"
            )
    if cfg.coordinate_descent_tuning and not (cfg.compile and cfg.compile_mode == "default"):
        raise UsageError(
            "--coordinate-descent-tuning tunes the kernels torch.compile generates: it needs --compile with "
            f"--compile-mode default (here {'--compile-mode ' + cfg.compile_mode if cfg.compile else 'no --compile'}; "
            "the max-autotune modes tune this way already)"
        )
    if cfg.shard != "none" and not d.group:
        raise UsageError(
            f"--shard {cfg.shard} splits state between the ranks of a torchrun job; launch with torchrun "
            "(`torchrun --nproc-per-node N -m torch_impl.train ...`), or use --shard none for one process"
        )


def check_sample_prompt(cfg: TrainConfig, config: weights.GPT2Config) -> None:
    """With --sample-every, refuse before training a --sample-prompt whose GPT-2 tokens the model's
    vocabulary does not hold (a tiny model of 64 ids and the default prompt "\\n", token 198), and load
    the tokenizer now: a missing tokenizer would otherwise stop the run at its first sample."""
    if not cfg.sample_every:
        return
    prompt = sample_prompt_ids(cfg)
    outside = sorted({t for t in prompt if t >= config.vocab_size})
    if outside:
        raise UsageError(
            f"--sample-prompt {cfg.sample_prompt!r}: GPT-2 token(s) {outside[:5]} are outside the model's "
            f"vocabulary of {config.vocab_size} ids; use --sample-every 0 for this model"
        )


def set_precision(cfg: TrainConfig, device: torch.device) -> tuple[torch.dtype, contextlib.AbstractContextManager]:
    """(autocast dtype, the context every forward pass runs in): bf16 autocast for --dtype bf16, or auto
    on CUDA; else float32 and a no-op context. On CUDA also sets TF32 for float32 matmuls (--tf32)."""
    use_bf16 = wants_bf16(cfg.dtype, device)
    amp_dtype = torch.bfloat16 if use_bf16 else torch.float32
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
    return amp_dtype, autocast


def load_starting_point(
    cfg: TrainConfig, d: Dist, out_dir: Path
) -> tuple[Path | None, dict | None, weights.GPT2Config, dict | None]:
    """Where the weights come from: (resume_from, params, config, state).

    With --resume and a checkpoint in out_dir: that checkpoint (resume_from), its params, config and
    train state (step, AdamW, loader, RNG, pad rows). Else --init: a checkpoint or hub id to fine-tune
    (params, config; no state), or 'scratch' (params None: the --model preset, initialised later)."""
    resume_from = latest_checkpoint(out_dir) if cfg.resume else None
    if cfg.resume and resume_from is None and d.master:
        print(f"--resume: no checkpoint in {out_dir} yet; starting from --init {cfg.init}", file=sys.stderr)
    state = None
    if resume_from is not None:
        params, config, state = load_checkpoint(resume_from)
    elif cfg.init != "scratch":
        params, config = weights.load(cfg.init, sha256=cfg.init_sha256 or None, sha256_from="--init-sha256")
    else:
        params, config = None, model_config(cfg)
    return resume_from, params, config, state


def batch_geometry(cfg: TrainConfig, config: weights.GPT2Config, world: int) -> tuple[int, int]:
    """(tokens per optimizer step, grad_accum): --total-batch-tokens (default B*T*world) in micro-steps of
    B*T tokens on each of the world ranks; grad_accum = total / (B*T*world), which must divide."""
    B, T = cfg.batch_size, cfg.seq_len
    if not 1 <= T <= config.n_ctx:
        raise UsageError(f"--seq-len {T} must be in [1, n_ctx={config.n_ctx}]")
    per_micro = B * T * world
    total = cfg.total_batch_tokens or per_micro
    if total % per_micro:
        raise UsageError(f"--total-batch-tokens {total} is not a multiple of B*T*world = {B}*{T}*{world} = {per_micro}")
    grad_accum = total // per_micro
    if cfg.compile and cfg.compile_mode in CUDA_GRAPH_MODES and grad_accum > 1:
        # torch.compile's CUDA graphs hand a backward's output buffer to .grad and overwrite it in the next
        # micro-step's replay: torch then refuses the run (seen on an H200 with torch 2.11, even with
        # cudagraph_mark_step_begin before each micro-step), and has been shown to accumulate wrong
        # gradients silently (pytorch/pytorch#169545)
        raise UsageError(
            f"--compile-mode {cfg.compile_mode} uses CUDA graphs, which torch cannot combine with gradient "
            f"accumulation ({grad_accum} micro-steps here; pytorch/pytorch#169545): use --compile-mode default or "
            f"max-autotune-no-cudagraphs, or --total-batch-tokens {per_micro} (one micro-step)"
        )
    return total, grad_accum


def build_loaders(
    cfg: TrainConfig, d: Dist, config: weights.GPT2Config, model_from_checkpoint: bool
) -> tuple[ShardLoader | ShuffledLoader, ShardLoader | None]:
    """(train loader, val loader or None without --eval-every): this rank's (B, T) batches of the shards,
    train in --data-order, val in order. Refuses shards holding a token id the model cannot embed."""
    B, T = cfg.batch_size, cfg.seq_len
    if cfg.data_order == "shuffled":
        train_loader = ShuffledLoader(shard_paths(cfg.data, "train"), B, T, d.rank, d.world, seed=cfg.data_seed)
    else:
        train_loader = ShardLoader(shard_paths(cfg.data, "train"), B, T, d.rank, d.world)
    val_loader = None
    if cfg.eval_every:
        val_loader = ShardLoader(shard_paths(cfg.data, "val"), B, T, d.rank, d.world)
    for split, loader in (("train", train_loader), ("val", val_loader)):
        top = loader.max_token_id() if loader is not None else -1
        if top >= config.vocab_size:  # an embedding lookup out of range would fail (or read pad rows) later
            model_from = "the checkpoint" if model_from_checkpoint else f"--model {cfg.model}"
            raise UserError(
                f"{cfg.data}: the {split} shards hold token id {top}, but {model_from} has a vocabulary of "
                f"{config.vocab_size} ids; tokenise for this vocabulary or use a model whose vocabulary covers the data"
            )
    return train_loader, val_loader


def compiler(cfg: TrainConfig):
    """torch.compile as --compile, --compile-mode and --coordinate-descent-tuning ask, or None (eager)."""
    if not cfg.compile:
        return None
    if cfg.coordinate_descent_tuning:  # torch.compile takes a mode or options, not both
        return lambda m: torch.compile(m, options={"coordinate_descent_tuning": True})
    return lambda m: torch.compile(m, mode=cfg.compile_mode)


def build_model_and_optimizer(
    cfg: TrainConfig, d: Dist, params: dict | None, config: weights.GPT2Config, pad_rows: dict | None
) -> tuple[torch.nn.Module, torch.nn.Module, torch.optim.Optimizer]:
    """(raw_model, model, optimizer). The whole model on every rank first (the same seeded init or
    checkpoint as one process, with a resumed checkpoint's pad rows), then wrapped (see Run.model): DDP
    around it when world > 1 (--shard none, zero1), or sharded in place (fsdp: each rank keeps its
    shard); AdamW over raw_model's parameters (build_optimizer)."""
    raw_model = build_model(cfg, d.device, params, config)
    if pad_rows is not None:
        _restore_pad_rows(raw_model, pad_rows, config.vocab_size)
    model = wrap_model(raw_model, cfg.shard, d.device, d.world, compiler(cfg))
    optimizer = build_optimizer(cfg, raw_model, d.device)
    return raw_model, model, optimizer


def restore_train_state(
    cfg: TrainConfig,
    device: torch.device,
    raw_model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader: ShardLoader | ShuffledLoader,
    state: dict,
    resume_from: Path,
) -> int:
    """Put the checkpoint's train state back: AdamW's state (each rank its share), the train loader's
    position (same --data-order required), the RNG. Returns the step to continue from."""
    load_optimizer_state(raw_model, optimizer, state["optimizer"], cfg.shard)
    saved_order = state["loader"].get("order", "sequential")
    if saved_order != cfg.data_order:
        raise UsageError(
            f"--data-order {cfg.data_order}: {resume_from} was trained with --data-order {saved_order}; "
            f"resume with that order (or start a new --out-dir)"
        )
    try:
        train_loader.load_state(state["loader"])
    except DataError as e:
        raise DataError(f"--resume from {resume_from}: {e}") from None
    _set_rng_state(state["rng"], device)
    return int(state["step"])


def new_summary(resume_from: Path | None) -> dict:
    """The summary train() returns, before the first step: losses and grad_norms (step -> float), val_losses
    (step -> float), tokens_per_s and mfu (one per step), checkpoint (the last good one: resume_from
    until this run writes one). Later: val_tokens, held (what rank 0 holds), plot, grad_accum, world,
    flops_per_token, peak_flops."""
    return {
        "losses": {},
        "grad_norms": {},
        "val_losses": {},
        "tokens_per_s": [],
        "mfu": [],
        "checkpoint": resume_from,
    }


def log_start(run: Run, resume_from: Path | None) -> None:
    """The run's first log.jsonl entry (every setting, the model, world, grad_accum, device, FLOPs per
    token) and its console line (rank 0)."""
    cfg, d, config, train_loader = run.cfg, run.d, run.config, run.train_loader
    B, T, total, grad_accum = cfg.batch_size, cfg.seq_len, run.tokens_per_step, run.grad_accum
    where = f"resumed from {resume_from}" if resume_from else f"init {cfg.init}"
    run.log.record(
        {
            "step": run.start_step,
            "event": "start",
            "config": dataclasses.asdict(cfg),
            "model": dataclasses.asdict(config),
            "world": d.world,
            "shard": cfg.shard,
            "grad_accum": grad_accum,
            "device": str(d.device),
            "flops_per_token": run.flops_per_token,
        },
        f"{where}; {weights.num_params(config):,} params"
        + "".join(f" {k}={v}" for k, v in config.variant_options().items())
        + f"; world {d.world}; B={B} T={T} grad_accum={grad_accum} ({total:,} tokens/step); {d.device}, "
        f"{'bf16' if run.amp_dtype == torch.bfloat16 else 'fp32'}{', compiled' if cfg.compile else ''}"
        + (
            f"; train data shuffled (--data-seed {cfg.data_seed}, {train_loader.windows:,} windows of T+1 per "
            f"epoch, epoch {train_loader.epoch})"
            if cfg.data_order == "shuffled"
            else ""
        )
        + (f"; --shard {cfg.shard}" if cfg.shard != "none" else ""),
    )


# ----------------------------------------------------------------------------- the steps of the loop
def validate(run: Run, step: int) -> None:
    """The val loss at `step` (evaluate: every rank its share of --eval-batches batches), into the summary
    and the log with the distinct val tokens it measured; warns once per run when the batches repeat."""
    cfg, d, val_loader = run.cfg, run.d, run.val_loader
    summary = run.summary
    val, distinct = evaluate(run.model, val_loader, cfg.eval_batches, d.device, run.autocast, d)
    summary["val_losses"][step] = val
    read = cfg.eval_batches * val_loader.step_tokens
    if distinct < read and "val_tokens" not in summary:  # once per run
        run.log.warn(
            step,
            f"warning: the val split holds {distinct // val_loader.step_tokens} distinct batches of world*B*T = "
            f"{d.world}*{cfg.batch_size}*{cfg.seq_len} tokens, fewer than --eval-batches {cfg.eval_batches}: "
            f"evaluations repeat them and measure {distinct:,} distinct val tokens, not {read:,}",
        )
    summary["val_tokens"] = distinct
    run.log.record(
        {"step": step, "val_loss": val, "val_tokens": distinct},
        f"step {step:6d} | val loss {val:.4f} | {distinct:,} val tokens",
    )


def sample(run: Run, step: int) -> None:
    """A sample of --sample-tokens from --sample-prompt (sample_text: its own seeded generator), logged by
    rank 0. Under fsdp every forward is a collective, so every rank samples (the same seeded draw)."""
    cfg, d = run.cfg, run.d
    if d.master or cfg.shard == "fsdp":
        text = sample_text(run.raw_model, cfg, d.device, step)
        if d.master:
            run.log.record({"step": step, "sample": text}, f"--- sample at step {step} ---\n{text}\n---")


def train_step(run: Run, step: int) -> StepStats:
    """One optimizer step: grad_accum micro-steps (forward_backward), the loss averaged over the ranks,
    the gradient norm clipped to --grad-clip, the learning rate of `step` (warmup + cosine), AdamW, the
    gradients zeroed; a stop (NonFiniteError) if the loss or the norm is not finite, with the weights and
    AdamW's state as they were. A fused AdamW (device_skippable) is told to skip on the device and the host
    reads both numbers after the update is queued: the GPU is waited for once, at the step's end. On the
    run's first step also logs what this rank holds, while gradients and AdamW's state exist."""
    cfg, device = run.cfg, run.d.device
    t0 = time.perf_counter()
    loss_sum = forward_backward(run)
    _all_reduce_mean(loss_sum, run.d)
    grad_norm = clip_gradients(run)
    lr = lr_at(step, cfg.lr, cfg.lr * cfg.min_lr_frac, cfg.warmup_steps, cfg.max_steps)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    adamw = device_skippable(run.optimizer)  # None under fsdp: there the host looks before the update
    if adamw is not None:
        # Queued before the host knows: the fused kernel skips the update on the device when the loss or the
        # norm is not finite, so the step waits for the GPU once, on the line below, not twice.
        skip_if_not_finite(adamw, loss_sum, grad_norm)
        run.optimizer.step()
    loss_value, norm_value = torch.stack([loss_sum, grad_norm.float()]).tolist()
    check_finite(step, loss_value, norm_value, run.summary["checkpoint"])  # raises; weights untouched
    if adamw is None:
        run.optimizer.step()
    if step == run.start_step:
        log_held(run, step)
    run.optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return StepStats(loss_value, norm_value, lr, time.perf_counter() - t0)


def forward_backward(run: Run) -> torch.Tensor:
    """grad_accum micro-steps, each: this rank's next (B, T) batch x, y (int64), loss = model(x, y) /
    grad_accum under autocast, loss.backward(); the gradients of the step's mean loss accumulate in
    .grad. Returns this rank's mean loss of the step (a 0-d float32 tensor, detached).

    DDP all-reduces the gradients only in the last micro-step's backward, decided before its forward
    (set_grad_sync); fsdp reduce-scatters in each."""
    cfg, d, device = run.cfg, run.d, run.d.device
    loss_sum = torch.zeros((), device=device)
    for micro in range(run.grad_accum):
        x, y = run.train_loader.next_batch()
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        if device.type == "cuda":
            x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        set_grad_sync(run.model, cfg.shard, d.enabled, last_micro_step=micro == run.grad_accum - 1)
        if cfg.compile and cfg.compile_mode == "reduce-overhead":
            # CUDA graphs replay into the same output buffers: each forward is announced as a new step, the
            # documented way to call such a model again (gradient accumulation is refused: batch_geometry)
            torch.compiler.cudagraph_mark_step_begin()
        with run.autocast:
            _, loss = run.model(x, y)
        loss = loss / run.grad_accum
        loss_sum += loss.detach()
        loss.backward()
    return loss_sum


def clip_gradients(run: Run) -> torch.Tensor:
    """The global gradient norm before clipping (a 0-d tensor, the same on every rank); the gradients are
    scaled down to norm --grad-clip when above it (--grad-clip 0: never)."""
    cfg = run.cfg
    clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
    return local_grad_norm(torch.nn.utils.clip_grad_norm_(run.raw_model.parameters(), clip))


def check_finite(step: int, loss: float, grad_norm: float, last_checkpoint: Path | None) -> None:
    """Raise NonFiniteError, naming the step, what broke and the last good checkpoint, unless the step's
    loss and gradient norm are both finite (every rank sees the same reduced numbers: all stop)."""
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        raise NonFiniteError(
            f"step {step}: {'loss' if not math.isfinite(loss) else 'gradient norm'} is not finite "
            f"(loss {loss}, grad norm {grad_norm}); stopped before updating the weights. "
            f"Last good checkpoint: {last_checkpoint if last_checkpoint else 'none written in this run'} (untouched). "
            "Try a lower --lr, more --warmup-steps, --grad-clip, or check the data."
        )


def log_held(run: Run, step: int) -> None:
    """What this rank holds (held_numel: parameters, gradients, AdamW's m and v, in elements), into the
    summary; rank 0 logs it in MiB of float32."""
    run.summary["held"] = held_numel(run.raw_model, run.optimizer)
    held = ", ".join(f"{k} {4 * v / 2**20:,.1f} MiB" for k, v in run.summary["held"].items())
    run.log.record({"step": step, "event": "held", "held": run.summary["held"]}, f"rank 0 holds: {held}")


def cuda_memory(device: torch.device) -> dict:
    """This rank's CUDA memory so far, for each step's log.jsonl entry ({} off CUDA): the peak held by
    tensors and by torch's caching allocator, in GiB, and how many times the allocator ran out, freed its
    cache and retried (each retry synchronizes the device: a step that needs one waits for the GPU)."""
    if device.type != "cuda":
        return {}
    stats = torch.cuda.memory_stats(device)
    return {
        "cuda_peak_allocated_gib": stats.get("allocated_bytes.all.peak", 0) / 2**30,
        "cuda_peak_reserved_gib": stats.get("reserved_bytes.all.peak", 0) / 2**30,
        "cuda_alloc_retries": stats.get("num_alloc_retries", 0),
    }


def log_step(run: Run, step: int, stats: StepStats) -> None:
    """The step into the summary and log.jsonl (loss, lr, grad norm, time, tokens/s of all ranks and per
    device, MFU per device, CUDA memory: cuda_memory), a console line every --log-every steps and at the
    last, the bar moved on."""
    cfg, d = run.cfg, run.d
    tok_s = run.tokens_per_step / stats.dt  # every rank's tokens of the step
    mfu = flops_mfu(run.flops_per_token, tok_s, run.peak_flops, d.world)  # per device
    run.summary["losses"][step] = stats.loss
    run.summary["grad_norms"][step] = stats.grad_norm
    run.summary["tokens_per_s"].append(tok_s)
    run.summary["mfu"].append(mfu)
    entry = {
        "step": step,
        "loss": stats.loss,
        "lr": stats.lr,
        "grad_norm": stats.grad_norm,
        "dt_ms": 1e3 * stats.dt,
        "tokens_per_s": tok_s,
        "tokens_per_s_per_device": tok_s / d.world,
        "mfu": mfu,
        **cuda_memory(d.device),
    }
    line = None
    if cfg.log_every and (step % cfg.log_every == 0 or step == cfg.max_steps - 1):
        line = (
            f"step {step:6d} | loss {stats.loss:.4f} | lr {stats.lr:.3e} | norm {stats.grad_norm:.3f} | "
            f"{1e3 * stats.dt:7.1f} ms | {tok_s:,.0f} tok/s" + (f" | MFU {100 * mfu:.1f}%" if mfu else "")
        )
    run.log.record(entry, line)
    run.log.advance(stats.loss)


def write_checkpoint(run: Run, step: int) -> None:
    """Checkpoint `step` (torch_impl.checkpoint: the canonical weights, AdamW's state, the loader's state,
    the RNG, the pad rows, the settings). Every rank takes part in gathering the state (zero1, fsdp); rank
    0 then holds it whole and writes it; its outcome goes to every rank (_share_save_outcome)."""
    from torch_impl.model import to_canonical_layout

    cfg, d, raw_model = run.cfg, run.d, run.raw_model
    tensors, optimizer_state = gather_full_state(raw_model, run.optimizer, cfg.shard, d.master)
    failure = None
    if d.master:
        try:
            train_state = {
                "step": step,
                "optimizer": optimizer_state,
                "loader": run.train_loader.state(),  # the loader's own state, whatever it holds
                "rng": _rng_state(d.device),
                "pad_rows": _pad_rows(tensors, run.config.vocab_size),
                "config": json.dumps(dataclasses.asdict(cfg)),
            }
            params = to_canonical_layout(raw_model, tensors)
            save_checkpoint(run.out_dir, step, params, run.config, train_state, keep_last=cfg.keep_last)
        except Exception as e:  # raised again below, on rank 0 and (as a CheckpointError) on every other rank
            failure = e
    _share_save_outcome(failure, checkpoint_dir(run.out_dir, step), d)  # also: nobody runs ahead of the write
    run.summary["checkpoint"] = checkpoint_dir(run.out_dir, step)  # every rank knows the last good one


def _share_save_outcome(failure: Exception | None, folder: Path, d: Dist) -> None:
    """Rank 0 writes a checkpoint alone; its outcome goes to every rank, so that a failed write stops
    every rank with the error (instead of leaving them waiting for rank 0 at the next collective, which
    under NCCL is a hang until its timeout). Rank 0 raises its own error; the others a CheckpointError
    quoting it. The broadcast also holds every rank back until rank 0 is done writing."""
    if d.group:
        import torch.distributed as dist

        message = [None if failure is None else one_line(failure).removeprefix("error: ")]
        dist.broadcast_object_list(message, src=0)
        if failure is None and message[0] is not None:
            raise CheckpointError(
                f"rank 0 could not write checkpoint {folder}: {message[0]}; stopped on rank {d.rank} too"
            )
    if failure is not None:
        raise failure


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def finish(run: Run) -> dict:
    """After the loop: rank 0 draws out_dir/loss.png from log.jsonl (when this run or an earlier one trained
    and matplotlib is there); returns the summary with grad_accum, world, flops_per_token, peak_flops."""
    cfg, d, summary = run.cfg, run.d, run.summary
    trained = bool(summary["losses"]) or run.start_step > 0  # else the log holds no loss to draw
    if d.master and cfg.plot and trained and (run.out_dir / "log.jsonl").exists():
        try:
            from torch_impl.plot import plot_log

            summary["plot"] = plot_log(run.out_dir / "log.jsonl", run.out_dir / "loss.png")
        except ImportError as e:  # matplotlib is optional
            print(f"(no loss plot: {e})", file=sys.stderr)
    summary["grad_accum"] = run.grad_accum
    summary["world"] = d.world
    summary["flops_per_token"] = run.flops_per_token
    summary["peak_flops"] = run.peak_flops
    return summary


# ----------------------------------------------------------------------------- CLI
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """TrainConfig from flags; a --config file (JSON or TOML, keys = field names) sets defaults."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    file_values: dict = {}
    if known.config:
        path = Path(known.config)
        if not path.is_file():
            raise UsageError(f"--config {path}: no such file")
        text = path.read_text()
        try:
            file_values = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
            raise UsageError(
                f"--config {path}: not valid {'TOML' if path.suffix == '.toml' else 'JSON'} ({e})"
            ) from None
        if not isinstance(file_values, dict):
            raise UsageError(f"--config {path}: expected a table of settings, got {type(file_values).__name__}")
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(file_values) - names)
        if unknown:
            raise UsageError(f"--config {path}: unknown setting(s) {unknown}; see `python -m torch_impl.train --help`")

    ap = ArgumentParser(
        prog="python -m torch_impl.train",
        description="Train GPT-2 (from scratch or a checkpoint) on token shards; torchrun for DDP.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--config", help="JSON or TOML file of settings (field names as keys); flags override it")
    for f in dataclasses.fields(TrainConfig):
        default = file_values.get(f.name, f.default)
        if isinstance(f.default, bool):
            ap.add_argument(
                _flag(f.name), action=argparse.BooleanOptionalAction, default=default, help=f.metadata["help"]
            )
        else:
            ap.add_argument(
                _flag(f.name),
                type=type(f.default),
                default=default,
                choices=f.metadata["choices"],
                help=f.metadata["help"],
            )
    args = vars(ap.parse_args(argv))
    args.pop("config")
    args.pop("debug")
    return TrainConfig(**args)


def main(argv: list[str] | None = None) -> int:
    """The command line; a user error (a bad flag, file, shard or checkpoint) is one line and exit status 2.
    As a program (`python -m torch_impl.train`, torchrun) the process then ends by exit_process."""
    return run_cli(_main, argv)


_JOINED_GROUP = False  # set by setup_distributed when it made the process group


def exit_process(code: int, made_group: bool = False) -> None:
    """End the program with exit status `code`: sys.exit, or in a process that made a process group (a
    torchrun worker: setup_distributed made it, or the caller did and says so with `made_group`) flush
    stdout and stderr and os._exit, skipping the interpreter's shutdown.

    Why: gloo's worker threads outlive destroy_process_group (DTensor's objects hold the device mesh and
    with it the group, even after gc.collect()), and a worker may still be releasing the tensors of the
    last collective when the interpreter shuts down. That release needs the GIL; a thread asking for the
    GIL during shutdown is ended by Python from inside a C++ destructor, and the process aborts
    ("terminate called without an active exception", exit status -6 instead of 0 or 2). Measured on the
    2-core box: 1 abort in 160 runs of tests/training/test_sharding.py's save-failure pair before this.
    Every file the run writes is closed (and checkpoints fsynced) before main returns, so nothing is
    lost by skipping the shutdown."""
    if not (_JOINED_GROUP or made_group):
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _main(argv: list[str]) -> int:
    cfg = parse_args(argv)
    try:
        summary = train(cfg)
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    if summary.get("checkpoint"):
        rank0 = int(os.environ.get("RANK", "0")) == 0
        if rank0:
            print(f"checkpoint: {summary['checkpoint']}")
    return 0


if __name__ == "__main__":
    exit_process(main())
