"""Learn byte-level BPE merges from raw text, GPT-2 style, and save them as GPT-2's two files.

The algorithm, as GPT-2's vocabulary was built:

    1. Pre-tokenise the text with GPT-2's pattern and count each distinct piece
       ("the" x 5000, " the" x 20000, ...). Merges never cross piece boundaries.
    2. Write each piece as its bytes, one stand-in character per byte (reference.tokenizer's
       BYTE_TO_UNICODE), and count every adjacent pair of symbols, weighted by the piece's count.
    3. Repeat for as many merges as asked: take the most frequent pair (ties: the smallest pair,
       comparing the two symbol strings, so training is deterministic), record it as the next
       merge, and join it in every piece that holds it, updating the pair counts of those
       pieces only.

A pair whose joined string is already a token (it was made earlier by a different split,
e.g. "a"+"bc" after "ab"+"c") is not recorded again: GPT-2's files give each token exactly one
id, and tiktoken checks that. The 256 single bytes are always in the vocabulary, so any text,
including bytes never seen in training, round-trips.

    merges = train_bpe(text, num_merges=500)
    write_files("my-tokenizer/", merges)           # vocab.bpe + encoder.json
    tok = GPT2Tokenizer.from_files("my-tokenizer/")

Command line: python -m reference.bpe_train INPUT.txt OUT_DIR --merges 500
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from itertools import pairwise
from pathlib import Path

import regex

from reference.tokenizer import BASE_TOKENS, GPT_2_SPLIT_PATTERN, bytes_to_token, merge_pair, write_files


def count_pieces(text: str, pattern: str = GPT_2_SPLIT_PATTERN) -> Counter[str]:
    """Pre-tokenise `text` and count each distinct piece, as stand-in strings ("Ġthe": 20000)."""
    return Counter(bytes_to_token(piece.encode("utf-8")) for piece in regex.findall(pattern, text))


def train_bpe(text: str, num_merges: int, pattern: str = GPT_2_SPLIT_PATTERN) -> list[tuple[str, str]]:
    """Learn up to `num_merges` merges from `text`; returns them in rank order.

    Fewer come back when the text runs out of pairs (every piece already a single token).
    """
    if num_merges < 0:
        raise ValueError(f"num_merges must be >= 0, got {num_merges}")
    piece_counts = count_pieces(text, pattern)
    words = [list(piece) for piece in piece_counts]  # each distinct piece as its current symbols
    weights = list(piece_counts.values())  # how often each piece occurs in the text

    # pair -> total occurrences; pair -> indices of the words that hold it (may hold stale entries)
    pair_counts: Counter[tuple[str, str]] = Counter()
    words_with: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
    for w, symbols in enumerate(words):
        for pair in pairwise(symbols):
            pair_counts[pair] += weights[w]
            words_with[pair].add(w)

    vocab = set(BASE_TOKENS)
    merges: list[tuple[str, str]] = []
    while len(merges) < num_merges:
        best = _most_frequent_new_pair(pair_counts, vocab)
        if best is None:
            break
        merges.append(best)
        vocab.add(best[0] + best[1])
        for w in words_with.pop(best):
            before, after = words[w], merge_pair(words[w], best)
            for pair in pairwise(before):
                pair_counts[pair] -= weights[w]
            for pair in pairwise(after):
                pair_counts[pair] += weights[w]
                words_with[pair].add(w)
            words[w] = after
        pair_counts = +pair_counts  # drop the pairs that no longer occur
    return merges


def _most_frequent_new_pair(pair_counts: Counter[tuple[str, str]], vocab: set[str]) -> tuple[str, str] | None:
    """The pair with the highest count whose join is not yet a token; ties -> the smallest pair."""
    best, best_count = None, 0
    for pair, count in pair_counts.items():
        if count < best_count or pair[0] + pair[1] in vocab:
            continue
        if count > best_count or pair < best:
            best, best_count = pair, count
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Learn GPT-2-style byte-level BPE merges from a text file.")
    parser.add_argument("input", type=Path, help="UTF-8 text to learn from")
    parser.add_argument("out_dir", type=Path, help="folder to write vocab.bpe and encoder.json into")
    parser.add_argument("--merges", type=int, default=1000, help="number of merges to learn (default 1000)")
    args = parser.parse_args(argv)
    merges = train_bpe(args.input.read_text(encoding="utf-8"), args.merges)
    write_files(args.out_dir, merges)
    n_ids = 256 + len(merges) + 1
    print(f"{len(merges)} merges -> {args.out_dir}/vocab.bpe, {args.out_dir}/encoder.json ({n_ids} ids)")


if __name__ == "__main__":
    main()
