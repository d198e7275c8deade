"""The conformance cases: which weights, which tokens, which shapes.

    tiny-*     GPT2Config.tiny() (2 layers, C=16, V=64; n_ctx 32 for generation): CI, and the only size the CUDA
               simulator can run. Its "trained" weights learn Tiny Shakespeare at the character
               level (64 symbols), so greedy generation has clear winners.
    small-*    2 layers, C=64, the real 50,257-token vocabulary: real GPT-2 tokens of Tiny
               Shakespeare, synthetic and briefly trained weights.
    124m-*     the full GPT-2 124M shape with synthetic weights (opt in: --full).
    *-llmc-*   llm.c's own test (test_gpt2.c): its AdamW hyperparameters, weight decay on every tensor
               (LLMC_ADAMW; docs/llmc.md); tiny in CI, llm.c's shape B=4, T=64 at 124M with --full.
    tiny-<variant>, tiny-llama*, 124m-llama-*
               the variants (docs/variants.md) on the tiny shape, each option alone and all of the
               llama-style preset's options together, and the llama-style 124M preset (--full).

Every case says where its weights came from; synthetic ones are labelled SYNTHETIC.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from conformance.backends import ADAMW_DEFAULTS
from weights import SYNTHETIC_LABEL, GPT2Config, synthetic
from weights.paths import WHERE_TINYSHAKESPEARE, tinyshakespeare_path

TINY = GPT2Config.tiny()
TINY_GEN = GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=64, n_ctx=32)  # room for 4 + 20 tokens
SMALL = GPT2Config(n_layer=2, n_head=4, n_embd=64, vocab_size=50257, n_ctx=128)
FULL = GPT2Config.gpt2_124m()

# The variants on the tiny shape: each option alone, and the llama-style preset's combination
# (GPT2Config.llama_style_124m: rope, rmsnorm, swiglu, grouped-query attention, no biases) whose
# 2 query heads share 1 key/value head.
VARIANT_OPTIONS = {
    "rope": dict(position="rope"),
    "rmsnorm": dict(norm="rmsnorm"),
    "swiglu": dict(mlp="swiglu"),
    "gqa": dict(n_kv_head=1),
    "nobias": dict(bias=False),
    "untied": dict(tied_head=False),
}
LLAMA_OPTIONS = dict(position="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=1, bias=False)
TINY_LLAMA = dataclasses.replace(TINY, **LLAMA_OPTIONS)
TINY_LLAMA_GEN = dataclasses.replace(TINY_GEN, **LLAMA_OPTIONS)
FULL_LLAMA = GPT2Config.llama_style_124m()
# GPT-2 XL's head count (25, odd) on the tiny scale: nothing may assume 12 heads or C = 768
TINY_25_HEADS = GPT2Config(n_layer=1, n_head=25, n_embd=50, vocab_size=64, n_ctx=16)

# llm.c's own test (test_gpt2.c): 10 steps of its gpt2_update(lr 1e-4, beta1 0.9, beta2 0.999, eps 1e-8,
# weight_decay 0.01), which decays every parameter, biases and LayerNorms included (docs/llmc.md).
LLMC_ADAMW = (("lr", 1e-4), ("beta1", 0.9), ("beta2", 0.999), ("eps", 1e-8), ("weight_decay", 0.01), ("decay", "all"))


@dataclass(frozen=True)
class Case:
    name: str
    config: GPT2Config
    weights: str  # "synthetic" or "trained"
    tokens: str  # "random", "random-ignore" (some targets -1) or "shakespeare"
    B: int
    T: int
    checks: tuple[str, ...] = ("forward_backward",)
    full: bool = False
    adamw: tuple[tuple[str, object], ...] = ()  # AdamW hyperparameters that differ from ADAMW_DEFAULTS

    @property
    def adamw_hp(self) -> dict:
        """The hyperparameters of the case's AdamW trajectory: ADAMW_DEFAULTS with the case's own."""
        return dict(ADAMW_DEFAULTS, **dict(self.adamw))

    @property
    def label(self) -> str:
        return (
            SYNTHETIC_LABEL
            if self.weights == "synthetic"
            else "trained for a few dozen steps by torch_impl on Tiny Shakespeare"
        )


CASES: list[Case] = [
    Case("tiny-T1", TINY, "synthetic", "random", 1, 1),
    Case("tiny-B1-T7", TINY, "synthetic", "random", 1, 7),
    Case("tiny-B4-ctx", TINY, "synthetic", "random-ignore", 4, TINY.n_ctx, ("forward_backward", "adamw")),
    Case("tiny-B2-T4-adamw", TINY, "synthetic", "random-ignore", 2, 4, ("forward_backward", "adamw")),
    Case("tiny-trained", TINY_GEN, "trained", "shakespeare", 1, 4, ("forward_backward", "generate", "kv_cache")),
    Case("small-shakespeare", SMALL, "synthetic", "shakespeare", 4, 64, ("forward_backward", "adamw")),
    Case("small-trained", SMALL, "trained", "shakespeare", 1, 8, ("forward_backward", "generate", "kv_cache")),
    Case("124m-B4-T64", FULL, "synthetic", "random", 4, 64, ("forward_backward",), full=True),
    Case("124m-B1-T1024", FULL, "synthetic", "shakespeare", 1, 1024, ("forward_backward",), full=True),
    Case("124m-adamw", FULL, "synthetic", "shakespeare", 1, 64, ("adamw",), full=True),
    # llm.c's test: its AdamW (every tensor decayed), no ignored targets; at its own shape (B=4, T=64) with --full
    Case("tiny-llmc-B2-T4", TINY, "synthetic", "random", 2, 4, ("forward_backward", "adamw"), adamw=LLMC_ADAMW),
    Case(
        "124m-llmc-B4-T64",
        FULL,
        "synthetic",
        "shakespeare",
        4,
        64,
        ("forward_backward", "adamw"),
        full=True,
        adamw=LLMC_ADAMW,
    ),
    # the variants: each option alone (B*T = 8 tokens: the CUDA simulator runs them), the combination
    # also through 10 AdamW steps, and trained weights for greedy generation with and without the KV cache
    *[
        Case(f"tiny-{name}", dataclasses.replace(TINY, **options), "synthetic", "random-ignore", 2, 4)
        for name, options in VARIANT_OPTIONS.items()
    ],
    Case("tiny-llama", TINY_LLAMA, "synthetic", "random-ignore", 2, 4, ("forward_backward", "adamw")),
    Case(
        "tiny-llama-trained",
        TINY_LLAMA_GEN,
        "trained",
        "shakespeare",
        1,
        4,
        ("forward_backward", "generate", "kv_cache"),
    ),  # fmt: skip
    Case("124m-llama-B4-T64", FULL_LLAMA, "synthetic", "random", 4, 64, ("forward_backward",), full=True),
    # the released family's other sizes (GPU: the float64 reference on the host's cores)
    Case("tiny-25-heads", TINY_25_HEADS, "synthetic", "random-ignore", 1, 8),
    Case("medium-B1-T128", GPT2Config.gpt2_medium(), "synthetic", "random", 1, 128, full=True),
    Case("xl-B1-T128", GPT2Config.gpt2_xl(), "synthetic", "random", 1, 128, full=True),
]

GENERATE_TOKENS = 20
ADAMW_STEPS = 10


class CaseUnavailable(RuntimeError):
    """The case needs something this machine lacks (data file, torch); the message says what."""


# ------------------------------------------------------------------------------------ tokens
# The character alphabet of the tiny (V=64) cases: Tiny Shakespeare's symbols except the rare '$' and '3'
# (63 ids; id 63 is never used); any other character maps to id 0 (' ').
CHAR_ALPHABET = " \n!&',-.:;?abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def char_ids(text: str) -> np.ndarray:
    table = {c: i for i, c in enumerate(CHAR_ALPHABET)}
    return np.array([table.get(c, 0) for c in text], dtype=np.int64)


@functools.cache
def _shakespeare_text() -> str:
    path = tinyshakespeare_path()
    if path is None:
        raise CaseUnavailable(f"Tiny Shakespeare not found: {WHERE_TINYSHAKESPEARE}")
    return path.read_text(encoding="utf-8")


@functools.lru_cache(maxsize=4)
def shakespeare_ids(vocab_size: int, n_chars: int = 200_000) -> np.ndarray:
    """Token ids of the start of Tiny Shakespeare: GPT-2 BPE for the real vocabulary, characters for V=64."""
    text = _shakespeare_text()[:n_chars]
    if vocab_size == 64:
        return char_ids(text)
    from weights.tokenizer import get_tokenizer

    try:
        return np.array(get_tokenizer().encode(text), dtype=np.int64)
    except Exception as e:
        raise CaseUnavailable(f"GPT-2 tokenizer unavailable: {e}") from None


def batch(case: Case, seed: int = 1234) -> tuple[np.ndarray, np.ndarray]:
    """(idx, targets), both (B, T) int64; targets are the next tokens (-1 marks ignored positions)."""
    rng = np.random.default_rng(seed)
    V, B, T = case.config.vocab_size, case.B, case.T
    if case.tokens.startswith("random"):
        seq = rng.integers(0, V, size=(B, T + 1))
    else:
        ids = shakespeare_ids(V)
        starts = rng.integers(0, len(ids) - T - 1, size=B)
        seq = np.stack([ids[s : s + T + 1] for s in starts])
    idx, targets = seq[:, :-1].copy(), seq[:, 1:].copy()
    if case.tokens == "random-ignore":
        targets[rng.random((B, T)) < 0.25] = -1
        targets[0, 0] = -1
    return idx, targets


# ----------------------------------------------------------------------------------- weights
def params_for(case: Case, seed: int = 0) -> dict[str, np.ndarray]:
    """The case's weights (synthetic ones drawn with `seed`; conformance.spread varies it). The arrays are
    read-only: every case and backend shares them, so a backend that updated its input in place would
    corrupt every comparison after it; instead it fails loudly."""
    params = _synthetic(case.config, seed) if case.weights == "synthetic" else _trained(case.config)
    for arr in params.values():
        arr.setflags(write=False)
    return params


@functools.lru_cache(maxsize=2)
def _synthetic(config: GPT2Config, seed: int = 0) -> dict[str, np.ndarray]:
    return synthetic(config, seed=seed)


TRAIN_STEPS = 40


@functools.lru_cache(maxsize=2)
def _trained(config: GPT2Config) -> dict[str, np.ndarray]:
    """Start from the synthetic weights and take TRAIN_STEPS AdamW steps with torch_impl on Tiny Shakespeare.

    A few dozen steps are enough to make greedy decoding decisive (the top logit clearly ahead), which is
    what the generation check needs; the loss drop is asserted by tests/training.
    """
    try:
        import torch

        from torch_impl.model import GPT2
    except ImportError as e:
        raise CaseUnavailable(f"training the checkpoint needs torch_impl ({e})") from None
    torch.manual_seed(0)
    ids = shakespeare_ids(config.vocab_size)
    rng = np.random.default_rng(0)
    model = GPT2.from_params(synthetic(config, seed=0), config, device="cpu", dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.0)
    B, T = 8, min(64, config.n_ctx)
    for _ in range(TRAIN_STEPS):
        starts = rng.integers(0, len(ids) - T - 1, size=B)
        seq = torch.as_tensor(np.stack([ids[s : s + T + 1] for s in starts]))
        _, loss = model(seq[:, :-1], seq[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.to_params()
