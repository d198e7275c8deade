"""Compile every hot kernel for sm_90 and read ptxas' resource report: no GPU needed.

    NUMBA_ENABLE_CUDASIM=0 python -m numba_impl.ptx_report [--json FILE]

prints one row per kernel (registers, stack frame, spills, static shared memory, threads per
block) and exits 1 when a kernel breaks a rule:
- ptxas accepts it (it refuses, say, more than 0xc000 bytes of static shared memory per block);
- no spill stores or loads (registers that do not fit go to local memory: slow);
- static shared memory <= 48 KiB (0xc000 bytes, the most a block gets without a dynamic opt-in);
- registers <= 255, and the block's warps fit the 64K-register file at that count (else the
  launch fails with "too many resources requested").

Which kernels, with which argument types: the ones the model launches at GPT-2 124M (B=4, T=1024),
and those the variants add at the llama-style 124M (GPT2Config.llama_style_124m(): RoPE, RMSNorm,
SwiGLU of hidden 2304, 4 kv heads for 12 query heads, no biases; same B, T), and those GPT-2 medium,
large and xl build for their widths and head counts (B=1, T=1024; group `sizes`), found by running the
launchers themselves (`LAUNCHES` below) with kernel launches recorded instead of run. So a kernel
that changes its signature, tile or launch configuration is checked as launched, and a new launcher
only needs a line in `LAUNCHES`. The recorded argument types are those a real launch would type
(numpy arrays stand in for device arrays: both type as C-contiguous arrays).

How compiling works without a GPU: `numba.cuda.compile_ptx(..., cc=(9, 0))` needs only NVVM (the
nvidia-cuda-nvrtc wheel ships it). Device functions a kernel calls (warp shuffles, the GELU) are
compiled by numba for "the current device", which asks the driver; with no driver we tell it the
current device is a compute capability 9.0 one (`_no_driver_device`). Then ptxas (CUDA's, or the
nvidia-cuda-nvcc wheel's) assembles the PTX for sm_90 with -v.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from numba_impl._compat import SIMULATOR, cuda

CC = (9, 0)
ARCH = "sm_90"
STATIC_SHARED_LIMIT = 0xC000  # 48 KiB
REGISTER_FILE = 65536  # 32-bit registers per multiprocessor (and per block at most)
MAX_REGISTERS = 255

# GPT-2 124M at the benchmark shape.
B, T, C, NH, V, L = 4, 1024, 768, 12, 50257, 12
BT = B * T
# llama-124m (GPT2Config.llama_style_124m()) at the same B, T: kv heads, SwiGLU hidden width, qkv width.
NKV_LLAMA, H_LLAMA = 4, 2304
HS = C // NH
W_LLAMA = (NH + 2 * NKV_LLAMA) * HS


def _arr(n=1, dtype=np.float32):
    """A stand-in for a device array: only its type matters, nothing is launched."""
    return np.zeros(n, dtype=dtype)


def _launch_matmuls(module="matmul"):
    """Every product of a 124M step through one matmul module's launchers (the float32 one, or the
    tensor-core one, which has the same launchers)."""
    import importlib

    mm = importlib.import_module(f"numba_impl.kernels.{module}")
    f = _arr
    for OC, IC in ((3 * C, C), (C, C), (4 * C, C), (C, 4 * C)):  # c_attn, attn c_proj, c_fc, mlp c_proj
        mm.matmul_forward(f(), f(), f(), f(), BT, IC, OC)
        mm.matmul_backward(f(), f(), f(), f(), f(), f(), BT, IC, OC)
    mm.matmul_forward(f(), f(), f(), f(), BT, C, 4 * C, gelu_out=f())
    mm.matmul_forward(f(), f(), f(), f(), BT, C, C, residual=f(), residual_out=f())
    mm.matmul_forward(f(), f(), f(), f(), BT, 4 * C, C, residual=f(), residual_out=f())
    mm.matmul(f(), f(), f(), BT, V, C, "NT")  # logits = lnf @ wte^T
    mm.matmul(f(), f(), f(), BT, C, V, "NN", k_chunk=1024)  # dlnf = dlogits @ wte
    mm.matmul(f(), f(), f(), V, C, BT, "TN", accumulate=True)  # dwte += dlogits^T @ lnf


def _launch_attention():
    from numba_impl.kernels import attention

    f = _arr
    attention.attention_forward_flash(f(), f(), f(), B, T, C, NH)
    attention.attention_backward_flash(f(), f(), f(), f(), f(), f(), B, T, C, NH)


def _launch_memory_bound():
    from numba_impl.kernels import adamw, crossentropy, encoder, gelu, layernorm, residual

    f = _arr
    layernorm.layernorm_forward(f(), f(), f(), f(), f(), f(), BT, C, 1e-5)
    layernorm.layernorm_backward(f(), f(), f(), f(), f(), f(), f(), f(), BT, C)
    gelu.gelu_forward(f(), f(), BT * 4 * C)
    gelu.gelu_backward(f(), f(), f(), BT * 4 * C)
    residual.residual_forward(f(), f(), f(), BT * C)
    crossentropy.crossentropy(f(), f(), f(), _arr(1, np.int32), BT, V, 1.0 / BT)
    encoder.encoder_forward(f(), _arr(1, np.int32), f(), f(), B, T, C)
    i32 = _arr(1, np.int32)
    encoder.encoder_backward_sorted(f(), f(), f(), i32, i32, i32, BT, B, T, C)
    encoder.encoder_backward_chained(f(), f(), f(), i32, i32, i32, B, T, C)
    adamw.adamw_update(f(), f(), f(), f(), 124_000_000, 123_000_000, 1, 1e-3, 0.9, 0.95, 1e-8, 0.1)


def _launch_variants():
    """What the variants launch at llama-124m beyond GPT-2's kernels (a kernel GPT-2 also launches with
    the same argument types is compiled once, under its first group): RMSNorm, LayerNorm without bias,
    SwiGLU, RoPE, the embedding without wpe, the flash kernels of 12 query heads on 4 kv heads (built per
    group size: G=3), and the matmuls of the llama shapes without bias (c_attn to (NH + 2 NKV) HS = 1280,
    c_fc to 2H = 4608, mlp c_proj from H = 2304)."""
    from numba_impl.kernels import attention, encoder, layernorm, matmul, rmsnorm, rope, swiglu

    f = _arr
    i32 = _arr(1, np.int32)
    rmsnorm.rmsnorm_forward(f(), f(), f(), f(), BT, C, 1e-5)
    rmsnorm.rmsnorm_backward(f(), f(), f(), f(), f(), f(), BT, C)
    layernorm.layernorm_forward(f(), f(), f(), f(), f(), None, BT, C, 1e-5)  # LayerNorm with bias=False
    layernorm.layernorm_backward(f(), f(), None, f(), f(), f(), f(), f(), BT, C)
    swiglu.swiglu_forward(f(), f(), BT, H_LLAMA)
    swiglu.swiglu_backward(f(), f(), f(), BT, H_LLAMA)
    table = _arr(T * HS // 2)
    rope.rope_forward(f(), f(), table, table, B, T, NH, NKV_LLAMA, HS)
    dqkv = f()
    rope.rope_backward(dqkv, dqkv, table, table, B, T, NH, NKV_LLAMA, HS)  # in place, as the model does
    encoder.encoder_forward(f(), i32, f(), None, B, T, C)
    encoder.encoder_backward_chained(f(), None, f(), i32, i32, i32, B, T, C)
    attention.attention_forward_flash(f(), f(), f(), B, T, C, NH, n_kv_head=NKV_LLAMA)
    attention.attention_backward_flash(f(), f(), f(), f(), f(), f(), B, T, C, NH, n_kv_head=NKV_LLAMA)
    for OC, IC in ((W_LLAMA, C), (2 * H_LLAMA, C), (C, H_LLAMA), (C, C)):
        matmul.matmul_forward(f(), f(), f(), None, BT, IC, OC)
        matmul.matmul_backward(f(), f(), None, f(), f(), f(), BT, IC, OC)
    matmul.matmul_forward(f(), f(), f(), None, BT, H_LLAMA, C, residual=f(), residual_out=f())
    matmul.matmul_forward(f(), f(), f(), None, BT, C, C, residual=f(), residual_out=f())


# The released family's other sizes (weights.GPT2Config.preset): (C, NH) of gpt2-medium, -large, -xl.
FAMILY = ((1024, 16), (1280, 20), (1600, 25))


def _launch_sizes():
    """What GPT-2 medium, large and xl launch that 124M does not (B=1, T=1024): the kernels built per
    width (LayerNorm's row in registers, the matmuls' tiles chosen per shape, the embedding) and the
    flash kernels at 16, 20 and 25 heads of 64 (a kernel with 124M's argument types is compiled once)."""
    from numba_impl.kernels import attention, encoder, layernorm, matmul

    f = _arr
    i32 = _arr(1, np.int32)
    bt = T  # B = 1
    for c, nh in FAMILY:
        layernorm.layernorm_forward(f(), f(), f(), f(), f(), f(), bt, c, 1e-5)
        layernorm.layernorm_backward(f(), f(), f(), f(), f(), f(), f(), f(), bt, c)
        encoder.encoder_backward_chained(f(), f(), f(), i32, i32, i32, 1, T, c)
        attention.attention_forward_flash(f(), f(), f(), 1, T, c, nh)
        attention.attention_backward_flash(f(), f(), f(), f(), f(), f(), 1, T, c, nh)
        for oc, ic in ((3 * c, c), (c, c), (4 * c, c), (c, 4 * c)):
            matmul.matmul_forward(f(), f(), f(), f(), bt, ic, oc)
            matmul.matmul_backward(f(), f(), f(), f(), f(), f(), bt, ic, oc)
        matmul.matmul_forward(f(), f(), f(), f(), bt, c, 4 * c, gelu_out=f())
        matmul.matmul_forward(f(), f(), f(), f(), bt, 4 * c, c, residual=f(), residual_out=f())
        matmul.matmul(f(), f(), f(), bt, V, c, "NT")  # logits
        matmul.matmul(f(), f(), f(), bt, c, V, "NN", k_chunk=1024)  # dlnf
        matmul.matmul(f(), f(), f(), V, c, bt, "TN", accumulate=True)  # dwte


# What the model launches, grouped by file. A launcher that fails here (a changed signature) is
# reported as a failed row, not skipped.
LAUNCHES = {
    "matmul": _launch_matmuls,
    "matmul-3xtf32": lambda: _launch_matmuls("matmul_3xtf32"),
    "attention": _launch_attention,
    "memory-bound": _launch_memory_bound,
    "variants": _launch_variants,
    "sizes": _launch_sizes,
}


# ----------------------------------------------------------------------------- recording
class Launch:
    """One recorded kernel launch: the dispatcher, the argument types, the block's thread count."""

    def __init__(self, group, dispatcher, argtypes, threads):
        self.group, self.dispatcher, self.argtypes, self.threads = group, dispatcher, argtypes, threads

    @property
    def name(self) -> str:
        return self.dispatcher.py_func.__name__

    @property
    def config(self) -> str:
        """The compile-time constants a kernel factory froze into this kernel (layout, tile, ...)."""
        fn = self.dispatcher.py_func
        cells = zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=True)
        keep = [(k, c.cell_contents) for k, c in cells if k in _CONFIG_NAMES]
        return " ".join(f"{k}={v}" for k, v in keep)

    def key(self):
        return (self.dispatcher.py_func, self.argtypes, self.threads)


