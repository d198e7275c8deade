"""The 3xTF32 tensor-core matmul on a GPU: is it right, how accurate, how fast.

    NUMBA_ENABLE_CUDASIM=0 python3 scripts/numba_3xtf32_check.py OUT.json [--commit HASH] [--quick]
    NUMBA_ENABLE_CUDASIM=0 python3 scripts/numba_3xtf32_check.py --ptxas [OUT.json]  # no GPU needed
    NUMBA_ENABLE_CUDASIM=0 python3 scripts/numba_3xtf32_check.py --sass OUT.json  # no GPU; cuobjdump + nvdisasm

GPU mode writes one JSON file (git commit, date, device, versions) with:
- "mma": one m16n8k8 through numba_impl/mma.py against NumPy (TF32-rounded inputs, float64 sum);
- "shapes": every matmul of GPT-2 124M's forward and backward at B=4, T=1024, each with
  max|d|/max|ref| and ||d||/||ref|| against a float64 product (torch, on the GPU) for
  numba 3xTF32 (both accumulate modes on the long-K shapes), numba float32 (kernels/matmul.py),
  torch float32 with TF32 off (cuBLAS fp32) and torch with TF32 on; and the median time of
  numba 3xTF32 (default tile; with --sweep, other tiles on three shapes), numba float32, torch fp32
  and torch TF32 (CUDA events).
--sass mode writes, per layout of the default tile, the instruction mix of the kernel's main loop
(SASS from cuobjdump: the longest backward branch around the HMMAs, both global-load paths
included) as JSON, with the git commit and the tools' versions.
--ptxas mode prints, as JSON, ptxas' report (registers, stack, spills, shared memory) of every
layout of the kernel (default tile; with --sweep, the sweep's tiles too) compiled for sm_90.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# B=4, T=1024, C=768, V=50257: (name, layout, M, N, K, k_chunk) as the model calls them
BT, C, V = 4096, 768, 50257
SHAPES = [
    ("fwd qkv", "NN", BT, 3 * C, C, None),
    ("fwd attn proj", "NN", BT, C, C, None),
    ("fwd fc", "NN", BT, 4 * C, C, None),
    ("fwd mlp proj", "NN", BT, C, 4 * C, None),
    ("fwd head (logits)", "NT", BT, V, C, None),
    ("bwd head dlnf", "NN", BT, C, V, 1024),
    ("bwd head dwte", "TN", V, C, BT, None),
    ("bwd mlp proj dx", "NT", BT, 4 * C, C, None),
    ("bwd mlp proj dW", "TN", 4 * C, C, BT, None),
    ("bwd fc dx", "NT", BT, C, 4 * C, None),
    ("bwd fc dW", "TN", C, 4 * C, BT, None),
    ("bwd attn proj dx", "NT", BT, C, C, None),
    ("bwd attn proj dW", "TN", C, C, BT, None),
    ("bwd qkv dx", "NT", BT, C, 3 * C, None),
    ("bwd qkv dW", "TN", C, 3 * C, BT, None),
]
CHAINED_ON = ("bwd head dlnf", "bwd head dwte", "fwd mlp proj")  # the long-K sums, where accumulation order shows
SWEEP_ON = ("fwd fc", "fwd head (logits)", "bwd fc dW")  # one shape per layout


def ptxas_reports(sweep: bool = False) -> list[dict]:
    from numba import types

    from numba_impl._compat import cuda
    from numba_impl.kernels import matmul_3xtf32 as m3

    f32 = types.float32[::1]
    sig = (f32,) * 6 + (types.int64,) * 5 + (types.boolean, types.boolean)
    rows = []
    for layout in m3.LAYOUTS:
        for tile in (m3.GPU_TILE,) + (m3.SWEEP_TILES if sweep else ()):
            ptx, _ = cuda.compile_ptx(m3.matmul_3xtf32_kernel(layout, *tile).py_func, sig, cc=(9, 0))
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "k.ptx")
                with open(path, "w") as f:
                    f.write(ptx)
                cmd = ["ptxas", "-arch=sm_90", "-v", path, "-o", os.devnull]
                done = subprocess.run(cmd, capture_output=True, text=True)
            report = done.stderr + done.stdout
            num = lambda pattern: int(re.search(pattern, report).group(1)) if re.search(pattern, report) else None  # noqa: E731
            rows.append(
                dict(
                    layout=layout,
                    tile=list(tile),
                    ptxas_rc=done.returncode,
                    mma=ptx.count("mma.sync"),
                    f64=ptx.count(".f64"),
                    registers=num(r"Used (\d+) registers"),
                    stack=num(r"(\d+) bytes stack frame"),
                    spill_stores=num(r"(\d+) bytes spill stores"),
                    spill_loads=num(r"(\d+) bytes spill loads"),
                    smem=num(r"(\d+) bytes smem"),
                    report=report.strip().splitlines()[-3:],
                )  # fmt: skip
            )
    return rows


def _cubin(layout: str, tile, tmp: str) -> str:
    """Compile one layout of the kernel for sm_90 (Numba's PTX, then ptxas) into tmp; the cubin's path."""
    from numba import types

    from numba_impl._compat import cuda
    from numba_impl.kernels import matmul_3xtf32 as m3

    f32 = types.float32[::1]
    sig = (f32,) * 6 + (types.int64,) * 5 + (types.boolean, types.boolean)
    ptx, _ = cuda.compile_ptx(m3.matmul_3xtf32_kernel(layout, *tile).py_func, sig, cc=(9, 0))
    src, cubin = os.path.join(tmp, f"{layout}.ptx"), os.path.join(tmp, f"{layout}.cubin")
    with open(src, "w") as f:
        f.write(ptx)
    subprocess.run(["ptxas", "-arch=sm_90", src, "-o", cubin], check=True, capture_output=True)
    return cubin


def sass_main_loop_mix(args) -> dict:
    """Opcode counts of the main loop of each layout's kernel (default tile), from cuobjdump's SASS."""
    from numba_impl.kernels import matmul_3xtf32 as m3

    line = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
    what = (
        "opcode counts between the target of the longest backward branch that encloses HMMAs and that "
        "branch (the K loop: both global-load paths, the staging, the mma steps)"
    )
    result = dict(commit=args.commit, date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                  tile=list(m3.GPU_TILE), cuobjdump=_tool_version("cuobjdump"), ptxas=_tool_version("ptxas"),
                  what=what, layouts={})  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for layout, smem in [(lay, smem) for smem in m3.SMEM_LAYOUTS for lay in m3.LAYOUTS]:
            tile = m3.GPU_TILE[:6] + (smem,)
            sass = subprocess.run(["cuobjdump", "-sass", _cubin(layout, tile, tmp)], capture_output=True,
                                  text=True, check=True).stdout  # fmt: skip
            code = [(int(m.group(1), 16), m.group(3), m.group(4)) for m in line.finditer(sass)]
            hmma = [addr for addr, op, _ in code if op.startswith("HMMA")]
            loops = []
            for addr, op, rest in code:
                target = re.search(r"0x([0-9a-f]+)", rest)
                if op.startswith("BRA") and target and int(target.group(1), 16) < addr:
                    lo = int(target.group(1), 16)
                    if any(lo <= h <= addr for h in hmma):
                        loops.append((addr - lo, lo, addr))
            _, lo, hi = max(loops)
            mix: dict[str, int] = {}
            for addr, op, _ in code:
                if lo <= addr <= hi:
                    name = op.split(".")[0] if not op.startswith("IMAD.MOV") else "IMAD.MOV"
                    mix[name] = mix.get(name, 0) + 1
            total = sum(mix.values())
            result["layouts"][f"{layout} SMEM={smem}"] = dict(instructions=total, hmma=mix.get("HMMA", 0),
                                             per_hmma=total / max(1, mix.get("HMMA", 0)),
                                             mix=dict(sorted(mix.items(), key=lambda kv: -kv[1])))  # fmt: skip
    return result


def _tool_version(tool: str) -> str | None:
    done = subprocess.run([tool, "--version"], capture_output=True, text=True)
    return done.stdout.strip().splitlines()[-1] if done.returncode == 0 else None


def check_mma() -> dict:
    from numba_impl._compat import cuda, kernel
    from numba_impl.mma import mma_tf32_m16n8k8, tf32_round

    @kernel
    def one_mma(d, a, b, c):
        lane = cuda.threadIdx.x
        g, t = lane // 4, lane % 4
        d0, d1, d2, d3 = mma_tf32_m16n8k8(
            tf32_round(a[g * 8 + t]), tf32_round(a[(g + 8) * 8 + t]),
            tf32_round(a[g * 8 + t + 4]), tf32_round(a[(g + 8) * 8 + t + 4]),
            tf32_round(b[t * 8 + g]), tf32_round(b[(t + 4) * 8 + g]),
            c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t], c[(g + 8) * 8 + 2 * t + 1],
        )  # fmt: skip
        d[g * 8 + 2 * t], d[g * 8 + 2 * t + 1] = d0, d1
        d[(g + 8) * 8 + 2 * t], d[(g + 8) * 8 + 2 * t + 1] = d2, d3

    r = np.random.default_rng(0)
    A, B, Cm = (r.standard_normal(s).astype(np.float32) for s in ((16, 8), (8, 8), (16, 8)))
    d = cuda.to_device(np.full(128, np.nan, np.float32))
    one_mma[1, 32](d, cuda.to_device(A.ravel()), cuda.to_device(B.ravel()), cuda.to_device(Cm.ravel()))
    tf32 = lambda x: ((x.view(np.uint32).astype(np.uint64) + 0x1000) & 0xFFFFE000).astype(np.uint32).view(np.float32)  # noqa: E731
    ref = tf32(A).astype(np.float64) @ tf32(B).astype(np.float64) + Cm
    got = d.copy_to_host().reshape(16, 8)
    truncated = (A.view(np.uint32) & 0xFFFFE000).view(np.float32).astype(np.float64) @ (
        B.view(np.uint32) & 0xFFFFE000
    ).view(np.float32) + Cm
    return dict(
        max_rel=float(np.abs(got - ref).max() / np.abs(ref).max()),
        max_rel_vs_truncated_inputs=float(np.abs(got - truncated).max() / np.abs(truncated).max()),
        all_written=bool(np.isfinite(got).all()),
    )


def gpu_run(args) -> dict:
    import numba
    import torch

    from numba_impl._compat import cuda
    from numba_impl.kernels import matmul as mf32
    from numba_impl.kernels import matmul_3xtf32 as m3

    dev = torch.device("cuda")
    result = dict(
        commit=args.commit, date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        device=torch.cuda.get_device_name(0), torch=torch.__version__, numba=numba.__version__,
        numba_cuda=_version("numba-cuda"), numpy=np.__version__, cuda_runtime=torch.version.cuda,
        setup="B=4, T=1024, GPT-2 124M matmul shapes; inputs standard normal (fresh per shape); reference: "
        "float64 product on the GPU; errors max|d|/max|ref| and ||d||2/||ref||2; time: median of CUDA-event "
        "timings after warm-up",
    )  # fmt: skip
    result["mma"] = check_mma()
    print("mma", result["mma"], flush=True)

    def timed(fn, reps):
        fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop) * 1e3)
        return float(np.median(times))

    def errors(got, ref):
        d = got.double() - ref
        return dict(max_rel=float(d.abs().max() / ref.abs().max()), l2_rel=float(d.norm() / ref.norm()))

    shapes = [s for s in SHAPES if not args.quick or s[0] in ("fwd fc", "bwd head dlnf", "bwd fc dW")]
    result["shapes"] = []
    g = torch.Generator(device=dev).manual_seed(1)
    for name, layout, M, N, K, k_chunk in shapes:
        a = torch.randn(M * K, device=dev, generator=g)
        b = torch.randn(K * N, device=dev, generator=g)
        A = a.view(K, M).t() if layout[0] == "T" else a.view(M, K)
        Bm = b.view(N, K).t() if layout[1] == "T" else b.view(K, N)
        ref = A.double() @ Bm.double()
        out = torch.empty(M * N, device=dev)
        na, nb, nout = cuda.as_cuda_array(a), cuda.as_cuda_array(b), cuda.as_cuda_array(out)
        row = dict(name=name, layout=layout, M=M, N=N, K=K, k_chunk=k_chunk, gflop=2 * M * N * K / 1e9)
        reps = 5 if M * N * K > 5e10 else 20

        def run3(tile=None, mode="separate"):
            return lambda: m3.matmul(nout, na, nb, M, N, K, layout, tile=tile, k_chunk=k_chunk, accumulate_mode=mode)

        modes = ["separate"] + (["chained"] if name in CHAINED_ON else [])
        for mode in modes:
            out.fill_(float("nan"))
            run3(mode=mode)()
            torch.cuda.synchronize()
            row[f"3xtf32_{mode}"] = errors(out.view(M, N), ref)
        row["us_3xtf32"] = timed(run3(m3.GPU_TILE), reps)
        if args.sweep and name in SWEEP_ON:
            row["sweep_us"], row["sweep_err"] = {}, {}
            for tile in m3.SWEEP_TILES:  # each tile's product checked (poisoned output), then timed
                out.fill_(float("nan"))
                run3(tile)()
                torch.cuda.synchronize()
                row["sweep_err"][str(list(tile))] = errors(out.view(M, N), ref)
                row["sweep_us"][str(list(tile))] = timed(run3(tile), reps)
        if not args.no_numba_f32:
            f32 = lambda: mf32.matmul(nout, na, nb, M, N, K, layout, k_chunk=k_chunk)  # noqa: E731
            out.fill_(float("nan"))
            f32()
            torch.cuda.synchronize()
            row["numba_fp32"] = errors(out.view(M, N), ref)
            row["us_numba_fp32"] = timed(f32, reps)
        for label, allow in (("torch_fp32", False), ("torch_tf32", True)):
            torch.backends.cuda.matmul.allow_tf32 = allow
            row[label] = errors(A @ Bm, ref)
            row[f"us_{label}"] = timed(lambda: torch.mm(A, Bm, out=out.view(M, N)), reps)  # noqa: B023
        torch.backends.cuda.matmul.allow_tf32 = False
        row["tflops_3xtf32"] = row["gflop"] / row["us_3xtf32"] * 1e3  # GFLOP per microsecond = PFLOP/s
        row["tflops_torch_fp32"] = row["gflop"] / row["us_torch_fp32"] * 1e3
        row["ratio_3xtf32_over_torch_fp32"] = row["us_3xtf32"] / row["us_torch_fp32"]
        row["tile_3xtf32"] = list(m3.GPU_TILE)
        result["shapes"].append(row)
        with open(args.out, "w") as f:  # after every shape: a run cut short keeps what it measured
            json.dump(result, f, indent=1)
        nan = dict(max_rel=float("nan"))
        print(
            f"{name:18s} {layout} {M:6d}x{N:6d}x{K:6d}  err max 3x {row['3xtf32_separate']['max_rel']:.1e} "
            f"f32 {row.get('numba_fp32', nan)['max_rel']:.1e} cuBLAS {row['torch_fp32']['max_rel']:.1e} "
            f"tf32 {row['torch_tf32']['max_rel']:.1e} | us 3x {row['us_3xtf32']:.0f} "
            f"f32 {row.get('us_numba_fp32', nan['max_rel']):.0f} "
            f"cuBLAS {row['us_torch_fp32']:.0f} tf32 {row['us_torch_tf32']:.0f}",
            flush=True,
        )
    return result


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="?", help="JSON file to write (GPU mode)")
    p.add_argument("--commit", default=None, help="git commit of the measured code")
    p.add_argument("--ptxas", action="store_true", help="print ptxas' report of every kernel variant (no GPU)")
    p.add_argument("--sass", action="store_true", help="write the main loop's SASS instruction mix (no GPU)")
    p.add_argument("--quick", action="store_true", help="three shapes only")
    p.add_argument("--sweep", action="store_true", help="also time other tiles (GPU) / report them (--ptxas)")
    p.add_argument("--no-numba-f32", action="store_true", help="skip the float32 SIMT kernel's rows (GPU)")
    args = p.parse_args()
    if args.ptxas:
        rows = ptxas_reports(args.sweep)
        if args.out:  # with the commit and date, as a results file
            stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
            with open(args.out, "w") as f:
                json.dump(dict(commit=args.commit, date=stamp, ptxas=_tool_version("ptxas"), kernels=rows), f, indent=1)
        print(json.dumps(rows, indent=1))
        return 0
    if not args.out:
        print("error: give the JSON file to write (or --ptxas)", file=sys.stderr)
        return 2
    if args.sass:
        result = sass_main_loop_mix(args)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        for layout, row in result["layouts"].items():
            print(layout, row["instructions"], "instructions,", row["hmma"], "HMMA:", f"{row['per_hmma']:.1f} per HMMA",
                  {k: v for k, v in list(row["mix"].items())[:8]})  # fmt: skip
        return 0
    result = gpu_run(args)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    ok = result["mma"]["max_rel"] <= 1e-6 and result["mma"]["all_written"]
    ok = ok and all(r["3xtf32_separate"]["l2_rel"] <= 1e-5 for r in result["shapes"])
    ok = ok and all(e["l2_rel"] <= 1e-5 for r in result["shapes"] for e in r.get("sweep_err", {}).values())
    print("verdict:", "ok" if ok else "FAILED (mma max_rel > 1e-6 or a 3xTF32 product off by more than 1e-5 L2)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
