"""Where a measured number came from: the record every results file embeds.

    from weights.provenance import provenance
    report["provenance"] = provenance()

    python -m weights.provenance          # print this machine's record as JSON

The record says which code ran (git commit, and whether the working tree had uncommitted
changes to tracked files), with which libraries, on which hardware, on which host, when, and
by which command:

    {"date_utc": "2026-11-26T14:02:11+00:00",
     "command": ["scripts/...", "--flag"],
     "git": {"commit": "2e93998...", "dirty": false, "changed_files": [], "source": "git"},
     "versions": {"python": "3.12.3", "numpy": "2.5.2", "torch": "2.11.0+cu130", ...},
     "device": {"cpu": "AMD EPYC ...", "cpu_count": 16, "gpus": ["NVIDIA H200"],
                "cuda_driver": "580.159.04", "cuda_runtime": "13.0", "numba_cuda_simulator": false},
     "host": {"hostname": "...", "os": "Linux-6.8...", "machine": "x86_64"}}

Where the code runs from a copy of the working tree (a GPU machine), its `.git`, if any, may be
older than the files beside it; whoever copied the tree then says which commit it is:
GPT2_GIT_COMMIT (and GPT2_GIT_DIRTY=0/1) take precedence over git, with "source": "environment".
Without either, commit is None and "source" says why. The record never
fails: a missing library or tool is written as None, so a results file can always be written.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Distributions whose versions can change a number we publish (installed ones only are listed).
DISTRIBUTIONS = (
    "numpy",
    "torch",
    "numba",
    "numba-cuda",
    "transformers",
    "safetensors",
    "tiktoken",
    "pytest-benchmark",
)


def _run(cmd: list[str], cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.rstrip() if out.returncode == 0 else None  # rstrip: porcelain lines start with a space


def git_state(repo: Path | str = PROJECT_ROOT) -> dict:
    """{"commit", "dirty", "changed_files", "source"} of the checkout at `repo`.

    dirty means uncommitted changes to tracked files (staged or not); untracked files are not
    counted, since they cannot change what committed code computes unless something imports them.
    """
    repo = Path(repo)
    commit = _run(["git", "rev-parse", "HEAD"], cwd=repo)
    env_commit = os.environ.get("GPT2_GIT_COMMIT", "").strip()
    if env_commit:  # said by whoever copied the tree here; a copied .git may be older than the tree
        dirty = os.environ.get("GPT2_GIT_DIRTY", "").strip()
        return {
            "commit": env_commit,
            "dirty": None if dirty == "" else dirty not in ("0", "false", "no"),
            "changed_files": None,
            "source": f"environment (GPT2_GIT_COMMIT); git here says {commit or 'nothing'}",
        }
    if commit:
        status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo)
        changed = sorted(line[3:] for line in (status or "").splitlines() if line.strip())
        return {"commit": commit, "dirty": bool(changed), "changed_files": changed, "source": "git"}
    return {
        "commit": None,
        "dirty": None,
        "changed_files": None,
        "source": f"unknown: {repo} is not a git checkout and GPT2_GIT_COMMIT is not set",
    }


def versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in DISTRIBUTIONS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device() -> dict:
    """The CPU, and the GPUs as nvidia-smi and torch see them (None where there are none).

    torch is asked only if something already imported it: importing torch just to describe the
    machine would cost a second in every results writer that never uses it.
    """
    out = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpus": None,
        "cuda_driver": None,
        "cuda_runtime": None,
        "numba_cuda_simulator": os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1",
    }
    smi = _run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    if smi:
        rows = [[c.strip() for c in line.split(",")] for line in smi.splitlines() if line.strip()]
        out["gpus"] = [r[0] for r in rows]
        out["cuda_driver"] = rows[0][1] if rows and len(rows[0]) > 1 else None
    torch = sys.modules.get("torch")
    if torch is not None:
        out["cuda_runtime"] = torch.version.cuda
        if out["gpus"] is None and torch.cuda.is_available():
            out["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return out


def provenance(repo: Path | str = PROJECT_ROOT) -> dict:
    """The full record (see the module docstring). Costs a few git / nvidia-smi calls, well under a second."""
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": [Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "", *sys.argv[1:]],
        "git": git_state(repo),
        "versions": versions(),
        "device": device(),
        "host": {"hostname": socket.gethostname(), "os": platform.platform(), "machine": platform.machine()},
    }


if __name__ == "__main__":
    json.dump(provenance(), sys.stdout, indent=1)
    print()
