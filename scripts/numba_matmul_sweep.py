"""The Numba matmul on a GPU: correctness of every variant, GPT-2 124M shapes timed against cuBLAS
float32 (torch.matmul, TF32 off), a tile-shape sweep, and the head backward's float32 accuracy.

    NUMBA_ENABLE_CUDASIM=0 python3 scripts/numba_matmul_sweep.py OUT.json [--budget-s 200]

Sections, each written to OUT.json as soon as it is done (a run cut short keeps what it measured):
  correctness  the fast kernel (each layout, several tiles, 16-byte vector loads and the scalar
               fallback, each unroll of the k loop, bias/accumulate, split-K, K chunks in registers,
               GELU and residual epilogues, fused bias gradient) against the naive kernel on ragged
               shapes (none a multiple of a tile), outputs poisoned with NaN first;
               max|d| / max|ref| must be <= 1e-5 (float32 sums of <= ~1,100 terms in another order)
  head         dlnf = dlogits @ wte (K = 50,257) against float64 (torch on the GPU): fast with
               k_chunk=1024 (what the model runs), as slices of 1,024 terms, without chunks; cuBLAS float32
  timing       every matmul of GPT-2 124M at B*T = 4096 (forward NN, backward NT and TN, the head):
               fast (`fast_config`'s tile, splits and unroll, vector loads where aligned) vs torch.matmul
               float32 vs the same kernel with scalar loads and no unrolling at the previous tuned
               configuration
  sweep        tile shapes x split-K x unroll per shape (the defaults come from here): SWEEP_VARIANTS,
               each with every split count whose slices keep >= SWEEP_MIN_SLICE terms (at most
               MAX_SPLITS; the split count decides how many waves of blocks the product makes)
  model        NumbaGPT2 forward+backward at 124M, B=4, T=1024 (only with --model)
--sections picks some of them (default: all but model).
--previous FILE copies an earlier run's timing rows into OUT.json (key "previous_run"), with that
run's provenance, so that one file holds both.
Timing: the timing section (and cuBLAS everywhere): CUDA events around batches of back-to-back
launches, after warm-up; the median over batches. The sweep: device time, SWEEP_LAUNCHES launches of
one configuration recorded in a CUDA graph and its replays timed with CUDA events (benchmarks/
impl_numba.py's device_time): back-to-back launches from Python measure the host instead wherever
Numba's launch cost (tens of microseconds per kernel, two kernels with split-K) approaches the
kernel's time, which it does on the small products. Exit 1 if a correctness check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.impl_numba import device_time  # noqa: E402
from benchmarks.impl_torch import device_time as torch_device_time  # noqa: E402
from numba_impl._compat import SIMULATOR, cuda  # noqa: E402
from numba_impl.kernels import matmul as mm  # noqa: E402
from weights.provenance import provenance  # noqa: E402

BT, C, V = 4096, 768, 50257
# (name, M, N, K, layout): every product of a GPT-2 124M step at B*T = 4096.
SHAPES = [
    ("fwd qkv", BT, 3 * C, C, "NN"),
    ("fwd attn_proj", BT, C, C, "NN"),
    ("fwd fc", BT, 4 * C, C, "NN"),
    ("fwd mlp_proj", BT, C, 4 * C, "NN"),
    ("bwd dx qkv", BT, C, 3 * C, "NT"),
    ("bwd dx attn_proj", BT, C, C, "NT"),
    ("bwd dx fc", BT, C, 4 * C, "NT"),
    ("bwd dx mlp_proj", BT, 4 * C, C, "NT"),
    ("bwd dw qkv", C, 3 * C, BT, "TN"),
    ("bwd dw attn_proj", C, C, BT, "TN"),
    ("bwd dw fc", C, 4 * C, BT, "TN"),
    ("bwd dw mlp_proj", 4 * C, C, BT, "TN"),
    ("head logits", BT, V, C, "NT"),
    ("head dlnf", BT, C, V, "NN"),
    ("head dwte", V, C, BT, "TN"),
]
HEAD_K_CHUNK = 1024
TILES = [(128, 128, 16, 8, 8), (128, 128, 8, 8, 8), (128, 64, 16, 8, 8), (128, 64, 8, 8, 8), (64, 64, 16, 8, 8)]
UNROLLS = (1, 2)  # the correctness section also runs the 128x128x16 tile at these unrolls
# (tile, unroll, vector loads) swept: the two tiles TUNED uses at their unrolls, and a 64 x 64 tile of 64
# threads (four times the blocks of the 128 x 128 one: more even waves on small outputs)
SWEEP_VARIANTS = [
    ((128, 128, 16, 8, 8), 2, None),
    ((128, 64, 16, 8, 8), 4, None),
    ((64, 64, 16, 8, 8), 2, None),
    ((64, 64, 16, 8, 8), 4, None),
]
SWEEP_MIN_SLICE = 256  # a split-K slice sums at least this many terms
MAX_SPLITS = 16
# device time of a configuration: launches per graph, timed replays
SWEEP_LAUNCHES, SWEEP_REPLAYS = 10, 3
# the timing section's scalar-loads comparison (extra compiles) unless --no-scalar
WITH_SCALAR = "--no-scalar" not in sys.argv
# The tuned (tile, splits) of the previous kernel (scalar global loads, k loop not unrolled), from the
# sweep of commit b2de8fd: the reference configuration timed beside today's default.
PREVIOUS_TUNED = {
    "fwd qkv": ((128, 64, 16, 8, 8), 1), "fwd attn_proj": ((128, 64, 16, 8, 8), 1),
    "fwd fc": ((128, 128, 8, 8, 8), 1), "fwd mlp_proj": ((128, 128, 8, 8, 8), 4),
    "bwd dx qkv": ((128, 128, 16, 8, 8), 2), "bwd dx attn_proj": ((128, 64, 16, 8, 8), 1),
    "bwd dx fc": ((128, 128, 16, 8, 8), 2), "bwd dx mlp_proj": ((128, 128, 16, 8, 8), 1),
    "bwd dw qkv": ((128, 128, 16, 8, 8), 2), "bwd dw attn_proj": ((128, 64, 8, 8, 8), 4),
    "bwd dw fc": ((128, 128, 16, 8, 8), 4), "bwd dw mlp_proj": ((128, 128, 16, 8, 8), 4),
    "head logits": ((128, 128, 16, 8, 8), 1), "head dlnf": ((128, 128, 16, 8, 8), 4),
    "head dwte": ((128, 128, 16, 8, 8), 1),
}  # fmt: skip
CHECK_REL = 1e-5

START = time.time()


def elapsed() -> float:
    return time.time() - START


# ----------------------------------------------------------------------------- helpers
def operands(M, N, K, layout, seed=0):
    """Device arrays of A and B stored as `layout` says, and torch views computing the same product."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    a_shape = (K, M) if layout[0] == "T" else (M, K)
    b_shape = (N, K) if layout[1] == "T" else (K, N)
    a = torch.randn(a_shape, device="cuda", generator=g)
    b = torch.randn(b_shape, device="cuda", generator=g)
    op_a = a.t() if layout[0] == "T" else a
    op_b = b.t() if layout[1] == "T" else b
    return a, b, op_a, op_b


