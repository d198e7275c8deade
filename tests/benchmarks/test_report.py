"""benchmarks.report: JSON in, markdown tables with the right numbers and readable PNGs out.

The JSON here is written by hand in pytest-benchmark's format, with round numbers, so every
figure in the report can be checked exactly: ratios to torch, tokens/s, TFLOP/s, MFU.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks import report
from benchmarks.throughput import peak_tflops, training_flops_per_token
from weights import GPT2Config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def bench(group, name, median, **extra):
    return {
        "group": group,
        "name": name,
        "fullname": name,
        "params": {},
        "extra_info": extra,
        "stats": {"median": median, "mean": median, "stddev": 0.0, "min": median, "max": median, "rounds": 3},
    }


def results_json(tmp_path, benchmarks, **top):
    data = {
        "machine_info": {"node": "box", "cpu": {"brand_raw": "Test CPU", "count": 2}, "python_version": "3.11"},
        "commit_info": {"id": "0123456789abcdef", "dirty": False},
        "datetime": "2026-01-02T03:04:05",
        "version": "5.2.3",
        "benchmarks": benchmarks,
        **top,
    }
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    return path


H100 = "NVIDIA H100 80GB HBM3"


def model(task, backend, device, median, flops=None, peak=None, size="124m-gpu", tokens=4096, first=None):
    return bench(
        f"model:{task}:{size}",
        f"test_model[{size}-{task}-{backend}]",
        median,
        kind="model",
        task=task,
        size=size,
        backend=backend,
        device=device,
        dtype="float32",
        tokens=tokens,
        flops=flops,
        peak_tflops=peak,
        device_name=H100 if device == "cuda" else "Test CPU",
        first_call_s=first,
    )


def op(name, direction, backend, device, median, size="tiny"):
    return bench(
        f"op:{name}:{direction}:{size}",
        f"test_op[{size}-{name}-{direction}-{backend}]",
        median,
        kind="op",
        op=name,
        direction=direction,
        size=size,
        backend=backend,
        device=device,
    )


def scaling(backend, device, variant, T, median, peak_bytes):
    return bench(
        f"attention-scaling:{backend}",
        f"test_attention_scaling[{backend}-T{T}-{variant}]",
        median,
        kind="attention-scaling",
        backend=backend,
        device=device,
        variant=variant,
        T=T,
        peak_bytes=peak_bytes,
    )


def md_rows(md: str, first_cell: str) -> list[list[str]]:
    """The cells of every markdown table row whose first cell is `first_cell`."""
    rows = []
    for line in md.splitlines():
        if line.startswith("| "):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if cells[0] == first_cell:
                rows.append(cells)
    return rows


def test_model_table_has_throughput_mfu_and_ratio_to_torch(tmp_path):
    flops = 1e12  # per call: 1 TFLOP
    path = results_json(
        tmp_path,
        [
            model("train-step", "torch-cuda-f32", "cuda", 0.5, flops=flops, peak=66.9, first=2.0),
            model("train-step", "numba-cuda-f32", "cuda", 2.0, flops=flops, peak=66.9, first=30.0),
        ],
    )
    md_path = report.write_report(path, tmp_path / "out", "bench-test")[0]
    md = md_path.read_text()
    rows = {r[1]: r for r in md_rows(md, "train-step") if len(r) == 8}  # the model table (not the JIT table)
    # numba: 2 s per call -> 4096 / 2 = 2.05 k tokens/s, 0.5 TFLOP/s, 0.5 / 66.9 = 0.7% MFU, 4x torch's time
    assert rows["numba-cuda-f32"][2:] == ["2 s", "2.05 k", "0.5", "0.7%", "4.00×", "30 s"]
    # torch: 0.5 s -> 8.19 k tokens/s, 2 TFLOP/s, 3.0% MFU, ratio 1
    assert rows["torch-cuda-f32"][2:] == ["500 ms", "8.19 k", "2", "3.0%", "1.00×", "2 s"]
    assert "2026-01-02T03:04:05" in md and "Test CPU" in md and H100 in md and "0123456789" in md


def test_op_tables_put_backends_side_by_side_with_ratios_per_device(tmp_path):
    path = results_json(
        tmp_path,
        [
            op("gelu", "forward", "torch-cpu-f32", "cpu", 0.001),
            op("gelu", "forward", "numpy-f32", "cpu", 0.003),
            op("gelu", "forward", "torch-cuda-f32", "cuda", 0.0001),
            op("gelu", "forward", "numba-cuda-f32", "cuda", 0.00005),
            op("layernorm", "forward", "numpy-f32", "cpu", 0.002),  # no torch row: no ratio
        ],
    )
    md = report.write_report(path, tmp_path / "out", "bench-test")[0].read_text()
    header = next(r for r in md_rows(md, "op"))
    assert header[1:] == ["numpy-f32", "torch-cpu-f32", "torch-cuda-f32", "numba-cuda-f32"]  # project order
    gelu = dict(zip(header[1:], md_rows(md, "gelu")[0][1:], strict=True))
    assert gelu["numpy-f32"] == "3 ms (3.00×)"  # against torch on the CPU
    assert gelu["numba-cuda-f32"] == "50 µs (0.50×)"  # against torch on the GPU, not the CPU
    layernorm = dict(zip(header[1:], md_rows(md, "layernorm")[0][1:], strict=True))
    assert layernorm["numpy-f32"] == "2 ms (–)" and layernorm["torch-cpu-f32"] == "–"


def test_attention_scaling_table_and_chart(tmp_path):
    rows = []
    for T in (64, 128, 256):
        rows.append(scaling("numpy-f32", "cpu", "naive", T, 1e-3 * (T / 64) ** 2, 48 * T * T))
        rows.append(scaling("numpy-f32", "cpu", "tiled", T, 2e-3 * (T / 64), 1000 * T))
    written = report.write_report(results_json(tmp_path, rows), tmp_path / "out", "bench-test")
    md = written[0].read_text()
    assert md_rows(md, "256")[0][1:] == ["16 ms / 3 MiB", "8 ms / 0.244 MiB"]
    chart = tmp_path / "out" / "bench-test-attention.png"
    assert chart in written and chart.read_bytes().startswith(PNG_MAGIC)


def test_every_chart_is_a_png_and_the_json_is_copied(tmp_path):
    path = results_json(
        tmp_path,
        [
            model("forward", "torch-cpu-f32", "cpu", 0.1, size="124m-cpu", tokens=128),
            op("matmul", "forward", "torch-cpu-f32", "cpu", 0.01, size="124m-cpu"),
            op("matmul", "backward", "numpy-f32", "cpu", 0.02, size="124m-cpu"),
            bench("weights:synthetic:124m", "test_synthetic_weights[124m-cpu]", 6.5, kind="weights"),
        ],
    )
    out = tmp_path / "out"
    written = report.write_report(path, out, "bench-x")
    names = sorted(p.name for p in written)
    assert names == ["bench-x-model.png", "bench-x-ops-124m-cpu.png", "bench-x.json", "bench-x.md"]
    for p in written:
        if p.suffix == ".png":
            assert p.read_bytes().startswith(PNG_MAGIC) and p.stat().st_size > 10_000
    assert json.loads((out / "bench-x.json").read_text()) == json.loads(path.read_text())
    md = (out / "bench-x.md").read_text()
    assert "![bench-x-model](bench-x-model.png)" in md
    assert md_rows(md, "weights:synthetic:124m")[0][2] == "6.5 s"


def test_a_disabled_run_gives_a_report_that_says_so(tmp_path):
    disabled = bench("op:gelu:forward:tiny", "test_op[x]", 1.0, kind="op")
    disabled["stats"] = None  # what --benchmark-disable leaves
    md = report.write_report(results_json(tmp_path, [disabled]), tmp_path / "out", "b")[0].read_text()
    assert "No timed benchmarks" in md


def test_cli_rejects_missing_and_malformed_files(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "benchmarks.report", *a], capture_output=True, text=True)
    missing = run(str(tmp_path / "nope.json"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    malformed = run(str(bad), "--out", str(tmp_path / "o"))
    assert malformed.returncode == 2 and "not pytest-benchmark JSON" in malformed.stderr


def test_flop_count_and_peaks():
    # llm.c: 6 N + 6 L C T per token. 124M at T = 1024: 6 * 124,439,808 + 6 * 12 * 768 * 1024.
    assert training_flops_per_token(GPT2Config.gpt2_124m(), 1024) == 6 * 124_439_808 + 6 * 12 * 768 * 1024
    assert peak_tflops(H100, "bfloat16") == 989.4 and peak_tflops(H100, "float32") == 66.9
    assert peak_tflops("NVIDIA H100 PCIe", "bfloat16") == 756.0
    assert peak_tflops("Intel(R) Xeon(R) CPU", "float32") is None


@pytest.mark.parametrize("seconds,expect", [(1.5, "1.5 s"), (0.0123, "12.3 ms"), (4.56e-5, "45.6 µs"), (None, "–")])
def test_time_format(seconds, expect):
    assert report.fmt_time(seconds) == expect


def test_several_json_files_are_merged(tmp_path):
    cpu = results_json(tmp_path, [op("gelu", "forward", "torch-cpu-f32", "cpu", 0.001)])
    gpu_path = tmp_path / "gpu.json"
    gpu_path.write_text(json.dumps({"benchmarks": [op("gelu", "forward", "numba-cuda-f32", "cuda", 0.0002)]}))
    md = report.write_report([cpu, gpu_path], tmp_path / "out", "merged")[0].read_text()
    header = md_rows(md, "op")[0]
    assert header[1:] == ["torch-cpu-f32", "numba-cuda-f32"]
    assert json.loads((tmp_path / "out" / "merged.json").read_text())["benchmarks"][1]["extra_info"]["device"] == "cuda"


def test_stat_min_reports_the_fastest_round(tmp_path):
    slow_median = op("gelu", "forward", "torch-cpu-f32", "cpu", 0.004)
    slow_median["stats"]["min"] = 0.001  # contention made most rounds slow
    path = results_json(tmp_path, [slow_median])
    md_median = report.write_report(path, tmp_path / "a", "b")[0].read_text()
    md_min = report.write_report(path, tmp_path / "c", "b", stat="min")[0].read_text()
    assert md_rows(md_median, "gelu")[0][1] == "4 ms (1.00×)" and "**median**" in md_median
    assert md_rows(md_min, "gelu")[0][1] == "1 ms (1.00×)" and "**min**" in md_min
    with pytest.raises(ValueError, match="stat must be one of"):
        report.write_report(path, tmp_path / "d", "b", stat="mean")


def test_numba_first_calls_are_listed_with_their_compile_time(tmp_path):
    path = results_json(tmp_path, [
        model("forward", "numba-cuda-f32", "cuda", 0.25, size="tiny", first=12.25),
        model("forward", "torch-cuda-f32", "cuda", 0.01, size="tiny", first=1.5),
    ])  # fmt: skip
    md = report.write_report(path, tmp_path / "out", "b")[0].read_text()
    assert "## Numba first calls (JIT compile)" in md
    rows = [r for r in md_rows(md, "forward") if len(r) == 6]  # the JIT table's rows (the model table has 8 cells)
    assert rows == [["forward", "numba-cuda-f32", "tiny", "12.2 s", "250 ms", "12 s"]]


def _goal_benchmarks(numba_fwd_bwd_s, numba_matmul_s, graphs_small_s):
    """A GPU run with one number per goal kind (round figures: the verdicts are exact)."""
    gpu = {"device": "cuda", "dtype": "float32", "device_name": H100}
    out = [
        model("forward-backward", "torch-cuda-f32", "cuda", 0.100),
        model("forward-backward", "numba-cuda-f32", "cuda", numba_fwd_bwd_s),
        model("forward-backward", "torch-cuda-f32", "cuda", 0.010, size="124m-cpu", tokens=128),
        model("forward-backward", "numba-cuda-f32", "cuda", 0.030, size="124m-cpu", tokens=128),
        model("forward-backward", "numba-cuda-f32-graphs", "cuda", graphs_small_s, size="124m-cpu", tokens=128),
        bench("device-copy", "copy", 0.001, kind="device-copy", moved_bytes=4 * 10**9, backend="torch-cuda-f32", **gpu),
    ]
    # matmuls and ops: the call time (the benchmark's own) carries a host launch cost that the device time
    # (the number the goals judge) does not; the verdicts below follow the device times only
    for backend, t in (("torch-cuda-f32", 0.001), ("numba-cuda-f32", numba_matmul_s)):
        shape = {"shape": "c_fc fwd", "M": 4096, "N": 3072, "K": 768, "layout": "NN", "flops": 2e12}
        out.append(bench("matmul:c_fc fwd", f"mm-{backend}", t + 0.0005, kind="matmul", backend=backend,
                         max_rel_err_vs_float64=3e-7, device_time_s=t, **shape, **gpu))  # fmt: skip
    for backend, t in (("torch-cuda-f32", 0.0001), ("numba-cuda-f32", 0.0001)):  # 0.3e9 B / 0.1 ms = 3 TB/s = 75%
        out.append(bench("op:gelu:forward:124m-gpu", f"gelu-{backend}", 2 * t, kind="op", op="gelu",
                         direction="forward", size="124m-gpu", min_bytes=3 * 10**8, backend=backend, device_time_s=t,
                         **gpu))  # fmt: skip
    return out


def test_goals_section_judges_each_goal_by_its_rule(tmp_path):
    path = results_json(tmp_path, _goal_benchmarks(numba_fwd_bwd_s=0.140, numba_matmul_s=0.0015, graphs_small_s=0.016))
    _, results = report.load(path)
    rows = {goal: (measured, met) for goal, measured, _, met in report.goal_rows(results)}
    f32 = rows["forward+backward 124M B=4 T=1024, numba-cuda-f32 vs torch f32"]
    assert "1.40×" in f32[0] and f32[1] is True
    missing = rows["forward+backward 124M B=4 T=1024, numba-cuda-3xtf32 vs torch f32"]
    assert missing == ("not measured in this run", False)
    assert rows["matmul c_fc fwd, numba-cuda-f32 vs cuBLAS fp32"][1] is False  # 67% < 70%
    small = next(v for k, v in rows.items() if k.startswith("small shape"))
    assert small[1] is False and "1.60×" in small[0] and "graphs 1.88× faster" in small[0]
    assert rows["op gelu forward"][1] is False and "75%" in rows["op gelu forward"][0]
    assert report.goals_met(results) == (1, 5)
    md = report.markdown(*report.load(path), "t", [])
    assert "## Goals" in md and "**NOT met**" in md and "## Matmul shapes" in md


def test_a_goal_without_its_device_time_is_not_met(tmp_path):
    benchmarks = _goal_benchmarks(numba_fwd_bwd_s=0.1, numba_matmul_s=0.001, graphs_small_s=0.01)
    for b in benchmarks:  # the numba matmul and op lost their device times: a failed capture, say
        if b["extra_info"].get("backend") == "numba-cuda-f32" and b["extra_info"]["kind"] in ("matmul", "op"):
            del b["extra_info"]["device_time_s"]
            b["extra_info"]["device_time_error"] = "GraphError: capture failed"
    _, results = report.load(results_json(tmp_path, benchmarks))
    rows = {goal: (measured, met) for goal, measured, _, met in report.goal_rows(results)}
    matmul = rows["matmul c_fc fwd, numba-cuda-f32 vs cuBLAS fp32"]
    assert matmul[1] is False and "no device time (GraphError: capture failed)" in matmul[0]
    gelu = rows["op gelu forward"]
    assert gelu[1] is False and "no device time" in gelu[0] and "capture failed" in gelu[0]


def test_check_goals_exits_3_until_every_goal_is_met(tmp_path):
    bad = results_json(tmp_path, _goal_benchmarks(numba_fwd_bwd_s=0.2, numba_matmul_s=0.0012, graphs_small_s=0.012))
    cmd = [sys.executable, "-m", "benchmarks.report", str(bad), "--out", str(tmp_path), "--no-charts", "--check-goals"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 3 and "goals: 2 of 5 met" in done.stdout, done.stdout + done.stderr
    plain = subprocess.run(cmd[:-1], capture_output=True, text=True)  # without --check-goals: a report, no verdict
    assert plain.returncode == 0, plain.stderr
