"""Every public command fed bad inputs: exit status, one-line message naming the culprit, files left.

The case table lives in tests/reliability/campaign.py, which also writes docs/reliability.md from it.
Cheap cases call each command's main(argv) in this process; kill -9 and the `python -m` wiring
need processes of their own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.reliability.campaign import CASES, COMMANDS, REPO, run_case, shards, tiny_checkpoint


@pytest.mark.parametrize("case", CASES, ids=[f"{c.command}: {c.what}" for c in CASES])
def test_bad_input_is_reported_cleanly(case, tmp_path):
    outcome = run_case(case, tmp_path)
    if outcome.skipped:
        pytest.skip(outcome.skipped)
    assert outcome.clean, (
        f"{'; '.join(outcome.problems)}\nargv: {outcome.argv}\nstderr:\n{outcome.stderr}\nstdout:\n{outcome.stdout}"
    )


def test_the_campaign_covers_every_command_with_enough_kinds():
    commands = {c.command for c in CASES}
    assert commands == set(COMMANDS)  # every command has its cases
    assert len(CASES) >= 30
    assert any(c.runner is not None and c.code < 0 for c in CASES)  # a kill -9 during a checkpoint write


def test_docs_table_is_the_generated_one():
    """docs/reliability.md holds one row per case, in order: regenerate it when the table changes."""
    text = (REPO / "docs" / "reliability.md").read_text()
    rows = [line.split(" | ")[1] for line in text.splitlines() if re.match(r"\| \d+ \| ", line)]
    assert rows == [c.what for c in CASES], "run: python -m tests.reliability.campaign --write docs/reliability.md"
    assert "Written by `python -m tests.reliability.campaign --write docs/reliability.md`" in text
    tried, clean = map(int, re.search(r"\*\*(\d+) tried, (\d+) clean\*\*", text).groups())
    assert tried == clean


@pytest.mark.parametrize(
    ("module", "args", "names"),
    [
        (["-m", "conformance.compare"], ["--top", "0"], "--top 0"),
        (["-m", "torch_impl.data"], ["missing.txt", "--out", "OUT"], "missing.txt"),
        (["scripts/train_throughput.py"], ["--data", "DATA", "--steps", "3", "--skip", "3"], "--skip 3"),
        (["scripts/train_throughput.py"], ["--data", "DATA", "--profile", "7"], "--profile 7"),
        (
            ["-m", "torch_impl.train"],
            [
                "--data",
                "DATA",
                "--out-dir",
                "OUT",
                "--max-steps",
                "3",
                "--profile-steps",
                "2",
                "--model",
                "tiny",
                "--seq-len",
                "8",
                "--device",
                "cpu",
            ],
            "--profile-steps 2",
        ),  # fmt: skip
    ],
    ids=["compare", "data", "train_throughput", "train_throughput_profile", "train_profile_steps"],
)
def test_commands_as_processes_print_one_line_and_exit_2(tmp_path, module, args, names):
    """The same errors through `python -m` / the script path: the __main__ wiring passes the status on."""
    data = shards(tmp_path, 64)
    args = [a.replace("OUT", str(tmp_path / "out")).replace("DATA", str(data)) for a in args]
    p = subprocess.run([sys.executable, *module, *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2, p.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], p.stderr
    assert not (tmp_path / "out").exists()


def test_debug_flag_shows_the_traceback(tmp_path, capsys):
    from conformance.compare import main

    with pytest.raises(Exception, match="no such checkpoint"):
        main(["--weights", str(tmp_path / "nope.safetensors"), "--debug"])


def test_a_bug_keeps_its_traceback():
    """Only known user-error types become one line; anything else propagates (a bug must be visible)."""
    from weights.errors import run_cli

    def body(argv):
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        run_cli(body, [])


def test_checkpoint_files_are_world_readable(tmp_path):
    """Every file of a training checkpoint is 0644, like the weights files (mkstemp and safetensors make 0600)."""
    import torch

    from torch_impl.checkpoint import save_checkpoint

    tiny_checkpoint(tmp_path, "unused")  # the weights files themselves
    import weights

    config = weights.GPT2Config.tiny()
    state = {"step": 1, "optimizer": {}, "loader": {"shard": 0, "pos": 0}, "rng": {}, "pad_rows": {}}
    old = os.umask(0o022)
    try:
        folder = save_checkpoint(tmp_path / "run", 1, weights.synthetic(config, seed=0), config, state)
    finally:
        os.umask(old)
    files = [*folder.iterdir(), tmp_path / "run" / "latest", *(tmp_path / "unused").iterdir()]
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {"0o644"}, modes
    assert torch.load(folder / "train_state.pt", weights_only=True)["step"] == 1
    assert np.array_equal(weights.load(folder)[0]["wte.weight"], weights.synthetic(config, seed=0)["wte.weight"])
