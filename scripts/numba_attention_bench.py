"""Flash attention and the memory-bound kernels of numba_impl on a GPU: correctness and speed.

    NUMBA_ENABLE_CUDASIM=0 python3 scripts/numba_attention_bench.py OUT.json
    NUMBA_ENABLE_CUDASIM=1 python3 scripts/numba_attention_bench.py OUT.json --smoke   # tiny shapes, CPU

Sections (the JSON is rewritten after each, so a run cut short keeps what it measured):
  copy         the bandwidth ceiling: a 1 GiB device-to-device copy through torch (bytes read + written)
  correctness  flash vs naive attention vs the float64 NumPy reference (reference/attention.py) at
               B=4 T=1024 C=768 NH=12 and at ragged shapes (odd head counts, T not a tile multiple,
               HS = 80 which needs smaller tiles); outputs poisoned with NaN first; whether the flash
               backward run twice is bitwise equal (the fused variant's atomic adds make it not);
               torch SDPA float32's error on the same case for scale
  attention    time of forward and backward at B=4 T=1024 C=768 NH=12: flash (default tiles and
               variants), naive, torch SDPA float32 (math and efficient backends, TF32 off)
  attention_variants  every flash variant (FWD_VARIANTS, BWD_VARIANTS: block shapes, 16-byte shared
               loads, the fused backward) timed at the same shape; their correctness (against the
               naive twin and the reference, at every shape above) is in the correctness rows
  memory       LayerNorm fwd/bwd, GELU fwd/bwd, residual add, cross-entropy fwd+bwd at GPT-2 124M's
               B=4 T=1024 shapes: fast vs naive twin vs torch, with the bytes each op must move
               (every input read once, every output written once) over its time, as a fraction
               of the copy bandwidth; input sets rotate so that no timing reads from the 60 MB L2.
               Each timing brackets one Python call, so Numba's host-side launch cost is in it.
  graphed      the fast memory-bound kernels and the flash kernels inside CUDA graph replays
               (LAUNCHES_PER_GRAPH launches per replay): the kernels' own time
Timing: CUDA events around each call, median of REPEATS after WARMUP calls.
--sections a,b,... runs only those sections (names as above; default all).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from numba_impl._compat import SIMULATOR, cuda  # noqa: E402  (the numpy>=2.5 alias first)
from numba_impl.kernels import attention, crossentropy, gelu, layernorm, residual  # noqa: E402
from numba_impl.kernels.attention import FlashTiles  # noqa: E402
from reference import attention as ref_attention  # noqa: E402
from weights.provenance import provenance  # noqa: E402

SMOKE = "--smoke" in sys.argv
WARMUP, REPEATS = (1, 2) if SMOKE else (3, 20)
ROTATE_BYTES = 1 << 20 if SMOKE else 256 << 20  # input sets per timing cover >= this many bytes (> 4x L2)
START = time.time()
BUDGET_S = 200  # stop starting new timings past this (the run's limit is 240 s)

# shapes: (B, T, C, NH)
MAIN = (1, 9, 16, 2) if SMOKE else (4, 1024, 768, 12)
RAGGED = [(1, 11, 12, 3)] if SMOKE else [(3, 777, 704, 11), (2, 517, 480, 6), (1, 1, 768, 12)]
# Flash variants: each is checked (against the naive twin and the float64 reference, at every
# correctness shape, fitted to its head size by attention.fit_flash_tiles) and timed at MAIN.
FWD_VARIANTS = (
    [FlashTiles(1, 4, 1, 1), FlashTiles(1, 4, 1, 1, vec=True)]
    if SMOKE
    else [
        FlashTiles(warps=4, lanes=8, rt=4, ct=4),  # 64 x 32, scalar shared loads
        FlashTiles(warps=4, lanes=8, rt=4, ct=4, vec=True),  # the same with 16-byte shared loads
        FlashTiles(warps=2, lanes=8, rt=4, ct=4, vec=True),  # 32 x 32
    ]
)
BWD_VARIANTS = (
    [FlashTiles(1, 4, 1, 1), FlashTiles(1, 4, 1, 1, vec=True), FlashTiles(1, 4, 1, 2, vec=True, fused=True)]
    if SMOKE
    else [
        FlashTiles(warps=4, lanes=8, rt=2, ct=4),  # two passes, scalar shared loads
        FlashTiles(warps=4, lanes=8, rt=2, ct=4, vec=True),  # two passes, 16-byte shared loads
        FlashTiles(warps=2, lanes=8, rt=4, ct=4, vec=True),
        FlashTiles(warps=8, lanes=8, rt=1, ct=4, vec=True),
        FlashTiles(warps=4, lanes=8, rt=2, ct=4, vec=True, fused=True),  # one kernel, dq by atomics
        FlashTiles(warps=2, lanes=8, rt=4, ct=4, vec=True, fused=True),
        FlashTiles(warps=8, lanes=8, rt=1, ct=4, vec=True, fused=True),
    ]
)


def sources_sha256() -> dict:
    files = [
        "numba_impl/_compat.py",
        *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "numba_impl/kernels").glob("*.py")),
    ]
    return {f: hashlib.sha256((ROOT / f).read_bytes()).hexdigest()[:16] for f in files}


try:
    import torch
    import torch.nn.functional as F

    TORCH_GPU = torch.cuda.is_available() and not SIMULATOR
except ImportError:
    torch = None
    TORCH_GPU = False


def sync():
    if not SIMULATOR:
        cuda.synchronize()


def timed(fn, n_sets=1, repeats=REPEATS, warmup=WARMUP) -> dict:
    """Median / min / max milliseconds of fn(k) (k = which input set), CUDA events around each call."""
    for i in range(warmup):
        fn(i % n_sets)
    sync()
    times = []
    for i in range(repeats):
        if TORCH_GPU:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn(i % n_sets)
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn(i % n_sets)
            sync()
            times.append(1e3 * (time.perf_counter() - t0))
    return {
        "median_ms": float(np.median(times)),
        "min_ms": float(min(times)),
        "max_ms": float(max(times)),
        "n": repeats,
    }


def over_budget() -> bool:
    return time.time() - START > BUDGET_S


def max_rel(a, ref) -> float:
    a = np.asarray(a, np.float64)
    if not np.isfinite(a).all():
        return float("nan")
    return float(np.abs(a - ref).max() / np.abs(ref).max())


def dev(a, dtype=np.float32):
    return cuda.to_device(np.ascontiguousarray(a, dtype=dtype).ravel())


def nan_dev(n):
    return cuda.to_device(np.full(n, np.nan, np.float32))


def n_sets(set_bytes: int) -> int:
    return max(1, min(8, math.ceil(ROTATE_BYTES / set_bytes)))


# ----------------------------------------------------------------------------- attention helpers
def run_flash(qkv_d, dout_d, B, T, C, NH, fwd_tiles=None, bwd_tiles=None):
    out, lse = nan_dev(B * T * C), nan_dev(B * NH * T)
    attention.attention_forward_flash(out, lse, qkv_d, B, T, C, NH, tiles=fwd_tiles)
    dqkv, delta = nan_dev(B * T * 3 * C), nan_dev(B * NH * T)
    attention.attention_backward_flash(dqkv, delta, dout_d, out, lse, qkv_d, B, T, C, NH, tiles=bwd_tiles)
    return out, lse, dqkv, delta


def run_naive(qkv_d, dout_d, B, T, C, NH):
    out = nan_dev(B * T * C)
    sq = [cuda.device_array(B * NH * T * T, np.float32) for _ in range(4)]
    attention.attention_forward_naive(out, sq[0], sq[1], qkv_d, B, T, C, NH)
    dqkv = nan_dev(B * T * 3 * C)
    attention.attention_backward_naive(dqkv, sq[2], sq[3], dout_d, sq[1], qkv_d, B, T, C, NH)
    return out, dqkv


def torch_sdpa(qkv, B, T, C, NH, dtype, device):
    """out (B,T,C) and the leaf qkv tensor, causal SDPA as GPT-2 uses it."""
    x = torch.tensor(qkv, dtype=dtype, device=device, requires_grad=True)
    q, k, v = x.split(C, dim=2)
    q, k, v = (t.view(B, T, NH, C // NH).transpose(1, 2) for t in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return y.transpose(1, 2).reshape(B, T, C), x


def variant_correctness(qkv_d, dout_d, B, T, C, NH, ref_out, ref_dqkv, n_out, n_dqkv, out, lse):
    """Every forward and backward variant on one shape (NaN-poisoned outputs): error against the float64
    reference and the naive twin (None where the naive kernels were not run); backward variants start
    from the default forward's out and lse and are run twice (bitwise repeatable or not)."""
    HS = C // NH
    rows = []
    for tiles in FWD_VARIANTS:
        fitted = attention.fit_flash_tiles(HS, tiles, ("forward",))
        o, ls = nan_dev(B * T * C), nan_dev(B * NH * T)
        attention.attention_forward_flash(o, ls, qkv_d, B, T, C, NH, tiles=fitted)
        o = o.copy_to_host()
        rows.append({
            "pass": "forward", "tiles": tiles._asdict(), "fitted": fitted._asdict(),
            "out_vs_ref64": max_rel(o.reshape(ref_out.shape), ref_out),
            "out_vs_naive": None if n_out is None else max_rel(o, n_out.astype(np.float64)),
            "all_written": bool(np.isfinite(o).all()),
        })  # fmt: skip
    for tiles in BWD_VARIANTS:
        fitted = attention.fit_flash_tiles(HS, tiles, ("dq", "dkv"))
        results = []
        for _ in range(2):
            dq, delta = nan_dev(B * T * 3 * C), nan_dev(B * NH * T)
            attention.attention_backward_flash(dq, delta, dout_d, out, lse, qkv_d, B, T, C, NH, tiles=fitted)
            results.append(dq.copy_to_host())
        d = results[0]
        rows.append({
            "pass": "backward", "tiles": tiles._asdict(), "fitted": fitted._asdict(),
            "dqkv_vs_ref64": max_rel(d.reshape(ref_dqkv.shape), ref_dqkv),
            "dqkv_vs_naive": None if n_dqkv is None else max_rel(d, n_dqkv.astype(np.float64)),
            "all_written": bool(np.isfinite(d).all()),
            "bitwise_repeatable": bool(np.array_equal(results[0], results[1])),
        })  # fmt: skip
    return rows


