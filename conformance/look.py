"""A look inside one forward pass: what every layer of a GPT-2 computes on a prompt.

    python -m conformance inspect --weights tiny --prompt "To be, or not"          # text tables on stdout
    python -m conformance inspect --weights synthetic --prompt "..." --out look/   # + PNGs, summary.md/.json
    python -m conformance inspect --weights gpt2 --compare torch-cpu-f32 --out look/
    python -m conformance.look ...                                                 # the same command

Four views of the named activations (docs/contract.md) of one backend (`--backend`, default numpy-f64,
the float64 reference), each a text table, and a picture with matplotlib (the `plot` extra):

    statistics    per layer, mean / std / rms / min / max of every named activation and the fraction of
                  outliers (|x - mean| > 6 std)                                      -> activations.png
    attention     each head's causal attention probabilities, the prompt's tokens on both axes; the
                  reference's own, or recomputed from the backend's h.{i}.qkv (h.{i}.rope with rotary
                  positions); in text, where each head looks (position 0, previous token, itself)
                                                                                     -> attention-layer-{i}.png
    logit lens    every residual stream (the embedding, each block's output) read through ln_f and the
                  head as if it were the last: the top-K next tokens at each position, and the model's
                  own logits below for comparison                                    -> logit-lens.png
    divergence    with `--compare B`: max|a - b| / max|b| of every activation in forward order (a = B, b =
                  the --backend), the precision's logits ceiling and the localizer's threshold drawn, the
                  first activation over the threshold marked (conformance/localize.py) -> divergence.png

`--weights` is what conformance/compare.py takes (the hub id gpt2, hash-checked; a local checkpoint
file or folder; `synthetic`: the synthetic 124M checkpoint) and also `synthetic:NAME` (or NAME alone)
for synthetic weights of any config of SYNTHETIC_CONFIGS, the variants included (tiny-llama: rotary
positions, RMSNorm, SwiGLU, grouped-query attention, no biases). Synthetic weights are labelled
SYNTHETIC everywhere: their tokens are not GPT-2's predictions. How to read each view: docs/inspect.md.

Exit status 0, or 2 with one line (`error: ...`) for a bad flag, prompt, token id, layer or backend.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from conformance import look_views as views
from conformance.backends import Backend, NumpyBackend, registry
from conformance.cases import CHAR_ALPHABET, LLAMA_OPTIONS, TINY, VARIANT_OPTIONS, char_ids
from conformance.tolerances import LOCALIZE, ceiling
from weights import SYNTHETIC_LABEL, GPT2Config, activation_names, atomic_write, load, num_params, read_metadata
from weights import synthetic as synthetic_params
from weights.errors import ArgumentParser, UsageError, run_cli

REFERENCE = "numpy-f64"
DEFAULT_PROMPT = "To be, or not"  # 13 characters for the V = 64 configs (n_ctx 16), 5 GPT-2 tokens
GPT2_VOCAB = 50257

# Synthetic weights by name: the config presets and the variants of the conformance cases on the tiny shape.
SYNTHETIC_CONFIGS: dict[str, GPT2Config] = {
    "124m": GPT2Config.gpt2_124m(),
    "llama-124m": GPT2Config.llama_style_124m(),
    "small": GPT2Config.small(),
    "tiny": TINY,
    **{f"tiny-{name}": dataclasses.replace(TINY, **options) for name, options in VARIANT_OPTIONS.items()},
    "tiny-llama": dataclasses.replace(TINY, **LLAMA_OPTIONS),
}


_HELD: list[str] | None = None  # progress lines held back while the inputs are checked (see _main)


def say(text: str = "") -> None:
    """Progress, on stderr (stdout is the report)."""
    if _HELD is not None:
        _HELD.append(text)
        return
    print(text, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------- inputs
def load_weights(source: str) -> tuple[dict[str, np.ndarray], GPT2Config, str]:
    """(params, config, label); the label is SYNTHETIC_LABEL for synthetic weights."""
    name = "124m" if source == "synthetic" else source.removeprefix("synthetic:")
    if (
        source == "synthetic"
        or source.startswith("synthetic:")
        or (name in SYNTHETIC_CONFIGS and not Path(source).exists())
    ):
        if name not in SYNTHETIC_CONFIGS:
            raise UsageError(
                f"--weights {source}: unknown synthetic config; choose one of {', '.join(SYNTHETIC_CONFIGS)}"
            )
        config = SYNTHETIC_CONFIGS[name]
        say(f"building synthetic weights for {name} ({num_params(config):,} parameters, seed 0) ...")
        t0 = time.perf_counter()
        params = synthetic_params(config, seed=0)
        say(f"built in {time.perf_counter() - t0:.1f} s")
        return params, config, f"{SYNTHETIC_LABEL}, config {name}"
    say(f"loading weights: {source} ...")
    t0 = time.perf_counter()
    params, config = load(source)
    say(f"loaded {num_params(config):,} parameters in {time.perf_counter() - t0:.1f} s")
    if any("SYNTHETIC" in str(v) for v in read_metadata(source).values()):  # a saved synthetic checkpoint
        return params, config, f"{SYNTHETIC_LABEL}, checkpoint {source}"
    return params, config, f"checkpoint {source}"


def visible(text: str) -> str:
    """A token's text with its spaces and control characters made visible: ' the\\n' -> '␣the\\n'."""
    return repr(text)[1:-1].replace(" ", "␣")


