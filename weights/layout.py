"""The canonical GPT-2 parameter layout: the contract every backend shares.

Parameters travel between backends as a plain ``dict[str, np.ndarray]`` keyed by
the names below (Hugging Face's GPT-2 names without the ``transformer.`` prefix),
in this order. Gradients use the same names and shapes.

Shapes of GPT-2, with C = n_embd, V = vocab_size, maxT = n_ctx:

    wte.weight                 (V, C)      token embedding; also the output head (tied)
    wpe.weight                 (maxT, C)   position embedding
    h.{i}.ln_1.weight / .bias  (C,)        LayerNorm before attention
    h.{i}.attn.c_attn.weight   (C, 3C)     qkv projection, stored (in, out): y = x @ W + b
    h.{i}.attn.c_attn.bias     (3C,)
    h.{i}.attn.c_proj.weight   (C, C)      attention output projection (in, out)
    h.{i}.attn.c_proj.bias     (C,)
    h.{i}.ln_2.weight / .bias  (C,)        LayerNorm before the MLP
    h.{i}.mlp.c_fc.weight      (C, 4C)     MLP up projection (in, out)
    h.{i}.mlp.c_fc.bias        (4C,)
    h.{i}.mlp.c_proj.weight    (4C, C)     MLP down projection (in, out)
    h.{i}.mlp.c_proj.bias      (C,)
    ln_f.weight / ln_f.bias    (C,)        final LayerNorm

There is no ``lm_head.weight``: logits = x @ wte.weight.T.

The variants (weights/config.py) keep these names and change what exists and how wide it is,
with HS = C // n_head, NKV = kv_heads, H = hidden:

    position "rope"     no wpe.weight
    norm "rmsnorm"      no ln_1.bias / ln_2.bias / ln_f.bias (and none with bias=False either)
    n_kv_head           attn.c_attn.weight (C, (NH + 2 NKV) HS): q's NH heads, then k's NKV, then v's NKV
    hidden / mlp        mlp.c_fc.weight (C, H), mlp.c_proj.weight (H, C); swiglu: c_fc (C, 2H), the
                        gate's H columns first, then the up projection's H
    bias=False          no .bias of any linear layer (c_attn, attn.c_proj, c_fc, mlp.c_proj)
    tied_head=False     lm_head.weight (V, C), last: logits = x @ lm_head.weight.T
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from weights.config import GPT2Config

# The 12 per-block tensor kinds, in checkpoint order, with their shapes as functions of C.
BLOCK_TENSORS: tuple[tuple[str, callable], ...] = (
    ("ln_1.weight", lambda C: (C,)),
    ("ln_1.bias", lambda C: (C,)),
    ("attn.c_attn.weight", lambda C: (C, 3 * C)),
    ("attn.c_attn.bias", lambda C: (3 * C,)),
    ("attn.c_proj.weight", lambda C: (C, C)),
    ("attn.c_proj.bias", lambda C: (C,)),
    ("ln_2.weight", lambda C: (C,)),
    ("ln_2.bias", lambda C: (C,)),
    ("mlp.c_fc.weight", lambda C: (C, 4 * C)),
    ("mlp.c_fc.bias", lambda C: (4 * C,)),
    ("mlp.c_proj.weight", lambda C: (4 * C, C)),
    ("mlp.c_proj.bias", lambda C: (C,)),
)

# The 16 tensor kinds: 2 embeddings + 12 per block + 2 final LayerNorm.
TENSOR_KINDS: tuple[str, ...] = (
    ("wte.weight", "wpe.weight") + tuple(k for k, _ in BLOCK_TENSORS) + ("ln_f.weight", "ln_f.bias")
)

# Weights that project back into the residual stream: GPT-2 scales their init by 1/sqrt(2*n_layer).
RESIDUAL_PROJECTIONS = ("attn.c_proj.weight", "mlp.c_proj.weight")


def block_shapes(config: GPT2Config) -> dict[str, tuple[int, ...]]:
    """Ordered kind -> shape of the tensors one block of `config` has (GPT-2: the 12 of BLOCK_TENSORS)."""
    C, H = config.n_embd, config.hidden
    shapes = {
        "ln_1.weight": (C,),
        "ln_1.bias": (C,),
        "attn.c_attn.weight": (C, config.qkv_width),
        "attn.c_attn.bias": (config.qkv_width,),
        "attn.c_proj.weight": (C, C),
        "attn.c_proj.bias": (C,),
        "ln_2.weight": (C,),
        "ln_2.bias": (C,),
        "mlp.c_fc.weight": (C, config.fc_width),
        "mlp.c_fc.bias": (config.fc_width,),
        "mlp.c_proj.weight": (H, C),
        "mlp.c_proj.bias": (C,),
    }
    return {kind: shape for kind, shape in shapes.items() if _exists(kind, config)}


def _exists(kind: str, config: GPT2Config) -> bool:
    if kind in ("ln_1.bias", "ln_2.bias", "ln_f.bias"):
        return config.norm_bias
    if kind.endswith(".bias"):  # the linear layers' biases
        return config.bias
    if kind == "wpe.weight":
        return config.position == "learned"
    if kind == "lm_head.weight":
        return not config.tied_head
    return True


def param_shapes(config: GPT2Config) -> dict[str, tuple[int, ...]]:
    """Ordered name -> shape for every parameter tensor of `config`."""
    C = config.n_embd
    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (config.vocab_size, C)}
    if _exists("wpe.weight", config):
        shapes["wpe.weight"] = (config.n_ctx, C)
    block = block_shapes(config)
    for i in range(config.n_layer):
        for kind, shape in block.items():
            shapes[f"h.{i}.{kind}"] = shape
    shapes["ln_f.weight"] = (C,)
    if _exists("ln_f.bias", config):
        shapes["ln_f.bias"] = (C,)
    if _exists("lm_head.weight", config):
        shapes["lm_head.weight"] = (config.vocab_size, C)
    return shapes


def param_names(config: GPT2Config) -> list[str]:
    return list(param_shapes(config))


def block_activations(config: GPT2Config) -> tuple[str, ...]:
    """The named activations of one block, in forward order (docs/contract.md): GPT-2's ten, plus "rope"
    (qkv with q and k rotated) under rotary positions, and "swiglu" in place of "gelu"."""
    names = ["ln_1", "qkv"] + (["rope"] if config.position == "rope" else []) + ["attn", "attn_proj", "resid_1"]
    names += ["ln_2", "fc", "gelu" if config.mlp == "gelu" else "swiglu", "mlp_proj", "resid_2"]
    return tuple(names)


def activation_names(config: GPT2Config) -> list[str]:
    """Every named activation of the contract in forward order: embed, each block's, ln_f, logits."""
    names = ["embed"]
    for i in range(config.n_layer):
        names += [f"h.{i}.{a}" for a in block_activations(config)]
    return names + ["ln_f", "logits"]


