"""Training throughput of GPT-2 124M on this machine: 1 GPU, then N GPUs through DDP, and the scaling.

    python scripts/train_throughput.py --data data-cache/shakespeare --gpus 2 [--steps 30] [--batch-size 64]
    python scripts/train_throughput.py --data ... --gpus 1 --profile 3 \
        --try "--loss-impl chunked" --try "--loss-impl chunked --batch-size 128"

Each `--try FLAGS` is one more single-GPU run with those trainer flags added to the first run's (a flag
given again wins), e.g. another --loss-impl, --compile-mode or --batch-size: what each change buys is
its tokens/s against the first run's, measured one after the other on the same GPU (leading NAME=VALUE
words set environment variables for that run alone: `--try "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
--batch-size 128"`); its losses beside
the first run's show that the numerics did not move (beyond bf16's noise). A try that fails is
recorded with its error and the others still run; the exit status is then 1. `--profile N` has the first
run profile N steps (torch_impl/profiling.py: its profile.json and profile.txt are copied beside
--json); they come before --skip, so the medians leave them out. The JSON is rewritten after every run,
so a run that fails or a time limit keeps what was measured before it.

Each run is `python -m torch_impl.train` (torchrun for N > 1) from scratch at T=1024, bf16,
torch.compile, 524,288 tokens per step, no checkpoints. Tokens/s and MFU are the medians over
the steps after `--skip` (step 0 holds the compile time). Prints a table and writes
`--json` (default throughput.json). NCCL's NVLink multicast is left off (NCCL_NVLS_ENABLE=0).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository's packages

from weights.errors import ArgumentParser, UsageError, UserError, run_cli  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from weights.provenance import provenance  # noqa: E402


def split_env(tokens: list[str]) -> tuple[dict[str, str], list[str]]:
    """A try's leading NAME=VALUE words (environment variables for that run alone, e.g. an allocator
    setting) and the trainer flags after them."""
    env = {}
    i = 0
    while i < len(tokens) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tokens[i]):
        name, value = tokens[i].split("=", 1)
        env[name] = value
        i += 1
    return env, list(tokens[i:])


def run(gpus: int, args, out_dir: Path, extra: list[str] = ()) -> dict:
    run_env, extra = split_env(list(extra))
    flags = [
        "--data", args.data, "--model", "124m", "--batch-size", str(args.batch_size), "--seq-len", "1024",
        "--total-batch-tokens", "524288", "--max-steps", str(args.steps), "--warmup-steps", "10",
        "--eval-every", "0", "--no-save", "--no-progress", "--no-plot", "--log-every", "5", "--compile",
        "--out-dir", str(out_dir), *extra,
    ]  # fmt: skip
    env = {**os.environ, "NCCL_NVLS_ENABLE": "0", "PYTHONUNBUFFERED": "1", **run_env}
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
        "extra_flags": list(extra),
        "env": run_env,  # the try's NAME=VALUE words, set for this run alone
        "micro_batch": _last_value(extra, "--batch-size", args.batch_size),
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steps),
        "ms_per_step": statistics.median(r["dt_ms"] for r in steps),
        "mfu": statistics.median(mfus) if mfus else None,
        "measured_steps": len(steps),
        "first_step_s": losses[0]["dt_ms"] / 1e3 if losses else None,  # includes torch.compile
        "loss_first_last": [losses[0]["loss"], losses[-1]["loss"]] if losses else None,
        "per_step": [
            {k: r.get(k) for k in ("step", "loss", "dt_ms", "tokens_per_s", "mfu", "cuda_alloc_retries")}
            for r in losses
        ],
        # the allocator's peaks over the run (rank 0; the trainer logs them with every step on CUDA)
        "cuda_peak_allocated_gib": losses[-1].get("cuda_peak_allocated_gib") if losses else None,
        "cuda_peak_reserved_gib": losses[-1].get("cuda_peak_reserved_gib") if losses else None,
    }


def _last_value(flags, name: str, default):
    """The value of the last `name VALUE` in flags (the trainer's parser keeps the last), else default."""
    value = default
    for i, f in enumerate(flags[:-1]):
        if f == name:
            value = type(default)(flags[i + 1])
    return value


def loss_difference(a: dict, b: dict) -> float | None:
    """max |loss_a - loss_b| over the steps both runs logged (None if they share none)."""
    la = {r["step"]: r["loss"] for r in a["per_step"]}
    common = [(la[r["step"]], r["loss"]) for r in b["per_step"] if r["step"] in la]
    return max(abs(x - y) for x, y in common) if common else None


def write_json(path: Path, args, results: list[dict]) -> None:
    """The results file: the provenance record (commit, versions, GPUs, date), the settings, every run."""
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "out", "tries")}
    settings["tries"] = [" ".join(t) for t in args.tries]
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
    if args.profile < 0 or (args.profile and args.profile + 2 > args.skip):
        raise UsageError(
            f"--profile {args.profile}: the profiled steps (2..{args.profile + 1}) must end before --skip {args.skip}, "
            "so that the medians leave them out"
        )
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
    return run_cli(_main, argv)


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
    ap.add_argument("--profile", type=int, default=0, help="profile this many steps of the first run (0: off)")
    ap.add_argument("--try", dest="tries", action="append", default=[], metavar="FLAGS",
                    help="one more single-GPU run with these trainer flags added (repeatable)")  # fmt: skip
    args = ap.parse_args(argv)
    args.tries = [shlex.split(t) for t in args.tries]
    check_args(args)
    out, json_path = Path(args.out), Path(args.json)
    results = [run(1, args, out / "gpu1", ["--profile-steps", str(args.profile)] if args.profile else [])]
    write_json(json_path, args, results)
    if args.profile:
        for name in ("profile.json", "profile.txt"):
            shutil.copyfile(out / "gpu1" / name, json_path.with_name(f"{json_path.stem}-{name}"))
    failed = 0
    for i, flags in enumerate(args.tries):
        try:
            results.append(run(1, args, out / f"try{i + 1}", flags))
        except UserError as e:  # a try that fails (out of memory, a compile mode that breaks) is a result too
            failed += 1
            results.append({"gpus": 1, "extra_flags": list(flags), "error": str(e)})
            write_json(json_path, args, results)
            continue
        for name in ("profile.json", "profile.txt"):  # a try that profiles (--profile-steps N among its flags)
            if (out / f"try{i + 1}" / name).exists():
                shutil.copyfile(out / f"try{i + 1}" / name, json_path.with_name(f"{json_path.stem}-try{i + 1}-{name}"))
        results[-1]["vs_first_run"] = results[-1]["tokens_per_s"] / results[0]["tokens_per_s"]
        results[-1]["loss_max_abs_difference_vs_first_run"] = loss_difference(results[0], results[-1])
        write_json(json_path, args, results)
    if args.gpus > 1:
        results.append(run(args.gpus, args, out / f"gpu{args.gpus}"))
        results[-1]["scaling"] = results[-1]["tokens_per_s"] / results[0]["tokens_per_s"]
        write_json(json_path, args, results)
    for r in results:
        if "error" in r:
            print(f"{r['gpus']} GPU(s): failed  [{' '.join(r['extra_flags'])}]")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] else "n/a"
        scaling = f"  scaling {r['scaling']:.2f}x" if "scaling" in r else ""
        vs = f"  {r['vs_first_run']:.3f}x the first run" if "vs_first_run" in r else ""
        flags = f"  [{' '.join(r['extra_flags'])}]" if r["extra_flags"] else ""
        print(f"{r['gpus']} GPU(s): {r['tokens_per_s']:,.0f} tokens/s  MFU {mfu}{scaling}{vs}{flags}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