def token_scheme(config: GPT2Config) -> str:
    """How --prompt becomes ids: GPT-2's BPE for a vocabulary of 50,257 or more, else the characters of the
    tiny cases (conformance/cases.py's char_ids: 63 symbols, anything else maps to id 0 ' ')."""
    if config.vocab_size >= GPT2_VOCAB:
        return "GPT-2 BPE"
    if config.vocab_size >= len(CHAR_ALPHABET):
        return "characters"
    return "none"


def decoder(config: GPT2Config, need: bool) -> Callable[[int], str]:
    """id -> its text (made visible). Without the GPT-2 tokenizer files, ids are shown as #id unless `need`."""
    scheme = token_scheme(config)
    if scheme == "characters":
        return lambda i: visible(CHAR_ALPHABET[i]) if i < len(CHAR_ALPHABET) else f"#{i}"
    if scheme == "GPT-2 BPE":
        from weights.tokenizer import TokenizerError, get_tokenizer

        try:
            enc = get_tokenizer()
        except TokenizerError:
            if need:
                raise
            return lambda i: f"#{i}"
        return lambda i: visible(enc.decode([i])) if i < GPT2_VOCAB else f"#{i}"
    return lambda i: f"#{i}"


def prompt_ids(args, config: GPT2Config) -> list[int]:
    """The token ids of --ids or --prompt, checked against the vocabulary and the context."""
    if args.ids is not None:
        try:
            ids = [int(s) for s in args.ids.split(",") if s.strip()]
        except ValueError:
            raise UsageError(f"--ids {args.ids!r}: not a comma-separated list of integers") from None
        if not ids:
            raise UsageError("--ids is empty: give at least one token id")
        bad = [i for i in ids if not 0 <= i < config.vocab_size]
        if bad:
            raise UsageError(f"--ids: token id {bad[0]} is outside [0, vocab_size={config.vocab_size})")
        what = "--ids"
    else:
        if not args.prompt:
            raise UsageError("--prompt is empty: give at least one token")
        scheme = token_scheme(config)
        if scheme == "none":
            raise UsageError(
                f"--prompt: the vocabulary of {config.vocab_size} ids is neither GPT-2's nor the tiny cases' "
                f"characters; give token ids with --ids"
            )
        if scheme == "characters":
            ids = char_ids(args.prompt).tolist()
        else:
            from weights.tokenizer import get_tokenizer

            ids = get_tokenizer().encode(args.prompt)
        what = "--prompt"
    if len(ids) > config.n_ctx:
        raise UsageError(f"{what} is {len(ids)} tokens, longer than the model's context (n_ctx = {config.n_ctx})")
    return ids


def parse_indices(spec: str, n: int, flag: str, what: str) -> list[int]:
    """'all', or a comma-separated list of indices and a-b ranges ('0,3,5-7'), each in [0, n)."""
    if spec == "all":
        return list(range(n))
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        try:
            lo, _, hi = part.partition("-")
            first, last = int(lo), int(hi) if hi else int(lo)
        except ValueError:
            raise UsageError(f"{flag} {spec!r}: {part!r} is not an index or a range a-b") from None
        if first > last:
            raise UsageError(f"{flag} {spec!r}: the range {part} is empty")
        for i in range(first, last + 1):
            if not 0 <= i < n:
                raise UsageError(f"{flag} {spec!r}: {what} {i} does not exist; the model has {what}s 0..{n - 1}")
            if i not in out:
                out.append(i)
    return out


