"""The main job: one prompt through every GPT-2 backend, side by side.

    python -m conformance.compare                          # GPT-2 124M from the hub
    python -m conformance.compare --fallback-synthetic     # ... or the labelled synthetic default if offline
    python -m conformance.compare --weights path/to/model.safetensors --prompt "To be, or not"
    python -m conformance.compare --weights synthetic      # always the synthetic 124M checkpoint

For each available backend it prints the top-5 next tokens (decoded, with probabilities), the
largest logit difference against the float64 NumPy reference over every position, and the time
the backend took (building its model from the weights plus one forward pass). Backends that
cannot run here are listed with the reason.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from conformance.backends import registry
from conformance.checks import max_rel
from conformance.suite import REFERENCE
from weights import SYNTHETIC_LABEL, GPT2Config, load, synthetic
from weights.hub import HubError

DEFAULT_PROMPT = "Hello, I'm a language model,"


def load_weights(source: str, fallback_synthetic: bool):
    """(params, config, label). Falls back to synthetic weights only when the hub is unreachable."""
    if source == "synthetic":
        return synthetic(GPT2Config.gpt2_124m(), seed=0), GPT2Config.gpt2_124m(), SYNTHETIC_LABEL
    try:
        params, config = load(source)
        return params, config, f"checkpoint {source}"
    except HubError as e:
        if not fallback_synthetic:
            raise
        banner = "!" * 100
        print(
            f"{banner}\n!! Could not fetch {source!r} from the hub:\n!!   {e}\n!! FALLING BACK TO {SYNTHETIC_LABEL}.\n"
            f"!! The backends are still compared exactly, but the predicted tokens are meaningless.\n{banner}"
        )
        return synthetic(GPT2Config.gpt2_124m(), seed=0), GPT2Config.gpt2_124m(), SYNTHETIC_LABEL


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default="gpt2", help="hub id (gpt2), a .safetensors file or folder, or 'synthetic'")
    ap.add_argument(
        "--fallback-synthetic",
        action="store_true",
        help="if the hub cannot be reached, use the synthetic 124M checkpoint (clearly labelled)",
    )
    ap.add_argument("--prompt", default=DEFAULT_PROMPT)
    ap.add_argument("--backends", default="", help="comma-separated backend names (default: all available)")
    ap.add_argument("--top", type=int, default=5)
    args = ap.parse_args(argv)

    params, config, label = load_weights(args.weights, args.fallback_synthetic)
    from weights.tokenizer import get_tokenizer

    enc = get_tokenizer()
    ids = enc.encode(args.prompt)
    if config.vocab_size != enc.n_vocab:
        print(f"note: the checkpoint's vocabulary ({config.vocab_size}) is not GPT-2's; token ids are taken modulo it")
        ids = [i % config.vocab_size for i in ids]
    idx = np.array([ids], dtype=np.int64)
    print(f"weights: {label}")
    print(
        f"config:  n_layer={config.n_layer} n_head={config.n_head} n_embd={config.n_embd} "
        f"vocab={config.vocab_size} n_ctx={config.n_ctx}"
    )
    print(f"prompt:  {args.prompt!r} -> {len(ids)} tokens {ids}\n")

    def decode(i: int) -> str:
        try:
            return repr(enc.decode([int(i)]))
        except Exception:
            return f"<id {int(i)}>"

    backends = registry()
    if args.backends:
        wanted = set(args.backends.split(",")) | {REFERENCE}
        backends = [b for b in backends if b.name in wanted]
    ref_logits = None
    rows, skipped = [], []
    for b in backends:
        ok, why = b.available()
        if ok:
            ok, why = b.supports(config)
        if not ok:
            skipped.append((b.name, why))
            continue
        t0 = time.perf_counter()
        try:
            logits = np.asarray(b.forward(params, config, idx), dtype=np.float64)
        except Exception as e:
            skipped.append((b.name, f"failed: {type(e).__name__}: {e}"))
            continue
        dt = time.perf_counter() - t0
        if b.name == REFERENCE:
            ref_logits = logits
        rows.append((b, logits, dt))

    print(f"{'backend':<22} {'build+forward':>13}   logits vs {REFERENCE} (all positions)")
    for b, logits, dt in rows:
        last = logits[0, -1]
        top = np.argsort(-last)[: args.top]
        probs = softmax(last)
        diff = (
            "reference"
            if b.name == REFERENCE
            else (
                f"max|dlogits| {np.abs(logits - ref_logits).max():.2e} ({max_rel(logits, ref_logits):.1e} rel)"
                if ref_logits is not None
                else "no reference"
            )
        )
        print(f"{b.name:<22} {dt * 1e3:9.1f} ms   {diff}")
        print("    next: " + "   ".join(f"{decode(t)} {probs[t]:.3g}" for t in top))
    if skipped:
        print("\nnot run:")
        for name, why in skipped:
            print(f"  {name:<22} {why}")
    if label == SYNTHETIC_LABEL:
        print(f"\n(these are {SYNTHETIC_LABEL}: the tokens above are not GPT-2's predictions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
