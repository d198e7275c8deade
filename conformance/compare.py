"""The main job: one prompt through every GPT-2 backend, side by side, judged against the reference.

    python -m conformance.compare                          # GPT-2 124M from the hub
    python -m conformance.compare --fallback-synthetic     # ... or the labelled synthetic default if offline
    python -m conformance.compare --weights path/to/model.safetensors --prompt "To be, or not"
    python -m conformance.compare --weights synthetic      # always the synthetic 124M checkpoint

For each backend that can run here it prints the top next tokens (decoded, with probabilities),
the largest logit difference against the float64 NumPy reference (`numpy-f64`) over every
position of the prompt, and `build+forward`: the wall time to build that backend's model from the
weights (copies, uploads to the GPU, JIT compilation on first use) plus one forward pass. It is
what a user waits for, not a benchmark (benchmarks/ measures speed).

Verdict. Every backend's logits are judged against the conformance suite's `logits` ceiling for
its precision (max|d| / max|ref|, the `logits` row of conformance/tolerances.py),
the same metric and the same number the suite applies. A backend passes when it agrees with the
reference *within tolerance*; floating point does not promise bit-equal results across backends.
Exit status: 0 when every backend that ran is within tolerance, 1 when one breaches its ceiling or
an available backend crashes, 2 for bad arguments or unusable weights (one line, `error: ...`).
Backends that cannot run on this machine (no GPU, no transformers) are listed with the reason and
are not failures.

`hf-transformers-f32` is Hugging Face transformers' own GPT2LMHeadModel loaded with the same
weights: an independent oracle that this project did not write.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import warnings
from dataclasses import dataclass

import numpy as np

from conformance.backends import registry
from conformance.checks import max_rel
from conformance.suite import REFERENCE
from conformance.tolerances import ceiling
from weights import SYNTHETIC_LABEL, GPT2Config, load, num_params, synthetic
from weights.errors import ArgumentParser, UsageError, run_cli
from weights.hub import HubError

DEFAULT_PROMPT = "Hello, I'm a language model,"

# What each backend is, in one line (the registry's notes are written for the conformance tables).
DESCRIPTIONS = {
    "numpy-f64": "the NumPy reference in float64: the ground truth every other backend is judged against",
    "numpy-f32": "the same NumPy reference in float32",
    "torch-cpu-f32": "our PyTorch model (torch_impl), float32, CPU",
    "torch-cuda-f32": "our PyTorch model (torch_impl), float32, CUDA",
    "torch-cuda-bf16": "our PyTorch model (torch_impl), bf16 autocast, CUDA",
    "numba-cuda-f32": "our Numba CUDA kernels (numba_impl), float32",
    "hf-transformers-f32": "Hugging Face transformers' GPT2LMHeadModel: an independent oracle we did not write",
}


def say(text: str = "") -> None:
    print(text, flush=True)


def load_weights(source: str, fallback_synthetic: bool, sha256: str | None = None):
    """(params, config, label). Falls back to synthetic weights only when the hub is unreachable.
    sha256: the local file's expected digest (weights.load checks it)."""
    if source == "synthetic":
        return _build_synthetic()
    say(f"loading weights: {source} ...")
    t0 = time.perf_counter()
    try:
        params, config = load(source, sha256=sha256)
    except HubError as e:
        if not fallback_synthetic:
            raise
        banner = "!" * 100
        say(
            f"{banner}\n!! Could not fetch {source!r} from the hub:\n!!   {e}\n!! FALLING BACK TO {SYNTHETIC_LABEL}.\n"
            f"!! The backends are still compared within tolerance, but the predicted tokens are meaningless.\n{banner}"
        )
        return _build_synthetic()
    say(f"loaded {num_params(config):,} parameters in {time.perf_counter() - t0:.1f} s")
    return params, config, f"checkpoint {source}"


def _build_synthetic():
    config = GPT2Config.gpt2_124m()
    say(f"building the synthetic GPT-2 124M checkpoint ({num_params(config):,} parameters, seed 0) ...")
    t0 = time.perf_counter()
    params = synthetic(config, seed=0)
    say(f"built in {time.perf_counter() - t0:.1f} s")
    return params, config, SYNTHETIC_LABEL


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def parse_args(argv: list[str]):
    ap = ArgumentParser(
        prog="python -m conformance.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--weights", default="gpt2", help="hub id (gpt2), a .safetensors file or folder, or 'synthetic'")
    ap.add_argument("--sha256", default=None, help="the weights file's expected SHA-256 (checked before use)")
    ap.add_argument(
        "--fallback-synthetic",
        action="store_true",
        help="if the hub cannot be reached, use the synthetic 124M checkpoint (clearly labelled)",
    )
    ap.add_argument("--prompt", default=DEFAULT_PROMPT)
    ap.add_argument("--backends", default="", help="comma-separated backend names (default: all available)")
    ap.add_argument("--top", type=int, default=5, help="how many next tokens to show (1 .. vocabulary size)")
    args = ap.parse_args(argv)
    if args.top < 1:
        raise UsageError(f"--top {args.top}: must be at least 1")
    return args


