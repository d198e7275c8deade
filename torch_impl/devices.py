"""Where the torch code runs, and whether under bf16 autocast: one rule for the trainer and the evaluation.

device = choose_device("auto")            # --device auto|cpu|cuda
bf16 = wants_bf16("auto", device)         # --dtype auto|bf16|fp32
"""

from __future__ import annotations

import contextlib

import torch

from weights.errors import UsageError, UserError


def choose_device(pref: str) -> torch.device:
    """--device: "auto" is CUDA when torch sees a device, else the CPU; "cuda" without one is a UserError."""
    if pref == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: torch sees no CUDA device on this machine (use --device cpu or auto)")
    use_cuda = torch.cuda.is_available() if pref == "auto" else pref == "cuda"
    return torch.device("cuda" if use_cuda else "cpu")


def wants_bf16(dtype_pref: str, device: torch.device) -> bool:
    """--dtype: "bf16", or "auto" on CUDA, runs the forward passes under bf16 autocast; else float32."""
    return dtype_pref == "bf16" or (dtype_pref == "auto" and device.type == "cuda")


SDPA_BACKENDS = ("auto", "cudnn", "flash", "efficient")


def sdpa_backend(name: str, device: torch.device) -> contextlib.AbstractContextManager:
    """--sdpa-backend: a context in which F.scaled_dot_product_attention may use only that kernel (torch's
    sdpa_kernel; "auto": torch's own choice, which on an H200 is cuDNN's). Entered around the whole run, so
    that torch.compile, which fixes the kernel when it traces, sees it too. cudnn and efficient exist
    only on CUDA (a UsageError on the CPU); flash has a CPU kernel too."""
    if name not in SDPA_BACKENDS:
        raise UsageError(f"--sdpa-backend must be one of {', '.join(SDPA_BACKENDS)}; got {name!r}")
    if name == "auto":
        return contextlib.nullcontext()
    if device.type != "cuda" and name != "flash":
        raise UsageError(f"--sdpa-backend {name}: a CUDA kernel, and this run is on {device.type} (use auto or flash)")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kinds = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION}  # fmt: skip
    return sdpa_kernel(kinds[name])
