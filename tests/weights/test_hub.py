"""weights.hub: hash checks, and a fast clear failure when the hub cannot be reached."""

from __future__ import annotations

import time

import pytest

from weights import CheckpointError, load
from weights.hub import HubCheckpoint, HubError, download, verify


def test_verify_rejects_wrong_hash(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"0123456789")
    good = HubCheckpoint(
        "x/y", "r", "model.safetensors", 10, "84d89877f0d4041efb6bf91a16f0248f2fd573e6af05c19f96bedb9f882f7882"
    )
    verify(f, good)
    with pytest.raises(HubError, match="sha256 .* expected 00"):
        verify(f, HubCheckpoint("x/y", "r", "model.safetensors", 10, "00" * 32))
    with pytest.raises(HubError, match="size 10 bytes, expected 11"):
        verify(f, HubCheckpoint("x/y", "r", "model.safetensors", 11, good.sha256))


def test_unknown_hub_id_is_refused():
    with pytest.raises(HubError, match="not a hub checkpoint this project pins"):
        download("someone/some-model")


def test_offline_fails_fast_with_guidance(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # empty cache
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "ENDPOINT", "http://127.0.0.1:9")
    t0 = time.perf_counter()
    with pytest.raises(HubError, match="--weights synthetic"):
        download("gpt2")
    assert time.perf_counter() - t0 < 15


def test_load_of_nonexistent_relative_file():
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load("./missing/model.safetensors")
