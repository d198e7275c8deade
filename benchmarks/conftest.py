"""pytest setup for benchmarks/: the `smoke` marker and the size / device selectors.

    pytest benchmarks -m smoke --benchmark-disable     tiny size, each benchmark run once (CI)
    pytest benchmarks --bench-device=cpu               the CPU set (what `nox -s benchmarks` runs)
    pytest benchmarks --bench-device=cuda              the GPU set (benchmarks/run_gpu.sh)
    pytest benchmarks --bench-size=124m-cpu            one size (comma-separated list)

Tests not parametrised over a backend or a size are left alone by the selectors.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("gpt2 benchmarks")
    group.addoption("--bench-size", default="", help="comma-separated sizes to run: tiny, 124m-cpu, 124m-gpu (default all)")
    group.addoption("--bench-device", default="", help="comma-separated devices whose backends run: cpu, cuda (default all)")


def pytest_configure(config):
    config.addinivalue_line("markers", "smoke: the tiny-size benchmarks CI runs so that the suite cannot rot")


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
