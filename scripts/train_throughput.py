"""Training throughput of GPT-2 124M on this machine: 1 GPU, then N GPUs through DDP, and the scaling.

    python scripts/train_throughput.py --data data-cache/shakespeare --gpus 2 [--steps 30] [--batch-size 64]

Each run is `python -m torch_impl.train` (torchrun for N > 1) from scratch at T=1024, bf16,
torch.compile, 524,288 tokens per step, no checkpoints. Tokens/s and MFU are the medians over
the steps after `--skip` (step 0 holds the compile time). Prints a table and writes
`--json` (default throughput.json). NCCL's NVLink multicast is left off (NCCL_NVLS_ENABLE=0).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository's packages

from weights.errors import ArgumentParser, UsageError, UserError, run_cli  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from weights.provenance import provenance  # noqa: E402


def run(gpus: int, args, out_dir: Path) -> dict:
    flags = [
        "--data", args.data, "--model", "124m", "--batch-size", str(args.batch_size), "--seq-len", "1024",
        "--total-batch-tokens", "524288", "--max-steps", str(args.steps), "--warmup-steps", "10",
        "--eval-every", "0", "--no-save", "--no-progress", "--no-plot", "--log-every", "5", "--compile",
        "--out-dir", str(out_dir),
    ]  # fmt: skip
    env = {**os.environ, "NCCL_NVLS_ENABLE": "0", "PYTHONUNBUFFERED": "1"}
    if gpus == 1:
        env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
        cmd = [sys.executable, "-m", "torch_impl.train", *flags]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
               "-m", "torch_impl.train", *flags]  # fmt: skip
    code = subprocess.run(cmd, env=env).returncode
    if code != 0:  # the run printed its own error above
        raise UserError(
            f"the {gpus}-GPU training run failed with exit status {code} (its output is above): {' '.join(cmd)}"
        )
    rows = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "loss" in r and r["step"] >= args.skip]
    mfus = [r["mfu"] for r in steps if r["mfu"] is not None]
    losses = [r for r in rows if "loss" in r]
    return {
        "gpus": gpus,
        "micro_batch": args.batch_size,
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steps),
        "ms_per_step": statistics.median(r["dt_ms"] for r in steps),
        "mfu": statistics.median(mfus) if mfus else None,
        "measured_steps": len(steps),
        "first_step_s": losses[0]["dt_ms"] / 1e3 if losses else None,  # includes torch.compile
        "loss_first_last": [losses[0]["loss"], losses[-1]["loss"]] if losses else None,
        "per_step": [{k: r.get(k) for k in ("step", "loss", "dt_ms", "tokens_per_s", "mfu")} for r in losses],
    }


def write_json(path: Path, args, results: list[dict]) -> None:
    """The results file: the provenance record (commit, versions, GPUs, date), the settings, every run."""
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "out")}
    settings.update(seq_len=1024, total_batch_tokens=524288, warmup_steps=10, dtype="bf16 autocast", compile=True)
    doc = {
        "what": "GPT-2 124M training throughput: torch_impl.train from scratch, 1 GPU then N GPUs (DDP)",
        "measured_by": "scripts/train_throughput.py",
        "provenance": provenance(),
        "settings": settings,
        "medians_over": f"steps >= {args.skip} (step 0 holds the torch.compile time)",
        "runs": results,
    }
    path.write_text(json.dumps(doc, indent=1) + "\n")


def check_args(args) -> None:
    """Every flag and the machine, before minutes of training start."""
    for flag, value, lowest in (("--gpus", args.gpus, 1), ("--steps", args.steps, 1), ("--skip", args.skip, 0),
                                ("--batch-size", args.batch_size, 1)):  # fmt: skip
        if value < lowest:
            raise UsageError(f"{flag} {value}: must be >= {lowest}")
    if args.skip >= args.steps:
        raise UsageError(f"--skip {args.skip} leaves none of --steps {args.steps} to measure")
    if 524288 % (args.batch_size * 1024 * args.gpus):
        raise UsageError(f"--batch-size {args.batch_size} x 1024 x --gpus {args.gpus} does not divide 524,288 tokens")
    from torch_impl.data import shard_paths

    shard_paths(args.data, "train")  # DataError naming the folder when it holds no shards
    import torch

    if not torch.cuda.is_available():
        raise UserError("no CUDA device: this script measures GPU training throughput")
    if args.gpus > torch.cuda.device_count():
        raise UsageError(f"--gpus {args.gpus}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def main(argv: list[str] | None = None) -> int:
    """The command line; bad flags, data or a machine without CUDA are one line and exit status 2."""
    from torch_impl.data import DataError

    return run_cli(_main, argv, extra=(DataError,))


def _main(argv: list[str]) -> int:
    import argparse

    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="token shards (python -m torch_impl.data)")
    ap.add_argument("--gpus", type=int, default=2, help="GPUs for the DDP run (1: only the single-GPU run)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--skip", type=int, default=8, help="steps left out of the medians (compile, warm-up)")
    ap.add_argument("--batch-size", type=int, default=64, help="micro-batch per GPU")
    ap.add_argument("--out", default="runs/throughput", help="folder for the runs' logs")
    ap.add_argument("--json", default="throughput.json")
    args = ap.parse_args(argv)
    check_args(args)
    results = [run(1, args, Path(args.out) / "gpu1")]
    if args.gpus > 1:
        results.append(run(args.gpus, args, Path(args.out) / f"gpu{args.gpus}"))
        results[-1]["scaling"] = results[-1]["tokens_per_s"] / results[0]["tokens_per_s"]
    for r in results:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] else "n/a"
        scaling = f"  scaling {r['scaling']:.2f}x" if "scaling" in r else ""
        print(f"{r['gpus']} GPU(s): {r['tokens_per_s']:,.0f} tokens/s  MFU {mfu}{scaling}")
    write_json(Path(args.json), args, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
