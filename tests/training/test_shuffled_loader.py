"""The shuffled loader: every window once per epoch, a new order each epoch, ranks share each step, exact resume.

The shards hold distinct token values (positions), so a row names the window it came from; the
expected windows are written down from the definition (shard s of n tokens: windows tokens[k*T :
k*T + T + 1] for k < (n - 1) // T), not taken from the loader.
"""

from __future__ import annotations

import numpy as np
import pytest

from torch_impl.checkpoint import latest_checkpoint, load_checkpoint
from torch_impl.data import DataError, shard_paths, write_shard
from torch_impl.shuffled_loader import ShuffledLoader
from torch_impl.train import train
from weights.errors import UsageError

T = 8


@pytest.fixture
def shards(tmp_path):
    """Two train shards of 161 and 100 tokens: 20 + 12 = 32 windows of T+1 = 9 tokens (the last 3 tokens of
    the second shard are a tail too short for a window). Every token value is distinct."""
    write_shard(tmp_path / "d_train_000000.bin", np.arange(161))
    write_shard(tmp_path / "d_train_000001.bin", 1000 + np.arange(100))
    return shard_paths(tmp_path, "train")


def _windows() -> set[tuple[int, ...]]:
    tokens = [np.arange(161), 1000 + np.arange(100)]
    return {tuple(int(v) for v in t[k * T : k * T + T + 1]) for t in tokens for k in range((t.size - 1) // T)}


def _rows(x: np.ndarray, y: np.ndarray) -> list[tuple[int, ...]]:
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])  # y is x shifted by one
    return [(*map(int, xr), int(yr[-1])) for xr, yr in zip(x, y, strict=True)]


def _epoch(loader: ShuffledLoader, steps: int) -> list[tuple[int, ...]]:
    out = []
    for _ in range(steps):
        out += _rows(*loader.next_batch())
    return out


def test_every_window_appears_once_per_epoch_and_epochs_differ(shards):
    windows = _windows()
    assert len(windows) == 32
    loader = ShuffledLoader(shards, B=4, T=T, seed=3)
    assert loader.windows == 32
    first = _epoch(loader, 8)  # 8 steps of 4 windows: one epoch
    assert sorted(first) == sorted(windows) and len(set(first)) == 32
    assert loader.state() == {"order": "shuffled", "seed": 3, "epoch": 0, "pos": 32, "windows": 32}
    second = _epoch(loader, 8)
    assert loader.state()["epoch"] == 1
    assert sorted(second) == sorted(windows)
    assert second != first  # another order (1 / 32! that two seeded orders agree)
    assert first != sorted(first, key=lambda w: (w[0] >= 1000, w[0]))  # not the sequential order
    other_seed = _epoch(ShuffledLoader(shards, B=4, T=T, seed=4), 8)
    assert other_seed != first and sorted(other_seed) == sorted(windows)


def test_from_folder_is_the_constructor_on_the_splits_shards(shards):
    a = ShuffledLoader.from_folder(shards[0].parent, "train", 2, 8, rank=1, world=2, seed=3)
    b = ShuffledLoader(shards, 2, 8, rank=1, world=2, seed=3)
    assert a.state() == b.state() and a.max_token_id() == 1099
    for _ in range(10):  # across an epoch's end
        np.testing.assert_array_equal(a.next_batch(), b.next_batch())


def test_an_epoch_ends_before_a_step_it_cannot_fill(shards):
    """32 windows, 5 per step: 6 steps per epoch (30 windows, none twice), then epoch 1 from pos 0."""
    loader = ShuffledLoader(shards, B=5, T=T, seed=0)
    rows = _epoch(loader, 6)
    assert len(set(rows)) == 30 and set(rows) <= _windows()
    assert (loader.state()["epoch"], loader.state()["pos"]) == (0, 30)
    loader.next_batch()
    assert (loader.state()["epoch"], loader.state()["pos"]) == (1, 5)


