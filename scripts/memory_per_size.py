"""Memory of one training step (forward, backward, AdamW) per GPT-2 size and backend, measured.

    python scripts/memory_per_size.py [--sizes gpt2,gpt2-medium,gpt2-large,gpt2-xl] [--backends ...]
        [--batch 1] [--seq 1024] [--json memory-per-size.json]

Each (size, backend) runs in a process of its own, so that no other run's memory is in its number:
synthetic weights of the size (weights.synthetic, made and saved once per size, loaded by each process),
one training step at B x T on random ids, and

    torch-cuda-f32            torch.cuda.max_memory_allocated(): the peak of the tensors (parameters,
    torch-cuda-bf16           gradients, AdamW's moments, activations, the logits) since before the model
    torch-cuda-bf16-chunked   was made; bf16 = autocast; chunked = --loss-impl chunked (no full logits);
                              also max_memory_reserved() (what torch's caching allocator held)
    numba-cuda-f32            the device memory the process lost between before the model and after the step
                              (free memory from the driver): numba_impl allocates every buffer up front, and
                              the loaded kernels and the CUDA context's own growth are in it
    numpy-f32                 the host: the process's peak resident memory minus its resident memory
                              before the weights were made (the float32 NumPy reference, tiled attention)

The JSON holds every measurement with the arithmetic beside it (16 bytes per parameter for float32
weights, gradients and AdamW's two moments) and the provenance record. A run that fails (out of
memory, say) is recorded with its one-line error and the others go on; exit status 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository's packages

from weights.errors import ArgumentParser, UsageError, run_cli  # noqa: E402

SIZES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
BACKENDS = ("torch-cuda-f32", "torch-cuda-bf16", "torch-cuda-bf16-chunked", "numba-cuda-f32", "numpy-f32")
HOST_BACKENDS = ("numpy-f32",)


def _rss_bytes() -> int:
    """This process's resident memory now (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _batch(config, B: int, T: int):
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.integers(0, config.vocab_size, (B, T)), rng.integers(0, config.vocab_size, (B, T))


def measure_one(size: str, backend: str, B: int, T: int, folder: str) -> dict:
    """One training step of `size` (its synthetic weights saved in `folder`) on `backend` at B x T, in this
    process: what it used (module docstring)."""
    import weights

    config = weights.GPT2Config.preset(size)
    idx, targets = _batch(config, B, T)
    base_rss = _rss_bytes()
    if backend.startswith("torch-cuda"):
        import torch

        from torch_impl.model import GPT2

        torch.cuda.reset_peak_memory_stats()
        params = weights.load(folder, config=config)[0]
        model = GPT2.from_params(params, config, device="cuda", padded_vocab_size=50304)
        del params
        if backend.endswith("chunked"):
            model.set_loss_impl("chunked")
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        x, y = torch.from_numpy(idx).cuda(), torch.from_numpy(targets).cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled="bf16" in backend):
            _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        torch.cuda.synchronize()
        return {"peak_allocated_bytes": torch.cuda.max_memory_allocated(),
                "peak_reserved_bytes": torch.cuda.max_memory_reserved(), "loss": loss.item()}  # fmt: skip
    if backend == "numba-cuda-f32":
        from numba import cuda

        from numba_impl.model import NumbaGPT2

        ctx = cuda.current_context()
        free_before = ctx.get_memory_info()[0]
        params = weights.load(folder, config=config)[0]
        model = NumbaGPT2(params, config, max_batch=B, max_seq=T)
        del params
        loss = model.step(idx, targets, lr=1e-4)
        model.synchronize()
        return {"device_used_bytes": free_before - ctx.get_memory_info()[0], "loss": float(loss)}
    if backend == "numpy-f32":
        import reference

        params = weights.load(folder, config=config)[0]
        state: dict = {}
        _, loss, grads = reference.forward_backward(params, config, idx, targets, attention="tiled")
        reference.adamw_step(params, grads, state, lr=1e-4)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
        return {"host_peak_bytes": peak - base_rss, "loss": float(loss)}
    raise UsageError(f"--backends: unknown backend {backend!r} (known: {', '.join(BACKENDS)})")