def select_backends(spec: str):
    """The backends named in `spec` (comma-separated; empty: all), always with the reference first.

    A backend asked for by name must be able to run here (a CUDA backend on a machine without CUDA
    is a user error); with no names, those that cannot run are listed and skipped."""
    backends = registry()
    if not spec:
        return backends
    known = [b.name for b in backends]
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [w for w in wanted if w not in known]
    if unknown or not wanted:
        raise UsageError(f"--backends {spec!r}: unknown backend(s) {unknown}; known: {', '.join(known)}")
    chosen = [b for b in backends if b.name in set(wanted) | {REFERENCE}]
    for b in chosen:
        ok, why = b.available()
        if not ok and b.name in wanted:
            raise UsageError(f"--backends {b.name}: cannot run on this machine ({why})")
    return chosen


@dataclass
class Outcome:
    name: str
    status: str  # "ran", "crashed", "not run"
    logits: np.ndarray | None = None
    seconds: float = 0.0
    why: str = ""
    value: float | None = None  # max_rel vs the reference
    limit: float | None = None  # the ceiling
    verdict: str = ""  # "reference", "PASS", "FAIL", "not run", "reported"


def run_backends(backends, params, config, idx, debug: bool) -> list[Outcome]:
    """Build and run each backend on `idx`, one progress line per backend."""
    outcomes = []
    n = len(backends)
    for i, b in enumerate(backends, 1):
        head = f"[{i}/{n}] {b.name:<20}"
        ok, why = b.available()
        if ok:
            ok, why = b.supports(config, idx.size)
        if not ok:
            say(f"{head} not available here: {why}")
            outcomes.append(Outcome(b.name, "not run", why=why))
            continue
        print(f"{head} building the model and running the prompt ...", end="", flush=True)
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                # torch warns that numpy arrays handed to it are not writable / need no grad; noise here
                warnings.filterwarnings("ignore", message=".*requires_grad.*")
                warnings.filterwarnings("ignore", message=".*non-writable.*")
                logits = np.asarray(b.forward(params, config, idx), dtype=np.float64)
        except Exception as e:
            say(f" CRASHED after {time.perf_counter() - t0:.1f} s")
            if debug:
                traceback.print_exc()
            text = " ".join(f"{type(e).__name__}: {e}".split())
            outcomes.append(Outcome(b.name, "crashed", why=text))
            continue
        dt = time.perf_counter() - t0
        say(f" {dt:.1f} s")
        outcomes.append(Outcome(b.name, "ran", logits=logits, seconds=dt))
    return outcomes


def judge(outcomes: list[Outcome], backends) -> None:
    """Fill in value, limit and verdict of every outcome (in place)."""
    precision = {b.name: b.precision for b in backends}
    ref = next((o for o in outcomes if o.name == REFERENCE and o.status == "ran"), None)
    for o in outcomes:
        if o.status == "not run":
            o.verdict = "not run"
        elif o.status == "crashed":
            o.verdict = "FAIL"
        elif o.name == REFERENCE:
            finite = np.isfinite(o.logits).all()
            o.verdict = "reference" if finite else "FAIL"
            o.why = "" if finite else "the reference's logits are not finite"
        elif ref is None or not np.isfinite(ref.logits).all():
            o.verdict, o.why = "FAIL", f"no usable {REFERENCE} logits to judge against"
        else:
            o.value = max_rel(o.logits, ref.logits)
            o.limit = ceiling(precision[o.name], "logits")
            if o.limit is None:
                o.verdict = "reported"
            else:
                o.verdict = "PASS" if o.value <= o.limit else "FAIL"


