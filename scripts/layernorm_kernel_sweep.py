"""Time a residual add + LayerNorm's backward on the GPU: torch.compile's kernels against --norm-impl triton's.

    python scripts/layernorm_kernel_sweep.py [--rows 65536] [--json layernorm-kernel-sweep.json]

The shapes are one micro-step of GPT-2 124M at the trainer's defaults (B*T = 65,536 rows, C = 768): the
residual stream x in float32, the added delta and the LayerNorm's output in bf16, as under autocast.
Timed, each by triton.testing.do_bench (the median; L2 cleared before each run):

  backward  plain       dx_new = dres + layer_norm_backward(dy), its bf16 copy, dweight, dbias and
                        c_proj's bias gradient (the bf16 copy's column sums), under torch.compile (the
                        kernels inductor makes of it)
            triton ...  torch_impl/layernorm_triton.py's kernel at one configuration, plus the sums of
                        its per-program column sums
  pair      plain       x_new = x + (delta + b_proj) (c_proj's bias added in bf16, as its matmul's
                        epilogue does), y = layer_norm(x_new) in bf16, forward and backward, compiled,
                        under bf16 autocast (as the trainer runs it)
            triton      the same through residual_layernorm (b_proj added in float32)

"triton R/BM/W" is ROWS/BLOCK_M and num_warps. Every result is checked against the plain path's: the
same float32 arithmetic, summed in another order, so dx_new is checked at 1e-5 and dweight, dbias at
1e-4 of the tensor's largest value, and the bf16 copy at one bf16 step (2^-7) of it; db_proj at 1e-4 of
float64's column sums of dx_new, and in the pair at one bf16 step of the plain one (which sums bf16). GB/s counts the
bytes the kernel must move: x_new, dy and dres read once, dx_new and its bf16 copy written once. Writes
--json with the provenance record (commit, versions, GPU, date). Exits 1 when a check fails, 2 without
a CUDA GPU.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository's packages

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from torch_impl import layernorm_triton as lt  # noqa: E402
from weights.errors import ArgumentParser, UsageError, run_cli  # noqa: E402
from weights.provenance import provenance  # noqa: E402

C, EPS = 768, 1e-5
SWEEP = [(r, bm, w) for r in (64, 128, 256, 512) for bm in (1, 2, 4, 8) for w in (2, 4, 8)]
REL = {
    "dx_new": 1e-5,
    "dx_new bf16": 2.0**-7,
    "dweight": 1e-4,
    "dbias": 1e-4,
    "db_proj": 1e-4,
    "db_proj bf16": 2.0**-7,
}  # of max |plain| (db_proj: of max |float64's|)


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=65536, help="rows M = B*T of one micro-step")
    ap.add_argument("--json", type=Path, default=Path("layernorm-kernel-sweep.json"))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise UsageError("no CUDA GPU here: the sweep times GPU kernels")
    if args.rows < 1:
        raise UsageError(f"--rows {args.rows}: must be >= 1")
    import triton
    from triton.testing import do_bench

    M, bf = args.rows, torch.bfloat16
    g = torch.Generator(device="cuda").manual_seed(0)

    def randn(*shape, std=1.0, dtype=torch.float32):
        return (std * torch.randn(*shape, device="cuda", generator=g)).to(dtype)

    rows, failures = [], []

    def record(part, name, fn, cfg=None):
        ms = do_bench(fn, warmup=25, rep=100)
        rows.append({"part": part, "name": name, "config": cfg, "ms": ms})
        print(f"{part:>8} {name:>20}  {ms:8.3f} ms", flush=True)
        return ms

    def check(what, got, ref, label):
        err = float((got.float() - ref.float()).abs().max())
        ceiling = REL[label] * float(ref.float().abs().max())
        if not err <= ceiling:
            failures.append(f"{what} {label}: max |triton - plain| {err:.3e} > {ceiling:.3e}")

    # ---- the backward alone
    x_new, w, b = randn(M, C), 1.0 + randn(C, std=0.1), randn(C, std=0.1)
    dy, dres = randn(M, C, std=1e-3, dtype=bf), randn(M, C, std=1e-3)
    _, mean, rstd = torch.ops.aten.native_layer_norm(x_new, [C], w, b, EPS)
    least_bytes = M * C * (4 + 2 + 4 + 4 + 2)

    @torch.compile
    def backward_plain(dy, x_new, mean, rstd, w, b, dres):
        dx, dw, db = torch.ops.aten.native_layer_norm_backward(
            dy.float(), x_new, [C], mean, rstd, w, b, [True, True, True]
        )
        dx_new = dres + dx
        low = dx_new.to(bf)
        return dx_new, low, dw, db, low.sum(0)  # the last: c_proj's bias gradient, as autograd sums it

    labels = ("dx_new", "dx_new bf16", "dweight", "dbias", "db_proj")
    ref = list(backward_plain(dy, x_new, mean, rstd, w, b, dres))
    ref[4] = ref[0].double().sum(0)  # db_proj checked against float64's sums of dx_new
    record("backward", "plain", lambda: backward_plain(dy, x_new, mean, rstd, w, b, dres))
    got = lt.layernorm_backward(dy, x_new, mean, rstd, w, dres, bf, sum_dx=True)
    for label, a, r in zip(labels, got, ref, strict=True):
        check("module", a, r, label)

    mean1, rstd1 = mean.reshape(M).contiguous(), rstd.reshape(M).contiguous()
    for r, bm, nw in SWEEP:
        name, cfg = f"triton {r}/{bm}/{nw}", {"ROWS": r, "BLOCK_M": bm, "num_warps": nw}
        dx, dlow = torch.empty_like(x_new), torch.empty((M, C), dtype=bf, device="cuda")
        tiles = triton.cdiv(M, r)
        dw, db, dp = (torch.empty((tiles, C), device="cuda") for _ in range(3))

        def launch(r=r, bm=bm, nw=nw, dx=dx, dlow=dlow, dw=dw, db=db, dp=dp, tiles=tiles):
            lt._layernorm_backward_kernel[(tiles,)](
                dy, x_new, mean1, rstd1, w, dres, dx, dlow, dw, db, dp, M, C,
                dy.stride(0), x_new.stride(0), dres.stride(0), dx.stride(0), dlow.stride(0),
                HAS_DRES=True, WRITE_LOW=True, SUM_DX=True, ROWS=r, BLOCK_M=bm,
                BLOCK_C=triton.next_power_of_2(C), num_warps=nw,
            )  # fmt: skip
            return dx, dlow, dw.sum(0), db.sum(0), dp.sum(0)

        for label, a, rf in zip(labels, launch(), ref, strict=True):
            check(name, a, rf, label)
        ms = record("backward", name, launch, cfg)
        rows[-1]["GB/s"] = least_bytes / ms / 1e6

    # ---- the pair, forward and backward, as the trainer runs it (compiled)
    x, delta = randn(M, C).requires_grad_(), randn(M, C, std=0.1, dtype=bf).requires_grad_()
    b_proj = randn(C, std=0.1).requires_grad_()
    ln = torch.nn.LayerNorm(C, eps=EPS).cuda()
    with torch.no_grad():
        ln.weight.copy_(w)
        ln.bias.copy_(b)

    def pair_plain(x, delta):
        x_new = x + (delta + b_proj.to(bf))  # the bias as c_proj's matmul adds it: in bf16
        return x_new, F.layer_norm(x_new, (C,), ln.weight, ln.bias, EPS).to(bf)

    grads, leaves = {}, (x, delta, ln.weight, ln.bias, b_proj)
    for name, fn in (
        ("plain", torch.compile(pair_plain)),
        ("triton", torch.compile(lambda x, d: lt.residual_layernorm(x, d, ln, b_proj))),
    ):

        def step(fn=fn):
            with torch.autocast("cuda", dtype=bf):  # as the trainer runs it (layernorm_triton.py's docstring)
                x_new, y = fn(x, delta)
            torch.autograd.backward([x_new, y], [dres, dy])

        for t in leaves:  # the timed runs accumulate into .grad: start from none
            t.grad = None
        step()
        grads[name] = [t.grad.clone() for t in leaves]
        record("pair", name, step)
    pair_labels = ("dx_new", "dx_new bf16", "dweight", "dbias", "db_proj bf16")
    for label, a, r in zip(pair_labels, grads["triton"], grads["plain"], strict=True):
        check("pair", a, r, label)

    doc = {
        "what": f"a residual add + LayerNorm's backward of one micro-step: M = {M} rows, C = {C}, x float32, "
        "delta and y bf16",
        "measured_by": "scripts/layernorm_kernel_sweep.py",
        "provenance": provenance(),
        "timer": "triton.testing.do_bench (median, L2 cleared before each run)",
        "least_bytes": least_bytes,
        "module_config": {"ROWS": lt.ROWS, "BLOCK_M": lt.BLOCK_M, "num_warps": lt.NUM_WARPS},
        "triton_version": triton.__version__,
        "rows": rows,
        "failures": failures,
    }
    args.json.write_text(json.dumps(doc, indent=1) + "\n")
    timed = [r for r in rows if r["part"] == "backward" and r["config"]]
    best = min(timed, key=lambda r: r["ms"])
    plain = next(r["ms"] for r in rows if r["part"] == "backward" and r["name"] == "plain")
    print(f"backward: fastest {best['name']} {best['ms']:.3f} ms ({best['GB/s']:.0f} GB/s), plain {plain:.3f} ms")
    for f in failures:
        print(f"error: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