def nb(t: torch.Tensor):
    """A flat Numba view of a contiguous torch CUDA tensor (no copy)."""
    return cuda.as_cuda_array(t.reshape(-1))


def time_numba(fn, batches=7, per=10, warmup=2) -> float:
    """Median over batches of the mean time (ms) of `per` back-to-back calls, by CUDA events."""
    for _ in range(warmup):
        fn()
    cuda.synchronize()
    times = []
    for _ in range(batches):
        e0, e1 = cuda.event(timing=True), cuda.event(timing=True)
        e0.record()
        for _ in range(per):
            fn()
        e1.record()
        e1.synchronize()
        times.append(cuda.event_elapsed_time(e0, e1) / per)
    return statistics.median(times)


def time_torch(fn, batches=7, per=10, warmup=2) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(batches):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(per):
            fn()
        e1.record()
        e1.synchronize()
        times.append(e0.elapsed_time(e1) / per)
    return statistics.median(times)


def tflops(M, N, K, ms) -> float:
    return 2.0 * M * N * K / (ms * 1e-3) / 1e12


def max_rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double(), ref.double()
    return float((x - ref).abs().max() / ref.abs().max())


def l2_rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double(), ref.double()
    return float(torch.linalg.norm(x - ref) / torch.linalg.norm(ref))