def run_child(size: str, backend: str, B: int, T: int, folder: Path) -> dict:
    """measure_one in a fresh process; its JSON line, or the failure's last line."""
    cmd = [
        sys.executable,
        __file__,
        "--one",
        size,
        backend,
        "--weights",
        str(folder),
        "--batch",
        str(B),
        "--seq",
        str(T),
    ]
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True)
    row = {"size": size, "backend": backend, "B": B, "T": T, "seconds": round(time.monotonic() - t0, 1)}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode == 0 and lines:
        row.update(json.loads(lines[-1]))
    else:
        err = [ln for ln in (p.stderr or p.stdout).splitlines() if ln.strip()]
        row["error"] = err[-1] if err else f"exit status {p.returncode}"
    return row


def arithmetic(size: str) -> dict:
    """The bytes docs/sizes.md computes: float32 weights, gradients and AdamW's two moments."""
    import weights

    n = weights.num_params(weights.GPT2Config.preset(size))
    return {"params": n, "weights_grads_adamw_bytes": 16 * n}


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    ap = ArgumentParser(prog="scripts/memory_per_size.py", description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated, of {', '.join(SIZES)}")
    ap.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated, of {', '.join(BACKENDS)}")
    ap.add_argument("--batch", type=int, default=1, help="B (default 1)")
    ap.add_argument("--seq", type=int, default=1024, help="T (default 1024)")
    ap.add_argument("--json", default="memory-per-size.json")
    ap.add_argument("--one", nargs=2, metavar=("SIZE", "BACKEND"), help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)  # the child's: the parent's saved synthetic weights
    args = ap.parse_args(argv)
    if args.one:  # the child: one measurement, one JSON line
        print(json.dumps(measure_one(args.one[0], args.one[1], args.batch, args.seq, args.weights)))
        return 0
    sizes, backends = args.sizes.split(","), args.backends.split(",")
    for s in sizes:
        if s not in SIZES:
            raise UsageError(f"--sizes: unknown size {s!r} (known: {', '.join(SIZES)})")
    for b in backends:
        if b not in BACKENDS:
            raise UsageError(f"--backends: unknown backend {b!r} (known: {', '.join(BACKENDS)})")
    if not 1 <= args.seq <= 1024 or args.batch < 1:
        raise UsageError(f"--batch {args.batch} --seq {args.seq}: need B >= 1 and 1 <= T <= 1024 (n_ctx)")
    if any(b not in HOST_BACKENDS for b in backends):
        import torch

        if not torch.cuda.is_available():
            raise UsageError("no CUDA device: the GPU backends need one (--backends numpy-f32 runs on the host)")
    rows: list[dict] = []
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix=f"memory-{size}-") as folder:
            import weights

            config = weights.GPT2Config.preset(size)
            weights.save(weights.synthetic(config, seed=0), config, folder)  # made once, loaded by each child
            rows += measure_size(size, backends, args, Path(folder), rows)
    return 1 if any("error" in r for r in rows) else 0


def measure_size(size: str, backends: list[str], args, folder: Path, earlier: list[dict]) -> list[dict]:
    """Every backend's row of one size, the JSON rewritten after each (with the earlier sizes' rows)."""
    from weights.provenance import provenance

    rows = []
    for backend in backends:
        row = run_child(size, backend, args.batch, args.seq, folder)
        row.update(arithmetic(size))
        rows.append(row)
        shown = {k: v for k, v in row.items() if k.endswith("_bytes") and k != "weights_grads_adamw_bytes"}
        what = ", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in shown.items()) or row.get("error", "")
        print(f"{size:12s} {backend:24s} {what}  ({row['seconds']} s)", flush=True)
        doc = {
            "what": f"memory of one training step (forward, backward, AdamW) at B={args.batch}, T={args.seq}",
            "measured_by": "scripts/memory_per_size.py",
            "provenance": provenance(),
            "rows": earlier + rows,
        }
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")  # after every run: a failure keeps the rest
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