def pick_backend(name: str, flag: str) -> Backend:
    """The registry's backend of that name, able to run here."""
    backends = {b.name: b for b in registry()}
    if name not in backends:
        raise UsageError(f"{flag} {name!r}: unknown backend; known: {', '.join(backends)}")
    b = backends[name]
    ok, why = b.available()
    if not ok:
        raise UsageError(f"{flag} {name}: cannot run on this machine ({why})")
    return b


def backend_activations(backend: Backend, params, config: GPT2Config, idx: np.ndarray, flag: str) -> dict:
    """The named activations of `backend` on idx (B, T). The NumPy reference is called with its attention
    probabilities kept ("h.{i}.att"), which its Backend wrapper leaves out; any other backend through its
    wrapper. A backend without named activations (transformers' models) is a user error naming the flag."""
    if isinstance(backend, NumpyBackend):
        import reference

        own = {k: np.asarray(v, dtype=backend.dtype) for k, v in params.items()}
        return reference.activations(own, config, idx, with_attention_probs=True)
    if not hasattr(backend, "activations"):
        raise UsageError(f"{flag} {backend.name}: this backend exposes no named activations")
    try:
        return backend.activations(params, config, idx)
    except NotImplementedError as e:
        raise UsageError(f"{flag} {backend.name}: no named activations ({e})") from None


# ----------------------------------------------------------------------------------- the look
@dataclass
class Look:
    """Everything one look computed: the input, the four views, the timings."""

    config: GPT2Config
    label: str
    backend: str
    ids: list[int]
    decode: Callable[[int], str]
    names: list[str]  # the named activations in forward order
    shapes: dict[str, tuple[int, ...]]
    stats: dict[str, views.Stats]
    layers: list[int]  # the layers whose attention maps (and per-layer statistics) are shown
    heads: list[int]
    attention: dict[int, np.ndarray]  # layer -> (NH, T, T)
    attention_source: str
    lens: list[views.LensRow]
    compare: str | None = None
    divergence: views.Divergence | None = None
    lines: dict[str, float] = field(default_factory=dict)  # the horizontal lines of the divergence chart
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def tokens(self) -> list[str]:
        return [self.decode(i) for i in self.ids]

    @property
    def synthetic(self) -> bool:
        return self.label.startswith(SYNTHETIC_LABEL)


def comparison_precision(a: Backend, b: Backend) -> str:
    """The ceiling row of a pair: the coarser precision of the two (float64 against float64 uses float32's lines,
    for scale: the ceilings are all measured against the float64 reference)."""
    order = ["fp64", "fp32", "bf16"]
    coarser = max(a.precision, b.precision, key=order.index)
    return "fp32" if coarser == "fp64" else coarser