# ----------------------------------------------------------------------------- sections
def section_correctness(res):
    """Fast vs naive on ragged shapes, every variant; NaN-poisoned outputs."""
    rows = []
    cases = []
    for layout in mm.LAYOUTS:
        for tile in TILES:  # rows of multiples of 4 floats: vector loads in interior tiles
            cases.append(dict(layout=layout, tile=tile, M=1000, N=700, K=300))
        for unroll in UNROLLS:
            cases.append(dict(layout=layout, tile=TILES[0], M=1000, N=700, K=300, unroll=unroll))
        cases.append(dict(layout=layout, tile=TILES[0], M=1000, N=700, K=301))  # rows of 301: scalar A (NN, NT)
        cases.append(dict(layout=layout, tile=TILES[0], M=1000, N=700, K=300, vec=False, unroll=1))
        cases.append(dict(layout=layout, tile=None, M=257, N=130, K=1029, splits=3))
        cases.append(dict(layout=layout, tile=None, M=300, N=200, K=5000, k_chunk=1024))
        cases.append(dict(layout=layout, tile=None, M=300, N=200, K=5000, k_chunk=1024, splits=2))
    for c in cases:
        M, N, K, layout = c["M"], c["N"], c["K"], c["layout"]
        a, b, op_a, op_b = operands(M, N, K, layout, seed=M + K)
        bias = torch.randn(N, device="cuda")
        base = torch.randn(M, N, device="cuda")
        ref = base.clone()
        mm.matmul(nb(ref), nb(a), nb(b), M, N, K, layout, bias=nb(bias), accumulate=True, kernel="naive")
        kw = dict(tile=c.get("tile"), splits=c.get("splits"), k_chunk=c.get("k_chunk"), vec=c.get("vec"),
                  unroll=c.get("unroll"))  # fmt: skip
        out = base.clone()
        mm.matmul(nb(out), nb(a), nb(b), M, N, K, layout, bias=nb(bias), accumulate=True, kernel="fast", **kw)
        plain = torch.full((M, N), float("nan"), device="cuda")
        mm.matmul(nb(plain), nb(a), nb(b), M, N, K, layout, kernel="fast", **kw)
        torch.cuda.synchronize()
        e = max(max_rel(out, ref), max_rel(plain + base + bias, ref))
        finite = bool(torch.isfinite(plain).all())
        vec_loads = mm.vec_ok(layout, nb(a), nb(b), M, N, K) if c.get("vec") is not False else (False, False)
        rows.append({**{k: v for k, v in c.items()}, "vector_loads": vec_loads, "max_rel_vs_naive": e,
                     "all_written": finite, "ok": e <= CHECK_REL and finite})  # fmt: skip
    # epilogues (forward) and the fused bias gradient (weight gradient), default tiles and forced splits
    M, N, K = 1000, 700, 300
    a, b, op_a, op_b = operands(M, N, K, "NN", seed=1)
    bias, extra = torch.randn(N, device="cuda"), torch.randn(M, N, device="cuda")
    pre = torch.empty(M, N, device="cuda")
    mm.matmul(nb(pre), nb(a), nb(b), M, N, K, "NN", bias=nb(bias), kernel="naive")
    gelu_ref = 0.5 * pre * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (pre + 0.044715 * pre**3)))
    for splits in (1, 3):
        for epi, ref2 in (("gelu", gelu_ref), ("residual", extra + pre)):
            out, out2 = torch.full_like(pre, float("nan")), torch.full_like(pre, float("nan"))
            mm.matmul(nb(out), nb(a), nb(b), M, N, K, "NN", bias=nb(bias), splits=splits, epilogue=epi, out2=nb(out2),
                      extra=nb(extra))  # fmt: skip
            torch.cuda.synchronize()
            e = max(max_rel(out, pre), max_rel(out2, ref2))
            rows.append({"layout": "NN", "epilogue": epi, "splits": splits, "M": M, "N": N, "K": K,
                         "max_rel_vs_naive": e, "ok": e <= CHECK_REL})  # fmt: skip
        x, dout = torch.randn(K, M, device="cuda"), torch.randn(K, N, device="cuda")  # TN: K = B*T rows
        dw, db = torch.ones(M, N, device="cuda"), torch.ones(N, device="cuda")
        dw_ref, db_ref = torch.ones(M, N, device="cuda"), torch.ones(N, device="cuda")
        mm.matmul(nb(dw_ref), nb(x), nb(dout), M, N, K, "TN", accumulate=True, kernel="naive")
        mm.bias_backward(nb(db_ref), nb(dout), K, N, naive=True)
        mm.matmul(nb(dw), nb(x), nb(dout), M, N, K, "TN", accumulate=True, dbias=nb(db), splits=splits)
        torch.cuda.synchronize()
        e = max(max_rel(dw - 1, dw_ref - 1), max_rel(db - 1, db_ref - 1))
        rows.append({"layout": "TN", "dbias": True, "splits": splits, "M": M, "N": N, "K": K,
                     "max_rel_vs_naive": e, "ok": e <= CHECK_REL})  # fmt: skip
    res["correctness"] = {"rule": f"max|fast - naive| / max|naive| <= {CHECK_REL}", "rows": rows,
                          "all_ok": all(r["ok"] for r in rows)}  # fmt: skip


