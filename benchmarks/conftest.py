"""pytest setup for benchmarks/: the `smoke` marker and the size / device selectors.

    pytest benchmarks -m smoke --benchmark-disable     tiny size, each benchmark run once (CI)
    pytest benchmarks --bench-device=cpu               the CPU set (what `nox -s benchmarks` runs)
    pytest benchmarks --bench-device=cuda              the GPU set (benchmarks/run_gpu.sh)
    pytest benchmarks --bench-size=124m-cpu            one size (comma-separated list)

Tests not parametrised over a backend or a size are left alone by the selectors.
"""

from __future__ import annotations

import time

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("gpt2 benchmarks")
    group.addoption("--bench-size", default="", help="comma-separated sizes: tiny, 124m-cpu, 124m-gpu (default all)")
    group.addoption("--bench-rounds", type=int, default=None, help="timed rounds per benchmark, no warm-up (CI smoke)")
    group.addoption(
        "--bench-deadline", type=float, default=None, help="skip benchmarks that would start after this many seconds"
    )
    group.addoption("--bench-device", default="", help="comma-separated devices: cpu, cuda (default all)")


_SESSION_START = time.monotonic()


def pytest_runtest_setup(item):
    """--bench-deadline: once the run has used its time, the remaining benchmarks are skipped (and
    say so), so that a time-boxed GPU run still ends normally and writes its JSON."""
    deadline = item.config.getoption("--bench-deadline")
    if deadline is not None and time.monotonic() - _SESSION_START > deadline:
        pytest.skip(f"the run's time budget (--bench-deadline={deadline:g} s) is spent")


def pytest_configure(config):
    rounds = config.getoption("--bench-rounds")
    if rounds is not None:
        if rounds < 1:
            raise pytest.UsageError(f"--bench-rounds must be >= 1, got {rounds}")
        from benchmarks import timing

        timing.ROUNDS_OVERRIDE = rounds
    config.addinivalue_line("markers", "smoke: the tiny-size benchmarks CI runs so that the suite cannot rot")


def pytest_benchmark_update_machine_info(config, machine_info):
    """Library versions and the machine's load go into the JSON's machine_info (the report prints them)."""
    import importlib.metadata
    import os

    versions = {}
    for dist in ("numpy", "torch", "numba", "numba-cuda", "pytest-benchmark"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    machine_info["gpt2_versions"] = versions
    # The project's record (git commit and dirty flag, versions, CPU/GPU, host, date): weights/provenance.py.
    from weights.provenance import provenance

    machine_info["provenance"] = provenance()
    threads = {
        k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS") if k in os.environ
    }
    try:
        import torch

        threads["torch.get_num_threads()"] = str(torch.get_num_threads())
        # "highest" = IEEE float32 matmuls; "high" would let torch use TF32 and change every float32 number.
        machine_info["torch_float32_matmul_precision"] = torch.get_float32_matmul_precision()
    except ImportError:
        pass
    machine_info["threads"] = threads
    if hasattr(os, "getloadavg"):
        machine_info["load_average"] = list(os.getloadavg())


def _selected(option: str) -> set[str] | None:
    names = {s.strip() for s in option.split(",") if s.strip()}
    return names or None


def pytest_collection_modifyitems(config, items):
    sizes = _selected(config.getoption("--bench-size"))
    devices = _selected(config.getoption("--bench-device"))
    if not sizes and not devices:
        return
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        size, backend = params.get("size"), params.get("backend")
        device = getattr(backend, "device", None) or params.get("device")
        ok = (not sizes or size is None or size.name in sizes) and (not devices or device is None or device in devices)
        (keep if ok else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
