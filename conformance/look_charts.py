"""The pictures of `python -m conformance inspect`, drawn with matplotlib (the `plot` extra).

matplotlib is imported inside `pyplot()` only, so that everything else runs without it: the caller
catches the ImportError and writes its text tables alone. Each function draws one PNG and returns
its path:

    attention_png(path, att, layer, heads, tokens)       one layer: a heatmap per head, query rows x key columns
    lens_png(path, rows, tokens, decode)                 the logit lens: stream x position, top-1 token and its prob
    activations_png(path, names, stats)                  rms and max|x| of every activation along the forward pass
    divergence_png(path, errors, first, lines, title)    max|a - b| / max|b| per activation, log scale, ceilings drawn
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DPI = 100
ZERO_FLOOR = 1e-18  # the least value drawn on a log axis (the activation chart's sizes)
MAX_TICK_LABELS = 48  # longer prompts get no token labels on the attention axes (they would overlap)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend; raises ImportError where matplotlib is not installed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = pyplot()
    path = Path(path)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def attention_png(path: Path, att: np.ndarray, layer: int, heads: list[int], tokens: list[str], title: str) -> Path:
    """att (NH, T, T) of one layer: one heatmap per head in `heads`; row t = the query at position t,
    column s = the key it reads, colour = probability (0 above the diagonal: the causal mask, drawn blank)."""
    plt = pyplot()
    T = att.shape[-1]
    cols = min(4, len(heads))
    rows = -(-len(heads) // cols)
    size = 2.6 if T <= 16 else 3.2
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols + 0.8, size * rows + 0.6), squeeze=False)
    future = np.triu(np.ones((T, T), dtype=bool), k=1)
    image = None
    for ax, h in zip(axes.flat, heads, strict=False):
        image = ax.imshow(np.ma.masked_array(att[h], mask=future), vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_title(f"head {h}", fontsize=9)
        if T <= MAX_TICK_LABELS:
            fs = 7 if T <= 16 else 5
            ax.set_xticks(range(T), tokens, rotation=90, fontsize=fs)
            ax.set_yticks(range(T), tokens, fontsize=fs)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
    for ax in list(axes.flat)[len(heads) :]:
        ax.axis("off")
    fig.suptitle(
        f"{title}\nlayer {layer}: attention probabilities (row: query position, column: key position)", fontsize=9
    )
    fig.tight_layout()
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="probability")
    return _save(fig, path)


def lens_png(path: Path, rows, tokens: list[str], decode, title: str) -> Path:
    """The logit lens: one row per residual stream (embedding at the top, the model's logits at the bottom),
    one column per position; each cell names the top-1 next token and is coloured by its probability."""
    plt = pyplot()
    T = len(tokens)
    probs = np.array([r.probs[:, 0] for r in rows])  # (streams, T)
    fig, ax = plt.subplots(figsize=(min(1.0 + 0.75 * T, 40), 1.2 + 0.38 * len(rows)))
    image = ax.imshow(probs, vmin=0.0, vmax=1.0, cmap="Blues", aspect="auto")
    fs = 7 if T <= 24 else 5
    for s, r in enumerate(rows):
        for t in range(T):
            color = "white" if probs[s, t] > 0.6 else "black"
            ax.text(t, s, decode(int(r.ids[t, 0]))[:10], ha="center", va="center", fontsize=fs, color=color)
    ax.set_xticks(range(T), [f"{t}:{tok}" for t, tok in enumerate(tokens)], rotation=90, fontsize=fs)
    ax.set_yticks(range(len(rows)), [r.stream if r.stream != "logits" else "logits (model)" for r in rows], fontsize=8)
    ax.set_xlabel("position: input token (the cell is the prediction for the next one)")
    ax.set_title(f"{title}\nlogit lens: each residual stream through ln_f and the head, top-1 token", fontsize=9)
    fig.colorbar(image, ax=ax, label="top-1 probability")
    fig.tight_layout()
    return _save(fig, path)


def _forward_axis(ax, names: list[str]) -> None:
    """x ticks for activations in forward order: every name when few, else one tick per block start."""
    if len(names) <= 40:
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        return
    ticks = [i for i, n in enumerate(names) if not n.startswith("h.") or n.endswith(".ln_1")]
    ax.set_xticks(ticks, [names[i].removesuffix(".ln_1") for i in ticks], rotation=90, fontsize=7)


def activations_png(path: Path, names: list[str], stats: dict, title: str) -> Path:
    """rms and max|x| of every named activation in forward order, log scale: how big each one is; the
    residual stream's own points joined by a line of their own (it grows as every block adds to it)."""
    plt = pyplot()
    x = np.arange(len(names))
    rms = np.array([stats[n].rms for n in names])
    peak = np.array([max(abs(stats[n].min), abs(stats[n].max)) for n in names])
    fig, ax = plt.subplots(figsize=(max(8, 0.12 * len(names) + 4), 4.5))
    ax.semilogy(x, np.maximum(rms, ZERO_FLOOR), "o-", ms=3, label="rms")
    ax.semilogy(x, np.maximum(peak, ZERO_FLOOR), "s-", ms=3, alpha=0.7, label="max |x|")
    stream = [i for i, n in enumerate(names) if n == "embed" or n.endswith((".resid_1", ".resid_2"))]
    ax.semilogy(
        stream,
        np.maximum(rms[stream], ZERO_FLOOR),
        "D-",
        ms=5,
        color="black",
        lw=1.5,
        label="rms of the residual stream (embed, resid_1, resid_2)",
    )
    _forward_axis(ax, names)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    ax.set_title(f"{title}\nthe size of each named activation along the forward pass", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def divergence_png(path: Path, errors: list[tuple[str, float]], first: str | None, lines: dict, title: str) -> Path:
    """max|a - b| / max|b| per named activation in forward order on a log axis; `lines` {label: value} drawn
    horizontally (the ceiling, the localizer's threshold); the first activation over the threshold marked."""
    plt = pyplot()
    names = [n for n, _ in errors]
    values = np.array([v for _, v in errors])
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(8, 0.12 * len(names) + 4), 4.5))
    # An exact 0 has no place on a log axis: it is drawn as a grey x a factor 100 below the least value shown.
    zero_at = min([v for v in values if v > 0] + list(lines.values()) + [1.0]) / 100
    ax.semilogy(x, np.where(values > 0, values, zero_at), "o-", ms=3, color="tab:blue", label="max|a - b| / max|b|")
    zeros = values == 0
    if zeros.any():
        ax.semilogy(
            x[zeros], np.full(zeros.sum(), zero_at), "x", color="gray", label=f"exactly 0 (drawn at {zero_at:.0e})"
        )
    for (label, value), style in zip(lines.items(), ("--", ":"), strict=False):
        ax.axhline(value, linestyle=style, color="tab:red", label=f"{label} {value:g}")
    if first is not None:
        i = names.index(first)
        ax.semilogy([i], [values[i]], "o", ms=10, mfc="none", mec="tab:red", mew=2)
        ax.annotate(
            f"first over the threshold: {first}",
            (i, values[i]),
            textcoords="offset points",
            xytext=(8, -16) if i < len(names) / 2 else (-8, -16),  # below the line, towards the middle
            ha="left" if i < len(names) / 2 else "right",
            fontsize=8,
            color="tab:red",
        )
    _forward_axis(ax, names)
    top = max([*lines.values(), float(values.max()) if len(values) else ZERO_FLOOR, ZERO_FLOOR])
    ax.set_ylim(top=top * 300)  # room for the legend above the lines
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", ncols=2)
    ax.set_title(f"{title}\ndivergence per named activation along the forward pass", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