def section_head(res):
    """dlnf = dlogits @ wte against float64: dlogits like the model's (softmax - onehot) / N."""
    g = torch.Generator(device="cuda").manual_seed(3)
    logits = 2.0 * torch.randn(BT, V, device="cuda", generator=g)
    dlogits = torch.softmax(logits, dim=-1)
    targets = torch.randint(0, V, (BT,), device="cuda", generator=g)
    dlogits[torch.arange(BT, device="cuda"), targets] -= 1.0
    dlogits /= BT
    del logits
    wte = 0.02 * torch.randn(V, C, device="cuda", generator=g)
    ref = dlogits.double() @ wte.double()
    d_dlogits, d_wte = nb(dlogits), nb(wte)
    rows = {}
    slices = mm.ceil_div(V, HEAD_K_CHUNK)
    for name, kw in (("fast k_chunk=1024 (model)", dict(k_chunk=HEAD_K_CHUNK)), ("fast no chunks", {}),
                     (f"fast k_chunk=1024 as {slices} slices", dict(k_chunk=HEAD_K_CHUNK, splits=slices))):  # fmt: skip
        out = torch.empty(BT, C, device="cuda")
        d_out = nb(out)
        run = lambda kw=kw, d_out=d_out: mm.matmul(d_out, d_dlogits, d_wte, BT, C, V, "NN", **kw)
        run()
        torch.cuda.synchronize()
        rows[name] = {"max_rel": max_rel(out, ref), "l2_rel": l2_rel(out, ref), "ms": time_numba(run, 3, 3, 1)}
    out = dlogits @ wte
    torch.cuda.synchronize()
    rows["cublas float32 (torch, TF32 off)"] = {"max_rel": max_rel(out, ref), "l2_rel": l2_rel(out, ref),
                                                "ms": time_torch(lambda: dlogits @ wte, 3, 3, 1)}  # fmt: skip
    res["head_backward_accuracy"] = {"shape": [BT, C, V], "reference": "float64 (torch on the GPU)", "rows": rows}


