"""The conformance contract of the PyTorch backend: NumPy in, NumPy out (see docs/contract.md).

    logits, loss = forward(model, idx, targets=None)             logits (B, T, V) float, loss float or None
    logits, loss, grads = forward_backward(model, idx, targets)  grads: canonical names and layout
    acts = activations(model, idx)                               the named activations, as arrays

Precision follows the model: float32 or float64 parameters compute in that dtype; pass
``autocast_dtype=torch.bfloat16`` for mixed precision (meant for CUDA; CPU autocast works too).
Every call runs inside `tf32_disabled()`, so float32 matmuls on Ampere/Hopper are true float32
and not TF32 (~1e-3 relative error); the caller's TF32 settings are restored afterwards.

Every config works the same way, GPT-2 and each variant (weights/config.py): the gradients come back
under exactly the canonical names of `weights.layout.param_shapes(config)` (no `wpe.weight` with
rotary positions, no biases with bias=False, `lm_head.weight` with an untied head), and the
activations are those of `weights.layout.activation_names(config)` ("h.{i}.rope", "h.{i}.swiglu").

Gradients come from `torch.autograd.grad`, so the model's `.grad` fields are left untouched.
With the tied head the `wte.weight` gradient is the sum of the head's and the embedding's terms,
as autograd accumulates them on the one tied parameter; with an untied head it is the
embedding's scatter-add alone and `lm_head.weight` (V, C) gets the head's term. Conv1D weights
come back (in, out) (c_attn's columns q, k, v; c_fc's gate, then up), pad rows dropped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from torch_impl.model import GPT2, to_canonical_layout

# Backends with a float32 precision switch (torch >= 2.9): "ieee" = full float32, "tf32"/"bf16" = reduced.
# Parents come before their children so that restoring in this order gives each one its own saved value.
_FP32_PRECISION_SWITCHES = (
    "cuda.matmul",
    "cudnn",
    "cudnn.conv",
    "cudnn.rnn",
    "mkldnn",
    "mkldnn.matmul",
    "mkldnn.conv",
    "mkldnn.rnn",
)


def _backend(path: str):
    obj = torch.backends
    for part in path.split("."):
        obj = getattr(obj, part, None)
    return obj


@contextlib.contextmanager
def tf32_disabled() -> Iterator[None]:
    """Full-precision float32 matmuls and convolutions inside the block; the previous flags after it.

    On torch >= 2.9 this uses the per-backend `fp32_precision` switches, which read and write
    cleanly whichever API (these, or the older `allow_tf32` / `set_float32_matmul_precision`)
    the caller used; mixing the two kinds in one process makes torch refuse to read the old ones.
    """
    switches = [b for b in map(_backend, _FP32_PRECISION_SWITCHES) if b is not None and hasattr(b, "fp32_precision")]
    if switches:
        saved = [b.fp32_precision for b in switches]
        try:
            for b in switches:
                b.fp32_precision = "ieee"
            yield
        finally:
            for b, value in zip(switches, saved, strict=True):
                b.fp32_precision = value
    else:  # older torch: the allow_tf32 flags
        saved_matmul = torch.backends.cuda.matmul.allow_tf32
        saved_cudnn = torch.backends.cudnn.allow_tf32
        try:
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved_matmul
            torch.backends.cudnn.allow_tf32 = saved_cudnn


def _autocast(model: GPT2, autocast_dtype: torch.dtype | None):
    if autocast_dtype is None:
        return contextlib.nullcontext()
    if autocast_dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"autocast_dtype must be None, torch.bfloat16 or torch.float16, got {autocast_dtype}")
    if next(model.parameters()).dtype != torch.float32:
        raise ValueError("autocast needs float32 parameters (float64 models compute in float64)")
    return torch.autocast(device_type=next(model.parameters()).device.type, dtype=autocast_dtype)


def _ids_to_tensor(ids, model: GPT2, what: str) -> torch.Tensor:
    """An integer array (B, T) -> int64 tensor on the model's device; a clear error for anything else."""
    if isinstance(ids, torch.Tensor):
        arr = ids
    else:
        arr = np.asarray(ids)
        if arr.dtype.kind not in "iu":  # worded as the NumPy reference words it
            kind = "token ids must be" if what == "idx" else "must be"
            raise ValueError(f"{what}: {kind} an integer array, got dtype {arr.dtype}")
        arr = torch.from_numpy(arr.astype(np.int64))
    return arr.to(next(model.parameters()).device)


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    """float tensor -> numpy array on the host; bf16/fp16 (which NumPy lacks) as float32."""
    t = t.detach()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    return t.cpu().numpy()


def forward(model: GPT2, idx, targets=None, autocast_dtype: torch.dtype | None = None):
    """idx (B, T) ints [, targets (B, T), -1 = ignore] -> (logits (B, T, V) ndarray, loss float or None)."""
    idx_t = _ids_to_tensor(idx, model, "idx")
    targets_t = None if targets is None else _ids_to_tensor(targets, model, "targets")
    with tf32_disabled(), torch.no_grad(), _autocast(model, autocast_dtype):
        logits, loss = model(idx_t, targets_t)
    return _to_numpy(logits), None if loss is None else float(loss)


def forward_backward(model: GPT2, idx, targets, autocast_dtype: torch.dtype | None = None):
    """-> (logits ndarray, loss float, grads: dict name -> ndarray in the canonical names and layout)."""
    if targets is None:
        raise ValueError("forward_backward needs targets (there is no loss to differentiate without them)")
    idx_t = _ids_to_tensor(idx, model, "idx")
    targets_t = _ids_to_tensor(targets, model, "targets")
    params = dict(model.named_parameters())
    with tf32_disabled():
        with torch.enable_grad(), _autocast(model, autocast_dtype):
            logits, loss = model(idx_t, targets_t)
        grads = torch.autograd.grad(loss, list(params.values()))
    grads = to_canonical_layout(model, dict(zip(params, grads, strict=True)))
    return _to_numpy(logits), float(loss.detach()), grads


def activations(model: GPT2, idx, autocast_dtype: torch.dtype | None = None) -> dict[str, np.ndarray]:
    """The named intermediate activations of docs/contract.md as arrays, in forward order."""
    idx_t = _ids_to_tensor(idx, model, "idx")
    with tf32_disabled(), torch.no_grad(), _autocast(model, autocast_dtype):
        acts = model.forward_with_activations(idx_t)
    return {name: _to_numpy(value) for name, value in acts.items()}
