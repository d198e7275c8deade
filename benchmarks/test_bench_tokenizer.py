"""Tokenizer throughput: reference.tokenizer against tiktoken, encoding all of Tiny Shakespeare.

    python -m pytest benchmarks/test_bench_tokenizer.py --benchmark-only

Each benchmark records in extra_info (kind="tokenizer") the input size, its throughput in MB/s (UTF-8 megabytes,
10**6 bytes, per second of the median round) and, for ours, the ratio to tiktoken's throughput
measured in the same run. Three cases:

    tiktoken          Rust BPE, with its regex and merges compiled in
    ours-cold         a fresh piece cache every round: what encoding a new corpus costs
    ours-warm         the cache already holds every piece: regex + dictionary lookups only
    train-300         learning 300 merges from the whole corpus (reference.bpe_train)

Every case checks its result (ids identical to tiktoken's) so a fast wrong answer cannot pass.
"""

from __future__ import annotations

import pytest

from weights.paths import WHERE_TINYSHAKESPEARE, WHERE_TOKENIZER, tinyshakespeare_path, tokenizer_dir

pytestmark = pytest.mark.skipif(tokenizer_dir() is None, reason=f"GPT-2 tokenizer files absent: {WHERE_TOKENIZER}")
# The encode cases are `smoke`: CI runs each once (tests/benchmarks/test_smoke.py), a few seconds in all.
# Training is not: tests/tokenizer/test_bpe_train.py already runs the same 300 merges.

ROUNDS, WARMUP = 5, 1  # rounds of ~0.1-1 s each: a stable median within ~20 s for the file
_tiktoken_mb_s: dict[str, float] = {}  # filled by the tiktoken case or on demand, read by ours


@pytest.fixture(scope="module")
def text() -> str:
    path = tinyshakespeare_path()
    if path is None:
        pytest.skip(f"Tiny Shakespeare absent: {WHERE_TINYSHAKESPEARE}")
    return path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def oracle():
    from weights.tokenizer import get_tokenizer

    return get_tokenizer()


@pytest.fixture(scope="module")
def expected(oracle, text) -> list[int]:
    return oracle.encode(text)


def megabytes_per_s(text: str, seconds: float) -> float:
    return len(text.encode("utf-8")) / 1e6 / seconds


def tiktoken_throughput(oracle, text: str) -> float:
    """tiktoken's MB/s on `text`, best of 5 (measured here when its own benchmark did not run)."""
    if "median" not in _tiktoken_mb_s:
        import time

        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            oracle.encode(text)
            best = min(best, time.perf_counter() - t0)
        _tiktoken_mb_s["median"] = megabytes_per_s(text, best)
    return _tiktoken_mb_s["median"]


def timed(benchmark, fn, rounds: int = ROUNDS, warmup: int = WARMUP, **kwargs):
    """benchmark.pedantic with the suite's --bench-rounds override (CI smoke: one round, no warm-up)."""
    from benchmarks import timing

    if timing.ROUNDS_OVERRIDE is not None:
        rounds, warmup = timing.ROUNDS_OVERRIDE, 0
    if benchmark.disabled:
        rounds, warmup = 1, 0
    return benchmark.pedantic(fn, rounds=rounds, warmup_rounds=warmup, iterations=1, **kwargs)


def record(benchmark, text: str, oracle=None) -> None:
    benchmark.extra_info.update(kind="tokenizer", bytes=len(text.encode("utf-8")))
    if benchmark.disabled:  # --benchmark-disable: the function ran once, untimed
        return
    mb_s = megabytes_per_s(text, benchmark.stats.stats.median)
    benchmark.extra_info["MB_per_s"] = round(mb_s, 3)
    if oracle is not None:
        benchmark.extra_info["tiktoken_MB_per_s"] = round(tiktoken_throughput(oracle, text), 3)
        benchmark.extra_info["ratio_vs_tiktoken"] = round(mb_s / benchmark.extra_info["tiktoken_MB_per_s"], 4)


@pytest.mark.smoke
@pytest.mark.benchmark(group="tokenizer-encode")
def test_encode_tiktoken(benchmark, oracle, text, expected):
    ids = timed(benchmark, oracle.encode, args=(text,))
    assert ids == expected
    record(benchmark, text)
    if "MB_per_s" in benchmark.extra_info:
        _tiktoken_mb_s["median"] = benchmark.extra_info["MB_per_s"]


@pytest.mark.smoke
@pytest.mark.benchmark(group="tokenizer-encode")
def test_encode_ours_cold_cache(benchmark, oracle, text, expected):
    from reference.tokenizer import GPT2Tokenizer

    tok = GPT2Tokenizer.from_files(tokenizer_dir())

    def empty_cache():
        tok._cache.clear()
        return (text,), {}

    ids = timed(benchmark, tok.encode, warmup=0, setup=empty_cache)
    assert ids == expected
    record(benchmark, text, oracle)


@pytest.mark.smoke
@pytest.mark.benchmark(group="tokenizer-encode")
def test_encode_ours_warm_cache(benchmark, oracle, text, expected):
    from reference.tokenizer import GPT2Tokenizer

    tok = GPT2Tokenizer.from_files(tokenizer_dir())
    tok.encode(text)  # every piece of the text is now in the cache
    ids = timed(benchmark, tok.encode, args=(text,))
    assert ids == expected
    record(benchmark, text, oracle)


@pytest.mark.benchmark(group="tokenizer-train")
def test_train_300_merges(benchmark, text):
    from reference.bpe_train import train_bpe

    merges = timed(benchmark, train_bpe, rounds=3, warmup=0, args=(text, 300))
    assert len(merges) == 300
    record(benchmark, text)