# Factory constants worth showing in the table (the tile and variant of a kernel built per shape).
_CONFIG_NAMES = ("A_T", "B_T", "BM", "BN", "BK", "EPI", "KC_STEPS", "fuse_dbias", "HS", "R", "K", "C", "G")


def _threads(blockdim) -> int:
    if isinstance(blockdim, int | np.integer):
        return int(blockdim)
    return int(np.prod([int(d) for d in blockdim]))


def _no_driver_device():
    """Make numba compile device functions for compute capability 9.0 without asking a driver."""
    import types

    import numba.cuda.dispatcher as dispatcher_module

    dispatcher_module.get_current_device = lambda: types.SimpleNamespace(compute_capability=CC)


def record_launches(launches=None) -> tuple[list[Launch], list[tuple[str, str]]]:
    """Run each group's launchers with kernel launches recorded instead of run (and cuda.to_device /
    device_array answered with numpy arrays). Returns the unique launches and the groups that failed."""
    from numba import typeof
    from numba.cuda.dispatcher import CUDADispatcher

    launches = LAUNCHES if launches is None else launches
    recorded: dict = {}
    failures = []
    group = [None]

    def getitem(self, config):
        def launch(*args):
            argtypes = tuple(typeof(a) for a in args)
            rec = Launch(group[0], self, argtypes, _threads(config[1]))
            recorded.setdefault(rec.key(), rec)

        return launch

    saved = (CUDADispatcher.__getitem__, cuda.to_device, cuda.device_array)
    CUDADispatcher.__getitem__ = getitem
    cuda.to_device = lambda a, *args, **kwargs: np.asarray(a)
    cuda.device_array = lambda shape, dtype=np.float32, *args, **kwargs: np.zeros(shape, dtype)
    try:
        for name, run in launches.items():
            group[0] = name
            try:
                run()
            except Exception as e:  # a launcher that no longer matches its line here
                failures.append((name, f"{type(e).__name__}: {e}"))
    finally:
        CUDADispatcher.__getitem__, cuda.to_device, cuda.device_array = saved
    return list(recorded.values()), failures


