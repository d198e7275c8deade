"""Validation says what it measured: the distinct val tokens, and a warning (once) when batches repeat.

A val shard of 1024 tokens and steps of world*B*T = 1*4*16 = 64 tokens (+1 for the last target) hold
(1024 - 1) // 64 = 15 distinct batches: 960 distinct tokens. --eval-batches 20 reads 1280 tokens, so 5
batches are read twice; --eval-batches 10 reads 640 distinct tokens.
"""

from __future__ import annotations

import json

from torch_impl.train import train


def _log(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def test_repeated_val_batches_are_counted_once_and_warned_about_once(random_shards, tmp_path, tiny_config, capsys):
    cfg = tiny_config(random_shards, tmp_path / "r", max_steps=4, eval_every=2, eval_batches=20)
    out = train(cfg)
    assert out["val_tokens"] == 960
    log = _log(tmp_path / "r")
    assert [e["val_tokens"] for e in log if "val_loss" in e] == [960, 960, 960]  # steps 0, 2, 4
    warnings = [e for e in log if "warning" in e]
    assert len(warnings) == 1 and warnings[0]["step"] == 0
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.startswith("warning:")]
    assert lines == [warnings[0]["warning"]]
    assert "15 distinct batches of world*B*T = 1*4*16 tokens" in lines[0] and "--eval-batches 20" in lines[0]
    assert "960 distinct val tokens, not 1,280" in lines[0]
    assert captured.out.count("| 960 val tokens") == 3


def test_no_warning_when_the_val_split_is_large_enough(random_shards, tmp_path, tiny_config, capsys):
    out = train(tiny_config(random_shards, tmp_path / "r", max_steps=2, eval_every=2, eval_batches=10))
    assert out["val_tokens"] == 640
    assert not [e for e in _log(tmp_path / "r") if "warning" in e]
    assert "warning" not in capsys.readouterr().err
