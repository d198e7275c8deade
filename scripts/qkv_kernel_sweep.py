"""Time the backward of attention's split into heads on the GPU: torch.compile's kernels against --qkv-impl triton's.

    python scripts/qkv_kernel_sweep.py [--batch 64] [--json qkv-kernel-sweep.json]

The shapes are one micro-step of GPT-2 124M at the trainer's defaults (B = 64 sequences of T = 1024, 12
heads of 64): dq, dk, dv in bf16 as F.scaled_dot_product_attention's backward hands them back (so in the
layout its kernel writes), from q, k, v that are views of one (B, T, 3C) tensor, as in the model. Timed,
each by triton.testing.do_bench (the median; L2 cleared before each run):

  plain       dqkv = the three with their heads merged, concatenated (B T, 3C), and its column sums (c_attn's
              bias gradient), under torch.compile (the kernels inductor makes of it: the same two as in the
              training step's profile)
  triton ...  torch_impl/qkv_triton.py's kernel at one configuration, plus the sum of its per-program
              column sums

"triton R/BM/W" is ROWS/BLOCK_M and num_warps. Every result is checked: dqkv must equal the plain one bit
for bit (it is a copy), and the column sums must be within 1e-5 of the sum of |dqkv| of float64's. GB/s
counts the bytes the kernel must move: dq, dk, dv read once, dqkv written once. Writes --json with the
provenance record (commit, versions, GPU, date). Exits 1 when a check fails, 2 without a CUDA GPU.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository's packages

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from torch_impl import qkv_triton as qt  # noqa: E402
from weights.errors import ArgumentParser, UsageError, run_cli  # noqa: E402
from weights.provenance import provenance  # noqa: E402

T, NH, HS = 1024, 12, 64
SWEEP = [(r, bm, w) for r in (64, 128, 256, 512, 1024) for bm in (8, 16, 32, 64) for w in (1, 2, 4, 8) if bm <= r]
DB_REL = 1e-5  # of float64's sum of |dqkv| per column


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64, help="sequences B of T = 1024 tokens in one micro-step")
    ap.add_argument("--json", type=Path, default=Path("qkv-kernel-sweep.json"))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise UsageError("no CUDA GPU here: the sweep times GPU kernels")
    if args.batch < 1:
        raise UsageError(f"--batch {args.batch}: must be >= 1")
    import triton
    from triton.testing import do_bench

    B, C, bf = args.batch, NH * HS, torch.bfloat16
    M, W = B * T, 3 * NH * HS
    g = torch.Generator(device="cuda").manual_seed(0)
    qkv = torch.randn(B, T, W, device="cuda", generator=g).to(bf).requires_grad_()
    q, k, v = (t.view(B, T, NH, HS).transpose(1, 2) for t in qkv.split(C, dim=2))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    dq, dk, dv = torch.autograd.grad(y, (q, k, v), torch.randn(y.shape, device="cuda", generator=g).to(bf))
    layout = {name: list(t.stride()) for name, t in (("dq", dq), ("dk", dk), ("dv", dv))}
    if dk.stride() != dv.stride():  # the kernel reads both with one set of strides (the module copies them so)
        dk, dv = dk.contiguous(), dv.contiguous()
    del qkv, q, k, v, y

    rows, failures = [], []

    def record(name, fn, cfg=None):
        ms = do_bench(fn, warmup=25, rep=100)
        rows.append({"name": name, "config": cfg, "ms": ms, "GB/s": 2 * M * W * 2 / ms / 1e6})
        print(f"{name:>20}  {ms:8.3f} ms", flush=True)

    @torch.compile
    def plain(dq, dk, dv):
        dqkv = torch.cat([t.transpose(1, 2).reshape(B, T, -1) for t in (dq, dk, dv)], dim=2).reshape(M, W)
        return dqkv, dqkv.sum(0)  # the second: c_attn's bias gradient, as autograd sums it

    ref, _ = plain(dq, dk, dv)
    ref64 = ref.double()
    db_ref, db_scale = ref64.sum(0), ref64.abs().sum(0)
    record("plain", lambda: plain(dq, dk, dv))

    for r, bm, nw in SWEEP:
        name, cfg = f"triton {r}/{bm}/{nw}", {"ROWS": r, "BLOCK_M": bm, "num_warps": nw}
        out = torch.empty((M, W), dtype=bf, device="cuda")
        tiles = triton.cdiv(M, r)
        part = torch.empty((tiles, W), device="cuda")

        def launch(r=r, bm=bm, nw=nw, out=out, part=part, tiles=tiles):
            qt._qkv_backward_gather_kernel[(tiles, 3 * NH)](
                dq, dk, dv, out, part, M, T, NH, NH,
                dq.stride(0), dq.stride(1), dq.stride(2), dk.stride(0), dk.stride(1), dk.stride(2), out.stride(0),
                HS=HS, DBIAS=True, ROWS=r, BLOCK_M=bm, BLOCK_D=HS, num_warps=nw,
            )  # fmt: skip
            return out, part.sum(0)

        got, db = launch()
        if not torch.equal(got, ref):
            failures.append(f"{name}: dqkv is not the concatenation")
        excess = float(((db.double() - db_ref).abs() - DB_REL * db_scale).max())
        if excess > 0:
            failures.append(f"{name}: db off by {excess:.3e} beyond {DB_REL} of sum |dqkv|")
        record(name, launch, cfg)
    got, _ = qt.qkv_backward_gather(dq, dk, dv)  # the module's own entry
    if not torch.equal(got, ref):
        failures.append("module: dqkv is not the concatenation")

    doc = {
        "what": f"the backward of the split into heads of one micro-step: dq, dk, dv (B={B}, NH={NH}, T={T}, "
        f"HS={HS}) bf16 from SDPA's backward -> dqkv ({M}, {W}) and its column sums",
        "measured_by": "scripts/qkv_kernel_sweep.py",
        "provenance": provenance(),
        "timer": "triton.testing.do_bench (median, L2 cleared before each run)",
        "least_bytes": 2 * M * W * 2,
        "sdpa_grad_strides": layout,
        "module_config": {"ROWS": qt.ROWS, "BLOCK_M": qt.BLOCK_M, "num_warps": qt.NUM_WARPS},
        "triton_version": triton.__version__,
        "rows": rows,
        "failures": failures,
    }
    args.json.write_text(json.dumps(doc, indent=1) + "\n")
    timed = [r for r in rows if r["config"]]
    best = min(timed, key=lambda r: r["ms"])
    print(f"fastest {best['name']} {best['ms']:.3f} ms ({best['GB/s']:.0f} GB/s), plain {rows[0]['ms']:.3f} ms")
    for f in failures:
        print(f"error: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
