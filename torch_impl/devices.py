"""Where the torch code runs, whether under bf16 autocast, and where our Triton kernels can: one rule each.

device = choose_device("auto")            # --device auto|cpu|cuda
bf16 = wants_bf16("auto", device)         # --dtype auto|bf16|fp32
reason = triton_unavailable_reason("--mlp-impl triton", kernel, import_error, device)   # None: it runs
dtype = fused_op_dtype("--mlp-impl", x, (torch.bfloat16, torch.float16))   # the dtype an op of ours computes in
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


def triton_unavailable_reason(flag: str, kernel, import_error: str | None, device: torch.device | str) -> str | None:
    """None when a Triton kernel of ours can run on `device`; else why not, one line naming `flag`.
    `kernel` is its @triton.jit function (None where triton failed to import, with `import_error`). It runs
    on a CUDA GPU, and on the CPU in Triton's interpreter: triton.jit returns an InterpretedFunction when
    TRITON_INTERPRET=1 was set at decoration time."""
    if kernel is None:
        return f"{flag} needs the triton package (CUDA builds of torch include it): {import_error}"
    device = torch.device(device)
    if device.type == "cuda":
        return None
    from triton.runtime.interpreter import InterpretedFunction

    if device.type == "cpu" and isinstance(kernel, InterpretedFunction):
        return None
    return (
        f"{flag} runs on a CUDA GPU, not on {device.type} "
        "(on the CPU only under TRITON_INTERPRET=1, Triton's interpreter, set before triton is imported)"
    )


def fused_op_dtype(flag: str, x: torch.Tensor, dtypes: tuple[torch.dtype, ...]) -> torch.dtype:
    """The dtype a fused op of ours (an autograd.Function that casts its inputs as F.linear would) computes
    in: autocast's when autocast is on, else x's; a ValueError naming `flag` when its kernels do not take it."""
    on = torch.is_autocast_enabled(x.device.type)
    dtype = torch.get_autocast_dtype(x.device.type) if on else x.dtype
    if dtype not in dtypes:
        raise ValueError(
            f"{flag} triton computes in {[str(d) for d in dtypes]} (bf16 autocast), not {dtype}; "
            f"use {flag} torch for a float32 model"
        )
    return dtype


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
