"""The learning-rate schedule: linear warmup, then cosine decay to a floor.

    step in [0, warmup):            lr = max_lr * (step + 1) / warmup
    step in [warmup, total):        lr = min_lr + (max_lr - min_lr) * (1 + cos(pi * p)) / 2,
                                    p = (step - warmup) / (total - warmup)  (0 -> 1)
    step >= total:                  lr = min_lr

Steps count optimizer updates from 0. The first step already gets max_lr / warmup (not 0:
a step at lr 0 would be wasted compute). The schedule is a pure function of the step, so a
resumed run needs nothing but the step number to continue it.
"""

from __future__ import annotations

import math


def lr_at(step: int, max_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    if step < 0:
        raise ValueError(f"lr_at: step must be >= 0, got {step}")
    if min_lr > max_lr:
        raise ValueError(f"lr_at: min_lr ({min_lr}) is above max_lr ({max_lr})")
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
