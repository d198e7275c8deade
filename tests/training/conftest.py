"""Shared fixtures of the training tests: token shards (Tiny Shakespeare, or random ids) and tiny runs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from torch_impl.data import tokenize_files, write_shard
from torch_impl.train import TrainConfig
from weights.paths import WHERE_TINYSHAKESPEARE, WHERE_TOKENIZER, tinyshakespeare_path, tokenizer_dir


@pytest.fixture(scope="session")
def shakespeare_shards(tmp_path_factory):
    """Tiny Shakespeare tokenised once per session: a folder with train/val shards (90/10)."""
    if tokenizer_dir() is None:
        pytest.skip(f"GPT-2 tokenizer files absent: {WHERE_TOKENIZER}")
    path = tinyshakespeare_path()
    if path is None:
        pytest.skip(f"Tiny Shakespeare absent: {WHERE_TINYSHAKESPEARE}")
    out = tmp_path_factory.mktemp("data") / "shakespeare"
    tokenize_files([path], out, val_fraction=0.1, progress=False)
    return out


def make_random_shards(folder, vocab: int, n_train: int = 4096, n_val: int = 1024, seed: int = 0):
    """Shards of uniformly random ids < vocab: enough data for trajectory comparisons, no tokenizer needed."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    write_shard(folder / f"rand_train_{0:06d}.bin", rng.integers(0, vocab, n_train))
    write_shard(folder / f"rand_train_{1:06d}.bin", rng.integers(0, vocab, n_train))
    write_shard(folder / f"rand_val_{0:06d}.bin", rng.integers(0, vocab, n_val))
    return folder


@pytest.fixture(scope="session")
def random_shards(tmp_path_factory):
    return make_random_shards(tmp_path_factory.mktemp("data") / "random", vocab=64)


def _run_config(data, out_dir, **overrides) -> TrainConfig:
    """A quiet test run on CPU: no progress bar, no console lines, no plot, no validation (unless asked)."""
    base = TrainConfig(
        data=str(data), out_dir=str(out_dir), eval_every=0, progress=False, plot=False, log_every=0, device="cpu"
    )
    return dataclasses.replace(base, **overrides)


def _tiny_config(data, out_dir, **overrides) -> TrainConfig:
    """A CPU-sized run: the 'tiny' preset (2 layers, C=16, V=64, n_ctx=16) padded to 128 rows, fp32."""
    tiny = dict(model="tiny", padded_vocab=128, batch_size=4, seq_len=16, max_steps=6, lr=1e-2, warmup_steps=2)
    return _run_config(data, out_dir, **{**tiny, **overrides})


@pytest.fixture
def run_config():
    """run_config(data, out_dir, **overrides) -> TrainConfig of a quiet CPU run."""
    return _run_config


@pytest.fixture
def tiny_config():
    """tiny_config(data, out_dir, **overrides) -> TrainConfig of a CPU-sized run."""
    return _tiny_config


@pytest.fixture
def random_shards_factory():
    """random_shards_factory(folder, vocab, n_train=..., n_val=..., seed=...) -> folder of shards."""
    return make_random_shards
