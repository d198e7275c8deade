"""`python -m conformance check GOLDEN CANDIDATE`: score any implementation's tensors against a golden file.

    python -m conformance check kit/tiny-B1-T7.golden.safetensors mine.safetensors
    python -m conformance check GOLDEN CANDIDATE --precision bf16 --json report.json
    python -m conformance check GOLDEN CANDIDATE --require logits,loss,grads

The candidate is a safetensors file written by any implementation in any language, holding whichever
golden tensors it produced, under the golden names (docs/golden-format.md), in float64, float32,
float16 or bf16 (token ids in any integer type). Each present tensor is scored by the suite's metrics
(conformance/checks.py) against the ceilings stored in the golden file, the float32 row unless
--precision bf16 (or the candidate's metadata says "precision": "bf16"):

    logits                  max|d| / max|ref|               check `logits`
    loss                    |d| / |ref|                     `loss`
    grad.<param>            ||d|| / ||ref||, max|d|/max|ref| `grad_l2`, `grad_max` (worst tensor)
    adamw.loss              worst step of |d| / |ref|       `adamw_loss`
    adamw.param.<param>     ||d|| / ||ref||, key biases out  `adamw_param_l2`, and of final - start:
                                                            `adamw_update_l2`
    generate.tokens[_kv_cache]  tokens that differ          `generate_mismatches`; and both present:
                                                            cached vs recomputed, `kv_cache`
    act.<activation>        the divergence localizer: the first activation, in forward order, that
                            parts from the reference (reported, not judged, as in conformance.report)

Required: `logits` (`adamw.loss` for a golden file without logits), or what --require lists; every
other golden tensor is checked when present. A missing required tensor, a wrong shape, a wrong dtype
class (floats where floats belong, integers for token ids), a candidate that ran on other tokens
(input.* differ) or a value over its ceiling fails: exit 1. Bad flags, a missing or unreadable file,
a file that is not a golden file of format 1: one line `error: ...`, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from conformance import checks, tensorfile
from conformance.golden import CANDIDATE_FORMAT, FORMAT, Golden, open_golden
from conformance.localize import OP_OF, Divergence, activation_order
from conformance.report import CHECK_ORDER, format_table
from conformance.suite import Result, without_key_bias
from conformance.tolerances import LOCALIZE
from weights import param_shapes
from weights.checkpoint import atomic_write
from weights.errors import ArgumentParser, UsageError, UserError, run_cli
from weights.provenance import provenance

# --require groups: each stands for the golden file's tensors of that kind.
GROUPS = {
    "logits": lambda n: n == "logits",
    "loss": lambda n: n == "loss",
    "grads": lambda n: n.startswith("grad."),
    "acts": lambda n: n.startswith("act."),
    "adamw": lambda n: n == "adamw.loss" or n.startswith("adamw.param."),
    "generate": lambda n: n == "generate.tokens",
    "kv_cache": lambda n: n == "generate.tokens_kv_cache",
    "all": lambda n: not n.startswith(("input.", "weight.", "adamw.step")),
}


def check_of(name: str) -> str:
    """The check (a column of the table) a golden tensor belongs to."""
    if name in ("logits", "loss"):
        return name
    for prefix, check in (
        ("grad.", "grad_l2"),
        ("act.", "activations"),
        ("adamw.loss", "adamw_loss"),
        ("adamw.param.", "adamw_param_l2"),
        ("adamw.step", "adamw_trajectory"),
        ("generate.", "generate_mismatches"),
        ("input.", "input"),
        ("weight.", "weights"),
    ):
        if name.startswith(prefix):
            return check
    return "other"


def layer_of(name: str) -> str:
    """'grad.h.1.mlp.c_fc.weight' -> ' (layer 1)'; '' for a tensor outside the blocks."""
    parts = name.split(".")
    for i, p in enumerate(parts[:-1]):
        if p == "h" and parts[i + 1].isdigit():
            return f" (layer {parts[i + 1]})"
    return ""


def required_names(golden: Golden, spec: str | None) -> list[str]:
    """The golden tensors the candidate must have: `spec` (groups or exact names, comma-separated) or the
    default (logits, or adamw.loss where the golden file has no logits)."""
    names = golden.names()
    if not spec:
        return ["logits"] if "logits" in golden else ["adamw.loss"]
    out: list[str] = []
    for item in spec.split(","):
        if item in GROUPS:
            hit = [n for n in names if GROUPS[item](n)]
            if not hit:
                raise UsageError(f"--require {item}: the golden file {golden.path.name} has no such tensors")
            out += hit
        elif item in golden:
            out.append(item)
        else:
            raise UsageError(
                f"--require {item}: neither a group ({', '.join(GROUPS)}) nor a tensor of {golden.path.name}"
            )
    return list(dict.fromkeys(out))


def localize_present(acts: dict, ref_acts: dict, config, threshold: float) -> Divergence | None:
    """conformance.localize.localize over the activations the candidate has (it may have only some):
    the first of them, in forward order, whose max|d| / max|ref| exceeds `threshold`."""
    order = [n for n in activation_order(config) if n in acts and n in ref_acts]
    if not order:
        return None
    errors = [(n, checks.max_rel(acts[n], ref_acts[n])) for n in order]
    first = next((n for n, e in errors if e > threshold), None)
    op = OP_OF[first.split(".")[-1]] if first else None
    if first and first.startswith("h."):
        op = f"layer {first.split('.')[1]}: {op}"
    return Divergence(first, op, errors, threshold)


class Checker:
    """Scores one candidate file against one golden file; `results` are conformance.suite.Results."""

    def __init__(self, golden: Golden, candidate: tensorfile.TensorFile, precision: str, required: list[str]):
        self.golden, self.cand, self.precision = golden, candidate, precision
        self.name = candidate.metadata.get("implementation") or candidate.path.name.split(".")[0]
        self.ceil = {**golden.ceilings[precision]}
        self.required = required
        self.results: list[Result] = []
        self.over: list[tuple[str, str, float, float]] = []  # (check, tensor, value, ceiling) per tensor
        self.divergence: Divergence | None = None
        self.trajectory: list[dict] = []
        self.valid: dict[str, np.ndarray] = {}  # candidate tensors with the golden shape and dtype class

    # ----------------------------------------------------------------- results
    def add(self, check, value, detail="", **extra):
        c = self.ceil.get(check)
        passed = None if c is None else bool(value <= c)
        self.results.append(Result(self.golden.case, self.name, check, float(value), c, passed, detail, 0.0, extra))

    def fail(self, check, detail):
        self.results.append(Result(self.golden.case, self.name, check, None, None, False, f"error: {detail}"))

    # ----------------------------------------------------------------- structure
    def structure(self) -> None:
        g, cand = self.golden, self.cand
        for name in self.required:
            if name not in cand:
                self.fail(check_of(name), f"required tensor {name!r} is missing from the candidate")
        for name in cand.names():
            if name not in g or name.startswith("weight."):
                continue
            want, got = g.file.entries[name], cand.entries[name]
            if got.shape != want.shape:
                self.fail(check_of(name), f"tensor {name!r} has shape {got.shape}, expected {want.shape}")
                continue
            kind = tensorfile.INT_DTYPES if want.dtype in tensorfile.INT_DTYPES else tensorfile.FLOAT_DTYPES
            if got.dtype not in kind:
                what = "an integer type" if kind is tensorfile.INT_DTYPES else "a float type (F64, F32, F16, BF16)"
                self.fail(check_of(name), f"tensor {name!r} has dtype {got.dtype}, expected {what}")
                continue
            self.valid[name] = cand.array(name)
        for name in ("input.idx", "input.targets"):
            if name in self.valid:
                differ = int((np.asarray(self.valid[name]) != g.array(name)).sum())
                if differ:
                    self.fail("input", f"{name} differs from the golden file's at {differ} position(s)")

    # ----------------------------------------------------------------- scores
    def score(self) -> None:
        g, v = self.golden, self.valid
        if "logits" in v:
            self.add("logits", checks.max_rel(v["logits"], g.array("logits")), "logits")
        if "loss" in v:
            x, ref = float(v["loss"]), float(g.array("loss"))
            self.add("loss", checks.scalar_rel(x, ref), f"loss {x:.6f} vs {ref:.6f}")
        self._per_tensor("grad.", [("grad_l2", checks.l2_rel), ("grad_max", checks.max_rel)])
        if "adamw.loss" in v:
            x, ref = np.asarray(v["adamw.loss"], np.float64), g.array("adamw.loss")
            rel = [checks.scalar_rel(a, b) for a, b in zip(x, ref, strict=True)]
            k = int(np.argmax(rel))
            self.add("adamw_loss", rel[k], f"worst at step {k + 1} of {len(rel)}", losses=x.tolist())
        self._adamw_params()
        for name in ("generate.tokens", "generate.tokens_kv_cache"):
            if name in v:
                mism = int((np.asarray(v[name]) != g.array(name)).sum())
                self.add("generate_mismatches", mism, name, tokens=np.asarray(v[name]).tolist())
        if "generate.tokens" in v and "generate.tokens_kv_cache" in v:
            mism = int((np.asarray(v["generate.tokens"]) != np.asarray(v["generate.tokens_kv_cache"])).sum())
            self.add("kv_cache", mism, "the candidate's own tokens with a KV cache vs recomputed")
        acts = {n[4:]: v[n] for n in v if n.startswith("act.")}
        ref_acts = {n: g.array(f"act.{n}") for n in acts}
        self.divergence = localize_present(acts, ref_acts, g.config, LOCALIZE[self.precision])

    def _per_tensor(self, prefix: str, metrics) -> None:
        g = self.golden
        names = [f"{prefix}{n}" for n in param_shapes(g.config) if f"{prefix}{n}" in self.valid]
        if not names:
            return
        for check, metric in metrics:
            per = {n: metric(self.valid[n], g.array(n)) for n in names}
            self._worst(check, per)

    def _worst(self, check: str, per: dict[str, float], note: str = "") -> None:
        """One result for `check`: its worst tensor; every tensor over the ceiling goes to self.over."""
        worst = max(per, key=per.get)
        prefix = worst.split(".", 1)[0] + "." + ("param." if worst.startswith("adamw.param.") else "")
        of = sum(1 for n in self.golden.names() if n.startswith(prefix))
        detail = f"worst tensor {worst}{layer_of(worst)}{note}; {len(per)} of {of} tensors scored"
        self.add(check, per[worst], detail, per_tensor=per)
        c = self.ceil.get(check)
        if c is not None:
            self.over += [(check, n, x, c) for n, x in per.items() if not x <= c]

    def _adamw_params(self) -> None:
        g, v = self.golden, self.valid
        config = g.config
        names = [n for n in param_shapes(config) if f"adamw.param.{n}" in v]
        if not names:
            return
        final = without_key_bias({n: v[f"adamw.param.{n}"] for n in names}, config)
        ref = without_key_bias({n: g.array(f"adamw.param.{n}") for n in names}, config)
        self._worst("adamw_param_l2", {f"adamw.param.{n}": checks.l2_rel(final[n], ref[n]) for n in names},
                    " (key biases excluded)")  # fmt: skip
        start = g.params()
        if start is None:
            self.results.append(
                Result(
                    g.case,
                    self.name,
                    "adamw_update_l2",
                    None,
                    None,
                    None,
                    "skipped: the golden file carries no start weights",
                )  # fmt: skip
            )
        else:
            start = without_key_bias({n: start[n] for n in names}, config)
            moved, ref_moved = checks.moved(final, start), checks.moved(ref, start)
            per = {f"adamw.param.{n}": checks.l2_rel(moved[n], ref_moved[n]) for n in names}
            self._worst("adamw_update_l2", per, " (update: final - start, key biases excluded)")
        # the trajectory, where both files have the steps: reported, not judged (the ceilings are for the last)
        steps = sorted({int(n.split(".")[1][4:]) for n in v if n.startswith("adamw.step")})
        for k in steps:
            per = {n: checks.l2_rel(v[n], g.array(n)) for n in v if n.startswith(f"adamw.step{k}.param.")}
            worst = max(per, key=per.get)
            self.trajectory.append({"step": k, "worst_tensor": worst, "l2_rel": per[worst]})

    def run(self) -> None:
        self.structure()
        self.score()
        if not any(r.value is not None for r in self.results):
            self.fail("all", "nothing to score: the candidate holds none of the golden file's tensors")

    # ----------------------------------------------------------------- reporting
    def coverage(self) -> dict:
        g, cand = self.golden, self.cand
        groups = {"grad.": "grad.*", "act.": "act.*", "adamw.param.": "adamw.param.*", "adamw.step": "adamw.step*"}
        present = {}
        for prefix, label in groups.items():
            total = [n for n in g.names() if n.startswith(prefix)]
            if total:
                present[label] = f"{sum(n in self.valid for n in total)} of {len(total)}"
        for n in ("logits", "loss", "adamw.loss", "generate.tokens", "generate.tokens_kv_cache"):
            if n in g:
                present[n] = "yes" if n in self.valid else "no"
        ignored = [n for n in cand.names() if n not in g]
        return {"present": present, "ignored": ignored}

    def failed(self) -> list[Result]:
        return [r for r in self.results if r.passed is False]

    def text(self) -> str:
        cov = self.coverage()
        lines = [
            f"golden    {self.golden.path} (case {self.golden.case}, format {FORMAT} 1)",
            f"candidate {self.cand.path} ({self.name}, ceilings: {self.precision} row)",
            "present:  " + ", ".join(f"{k} {v}" for k, v in cov["present"].items()),
        ]
        if cov["ignored"]:
            shown = ", ".join(cov["ignored"][:8]) + (" ..." if len(cov["ignored"]) > 8 else "")
            lines.append(f"ignored:  {len(cov['ignored'])} tensor(s) the golden file does not have: {shown}")
        lines += ["", format_table(self.results, [SimpleNamespace(name=self.name)])]
        if self.over:
            lines += ["", "over the ceiling:"]
            for check, name, x, c in self.over:
                lines.append(f"  {check:<16} {name}{layer_of(name)}: {x:.2e} > {c:g}")
        if self.divergence is not None:
            lines += ["", f"localizer: {self.divergence.describe()}"]
        for t in self.trajectory:
            if t is self.trajectory[0]:
                lines += ["", "adamw trajectory (reported; the ceilings judge the last step):"]
            lines.append(f"  step {t['step']:>2}: worst {t['worst_tensor']} {t['l2_rel']:.2e}")
        return "\n".join(lines)

    def report(self) -> dict:
        g = self.golden
        return {
            "provenance": provenance(),
            "golden": {
                "path": str(g.path),
                "case": g.case,
                "format_version": g.file.metadata["format_version"],
                "generated_by": g.provenance.get("git"),
                "weights": g.weights,
            },  # fmt: skip
            "candidate": {"path": str(self.cand.path), "implementation": self.name, "metadata": self.cand.metadata},
            "precision": self.precision,
            "ceilings": self.ceil,
            "required": self.required,
            "coverage": self.coverage(),
            "results": [r.as_dict() for r in self.results],
            "over_ceiling": [{"check": c, "tensor": n, "value": x, "ceiling": m} for c, n, x, m in self.over],
            "localization": None
            if self.divergence is None
            else {
                "first": self.divergence.name,
                "op": self.divergence.op,
                "text": self.divergence.describe(),
                "errors": self.divergence.errors,
            },  # fmt: skip
            "adamw_trajectory": self.trajectory,
            "verdict": "fail" if self.failed() else "pass",
        }


def open_candidate(path: str | Path, golden: Golden) -> tensorfile.TensorFile:
    cand = tensorfile.TensorFile(path)
    fmt = cand.metadata.get("format")
    if fmt not in (None, CANDIDATE_FORMAT, FORMAT):
        raise UserError(f"{path}: metadata 'format' is {fmt!r}; a candidate says {CANDIDATE_FORMAT!r} or nothing")
    case = cand.metadata.get("case")
    if case is not None and case != golden.case:
        raise UserError(f"{path}: a candidate for case {case!r}, but {golden.path.name} is case {golden.case!r}")
    return cand


def main(argv=None) -> int:
    """The command line; bad flags or files are one line (`error: ...`) and exit status 2."""
    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    ap = ArgumentParser(
        prog="python -m conformance check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("golden", help="a golden file (python -m conformance export)")
    ap.add_argument("candidate", help="a safetensors file of the candidate's tensors, golden names")
    ap.add_argument("--precision", choices=("fp32", "bf16"), help="ceiling row (default: the candidate's, else fp32)")
    ap.add_argument("--json", default="conformance-check.json", help="where to write the JSON report")
    ap.add_argument("--require", default="", help=f"comma-separated tensors or groups ({', '.join(GROUPS)})")
    args = ap.parse_args(argv)
    json_dir = Path(args.json).resolve().parent
    if not json_dir.is_dir():
        raise UsageError(f"--json {args.json}: folder {json_dir} does not exist")
    golden = open_golden(args.golden)
    cand = open_candidate(args.candidate, golden)
    precision = args.precision or cand.metadata.get("precision", "fp32")
    precision = "fp32" if precision == "fp64" else precision  # float64 is held to the float32 row, as in the suite
    if precision not in ("fp32", "bf16"):
        raise UserError(f"{args.candidate}: metadata 'precision' is {precision!r}; expected fp32, bf16 (or fp64)")
    missing_rows = [c for c in CHECK_ORDER if c not in golden.ceilings[precision]]
    if missing_rows:
        raise UserError(f"{args.golden}: metadata 'ceilings' has no {precision} value for {missing_rows}")
    checker = Checker(golden, cand, precision, required_names(golden, args.require))
    checker.run()
    print(checker.text())
    report = checker.report()
    atomic_write(Path(args.json), lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1, default=float)))
    failed = checker.failed()
    print(f"\nJSON report: {args.json}")
    print(f"{sum(r.passed is True for r in checker.results)} passed, {len(failed)} failed: {report['verdict'].upper()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
