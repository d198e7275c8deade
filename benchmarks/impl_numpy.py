"""The NumPy reference as benchmark callables: its per-op `*_forward` / `*_backward` and its model.

Every callable is built once (inputs converted to the backend's dtype, forward state saved
for a backward) and then called many times by the timer.
"""

from __future__ import annotations

import dataclasses

import numpy as np

import reference
from reference import attention as A
from reference import layers as L
from reference import rope as R

LR = 1e-4  # training-step benchmarks: any small learning rate; the time does not depend on it


def _forward_fns(inputs, dtype):
    """op -> (forward callable returning everything its backward needs, primary output of that)."""
    a = {k: (v if v.dtype.kind in "iu" else v.astype(dtype)) for k, v in inputs.arrays.items()}
    NH, eps = inputs.NH, inputs.eps
    fwd = {
        "matmul": (lambda: L.linear_forward(a["x"], a["w"], a["b"]), lambda r: r),
        "layernorm": (lambda: L.layernorm_forward(a["x"], a["w"], a["b"], eps), lambda r: r[0]),
        "gelu": (lambda: L.gelu_forward(a["x"]), lambda r: r),
        "attention-naive": (lambda: A.attention_forward(a["qkv"], NH), lambda r: r[0]),
        "attention-tiled": (lambda: A.attention_forward_tiled(a["qkv"], NH), lambda r: r[0]),
        "crossentropy": (lambda: L.crossentropy_forward(a["logits"], a["targets"]), lambda r: np.asarray(r[0])),
        "rmsnorm": (lambda: L.rmsnorm_forward(a["x"], a["w"], eps), lambda r: r[0]),
        "swiglu": (lambda: L.swiglu_forward(a["fc"]), lambda r: r),
        "rope": (lambda: R.rope_forward(a["qkv"], NH, inputs.NKV, inputs.theta), lambda r: r),
    }
    return a, fwd[inputs.op]


def _backward_fn(op, a, saved, NH, inputs=None):
    """The op's backward from its saved forward state; returns the gradient of the first input."""
    if op == "matmul":
        return lambda: L.linear_backward(a["dout"], a["x"], a["w"])[0]
    if op == "layernorm":
        _, mean, rstd = saved
        return lambda: L.layernorm_backward(a["dout"], a["x"], a["w"], mean, rstd)[0]
    if op == "gelu":
        return lambda: L.gelu_backward(a["dout"], a["x"])
    if op == "attention-naive":
        att = saved[1]
        return lambda: A.attention_backward(a["dout"], a["qkv"], att, NH)
    if op == "attention-tiled":
        out, lse = saved
        return lambda: A.attention_backward_tiled(a["dout"], a["qkv"], out, lse, NH)
    if op == "crossentropy":
        probs = saved[1]
        return lambda: L.crossentropy_backward(probs, a["targets"])
    if op == "rmsnorm":
        rstd = saved[1]
        return lambda: L.rmsnorm_backward(a["dout"], a["x"], a["w"], rstd)[0]
    if op == "swiglu":
        return lambda: L.swiglu_backward(a["dout"], a["fc"])
    if op == "rope":
        return lambda: R.rope_backward(a["dout"], NH, inputs.NKV, inputs.theta)
    raise ValueError(f"unknown op {op!r}")


def make_op(backend, inputs, direction):
    """(callable, to_numpy) for `inputs.op` in `direction` ("forward" | "backward")."""
    a, (forward, primary) = _forward_fns(inputs, np.dtype(backend.dtype))
    if direction == "forward":
        return forward, lambda r: np.asarray(primary(r), dtype=np.float64)
    return _backward_fn(inputs.op, a, forward(), inputs.NH, inputs), lambda r: np.asarray(r, dtype=np.float64)


def attention_fwd_bwd(backend, inputs, variant):
    """One forward + backward of attention ("naive" | "tiled"), as the attention-scaling files time it."""
    op = f"attention-{variant}"
    a, (forward, _) = _forward_fns(dataclasses.replace(inputs, op=op), np.dtype(backend.dtype))

    def run():
        saved = forward()
        return _backward_fn(op, a, saved, inputs.NH)()

    return run


def make_model(backend, params, config, idx, targets, task):
    """(callable, loss_of) for one whole-model `task`: "forward" | "forward-backward" | "train-step"."""
    params = {k: v.astype(backend.dtype) for k, v in params.items()}
    if task == "forward":
        return (lambda: reference.forward(params, config, idx, targets)), lambda r: r[1]
    if task == "forward-backward":
        return (lambda: reference.forward_backward(params, config, idx, targets)), lambda r: r[1]
    state: dict = {}

    def train_step():
        _, loss, grads = reference.forward_backward(params, config, idx, targets)
        reference.adamw_step(params, grads, state, lr=LR)
        return loss

    return train_step, lambda r: r


MODEL_ATTENTION = "naive"  # what reference.forward uses by default
