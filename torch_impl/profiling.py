"""Where a training step's time goes: torch.profiler over a few steps of a real run (--profile-steps N).

The trainer profiles steps [first, first + N) with first = start step + 2 (the first step compiles and
warms up; the second may still re-compile), CPU and, on CUDA, the device's kernels, and rank 0 writes

    out_dir/profile.txt    torch's own table of the operators and kernels, by self device time (CPU
                           time without a GPU), 60 rows
    out_dir/profile.json   the same as data: the device's kernels by their time and the aten operators by
                           their own host time, each with calls and microseconds per profiled step and its
                           share of the total of its kind; the steps and the provenance record (commit,
                           versions, device)

Kernels named by the CUDA driver (e.g. `ampere_bf16_s16816gemm...`, `triton_red_fused_...`) are what
the step ran; aten operators (`aten::mm`) are the CPU-side calls that launched them. Profiling adds
its own overhead: the steps it covers are slower than the others, and their tokens/s is not the run's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

ROWS = 60  # rows of the table and entries of the JSON


class StepProfiler:
    """profile steps [first, first + count) of a run; `count` 0 = off. Call before(step) and after(step)
    around each step; the files are written after the last profiled step (on rank 0 only)."""

    def __init__(self, out_dir: Path, start_step: int, count: int, device: torch.device, master: bool):
        self.out_dir, self.count, self.device, self.master = Path(out_dir), count, device, master
        self.first = start_step + 2
        self.last = self.first + count - 1
        self._prof = None

    def before(self, step: int) -> None:
        if self.count and step == self.first:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self._prof = torch.profiler.profile(activities=activities)
            self._prof.__enter__()

    def after(self, step: int) -> None:
        if self._prof is None or step != self.last:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self._prof.__exit__(None, None, None)
        prof, self._prof = self._prof, None
        if self.master:
            write_profile(prof, self.out_dir, (self.first, self.last), self.device)


def write_profile(prof, out_dir: Path, steps: tuple[int, int], device: torch.device) -> None:
    """profile.txt and profile.json (module docstring) from a finished torch.profiler.profile."""
    from torch.autograd import DeviceType

    from weights.provenance import provenance

    on_gpu = device.type == "cuda"
    events = prof.key_averages()
    n_steps = steps[1] - steps[0] + 1
    # Device events (the kernels) carry the device time; CPU events (aten operators) the host time. A CPU
    # operator's "self device time" is its kernels' time again, so each total sums one kind only.
    kernels = [e for e in events if e.device_type != DeviceType.CPU]
    operators = [e for e in events if e.device_type == DeviceType.CPU]
    sort_key = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    table = events.table(sort_by=sort_key, row_limit=ROWS, max_name_column_width=80)
    (out_dir / "profile.txt").write_text(f"steps {steps[0]}..{steps[1]} (inclusive), sorted by {sort_key}\n{table}\n")

    def rows(evts, key):
        total = sum(getattr(e, key) for e in evts) or 1.0
        top = sorted(evts, key=lambda e: getattr(e, key), reverse=True)[:ROWS]
        return total / n_steps, [
            {"name": e.key, "calls_per_step": e.count / n_steps, "us_per_step": getattr(e, key) / n_steps,
             "share": getattr(e, key) / total}
            for e in top
        ]  # fmt: skip

    device_us, kernel_rows = rows(kernels, "self_device_time_total")
    host_us, operator_rows = rows(operators, "self_cpu_time_total")
    doc = {
        "what": f"torch.profiler over training steps {steps[0]}..{steps[1]} (inclusive)",
        "measured_by": "torch_impl.train --profile-steps (torch_impl/profiling.py)",
        "provenance": provenance(),
        "steps": list(steps),
        "kernels": {"device_us_per_step": device_us if kernels else None, "top": kernel_rows},
        "operators": {"self_cpu_us_per_step": host_us, "top": operator_rows},
    }
    (out_dir / "profile.json").write_text(json.dumps(doc, indent=1) + "\n")
