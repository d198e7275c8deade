"""Turn pytest-benchmark JSON into a markdown report and PNG charts.

    python -m benchmarks.report results.json [more.json ...] --out docs/results/ [--prefix bench-cpu] [--title ...]

writes, under --out:

    <prefix>.md             date, machine, devices; on a GPU run the goals (each a written rule,
                            met / NOT met; --check-goals exits 3 when one is not met) and the matmul
                            shapes (TFLOP/s, % of cuBLAS float32, error vs float64); whole-model
                            table (ms, tokens/s, TFLOP/s, MFU,
                            ratio to torch, first call); per-op tables (backends side by side, each
                            with its ratio to torch on the same device); attention scaling (time and
                            peak memory per T); anything else (e.g. weight building) as plain rows
    <prefix>.json           the input (several files: their benchmarks merged), so the numbers travel with it
    <prefix>-model.png      tokens/s per backend, per task and size
    <prefix>-ops-<size>.png per-op median time per backend (log scale), forward and backward
    <prefix>-attention.png  attention time and peak memory against T (log-log), naive vs tiled

Every time is the median of the timed rounds (robust to the odd slow round), or with
--stat min their minimum (the better estimate on a machine that other jobs share: contention
only ever adds time); the header says which. The ratio to torch is backend time / torch
float32's time on the same device (>1: slower than torch).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections import defaultdict
from pathlib import Path

from benchmarks.backends import BACKENDS, BASELINES
from benchmarks.cases import MODEL_TASKS, OPS
from benchmarks.throughput import derived
from weights.errors import ArgumentParser, UserError, run_cli

BACKEND_ORDER = [b.name for b in BACKENDS]
SIZE_ORDER = ["tiny", "124m-cpu", "124m-gpu"]


@dataclasses.dataclass
class Result:
    """One benchmark of the JSON, with the fields the report uses (None where not recorded)."""

    group: str
    name: str
    time_s: float  # the median (or --stat min) of the timed rounds
    stddev_s: float
    rounds: int
    extra: dict

    def __getattr__(self, key):  # extra_info fields as attributes: r.backend, r.op, r.T ...
        if key.startswith("__"):
            raise AttributeError(key)
        return self.__dict__["extra"].get(key)


STATS = ("median", "min")
STAT = {"name": "median"}  # set by write_report; the word the tables use


def load(paths, stat: str = "median") -> tuple[dict, list[Result]]:
    """Read one or more pytest-benchmark JSON files: (the merged JSON, its timed results)."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    data = json.loads(Path(paths[0]).read_text())
    data.setdefault("benchmarks", [])
    for extra in paths[1:]:  # machine, date and commit from the first file; benchmarks from all
        data["benchmarks"] += json.loads(Path(extra).read_text()).get("benchmarks", [])
    results = []
    for b in data.get("benchmarks", []):
        stats = b.get("stats") or {}
        if "median" not in stats:
            continue  # run with --benchmark-disable: nothing was timed
        results.append(Result(b.get("group") or "", b["name"], stats[stat], stats.get("stddev", 0.0),
                              stats.get("rounds", 0), b.get("extra_info") or {}))  # fmt: skip
    return data, results


# ----------------------------------------------------------------------------- formatting
def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def fmt_num(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "–"
    if x >= 1e6:
        return f"{x / 1e6:.{digits}g} M"
    if x >= 1e3:
        return f"{x / 1e3:.{digits}g} k"
    return f"{x:.{digits}g}"


def fmt_ratio(r: float | None) -> str:
    return "–" if r is None else f"{r:.2f}×"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "–"
    return f"{n / 2**20:.3g} MiB"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out + [""]


def ordered(names, order):
    return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))


# ----------------------------------------------------------------------------- derived numbers
def ratio_to_torch(r: Result, peers: list[Result]) -> float | None:
    """r's time / the time of torch float32 on r's device among `peers` (same op, size, ...)."""
    base = BASELINES.get(r.device)
    for p in peers:
        if p.backend == base and p.time_s > 0:
            return r.time_s / p.time_s
    return None


