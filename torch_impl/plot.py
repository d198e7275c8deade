"""The loss curve of a run, as a PNG, from its log.jsonl.

    python -m torch_impl.plot runs/gpt2/log.jsonl -o runs/gpt2/loss.png

Top panel: training loss per step (faint) with its moving average over `smooth` steps, and
the validation loss where it was measured. Bottom panel: the learning rate.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from weights.errors import ArgumentParser, UsageError, UserError, run_cli


def read_log(path: str | Path) -> tuple[dict, dict, dict]:
    """(train loss, val loss, lr), each a dict step -> value, from a log.jsonl."""
    train, val, lr = {}, {}, {}
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not a log.jsonl of torch_impl.train (line {e.lineno}: {e.msg})") from None
        if "loss" in entry:
            train[entry["step"]] = entry["loss"]
            lr[entry["step"]] = entry["lr"]
        if "val_loss" in entry:
            val[entry["step"]] = entry["val_loss"]
    return train, val, lr


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last `window` values at each point (fewer at the start)."""
    sums = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (sums[idx] - sums[lo]) / (idx - lo)


def plot_log(log_path: str | Path, png_path: str | Path, smooth: int = 20) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val, lr = read_log(log_path)
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    if train:
        steps = np.array(sorted(train))
        loss = np.array([train[s] for s in steps])
        ax.plot(steps, loss, color="tab:blue", alpha=0.3, linewidth=0.8, label="train loss")
        ax.plot(steps, moving_average(loss, smooth), color="tab:blue", label=f"train loss ({smooth}-step mean)")
        ax_lr.plot(steps, [lr[s] for s in steps], color="tab:green")
    if val:
        vs = sorted(val)
        ax.plot(vs, [val[s] for s in vs], "o-", color="tab:orange", label="val loss")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"GPT-2 training: {Path(log_path).parent.name}")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return png_path


def main(argv: list[str] | None = None) -> int:
    """The command line; a missing or foreign log, or a bad flag, is one line (`error: ...`) and exit status 2."""
    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    ap = ArgumentParser(prog="python -m torch_impl.plot", description="Loss-curve PNG from a log.jsonl")
    ap.add_argument("log", help="log.jsonl written by torch_impl.train")
    ap.add_argument("-o", "--out", default=None, help="PNG path (default: loss.png beside the log)")
    ap.add_argument("--smooth", type=int, default=20, help="moving-average window in steps")
    args = ap.parse_args(argv)
    if args.smooth < 1:
        raise UsageError(f"--smooth {args.smooth}: the moving-average window must be >= 1 step")
    if not read_log(args.log)[0]:  # an empty plot says nothing
        raise UserError(f"{args.log}: no training steps logged yet; nothing to plot")
    out = args.out or Path(args.log).with_name("loss.png")
    print(plot_log(args.log, out, args.smooth))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
