"""The nox sessions judge: a session whose tool reports a problem must fail, not pass."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _noxfile():
    pytest.importorskip("nox")
    spec = importlib.util.spec_from_file_location("project_noxfile", ROOT / "noxfile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _RecordingSession:
    """Stands in for nox.Session: records what a session would install and run."""

    def __init__(self):
        self.installs, self.runs = [], []
        self.posargs: list[str] = []

    def install(self, *args, **kwargs):
        self.installs.append(args)

    def run(self, *args, **kwargs):
        self.runs.append((args, kwargs))


def test_lint_session_fails_when_ruff_finds_something():
    session = _RecordingSession()
    _noxfile().lint.func(session)
    ruff_runs = [(args, kwargs) for args, kwargs in session.runs if args[0] == "ruff"]
    assert [args[1] for args, _ in ruff_runs] == ["check", "format"]
    for args, kwargs in ruff_runs:
        # nox fails a session on any exit code outside success_codes (default [0]); ruff exits 1 on a finding
        assert set(kwargs.get("success_codes", [0])) == {0}, f"`{' '.join(args)}` accepts a failing exit code"


def test_lint_session_installs_the_pinned_ruff():
    with open(ROOT / "pyproject.toml", "rb") as f:
        dev = tomllib.load(f)["project"]["optional-dependencies"]["dev"]
    pins = [r for r in dev if r.startswith("ruff")]
    assert len(pins) == 1 and "==" in pins[0], f"pyproject.toml's dev extra must pin ruff exactly, has {pins}"
    session = _RecordingSession()
    _noxfile().lint.func(session)
    assert session.installs == [(pins[0],)]


def test_tests_session_installs_the_example_plugin_after_the_project():
    """CI runs the example plugin (examples/gpt2-conformance-plugin) through the suite: it must be installed,
    after the project it depends on, from a folder that is a package with the plugin entry-point group."""
    session = _RecordingSession()
    _noxfile().tests.func(session)
    example = ("-e", "examples/gpt2-conformance-plugin")
    assert example in session.installs, session.installs
    assert session.installs.index(("-e", ".[all]")) < session.installs.index(example)
    with open(ROOT / example[1] / "pyproject.toml", "rb") as f:
        entry_points = tomllib.load(f)["project"]["entry-points"]
    from conformance.plugins import GROUP

    assert GROUP in entry_points
