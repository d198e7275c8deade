"""`python -m conformance.report`: every case on every backend; a table, a JSON report, exit status.

    python -m conformance.report                      # the CI-sized cases
    python -m conformance.report --full               # plus the full 124M-shape cases
    python -m conformance.report --backends numpy-f32,torch-cpu-f32 --cases tiny-B4-ctx
    python -m conformance.report --json report.json   # every number, machine-readable
    python -m conformance.report --list               # every backend: where it came from, can it run here

Exit status 1 if any check breaches its ceiling or crashes, or an installed plugin failed to load;
the divergence localizer then says at which op the failing backend parts from the reference.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from conformance.backends import NumpyBackend, registry
from conformance.cases import CASES, batch, params_for
from conformance.localize import localize_backends
from conformance.plugins import GROUP, PluginFailure
from conformance.suite import REFERENCE, Result, run_case
from conformance.tolerances import CEILINGS, LOCALIZE
from weights.checkpoint import atomic_write
from weights.errors import ArgumentParser, UsageError, UserError, run_cli
from weights.provenance import provenance

CHECK_ORDER = [
    "logits",
    "loss",
    "grad_l2",
    "grad_max",
    "adamw_loss",
    "adamw_param_l2",
    "adamw_update_l2",
    "generate_mismatches",
    "kv_cache",
]


def environment() -> dict:
    env = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
        "numba_cuda_simulator": os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1",
    }
    try:
        import torch

        env["torch"] = torch.__version__
        env["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        env["torch"] = None
    try:
        import numba

        env["numba"] = numba.__version__
    except ImportError:
        pass
    return env


def summarize(results: list[Result]) -> dict[tuple[str, str], Result]:
    """Worst result per (backend, check) over all cases; a failure beats a pass at any value."""
    worst: dict[tuple[str, str], Result] = {}
    for r in results:
        if r.value is None and r.passed is not False:
            continue
        key = (r.backend, r.check)
        cur = worst.get(key)
        rank = (r.passed is False, r.value if r.value is not None else float("inf"))
        if cur is None or rank > (cur.passed is False, cur.value if cur.value is not None else float("inf")):
            worst[key] = r
    return worst


def format_table(results: list[Result], backends) -> str:
    worst = summarize(results)
    checks = [c for c in CHECK_ORDER if any(k[1] == c for k in worst)]
    lines = []
    width = max([22] + [len(b.name) + 1 for b in backends])  # a plugin's name may be longer than ours
    header = f"{'backend':<{width}}" + "".join(f"{c:>22}" for c in checks)
    lines += [header, "-" * len(header)]
    for b in backends:
        if b.name == REFERENCE:
            continue
        row = f"{b.name:<{width}}"
        ran = False
        for c in checks:
            r = worst.get((b.name, c))
            if r is None:
                row += f"{'-':>22}"
                continue
            ran = True
            if r.value is None:
                cell = "ERROR"
            else:
                verdict = {True: "ok", False: "FAIL", None: "info"}[r.passed]
                val = f"{int(r.value)}" if c in ("generate_mismatches", "kv_cache") else f"{r.value:.1e}"
                ceil = (
                    "-" if r.ceiling is None else (f"{r.ceiling}" if isinstance(r.ceiling, int) else f"{r.ceiling:.0e}")
                )
                cell = f"{val} / {ceil} {verdict}"
            row += f"{cell:>22}"
        if ran:
            lines.append(row)
    lines.append("cells: worst value over all cases / ceiling, vs numpy-f64")
    skipped = {}
    for r in results:
        if r.detail.startswith("skipped"):
            skipped.setdefault(r.backend, set()).add(
                r.detail[len("skipped: ") :] + ("" if r.check == "all" else f" [{r.check}]")
            )
    if skipped:
        lines.append("")
        lines.append("skipped:")
        for name, reasons in skipped.items():
            for why in sorted(reasons):
                lines.append(f"  {name}: {why}")
    errors = [r for r in results if r.detail.startswith("error")]
    for r in errors:
        lines.append(f"ERROR {r.backend} / {r.case} / {r.check}: {r.detail}")
    return "\n".join(lines)


def format_list(backends) -> str:
    """`--list`: one row per backend of the registry: precision, device, whether it runs here, where it came from."""
    rows = [("backend", "precision", "device", "runs here", "origin")]
    for b in backends:
        ok, why = b.available()
        rows.append((b.name, b.precision, b.device, "yes" if ok else f"no: {why}", str(b.origin)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    plugins = [b for b in backends if not b.origin.builtin and not isinstance(b, PluginFailure)]
    failures = [b for b in backends if isinstance(b, PluginFailure)]
    lines.append(
        f"{len(backends) - len(plugins) - len(failures)} built-in, {len(plugins)} from plugins "
        f"(entry-point group {GROUP}), {len(failures)} plugin error(s)"
    )
    return "\n".join(lines)


def markdown_table(results: list[dict]) -> str:
    """The summary table in markdown, from the JSON report's results (as written by main)."""
    rs = [Result(**r) for r in results]
    worst = summarize(rs)
    backends = list(dict.fromkeys(r.backend for r in rs))
    checks = [c for c in CHECK_ORDER if any(k[1] == c for k in worst)]
    lines = ["| backend | " + " | ".join(checks) + " |", "|---" * (len(checks) + 1) + "|"]
    for b in backends:
        cells = []
        for c in checks:
            r = worst.get((b, c))
            if r is None:
                cells.append("–")
            elif r.value is None:
                cells.append("error")
            else:
                val = f"{int(r.value)}" if c in ("generate_mismatches", "kv_cache") else f"{r.value:.1e}"
                ceil = (
                    "–" if r.ceiling is None else (f"{r.ceiling}" if isinstance(r.ceiling, int) else f"{r.ceiling:.0e}")
                )
                mark = {True: "", False: " **FAIL**", None: " (reported)"}[r.passed]
                cells.append(f"{val} / {ceil}{mark}")
        if any(c != "–" for c in cells):
            lines.append(f"| {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    """The command line; bad flags or files are one line (`error: ...`) and exit status 2."""
    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    ap = ArgumentParser(
        prog="python -m conformance.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--full", action="store_true", help="include the full 124M-shape cases")
    ap.add_argument("--only-full", action="store_true", help="run only the full 124M-shape cases")
    ap.add_argument("--backends", default="", help="comma-separated backend names (default: all)")
    ap.add_argument("--cases", default="", help="comma-separated case names (default: all of the chosen size)")
    ap.add_argument("--json", default="conformance-report.json", help="where to write the JSON report")
    ap.add_argument(
        "--markdown-from", metavar="JSON", help="print the summary table of an existing JSON report, then exit"
    )
    ap.add_argument(
        "--list", action="store_true", help="list every backend (built-in and plugins) with its origin, then exit"
    )
    args = ap.parse_args(argv)
    if args.list:
        print(format_list(registry()))
        return 0
    if args.markdown_from:
        with open(args.markdown_from) as f:
            try:
                table = markdown_table(json.load(f)["results"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise UserError(
                    f"--markdown-from {args.markdown_from}: not a conformance JSON report ({type(e).__name__}: {e})"
                ) from None
        print(table)
        return 0

    backends = registry()
    if args.backends:
        wanted = set(args.backends.split(","))
        known = [b.name for b in backends]
        unknown = wanted - set(known)
        if unknown:
            raise UsageError(f"--backends: unknown backend(s) {sorted(unknown)}; known: {', '.join(known)}")
        backends = [b for b in backends if b.name in wanted or b.name == REFERENCE]
        for b in backends:  # asked for by name: it must be able to run here
            ok, why = b.available()
            if not ok and b.name in wanted:
                raise UsageError(f"--backends {b.name}: cannot run on this machine ({why})")
    cases = [c for c in CASES if (c.full and (args.full or args.only_full)) or (not c.full and not args.only_full)]
    if args.cases:
        wanted = set(args.cases.split(","))
        unknown = wanted - {c.name for c in CASES}
        if unknown:
            raise UsageError(f"--cases: unknown case(s) {sorted(unknown)}; known: {', '.join(c.name for c in CASES)}")
        cases = [c for c in CASES if c.name in wanted]
    json_dir = os.path.dirname(os.path.abspath(args.json))
    if not os.path.isdir(json_dir):  # found out now, not after the whole run
        raise UsageError(f"--json {args.json}: folder {json_dir} does not exist")

    results: list[Result] = []
    for b in backends:  # a plugin that did not load: one failure, not a row per case
        if isinstance(b, PluginFailure):
            results.append(Result("-", b.name, "plugin", None, None, False, f"error: {b.error}"))
            print(f"  {'-':<20} {b.name:<22} FAIL  plugin error: {b.error}", flush=True)
    for case in cases:
        for b in backends:
            if b.name == REFERENCE or isinstance(b, PluginFailure):
                continue
            t0 = time.perf_counter()
            rs = run_case(case, b)
            results += rs
            status = (
                "FAIL" if any(r.passed is False for r in rs) else ("skip" if all(r.value is None for r in rs) else "ok")
            )
            print(f"  {case.name:<20} {b.name:<22} {status:<5} {time.perf_counter() - t0:6.1f}s", flush=True)

    print()
    print(format_table(results, backends))

    localizations = []
    failed = [r for r in results if r.passed is False]
    for case_name, backend_name in sorted({(r.case, r.backend) for r in failed if r.check != "plugin"}):
        case = next(c for c in cases if c.name == case_name)
        backend = next(b for b in backends if b.name == backend_name)
        ceiling = LOCALIZE["fp32" if backend.precision == "fp64" else backend.precision]
        try:
            idx, _ = batch(case)
            d = localize_backends(backend, NumpyBackend(np.float64), params_for(case), case.config, idx, ceiling)
            text = d.describe()
        except Exception as e:
            text = f"localizer could not run: {type(e).__name__}: {e}"
        print(f"\nlocalizer {backend_name} on {case_name}: {text}")
        localizations.append({"case": case_name, "backend": backend_name, "result": text})

    report = {
        "provenance": provenance(),  # git commit (+ dirty), versions, device, host, date: weights/provenance.py
        "environment": environment(),
        "reference": REFERENCE,
        "ceilings": CEILINGS,
        "cases": [
            {
                "name": c.name,
                "config": c.config.__dict__,
                "weights": c.label,
                "tokens": c.tokens,
                "B": c.B,
                "T": c.T,
                "checks": list(c.checks),
            }
            for c in cases
        ],
        "backends": [
            {
                "name": b.name,
                "precision": b.precision,
                "device": b.device,
                "notes": b.notes,
                "available": b.available()[0],
                "reason": b.available()[1],
                "origin": str(b.origin),
                "distribution": b.origin.distribution,  # None: built-in
                "version": b.origin.version,
                "entry_point": b.origin.entry_point,
            }
            for b in backends
        ],
        "results": [r.as_dict() for r in results],
        "localizations": localizations,
    }
    text = json.dumps(report, indent=1, default=float)
    atomic_write(args.json, lambda tmp: Path(tmp).write_text(text))
    print(f"\nJSON report: {args.json}")
    n_fail = len(failed)
    print(f"{sum(r.passed is True for r in results)} passed, {n_fail} failed")
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