@pytest.mark.parametrize(("world", "B"), [(2, 2), (4, 1)])
def test_ranks_partition_each_step_as_one_process_reads_it(shards, world, B):
    """world ranks with B rows each == one process with world*B rows, step after step, across epochs:
    rank r takes rows r*B .. r*B+B-1 of the step; all ranks keep the same state."""
    one = ShuffledLoader(shards, B=world * B, T=T, seed=5)
    ranks = [ShuffledLoader(shards, B=B, T=T, rank=r, world=world, seed=5) for r in range(world)]
    for _ in range(20):  # 2.5 epochs
        x1, y1 = one.next_batch()
        parts = [r.next_batch() for r in ranks]
        np.testing.assert_array_equal(x1, np.concatenate([p[0] for p in parts]))
        np.testing.assert_array_equal(y1, np.concatenate([p[1] for p in parts]))
        assert all(r.state() == one.state() for r in ranks)


def test_state_restores_mid_epoch_and_refuses_another_order(shards):
    loader = ShuffledLoader(shards, B=3, T=T, seed=9)
    for _ in range(13):  # epoch 1 (10 steps per epoch), pos 9
        loader.next_batch()
    state = loader.state()
    assert (state["epoch"], state["pos"]) == (1, 9)
    want = [loader.next_batch()[0] for _ in range(15)]
    fresh = ShuffledLoader(shards, B=3, T=T, seed=9)
    fresh.load_state(state)
    for w in want:
        np.testing.assert_array_equal(fresh.next_batch()[0], w)
    with pytest.raises(DataError, match="--data-seed 9, this loader 1"):
        ShuffledLoader(shards, B=3, T=T, seed=1).load_state(state)
    with pytest.raises(DataError, match="counts 32 windows, these shards hold 20 of T\\+1 = 9"):
        ShuffledLoader(shards[:1], B=3, T=T, seed=9).load_state(state)
    with pytest.raises(DataError, match="not a shuffled loader's \\(it reads sequential\\)"):
        fresh.load_state({"shard": 0, "pos": 0})
    with pytest.raises(DataError, match="4 windows of T\\+1 = 51 tokens in these shards, fewer than one step"):
        ShuffledLoader(shards, B=5, T=50)  # 160 // 50 + 99 // 50 = 4 windows


# ----------------------------------------------------------------------------- through the trainer
def test_trainer_resume_mid_epoch_is_bit_exact(tmp_path, random_shards_factory, tiny_config):
    """--data-order shuffled, 8 steps over a train split of 2 x 100 tokens (12 windows of 17 tokens, 3
    steps of B=4 per epoch): stopped after step 4 (epoch 1, 4 windows in), resumed through the trainer's
    real checkpoint: the losses and final weights equal an uninterrupted run's, bit for bit; the
    shuffled run is not the sequential one."""
    import weights

    data = random_shards_factory(tmp_path / "data", vocab=64, n_train=100, n_val=200)
    run = dict(max_steps=8, data_order="shuffled", data_seed=11)
    whole = train(tiny_config(data, tmp_path / "whole", **run))
    first = train(tiny_config(data, tmp_path / "split", stop_step=4, **run))
    state = load_checkpoint(latest_checkpoint(tmp_path / "split"))[2]["loader"]
    assert state == {"order": "shuffled", "seed": 11, "epoch": 1, "pos": 4, "windows": 12}
    second = train(tiny_config(data, tmp_path / "split", resume=True, **run))
    assert sorted(second["losses"]) == [4, 5, 6, 7]
    assert {**first["losses"], **second["losses"]} == whole["losses"]  # exact float equality
    pw, ps = weights.load(whole["checkpoint"])[0], weights.load(second["checkpoint"])[0]
    for name in pw:
        np.testing.assert_array_equal(pw[name], ps[name], err_msg=name)
    sequential = train(tiny_config(data, tmp_path / "seq", max_steps=8))
    assert sequential["losses"][0] != whole["losses"][0]
    # resuming with another order or seed is refused, naming the flag
    with pytest.raises(UsageError, match="--data-order sequential: .* was trained with --data-order shuffled"):
        train(tiny_config(data, tmp_path / "split", resume=True, max_steps=9))
    with pytest.raises(DataError, match="--resume from .*step_0000008: loader state has --data-seed 11, this loader 1"):
        train(tiny_config(data, tmp_path / "split", resume=True, **{**run, "max_steps": 9, "data_seed": 12}))
