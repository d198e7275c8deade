"""Error metrics between a backend's arrays and the reference's. Pure NumPy, float64 arithmetic."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def max_rel(x: np.ndarray, ref: np.ndarray) -> float:
    """max|x - ref| / max|ref|: the worst element, relative to the largest reference element."""
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    if x.shape != ref.shape:
        raise ValueError(f"shape {x.shape} vs reference {ref.shape}")
    scale = np.abs(ref).max() if ref.size else 0.0
    diff = np.abs(x - ref).max() if ref.size else 0.0
    if not np.isfinite(diff):
        return float("inf")
    return float(diff / scale) if scale > 0 else float(diff)


def l2_rel(x: np.ndarray, ref: np.ndarray) -> float:
    """||x - ref||_2 / ||ref||_2."""
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    if x.shape != ref.shape:
        raise ValueError(f"shape {x.shape} vs reference {ref.shape}")
    num = np.linalg.norm((x - ref).ravel())
    den = np.linalg.norm(ref.ravel())
    if not np.isfinite(num):
        return float("inf")
    return float(num / den) if den > 0 else float(num)


def scalar_rel(x: float, ref: float) -> float:
    d = abs(float(x) - float(ref))
    return d / abs(float(ref)) if ref != 0 else d


def moved(params: Mapping[str, np.ndarray], start: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """params - start for every named tensor, in float64: how far an optimizer moved each one."""
    return {name: np.asarray(params[name], np.float64) - np.asarray(start[name], np.float64) for name in start}


def worst_tensor(
    values: Mapping[str, np.ndarray], refs: Mapping[str, np.ndarray], metric
) -> tuple[str, float, dict[str, float]]:
    """Apply `metric` to every named tensor; return (worst name, worst value, all values)."""
    missing = set(refs) ^ set(values)
    if missing:
        raise KeyError(f"tensor names differ from the reference: {sorted(missing)[:5]}")
    per = {name: metric(values[name], refs[name]) for name in refs}
    worst = max(per, key=per.get)
    return worst, per[worst], per