def section_timing(res):
    rows = []
    for name, M, N, K, layout in SHAPES:
        ta, tb, op_a, op_b = operands(M, N, K, layout)
        a, b, out, dbias = nb(ta), nb(tb), nb(torch.empty(M, N, device="cuda")), nb(torch.zeros(N, device="cuda"))
        kc = HEAD_K_CHUNK if name == "head dlnf" else None
        tile, splits, unroll = mm.fast_config(M, N, K, layout)
        fast = lambda: mm.matmul(out, a, b, M, N, K, layout, k_chunk=kc)  # noqa: B023
        t_fast = time_numba(fast)
        row = {"name": name, "M": M, "N": N, "K": K, "layout": layout, "tile": tile, "splits": splits,
               "unroll": unroll, "vector_loads_a_b": mm.vec_ok(layout, a, b, M, N, K), "k_chunk": kc,
               "fast_ms": t_fast}  # fmt: skip
        if layout == "TN" and name != "head dwte":  # the model's weight gradient also sums the bias gradient
            row["fast_with_dbias_ms"] = time_numba(
                lambda: mm.matmul(out, a, b, M, N, K, layout, accumulate=True, dbias=dbias)  # noqa: B023
            )
        ptile, psplits = PREVIOUS_TUNED[name]
        scalar = lambda: mm.matmul(out, a, b, M, N, K, layout, k_chunk=kc, tile=ptile, splits=psplits,  # noqa: B023
                                   vec=False, unroll=1)  # fmt: skip
        t_scalar = time_numba(scalar, 5, 5, 1) if WITH_SCALAR else float("nan")
        t_torch = time_torch(lambda: torch.matmul(op_a, op_b))  # noqa: B023
        row["fast_device_ms"] = 1e3 * device_time([fast], SWEEP_LAUNCHES, SWEEP_REPLAYS, 1)["device_time_s"]
        row["torch_device_ms"] = 1e3 * torch_device_time([lambda: torch.matmul(op_a, op_b)], SWEEP_LAUNCHES,  # noqa: B023
                                                         SWEEP_REPLAYS, 1)["device_time_s"]  # fmt: skip
        row |= {"scalar_not_unrolled_ms": t_scalar, "scalar_config": [ptile, psplits], "torch_ms": t_torch,
                "fast_tflops": tflops(M, N, K, t_fast), "torch_tflops": tflops(M, N, K, t_torch),
                "fast_vs_torch": t_torch / t_fast, "scalar_vs_torch": t_torch / t_scalar}  # fmt: skip
        rows.append(row)
        print(f"{name:<18} {layout} fast {t_fast:7.3f} ms  torch {t_torch:7.3f} ms  "
              f"({row['fast_vs_torch']:.0%} of cuBLAS)  scalar {t_scalar:7.3f} ms; device: fast "
              f"{row['fast_device_ms']:.3f} ms, torch {row['torch_device_ms']:.3f} ms "
              f"({row['torch_device_ms'] / row['fast_device_ms']:.0%})", flush=True)  # fmt: skip
    res["timing"] = rows


def split_options(name: str, K: int) -> list[int]:
    """The split counts swept for one product: every count whose slices keep >= SWEEP_MIN_SLICE terms
    (at most MAX_SPLITS); the head's forward and dwte alone (thousands of blocks); the head's dlnf also
    as slices of <= k_chunk terms (no chunks in registers: what the model runs)."""
    if name in ("head logits", "head dwte"):
        return [1]
    options = [s for s in range(1, MAX_SPLITS + 1) if mm.ceil_div(K, s) >= SWEEP_MIN_SLICE]
    if name == "head dlnf":
        options = [1, 2, 4, 8, mm.ceil_div(K, HEAD_K_CHUNK)]
    return options


def section_sweep(res, deadline, save_partial):
    rows = res["sweep"] = []
    data = {}
    for name, M, N, K, layout in SHAPES:
        ta, tb, _, _ = operands(M, N, K, layout)
        data[name] = (nb(ta), nb(tb), nb(torch.empty(M, N, device="cuda")), (ta, tb))
    for tile, unroll, vec in SWEEP_VARIANTS:  # variant-major: a run cut short still has whole variants
        for name, M, N, K, layout in SHAPES:
            a, b, out, _ = data[name]
            kc = HEAD_K_CHUNK if name == "head dlnf" else None
            head = name.startswith("head")
            for splits in split_options(name, K):
                if elapsed() > deadline:
                    rows.append({"name": name, "tile": tile, "unroll": unroll,
                                 "vector_loads_where_aligned": vec is not False, "splits": splits,
                                 "skipped": "time budget"})  # fmt: skip
                    continue
                run = lambda: mm.matmul(out, a, b, M, N, K, layout, tile=tile, splits=splits, k_chunk=kc,  # noqa: B023
                                        unroll=unroll, vec=vec)  # fmt: skip
                launches = 3 if head else SWEEP_LAUNCHES
                t = 1e3 * device_time([run], launches, SWEEP_REPLAYS, 1)["device_time_s"]
                rows.append({"name": name, "M": M, "N": N, "K": K, "layout": layout, "tile": tile, "unroll": unroll,
                             "vector_loads_where_aligned": vec is not False, "splits": splits, "ms": t,
                             "tflops": tflops(M, N, K, t)})  # fmt: skip
            save_partial()  # a run cut short keeps the sweep so far
    for name, *_ in SHAPES:
        timed = [r for r in rows if r["name"] == name and "ms" in r and r["vector_loads_where_aligned"]]
        best = min(timed, key=lambda r: r["ms"], default=None)
        if best:
            print(f"sweep {name:<18} best {best['tile']} unroll {best['unroll']} splits {best['splits']}: "
                  f"{best['ms']:.3f} ms", flush=True)  # fmt: skip


