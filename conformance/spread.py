"""`python -m conformance.spread`: the measurements that set every ceiling, and the rule that sets them.

    python -m conformance.spread --out docs/results/ceiling-spread-cpu.json          # measure (CPU backends)
    python -m conformance.spread --full --seeds 3 --out ceiling-spread-gpu.json      # + 124M (GPU machine)
    python -m conformance.spread --derive                                            # the rule's ceilings
    python -m conformance.spread --check                                             # exit 1 if tolerances.py differs

Measure: every conformance case (conformance/cases.py) on every backend that can run here, for
several seeds: seed s draws the synthetic weights with `synthetic(config, seed=s)` and the tokens
with another generator (seed 0 is exactly the suite's own case), so each check sees
len(seeds) x cases x devices independent float32 rounding patterns. The JSON holds every value
(case, seed, backend, check), the worst per (precision, check), and the provenance record.

The rule (RULE below; docs/conformance.md says the same): a ceiling is the worst value measured for
that check and precision, over every seed, shape and device in SOURCES, times F = 5, rounded up to
the next value of the 1-2-5 series. A relative ceiling the rule puts above 1 is no check (it would
pass a backend that shares no digit with the reference), so that check is reported, not judged.

Why F = 5. The worst of N seeds is itself a sample: an unseen seed, shape or device can exceed it,
and float32 errors of small, cancelling reductions (a LayerNorm gradient summed over 4 tokens of a
trained model) are heavy-tailed. The margin needed is measured by leave-one-out (`leave_one_out`
below): within one run, how far the worst of one seed exceeds the worst of all its other seeds.
F must exceed the largest such ratio in the committed measurements (tests/conformance/
test_ceilings.py checks it); --derive prints it. Measured: 1.5 over the 8 seeds of the CPU
backends' run (ceiling-spread-cpu.json), 2.9 over the 3 seeds of the Numba simulator's run
(ceiling-spread-cpu-numba-sim.json: grad_max of tiny-trained, seed 2 against seeds 0 and 1).
F = 5 is the smallest 1-2-5 value above 2.9; the 1-2-5 rounding then adds between 1x and 2.5x more.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from conformance import tolerances
from conformance.backends import registry
from conformance.cases import CASES
from conformance.suite import REFERENCE, _reference_run, run_case
from weights.provenance import PROJECT_ROOT, provenance

F = 5
RULE = (
    "ceiling = the worst value measured for the check and precision over every seed, shape and device "
    f"in the spread files, x F = {F}, rounded up to the next 1-2-5 value; a relative ceiling above 1 "
    "is reported, not judged"
)

RESULTS = PROJECT_ROOT / "docs" / "results"
# Every measurement the rule reads: (file, backends left out of it and why). The H100 conformance
# reports (conformance.report's JSON, seed 0 only) are the GPU devices' measurements until a
# ceiling-spread-gpu.json exists; their numba rows predate the split-K fix of the head's backward
# matmul and are superseded by the numba-only re-run after it.
SOURCES: list[tuple[str, dict[str, str]]] = [
    ("ceiling-spread-cpu.json", {}),
    ("ceiling-spread-cpu-numba-sim.json", {}),
    ("ceiling-spread-cpu-variants.json", {}),  # the variants' cases (docs/variants.md), 8 seeds
    ("ceiling-spread-cpu-numba-sim-variants.json", {}),  # the same on the Numba simulator, 3 seeds
    ("ceiling-spread-cpu-25-heads.json", {}),  # GPT-2 XL's odd head count on the tiny scale, 4 seeds
    ("ceiling-spread-gpu.json", {}),
    # ceiling-spread-gpu-124m.json (H200, 2 seeds) is measured and committed but not read by the rule:
    # at seed 1 of 124m-adamw every float32 backend, torch included, ends 10 AdamW steps 7e-3..1.1e-2
    # (adamw_param_l2) away from the float64 trajectory on h.0.attn.c_attn.weight, while its logits,
    # loss and gradients sit where every other run's do. Read as spread, it would put the AdamW
    # ceilings at 1e-1 / 5e-1, where the planted optimizer bugs of scripts/mutation.py pass. It is
    # a conditioning question of the 124M AdamW comparison (docs/conformance.md, "Open: AdamW at
    # 124M, seed 1"), not a spread between correct implementations; until the comparison handles
    # it, the file is evidence, not an input.
    ("conformance-h100-small.json", {"numba-cuda-f32": "measured before the split-K fix"}),
    ("conformance-h100-124m.json", {"numba-cuda-f32": "measured before the split-K fix"}),
    ("conformance-h100-numba-splitk-small.json", {}),
    ("conformance-h100-numba-splitk-124m.json", {}),
    ("conformance-cpu-adamw-update.json", {}),  # CPU backends, AdamW cases incl. 124m-adamw, seed 0
]

CHECKS = list(tolerances.FP32)
# Counts (tokens that differ) are not relative errors: the "above 1" clause does not apply to them.
COUNTS = ("generate_mismatches", "kv_cache")


# ----------------------------------------------------------------------------- the rule
def round_up_125(x: float) -> float:
    """The smallest value of the series ..., 1e-6, 2e-6, 5e-6, 1e-5, ... that is >= x (0 stays 0)."""
    if x <= 0:
        return 0
    decade = 10.0 ** math.floor(math.log10(x))
    for m in (1, 2, 5, 10):
        if m * decade >= x * (1 - 1e-12):
            return float(f"{m * decade:.0e}")
    raise AssertionError(x)


def apply_rule(worst: float, check: str):
    """The ceiling for a check whose worst measured value is `worst` (None: reported, not judged)."""
    if check in COUNTS:
        return int(math.ceil(worst * F))
    c = round_up_125(worst * F)
    return None if c > 1 else c


def precision_of(backend: str) -> str:
    return "bf16" if "bf16" in backend else "fp32"


def load_measurements(results_dir: Path = RESULTS) -> list[dict]:
    """Every (source, case, seed, backend, check, value) the rule reads, from the files in SOURCES that exist."""
    rows = []
    for name, excluded in SOURCES:
        path = results_dir / name
        if not path.exists():
            continue
        for r in json.loads(path.read_text())["results"]:
            if r["backend"] in excluded or r["backend"] == REFERENCE or r.get("value") is None:
                continue
            if r["check"] not in CHECKS:
                continue
            rows.append({**r, "source": name, "seed": r.get("seed", 0)})
    return rows


def worst_per_check(rows: list[dict]) -> dict[str, dict[str, dict]]:
    """{precision: {check: the row with the largest value}}."""
    out: dict[str, dict[str, dict]] = {}
    for r in rows:
        prec = out.setdefault(precision_of(r["backend"]), {})
        if r["check"] not in prec or r["value"] > prec[r["check"]]["value"]:
            prec[r["check"]] = r
    return out


def leave_one_out(rows: list[dict]) -> dict:
    """How far the worst of one seed exceeds the worst of all the other seeds, per (source, precision, check).

    This is what F must cover: had that seed not been measured, its cases would have met a ceiling set
    from the rest. Within one source (one device, one run); zero values (token counts) say nothing."""
    groups: dict[tuple, dict[int, float]] = {}
    for r in rows:
        by_seed = groups.setdefault((r["source"], precision_of(r["backend"]), r["check"]), {})
        by_seed[r["seed"]] = max(by_seed.get(r["seed"], 0.0), r["value"])
    best = {"ratio": 0.0, "where": None, "groups": 0}
    for (source, prec, check), by_seed in groups.items():
        if len(by_seed) < 2:
            continue
        best["groups"] += 1
        for seed, v in by_seed.items():
            rest = max(x for s, x in by_seed.items() if s != seed)
            if v > 0 and rest > 0 and v / rest > best["ratio"]:
                best.update(ratio=v / rest, where={"source": source, "precision": prec, "check": check, "seed": seed})
    return best


def derive(results_dir: Path = RESULTS) -> dict:
    """The rule applied to every measurement: {precision: {check: {worst, where, ceiling}}}, leave-one-out."""
    rows = load_measurements(results_dir)
    worst = worst_per_check(rows)
    table = {}
    for prec, checks in worst.items():
        table[prec] = {}
        for check in CHECKS:
            r = checks.get(check)
            if r is None:
                table[prec][check] = {"worst": None, "where": None, "ceiling": None}
                continue
            where = f"{r['backend']} on {r['case']} seed {r['seed']} ({r['source']})"
            table[prec][check] = {"worst": r["value"], "where": where, "ceiling": apply_rule(r["value"], check)}
    return {
        "rule": RULE,
        "F": F,
        "sources": [n for n, _ in SOURCES if (results_dir / n).exists()],
        "measurements": len(rows),
        "leave_one_out": leave_one_out(rows),
        "ceilings": table,
    }


def derivation_markdown(derived: dict) -> str:
    """The derivation as docs/conformance.md shows it: per check, worst value (where) and ceiling per precision."""

    def cell(d):
        if d["worst"] is None:
            return "not measured", "reported"
        ceiling = "> 1: reported" if d["ceiling"] is None else f"{d['ceiling']:g}"
        return f"{d['worst']:.2g} ({d['where']})", ceiling

    lines = [
        f"| check | float32: worst measured (where) | × {F} → ceiling "
        f"| bf16: worst measured (where) | × {F} → ceiling |",
        "|---|---|---|---|---|",
    ]
    for check in CHECKS:
        f32 = cell(derived["ceilings"].get("fp32", {}).get(check, {"worst": None}))
        b16 = cell(derived["ceilings"].get("bf16", {}).get(check, {"worst": None}))
        lines.append(f"| {check} | {f32[0]} | {f32[1]} | {b16[0]} | {b16[1]} |")
    return "\n".join(lines)


def differences(derived: dict) -> list[str]:
    """Where conformance/tolerances.py says something else than the rule."""
    out = []
    for prec, checks in derived["ceilings"].items():
        for check, d in checks.items():
            have = tolerances.CEILINGS[prec][check]
            if d["worst"] is None:
                continue
            if have != d["ceiling"]:
                out.append(
                    f"{prec} {check}: tolerances.py {have}, rule {d['ceiling']} (worst {d['worst']:.2e}, {d['where']})"
                )
    return out


def markdown_worst(paths: list[Path]) -> str:
    """Worst value per backend and check over every case and seed of the given spread files (a docs table)."""
    rows = [r for p in paths for r in json.loads(Path(p).read_text())["results"]]
    rows = [r for r in rows if r.get("value") is not None and r["check"] in CHECKS]
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    checks = [c for c in CHECKS if any(r["check"] == c for r in rows)]
    lines = ["| backend | " + " | ".join(checks) + " |", "|---" * (len(checks) + 1) + "|"]
    for b in backends:
        cells = []
        for c in checks:
            vals = [r["value"] for r in rows if r["backend"] == b and r["check"] == c]
            cells.append("–" if not vals else (f"{int(max(vals))}" if c in COUNTS else f"{max(vals):.1e}"))
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the measurement
def measure(cases, backends, seeds, progress=print, case_done=lambda rows: None) -> list[dict]:
    """run_case for every case x seed x backend; case_done(rows so far) after each case (to save them)."""
    rows = []
    for case in cases:
        for seed in seeds:
            for b in backends:
                t0 = time.perf_counter()
                rs = run_case(case, b, seed)
                for r in rs:
                    d = r.as_dict()
                    d.pop("extra")  # per-tensor values and token lists: the conformance report holds those
                    rows.append({**d, "seed": seed})
                bad = [r for r in rs if r.passed is False]
                status = "skip" if all(r.value is None for r in rs) else ("over" if bad else "ok")
                progress(f"  {case.name:<20} seed {seed}  {b.name:<22} {status:<4} {time.perf_counter() - t0:6.1f}s")
            _reference_run.cache_clear()  # the float64 answers of one (case, seed) are not needed again
        case_done(rows)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="ceiling-spread.json", help="where to write the measurements")
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1 per case (seed 0 = the suite's case)")
    ap.add_argument("--full", action="store_true", help="also the full 124M-shape cases")
    ap.add_argument("--only-full", action="store_true", help="only the full 124M-shape cases")
    ap.add_argument("--full-seeds", type=int, default=None, help="seeds for the 124M cases (default: --seeds)")
    ap.add_argument("--backends", default="", help="comma-separated backend names (default: all that can run)")
    ap.add_argument("--cases", default="", help="comma-separated case names")
    ap.add_argument("--derive", action="store_true", help="print the ceilings the rule gives from docs/results/")
    ap.add_argument("--check", action="store_true", help="exit 1 if conformance/tolerances.py differs from the rule")
    ap.add_argument("--markdown", nargs="+", metavar="JSON", help="print the worst values of spread files as a table")
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown_worst(args.markdown))
        return 0

    if args.derive or args.check:
        derived = derive()
        if args.derive:
            print(json.dumps(derived, indent=1))
            print(derivation_markdown(derived))
        diffs = differences(derived)
        for d in diffs:
            print(f"differs: {d}")
        if args.check:
            print("tolerances.py follows the rule" if not diffs else f"{len(diffs)} ceiling(s) differ from the rule")
        return 1 if (args.check and diffs) else 0

    if args.seeds < 1:
        ap.error(f"--seeds must be >= 1, got {args.seeds}")
    # the project's own backends set the ceilings; a plugin's (an installed package's) only when named
    backends = [b for b in registry() if b.name != REFERENCE and (b.origin.builtin or args.backends)]
    if args.backends:
        wanted = set(args.backends.split(","))
        unknown = wanted - {b.name for b in backends}
        if unknown:
            ap.error(f"unknown backend(s) {sorted(unknown)}")
        backends = [b for b in backends if b.name in wanted]
    cases = [c for c in CASES if (c.full and (args.full or args.only_full)) or (not c.full and not args.only_full)]
    if args.cases:
        wanted = set(args.cases.split(","))
        cases = [c for c in CASES if c.name in wanted]
    small = [c for c in cases if not c.full]
    full = [c for c in cases if c.full]
    command = "python -m conformance.spread " + " ".join(argv if argv is not None else sys.argv[1:])
    record = provenance()

    def write(rows: list[dict]) -> dict:
        """The results file, rewritten after every case: a run cut short keeps what it measured."""
        measured = [r for r in rows if r["value"] is not None and r["check"] in CHECKS]
        doc = {
            "what": "every conformance check vs the float64 reference over several seeds: what sets the ceilings",
            "measured_by": command,
            "provenance": record,
            "rule": RULE,
            "ceilings_when_measured": tolerances.CEILINGS,
            "worst": {
                p: {c: {k: r[k] for k in ("value", "backend", "case", "seed")} for c, r in checks.items()}
                for p, checks in worst_per_check(measured).items()
            },
            "leave_one_out": leave_one_out([{**r, "source": "this run"} for r in measured]),
            "results": rows,
        }
        Path(args.out).write_text(json.dumps(doc, indent=1, default=float) + "\n")
        return doc

    rows = measure(small, backends, range(args.seeds), case_done=write)
    rows += measure(full, backends, range(args.full_seeds or args.seeds), case_done=lambda more: write(rows + more))
    doc = write(rows)
    measured = [r for r in rows if r["value"] is not None and r["check"] in CHECKS]
    print(f"\n{len(measured)} values; worst per check:")
    for p, checks in doc["worst"].items():
        for c, w in checks.items():
            print(f"  {p:<5} {c:<20} {w['value']:.2e}  ({w['backend']}, {w['case']}, seed {w['seed']})")
    print(f"leave-one-out: {doc['leave_one_out']}")
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
