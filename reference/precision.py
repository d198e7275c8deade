"""How far float32 drifts from float64 at the full GPT-2 124M shape, and how long a step takes.

    python -m reference.precision                    # B=2, T=32, synthetic 124M weights, seed 0
    python -m reference.precision --timing           # also time forward+backward at B=1, T=64
    python -m reference.precision --json FILE        # also write the numbers, with their provenance

The same synthetic weights (float32 values, so the float64 copy holds exactly the same
numbers) and the same batch go through the reference in float32 and in float64; the
float64 result is taken as exact. For logits and for each gradient tensor it reports

    max_abs   max |x32 - x64|
    rel_max   max_abs / max |x64|      (error relative to the tensor's scale)

docs/reference.md records the numbers this printed.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from reference.model import gpt2_backward, gpt2_forward
from weights import GPT2Config, synthetic


def compare_precisions(config: GPT2Config, B: int = 2, T: int = 32, seed: int = 0, attention: str = "naive") -> dict:
    """Run float32 and float64 on the same weights and batch; return the error summary."""
    p32 = synthetic(config, seed=seed, dtype=np.float32)
    p64 = {k: v.astype(np.float64) for k, v in p32.items()}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, config.vocab_size, (B, T))
    targets = rng.integers(0, config.vocab_size, (B, T))
    results = {}
    for name, params in (("float32", p32), ("float64", p64)):
        logits, loss, acts = gpt2_forward(params, config, idx, targets, attention=attention)
        grads = gpt2_backward(params, config, acts)
        results[name] = (logits, loss, grads)
        del acts
    (l32, loss32, g32), (l64, loss64, g64) = results["float32"], results["float64"]

    def err(a32, a64):
        max_abs = float(np.abs(a32.astype(np.float64) - a64).max())
        return {"max_abs": max_abs, "rel_max": max_abs / float(np.abs(a64).max())}

    grads = {name: err(g32[name], g64[name]) for name in g64}
    worst = max(grads, key=lambda n: grads[n]["rel_max"])
    return {
        "B": B, "T": T, "attention": attention,
        "logits": err(l32, l64),
        "loss32": loss32, "loss64": loss64, "loss_abs": abs(loss32 - loss64),
        "grads": grads, "worst_grad": worst,
    }  # fmt: skip


def time_step(
    config: GPT2Config, dtype, B: int = 1, T: int = 64, attention: str = "naive", repeats: int = 3
) -> tuple[float, float]:
    """Best-of-`repeats` (wall seconds, CPU seconds of this process) of one forward + backward.

    CPU time counts every BLAS thread; on a machine shared with other work it is the steadier number.
    """
    params = synthetic(config, seed=0, dtype=dtype)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, config.vocab_size, (B, T))
    targets = rng.integers(0, config.vocab_size, (B, T))
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        _, _, acts = gpt2_forward(params, config, idx, targets, attention=attention)
        gpt2_backward(params, config, acts)
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.process_time() - c0)
        del acts
    return best_wall, best_cpu


def step_flops(config: GPT2Config, B: int, T: int) -> float:
    """Matmul FLOPs of one forward + backward (backward = 2x forward): weight matrices, tied head, attention."""
    C, L = config.n_embd, config.n_layer
    forward = 2 * B * T * (12 * C * C * L + config.vocab_size * C) + 2 * 2 * B * T * T * C * L
    return 3.0 * forward


def matmul_gflops(dtype, n: int = 1024, repeats: int = 5) -> float:
    """GFLOP/s of one square n x n matmul (best of `repeats`): what BLAS manages on this machine right now."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n)).astype(dtype), rng.standard_normal((n, n)).astype(dtype)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def format_report(r: dict) -> str:
    lines = [
        f"float32 vs float64, GPT-2 124M shape, synthetic weights, B={r['B']}, T={r['T']}, attention={r['attention']}",
        f"  loss      float32 {r['loss32']:.9f}  float64 {r['loss64']:.9f}  |diff| {r['loss_abs']:.2e}",
        f"  logits    max_abs {r['logits']['max_abs']:.2e}  rel_max {r['logits']['rel_max']:.2e}",
        f"  grads     worst tensor {r['worst_grad']}: max_abs {r['grads'][r['worst_grad']]['max_abs']:.2e}"
        f"  rel_max {r['grads'][r['worst_grad']]['rel_max']:.2e}",
    ]
    kinds: dict[str, float] = {}
    for name, e in r["grads"].items():
        kind = name.split(".", 2)[2] if name.startswith("h.") else name
        kinds[kind] = max(kinds.get(kind, 0.0), e["rel_max"])
    lines.append("  grads rel_max by tensor kind (worst over layers):")
    lines += [f"    {kind:22s} {v:.2e}" for kind, v in kinds.items()]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--attention", choices=("naive", "tiled"), default="naive")
    ap.add_argument("--timing", action="store_true", help="also time forward+backward at B=1, T=64")
    ap.add_argument("--json", metavar="FILE", help="write the precision numbers and the provenance record")
    args = ap.parse_args(argv)
    config = GPT2Config.gpt2_124m()
    report = compare_precisions(config, args.batch, args.seq, args.seed, args.attention)
    print(format_report(report))
    if args.json:
        import json
        from pathlib import Path

        from weights.provenance import provenance

        doc = {"measured_by": "python -m reference.precision", "provenance": provenance(), "seed": args.seed, **report}
        Path(args.json).write_text(json.dumps(doc, indent=1, default=float) + "\n")
    if args.timing:
        gflop = step_flops(config, 1, 64) / 1e9
        print(f"forward+backward 124M, B=1, T=64: {gflop:.1f} GFLOP of matmuls")
        for dtype in (np.float32, np.float64):
            name = np.dtype(dtype).name
            print(f"  {name}: a 1024^3 matmul runs at {matmul_gflops(dtype):.0f} GFLOP/s here now")
            for attention in ("naive", "tiled"):
                wall, cpu = time_step(config, dtype, attention=attention)
                print(
                    f"  {name} {attention:5s}: wall {wall:.2f} s ({gflop / wall:.0f} GFLOP/s), "
                    f"CPU {cpu:.2f} s (best of 3)"
                )


if __name__ == "__main__":
    main()