def section_model(res):
    from numba_impl.model import NumbaGPT2
    from weights import GPT2Config
    from weights.synthetic import synthetic

    cfg = GPT2Config.gpt2_124m()
    params = synthetic(cfg, seed=0)
    B, T = 4, 1024
    rng = np.random.default_rng(0)
    idx = rng.integers(0, cfg.vocab_size, (B, T))
    targets = rng.integers(0, cfg.vocab_size, (B, T))
    m = NumbaGPT2(params, cfg, max_batch=B, max_seq=T)
    step = lambda: m.forward_backward_device(idx, targets)
    t = time_numba(step, 5, 1, 2)
    res["model"] = {"B": B, "T": T, "numba_forward_backward_ms": t, "loss": m.loss()}
    print(f"NumbaGPT2 124M forward+backward B=4 T=1024: {t:.1f} ms", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="JSON file to write")
    parser.add_argument("--budget-s", type=float, default=200.0, help="stop starting new measurements after this")
    parser.add_argument("--previous", help="an earlier run's JSON whose timing rows to keep in OUT.json")
    parser.add_argument("--model", action="store_true", help="also time NumbaGPT2 forward+backward")
    parser.add_argument("--no-scalar", action="store_true", help="timing: skip the scalar-loads comparison")
    parser.add_argument("--sections", default="correctness,head,timing,sweep",
                        help="comma-separated sections to run (correctness, head, timing, sweep)")  # fmt: skip
    args = parser.parse_args()
    if SIMULATOR or not torch.cuda.is_available():
        print("error: needs a CUDA GPU and NUMBA_ENABLE_CUDASIM=0", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    res = {"provenance": provenance(), "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
           "torch_float32_matmul_precision": torch.get_float32_matmul_precision(),
           "tf32_allowed": torch.backends.cuda.matmul.allow_tf32, "timing_method": __doc__.split("Timing: ")[1].strip(),
           "sections_done": []}  # fmt: skip
    if args.previous:
        prev = json.loads(Path(args.previous).read_text())
        res["previous_run"] = {"file": args.previous, "note": "an earlier run of this script, on earlier code",
                               **{k: prev[k] for k in ("provenance", "head_backward_accuracy", "timing", "model")
                                  if k in prev}}  # fmt: skip
    out = Path(args.out)

    def save(section=None):
        if section:
            res["sections_done"].append(section)
        res["elapsed_s"] = elapsed()
        out.write_text(json.dumps(res, indent=1, default=str))

    wanted = {x.strip() for x in args.sections.split(",") if x.strip()}
    ok = True
    for name, fn in (("correctness", section_correctness), ("head", section_head), ("timing", section_timing)):
        if name not in wanted:
            continue
        try:
            fn(res)
        except Exception as e:  # keep the other sections' numbers
            res[f"{name}_error"] = f"{type(e).__name__}: {e}"
            print(f"section {name} failed: {e}", flush=True)
            ok = False
        save(name)
    if "correctness" in res:
        bad = [r for r in res["correctness"]["rows"] if not r["ok"]]
        print(f"correctness: {len(res['correctness']['rows']) - len(bad)} ok, {len(bad)} failed", flush=True)
        for r in bad:
            print("  FAILED", r, flush=True)
        ok = ok and not bad
    if "sweep" in wanted:
        try:
            section_sweep(res, args.budget_s - (45 if args.model else 10), save)
        except Exception as e:
            res["sweep_error"] = f"{type(e).__name__}: {e}"
            print(f"section sweep failed: {e}", flush=True)
        save("sweep")
    if args.model and elapsed() < args.budget_s - 40:
        try:
            section_model(res)
        except Exception as e:
            res["model_error"] = f"{type(e).__name__}: {e}"
        save("model")
    print(f"done in {elapsed():.0f} s -> {out}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
