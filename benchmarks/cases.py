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

OPS = ("matmul", "layernorm", "gelu", "attention-naive", "attention-tiled", "crossentropy")
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

    @property
    def N(self) -> int:
        return self.B * self.T


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
    else:
        raise ValueError(f"unknown op {op!r}; choose one of {OPS}")
    return OpInputs(op, B, T, C, NH, V, arrays)


def model_inputs(size, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """idx, targets (B, T): random token ids (a fixed seed), targets = idx shifted by one."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, size.config.vocab_size, size=(size.B, size.T + 1))
    return tokens[:, :-1].copy(), tokens[:, 1:].copy()
