"""torch_impl.lr_schedule: linear warmup, cosine decay, the floor."""

from __future__ import annotations

import math

import pytest

from torch_impl.lr_schedule import lr_at


def test_warmup_is_linear_from_the_first_step():
    lrs = [lr_at(s, 1.0, 0.1, 4, 20) for s in range(4)]
    assert lrs == [0.25, 0.5, 0.75, 1.0]


def test_cosine_runs_from_peak_to_floor():
    max_lr, min_lr, warmup, total = 6e-4, 6e-5, 10, 110
    assert lr_at(warmup, max_lr, min_lr, warmup, total) == pytest.approx(max_lr)
    assert lr_at(60, max_lr, min_lr, warmup, total) == pytest.approx((max_lr + min_lr) / 2)  # halfway
    lrs = [lr_at(s, max_lr, min_lr, warmup, total) for s in range(warmup, total)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[-1] == pytest.approx(min_lr + (max_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert lr_at(total, max_lr, min_lr, warmup, total) == min_lr
    assert lr_at(10 * total, max_lr, min_lr, warmup, total) == min_lr


def test_no_warmup_starts_at_peak():
    assert lr_at(0, 1.0, 0.0, 0, 10) == 1.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="step must be >= 0"):
        lr_at(-1, 1.0, 0.1, 2, 10)
    with pytest.raises(ValueError, match="min_lr"):
        lr_at(0, 0.1, 1.0, 2, 10)