def num_params(config: GPT2Config) -> int:
    """Number of parameter values (a tied head adds none)."""
    return sum(int(np.prod(s)) for s in param_shapes(config).values())


def tensor_kind(name: str) -> str:
    """'h.3.attn.c_proj.weight' -> 'attn.c_proj.weight'; other names map to themselves."""
    if name.startswith("h."):
        return name.split(".", 2)[2]
    return name


def validate_params(params: Mapping[str, np.ndarray], config: GPT2Config, what: str = "params") -> None:
    """Raise ValueError unless `params` holds exactly the tensors of `config` with the right shapes,
    a floating dtype, and only finite values. The message names the offending tensor."""
    expected = param_shapes(config)
    missing = [n for n in expected if n not in params]
    unknown = [n for n in params if n not in expected]
    if missing:
        raise ValueError(f"{what}: missing tensor(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unknown:
        raise ValueError(f"{what}: unknown tensor name(s) {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    for name, shape in expected.items():
        arr = params[name]
        if tuple(arr.shape) != shape:
            raise ValueError(f"{what}: tensor {name!r} has shape {tuple(arr.shape)}, expected {shape}")
        if arr.dtype not in (np.float32, np.float64):
            raise ValueError(f"{what}: tensor {name!r} has dtype {arr.dtype}, expected float32 or float64")
        if not np.isfinite(arr).all():
            raise ValueError(f"{what}: tensor {name!r} contains NaN or inf")


def infer_config(shapes: Mapping[str, tuple[int, ...]], n_head: int | None = None) -> GPT2Config:
    """Infer a config from tensor shapes alone (no config.json).

    n_head cannot be seen in any shape. Every released GPT-2 has heads of 64 channels, so without
    `n_head` it is n_embd // 64 when n_embd is a multiple of 64; otherwise it cannot be known and the
    inference is refused (pass n_head, or a config.json). Only a plain GPT-2 is inferred: a checkpoint
    of a variant (weights/config.py) needs its config.json.
    """
    try:
        V, C = shapes["wte.weight"]
        n_ctx, C2 = shapes["wpe.weight"]
    except KeyError as e:
        raise ValueError(
            f"cannot infer config: tensor {e.args[0]!r} is missing (a variant checkpoint needs its config.json)"
        ) from None
    except ValueError:
        raise ValueError("cannot infer config: wte.weight / wpe.weight are not 2-D") from None
    if C2 != C:
        raise ValueError(f"cannot infer config: wte.weight is (V, {C}) but wpe.weight is ({n_ctx}, {C2})")
    layers = {int(n.split(".")[1]) for n in shapes if n.startswith("h.") and n.split(".")[1].isdigit()}
    n_layer = max(layers) + 1 if layers else 0
    if layers != set(range(n_layer)) or n_layer == 0:
        raise ValueError(f"cannot infer config: block indices {sorted(layers)} are not 0..n_layer-1")
    if n_head is None:
        if C % 64:
            raise ValueError(
                f"cannot infer config: n_embd = {C} is not a multiple of GPT-2's head size 64, so the number of "
                "heads is unknown; put a config.json beside the file, or pass config= (GPT2Config(..., n_head=...))"
            )
        n_head = C // 64
    return GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=C, vocab_size=V, n_ctx=n_ctx)