def model_rows(results: list[Result]) -> dict[tuple[str, str], list[Result]]:
    out = defaultdict(list)
    for r in results:
        if r.kind == "model":
            out[(r.size, r.task)].append(r)
    return out


# ----------------------------------------------------------------------------- markdown
def machine_lines(data: dict, results: list[Result]) -> list[str]:
    m = data.get("machine_info", {})
    cpu = m.get("cpu", {}) or {}
    gpus = sorted({r.device_name for r in results if r.device == "cuda" and r.device_name})
    lines = [
        f"- Date: {data.get('datetime', '?')}",
        f"- CPU: {cpu.get('brand_raw', m.get('processor', '?'))}, {cpu.get('count', '?')} logical cores"
        f" ({m.get('node', '?')}, {m.get('system', '?')} {m.get('release', '')})",
        f"- GPU: {', '.join(gpus) if gpus else 'none used'}",
        f"- Python {m.get('python_version', '?')}",
    ]
    versions = m.get("gpt2_versions")
    if versions:
        lines.append("- " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if m.get("torch_float32_matmul_precision"):
        lines.append(f"- torch float32 matmul precision: {m['torch_float32_matmul_precision']} (highest = no TF32)")
    threads = m.get("threads")
    if threads:
        lines.append("- Threads: " + ", ".join(f"{k}={v}" for k, v in threads.items()))
    load = m.get("load_average")
    if load:
        lines.append(f"- Load average (1, 5, 15 min) when the run started: {', '.join(f'{x:.2f}' for x in load)}")
    # weights.provenance's record (benchmarks/conftest.py) knows the commit a copied tree came from
    # (GPT2_GIT_COMMIT); pytest-benchmark's own commit_info reads whatever .git the copy carries.
    git = (m.get("provenance") or {}).get("git") or {}
    commit = data.get("commit_info") or {}
    if git.get("commit"):
        commit = {"id": git["commit"], "dirty": git.get("dirty")}
    if commit.get("id"):
        dirty = " (with uncommitted changes)" if commit.get("dirty") else ""
        lines.append(f"- Commit {commit['id'][:10]}{dirty}")
    return lines + [""]


def model_section(results: list[Result]) -> list[str]:
    groups = model_rows(results)
    if not groups:
        return []
    out = [
        "## Whole model",
        "",
        f"{STAT['name'].capitalize()} time per call; tokens/s = B·T / time; TFLOP/s from llm.c's count (training "
        "6N + 6LCT FLOPs per token, forward one third of it); MFU against the dense peak of the "
        "device for the dtype the math runs in (GPU only: see docs/benchmarks.md); "
        "× torch = time / torch float32's time on the same device; first call includes "
        "JIT compilation (Numba) or library initialisation (torch).",
        "",
    ]
    for size in ordered({s for s, _ in groups}, SIZE_ORDER):
        out += [f"### {size}", ""]
        rows = []
        for task in ordered({t for s, t in groups if s == size}, list(MODEL_TASKS)):
            peers = groups[(size, task)]
            for r in sorted(peers, key=lambda r: ordered([x.backend for x in peers], BACKEND_ORDER).index(r.backend)):
                d = derived(r.time_s, r.tokens, r.flops, r.peak_tflops)
                mfu = "–" if d["mfu"] is None else f"{100 * d['mfu']:.1f}%"
                rows.append([task, r.backend, fmt_time(r.time_s), fmt_num(d["tokens_per_s"]),
                             fmt_num(d["tflops"]), mfu, fmt_ratio(ratio_to_torch(r, peers)),
                             fmt_time(r.first_call_s)])  # fmt: skip
        out += table(["task", "backend", STAT["name"], "tokens/s", "TFLOP/s", "MFU", "× torch", "first call"], rows)
    return out


def op_section(results: list[Result]) -> list[str]:
    ops = [r for r in results if r.kind == "op"]
    if not ops:
        return []
    out = [
        "## Per op",
        "",
        f"{STAT['name'].capitalize()} time per call, and in brackets × torch (time / torch float32's "
        "time on the same device). "
        "Shapes are the op's inside GPT-2 at that size (benchmarks/cases.py).",
        "",
    ]
    for size in ordered({r.size for r in ops}, SIZE_ORDER):
        for direction in ("forward", "backward"):
            sel = [r for r in ops if r.size == size and r.direction == direction]
            if not sel:
                continue
            backends = ordered({r.backend for r in sel}, BACKEND_ORDER)
            out += [f"### {size}, {direction}", ""]
            rows = []
            for op in ordered({r.op for r in sel}, list(OPS)):
                peers = [r for r in sel if r.op == op]
                by_backend = {r.backend: r for r in peers}
                cells = []
                for b in backends:
                    r = by_backend.get(b)
                    cells.append("–" if r is None else f"{fmt_time(r.time_s)} ({fmt_ratio(ratio_to_torch(r, peers))})")
                rows.append([op, *cells])
            out += table(["op", *backends], rows)
            if any(r.device_time_s for r in sel):
                out += [f"Device time (CUDA graph replays, no host launch cost; × torch's device time), {size}, "
                        f"{direction}:", ""]  # fmt: skip
                rows = []
                for op in ordered({r.op for r in sel}, list(OPS)):
                    by_backend = {r.backend: r for r in sel if r.op == op}
                    base = by_backend.get(BASELINES.get("cuda"))
                    cells = []
                    for b in backends:
                        r = by_backend.get(b)
                        if r is None or not r.device_time_s:
                            cells.append("–")
                            continue
                        rel = f" ({r.device_time_s / base.device_time_s:.2f}×)" if base and base.device_time_s else ""
                        cells.append(fmt_time(r.device_time_s) + rel)
                    rows.append([op, *cells])
                out += table(["op", *backends], rows)
    return out


def scaling_rows(results: list[Result]) -> dict[str, list[Result]]:
    lines = defaultdict(list)
    for r in results:
        if r.kind == "attention-scaling":
            lines[f"{r.backend} {r.variant}"].append(r)
    return {k: sorted(v, key=lambda r: r.T) for k, v in sorted(lines.items())}


def scaling_section(results: list[Result]) -> list[str]:
    lines = scaling_rows(results)
    if not lines:
        return []
    Ts = sorted({r.T for rs in lines.values() for r in rs})
    out = [
        "## Attention scaling",
        "",
        "Forward + backward of causal attention, B = 1, 12 heads, C = 768, as T grows: time "
        "and peak memory allocated beyond the inputs (NumPy: tracemalloc; torch CUDA: "
        "max_memory_allocated; Numba: its output and scratch buffers; torch CPU: not measured). "
        "naive holds the (T, T) probabilities (memory ∝ T²); tiled streams over key blocks "
        "(memory ∝ T). For torch, naive = explicit math, tiled = scaled_dot_product_attention; "
        "for Numba, tiled = the flash kernels.",
        "",
    ]
    header = ["T"] + [f"{name}" for name in lines]
    rows = []
    for T in Ts:
        row = [str(T)]
        for rs in lines.values():
            r = next((r for r in rs if r.T == T), None)
            row.append("–" if r is None else f"{fmt_time(r.time_s)} / {fmt_bytes(r.peak_bytes)}")
        rows.append(row)
    return out + [f"Each cell: {STAT['name']} time / peak memory.", ""] + table(header, rows)


def jit_section(results: list[Result]) -> list[str]:
    """Numba's first calls: each kernel compiles on its first launch in a process, so the first
    benchmark (in run order) that launches a kernel carries its compile time."""
    rows = []
    for r in results:
        if r.backend and r.backend.startswith("numba") and r.first_call_s is not None:
            if r.kind == "attention-scaling":
                what = f"attention {r.variant} T={r.T}"
            elif r.kind == "matmul":
                what = f"matmul {r.shape}"
            else:
                what = r.task or f"{r.op} {r.direction}"
            rows.append([what, r.backend, r.size or "", fmt_time(r.first_call_s), fmt_time(r.time_s),
                         fmt_time(max(r.first_call_s - r.time_s, 0.0))])  # fmt: skip
    if not rows:
        return []
    intro = (
        "First call of each Numba benchmark, timed before any warm-up, against its steady time. "
        "A kernel is compiled on its first launch in the process, so the compile time lands in the "
        "first benchmark that launches it (the run order: model, matmul shapes, ops, attention scaling); the "
        "difference is the compile (and first-transfer) cost."
    )
    header = ["benchmark", "backend", "size", "first call", STAT["name"], "first − steady"]
    return ["## Numba first calls (JIT compile)", "", intro, ""] + table(header, rows)


# ----------------------------------------------------------------------------- matmul shapes and goals
MATMUL_BACKENDS = ["torch-cuda-f32", "numba-cuda-f32", "numba-cuda-3xtf32"]
MATMUL_BASELINE = "torch-cuda-f32"  # cuBLAS float32, TF32 off


def matmul_rows(results: list[Result]) -> dict[str, dict[str, Result]]:
    """shape name -> backend -> result, in the order the shapes were run."""
    out: dict[str, dict[str, Result]] = {}
    for r in results:
        if r.kind == "matmul":
            out.setdefault(r.shape, {})[r.backend] = r
    return out


def tflops(r: Result | None) -> float | None:
    """TFLOP/s of one call (the call time: host launch cost included)."""
    return None if r is None or not r.flops or r.time_s <= 0 else r.flops / r.time_s / 1e12


def device_tflops(r: Result | None) -> float | None:
    """TFLOP/s on the device (benchmarks/timing.py's device time: CUDA graph replays, no host cost)."""
    t = None if r is None else r.device_time_s
    return None if not t or not r.flops else r.flops / t / 1e12


def matmul_section(results: list[Result]) -> list[str]:
    rows_by_shape = matmul_rows(results)
    if not rows_by_shape:
        return []
    backends = ordered({b for rs in rows_by_shape.values() for b in rs}, MATMUL_BACKENDS)
    header = ["shape (M×N×K, layout)"] + [f"{b} TFLOP/s device (per call)" for b in backends]
    header += [f"{b} % of cuBLAS fp32 (device)" for b in backends if b != MATMUL_BASELINE]
    header += [f"{b} error vs fp64" for b in backends]
    rows = []
    for shape, rs in rows_by_shape.items():
        any_r = next(iter(rs.values()))
        base = device_tflops(rs.get(MATMUL_BASELINE))
        row = [f"{shape} ({any_r.M}×{any_r.N}×{any_r.K}, {any_r.layout})"]
        row += [f"{fmt_num(device_tflops(rs.get(b)))} ({fmt_num(tflops(rs.get(b)))})" for b in backends]
        for b in backends:
            if b != MATMUL_BASELINE:
                t = device_tflops(rs.get(b))
                row.append("–" if t is None or not base else f"{100 * t / base:.0f}%")
        for b in backends:
            err = rs[b].max_rel_err_vs_float64 if b in rs else None
            row.append("–" if err is None else f"{err:.1e}")
        rows.append(row)
    intro = (
        "Each product of GPT-2 124M at B=4, T=1024 (benchmarks/cases.py MATMUL_SHAPES) alone: TFLOP/s = "
        "2MNK / time, first from the device time (CUDA graph replays, no host launch cost: "
        "benchmarks/timing.py), in brackets from the call time (one call from Python and a synchronize, "
        f"{STAT['name']} of the rounds); % of cuBLAS fp32 = device TFLOP/s over torch float32's (TF32 off) "
        "on the same GPU in the same run; error = max|out − ref| / max|ref| against the product in float64."
    )
    return ["## Matmul shapes", "", intro, ""] + table(header, rows)


def copy_bandwidth(results: list[Result]) -> float | None:
    """Bytes/s of the device-to-device copy benchmark (read + written), None if not run."""
    r = next((r for r in results if r.kind == "device-copy" and r.time_s > 0), None)
    return None if r is None else r.moved_bytes / r.time_s


def _find(results, **want) -> Result | None:
    return next((r for r in results if all(getattr(r, k) == v for k, v in want.items())), None)


# The goals of the GPU run, each a written rule over numbers of the same run (docs/numba_impl.md).
GOAL_MODEL_F32 = 1.5  # forward+backward, numba-cuda-f32 / torch-cuda-f32 at 124m-gpu
GOAL_MODEL_3XTF32 = 1.0  # the same for numba-cuda-3xtf32
GOAL_MATMUL_SHARE = 0.70  # each matmul shape, numba-cuda-f32 TFLOP/s / cuBLAS fp32's
GOAL_SMALL = 1.5  # forward+backward at 124m-cpu (B=1, T=128) with CUDA graphs / torch-cuda-f32
GOAL_BANDWIDTH = 0.80  # memory-bound ops: min bytes / time over the copy bandwidth
MEMORY_BOUND_OPS = ("layernorm", "gelu", "crossentropy")


def goal_rows(results: list[Result]) -> list[tuple[str, str, str, bool | None]]:
    """(goal, measured, rule, met) per goal row; met None = no goal (the row is information)."""
    rows = []
    not_run = "not measured in this run"

    def model_ratio(backend, size, task="forward-backward"):
        r = _find(results, kind="model", size=size, task=task, backend=backend)
        base = _find(results, kind="model", size=size, task=task, backend="torch-cuda-f32")
        return (r, base, None if r is None or base is None else r.time_s / base.time_s)

    for backend, bar in (("numba-cuda-f32", GOAL_MODEL_F32), ("numba-cuda-3xtf32", GOAL_MODEL_3XTF32)):
        r, base, ratio = model_ratio(backend, "124m-gpu")
        measured = not_run if ratio is None else f"{fmt_time(r.time_s)} vs {fmt_time(base.time_s)}: {ratio:.2f}×"
        rows.append((f"forward+backward 124M B=4 T=1024, {backend} vs torch f32", measured, f"≤ {bar:.1f}×",
                     ratio is not None and ratio <= bar))  # fmt: skip
    for shape, rs in matmul_rows(results).items():
        for backend in ("numba-cuda-f32", "numba-cuda-3xtf32"):
            if backend == "numba-cuda-3xtf32" and backend not in rs:
                continue
            t, base = device_tflops(rs.get(backend)), device_tflops(rs.get(MATMUL_BASELINE))
            share = None if t is None or not base else t / base
            measured = not_run if share is None else f"{t:.1f} vs {base:.1f} TFLOP/s: {100 * share:.0f}%"
            if share is None:
                errors = [r.device_time_error for r in (rs.get(backend), rs.get(MATMUL_BASELINE)) if r is not None]
                measured = "no device time" + "".join(f" ({e})" for e in errors if e)
            goal = backend == "numba-cuda-f32"
            rows.append((f"matmul {shape}, {backend} vs cuBLAS fp32", measured,
                         f"≥ {100 * GOAL_MATMUL_SHARE:.0f}%" if goal else "–",
                         (share is not None and share >= GOAL_MATMUL_SHARE) if goal else None))  # fmt: skip
    graphs, base, ratio_g = model_ratio("numba-cuda-f32-graphs", "124m-cpu")
    eager, _, ratio_e = model_ratio("numba-cuda-f32", "124m-cpu")
    if ratio_g is None:
        measured = not_run
    else:
        measured = f"graphs {fmt_time(graphs.time_s)} ({ratio_g:.2f}×)"
        if eager is not None:
            speedup = eager.time_s / graphs.time_s
            measured += f", eager {fmt_time(eager.time_s)} ({ratio_e:.2f}×): graphs {speedup:.2f}× faster"
    rows.append(("small shape: forward+backward 124M B=1 T=128, numba-cuda-f32 with CUDA graphs vs torch f32",
                 measured, f"≤ {GOAL_SMALL:.1f}×", ratio_g is not None and ratio_g <= GOAL_SMALL))  # fmt: skip
    bandwidth = copy_bandwidth(results)
    for r in results:
        if r.kind != "op" or r.size != "124m-gpu" or r.backend != "numba-cuda-f32":
            continue
        base = _find(results, kind="op", size="124m-gpu", op=r.op, direction=r.direction, backend="torch-cuda-f32")
        ratio = f"device {fmt_time(r.device_time_s)}" if r.device_time_s else "no device time"
        if base is not None and base.device_time_s and r.device_time_s:
            ratio += f", {r.device_time_s / base.device_time_s:.2f}× torch's"
        ratio += f"; per call {fmt_time(r.time_s)}"
        if r.op in MEMORY_BOUND_OPS and r.min_bytes:
            if not r.device_time_s:
                rows.append((f"op {r.op} {r.direction}", ratio + (f" ({r.device_time_error})" if r.device_time_error
                             else ""), f"≥ {100 * GOAL_BANDWIDTH:.0f}% of copy bandwidth", False))  # fmt: skip
                continue
            achieved = r.min_bytes / r.device_time_s
            if bandwidth is None:
                rows.append((f"op {r.op} {r.direction}", f"{ratio}; {achieved / 1e12:.2f} TB/s (no copy benchmark)",
                             f"≥ {100 * GOAL_BANDWIDTH:.0f}% of copy bandwidth", False))  # fmt: skip
            else:
                share = achieved / bandwidth
                rows.append((f"op {r.op} {r.direction}",
                             f"{ratio}; {achieved / 1e12:.2f} of {bandwidth / 1e12:.2f} TB/s: {100 * share:.0f}%",
                             f"≥ {100 * GOAL_BANDWIDTH:.0f}% of copy bandwidth", share >= GOAL_BANDWIDTH))  # fmt: skip
        else:
            rows.append((f"op {r.op} {r.direction}", ratio, "–", None))
    return rows


def goals_section(results: list[Result]) -> list[str]:
    rows = goal_rows(results)
    if not any(r.device == "cuda" for r in results):
        return []
    verdict = {True: "met", False: "**NOT met**", None: "–"}
    intro = (
        "Each goal is a written rule over numbers of this run on one GPU (ratios: time / torch float32's "
        "time, TF32 off; forward+backward of the whole model, per call; matmul shares: device TFLOP/s over "
        "cuBLAS float32's device TFLOP/s; memory-bound ops: the bytes they must move (benchmarks/cases.py "
        "min_bytes) over their device time, against the device-to-device copy bandwidth measured in the "
        "same run; device time = CUDA graph replays over rotating input sets, no host launch cost, "
        "benchmarks/timing.py). A goal whose numbers are missing from the run is NOT met."
    )
    body = [[goal, measured, rule, verdict[met]] for goal, measured, rule, met in rows]
    return ["## Goals", "", intro, ""] + table(["goal", "measured", "rule", "verdict"], body)


def goals_met(results: list[Result]) -> tuple[int, int]:
    """(goals met, goals judged) of the run."""
    judged = [met for *_, met in goal_rows(results) if met is not None]
    return sum(judged), len(judged)


def other_section(results: list[Result]) -> list[str]:
    rest = [r for r in results if r.kind not in ("model", "op", "attention-scaling", "matmul", "device-copy")]
    if not rest:
        return []
    rows = [[r.group, r.name, fmt_time(r.time_s), fmt_time(r.stddev_s), str(r.rounds)]
            for r in sorted(rest, key=lambda r: (r.group, r.name))]  # fmt: skip
    return ["## Other benchmarks", ""] + table(["group", "benchmark", STAT["name"], "stddev", "rounds"], rows)


def markdown(data: dict, results: list[Result], title: str, charts: list[str]) -> str:
    lines = [f"# {title}", ""] + machine_lines(data, results)
    lines += [f"Times are the **{STAT['name']}** of each benchmark's timed rounds.", ""]
    if any(r.device_name and "simulator" in r.device_name for r in results):
        lines += ["> Numba ran in the CUDA simulator: its times measure the simulator, not a GPU.", ""]
    if not results:
        lines += ["No timed benchmarks in this file (was it run with --benchmark-disable?).", ""]
    lines += [f"![{Path(c).stem}]({Path(c).name})" for c in charts] + ([""] if charts else [])
    for section in (goals_section, model_section, matmul_section, op_section, scaling_section, jit_section,
                    other_section):  # fmt: skip
        lines += section(results)
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------- charts
def _pyplot():
    import matplotlib  # raises ImportError where it is not installed: the report is written without charts

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


COLORS = {
    "numpy-f32": "#4c72b0", "numpy-f64": "#8da0cb", "torch-cpu-f32": "#dd8452", "torch-cpu-bf16": "#f2b880",
    "torch-cuda-f32": "#c44e52", "torch-cuda-bf16": "#e89a9c", "numba-cuda-f32": "#55a868",
    "numba-cuda-f32-graphs": "#8fd19e", "numba-cuda-3xtf32": "#2d6a3e",
}  # fmt: skip


def grouped_bars(
    ax, categories: list[str], backends: list[str], value, ylabel: str, title: str, labels=None, log: bool = True
) -> None:
    """One group of bars per category, one bar per backend (value(category, backend), 0 = none).

    log=False: a linear axis with each bar's value written on it (for values within ~10x).
    """
    width = 0.8 / max(len(backends), 1)
    for j, b in enumerate(backends):
        xs = [i + (j - (len(backends) - 1) / 2) * width for i in range(len(categories))]
        bars = ax.bar(xs, [value(c, b) for c in categories], width, label=b, color=COLORS.get(b))
        if not log:
            ax.bar_label(bars, labels=[fmt_num(v) if v else "" for v in bars.datavalues], fontsize=7)
    ax.set_xticks(range(len(categories)), labels or categories, rotation=20 if labels else 0)
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)


