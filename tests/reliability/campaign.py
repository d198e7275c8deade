"""The bad-input campaign: every public command and loader, fed inputs a user gets wrong.

    python -m tests.reliability.campaign                          # run every case, print the table
    python -m tests.reliability.campaign --write docs/reliability.md

Each case builds its inputs in a fresh folder (a tiny GPT-2 checkpoint, token shards, a
corrupted copy of one of them), runs one command on them and records what a user sees: the
exit status, the message on stderr and the files the command left behind. A case is *clean*
when

  * the exit status is the expected one (2 for a user error, 1 for a bad verdict);
  * stderr is exactly one line, `error: ...`, naming the file, tensor or flag at fault (no traceback);
  * the command left no file it was not expected to leave (no empty --out folder, no half-written
    checkpoint that a resume would pick up);
  * the case's own check holds (e.g. after kill -9 during a checkpoint write, the previous
    checkpoint is still the latest and still loads).

Commands whose entry point is a `main(argv)` function run in this process (torch starts once);
kill -9 needs a process of its own. tests/reliability/test_bad_inputs.py runs the same table
under pytest; docs/reliability.md is written from it by this module, never by hand.
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import importlib
import importlib.util
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]

# command -> (what a user types, "module:function" of its main(argv) or a script path)
COMMANDS = {
    "compare": ("python -m conformance.compare", "conformance.compare:main"),
    "train": ("python -m torch_impl.train", "torch_impl.train:main"),
    "data": ("python -m torch_impl.data", "torch_impl.data:main"),
    "report": ("python -m conformance.report", "conformance.report:main"),
    "bench-report": ("python -m benchmarks.report", "benchmarks.report:main"),
    "throughput": ("python scripts/train_throughput.py", "scripts/train_throughput.py"),
    "plot": ("python -m torch_impl.plot", "torch_impl.plot:main"),
    "kit": ("python -m conformance", "conformance.__main__:main"),
    "hellaswag": ("python -m torch_impl.eval_hellaswag", "torch_impl.eval_hellaswag:main"),
    "memory": ("python scripts/memory_per_size.py", "scripts/memory_per_size.py"),
}


# ----------------------------------------------------------------------------- inputs
def tiny_checkpoint(ws: Path, name: str = "ckpt") -> Path:
    """A valid tiny GPT-2 checkpoint folder (model.safetensors + config.json): 2 layers, C=16, V=64."""
    import weights

    config = weights.GPT2Config.tiny()
    return weights.save(weights.synthetic(config, seed=0), config, ws / name).parent


def rewrite_tensors(folder: Path, change: Callable[[dict], None]) -> Path:
    """Rewrite folder/model.safetensors after `change(tensors)` edits the dict in place."""
    from safetensors.numpy import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))
    return path


def shards(ws: Path, vocab: int, name: str = "data", n: int = 2048) -> Path:
    """Train and val shards of random ids below `vocab` (no tokenizer needed)."""
    from torch_impl.data import write_shard

    folder = ws / name
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    write_shard(folder / "d_train_000000.bin", rng.integers(0, vocab, n))
    write_shard(folder / "d_val_000000.bin", rng.integers(0, vocab, n // 4))
    return folder


# A CPU-sized run of the 'tiny' preset (2 layers, C=16, vocabulary 64); the table shows it as TINY_RUN.
TINY_FLAGS = [
    "--model", "tiny", "--padded-vocab", "128", "--batch-size", "2", "--seq-len", "8", "--max-steps", "2",
    "--device", "cpu", "--eval-every", "0", "--log-every", "0", "--no-progress", "--no-plot",
]  # fmt: skip
TINY_RUN = "<tiny CPU run>"


def train_args(ws: Path, data: Path, *extra: str) -> list[str]:
    """--data, --out-dir run, the tiny run's flags, then `extra` (which override)."""
    return ["--data", str(data), "--out-dir", str(ws / "run"), *TINY_FLAGS, *extra]


def fake_run_checkpoint(ws: Path, state_bytes: bytes | None = None, pointer: str = "step_0000001") -> Path:
    """run/step_0000001 with tiny weights and (optionally) a given train_state.pt, and run/latest -> `pointer`."""
    run = ws / "run"
    folder = tiny_checkpoint(run, "step_0000001")
    if state_bytes is not None:
        (folder / "train_state.pt").write_bytes(state_bytes)
    (run / "latest").write_text(pointer + "\n")
    return run


def benchmark_json(ws: Path, text: str) -> Path:
    path = ws / "bench.json"
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- kill -9 during a checkpoint write
KILL_CHILD = r"""
import os, sys, time
from pathlib import Path
import torch
import weights
from torch_impl.checkpoint import save_checkpoint

out, stage = Path(sys.argv[1]), sys.argv[2]
config = weights.GPT2Config.tiny()
params = weights.synthetic(config, seed=0)
state = {"step": 1, "optimizer": {}, "loader": {"shard": 0, "pos": 0}, "rng": {"cpu": torch.get_rng_state()},
         "pad_rows": {}}
save_checkpoint(out, 1, params, config, state)

def stall(*args, **kwargs):  # write some bytes of the file, say so, and wait for the kill
    path = args[1]
    with open(path, "wb") as f:
        f.write(b"\x00" * 4096)
        f.flush()
        os.fsync(f.fileno())
    Path(sys.argv[3]).write_text("writing " + str(path))
    time.sleep(300)

if stage == "weights":
    import safetensors.numpy
    safetensors.numpy.save_file = stall
else:
    torch.save = stall
save_checkpoint(out, 2, {k: v + 1 for k, v in params.items()}, config, {**state, "step": 2})
"""


