"""Shuffled batches: a seeded permutation of a split's fixed-length windows, a new one each epoch.

    loader = ShuffledLoader(shard_paths(folder, "train"), B, T, rank, world, seed=0)
    x, y = loader.next_batch()          # int64 (B, T) each, this rank's rows; y is x shifted by one

Windows. A shard of n tokens holds W_s = (n - 1) // T windows; window k is tokens[k*T : k*T + T + 1]
(x = the first T tokens, y = the last T). The x parts of a shard's windows do not overlap and neither
do the y parts; consecutive windows share one token (the last target of one is the first input of the
next), so that every token but a shard's first is predicted exactly once per epoch. These are the
rows that sequential reading (ShardLoader) gives, in another order. Windows are numbered through the
shards in order: 0 .. N-1, N = sum of W_s.

Epochs. Epoch e reads the windows in the order

    perm_e = argsort(PCG64(SeedSequence([seed, e])).random_raw(N), kind="stable")

a permutation of 0 .. N-1 that depends only on (seed, e) (NumPy keeps the raw streams of its bit
generators and SeedSequence stable across versions; Generator.permutation makes no such promise).
A step of `world` ranks takes the next world*B windows of perm_e; rank r takes
perm_e[pos + r*B : pos + (r+1)*B], then pos moves by world*B, the same on every rank: world ranks
with B rows each read exactly what one process with world*B rows reads (as with ShardLoader). When
fewer than world*B windows are left, the epoch ends there (its last N mod world*B windows in
perm_e are not read in that epoch) and the next epoch starts at pos 0.

State. {"order": "shuffled", "seed", "epoch", "pos", "windows": N}: saved in the trainer's checkpoint;
load_state recomputes perm_epoch, so a resumed run reads exactly the batches an uninterrupted one
reads. The permutation costs 8 bytes per window (16 while it is computed): 10M windows (10B tokens at
T=1024) take 80 MB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from torch_impl.data import SplitShards, read_shard
from weights.errors import DataError


def window_order(n_windows: int, seed: int, epoch: int) -> np.ndarray:
    """perm_epoch: the order (int64, a permutation of 0 .. n_windows-1) in which epoch `epoch` reads the windows."""
    keys = np.random.PCG64(np.random.SeedSequence([seed, epoch])).random_raw(n_windows)
    return np.argsort(keys, kind="stable")


class ShuffledLoader(SplitShards):
    """(x, y) batches of shape (B, T) of this rank, from a per-epoch permutation of the split's windows
    (see the module docstring)."""

    order = "shuffled"

    def __init__(self, paths: list[Path], B: int, T: int, rank: int = 0, world: int = 1, seed: int = 0):
        super().__init__(paths, B, T, rank, world)
        if seed < 0:
            raise DataError(f"--data-seed must be >= 0, got {seed}")
        self.seed = seed
        self.step_windows = world * B
        per_shard = np.array([max(0, (n - 1) // T) for n in self.lengths], dtype=np.int64)
        self.first_window = np.concatenate([[0], np.cumsum(per_shard)])  # window ids of shard s: [first[s], first[s+1])
        self.windows = int(self.first_window[-1])
        if self.windows < self.step_windows:
            raise DataError(
                f"{self.paths[0].parent}: {self.windows} windows of T+1 = {T + 1} tokens in these shards, fewer than "
                f"one step takes: world*B = {world}*{B} = {self.step_windows}"
            )
        self._tokens: dict[int, np.ndarray] = {}
        self._start(epoch=0, pos=0)

    def _start(self, epoch: int, pos: int) -> None:
        self.epoch, self.pos = epoch, pos
        self.perm = window_order(self.windows, self.seed, epoch)

    def state(self) -> dict:
        return {"order": self.order, "seed": self.seed, "epoch": self.epoch, "pos": self.pos, "windows": self.windows}

    def load_state(self, state: dict) -> None:
        """Continue from a state() of a loader over the same shards, T and seed (else a DataError: what differs)."""
        if state.get("order") != self.order:
            other = state.get("order", "sequential")
            raise DataError(f"loader state {state} is not a shuffled loader's (it reads {other})")
        if int(state["seed"]) != self.seed:
            raise DataError(f"loader state has --data-seed {state['seed']}, this loader {self.seed}: another order")
        if int(state["windows"]) != self.windows:
            raise DataError(
                f"loader state counts {state['windows']} windows, these shards hold {self.windows} of "
                f"T+1 = {self.T + 1} tokens: other data or another --seq-len"
            )
        epoch, pos = int(state["epoch"]), int(state["pos"])
        if epoch < 0 or not 0 <= pos <= self.windows:
            raise DataError(f"loader state {state} does not fit these shards ({self.windows} windows)")
        self._start(epoch, pos)

    def reset(self) -> None:
        self._start(epoch=0, pos=0)

    def window(self, w: int) -> np.ndarray:
        """Window w (0 .. windows-1) as int64 (T+1,): shard s = the one holding w, tokens [k*T, k*T + T + 1)."""
        s = int(np.searchsorted(self.first_window, w, side="right")) - 1
        if s not in self._tokens:
            self._tokens[s] = read_shard(self.paths[s])
        k = w - int(self.first_window[s])
        return np.asarray(self._tokens[s][k * self.T : k * self.T + self.T + 1], dtype=np.int64)

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """x, y: int64 arrays (B, T) for this rank; advances the shared position by world*B windows."""
        if self.pos + self.step_windows > self.windows:
            self._start(self.epoch + 1, 0)
        mine = self.perm[self.pos + self.rank * self.B : self.pos + (self.rank + 1) * self.B]
        rows = np.stack([self.window(int(w)) for w in mine])  # (B, T+1)
        self.pos += self.step_windows
        return np.ascontiguousarray(rows[:, :-1]), np.ascontiguousarray(rows[:, 1:])