def timed(seconds: dict, key: str, what: str, fn):
    """fn() with a progress line on stderr ("what ... 2.5 s"); its wall time in seconds[key]."""
    print(f"{what} ...", end="", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        out = fn()
    except BaseException:
        say(" failed")  # end the progress line: the error gets a line of its own
        raise
    seconds[key] = time.perf_counter() - t0
    say(f" {seconds[key]:.1f} s")
    return out


def look_inside(
    params,
    config: GPT2Config,
    ids: list[int],
    backend: Backend,
    compare: Backend | None = None,
    layers: list[int] | None = None,
    heads: list[int] | None = None,
    top: int = 5,
    decode: Callable[[int], str] | None = None,
    label: str = "",
) -> Look:
    """Run `backend` (and `compare`) on the prompt `ids` and compute the four views.

    params: the canonical dict; ids: token ids of one prompt (T of them, B = 1); layers / heads: those to
    draw attention maps for (None: all); top: K of the logit lens. The logit lens always reads every stream
    and the divergence every activation: they are about the whole path.
    """
    idx = np.array([ids], dtype=np.int64)  # (1, T)
    layers = list(range(config.n_layer)) if layers is None else layers
    heads = list(range(config.n_head)) if heads is None else heads
    seconds: dict[str, float] = {}
    acts = timed(
        seconds,
        backend.name,
        f"running {backend.name} on {len(ids)} tokens",
        lambda: backend_activations(backend, params, config, idx, "--backend"),
    )
    names = activation_names(config)
    stats = {n: views.activation_stats(acts[n]) for n in names}
    attention, source = views.attention_maps(acts, config, layers)
    lens = timed(
        seconds,
        "logit lens",
        "the logit lens (every residual stream through ln_f and the head)",
        lambda: views.logit_lens(acts, params, config, top),
    )
    look = Look(
        config,
        label,
        backend.name,
        list(ids),
        decode or (lambda i: f"#{i}"),
        names,
        {n: tuple(np.shape(acts[n])) for n in names},
        stats,
        layers,
        heads,
        attention,
        source,
        lens,
        seconds=seconds,
    )
    if compare is not None:
        other = timed(
            seconds,
            compare.name,
            f"running {compare.name} on {len(ids)} tokens",
            lambda: backend_activations(compare, params, config, idx, "--compare"),
        )
        precision = comparison_precision(backend, compare)
        look.compare = compare.name
        look.divergence = views.divergence(other, acts, config, LOCALIZE[precision])
        look.lines = {
            f"logits ceiling ({precision})": ceiling(precision, "logits"),
            f"localizer threshold ({precision})": LOCALIZE[precision],
        }
    return look


# ----------------------------------------------------------------------------------- text
def prob(p: float) -> str:
    return f"{p:.3f}" if p >= 1e-3 else f"{p:.1e}"


def fmt(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


STAT_COLUMNS = ("mean", "std", "rms", "min", "max", "outliers")


def stats_groups(look: Look) -> list[tuple[str, list[str]]]:
    """(heading, activation names) in forward order: before the blocks, each layer shown, after the blocks."""
    groups = [("before the blocks", ["embed"])]
    groups += [(f"layer {i}", [n for n in look.names if n.startswith(f"h.{i}.")]) for i in look.layers]
    return groups + [("after the blocks", ["ln_f", "logits"])]


def config_line(config: GPT2Config) -> str:
    options = config.variant_options()
    variant = ", ".join(f"{k}={v}" for k, v in options.items()) if options else "GPT-2"
    return (
        f"n_layer={config.n_layer} n_head={config.n_head} n_kv_head={config.kv_heads} n_embd={config.n_embd} "
        f"vocab={config.vocab_size} n_ctx={config.n_ctx} ({variant})"
    )


def stream_label(stream: str) -> str:
    return "logits (model)" if stream == "logits" else stream


def text_report(look: Look) -> str:
    """The four views as plain-text tables (what stdout shows, with or without matplotlib)."""
    out = [
        f"weights:  {look.label}",
        f"config:   {config_line(look.config)}",
        f"backend:  {look.backend}",
        f"prompt:   {len(look.ids)} tokens {look.ids}",
        "          " + " ".join(look.tokens),
        "",
    ]
    out.append(
        f"== statistics of every named activation (outliers: fraction with |x - mean| > "
        f"{views.OUTLIER_SIGMAS:g} std) =="
    )
    for heading, names in stats_groups(look):
        out.append(heading)
        out.append(f"  {'activation':<16} {'shape':<16}" + "".join(f"{c:>11}" for c in STAT_COLUMNS))
        for n in names:
            s = look.stats[n].as_dict()
            out.append(f"  {n:<16} {str(look.shapes[n]):<16}" + "".join(f"{fmt(s[c]):>11}" for c in STAT_COLUMNS))
    out += ["", "== attention: where each head looks (mean probabilities over the query positions 1..T-1) =="]
    out.append(f"probabilities: {look.attention_source}")
    for i in look.layers:
        out.append(
            f"layer {i}   {'head':>4} {'on pos 0':>9} {'previous':>9} {'itself':>9} {'entropy':>9}  "
            "argmax key of each query"
        )
        for h in look.heads:
            p = views.head_pattern(look.attention[i][h])
            argmax = " ".join(str(int(k)) for k in look.attention[i][h].argmax(axis=-1))
            out.append(
                f"          {h:>4} {fmt(p.first):>9} {fmt(p.previous):>9} {fmt(p.self):>9} "
                f"{fmt(p.entropy):>9}  {argmax}"
            )
    K = look.lens[0].ids.shape[1]
    out += ["", "== logit lens: each residual stream through ln_f and the head; top-1 next token at each position =="]
    width = max(8, *(len(t) + 3 for t in look.tokens))
    width = min(width, 14)
    out.append(
        f"  {'stream':<16}"
        + "".join(f"{(str(t) + ':' + tok)[: width - 1]:<{width}}" for t, tok in enumerate(look.tokens))
    )
    for r in look.lens:
        cells = "".join(f"{look.decode(int(i))[: width - 1]:<{width}}" for i in r.ids[:, 0])
        out.append(f"  {stream_label(r.stream):<16}{cells}")
    out.append(f"top-{K} at the last position (after {look.tokens[-1]!r}), with probabilities:")
    for r in look.lens:
        top = "  ".join(f"{look.decode(int(i))} {prob(p)}" for i, p in zip(r.ids[-1], r.probs[-1], strict=True))
        out.append(f"  {stream_label(r.stream):<16}{top}")
    if look.divergence is not None:
        out += [
            "",
            f"== divergence: {look.compare} (a) against {look.backend} (b), max|a - b| / max|b|, forward order ==",
        ]
        for n, e in look.divergence.errors:
            mark = "   <- first over the threshold" if n == look.divergence.name else ""
            out.append(f"  {n:<16} {e:9.2e}{mark}")
        out.append("  lines: " + ", ".join(f"{k} {v:g}" for k, v in look.lines.items()))
        out.append(f"  {look.divergence.describe()}")
    if look.synthetic:
        out += ["", f"(these are {SYNTHETIC_LABEL}: the tokens above are not GPT-2's predictions)"]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------- files
def md_cell(text: str) -> str:
    return "`" + text.replace("`", "'").replace("|", "\\|") + "`"


def markdown(look: Look, charts: list[Path], no_charts: str = "") -> str:
    """summary.md: the same views as tables, the pictures beside them."""
    lines = ["# A look inside one forward pass", ""]
    if look.synthetic:
        lines += [f"**{SYNTHETIC_LABEL}**: the tokens below are not GPT-2's predictions.", ""]
    lines += [
        f"- weights: {look.label}",
        f"- config: {config_line(look.config)}",
        f"- backend: `{look.backend}`",
        f"- prompt: {len(look.ids)} tokens " + " ".join(md_cell(t) for t in look.tokens),
        f"- ids: {look.ids}",
        "- made by: `python -m conformance inspect` (docs/inspect.md says how to read it)",
        "",
    ]
    if no_charts:
        lines += [f"*No pictures: {no_charts}.*", ""]
    by_name = {p.name: p for p in charts}

    def image(name: str, alt: str) -> list[str]:
        return [f"![{alt}]({name})", ""] if name in by_name else []

    lines += [
        "## Statistics of every named activation",
        "",
        f"Over every element of the prompt; outliers: the fraction with \\|x - mean\\| > {views.OUTLIER_SIGMAS:g} std.",
        "",
    ]
    lines += image("activations.png", "rms and max|x| per activation")
    lines += ["| activation | shape | " + " | ".join(STAT_COLUMNS) + " |", "|---|---|" + "---:|" * len(STAT_COLUMNS)]
    for _, names in stats_groups(look):
        for n in names:
            s = look.stats[n].as_dict()
            lines.append(f"| {n} | {look.shapes[n]} | " + " | ".join(fmt(s[c]) for c in STAT_COLUMNS) + " |")
    lines += ["", "## Attention", "", f"Probabilities: {look.attention_source}. Means over query positions 1..T-1.", ""]
    lines += [
        "| layer | head | on position 0 | previous token | itself | entropy (nats) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for i in look.layers:
        for h in look.heads:
            p = views.head_pattern(look.attention[i][h])
            lines.append(f"| {i} | {h} | {fmt(p.first)} | {fmt(p.previous)} | {fmt(p.self)} | {fmt(p.entropy)} |")
    lines.append("")
    for i in look.layers:
        lines += image(f"attention-layer-{i}.png", f"attention of layer {i}")
    lines += [
        "## Logit lens",
        "",
        "Each residual stream through ln_f and the head: the top-1 next token at each "
        "position (the last row is the model's own logits).",
        "",
    ]
    lines += image("logit-lens.png", "logit lens")
    lines += [
        "| stream | " + " | ".join(md_cell(f"{t}:{tok}") for t, tok in enumerate(look.tokens)) + " |",
        "|---|" + "---|" * len(look.tokens),
    ]
    for r in look.lens:
        lines.append(f"| {r.stream} | " + " | ".join(md_cell(look.decode(int(i))) for i in r.ids[:, 0]) + " |")
    lines += [
        "",
        f"Top-{r.ids.shape[1]} at the last position:",
        "",
        "| stream | top tokens (probability) |",
        "|---|---|",
    ]
    for r in look.lens:
        top = ", ".join(
            f"{md_cell(look.decode(int(i)))} {prob(p)}" for i, p in zip(r.ids[-1], r.probs[-1], strict=True)
        )
        lines.append(f"| {r.stream} | {top} |")
    if look.divergence is not None:
        lines += [
            "",
            f"## Divergence: `{look.compare}` against `{look.backend}`",
            "",
            f"max\\|a - b\\| / max\\|b\\| per activation (a = {look.compare}, b = {look.backend}); lines: "
            + ", ".join(f"{k} {v:g}" for k, v in look.lines.items())
            + ".",
            "",
            f"**{look.divergence.describe()}**",
            "",
        ]
        lines += image("divergence.png", "divergence per activation")
        lines += ["| activation | max\\|a - b\\| / max\\|b\\| |", "|---|---:|"]
        lines += [f"| {n} | {e:.2e} |" for n, e in look.divergence.errors]
    lines += ["", "Timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in look.seconds.items()), ""]
    return "\n".join(lines)


def summary(look: Look, charts: list[Path]) -> dict:
    """summary.json: the numbers of every view (not the attention matrices: the PNGs draw them)."""

    def tops(r: views.LensRow) -> list[list[dict]]:
        return [
            [{"id": int(i), "token": look.decode(int(i)), "prob": float(p)} for i, p in zip(ri, rp, strict=True)]
            for ri, rp in zip(r.ids, r.probs, strict=True)
        ]

    out = {
        "weights": look.label,
        "synthetic": look.synthetic,
        "config": dataclasses.asdict(look.config),
        "backend": look.backend,
        "ids": look.ids,
        "tokens": look.tokens,
        "stats": {n: {"shape": list(look.shapes[n]), **look.stats[n].as_dict()} for n in look.names},
        "outlier_sigmas": views.OUTLIER_SIGMAS,
        "attention": {
            "source": look.attention_source,
            "heads": {
                f"h.{i}": {str(h): dataclasses.asdict(views.head_pattern(look.attention[i][h])) for h in look.heads}
                for i in look.layers
            },
        },
        "logit_lens": {r.stream: tops(r) for r in look.lens},
        "charts": [p.name for p in charts],
        "seconds": look.seconds,
    }
    if look.divergence is not None:
        d = look.divergence
        out["divergence"] = {
            "a": look.compare,
            "b": look.backend,
            "errors": dict(d.errors),
            "first": d.name,
            "op": d.op,
            "threshold": d.threshold,
            "lines": look.lines,
            "verdict": d.describe(),
        }
    return out


def draw(look: Look, out: Path) -> list[Path]:
    """Every picture into `out`; raises ImportError where matplotlib is not installed."""
    from conformance import look_charts as charts

    charts.pyplot()  # fails here, before any file, without matplotlib
    weights = "SYNTHETIC weights" if look.synthetic else look.label or "weights given by the caller"
    title = f"{look.backend}, {weights}"
    drawn = [charts.activations_png(out / "activations.png", look.names, look.stats, title)]
    drawn.append(charts.lens_png(out / "logit-lens.png", look.lens, look.tokens, look.decode, title))
    for n, i in enumerate(look.layers, 1):
        print(f"\rdrawing attention maps: layer {i} ({n}/{len(look.layers)})", end="", file=sys.stderr, flush=True)
        drawn.append(
            charts.attention_png(out / f"attention-layer-{i}.png", look.attention[i], i, look.heads, look.tokens, title)
        )
    say("")
    if look.divergence is not None:
        d = look.divergence
        drawn.append(
            charts.divergence_png(
                out / "divergence.png",
                d.errors,
                d.name,
                look.lines,
                f"{look.compare} (a) against {look.backend} (b), {weights}",
            )
        )
    return drawn


def write_outputs(look: Look, out: Path) -> list[Path]:
    """The PNGs (when matplotlib is installed), summary.md and summary.json into `out`; returns what was written."""
    out.mkdir(parents=True, exist_ok=True)
    no_charts = ""
    t0 = time.perf_counter()
    try:
        drawn = draw(look, out)
    except ImportError as e:
        drawn, no_charts = [], f"matplotlib is not installed ({e}); charts need `pip install .[plot]`"
        say(f"no charts: {no_charts}")
    look.seconds["charts"] = time.perf_counter() - t0
    md, js = out / "summary.md", out / "summary.json"
    text = markdown(look, drawn, no_charts)
    atomic_write(md, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    data = json.dumps(summary(look, drawn), indent=1, ensure_ascii=False) + "\n"
    atomic_write(js, lambda tmp: Path(tmp).write_text(data, encoding="utf-8"))
    return [*drawn, md, js]


# ----------------------------------------------------------------------------------- the command
def parse_args(argv: list[str]):
    ap = ArgumentParser(
        prog="python -m conformance inspect", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--weights",
        default="gpt2",
        help="gpt2 (hub, hash-checked), a .safetensors file or folder, 'synthetic' (124M), or "
        f"synthetic:NAME / NAME for synthetic weights of: {', '.join(SYNTHETIC_CONFIGS)}",
    )
    ap.add_argument("--prompt", default=None, help=f"the text (default {DEFAULT_PROMPT!r})")
    ap.add_argument("--ids", default=None, help="token ids instead of a prompt, comma-separated: 1,2,3")
    ap.add_argument("--backend", default=REFERENCE, help=f"the backend to look inside (default {REFERENCE})")
    ap.add_argument("--compare", default=None, help="a second backend: the divergence per activation against --backend")
    ap.add_argument("--out", default=None, help="folder for the PNGs, summary.md and summary.json")
    ap.add_argument("--layers", default="all", help="layers of the attention maps and statistics: all, or 0,2,5-7")
    ap.add_argument("--heads", default="all", help="heads of the attention maps: all, or 0,3")
    ap.add_argument("--top", type=int, default=5, help="K of the logit lens' top-K tokens (default 5)")
    args = ap.parse_args(argv)
    if args.prompt is not None and args.ids is not None:
        raise UsageError("--prompt and --ids: give one of them, not both")
    if args.prompt is None and args.ids is None:
        args.prompt = DEFAULT_PROMPT
    if args.top < 1:
        raise UsageError(f"--top {args.top}: must be at least 1")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"--out {args.out}: exists and is not a folder")
    return args


def main(argv=None) -> int:
    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    """The inputs are checked before any progress is printed: a user error is one line on stderr."""
    global _HELD
    _HELD = []
    try:
        args, backend, compare, params, config, label, ids, decode, layers, heads = _checked_inputs(argv)
    finally:
        held, _HELD = _HELD, None
    for line in held:  # the setup went through: what it said
        say(line)
    if label.startswith(SYNTHETIC_LABEL):
        say(f"NOTE: {SYNTHETIC_LABEL}")
    look = look_inside(params, config, ids, backend, compare, layers, heads, args.top, decode, label)
    sys.stdout.write(text_report(look))
    if args.out is None:
        say("(pass --out DIR for the pictures, summary.md and summary.json)")
        return 0
    written = write_outputs(look, Path(args.out))
    say(
        f"wrote {len(written)} files to {args.out}: {', '.join(p.name for p in written[:6])}"
        + (" ..." if len(written) > 6 else "")
    )
    return 0


def _checked_inputs(argv: list[str]):
    args = parse_args(argv)
    backend = pick_backend(args.backend, "--backend")
    compare = pick_backend(args.compare, "--compare") if args.compare else None
    params, config, label = load_weights(args.weights)
    ids = prompt_ids(args, config)
    decode = decoder(config, need=args.ids is None)
    layers = parse_indices(args.layers, config.n_layer, "--layers", "layer")
    heads = parse_indices(args.heads, config.n_head, "--heads", "head")
    if args.top > config.vocab_size:
        raise UsageError(f"--top {args.top}: the vocabulary has only {config.vocab_size} tokens")
    for b, flag in ((backend, "--backend"), (compare, "--compare")):
        ok, why = b.supports(config, len(ids)) if b is not None else (True, "")
        if not ok:
            raise UsageError(f"{flag} {b.name}: cannot run this checkpoint here ({why})")
    return args, backend, compare, params, config, label, ids, decode, layers, heads


if __name__ == "__main__":
    sys.exit(main())
