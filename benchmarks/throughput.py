"""Derived figures: tokens/s, TFLOP/s and MFU of a timed call.

The FLOPs per token (llm.c's count: 6 N + 6 L C T for a training step, a third of it for a forward)
and the device peaks are weights/flops.py's, the one count the trainer uses too; that module's
docstring says what each term counts. MFU = achieved FLOP/s / the peak of the device actually used,
for the dtype the math runs in.
"""

from __future__ import annotations

from weights.flops import PEAK_SOURCE, forward_flops_per_token, peak_tflops, training_flops_per_token

__all__ = ["PEAK_SOURCE", "derived", "forward_flops_per_token", "peak_tflops", "training_flops_per_token"]


def derived(seconds: float, tokens: int | None, flops: float | None, peak: float | None) -> dict:
    """tokens/s, TFLOP/s and MFU (a fraction) for one call that took `seconds`; None where not defined."""
    out = {"tokens_per_s": None, "tflops": None, "mfu": None}
    if seconds <= 0:
        return out
    if tokens:
        out["tokens_per_s"] = tokens / seconds
    if flops:
        out["tflops"] = flops / seconds / 1e12
        if peak:
            out["mfu"] = out["tflops"] / peak
    return out
