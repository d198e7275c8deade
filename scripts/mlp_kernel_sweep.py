"""Time the MLP's GELU steps on the GPU: cuBLAS + torch.compile's kernels against the fused Triton kernels.

    python scripts/mlp_kernel_sweep.py [--rows 65536] [--json mlp-kernel-sweep.json] [--quick]

The shapes are one micro-step of GPT-2 124M at the trainer's defaults (B*T = 65,536 rows, C = 768,
H = 3,072), bf16. Timed, each by triton.testing.do_bench (the median; L2 cleared before each run):

  forward   plain       F.linear (cuBLAS, bias in its epilogue) then GELU, under torch.compile
            triton ...  torch_impl/mlp_triton.py's linear_gelu_forward kernel at one configuration
  backward  plain       dg = dy w_proj (cuBLAS), dh = gelu_backward(dg, h) and db_fc = sum(dh), compiled
            triton ...  the matmul_gelu_backward kernel (dh and the partial sums of db_fc), plus the sum
  mlp       plain       the whole MLP forward and backward, model.py's lines, compiled
            triton      the same through fused_mlp (autotuned over mlp_triton.CONFIGS), compiled

"triton BM/BN/BK/W/S" is BLOCK_M/BLOCK_N/BLOCK_K, num_warps and num_stages (GROUP_M 8). Every result is
checked against the plain path's: the kernels do the same arithmetic but sum the matmul in another order,
so a value may differ from plain's by a rounding step of bf16 (2^-8 relative; checked at 2^-6 of the
tensor's largest value). Writes --json with the provenance record (commit, versions, GPU, date). Exits 1
when a check fails, 2 without a CUDA GPU.
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
SMEM = 227 * 1024  # an H100/H200 SM's shared memory for one block
# (BLOCK_M, BLOCK_N, warps): 4 warps hold at most a 128 x 128 float32 accumulator, 8 warps 128 x 256
TILES = [(64, 128, 4), (128, 64, 4), (128, 128, 4), (64, 256, 8), (128, 128, 8), (128, 256, 8), (256, 64, 8),
         (256, 128, 8)]  # fmt: skip
SWEEP = [(bm, bn, 64, w, s) for bm, bn, w in TILES for s in (3, 4, 5) if (bm + bn) * 64 * 2 * s <= SMEM]
REL = 2.0**-6  # the check: max |fused - plain| <= REL * max |plain|


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=65536, help="rows M = B*T of one micro-step")
    ap.add_argument("--json", type=Path, default=Path("mlp-kernel-sweep.json"))
    ap.add_argument("--quick", action="store_true", help="time only the configurations of mlp_triton.CONFIGS")
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

    x, dy = randn(M, C), randn(M, C, std=1e-3)
    w_fc, b_fc, w_proj, b_proj = randn(H, C, std=0.02), randn(H, std=0.02), randn(C, H, std=0.02), randn(C, std=0.02)
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

    # ---- forward: h = x w_fc^T + b_fc, g = gelu(h)
    @torch.compile
    def forward_plain(x, w, b):
        h = F.linear(x, w, b)
        return h, F.gelu(h, approximate="tanh")

    h_ref, g_ref = forward_plain(x, w_fc, b_fc)
    record("forward", "plain", lambda: forward_plain(x, w_fc, b_fc))

    # ---- backward: dh = (dy w_proj) * gelu'(h), db_fc = sum_rows dh
    @torch.compile
    def backward_plain(dy, w, h):
        dh = torch.ops.aten.gelu_backward(dy @ w, h, approximate="tanh")
        return dh, dh.float().sum(0)

    dh_ref, db_ref = backward_plain(dy, w_proj, h_ref)
    record("backward", "plain", lambda: backward_plain(dy, w_proj, h_ref))

    configs = [(m, n, k, w, s) for m, n, k, _, w, s in mt.CONFIGS] if args.quick else SWEEP
    for bm, bn, bk, w, s in configs:
        name, cfg = f"triton {bm}/{bn}/{bk}/{w}/{s}", {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "num_warps": w,
                                                       "num_stages": s}  # fmt: skip
        grid = (triton.cdiv(M, bm) * triton.cdiv(H, bn),)
        h, gg = torch.empty_like(h_ref), torch.empty_like(h_ref)
        dh = torch.empty_like(h_ref)
        partial = torch.empty((triton.cdiv(M, mt.SLOT), H), dtype=torch.float32, device="cuda")

        def fwd(bm=bm, bn=bn, bk=bk, w=w, s=s, grid=grid, h=h, gg=gg):
            mt._linear_gelu_forward_kernel.fn[grid](
                x, w_fc, b_fc, h, gg, M, H, C, x.stride(0), x.stride(1), w_fc.stride(0), w_fc.stride(1),
                h.stride(0), gg.stride(0), HAS_BIAS=True, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8,
                num_warps=w, num_stages=s,
            )  # fmt: skip

        def bwd(bm=bm, bn=bn, bk=bk, w=w, s=s, grid=grid, dh=dh, partial=partial):
            mt._matmul_gelu_backward_kernel.fn[grid](
                dy, w_proj, h_ref, dh, partial, M, H, C, dy.stride(0), dy.stride(1), w_proj.stride(0),
                w_proj.stride(1), h_ref.stride(0), dh.stride(0), DBIAS=True, SLOT=mt.SLOT, BLOCK_M=bm, BLOCK_N=bn,
                BLOCK_K=bk, GROUP_M=8, num_warps=w, num_stages=s,
            )  # fmt: skip
            return partial.sum(0)

        try:
            fwd()
            db = bwd()
            torch.cuda.synchronize()
        except Exception as e:  # a configuration the GPU cannot hold (shared memory, registers): skipped, said
            print(f"{name}: not run ({type(e).__name__}: {str(e).splitlines()[0][:120]})", flush=True)
            rows.append({"part": "both", "name": name, "config": cfg, "ms": None, "error": str(e)[:300]})
            continue
        check(f"{name} h", h, h_ref)
        check(f"{name} g", gg, g_ref)
        check(f"{name} dh", dh, dh_ref)
        check(f"{name} db_fc", db, db_ref)
        record("forward", name, fwd, cfg)
        record("backward", name, bwd, cfg)

    # ---- the whole MLP, forward and backward, as the trainer runs it (autocast bf16, compiled)
    params = [t.float().requires_grad_() for t in (w_fc, b_fc, w_proj, b_proj)]
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
        "what": f"the MLP's GELU steps of one micro-step: M = {M} rows, C = {C}, H = {H}, bf16",
        "measured_by": "scripts/mlp_kernel_sweep.py",
        "provenance": provenance(),
        "timer": "triton.testing.do_bench (median, L2 cleared before each run)",
        "module_configs": mt.CONFIGS,
        "triton_version": triton.__version__,
        "rows": rows,
        "failures": failures,
    }
    args.json.write_text(json.dumps(doc, indent=1) + "\n")
    for part in ("forward", "backward"):
        timed = [r for r in rows if r["part"] == part and r["config"] and r["ms"]]
        plain = next(r["ms"] for r in rows if r["part"] == part and r["name"] == "plain")
        if timed:
            best = min(timed, key=lambda r: r["ms"])
            print(f"{part}: fastest {best['name']} {best['ms']:.3f} ms, plain {plain:.3f} ms")
    for f in failures:
        print(f"error: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
