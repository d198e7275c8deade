"""Switch TF32 off for float32 comparisons on Ampere/Hopper GPUs, restoring the old flags after.

With TF32 on, float32 matmuls run with a 10-bit mantissa (~1e-3 relative error), which breaks
every float32 ceiling. This helper belongs to the conformance harness (it drives transformers'
model, which is not ours); torch_impl has its own for its own use.
"""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def tf32_off():
    try:
        import torch
    except ImportError:
        yield
        return
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
