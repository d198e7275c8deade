"""torch_impl.plot: reading a run log, the moving average, the PNG."""

from __future__ import annotations

import json

import numpy as np
import pytest

from torch_impl.plot import main, moving_average, read_log


def test_moving_average_uses_what_exists_at_the_start():
    np.testing.assert_allclose(moving_average(np.array([1.0, 3.0, 5.0, 7.0]), 2), [1.0, 2.0, 4.0, 6.0])


def test_read_log_and_png(tmp_path):
    pytest.importorskip("matplotlib")
    entries = [{"step": 0, "event": "start"}, {"step": 0, "val_loss": 5.0}]
    entries += [{"step": s, "loss": 5.0 - 0.1 * s, "lr": 1e-3} for s in range(10)]
    entries += [{"step": 10, "val_loss": 4.2}, {"step": 10, "sample": "text"}]
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(e) + "\n" for e in entries))
    train, val, lr = read_log(log)
    assert sorted(train) == list(range(10)) and train[3] == pytest.approx(4.7)
    assert val == {0: 5.0, 10: 4.2} and lr[9] == 1e-3
    assert main([str(log), "--smooth", "3"]) == 0
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
