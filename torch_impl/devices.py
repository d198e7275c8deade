"""Where the torch code runs, and whether under bf16 autocast: one rule for the trainer and the evaluation.

device = choose_device("auto")            # --device auto|cpu|cuda
bf16 = wants_bf16("auto", device)         # --dtype auto|bf16|fp32
"""

from __future__ import annotations

import torch

from weights.errors import UserError


def choose_device(pref: str) -> torch.device:
    """--device: "auto" is CUDA when torch sees a device, else the CPU; "cuda" without one is a UserError."""
    if pref == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: torch sees no CUDA device on this machine (use --device cpu or auto)")
    use_cuda = torch.cuda.is_available() if pref == "auto" else pref == "cuda"
    return torch.device("cuda" if use_cuda else "cpu")


def wants_bf16(dtype_pref: str, device: torch.device) -> bool:
    """--dtype: "bf16", or "auto" on CUDA, runs the forward passes under bf16 autocast; else float32."""
    return dtype_pref == "bf16" or (dtype_pref == "auto" and device.type == "cuda")