# ----------------------------------------------------------------------------- ptxas
def find_ptxas() -> str | None:
    """CUDA's ptxas on the PATH (or /usr/local/cuda/bin), else the one in the nvidia-cuda-nvcc wheel."""
    found = shutil.which("ptxas") or shutil.which("ptxas", path="/usr/local/cuda/bin")
    if found:
        return found
    try:
        import nvidia

        for root in nvidia.__path__:
            for candidate in Path(root).glob("**/bin/ptxas"):
                return str(candidate)
    except ImportError:
        pass
    return None


_RESOURCE = re.compile(r"Used (\d+) registers")
_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(text: str) -> dict:
    """Registers, stack frame, spill stores/loads and static shared memory from `ptxas -v` output."""
    out = {"registers": None, "stack": 0, "spill_stores": 0, "spill_loads": 0, "shared": 0}
    if m := _RESOURCE.search(text):
        out["registers"] = int(m.group(1))
    if m := _SPILLS.search(text):
        out["stack"], out["spill_stores"], out["spill_loads"] = map(int, m.groups())
    if m := _SMEM.search(text):
        out["shared"] = int(m.group(1))
    return out


def register_limit_ok(registers: int, threads: int) -> bool:
    """Registers are allocated per warp in units of 256: do the block's warps fit the register file?"""
    per_warp = math.ceil(registers * 32 / 256) * 256
    return registers <= MAX_REGISTERS and per_warp * math.ceil(threads / 32) <= REGISTER_FILE


