"""Tasks: `nox -s tests`, `nox -s conformance`, `nox -s compare`, `nox -s benchmarks`, `nox -s lint`.

Each session builds its own virtualenv under .nox/ with the interpreter that runs nox.
Venvs are reused between runs (`reuse_venv = "yes"`); `nox -R` also skips the pip step,
which makes a re-run start in seconds. Delete .nox/ to start clean.

torch: sessions install ``torch==2.13.0`` unless TORCH_SPEC says otherwise (e.g.
``TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu128"`` for a CUDA build).

Numba: on a machine without a GPU the sessions set NUMBA_ENABLE_CUDASIM=1, so every
kernel runs (slowly) in Numba's CUDA simulator on tiny configs; likewise TRITON_INTERPRET=1 runs
the one Triton kernel (torch_impl/cross_entropy_triton.py) in Triton's interpreter.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import tomllib

import nox

nox.options.reuse_venv = "yes"
nox.options.sessions = ["tests"]

TORCH_SPEC = shlex.split(os.environ.get("TORCH_SPEC", "torch==2.13.0"))


def _has_nvidia_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None and os.path.exists("/dev/nvidia0")


def _install(session: nox.Session, extras: str = "all") -> None:
    session.install(*TORCH_SPEC)
    session.install("-e", f".[{extras}]")


def _env() -> dict[str, str]:
    # OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads (NumPy's OpenBLAS, torch) sleep instead of spinning.
    # With the default spin-wait, a 2-core machine that runs anything else beside the tests made the
    # NumPy reference's small-case forward+backward many times slower.
    env = {"PYTHONHASHSEED": "0", "OMP_WAIT_POLICY": "PASSIVE"}
    if not _has_nvidia_gpu():
        env["NUMBA_ENABLE_CUDASIM"] = "1"
        env["TRITON_INTERPRET"] = "1"  # Triton kernels (torch_impl/cross_entropy_triton.py) run interpreted
    return env


# A backend from an installed package (conformance/plugins.py): the tests session installs this example
# so that the suite runs it like any built-in backend and tests/conformance/test_plugins.py finds it installed.
EXAMPLE_PLUGIN = "examples/gpt2-conformance-plugin"


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite (unit tests, conformance on small configs, benchmark smoke), with the example plugin."""
    _install(session)
    session.install("-e", EXAMPLE_PLUGIN)
    session.run("python", "-m", "pytest", *session.posargs, env=_env())


@nox.session
def conformance(session: nox.Session) -> None:
    """Cross-backend conformance: prints the table, writes conformance-report.json, fails on any breach.

    `nox -s conformance -- --full` adds the full 124M-shape cases.
    """
    _install(session)
    session.run("python", "-m", "conformance.report", *session.posargs, env=_env())
    session.run("python", "-m", "pytest", "-q", "conformance/test_tokenizer_conformance.py", env=_env())


@nox.session
def compare(session: nox.Session) -> None:
    """The main job: GPT-2 weights (hub, else the labelled synthetic default) through every backend."""
    _install(session)
    args = session.posargs or ["--weights", "gpt2", "--fallback-synthetic"]
    session.run("python", "-m", "conformance.compare", *args, env=_env())


@nox.session
def benchmarks(session: nox.Session) -> None:
    """pytest-benchmark across the CPU backends -> bench-cpu.json, then tables and charts in benchmark-report/.

    The GPU set: `OUT=folder bash benchmarks/run_gpu.sh` on a CUDA machine (docs/benchmarks.md).
    """
    _install(session)
    session.run(
        "python",
        "-m",
        "pytest",
        "benchmarks",
        "--bench-device=cpu",
        "--benchmark-only",
        "--benchmark-json=bench-cpu.json",
        *session.posargs,
        env=_env(),
    )
    session.run(
        "python",
        "-m",
        "benchmarks.report",
        "bench-cpu.json",
        "--out",
        "benchmark-report",
        "--prefix",
        "bench-cpu",
        "--stat",
        "min",
        env=_env(),
    )


def _pinned(extra: str, name: str) -> str:
    """The requirement for `name` in pyproject.toml's optional dependency group `extra` (one place for pins)."""
    with open(os.path.join(os.path.dirname(__file__), "pyproject.toml"), "rb") as f:
        group = tomllib.load(f)["project"]["optional-dependencies"][extra]
    for requirement in group:
        if re.match(rf"{re.escape(name)}\b", requirement):
            return requirement
    raise LookupError(f"pyproject.toml: no {name} in the [{extra}] extra")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff's lint rules and its formatter, with the version pinned in pyproject.toml.
    Fails (non-zero) on any finding, including a file the formatter would change."""
    session.install(_pinned("dev", "ruff"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", "--diff", ".")
