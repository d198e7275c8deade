"""scripts/memory_per_size.py on the host: the NumPy reference's step at 124M measured in a process of
its own, and the flags it refuses. (The GPU backends' rows need a GPU: scripts/gpu_results_run.sh.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from weights.paths import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "scripts" / "memory_per_size.py"


def _run(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=600)  # fmt: skip


def test_the_reference_step_at_124m_holds_at_least_its_weights_gradients_and_adamw(tmp_path):
    out = tmp_path / "m.json"
    p = _run("--sizes", "gpt2", "--backends", "numpy-f32", "--seq", "16", "--json", str(out), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    doc = json.loads(out.read_text())
    (row,) = doc["rows"]
    assert (row["size"], row["backend"], row["B"], row["T"]) == ("gpt2", "numpy-f32", 1, 16)
    assert row["params"] == 124_439_808 and row["weights_grads_adamw_bytes"] == 16 * 124_439_808
    # weights, gradients and AdamW's m and v are all alive at the update: the peak holds at least them
    assert row["host_peak_bytes"] >= row["weights_grads_adamw_bytes"]
    assert row["loss"] == pytest.approx(10.82, abs=0.5)  # ~ln(50257): synthetic weights, random ids
    assert doc["measured_by"] == "scripts/memory_per_size.py" and doc["provenance"]["git"]


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--sizes", "gpt2-huge"], "--sizes: unknown size 'gpt2-huge'"),
        (["--backends", "jax"], "--backends: unknown backend 'jax'"),
        (["--seq", "2048", "--backends", "numpy-f32"], "--seq 2048"),
    ],
)
def test_bad_flags_are_one_line(tmp_path, args, names):
    p = _run(*args, cwd=tmp_path)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], p.stderr
    assert not (tmp_path / "memory-per-size.json").exists()