def check_kernel(launch: Launch, ptxas: str) -> dict:
    """Compile one recorded launch to PTX for sm_90, assemble it with ptxas -v, judge the report."""
    row = {"group": launch.group, "kernel": launch.name, "config": launch.config, "threads": launch.threads,
           "signature": ", ".join(str(t) for t in launch.argtypes)}  # fmt: skip
    opts = launch.dispatcher.targetoptions
    try:
        ptx, _ = cuda.compile_ptx(launch.dispatcher.py_func, launch.argtypes, cc=CC,
                                  lineinfo=bool(opts.get("lineinfo")), fastmath=bool(opts.get("fastmath")))  # fmt: skip
    except Exception as e:
        return row | {"ok": False, "problems": [f"compile_ptx failed: {type(e).__name__}: {e}"]}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        Path(path).write_text(ptx)
        cmd = [ptxas, f"-arch={ARCH}", "-v", path, "-o", os.path.join(tmp, "kernel.cubin")]
        if opts.get("max_registers"):
            cmd.insert(1, f"-maxrregcount={opts['max_registers']}")
        proc = subprocess.run(cmd, capture_output=True, text=True)
    report = parse_ptxas(proc.stdout + proc.stderr)
    row |= report
    row["f64_instructions"] = len(re.findall(r"\.f64\b", ptx))
    problems = []
    if proc.returncode != 0:
        errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "error" in line.lower()]
        problems.append("ptxas refused it: " + " | ".join(errors or [f"exit {proc.returncode}"]))
    if report["spill_stores"] or report["spill_loads"]:
        problems.append(f"spills {report['spill_stores']} B stored / {report['spill_loads']} B loaded")
    if report["shared"] > STATIC_SHARED_LIMIT:
        problems.append(f"{report['shared']} B static shared memory > {STATIC_SHARED_LIMIT} (0xc000)")
    if report["registers"] is not None and not register_limit_ok(report["registers"], launch.threads):
        problems.append(f"{report['registers']} registers x {launch.threads} threads exceed the register file")
    if proc.returncode == 0 and report["registers"] is None:
        problems.append("no resource report from ptxas -v")
    return row | {"ok": not problems, "problems": problems}


