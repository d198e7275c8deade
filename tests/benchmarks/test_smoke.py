"""The benchmark suite's CI smoke run: every tiny-size benchmark once, timed, then the report on its JSON.

This is how CI keeps benchmarks/ from rotting without spending minutes on timing: the
benchmarks run in a subprocess (benchmarks/ is not in the default testpaths) with
`-m smoke --bench-rounds=1`, each one asserting its output against the float64 reference,
and the JSON they write must turn into a report with a row for every backend that ran.
Numba runs in the CUDA simulator when NUMBA_ENABLE_CUDASIM=1 (as nox sets on a CPU box),
else it is skipped with its reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.backends import BACKENDS
from benchmarks.cases import MODEL_TASKS, OPS

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_benchmarks_run_and_report(tmp_path):
    results = tmp_path / "smoke.json"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "benchmarks",
        "-m",
        "smoke",
        "--bench-rounds=1",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--benchmark-json={results}",
        "-W",
        "ignore::pytest_benchmark.logger.PytestBenchmarkWarning",
    ]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=os.environ.copy(), timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]

    data = json.loads(results.read_text())
    timed = [b for b in data["benchmarks"] if b["stats"] and b["extra_info"].get("kind") in ("op", "model")]
    ran = {b["extra_info"]["backend"] for b in timed}
    assert {"numpy-f32", "numpy-f64", "torch-cpu-f32"} <= ran  # the CPU backends always run
    cpu_backends = {b.name for b in BACKENDS if b.device == "cpu"}
    for backend in ran & cpu_backends:  # every op and model task of a CPU backend, nothing silently missing
        n_ops = sum(1 for b in timed if b["extra_info"]["backend"] == backend and b["extra_info"]["kind"] == "op")
        n_model = sum(1 for b in timed if b["extra_info"]["backend"] == backend and b["extra_info"]["kind"] == "model")
        assert (n_ops, n_model) == (2 * len(OPS), len(MODEL_TASKS)), backend

    out = tmp_path / "report"
    rep = subprocess.run(
        [sys.executable, "-m", "benchmarks.report", str(results), "--out", str(out), "--prefix", "smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert rep.returncode == 0, rep.stderr
    md = (out / "smoke.md").read_text()
    for backend in ran:
        assert f"| {backend} |" in md or f" {backend} |" in md, backend
    assert (out / "smoke-model.png").is_file() and (out / "smoke-ops-tiny.png").is_file()


def test_selectors_keep_only_the_asked_sizes_and_devices():
    cmd = [sys.executable, "-m", "pytest", "benchmarks/test_bench_ops.py", "benchmarks/test_bench_model.py",
           "--collect-only", "-q", "-p", "no:cacheprovider", "--bench-device=cpu", "--bench-size=124m-cpu"]  # fmt: skip
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    ids = [line for line in run.stdout.splitlines() if "::" in line]
    cpu_backends = [b.name for b in BACKENDS if b.device == "cpu"]
    # every op x 2 directions + every model task, for each CPU backend, all at 124m-cpu
    assert len(ids) == (2 * len(OPS) + len(MODEL_TASKS)) * len(cpu_backends)
    assert all("124m-cpu" in i and any(i.endswith(f"-{b}]") for b in cpu_backends) for i in ids)


def test_bad_round_count_is_refused():
    cmd = [sys.executable, "-m", "pytest", "benchmarks/test_bench_weights.py", "--bench-rounds=0", "-q"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode != 0 and "--bench-rounds must be >= 1" in run.stderr
