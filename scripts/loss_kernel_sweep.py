"""Time one chunk's cross-entropy and gradient on the GPU: torch.compile's kernels against the Triton kernel.

    python scripts/loss_kernel_sweep.py [--rows 8192] [--forms two-pass,whole-rows] [--json loss-kernel-sweep.json]

The chunk is what the trainer's chunked loss hands over at its defaults: (8192, 50304) bf16 logits of
GPT-2's head (V = 50,257), random targets. Timed, each by triton.testing.do_bench (which clears the L2
cache before every run and reports the median):

  torch-compiled    torch_impl/chunked_loss.py's _cross_entropy_rows_torch under torch.compile
                    (--loss-impl chunked: the kernels inductor generates for it)
  triton B/W/P      torch_impl/cross_entropy_triton.py's kernel with BLOCK=B columns, W warps and P
                    programs per SM (P = 0: one program per row), the two-pass kernel
  whole-rows W      its whole-row kernel (each row held in registers, read once) with W warps
--loss-impl chunked-triton runs the whole-row kernel at WHOLE_ROW_NUM_WARPS where WHOLE_ROWS is set (and
the row fits), else the two-pass kernel at the module's BLOCK, NUM_WARPS and PROGRAMS_PER_SM.

Every configuration's loss and dz are checked against the module's own configuration (they do the same
arithmetic, BLOCK only changes the order of the log-sum-exp's sums: 1e-5 relative on the loss, one bf16
step on dz) and against torch-compiled (the suite's BF16 loss ceiling). GB/s counts the bytes a kernel
must move at least: the bf16 logits read once and dz written once. Writes --json with the provenance
record (commit, versions, GPU, date). Exits 1 when a check fails, 2 without a CUDA GPU.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository's packages

import torch  # noqa: E402

from conformance.tolerances import BF16  # noqa: E402
from torch_impl import cross_entropy_triton as ce  # noqa: E402
from torch_impl.chunked_loss import _cross_entropy_rows_torch  # noqa: E402
from weights.errors import ArgumentParser, UsageError, run_cli  # noqa: E402
from weights.provenance import provenance  # noqa: E402

V, VP = 50257, 50304
# (BLOCK, num_warps, programs per SM; 0: one program per row)
CONFIGS = [(b, w, p) for b in (2048, 4096, 8192, 16384) for w in (4, 8, 16, 32) for p in (1, 2, 4, 8, 0)
           if b // (32 * w) >= 1]  # fmt: skip
WHOLE_ROW_WARPS = (4, 8, 16, 32)
# two-pass: every CONFIGS launch; two-pass-module: the two-pass kernel at the module's launch alone
FORMS = ("two-pass", "whole-rows", "two-pass-module")


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=8192, help="rows of the chunk (the trainer's --loss-chunk-rows)")
    ap.add_argument("--forms", default="two-pass,whole-rows", help=f"which kernels to time, a comma list of {FORMS}")
    ap.add_argument("--json", type=Path, default=Path("loss-kernel-sweep.json"))
    args = ap.parse_args(argv)
    forms = args.forms.split(",")
    if any(f not in FORMS for f in forms):
        raise UsageError(f"--forms {args.forms!r}: a comma list of {FORMS}")
    if not torch.cuda.is_available():
        raise UsageError("no CUDA GPU here: the sweep times GPU kernels")
    if args.rows < 1:
        raise UsageError(f"--rows {args.rows}: must be >= 1")
    import triton
    from triton.testing import do_bench

    g = torch.Generator(device="cuda").manual_seed(0)
    R = args.rows
    z = (3 * torch.randn(R, VP, device="cuda", generator=g)).to(torch.bfloat16)
    targets = torch.randint(0, V, (R,), device="cuda", generator=g)
    targets[::97] = -1  # a few ignored rows
    ok = targets != -1
    n_valid = ok.sum().float()
    cols = torch.arange(VP, device="cuda")
    least_bytes = 2 * R * VP * z.element_size()
    rows = []

    def record(name, fn, block=None, warps=None, per_sm=None):
        ms = do_bench(fn, warmup=25, rep=100)
        rows.append({"name": name, "block": block, "num_warps": warps, "programs_per_sm": per_sm, "ms": ms,
                     "GB/s": least_bytes / ms / 1e6})  # fmt: skip
        print(f"{name:>18}  {ms:8.3f} ms  {least_bytes / ms / 1e6:8.0f} GB/s", flush=True)

    torch_rows = torch.compile(_cross_entropy_rows_torch)
    ref_loss, ref_dz = torch_rows(z, targets, ok, n_valid, cols, V, torch.float32, True)
    record("torch-compiled", lambda: torch_rows(z, targets, ok, n_valid, cols, V, torch.float32, True))

    base_loss, base_dz = ce.cross_entropy_rows(z, targets, n_valid, V)
    failures = []
    loss_err = float((base_loss.sum() - ref_loss.sum()).abs() / ref_loss.sum().abs())
    if loss_err > BF16["loss"]:
        failures.append(f"the Triton kernel's loss is {loss_err:.2e} from torch-compiled's (ceiling {BF16['loss']})")
    sms = torch.cuda.get_device_properties(0).multi_processor_count

    def check(name, loss, dz):
        torch.cuda.synchronize()
        if not torch.allclose(loss, base_loss, rtol=1e-5, atol=1e-5) or not torch.allclose(
            dz.float(), base_dz.float(), rtol=2.0**-7, atol=1e-9
        ):
            failures.append(f"{name}: loss or dz differs from the module's configuration")

    for warps in WHOLE_ROW_WARPS if "whole-rows" in forms else ():
        loss = torch.empty(R, device="cuda")
        dz = torch.empty_like(z)
        P0, P1, P2 = ce.row_pieces(VP)

        def launch_whole(warps=warps, loss=loss, dz=dz):
            ce._cross_entropy_whole_rows_kernel[(R,)](z, targets, n_valid, loss, dz, z.stride(0), dz.stride(0), V, VP,
                                                      P0=P0, P1=P1, P2=P2, num_warps=warps)  # fmt: skip

        launch_whole()
        check(f"whole rows, {warps} warps", loss, dz)
        record(f"whole-rows {warps}", launch_whole, None, warps, None)
        rows[-1]["form"] = "whole-rows"
    module_launch = [(ce.BLOCK, ce.NUM_WARPS, ce.PROGRAMS_PER_SM)] if "two-pass-module" in forms else []
    two_pass = CONFIGS if "two-pass" in forms else module_launch
    for block, warps, per_sm in two_pass:
        loss = torch.empty(R, device="cuda")
        dz = torch.empty_like(z)
        grid = (min(R, per_sm * sms) if per_sm else R,)

        def launch(block=block, warps=warps, grid=grid, loss=loss, dz=dz):
            ce._cross_entropy_rows_kernel[grid](z, targets, n_valid, loss, dz, z.stride(0), dz.stride(0), R, V, VP,
                                                BLOCK=block, WRITE_GRAD=True, num_warps=warps)  # fmt: skip

        launch()
        check(f"BLOCK={block} num_warps={warps} programs/SM={per_sm}", loss, dz)
        record(f"triton {block}/{warps}/{per_sm}", launch, block, warps, per_sm)
        rows[-1]["form"] = "two-pass"

    doc = {
        "what": f"one chunk's cross-entropy and gradient, ({R}, {VP}) bf16 logits, V = {V}",
        "measured_by": "scripts/loss_kernel_sweep.py",
        "provenance": provenance(),
        "timer": "triton.testing.do_bench (median, L2 cleared before each run)",
        "least_bytes": least_bytes,
        "module_config": {
            "block": ce.BLOCK,
            "num_warps": ce.NUM_WARPS,
            "programs_per_sm": ce.PROGRAMS_PER_SM,
            "whole_rows": ce.WHOLE_ROWS,
            "whole_row_num_warps": ce.WHOLE_ROW_NUM_WARPS,
            "whole_row_pieces": list(ce.row_pieces(VP)),
        },
        "sm_count": sms,
        "triton_version": triton.__version__,
        "rows": rows,
        "failures": failures,
    }
    args.json.write_text(json.dumps(doc, indent=1) + "\n")
    best = min((r for r in rows if r.get("form")), key=lambda r: r["ms"])
    print(f"fastest Triton configuration: {best['name']}, {best['ms']:.3f} ms; torch-compiled {rows[0]['ms']:.3f} ms")
    for f in failures:
        print(f"error: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
