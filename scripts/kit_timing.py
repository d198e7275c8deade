"""How long the conformance kit's commands take on this machine, and how large the golden files are.

    python scripts/kit_timing.py [--json docs/results/kit-timing-cpu.json] [--big]

Each run is the real command in a fresh process (`python -m conformance ...`), timed from start to exit;
its peak resident memory is that process's own (os.wait4). The runs:

    inspect   --weights synthetic (124M) on a 16-token prompt: text only; --out (the PNGs); --out with
              --compare torch-cpu-f32; and the llama-style 124M with --compare torch-cpu-f32 --out
    export    every CI-sized case (the default), and with --big the 124M-shape cases one by one
              (gigabytes each; the folder is deleted after its sizes are read)

The JSON holds every run's command, seconds, peak memory, exit status and the files it wrote (name and
bytes), with the provenance record of weights/provenance.py (commit, versions, machine, date). A run
that exits non-zero makes this script exit 1: a timing of a failed command is no timing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the repository's packages

from weights.checkpoint import atomic_write  # noqa: E402
from weights.errors import ArgumentParser, run_cli  # noqa: E402
from weights.provenance import provenance  # noqa: E402

PROMPT = "The quick brown fox jumps over the lazy dog because it wanted to see what was"
BIG_CASES = ("124m-B4-T64", "124m-B1-T1024", "124m-adamw")


def timed(argv: list[str], out: Path | None) -> dict:
    """Run `python -m conformance <argv>`; seconds, peak RSS (MB), exit status and the files under `out`."""
    cmd = [sys.executable, "-m", "conformance", *argv]
    print("$ python -m conformance " + " ".join(argv), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    files = {}
    if out is not None and out.is_dir():
        files = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    run = {
        "argv": argv,
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: kilobytes
        "exit": proc.returncode,
        "files": files,
        "total_bytes": sum(files.values()),
    }
    print(
        f"  {seconds:.1f} s, peak {run['peak_rss_mb']:.0f} MB, exit {proc.returncode}, {len(files)} files", flush=True
    )
    if proc.returncode != 0:
        run["stderr_tail"] = stderr[-2000:]
    return run


def _main(argv: list[str]) -> int:
    ap = ArgumentParser(prog="python scripts/kit_timing.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default="kit-timing.json", help="the results file to write")
    ap.add_argument("--big", action="store_true", help="also export the 124M-shape cases (~6 GB of disk, minutes)")
    args = ap.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory(prefix="kit-timing-") as tmp:
        tmp = Path(tmp)
        base = ["inspect", "--weights", "synthetic", "--prompt", PROMPT]
        runs.append(dict(what="inspect, text only", **timed(base, None)))
        runs.append(dict(what="inspect --out", **timed([*base, "--out", str(tmp / "look1")], tmp / "look1")))
        compare = [*base, "--compare", "torch-cpu-f32", "--out", str(tmp / "look2")]
        runs.append(dict(what="inspect --out --compare torch-cpu-f32", **timed(compare, tmp / "look2")))
        llama = ["inspect", "--weights", "llama-124m", "--prompt", PROMPT, "--compare",
                 "torch-cpu-f32", "--out", str(tmp / "look3")]  # fmt: skip
        runs.append(dict(what="inspect llama-124m --out --compare torch-cpu-f32", **timed(llama, tmp / "look3")))
        runs.append(dict(what="export (CI-sized cases)", **timed(["export", "--out", str(tmp / "kit")], tmp / "kit")))
        if args.big:
            for case in BIG_CASES:
                out = tmp / f"kit-{case}"
                runs.append(dict(what=f"export {case}", **timed(["export", "--cases", case, "--out", str(out)], out)))
                shutil.rmtree(out, ignore_errors=True)
    for r in runs:  # the temporary folder's name is not part of the result
        r["argv"] = [a.replace(str(tmp), "$TMP") for a in r["argv"]]
    record = {"what": "conformance kit: wall time, peak memory and file sizes", "prompt": PROMPT, "runs": runs,
              "provenance": provenance()}  # fmt: skip
    dest = Path(args.json)
    atomic_write(dest, lambda t: Path(t).write_text(json.dumps(record, indent=1) + "\n"))
    print(f"wrote {dest}")
    failed = [r["what"] for r in runs if r["exit"] != 0]
    if failed:
        print(f"error: {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