def kill_during_checkpoint(stage: str) -> Callable[[Path, list[str]], tuple]:
    """A runner: a process writes checkpoint 1, starts checkpoint 2, and is killed with SIGKILL mid-file."""

    def run(ws: Path, argv: list[str]) -> tuple:
        marker = ws / "writing.txt"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        child = subprocess.Popen(
            [sys.executable, "-c", KILL_CHILD, str(ws / "run"), stage, str(marker)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        out, err = child.communicate(timeout=60)
        marker.unlink(missing_ok=True)
        return child.returncode, out, err

    return run


def previous_checkpoint_loads(ws: Path) -> str:
    """After the kill: `latest` still names step 1, which loads and holds checkpoint 1's weights."""
    import weights
    from torch_impl.checkpoint import latest_checkpoint, load_checkpoint

    latest = latest_checkpoint(ws / "run")
    assert latest is not None and latest.name == "step_0000001", f"latest is {latest}"
    params, config, state = load_checkpoint(latest)
    expected = weights.synthetic(weights.GPT2Config.tiny(), seed=0)
    assert state["step"] == 1 and all(np.array_equal(params[k], expected[k]) for k in expected)
    for path in (ws / "run").rglob("*"):
        if path.is_file():
            assert path.stat().st_mode & 0o777 == 0o644 or path.name.endswith(".tmp"), f"{path} is not 0644"
    return "latest still names step_0000001, which loads with its weights; files 0644"


# ----------------------------------------------------------------------------- the table
@dataclass
class Case:
    what: str  # the bad input, in words
    command: str  # key of COMMANDS
    setup: Callable[[Path], list[str]]  # builds the inputs under the folder, returns argv
    code: int = 2  # expected exit status
    names: str | None = None  # the one-line message must contain this (file, tensor or flag); None: no message
    left: tuple[str, ...] = ()  # glob patterns of the files the command may leave behind
    check: Callable[[Path], str] | None = None  # an extra check after the run; returns a note
    runner: Callable[[Path, list[str]], tuple] | None = None  # default: main(argv) in this process
    needs: Callable[[], str | None] = field(default=lambda: None)  # a reason to skip, or None


def _no_cuda() -> str | None:
    import torch

    return "this machine has CUDA" if torch.cuda.is_available() else None


def _tokenizer() -> str | None:
    from weights.paths import WHERE_TOKENIZER, tokenizer_dir

    return None if tokenizer_dir() is not None else f"needs the GPT-2 tokenizer files ({WHERE_TOKENIZER})"


def _truncate(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _ckpt_file(ws: Path) -> str:
    return str(tiny_checkpoint(ws) / "model.safetensors")


def _garbage(ws: Path, name: str, size: int = 5000) -> Path:
    path = ws / name
    path.write_bytes(np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def _bad_shard(ws: Path, how: str) -> Path:
    folder = shards(ws, 64)
    path = folder / "d_train_000000.bin"
    if how == "magic":
        raw = bytearray(path.read_bytes())
        raw[0:4] = np.int32(12345).tobytes()
        path.write_bytes(bytes(raw))
    else:
        _truncate(path, 0.7)
    return folder


def _other_manifest(ws: Path) -> list[str]:
    (ws / "a.txt").write_text("hello\n")
    out = ws / "out"
    out.mkdir()
    (out / "manifest.json").write_text(
        json.dumps({"inputs": [{"path": "/elsewhere.txt", "size": 1}], "settings": {}, "shards": [], "done": True})
    )
    return [str(ws / "a.txt"), "--out", str(out), "--no-progress"]


def _corrupt_manifest(ws: Path) -> list[str]:
    argv = _other_manifest(ws)
    (ws / "out" / "manifest.json").write_text('{"inputs": [')  # cut short, as by a full disk
    return argv


def _pyarrow() -> str | None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return "needs pyarrow (the [data] extra) for Parquet inputs"
    return _tokenizer()


def _parquet_without_text(ws: Path) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["a document", "another"]}), ws / "docs.parquet")
    return [str(ws / "docs.parquet"), "--out", str(ws / "out"), "--no-progress"]


def _sequential_run(ws: Path) -> list[str]:
    """A real 1-step run (sequential data order, checkpointed), then its resume with --data-order shuffled."""
    from torch_impl.train import main

    data = shards(ws, 64)
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        assert main(train_args(ws, data, "--max-steps", "1")) == 0
    return train_args(ws, data, "--resume", "--data-order", "shuffled")


def _corrupt_log_run(ws: Path) -> list[str]:
    """A real 1-step run, then a line of its log.jsonl replaced by one that is not JSON, then its resume."""
    from torch_impl.train import main

    data = shards(ws, 64)
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        assert main(train_args(ws, data, "--max-steps", "1")) == 0
    log = ws / "run" / "log.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(["not json", *lines]) + "\n")
    return train_args(ws, data, "--resume")


QUIET_DOCS = ["--val-fraction", "0", "--no-progress"]  # one document is enough: no val split
HS_LINE = b'{"ctx": "A man sits.", "endings": ["he stands.", "he runs.", "he eats.", "he naps."], "label": 2}\n'


def _text(ws: Path, name: str, data: bytes) -> str:
    (ws / name).write_bytes(data)
    return str(ws / name)


def _swapped_after_save(ws: Path) -> Path:
    """A checkpoint folder whose model.safetensors was replaced by another valid one after save: its
    .sha256 sidecar no longer matches."""
    folder = tiny_checkpoint(ws)
    rewrite_tensors(folder, lambda t: t.__setitem__("ln_f.bias", t["ln_f.bias"] + 1.0))
    return folder


def _truncated_llmc(ws: Path) -> str:
    """A valid llm.c model file of the tiny checkpoint, cut in half."""
    import weights
    from conformance import llmc

    params, config = weights.load(tiny_checkpoint(ws))
    path = ws / "model.bin"
    llmc.write_model(params, config, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return str(path)


def _golden(ws: Path, case: str = "tiny-B1-T7") -> Path:
    """A golden file of a tiny conformance case (conformance/golden.py), and nothing else."""
    from conformance import golden
    from conformance.cases import CASES

    return golden.export_case(next(c for c in CASES if c.name == case), ws / "kit", log=lambda *a, **k: None)


def _candidate(ws: Path, case: str = "tiny-B1-T7") -> Path:
    """A float32 candidate (numpy) for the golden file of `case`."""
    from conformance import golden
    from conformance.backends import NumpyBackend

    g = golden.open_golden(_golden(ws, case))
    dest = golden.candidate_path(ws / "kit", case, "numpy-f32")
    return golden.write_candidate(g, NumpyBackend(np.float32), dest, log=lambda *a, **k: None)


def _truncated_golden(ws: Path) -> str:
    path = _golden(ws)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return str(path)


def _set(name: str, fn: Callable[[np.ndarray], np.ndarray | None]) -> Callable[[dict], None]:
    def change(t: dict) -> None:
        out = fn(t[name])
        if out is None:
            del t[name]
        else:
            t[name] = out

    return change


def _nan(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flat[3] = np.nan
    return a


def _folder(ws: Path, name: str) -> Path:
    (ws / name).mkdir()
    return ws / name


def _bad_config(ws: Path) -> Path:
    folder = tiny_checkpoint(ws)
    (folder / "config.json").write_text("{n_layer: 2")
    return folder


def _resume(ws: Path, state_bytes: bytes | None, pointer: str) -> list[str]:
    fake_run_checkpoint(ws, state_bytes, pointer)
    return train_args(ws, shards(ws, 64), "--resume")


def _edited_checkpoint(ws: Path, change) -> list[str]:
    folder = tiny_checkpoint(ws)
    rewrite_tensors(folder, change)
    return ["--weights", str(folder)]


LONG_PROMPT = "word " * 40  # 40 tokens; the tiny checkpoint's n_ctx is 16
GOOD_BENCH = '{"benchmarks": [{"name": "x", "group": "g", "stats": {"median": 1.0}, "extra_info": {}}]}'

CASES: list[Case] = [
    # --- the main job: flags
    Case("--top 0", "compare", lambda ws: ["--top", "0"], names="--top 0"),
    Case("--top -3", "compare", lambda ws: ["--top", "-3"], names="--top -3"),
    Case("--top not a number", "compare", lambda ws: ["--top", "five"], names="--top"),
    Case(
        "--top larger than the vocabulary",
        "compare",
        lambda ws: ["--weights", _ckpt_file(ws), "--top", "65"],
        names="--top 65",
        needs=_tokenizer,
    ),
    Case("unknown --backends name", "compare", lambda ws: ["--backends", "nosuch"], names="nosuch"),
    Case(
        "--backends torch-cuda-f32 without CUDA",
        "compare",
        lambda ws: ["--backends", "torch-cuda-f32"],
        names="--backends torch-cuda-f32",
        needs=_no_cuda,
    ),
    Case("unknown flag", "compare", lambda ws: ["--tpo", "3"], names="--tpo"),
    Case(
        "prompt longer than n_ctx",
        "compare",
        lambda ws: ["--weights", _ckpt_file(ws), "--prompt", LONG_PROMPT],
        names="n_ctx = 16",
        needs=_tokenizer,
    ),
    Case(
        "empty prompt",
        "compare",
        lambda ws: ["--weights", _ckpt_file(ws), "--prompt", ""],
        names="--prompt",
        needs=_tokenizer,
    ),
    # --- the main job: weights (every loader path of weights.load)
    Case(
        "missing weights file",
        "compare",
        lambda ws: ["--weights", str(ws / "nope.safetensors")],
        names="nope.safetensors",
    ),
    Case(
        "weights folder without model.safetensors",
        "compare",
        lambda ws: ["--weights", str(_folder(ws, "empty"))],
        names="empty",
    ),
    Case(
        "truncated weights file (60%)",
        "compare",
        lambda ws: ["--weights", str(_truncate(Path(_ckpt_file(ws)), 0.6))],
        names="model.safetensors",
    ),
    Case(
        "zero-byte weights file",
        "compare",
        lambda ws: ["--weights", str(_truncate(Path(_ckpt_file(ws)), 0))],
        names="model.safetensors",
    ),
    Case(
        "random bytes as weights",
        "compare",
        lambda ws: ["--weights", str(_garbage(ws, "random.safetensors"))],
        names="random.safetensors",
    ),
    Case(
        "tensor of the wrong shape",
        "compare",
        lambda ws: _edited_checkpoint(ws, _set("ln_f.bias", lambda a: a[:3])),
        names="'ln_f.bias'",
    ),
    Case(
        "missing tensor",
        "compare",
        lambda ws: _edited_checkpoint(ws, _set("h.1.mlp.c_fc.weight", lambda a: None)),
        names="'h.1.mlp.c_fc.weight'",
    ),
    Case(
        "unknown tensor name",
        "compare",
        lambda ws: _edited_checkpoint(ws, lambda t: t.update({"h.0.attn.q_proj.weight": t["wte.weight"]})),
        names="'h.0.attn.q_proj.weight'",
    ),
    Case(
        "NaN in a tensor",
        "compare",
        lambda ws: _edited_checkpoint(ws, _set("h.0.attn.c_attn.weight", _nan)),
        names="'h.0.attn.c_attn.weight'",
    ),
    Case("config.json is not JSON", "compare", lambda ws: ["--weights", str(_bad_config(ws))], names="config.json"),
    Case("hub id this project does not pin", "compare", lambda ws: ["--weights", "gpt7"], names="'gpt7'"),
    # --- training
    Case(
        "--max-steps 0", "train", lambda ws: train_args(ws, shards(ws, 64), "--max-steps", "0"), names="--max-steps 0"
    ),
    Case(
        "--max-steps -5",
        "train",
        lambda ws: train_args(ws, shards(ws, 64), "--max-steps", "-5"),
        names="--max-steps -5",
    ),
    Case("--lr nan", "train", lambda ws: train_args(ws, shards(ws, 64), "--lr", "nan"), names="--lr nan"),
    Case(
        "--batch-size 0",
        "train",
        lambda ws: train_args(ws, shards(ws, 64), "--batch-size", "0"),
        names="--batch-size 0",
    ),
    Case("--beta2 1.5", "train", lambda ws: train_args(ws, shards(ws, 64), "--beta2", "1.5"), names="--beta2"),
    Case(
        "--dtype fp16 (not a choice)",
        "train",
        lambda ws: train_args(ws, shards(ws, 64), "--dtype", "fp16"),
        names="--dtype",
    ),
    Case(
        "--loss-impl fused (not a choice)",
        "train",
        lambda ws: train_args(ws, shards(ws, 64), "--loss-impl", "fused"),
        names="--loss-impl",
    ),
    Case(
        "--norm-impl triton on a float32 run",
        "train",
        lambda ws: train_args(ws, shards(ws, 64), "--norm-impl", "triton", "--dtype", "fp32"),
        names="--norm-impl triton",
    ),
    Case(
        "--loss-chunk-rows 0",
        "train",
        lambda ws: train_args(ws, shards(ws, 64), "--loss-impl", "chunked", "--loss-chunk-rows", "0"),
        names="--loss-chunk-rows 0",
    ),
    Case(
        "--profile-steps past the run's last step",
        "train",
        lambda ws: train_args(ws, shards(ws, 64), "--max-steps", "4", "--profile-steps", "3"),
        names="--profile-steps 3",
    ),
    Case(
        "--seq-len beyond n_ctx",
        "train",
        lambda ws: train_args(ws, shards(ws, 64), "--seq-len", "17"),
        names="--seq-len 17",
    ),
    Case(
        "--model tiny (vocab 64) on GPT-2 token ids",
        "train",
        lambda ws: train_args(ws, shards(ws, 50257)),
        names="vocabulary of 64",
    ),
    Case(
        "--sample-every on a model whose vocabulary lacks the prompt's tokens",
        "train",
        lambda ws: train_args(ws, shards(ws, 64), "--sample-every", "1"),
        names="--sample-prompt",
        needs=_tokenizer,
    ),
    Case("--data folder without shards", "train", lambda ws: train_args(ws, ws / "nothing-here"), names="nothing-here"),
    Case(
        "shard with a bad magic number",
        "train",
        lambda ws: train_args(ws, _bad_shard(ws, "magic")),
        names="d_train_000000.bin",
    ),
    Case("truncated shard", "train", lambda ws: train_args(ws, _bad_shard(ws, "truncate")), names="d_train_000000.bin"),
    Case(
        "--config with an unknown setting",
        "train",
        lambda ws: ["--config", _text(ws, "run.json", b'{"max_step": 3}')],
        names="max_step",
    ),
    Case(
        "--config that is not TOML",
        "train",
        lambda ws: ["--config", _text(ws, "run.toml", b"lr = = 3\n")],
        names="run.toml",
    ),
    Case("--config file missing", "train", lambda ws: ["--config", str(ws / "none.toml")], names="none.toml"),
    Case("--data-seed -1", "train", lambda ws: train_args(ws, shards(ws, 64), "--data-seed", "-1"), names="--data-see"),
    Case("--resume with another --data-order", "train", _sequential_run, names="--data-order shuffled"),
    Case(
        "--config value a string, not a number",
        "train",
        lambda ws: [*train_args(ws, shards(ws, 64)), "--config", _text(ws, "run.json", b'{"warmup_steps": "ten"}')],
        names="--warmup-steps",
    ),
    Case(
        "--config value a list, not a number",
        "train",
        lambda ws: [*train_args(ws, shards(ws, 64)), "--config", _text(ws, "run.json", b'{"lr": [0.1]}')],
        names="--lr",
    ),
    Case(
        "--init truncated checkpoint",
        "train",
        lambda ws: train_args(ws, shards(ws, 64), "--init", str(_truncate(Path(_ckpt_file(ws)), 0.5))),
        names="model.safetensors",
    ),
    Case(
        "--resume: train_state.pt is random bytes",
        "train",
        lambda ws: _resume(ws, b"\x80\x02junk", "step_0000001"),
        names="train_state.pt",
    ),
    Case("--resume: a log.jsonl line is not JSON", "train", _corrupt_log_run, names="log.jsonl: line 1"),
    Case(
        "--sdpa-backend cudnn on the CPU",
        "train",
        lambda ws: train_args(ws, shards(ws, 64), "--sdpa-backend", "cudnn"),
        names="--sdpa-backend cudnn",
    ),
    Case(
        "--compile-mode reduce-overhead with gradient accumulation",
        "train",
        lambda ws: train_args(
            ws, shards(ws, 64), "--compile", "--compile-mode", "reduce-overhead", "--total-batch-tokens", "32"
        ),
        names="--compile-mode reduce-overhead",
    ),
    Case(
        "--coordinate-descent-tuning without --compile",
        "train",
        lambda ws: train_args(ws, shards(ws, 64), "--coordinate-descent-tuning"),
        names="--coordinate-descent-tuning",
    ),
    Case(
        "--resume: latest names a missing folder",
        "train",
        lambda ws: _resume(ws, None, "step_0000099"),
        names="step_0000099",
    ),
    Case(
        "--device cuda without CUDA",
        "train",
        lambda ws: train_args(ws, shards(ws, 64), "--device", "cuda"),
        names="--device cuda",
        needs=_no_cuda,
    ),
    Case(
        "kill -9 while writing the weights of checkpoint 2",
        "train",
        lambda ws: [],
        code=-signal.SIGKILL,
        left=("run/*",),
        check=previous_checkpoint_loads,
        runner=kill_during_checkpoint("weights"),
    ),
    Case(
        "kill -9 while writing the train state of checkpoint 2",
        "train",
        lambda ws: [],
        code=-signal.SIGKILL,
        left=("run/*",),
        check=previous_checkpoint_loads,
        runner=kill_during_checkpoint("state"),
    ),
    # --- tokenising
    Case("missing input file", "data", lambda ws: [str(ws / "nope.txt"), "--out", str(ws / "out")], names="nope.txt"),
    Case(
        "input is not UTF-8",
        "data",
        lambda ws: [_text(ws, "latin1.txt", "caf\xe9\n".encode("latin-1")), "--out", str(ws / "out"), "--no-progress"],
        names="latin1.txt",
        needs=_tokenizer,
    ),
    Case(
        "--val-fraction 1.5",
        "data",
        lambda ws: [_text(ws, "a.txt", b"hi\n"), "--out", str(ws / "out"), "--val-fraction", "1.5"],
        names="--val-fraction",
    ),
    Case(
        "--shard-tokens 0",
        "data",
        lambda ws: [_text(ws, "a.txt", b"hi\n"), "--out", str(ws / "out"), "--shard-tokens", "0"],
        names="--shard-tokens",
    ),
    Case(
        "--out is a file",
        "data",
        lambda ws: [_text(ws, "a.txt", b"hi\n"), "--out", _text(ws, "o", b"")],
        names="--out",
        needs=_tokenizer,
    ),
    Case("--out holds another dataset", "data", _other_manifest, names="manifest.json", needs=_tokenizer),
    Case(
        "JSONL line that is not JSON",
        "data",
        lambda ws: [_text(ws, "docs.jsonl", b'{"text": "ok"}\n{"text": "cut\n'), "--out", str(ws / "o"), *QUIET_DOCS],
        names="docs.jsonl: line 2",
        needs=_tokenizer,
    ),
    Case(
        "JSONL line without the --text-column field",
        "data",
        lambda ws: [_text(ws, "docs.jsonl", b'{"body": "x"}\n'), "--out", str(ws / "out"), *QUIET_DOCS],
        names="docs.jsonl: line 1",
        needs=_tokenizer,
    ),
    Case(
        "JSONL text that is not a string",
        "data",
        lambda ws: [_text(ws, "docs.jsonl", b'{"text": ["a"]}\n'), "--out", str(ws / "out"), *QUIET_DOCS],
        names="docs.jsonl: line 1",
        needs=_tokenizer,
    ),
    Case(
        ".jsonl.gz that is not gzip",
        "data",
        lambda ws: [_text(ws, "d.jsonl.gz", b"{}\n"), "--out", str(ws / "o"), "--no-progress"],
        names="d.jsonl.gz",
        needs=_tokenizer,
    ),
    Case("Parquet file without the text column", "data", _parquet_without_text, names="docs.parquet", needs=_pyarrow),
    Case(
        "--text-column on a text file",
        "data",
        lambda ws: [_text(ws, "a.txt", b"hi\n"), "--out", str(ws / "out"), "--text-column", "body"],
        names="--text-column",
    ),
    Case("--out holds a cut-short manifest.json", "data", _corrupt_manifest, names="manifest.json", needs=_tokenizer),
    # --- the loss plot
    Case("missing log.jsonl", "plot", lambda ws: [str(ws / "log.jsonl")], names="log.jsonl"),
    Case(
        "log.jsonl without a training step",
        "plot",
        lambda ws: [_text(ws, "log.jsonl", b'{"step": 0, "event": "start"}\n')],
        names="log.jsonl",
    ),
    Case("log.jsonl not JSON lines", "plot", lambda ws: [_text(ws, "log.jsonl", b"step 1\n")], names="log.jsonl"),
    Case(
        "--smooth 0",
        "plot",
        lambda ws: [_text(ws, "log.jsonl", b'{"step": 0, "loss": 4.0, "lr": 1e-3}\n'), "--smooth", "0"],
        names="--smooth 0",
    ),
    # --- the HellaSwag-format eval
    Case(
        "missing --data file",
        "hellaswag",
        lambda ws: ["--weights", str(tiny_checkpoint(ws)), "--data", str(ws / "none.jsonl")],
        names="none.jsonl",
    ),
    Case(
        "label outside the endings",
        "hellaswag",
        lambda ws: ["--weights", "x", "--data", _text(ws, "hs.jsonl", HS_LINE.replace(b'"label": 2', b'"label": 4'))],
        names="hs.jsonl: line 1",
    ),
    Case(
        "example without endings",
        "hellaswag",
        lambda ws: ["--weights", "x", "--data", _text(ws, "hs.jsonl", b'{"ctx": "c", "label": 0}\n')],
        names="hs.jsonl: line 1",
    ),
    Case(
        "missing --weights checkpoint",
        "hellaswag",
        lambda ws: ["--weights", str(ws / "nope"), "--data", _text(ws, "hs.jsonl", HS_LINE)],
        names="nope",
    ),
    Case(
        "checkpoint without GPT-2's vocabulary",
        "hellaswag",
        lambda ws: ["--weights", str(tiny_checkpoint(ws)), "--data", _text(ws, "hs.jsonl", HS_LINE)],
        names="vocabulary of 64",
        needs=_tokenizer,
    ),
    Case("--limit -1", "hellaswag", lambda ws: ["--weights", "x", "--data", "y", "--limit", "-1"], names="--limit -1"),
    # --- the conformance report
    Case("unknown --backends name", "report", lambda ws: ["--backends", "nosuch"], names="nosuch"),
    Case(
        "--backends torch-cuda-f32 without CUDA",
        "report",
        lambda ws: ["--backends", "torch-cuda-f32"],
        names="--backends torch-cuda-f32",
        needs=_no_cuda,
    ),
    Case("unknown --cases name", "report", lambda ws: ["--cases", "nosuch"], names="nosuch"),
    Case("--json into a missing folder", "report", lambda ws: ["--json", str(ws / "no" / "r.json")], names="--json"),
    Case(
        "--markdown-from a missing file", "report", lambda ws: ["--markdown-from", str(ws / "r.json")], names="r.json"
    ),
    Case(
        "--markdown-from a file that is not a report",
        "report",
        lambda ws: ["--markdown-from", _text(ws, "r.json", b'{"results": 3}')],
        names="r.json",
    ),
    # --- the benchmark report
    Case(
        "missing benchmark JSON",
        "bench-report",
        lambda ws: [str(ws / "b.json"), "--out", str(ws / "out")],
        names="b.json",
    ),
    Case(
        "benchmark JSON that is not JSON",
        "bench-report",
        lambda ws: [str(benchmark_json(ws, "{oops")), "--out", str(ws / "out")],
        names="bench.json",
    ),
    Case(
        "benchmark JSON with nothing timed",
        "bench-report",
        lambda ws: [str(benchmark_json(ws, '{"benchmarks": []}')), "--out", str(ws / "out")],
        names="bench.json",
    ),
    Case(
        "--stat max (not a choice)",
        "bench-report",
        lambda ws: [str(benchmark_json(ws, GOOD_BENCH)), "--stat", "max"],
        names="--stat",
    ),
    # --- the conformance kit (python -m conformance <command>)
    Case("unknown kit command", "kit", lambda ws: ["frobnicate"], names="'frobnicate'"),
    Case(
        "weights whose sha256 sidecar disagrees",
        "compare",
        lambda ws: ["--weights", str(_swapped_after_save(ws)), "--backends", "numpy-f32"],
        names="model.safetensors.sha256",
    ),
    Case(
        "llm.c file with a wrong magic",
        "kit",
        lambda ws: ["llmc", "from-llmc", _text(ws, "m.bin", np.zeros(256, np.int32).tobytes()), str(ws / "out")],
        names="m.bin",
    ),
    Case(
        "truncated llm.c model file",
        "kit",
        lambda ws: ["llmc", "from-llmc", _truncated_llmc(ws), str(ws / "out")],
        names="model.bin",
    ),
    Case(
        "inspect: token id outside the vocabulary",
        "kit",
        lambda ws: ["inspect", "--weights", str(tiny_checkpoint(ws)), "--ids", "1,2,999"],
        names="999",
    ),
    Case(
        "inspect: unknown backend",
        "kit",
        lambda ws: ["inspect", "--weights", str(tiny_checkpoint(ws)), "--ids", "1,2", "--backend", "nosuch"],
        names="nosuch",
    ),
    Case(
        "check: missing golden file",
        "kit",
        lambda ws: ["check", str(ws / "none.golden.safetensors"), str(_candidate(ws)), "--json", str(ws / "r.json")],
        names="none.golden.safetensors",
    ),
    Case(
        "check: a checkpoint given as the golden file",
        "kit",
        lambda ws: [
            "check",
            str(tiny_checkpoint(ws) / "model.safetensors"),
            str(_candidate(ws)),
            "--json",
            str(ws / "r.json"),
        ],  # fmt: skip
        names="model.safetensors",
    ),
    Case(
        "check: truncated golden file",
        "kit",
        lambda ws: ["check", _truncated_golden(ws), str(ws / "c.safetensors"), "--json", str(ws / "r.json")],
        names="tiny-B1-T7.golden.safetensors",
    ),
    Case(
        "check: candidate of another case",
        "kit",
        lambda ws: ["check", str(_golden(ws, "tiny-T1")), str(_candidate(ws)), "--json", str(ws / "r.json")],
        names="tiny-B1-T7",
    ),
    Case(
        "check: --require of an unknown group",
        "kit",
        lambda ws: [
            "check",
            str(_golden(ws)),
            str(_candidate(ws)),
            "--require",
            "logitz",
            "--json",
            str(ws / "r.json"),
        ],
        names="logitz",
    ),
    Case(
        "export: unknown case",
        "kit",
        lambda ws: ["export", "--cases", "tiny-nosuch", "--out", str(ws / "k")],
        names="tiny-nosuch",
    ),  # fmt: skip
    Case(
        "export: unknown candidate backend",
        "kit",
        lambda ws: ["export", "--candidate", "nosuch-f32", "--out", str(_golden(ws).parent)],
        names="nosuch-f32",
    ),
    # --- training throughput
    Case(
        "--skip >= --steps",
        "throughput",
        lambda ws: ["--data", str(shards(ws, 64)), "--steps", "5", "--skip", "5"],
        names="--skip 5",
    ),
    Case("--data folder without shards", "throughput", lambda ws: ["--data", str(ws / "none")], names="none"),
    Case(
        "--profile reaching into the measured steps",
        "throughput",
        lambda ws: ["--data", str(shards(ws, 64)), "--profile", "7"],
        names="--profile 7",
    ),
    Case(
        "no CUDA on this machine",
        "throughput",
        lambda ws: ["--data", str(shards(ws, 64))],
        names="CUDA",
        needs=_no_cuda,
    ),
    # --- memory per size
    Case("unknown --sizes name", "memory", lambda ws: ["--sizes", "gpt2,gpt2-huge"], names="gpt2-huge"),
    Case("unknown --backends name", "memory", lambda ws: ["--backends", "jax-f32"], names="jax-f32"),
    Case("--seq beyond n_ctx", "memory", lambda ws: ["--backends", "numpy-f32", "--seq", "2048"], names="--seq 2048"),
    Case(
        "GPU backends on a machine without CUDA",
        "memory",
        lambda ws: ["--backends", "torch-cuda-f32"],
        names="CUDA",
        needs=_no_cuda,
    ),
]


# ----------------------------------------------------------------------------- running a case
@dataclass
class Outcome:
    case: Case
    argv: list[str]
    code: int | str
    stdout: str
    stderr: str
    new_files: list[str]
    note: str = ""
    problems: list[str] = field(default_factory=list)
    skipped: str | None = None

    @property
    def clean(self) -> bool:
        return self.skipped is None and not self.problems

    @property
    def message(self) -> str:
        lines = [ln for ln in self.stderr.splitlines() if ln.strip()]
        return lines[-1] if lines else ""


def _entry(command: str) -> Callable[[list[str]], int]:
    target = COMMANDS[command][1]
    if target.endswith(".py"):
        spec = importlib.util.spec_from_file_location(Path(target).stem, REPO / target)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.main
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def _in_process(command: str) -> Callable[[Path, list[str]], tuple]:
    def run(ws: Path, argv: list[str]) -> tuple:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = _entry(command)(argv)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if not isinstance(e.code, int) and e.code is not None:
                    print(e.code, file=sys.stderr)
            except Exception as e:  # a bug: keep the traceback as the user would see it
                traceback.print_exc()
                code = f"uncaught {type(e).__name__}"
        return code, out.getvalue(), err.getvalue()

    return run


def _files(ws: Path) -> set[str]:
    return {str(p.relative_to(ws)) + ("/" if p.is_dir() else "") for p in ws.rglob("*")}


def run_case(case: Case, ws: Path) -> Outcome:
    """Set up `case` in the empty folder `ws`, run it, judge what it left."""
    reason = case.needs()
    if reason:
        return Outcome(case, [], "-", "", "", [], skipped=reason)
    argv = case.setup(ws)
    before = _files(ws)
    runner = case.runner or _in_process(case.command)
    code, out, err = runner(ws, argv)
    new = sorted(_files(ws) - before)
    o = Outcome(case, argv, code, out, err, new)
    if code != case.code:
        o.problems.append(f"exit status {code}, expected {case.code}")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if "Traceback" in err:
        o.problems.append("printed a traceback")
    if case.names is not None:
        if len(lines) != 1 or not lines[0].startswith("error: "):
            o.problems.append(f"stderr is {len(lines)} line(s), not one `error: ...` line")
        elif case.names not in lines[0]:
            o.problems.append(f"the message does not name {case.names!r}")
    unexpected = [f for f in new if not any(fnmatch.fnmatch(f.rstrip("/"), p.rstrip("/*")) or
                                            fnmatch.fnmatch(f, p) for p in case.left)]  # fmt: skip
    if unexpected:
        o.problems.append(f"left files behind: {', '.join(unexpected)}")
    if case.check is not None:
        try:
            o.note = case.check(ws)
        except Exception as e:
            o.problems.append(f"check failed: {type(e).__name__}: {e}")
    return o


def run_all(cases: list[Case] = CASES, progress: bool = True) -> list[Outcome]:
    outcomes = []
    for i, case in enumerate(cases, 1):
        with tempfile.TemporaryDirectory(prefix="bad-input-") as tmp:
            t0 = time.perf_counter()
            o = run_case(case, Path(tmp))
            o.stderr = o.stderr.replace(tmp + "/", "").replace(tmp, ".")
            o.argv = [a.replace(tmp + "/", "").replace(tmp, ".") for a in o.argv]
        if progress:
            state = "skip" if o.skipped else ("clean" if o.clean else "NOT CLEAN: " + "; ".join(o.problems))
            dt = time.perf_counter() - t0
            print(f"[{i:2d}/{len(cases)}] {case.command:<12} {case.what:<52} {dt:5.1f} s  {state}", flush=True)
        outcomes.append(o)
    return outcomes


# ----------------------------------------------------------------------------- the document
def _shell(argv: list[str]) -> str:
    import shlex

    n = len(TINY_FLAGS)
    for i in range(len(argv) - n + 1):  # the tiny run's flags, shown as one word
        if argv[i : i + n] == TINY_FLAGS:
            argv = [*argv[:i], TINY_RUN, *argv[i + n :]]
            break

    def word(a: str) -> str:
        return a if a == TINY_RUN else shlex.quote(a if len(a) < 40 else a[:37] + "...")

    return " ".join(word(a) for a in argv)


def _provenance() -> str:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    dirty = git("status", "--porcelain") not in ("", "unknown")
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    import torch

    return (
        f"Written by `python -m tests.reliability.campaign --write docs/reliability.md` on "
        f"{now}, git {git('rev-parse', '--short', 'HEAD')}"
        f"{' (uncommitted changes in the tree)' if dirty else ''}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, numpy {np.__version__}, {platform.machine()} {platform.system()}, "
        f"CUDA {'available' if torch.cuda.is_available() else 'not available'}."
    )


def markdown(outcomes: list[Outcome]) -> str:
    tried = [o for o in outcomes if o.skipped is None]
    clean = [o for o in tried if o.clean]
    rows = []
    for i, o in enumerate(outcomes, 1):
        c = o.case
        cmd = COMMANDS[c.command][0] + (" " + _shell(o.argv) if o.argv else "")
        if c.runner is not None:
            cmd = f"save_checkpoint(run, 1, ...); save_checkpoint(run, 2, ...) + kill -9 ({c.command} checkpoint)"
        if o.skipped:
            verdict, msg, left = f"skipped: {o.skipped}", "", ""
        else:
            verdict = "clean" if o.clean else "**NOT CLEAN**: " + "; ".join(o.problems)
            msg = o.message if c.names is not None else (o.note or "(none)")
            left = ", ".join(o.new_files) or "none"
        cells = [str(i), c.what, f"`{cmd}`", str(o.code), msg, left, verdict]
        rows.append("| " + " | ".join(x.replace("|", "\\|").replace("`` ", "`").strip() for x in cells) + " |")
    return "\n".join(
        [
            "# Reliability: bad inputs, one-line errors, nothing half-written",
            "",
            "Every public command and loader fed inputs a user gets wrong. A case is *clean* when the exit status",
            "is the expected one (2: a user error), stderr is one line `error: ...` naming the file, tensor or flag",
            "(no traceback; `--debug` shows one), and the command left no file behind that it should not have.",
            "The kill -9 cases kill a process with SIGKILL while it writes checkpoint 2 and check that",
            "`latest` still names checkpoint 1 and that it loads. How to read a row, and the rules behind it:",
            "tests/reliability/campaign.py; the same table runs under pytest in tests/reliability/test_bad_inputs.py.",
            "",
            _provenance(),
            "",
            f"**{len(tried)} tried, {len(clean)} clean**"
            + (f" ({len(outcomes) - len(tried)} skipped on this machine)" if len(tried) < len(outcomes) else "")
            + ".",
            "",
            "| # | bad input | command | exit | message (stderr) | files left | verdict |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"Paths are relative to each case's scratch folder. {TINY_RUN} stands for `{' '.join(TINY_FLAGS)}`.",
            "Files left by the kill -9 cases are checkpoint 1 (written before the kill) and the",
            "unfinished checkpoint 2 (its temp file), which `latest` never names: a resume starts from checkpoint 1.",
            "The exit status -9 is the kill's signal as Python reports it.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.reliability.campaign", description=__doc__.split("\n")[0])
    ap.add_argument("--write", metavar="MD", help="write the table to this markdown file (docs/reliability.md)")
    ap.add_argument("--only", default="", help="run only cases whose command is one of these (comma-separated)")
    args = ap.parse_args(argv)
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
    cases = [c for c in CASES if not args.only or c.command in args.only.split(",")]
    outcomes = run_all(cases)
    tried = [o for o in outcomes if o.skipped is None]
    n_clean = sum(o.clean for o in tried)
    print(f"\n{len(tried)} tried, {n_clean} clean")
    if args.write:
        Path(args.write).write_text(markdown(outcomes))
        print(f"wrote {args.write}")
    return 0 if n_clean == len(tried) else 1


if __name__ == "__main__":
    raise SystemExit(main())
