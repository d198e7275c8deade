"""The grid the benchmark files are parametrised over, and the inputs of every op.

Each op is the GPT-2 layer it names, at the shapes it has inside the model at a given size
(N = B * T rows, C channels, V vocabulary, NH heads):

    matmul        the MLP's c_fc linear: x (N, C) @ W (C, 4C) + b          (the biggest per-layer matmul)
    layernorm     x (N, C), weight, bias (C,)
    gelu          x (N, 4C), tanh form
    attention-naive / attention-tiled
                  qkv (B, T, 3C) -> (B, T, C), causal; naive holds the (T, T) scores, tiled
                  streams over key blocks (torch: math vs scaled_dot_product_attention;
                  Numba: naive vs flash kernels)
    crossentropy  softmax + cross-entropy of logits (N, V) against targets (N,)

and the variants' ops (docs/variants.md), at the shapes of the llama-style model of that width
(`variant_config`: GPT2Config.llama_style_124m at C = 768, the tiny conformance shape's otherwise):

    rmsnorm       x (N, C), weight (C,)
    swiglu        fc (N, 2H) = [gate | up] -> (N, H), H the MLP's hidden width (2304 at 124M)
    rope          qkv (B, T, (NH + 2 NKV) HS): q's and k's heads rotated by position (NKV = 4 at 124M)

`forward` times the op; `backward` times its backward alone, from saved forward state, and
returns the gradient of the op's first input (dx, dqkv, dlogits). The Numba cross-entropy
kernel is fused: its backward pass computes the loss too.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from benchmarks.backends import BACKENDS
from benchmarks.sizes import SIZES
from weights import GPT2Config

OPS = ("matmul", "layernorm", "gelu", "attention-naive", "attention-tiled", "crossentropy", "rmsnorm", "swiglu", "rope")
VARIANT_OPS = ("rmsnorm", "swiglu", "rope")
DIRECTIONS = ("forward", "backward")
MODEL_TASKS = ("forward", "forward-backward", "train-step")


def size_param(name: str):
    """A size as a pytest param: tiny carries the `smoke` mark, the GPU size the `gpu` mark."""
    marks = {"tiny": [pytest.mark.smoke], "124m-gpu": [pytest.mark.gpu]}.get(name, [])
    return pytest.param(SIZES[name], id=name, marks=marks)


def size_params():
    return [size_param(name) for name in SIZES]


def backend_params():
    return [pytest.param(b, id=b.name) for b in BACKENDS]


@dataclasses.dataclass
class OpInputs:
    """float64 NumPy inputs of one op at one size; every backend converts them to its dtype/device."""

    op: str
    B: int
    T: int
    C: int
    NH: int
    V: int
    arrays: dict[str, np.ndarray]
    eps: float = 1e-5
    NKV: int = 0  # key/value heads (the rope op)
    H: int = 0  # MLP hidden width (the swiglu op)
    theta: float = 10000.0  # rope_theta (the rope op)

    @property
    def N(self) -> int:
        return self.B * self.T


def variant_config(config: GPT2Config) -> GPT2Config:
    """The llama-style model of `config`'s width, whose shapes the variants' ops take."""
    if config.n_embd == 768:
        return GPT2Config.llama_style_124m()
    return dataclasses.replace(config, position="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=1, bias=False)


def op_inputs(op: str, size, seed: int = 0) -> OpInputs:
    """Deterministic inputs for `op` at `size` (values of the scale they have inside GPT-2)."""
    cfg = size.config
    B, T, C, NH, V = size.B, size.T, cfg.n_embd, cfg.n_head, cfg.vocab_size
    N = B * T
    rng = np.random.default_rng(seed)
    normal = lambda *shape: rng.standard_normal(shape)
    if op == "matmul":
        arrays = {"x": normal(N, C), "w": 0.02 * normal(C, 4 * C), "b": 0.02 * normal(4 * C), "dout": normal(N, 4 * C)}
    elif op == "layernorm":
        arrays = {"x": normal(N, C), "w": 1.0 + 0.1 * normal(C), "b": 0.1 * normal(C), "dout": normal(N, C)}
    elif op == "gelu":
        arrays = {"x": normal(N, 4 * C), "dout": normal(N, 4 * C)}
    elif op.startswith("attention"):
        arrays = {"qkv": normal(B, T, 3 * C), "dout": normal(B, T, C)}
    elif op == "crossentropy":
        arrays = {"logits": 2.0 * normal(B, T, V), "targets": rng.integers(0, V, size=(B, T))}
    elif op in VARIANT_OPS:
        vc = variant_config(cfg)
        if op == "rmsnorm":
            arrays = {"x": normal(N, C), "w": 1.0 + 0.1 * normal(C), "dout": normal(N, C)}
        elif op == "swiglu":
            arrays = {"fc": normal(N, 2 * vc.hidden), "dout": normal(N, vc.hidden)}
        else:
            arrays = {"qkv": normal(B, T, vc.qkv_width), "dout": normal(B, T, vc.qkv_width)}
        return OpInputs(op, B, T, C, NH, V, arrays, NKV=vc.kv_heads, H=vc.hidden, theta=vc.rope_theta)
    else:
        raise ValueError(f"unknown op {op!r}; choose one of {OPS}")
    return OpInputs(op, B, T, C, NH, V, arrays)


def min_bytes(op: str, direction: str, inputs: OpInputs) -> int | None:
    """The fewest bytes a float32 op must move through device memory: each input read once, each
    output written once (what a memory-bound kernel's time is judged against). None for the ops
    whose time is arithmetic (matmul, attention)."""
    N, C, V = inputs.N, inputs.C, inputs.V
    floats = {
        ("layernorm", "forward"): N * C + 2 * C + N * C + 2 * N,  # x, w, b -> out, mean, rstd
        # dout, x, dx (the model's kernel adds into it: read and write), w, mean, rstd -> dw, db
        ("layernorm", "backward"): 4 * N * C + C + 2 * N + 2 * C,
        ("gelu", "forward"): 2 * N * 4 * C,  # x -> out
        ("gelu", "backward"): 3 * N * 4 * C,  # x, dout -> dx
        ("crossentropy", "forward"): N * V + N + N,  # logits, targets -> losses
        ("crossentropy", "backward"): 2 * N * V + 2 * N,  # logits, targets -> losses, dlogits
        ("rmsnorm", "forward"): 2 * N * C + C + N,  # x, w -> out, rstd
        ("rmsnorm", "backward"): 4 * N * C + C + N + C,  # dout, x, dx (read and written), w, rstd -> dw
        ("swiglu", "forward"): 3 * N * inputs.H,  # fc (2H) -> out (H)
        ("swiglu", "backward"): 5 * N * inputs.H,  # fc (2H), dout (H) -> dfc (2H)
        ("rope", "forward"): 2 * inputs.arrays.get("qkv", np.empty(0)).size,  # qkv -> rotated qkv
        ("rope", "backward"): 2 * inputs.arrays.get("qkv", np.empty(0)).size,  # dout -> dqkv
    }.get((op, direction))
    return None if floats is None else 4 * floats


# The matmul shapes of GPT-2 124M at B=4, T=1024 (BT = 4096 rows), forward and backward, each as
# (name, M, N, K, layout, k_chunk): out(M, N) = A @ B in kernels/matmul.py's layouts. k_chunk: the
# head's backward sums K = 50,257 in chunks (numba_impl.model.HEAD_K_CHUNK) to keep float32 accuracy.
MATMUL_SHAPES = (
    ("c_attn fwd", 4096, 2304, 768, "NN", None),
    ("attn c_proj fwd", 4096, 768, 768, "NN", None),
    ("c_fc fwd", 4096, 3072, 768, "NN", None),
    ("mlp c_proj fwd", 4096, 768, 3072, "NN", None),
    ("lm head fwd", 4096, 50257, 768, "NT", None),
    ("c_attn dX", 4096, 768, 2304, "NT", None),
    ("attn c_proj dX", 4096, 768, 768, "NT", None),
    ("c_fc dX", 4096, 768, 3072, "NT", None),
    ("mlp c_proj dX", 4096, 3072, 768, "NT", None),
    ("c_attn dW", 768, 2304, 4096, "TN", None),
    ("attn c_proj dW", 768, 768, 4096, "TN", None),
    ("c_fc dW", 768, 3072, 4096, "TN", None),
    ("mlp c_proj dW", 3072, 768, 4096, "TN", None),
    ("lm head dX", 4096, 768, 50257, "NN", 1024),
    ("lm head dW", 50257, 768, 4096, "TN", None),
)


def matmul_operands(M: int, N: int, K: int, layout: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """float32 A, B stored as `layout` says (values of unit scale)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((K, M) if layout[0] == "T" else (M, K), dtype=np.float32)
    b = rng.standard_normal((N, K) if layout[1] == "T" else (K, N), dtype=np.float32)
    return a, b


def model_inputs(size, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """idx, targets (B, T): random token ids (a fixed seed), targets = idx shifted by one."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, size.config.vocab_size, size=(size.B, size.T + 1))
    return tokens[:, :-1].copy(), tokens[:, 1:].copy()