def save(fig, path: Path) -> bool:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return True


def model_chart(results: list[Result], path: Path) -> bool:
    groups = model_rows(results)
    if not groups:
        return False
    sizes = ordered({s for s, _ in groups}, SIZE_ORDER)
    tasks = ordered({t for _, t in groups}, list(MODEL_TASKS))
    fig, axes = _pyplot().subplots(1, len(sizes), figsize=(5.5 * len(sizes), 4.2), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        backends = ordered({r.backend for (s, _), rs in groups.items() if s == size for r in rs}, BACKEND_ORDER)

        def tokens_per_s(task, b, size=size):
            r = next((r for r in groups.get((size, task), []) if r.backend == b), None)
            return r.tokens / r.time_s if r and r.tokens else 0.0

        grouped_bars(ax, tasks, backends, tokens_per_s, "tokens / s (higher is better)",
                     f"GPT-2 whole model, {size}", log=False)  # fmt: skip
    return save(fig, path)


def ops_chart(results: list[Result], size: str, path: Path) -> bool:
    sel = [r for r in results if r.kind == "op" and r.size == size]
    if not sel:
        return False
    directions = [d for d in ("forward", "backward") if any(r.direction == d for r in sel)]
    fig, axes = _pyplot().subplots(1, len(directions), figsize=(7 * len(directions), 4.4), squeeze=False)
    for ax, direction in zip(axes[0], directions, strict=True):
        rs = [r for r in sel if r.direction == direction]
        ops = ordered({r.op for r in rs}, list(OPS))

        def ms(op, b, rs=rs):
            r = next((r for r in rs if r.op == op and r.backend == b), None)
            return r.time_s * 1e3 if r else 0.0

        grouped_bars(ax, ops, ordered({r.backend for r in rs}, BACKEND_ORDER), ms,
                     f"{STAT['name']} time, ms (log scale, lower is better)", f"Per op, {direction}, {size}",
                     labels=[o.replace("attention-", "attn-") for o in ops])  # fmt: skip
    return save(fig, path)


def attention_chart(results: list[Result], path: Path) -> bool:
    lines = scaling_rows(results)
    if not lines:
        return False
    plt = _pyplot()
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(13, 4.8))
    for label, rs in lines.items():
        backend, variant = label.split(" ")
        style = dict(color=COLORS.get(backend), marker="o", linestyle="-" if variant == "naive" else "--")
        ax_t.plot([r.T for r in rs], [r.time_s * 1e3 for r in rs], label=label, **style)
        mem = [(r.T, r.peak_bytes / 2**20) for r in rs if r.peak_bytes]
        if mem:
            ax_m.plot([t for t, _ in mem], [m for _, m in mem], label=label, **style)
    # Slope guides through the smallest T measured: memory should follow T^2 (naive) or T (tiled).
    Ts = sorted({r.T for rs in lines.values() for r in rs if r.T >= 64})
    start = [r.peak_bytes / 2**20 for rs in lines.values() for r in rs if Ts and r.T == Ts[0] and r.peak_bytes]
    if Ts and start:
        for power, name in ((2, "∝ T²"), (1, "∝ T")):
            ref = [min(start) * (T / Ts[0]) ** power for T in Ts]
            ax_m.plot(Ts, ref, color="gray", linestyle=":", linewidth=1)
            ax_m.annotate(name, (Ts[-1], ref[-1]), color="gray", fontsize=8)
    for ax, ylabel, title in (
        (ax_t, f"{STAT['name']} time, ms (fwd + bwd)", "Attention time vs T (solid: naive, dashed: tiled)"),
        (ax_m, "peak memory beyond inputs, MiB", "Attention memory vs T (dotted: slope guides)"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T (B=1, 12 heads, C=768)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(which="both", alpha=0.3)
        ax.legend(fontsize=7)
    return save(fig, path)


# ----------------------------------------------------------------------------- entry point
def write_report(
    json_paths, out_dir: Path, prefix: str, title: str | None = None, charts: bool = True, stat: str = "median"
) -> list[Path]:
    """Write <prefix>.md, <prefix>.json and the charts under out_dir; returns the paths written."""
    if stat not in STATS:
        raise ValueError(f"stat must be one of {STATS}, got {stat!r}")
    STAT["name"] = stat
    data, results = load(json_paths, stat)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn: list[Path] = []
    candidates = [(out_dir / f"{prefix}-model.png", lambda p: model_chart(results, p))]
    for size in ordered({r.size for r in results if r.kind == "op"}, SIZE_ORDER):
        candidates.append((out_dir / f"{prefix}-ops-{size}.png", lambda p, s=size: ops_chart(results, s, p)))
    candidates.append((out_dir / f"{prefix}-attention.png", lambda p: attention_chart(results, p)))
    try:
        for path, draw in candidates if charts else []:
            if draw(path):
                drawn.append(path)
    except ImportError as e:
        print(f"no charts: {e} (install matplotlib, then rerun the report on {prefix}.json)", file=sys.stderr)
    md = out_dir / f"{prefix}.md"
    md.write_text(markdown(data, results, title or f"Benchmarks: {prefix}", [str(c) for c in drawn]))
    copy = out_dir / f"{prefix}.json"
    copy.write_text(json.dumps(data, indent=1) + "\n")
    return [md, copy, *drawn]


def main(argv: list[str] | None = None) -> int:
    """The command line; bad flags or input files are one line (`error: ...`) and exit status 2."""
    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    ap = ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n")[0])
    ap.add_argument("json", type=Path, nargs="+", help="pytest-benchmark JSON (--benchmark-json=...), one or more")
    ap.add_argument("--out", type=Path, default=Path("docs/results"), help="output folder (default docs/results)")
    ap.add_argument("--prefix", default=None, help="file name prefix (default: the JSON's stem)")
    ap.add_argument("--title", default=None, help="report title")
    ap.add_argument("--stat", choices=STATS, default="median", help="statistic of the rounds (default median)")
    ap.add_argument("--no-charts", action="store_true", help="markdown only")
    ap.add_argument(
        "--check-goals", action="store_true", help="exit 3 when a goal of the GPU run is NOT met (section Goals)"
    )
    args = ap.parse_args(argv)
    for path in args.json:
        if not path.is_file():
            raise UserError(f"{path}: no such file")
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out}: exists and is not a folder")
    try:
        if not load(args.json, args.stat)[1]:
            raise UserError(
                f"{' '.join(map(str, args.json))}: no timed benchmarks (was it run with --benchmark-disable?)"
            )
        prefix = args.prefix or args.json[0].stem
        written = write_report(args.json, args.out, prefix, args.title, charts=not args.no_charts, stat=args.stat)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        raise UserError(
            f"{' '.join(map(str, args.json))} is not pytest-benchmark JSON ({type(e).__name__}: {e})"
        ) from None
    for p in written:
        print(p)
    if args.check_goals:
        met, judged = goals_met(load(args.json, args.stat)[1])
        print(f"goals: {met} of {judged} met" + ("" if judged and met == judged else " (see the Goals section)"))
        if not judged or met < judged:
            return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