def _check_one(args):
    index, ptxas = args
    return check_kernel(_LAUNCHES_FOR_WORKERS[index], ptxas)


_LAUNCHES_FOR_WORKERS: list[Launch] = []


def check_all(launches: list[Launch], ptxas: str, workers: int | None = None) -> list[dict]:
    """check_kernel over every launch, in parallel processes (forked: the recorded kernels are
    closures, which do not pickle) where the machine has more than one core."""
    global _LAUNCHES_FOR_WORKERS
    _LAUNCHES_FOR_WORKERS = launches
    workers = workers or min(len(launches), os.cpu_count() or 1, 4)
    jobs = [(i, ptxas) for i in range(len(launches))]
    if workers <= 1 or sys.platform != "linux":
        return [_check_one(j) for j in jobs]
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return pool.map(_check_one, jobs, chunksize=1)


def format_table(rows: list[dict], failures: list[tuple[str, str]]) -> str:
    head = f"{'group':<15}{'kernel':<31}{'thr':>5}{'regs':>6}{'stack':>7}{'spill':>7}{'smem':>7}  verdict  config"
    lines = [head, "-" * len(head)]
    for r in rows:
        spill = r.get("spill_stores", 0) + r.get("spill_loads", 0)
        verdict = "ok" if r["ok"] else "FAIL: " + "; ".join(r["problems"])
        lines.append(
            f"{r['group']:<15}{r['kernel'][:30]:<31}{r['threads']:>5}{r.get('registers') or '-':>6}"
            f"{r.get('stack', '-'):>7}{spill:>7}{r.get('shared', '-'):>7}  {verdict}  {r['config']}"
        )
    for group, error in failures:
        lines.append(f"{group:<15}{'(launcher failed)':<31}  FAIL: {error}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows as JSON to this file")
    parser.add_argument("--workers", type=int, default=None, help="parallel compile processes")
    args = parser.parse_args(argv)
    if SIMULATOR:
        print("error: the CUDA simulator is on; run with NUMBA_ENABLE_CUDASIM=0 (no GPU is needed)", file=sys.stderr)
        return 2
    ptxas = find_ptxas()
    if ptxas is None:
        print("error: no ptxas found (CUDA toolkit, or pip install nvidia-cuda-nvcc)", file=sys.stderr)
        return 2
    _no_driver_device()
    launches, failures = record_launches()
    rows = check_all(launches, ptxas, args.workers)
    print(format_table(rows, failures))
    if args.json:
        Path(args.json).write_text(json.dumps({"ptxas": ptxas, "rows": rows, "launcher_failures": failures}, indent=1))
    bad = [r for r in rows if not r["ok"]]
    print(f"\n{len(rows)} kernels compiled for {ARCH}: {len(bad) + len(failures)} problems")
    return 1 if bad or failures else 0


if __name__ == "__main__":
    sys.exit(main())