def main(argv=None) -> int:
    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    args = parse_args(argv)
    backends = select_backends(args.backends)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # its config warnings are not ours to show
    if "transformers" in sys.modules:
        sys.modules["transformers"].logging.set_verbosity_error()

    params, config, label = load_weights(args.weights, args.fallback_synthetic, args.sha256)
    from weights.tokenizer import get_tokenizer

    enc = get_tokenizer()
    ids = enc.encode(args.prompt)
    if not ids:
        raise UsageError("--prompt is empty: give at least one token")
    if len(ids) > config.n_ctx:
        raise UsageError(
            f"--prompt is {len(ids)} tokens, longer than the model's context (n_ctx = {config.n_ctx}); shorten it"
        )
    for b in backends if args.backends else []:
        ok, why = b.supports(config, len(ids))
        if not ok:
            raise UsageError(f"--backends {b.name}: cannot run this checkpoint here ({why})")
    if args.top > config.vocab_size:
        raise UsageError(f"--top {args.top}: the vocabulary has only {config.vocab_size} tokens")
    say(f"\nweights: {label}")
    say(
        f"config:  n_layer={config.n_layer} n_head={config.n_head} n_embd={config.n_embd} "
        f"vocab={config.vocab_size} n_ctx={config.n_ctx}"
    )
    if config.vocab_size != enc.n_vocab:
        say(f"note:    the checkpoint's vocabulary ({config.vocab_size}) is not GPT-2's; token ids are taken modulo it")
        ids = [i % config.vocab_size for i in ids]
    idx = np.array([ids], dtype=np.int64)
    say(f"prompt:  {args.prompt!r} -> {len(ids)} tokens {ids}\n")
    say("backends:")
    for b in backends:
        say(f"  {b.name:<20} {DESCRIPTIONS.get(b.name, b.notes)}")
    say("")

    outcomes = run_backends(backends, params, config, idx, args.debug)
    judge(outcomes, backends)

    def decode(i: int) -> str:
        try:
            return repr(enc.decode([int(i)]))
        except Exception:
            return f"<id {int(i)}>"

    say(f"\n{'backend':<20} {'build+forward':>13}   logits vs {REFERENCE} (max|d|/max|ref|, all positions)")
    for o in outcomes:
        if o.status != "ran":
            continue
        last = o.logits[0, -1]
        probs = softmax(last)
        top = np.argsort(-last, kind="stable")[: args.top]
        if o.verdict == "reference":
            diff = "reference"
        elif o.value is None:
            diff = o.why
        else:
            absdiff = np.abs(o.logits - outcomes[0].logits).max()
            diff = f"{o.value:.1e} rel (max|dlogits| {absdiff:.2e})"
        say(f"{o.name:<20} {o.seconds * 1e3:10.1f} ms   {diff}")
        say("    next: " + "   ".join(f"{decode(t)} {probs[t]:.3g}" for t in top))
    say("build+forward: building the backend's model from the weights (copies, GPU uploads, JIT compile)")
    say("               plus one forward pass; what you wait for, not a benchmark (see benchmarks/)")

    say("\nverdict (logits vs the conformance ceiling of each backend's precision, conformance/tolerances.py):")
    for o in outcomes:
        if o.verdict == "reference":
            text = "the float64 reference"
        elif o.verdict == "not run":
            text = f"not available here ({o.why})"
        elif o.status == "crashed":
            text = f"CRASHED: {o.why}"
        elif o.value is None:
            text = o.why
        elif o.verdict == "PASS":
            text = f"within tolerance: {o.value:.1e} <= ceiling {o.limit:.0e}"
        elif o.verdict == "FAIL":
            text = f"BEYOND TOLERANCE: {o.value:.1e} > ceiling {o.limit:.0e}"
        else:
            text = f"{o.value:.1e} (no ceiling: reported, not judged)"
        say(f"  {o.name:<20} {o.verdict:<9} {text}")
    failed = [o.name for o in outcomes if o.verdict == "FAIL"]
    judged = [o.name for o in outcomes if o.verdict in ("PASS", "FAIL")]
    absent = [o.name for o in outcomes if o.verdict == "not run"]
    if failed:
        say(f"overall: FAIL: {', '.join(failed)} ({len(failed)} of {len(judged)} judged backends)")
    elif not judged:
        say(f"overall: nothing judged: only {REFERENCE} ran")
    else:
        say(
            f"overall: PASS: {len(judged)} backend(s) agree with {REFERENCE} within tolerance"
            + (f"; {len(absent)} not available here" if absent else "")
        )
    if label == SYNTHETIC_LABEL:
        say(f"\n(these are {SYNTHETIC_LABEL}: the tokens above are not GPT-2's predictions)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
