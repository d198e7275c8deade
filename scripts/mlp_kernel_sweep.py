"""Time the MLP's GELU, backward and forward, on the GPU: torch.compile's kernels against --mlp-impl triton's.

    python scripts/mlp_kernel_sweep.py [--rows 65536] [--json mlp-kernel-sweep.json]

The shapes are one micro-step of GPT-2 124M at the trainer's defaults (B*T = 65,536 rows, H = 3,072), bf16.
Timed, each by triton.testing.do_bench (the median; L2 cleared before each run):

  backward  plain       dh = gelu_backward(dg, h) and db_fc = sum(dh) under torch.compile (the two kernels
                        inductor makes of model.py's MLP backward)
            triton ...  torch_impl/mlp_triton.py's gelu_backward_bias_grad kernel (dh and the partial sums
                        of db_fc) plus the partial sums' sum, at one configuration
  forward   plain       g = F.gelu(h, approximate="tanh") under torch.compile (inductor's kernel)
            triton B/W  torch_impl/mlp_triton.py's gelu_forward kernel, BLOCK elements per program
  mlp       plain       the whole MLP forward and backward at C = 768, model.py's lines, compiled
            triton      the same through fused_mlp, compiled

"triton R/BM/BN/W" is ROWS/BLOCK_M/BLOCK_N and num_warps. Every result is checked against the plain
path's: the same arithmetic, so dh may differ by a rounding step of bf16 (2^-8 relative) and db_fc by
float32 summation order; both are checked at 2^-6 of the tensor's largest value, and so is g. GB/s
counts the bytes the kernel must move: dg and h read once, dh written once (forward: h read, g written). Writes --json
with the provenance record (commit, versions, GPU, date). Exits 1 when a check fails, 2 without a CUDA GPU.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository's packages

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from torch_impl import mlp_triton as mt  # noqa: E402
from weights.errors import ArgumentParser, UsageError, run_cli  # noqa: E402
from weights.provenance import provenance  # noqa: E402

C, H = 768, 3072
SWEEP = [(r, bm, bn, w) for r in (256, 512, 1024) for bm in (16, 32, 64) for bn in (128, 256, 512) for w in (4, 8)
         if bm * bn <= 16384]  # fmt: skip
FORWARD_SWEEP = [(b, w) for b in (512, 1024, 2048, 4096) for w in (2, 4, 8)]
REL = 2.0**-6  # the check: max |fused - plain| <= REL * max |plain|


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=65536, help="rows M = B*T of one micro-step")
    ap.add_argument("--json", type=Path, default=Path("mlp-kernel-sweep.json"))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise UsageError("no CUDA GPU here: the sweep times GPU kernels")
    if args.rows < 1:
        raise UsageError(f"--rows {args.rows}: must be >= 1")
    import triton
    from triton.testing import do_bench

    M, bf = args.rows, torch.bfloat16
    g = torch.Generator(device="cuda").manual_seed(0)

    def randn(*shape, std=1.0):
        return (std * torch.randn(*shape, device="cuda", generator=g)).to(bf)

    rows, failures = [], []

    def record(part, name, fn, cfg=None):
        ms = do_bench(fn, warmup=25, rep=100)
        rows.append({"part": part, "name": name, "config": cfg, "ms": ms})
        print(f"{part:>8} {name:>24}  {ms:8.3f} ms", flush=True)
        return ms

    def check(what, got, ref):
        err = float((got.float() - ref.float()).abs().max())
        ceiling = REL * float(ref.float().abs().max())
        if not err <= ceiling:
            failures.append(f"{what}: max |fused - plain| {err:.3e} > {ceiling:.3e}")

    # ---- dh = dg * gelu'(h), db_fc = sum_rows dh
    dg, h = randn(M, H, std=1e-2), randn(M, H)
    least_bytes = 3 * M * H * dg.element_size()

    @torch.compile
    def backward_plain(dg, h):
        dh = torch.ops.aten.gelu_backward(dg, h, approximate="tanh")
        return dh, dh.float().sum(0)

    dh_ref, db_ref = backward_plain(dg, h)
    record("backward", "plain", lambda: backward_plain(dg, h))
    dh_mod, db_mod = mt.gelu_backward_bias_grad(dg, h)
    check("module dh", dh_mod, dh_ref)
    check("module db_fc", db_mod, db_ref)

    for r, bm, bn, w in SWEEP:
        name, cfg = f"triton {r}/{bm}/{bn}/{w}", {"ROWS": r, "BLOCK_M": bm, "BLOCK_N": bn, "num_warps": w}
        dh = torch.empty_like(h)
        partial = torch.empty((triton.cdiv(M, r), H), dtype=torch.float32, device="cuda")
        grid = (triton.cdiv(M, r), triton.cdiv(H, bn))

        def launch(r=r, bm=bm, bn=bn, w=w, dh=dh, partial=partial, grid=grid):
            mt._gelu_backward_bias_grad_kernel[grid](
                dg, h, dh, partial, M, H, dg.stride(0), h.stride(0), dh.stride(0),
                DBIAS=True, ROWS=r, BLOCK_M=bm, BLOCK_N=bn, num_warps=w,
            )  # fmt: skip
            return partial.sum(0)

        db = launch()
        check(f"{name} dh", dh, dh_ref)
        check(f"{name} db_fc", db, db_ref)
        ms = record("backward", name, launch, cfg)
        rows[-1]["GB/s"] = least_bytes / ms / 1e6

    # ---- g = gelu(h)
    @torch.compile
    def forward_plain(h):
        return F.gelu(h, approximate="tanh")

    g_ref = forward_plain(h)
    record("forward", "plain", lambda: forward_plain(h))
    check("module g", mt.gelu_forward(h), g_ref)
    forward_bytes = 2 * M * H * h.element_size()
    for b, w in FORWARD_SWEEP:
        name, cfg = f"triton {b}/{w}", {"BLOCK": b, "num_warps": w}
        gk = torch.empty_like(h)

        def launch_forward(b=b, w=w, gk=gk):
            mt._gelu_forward_kernel[(triton.cdiv(h.numel(), b),)](h, gk, h.numel(), BLOCK=b, num_warps=w)
            return gk

        check(f"{name} g", launch_forward(), g_ref)
        ms = record("forward", name, launch_forward, cfg)
        rows[-1]["GB/s"] = forward_bytes / ms / 1e6

    # ---- the whole MLP, forward and backward, as the trainer runs it (autocast bf16, compiled)
    x, dy = randn(M, C), randn(M, C, std=1e-3)
    params = [randn(*shape, std=0.02).float().requires_grad_() for shape in ((H, C), (H,), (C, H), (C,))]
    xin = x.float().requires_grad_()

    def mlp_plain(x, w_fc, b_fc, w_proj, b_proj):
        return F.linear(F.gelu(F.linear(x, w_fc, b_fc), approximate="tanh"), w_proj, b_proj)

    grads = {}
    for name, fn in (("plain", torch.compile(mlp_plain)), ("triton", torch.compile(mt.fused_mlp))):

        def step(fn=fn):
            with torch.autocast("cuda", dtype=bf):
                y = fn(xin, *params)
            y.backward(dy)

        for t in (xin, *params):  # the timed runs before accumulated into .grad: start from none
            t.grad = None
        step()
        grads[name] = [t.grad.clone() for t in (xin, *params)]
        record("mlp", name, step)
    labels = ("dx", "dW_fc", "db_fc", "dW_proj", "db_proj")
    for label, a, b in zip(labels, grads["triton"], grads["plain"], strict=True):
        check(f"mlp {label}", a, b)

    doc = {
        "what": f"the MLP's GELU backward of one micro-step: M = {M} rows, H = {H} (C = {C} for the MLP), bf16",
        "measured_by": "scripts/mlp_kernel_sweep.py",
        "provenance": provenance(),
        "timer": "triton.testing.do_bench (median, L2 cleared before each run)",
        "least_bytes": least_bytes,
        "module_config": {
            "ROWS": mt.ROWS,
            "BLOCK_M": mt.BLOCK_M,
            "BLOCK_N": mt.BLOCK_N,
            "num_warps": mt.NUM_WARPS,
            "GELU_BLOCK": mt.GELU_BLOCK,
            "GELU_NUM_WARPS": mt.GELU_NUM_WARPS,
        },
        "triton_version": triton.__version__,
        "rows": rows,
        "failures": failures,
    }
    args.json.write_text(json.dumps(doc, indent=1) + "\n")
    for part in ("backward", "forward"):
        best = min((r for r in rows if r["part"] == part and r["config"]), key=lambda r: r["ms"])
        plain = next(r["ms"] for r in rows if r["part"] == part and r["name"] == "plain")
        print(f"{part}: fastest {best['name']} {best['ms']:.3f} ms ({best['GB/s']:.0f} GB/s), plain {plain:.3f} ms")
    for f in failures:
        print(f"error: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