def correctness(report):
    res = []
    for B, T, C, NH in [MAIN, *RAGGED]:
        r = np.random.default_rng(B * 1000 + T)
        qkv, dout = r.standard_normal((B, T, 3 * C)), r.standard_normal((B, T, C))
        ref_out, ref_att = ref_attention.attention_forward(qkv, NH)
        ref_dqkv = ref_attention.attention_backward(dout, qkv, ref_att, NH)
        del ref_att
        qkv_d, dout_d = dev(qkv), dev(dout)
        out, lse, dqkv, _ = run_flash(qkv_d, dout_d, B, T, C, NH)
        _, _, dqkv2, _ = run_flash(qkv_d, dout_d, B, T, C, NH)
        f_out, f_dqkv = out.copy_to_host(), dqkv.copy_to_host()
        row = {
            "shape": {"B": B, "T": T, "C": C, "NH": NH, "HS": C // NH},
            "flash_tiles": [t._asdict() for t in attention.flash_tiles(C // NH)],
            "flash_out_vs_ref64": max_rel(f_out.reshape(ref_out.shape), ref_out),
            "flash_dqkv_vs_ref64": max_rel(f_dqkv.reshape(ref_dqkv.shape), ref_dqkv),
            "flash_all_written": bool(np.isfinite(f_out).all() and np.isfinite(f_dqkv).all()),
            "flash_backward_bitwise_repeatable": bool(np.array_equal(f_dqkv, dqkv2.copy_to_host())),
        }
        if B * NH * T * T * 4 * 6 < 8e9:
            n_out, n_dqkv = run_naive(qkv_d, dout_d, B, T, C, NH)
            n_out, n_dqkv = n_out.copy_to_host(), n_dqkv.copy_to_host()
            row["naive_out_vs_ref64"] = max_rel(n_out.reshape(ref_out.shape), ref_out)
            row["naive_dqkv_vs_ref64"] = max_rel(n_dqkv.reshape(ref_dqkv.shape), ref_dqkv)
            row["flash_vs_naive_out"] = max_rel(f_out, n_out.astype(np.float64))
            row["flash_vs_naive_dqkv"] = max_rel(f_dqkv, n_dqkv.astype(np.float64))
        else:
            n_out = n_dqkv = None
        row["variants"] = variant_correctness(qkv_d, dout_d, B, T, C, NH, ref_out, ref_dqkv, n_out, n_dqkv, out, lse)
        if torch is not None:
            device = "cuda" if TORCH_GPU else "cpu"
            y, x = torch_sdpa(qkv, B, T, C, NH, torch.float32, device)
            y.backward(torch.tensor(dout, dtype=torch.float32, device=device))
            row["torch_sdpa_f32_out_vs_ref64"] = max_rel(y.detach().cpu().numpy(), ref_out)
            row["torch_sdpa_f32_dqkv_vs_ref64"] = max_rel(x.grad.cpu().numpy(), ref_dqkv)
        res.append(row)
        print("correctness", json.dumps(row), flush=True)
    report["correctness"] = res


# ----------------------------------------------------------------------------- attention timing
def attention_timing(report):
    B, T, C, NH = MAIN
    r = np.random.default_rng(5)
    qkv, dout = r.standard_normal((B, T, 3 * C)), r.standard_normal((B, T, C))
    qkv_d, dout_d = dev(qkv), dev(dout)
    out, lse = nan_dev(B * T * C), nan_dev(B * NH * T)
    dqkv, delta = nan_dev(B * T * 3 * C), nan_dev(B * NH * T)
    # causal attention FLOPs (the useful half of the T x T products): fwd 2 matmuls, bwd 5 (dq pass
    # recomputes s and dp: the kernels do 7, counted here as the 5 a saved-probabilities backward needs)
    half = B * NH * T * (T + 1) / 2 * (C // NH) * 2
    res = {"shape": {"B": B, "T": T, "C": C, "NH": NH}, "flop_fwd": 2 * half, "flop_bwd": 5 * half, "rows": []}

    def add(name, fwd, bwd):
        row = {"name": name, "fwd": fwd, "bwd": bwd}
        for k in ("fwd", "bwd"):
            if row[k]:
                row[k]["tflops"] = res[f"flop_{k}"] / row[k]["median_ms"] / 1e9
        res["rows"].append(row)
        print("attention", json.dumps(row), flush=True)
        report["attention"] = res

    def flash_fwd(tiles):
        return timed(lambda _: attention.attention_forward_flash(out, lse, qkv_d, B, T, C, NH, tiles=tiles))

    def flash_bwd(tiles):
        attention.attention_forward_flash(out, lse, qkv_d, B, T, C, NH)
        return timed(
            lambda _: attention.attention_backward_flash(dqkv, delta, dout_d, out, lse, qkv_d, B, T, C, NH, tiles=tiles)
        )

    ft, bt = attention.flash_tiles(C // NH)
    add(f"numba flash {ft.rows}x{ft.cols} / bwd {bt.rows}x{bt.cols} (default)", flash_fwd(None), flash_bwd(None))
    # the two backward kernels on their own (the dq pass recomputes s and dp: its share of the time)
    ks = attention.flash_kernels(C // NH)
    grid = (B * NH, math.ceil(T / bt.rows))
    scale = np.float32(1 / math.sqrt(C // NH))
    if bt.fused:
        threads = 32 if SMOKE else 256
        prep_grid = math.ceil(B * T * NH / threads)
        add(
            "numba flash backward: prep kernel (delta, dq zeroed) alone",
            None,
            timed(lambda _: ks.backward_dq[prep_grid, threads](dqkv, delta, dout_d, out, B, T, C, NH)),
        )
        add(
            "numba flash backward: fused dq/dk/dv kernel alone",
            None,
            timed(lambda _: ks.backward_dkv[grid, bt.threads](dqkv, delta, qkv_d, dout_d, lse, B, T, C, NH, scale)),
        )
    else:
        add(
            "numba flash backward: dq pass (with delta) alone",
            None,
            timed(lambda _: ks.backward_dq[grid, bt.threads](dqkv, delta, qkv_d, dout_d, out, lse, B, T, C, NH, scale)),
        )
        add(
            "numba flash backward: dk/dv pass alone",
            None,
            timed(lambda _: ks.backward_dkv[grid, bt.threads](dqkv, delta, qkv_d, dout_d, lse, B, T, C, NH, scale)),
        )
    if not over_budget():
        sq = [cuda.device_array(B * NH * T * T, np.float32) for _ in range(4)]
        nf = timed(lambda _: attention.attention_forward_naive(out, sq[0], sq[1], qkv_d, B, T, C, NH), repeats=5)
        nb = timed(
            lambda _: attention.attention_backward_naive(dqkv, sq[2], sq[3], dout_d, sq[1], qkv_d, B, T, C, NH),
            repeats=5,
        )
        add("numba naive (materialises B*NH*T*T)", nf, nb)
        del sq
    if TORCH_GPU:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        g = torch.tensor(dout, dtype=torch.float32, device="cuda")
        for name, backend in (("math", SDPBackend.MATH), ("efficient", SDPBackend.EFFICIENT_ATTENTION)):
            if over_budget():
                break
            with sdpa_kernel(backend):
                x = torch.tensor(qkv, dtype=torch.float32, device="cuda")

                def fwd(_, x=x):
                    with torch.no_grad():
                        q, k, v = x.split(C, dim=2)
                        q, k, v = (t.view(B, T, NH, C // NH).transpose(1, 2) for t in (q, k, v))
                        F.scaled_dot_product_attention(q, k, v, is_causal=True)

                tf = timed(fwd)
                y, xl = torch_sdpa(qkv, B, T, C, NH, torch.float32, "cuda")
                tb = timed(lambda _, y=y: torch.autograd.grad(y, xl, g, retain_graph=True))
                add(f"torch SDPA float32 {name}", tf, tb)
    report["attention"] = res
    return add, flash_fwd, flash_bwd


def attention_variants(report):
    """Every flash variant timed at MAIN (their correctness is in the correctness section); appended to
    the attention rows. Backward variants run on the default forward's out and lse."""
    add, flash_fwd, flash_bwd = ATTENTION_HELPERS[0]
    for tiles in FWD_VARIANTS:
        if not over_budget():
            add(f"numba flash forward variant {tiles} ({tiles.rows}x{tiles.cols})", flash_fwd(tiles), None)
    for tiles in BWD_VARIANTS:
        if not over_budget():
            add(f"numba flash backward variant {tiles} ({tiles.rows}x{tiles.cols})", None, flash_bwd(tiles))


ATTENTION_HELPERS = []


# ----------------------------------------------------------------------------- memory-bound ops
def memory_bound(report):
    B, T, C = MAIN[0], MAIN[1], MAIN[2]
    N = B * T
    V = 97 if SMOKE else 50257
    copy_bw = report.get("copy", {}).get("GBps")
    rows = []
    report["memory"] = {"N": N, "C": C, "V": V, "copy_GBps": copy_bw, "rows": rows}
    r = np.random.default_rng(9)

    def add(op, version, t, nbytes):
        row = {"op": op, "version": version, **t, "bytes": nbytes, "GBps": nbytes / t["median_ms"] / 1e6}
        if copy_bw:
            row["fraction_of_copy"] = row["GBps"] / copy_bw
        rows.append(row)
        print("memory", json.dumps(row), flush=True)

    def f32(*shape):
        return r.standard_normal(shape).astype(np.float32)

    # LayerNorm (N, C)
    k = n_sets(4 * N * C * 4)
    xs = [dev(f32(N, C) + 1) for _ in range(k)]
    douts = [dev(f32(N, C)) for _ in range(k)]
    w, b = dev(1 + 0.1 * f32(C)), dev(0.1 * f32(C))
    outs = [cuda.device_array(N * C, np.float32) for _ in range(k)]
    mean, rstd = cuda.device_array(N, np.float32), cuda.device_array(N, np.float32)
    dx = [cuda.device_array(N * C, np.float32) for _ in range(k)]
    dw, db = cuda.device_array(C, np.float32), cuda.device_array(C, np.float32)
    for version, fwd, bwd, reps in (
        ("fast (warp per row, row in registers)", layernorm.layernorm_forward, layernorm.layernorm_backward, REPEATS),
        ("naive (thread per row)", layernorm.layernorm_forward_naive, layernorm.layernorm_backward_naive, 5),
    ):
        t = timed(lambda i, fwd=fwd: fwd(outs[i], mean, rstd, xs[i], w, b, N, C, 1e-5), k, repeats=reps)
        add("layernorm forward", version, t, 8 * N * C + 8 * N)
        t = timed(lambda i, bwd=bwd: bwd(dx[i], dw, db, douts[i], xs[i], w, mean, rstd, N, C), k, repeats=reps)
        add("layernorm backward (dinp +=, dweight, dbias)", version, t, 16 * N * C + 8 * N)
    if TORCH_GPU:
        tx = [torch.randn(N, C, device="cuda") for _ in range(k)]
        tw, tb_ = torch.ones(C, device="cuda", requires_grad=True), torch.zeros(C, device="cuda", requires_grad=True)
        with torch.no_grad():
            t = timed(lambda i: F.layer_norm(tx[i], (C,), tw, tb_, 1e-5), k)
        add("layernorm forward", "torch", t, 8 * N * C + 8 * N)
        txg = [x.clone().requires_grad_(True) for x in tx]
        ys = [F.layer_norm(x, (C,), tw, tb_, 1e-5) for x in txg]
        gy = torch.randn(N, C, device="cuda")
        t = timed(lambda i: torch.autograd.grad(ys[i], (txg[i], tw, tb_), gy, retain_graph=True), k)
        add("layernorm backward (dinp =, dweight, dbias)", "torch", t, 12 * N * C + 8 * N)
        del tx, txg, ys
    if over_budget():
        return

    # GELU and residual on the MLP / residual widths
    M = N * 4 * C
    k = n_sets(3 * M * 4)
    xs = [dev(f32(M)) for _ in range(k)]
    gs = [dev(f32(M)) for _ in range(k)]
    outs = [cuda.device_array(M, np.float32) for _ in range(k)]
    for version, naive in (("fast (4 per thread)", False), ("naive (1 per thread)", True)):
        t = timed(lambda i, naive=naive: gelu.gelu_forward(outs[i], xs[i], M, naive=naive), k)
        add("gelu forward", version, t, 8 * M)
        t = timed(lambda i, naive=naive: gelu.gelu_backward(outs[i], xs[i], gs[i], M, naive=naive), k)
        add("gelu backward", version, t, 12 * M)
    Nr = N * C
    for version, naive in (("fast (4 per thread)", False), ("naive (1 per thread)", True)):
        t = timed(lambda i, naive=naive: residual.residual_forward(outs[i], xs[i], gs[i], Nr, naive=naive), k)
        add("residual forward", version, t, 12 * Nr)
    if TORCH_GPU:
        tx = [torch.randn(M, device="cuda") for _ in range(k)]
        to = [torch.empty(M, device="cuda") for _ in range(k)]
        t = timed(lambda i: torch.ops.aten.gelu.out(tx[i], approximate="tanh", out=to[i]), k)
        add("gelu forward", "torch", t, 8 * M)
        t = timed(
            lambda i: torch.ops.aten.gelu_backward.grad_input(
                to[i], tx[i], approximate="tanh", grad_input=to[(i + 1) % k]
            ),
            k,
        )
        add("gelu backward", "torch", t, 12 * M)
        t = timed(lambda i: torch.add(tx[i][:Nr], tx[(i + 1) % k][:Nr], out=to[i][:Nr]), k)
        add("residual forward", "torch", t, 12 * Nr)
        del tx, to
    if over_budget():
        return

    # cross-entropy fused forward + backward over (N, V)
    k = n_sets(2 * N * V * 4)
    logits = [dev(2 * f32(N, V)) for _ in range(k)]
    dlogits = [cuda.device_array(N * V, np.float32) for _ in range(k)]
    targets = dev(r.integers(0, V, N), np.int32)
    losses = cuda.device_array(N, np.float32)
    xent_bytes = 8 * N * V + 8 * N  # logits read once, dlogits written once (the kernel reads logits twice)
    t = timed(lambda i: crossentropy.crossentropy(losses, dlogits[i], logits[i], targets, N, V, 1.0 / N), k)
    add("crossentropy forward+backward", "fast (rows kernel: a block per SM walks rows, 16-byte loads)", t, xent_bytes)
    t = timed(lambda i: crossentropy.crossentropy(losses, dlogits[i], logits[i], targets, N, V, 1.0 / N,
                                                  version="block"), k)  # fmt: skip
    add("crossentropy forward+backward", "block kernel (block per row, 1024 threads, online max/sum)", t, xent_bytes)
    kern = crossentropy.crossentropy_block_kernel
    threads = 32 if SMOKE else 512
    t = timed(lambda i: kern[N, threads](losses, dlogits[i], logits[i], targets, N, V, np.float32(1.0 / N), True), k)
    add("crossentropy forward+backward", f"block kernel, {threads} threads", t, xent_bytes)
    if TORCH_GPU:
        tl = [torch.randn(N, V, device="cuda", requires_grad=True) for _ in range(k)]
        tt = torch.randint(0, V, (N,), device="cuda")

        def torch_xent(i):
            loss = F.cross_entropy(tl[i], tt)
            torch.autograd.grad(loss, tl[i])

        t = timed(torch_xent, k)
        add("crossentropy forward+backward", "torch (cross_entropy + autograd.grad)", t, xent_bytes)


LAUNCHES_PER_GRAPH = 20


def graph_timed(launch, n_sets) -> dict | None:
    """Kernel time without the host's launch cost: LAUNCHES_PER_GRAPH launches of launch(k) (k cycling
    over the input sets) recorded in one CUDA graph (numba_impl/graph.py); each replay is timed with
    events on the graph's stream, divided by the launches. None where graphs are unavailable."""
    from numba_impl._compat import launch_stream
    from numba_impl.graph import CapturedGraph, graphs_unavailable

    if graphs_unavailable():
        return None
    stream = cuda.stream()
    with launch_stream(stream):
        for i in range(n_sets):  # compile and load before the capture
            launch(i)
    stream.synchronize()

    def record():
        with launch_stream(stream):
            for i in range(LAUNCHES_PER_GRAPH):
                launch(i % n_sets)

    graph = CapturedGraph(stream, record)
    for _ in range(WARMUP):
        graph.replay()
    stream.synchronize()
    times = []
    for _ in range(REPEATS):
        start, end = cuda.event(), cuda.event()
        start.record(stream=stream)
        graph.replay()
        end.record(stream=stream)
        end.synchronize()
        times.append(cuda.event_elapsed_time(start, end) / LAUNCHES_PER_GRAPH)
    return {"median_ms": float(np.median(times)), "min_ms": float(min(times)), "max_ms": float(max(times)),
            "n": REPEATS, "launches_per_replay": LAUNCHES_PER_GRAPH}  # fmt: skip


def memory_bound_graphed(report):
    """The fast memory-bound kernels and the flash kernels timed inside CUDA graph replays: the
    kernels' own time, without Numba's host-side launch cost that the eager timings include."""
    B, T, C, NH = MAIN
    N = B * T
    V = 97 if SMOKE else 50257
    copy_bw = report.get("copy", {}).get("GBps")
    rows = []
    report["graphed"] = {"launches_per_replay": LAUNCHES_PER_GRAPH, "rows": rows}
    r = np.random.default_rng(11)

    def add(op, t, nbytes=None):
        if t is None:
            rows.append({"op": op, "note": "CUDA graphs unavailable here"})
            return
        row = {"op": op, **t}
        if nbytes:
            row.update(bytes=nbytes, GBps=nbytes / t["median_ms"] / 1e6)
            if copy_bw:
                row["fraction_of_copy"] = row["GBps"] / copy_bw
        rows.append(row)
        print("graphed", json.dumps(row), flush=True)

    def f32(*shape):
        return r.standard_normal(shape).astype(np.float32)

    k = n_sets(4 * N * C * 4)
    xs, douts = [dev(f32(N, C) + 1) for _ in range(k)], [dev(f32(N, C)) for _ in range(k)]
    outs, dx = [cuda.device_array(N * C, np.float32) for _ in range(k)], [dev(f32(N, C)) for _ in range(k)]
    w, b = dev(1 + 0.1 * f32(C)), dev(0.1 * f32(C))
    mean, rstd = cuda.device_array(N, np.float32), cuda.device_array(N, np.float32)
    dw, db = dev(np.zeros(C)), dev(np.zeros(C))
    add(
        "layernorm forward",
        graph_timed(lambda i: layernorm.layernorm_forward(outs[i], mean, rstd, xs[i], w, b, N, C, 1e-5), k),
        8 * N * C + 8 * N,
    )
    add(
        "layernorm backward (dinp +=, dweight, dbias)",
        graph_timed(lambda i: layernorm.layernorm_backward(dx[i], dw, db, douts[i], xs[i], w, mean, rstd, N, C), k),
        16 * N * C + 8 * N,
    )
    M = N * 4 * C
    k = n_sets(3 * M * 4)
    ms = [dev(f32(M)) for _ in range(k)]
    gs = [dev(f32(M)) for _ in range(k)]
    mo = [cuda.device_array(M, np.float32) for _ in range(k)]
    add("gelu forward", graph_timed(lambda i: gelu.gelu_forward(mo[i], ms[i], M), k), 8 * M)
    add("gelu backward", graph_timed(lambda i: gelu.gelu_backward(mo[i], ms[i], gs[i], M), k), 12 * M)
    add("gelu forward, naive twin", graph_timed(lambda i: gelu.gelu_forward(mo[i], ms[i], M, naive=True), k), 8 * M)
    add(
        "residual forward",
        graph_timed(lambda i: residual.residual_forward(mo[i], ms[i], gs[i], N * C), k),
        12 * N * C,
    )
    if over_budget():
        return
    logits = dev(2 * f32(N, V))
    dlogits = cuda.device_array(N * V, np.float32)
    targets = dev(r.integers(0, V, N), np.int32)
    losses = cuda.device_array(N, np.float32)
    for version in crossentropy.VERSIONS[:2]:  # the rows kernel (the default) and the block kernel before it
        add(
            f"crossentropy forward+backward ({version})",
            graph_timed(
                lambda _, v=version: crossentropy.crossentropy(
                    losses, dlogits, logits, targets, N, V, 1.0 / N, version=v
                ),
                1,
            ),
            8 * N * V + 8 * N,
        )
    qkv, dout = dev(f32(B, T, 3 * C)), dev(f32(B, T, C))
    out, lse = cuda.device_array(B * T * C, np.float32), cuda.device_array(B * NH * T, np.float32)
    dqkv, delta = cuda.device_array(B * T * 3 * C, np.float32), cuda.device_array(B * NH * T, np.float32)
    add(
        "flash attention forward",
        graph_timed(lambda _: attention.attention_forward_flash(out, lse, qkv, B, T, C, NH), 1),
    )
    add(
        "flash attention backward",
        graph_timed(lambda _: attention.attention_backward_flash(dqkv, delta, dout, out, lse, qkv, B, T, C, NH), 1),
    )


def copy_bandwidth(report):
    if not TORCH_GPU:
        report["copy"] = {"note": "no GPU torch: not measured"}
        return
    n = 1 << 28  # 1 GiB of float32
    a, b = torch.randn(n, device="cuda"), torch.empty(n, device="cuda")
    t = timed(lambda _: b.copy_(a))
    report["copy"] = {**t, "bytes": 8 * n, "GBps": 8 * n / t["median_ms"] / 1e6}
    print("copy", json.dumps(report["copy"]), flush=True)


def main():
    out_path = Path([a for a in sys.argv[1:] if not a.startswith("--")][0])
    report = {"provenance": provenance(), "sources_sha256": sources_sha256(), "simulator": SIMULATOR, "smoke": SMOKE}
    # the commit the caller names (a GPU machine's copy may carry a stale .git that provenance() reads)
    report["commit_given"] = os.environ.get("GPT2_GIT_COMMIT")
    if TORCH_GPU:
        p = torch.cuda.get_device_properties(0)
        report["gpu"] = {"name": p.name, "sm_count": p.multi_processor_count, "torch": torch.__version__}
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        report["torch_tf32"] = False
    sections = (copy_bandwidth, correctness, attention_timing, attention_variants, memory_bound, memory_bound_graphed)
    names = {"copy": copy_bandwidth, "correctness": correctness, "attention": attention_timing,
             "attention_variants": attention_variants, "memory": memory_bound,
             "graphed": memory_bound_graphed}  # fmt: skip
    chosen = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--sections=")), None)
    if chosen:
        sections = tuple(names[n.strip()] for n in chosen.split(",") if n.strip())
    for section in sections:
        if over_budget():
            report.setdefault("skipped", []).append(section.__name__)
            continue
        t0 = time.time()
        try:
            result = section(report)
            if section is attention_timing:
                ATTENTION_HELPERS.append(result)
        except Exception as e:  # keep what the other sections measured; the error is in the file
            report.setdefault("errors", {})[section.__name__] = f"{type(e).__name__}: {e}"
            print(f"error in {section.__name__}: {type(e).__name__}: {e}", flush=True)
        report.setdefault("section_seconds", {})[section.__name__] = round(time.time() - t0, 1)
        out_path.write_text(json.dumps(report, indent=1))
    out_path.write_text(json.dumps(report, indent=1))
    print(f"wrote {out_path} in {time.time() - START:.0f} s")
    return 1 if report.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
