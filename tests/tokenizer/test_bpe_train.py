"""reference.bpe_train: merges learned by hand-checkable rules, saved files that both our
tokenizer and tiktoken load and encode alike, and an exact round trip of Tiny Shakespeare."""

from __future__ import annotations

from collections import Counter

import pytest

from reference.bpe_train import _most_frequent_new_pair, count_pieces, main, train_bpe
from reference.tokenizer import GPT2Tokenizer, read_merges, write_files
from weights.paths import WHERE_TINYSHAKESPEARE, tinyshakespeare_path


def tiktoken_from_files(folder, eot_id: int):
    """tiktoken's encoding of a trained vocab.bpe + encoder.json: its own loader, GPT-2's pattern."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    ranks = data_gym_to_mergeable_bpe_ranks(str(folder / "vocab.bpe"), str(folder / "encoder.json"))
    return tiktoken.Encoding(
        name=folder.name, pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": eot_id}
    )


def test_count_pieces_uses_gpt2_pre_tokenisation():
    assert count_pieces("the the  cat's\n") == Counter({"the": 1, "Ġthe": 1, "Ġ": 1, "Ġcat": 1, "'s": 1, "Ċ": 1})


def test_first_merges_by_hand():
    # pieces: "aab" x3 (from "aab aab aab" -> "aab", " aab", " aab"), so count by hand:
    #   (a,a): 3   (a,b): 3   (Ġ,a): 2
    # tie (a,a) vs (a,b) at 3 -> the smaller pair ("a","a") first; then (aa,b): 3; then (Ġ,aab): 2
    merges = train_bpe("aab aab aab", num_merges=10)
    assert merges == [("a", "a"), ("aa", "b"), ("Ġ", "aab")]  # then every piece is one token


def test_frequency_beats_position_and_order():
    # pieces "ab" x2, "cd" x3, "Ċ" x5: (c,d) = 3 beats (a,b) = 2, though "ab" comes first and sorts first
    assert train_bpe("ab\nab\ncd\ncd\ncd\n", num_merges=2) == [("c", "d"), ("a", "b")]


def test_zero_merges_and_bad_count():
    assert train_bpe("anything", 0) == []
    with pytest.raises(ValueError, match="num_merges must be >= 0, got -1"):
        train_bpe("x", -1)


def test_a_join_that_is_already_a_token_is_not_merged_again():
    pair_counts = Counter({("a", "bc"): 10, ("ab", "c"): 0, ("x", "y"): 3})
    assert _most_frequent_new_pair(pair_counts, vocab={"a", "bc", "abc", "x", "y"}) == ("x", "y")
    assert _most_frequent_new_pair(Counter({("a", "b"): 2}), vocab={"a", "b", "ab"}) is None


def test_training_is_deterministic():
    text = "the quick brown fox jumps over the lazy dog; the dog sleeps. " * 20
    assert train_bpe(text, 40) == train_bpe(text, 40)


def test_saved_files_load_into_our_tokenizer_and_tiktoken(tmp_path):
    text = "It's 2024: naïve café, 東京 🤖!\n\n  spaces   and\ttabs " * 30
    merges = train_bpe(text, 60)
    write_files(tmp_path, merges)
    assert read_merges(tmp_path / "vocab.bpe") == merges
    ours = GPT2Tokenizer.from_files(tmp_path)
    theirs = tiktoken_from_files(tmp_path, ours.eot_token)
    for sample in [text, "unseen words: zebra ξ 🦓", ""]:
        assert ours.encode(sample) == theirs.encode(sample)
        assert ours.decode(ours.encode(sample)) == sample
    assert len(ours.encode(text)) < len(text.encode("utf-8")) / 2  # the merges do compress


def test_command_line(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("low lower lowest " * 10, encoding="utf-8")
    main([str(src), str(tmp_path / "out"), "--merges", "5"])
    assert len(read_merges(tmp_path / "out" / "vocab.bpe")) == 5
    assert "5 merges" in capsys.readouterr().out


def test_tiny_shakespeare_round_trip_and_tiktoken_agree(tmp_path):
    """A few hundred merges learned on all of Tiny Shakespeare (kept small for CI time)."""
    path = tinyshakespeare_path()
    if path is None:
        pytest.skip(f"Tiny Shakespeare absent: {WHERE_TINYSHAKESPEARE}")
    text = path.read_text(encoding="utf-8")
    merges = train_bpe(text, 300)
    assert len(merges) == 300 and len(set(merges)) == 300
    write_files(tmp_path, merges)
    ours = GPT2Tokenizer.from_files(tmp_path)
    ids = ours.encode(text)
    assert ours.decode(ids) == text
    theirs = tiktoken_from_files(tmp_path, ours.eot_token)
    assert ids == theirs.encode(text)
    assert len(ids) < 0.55 * len(text.encode("utf-8"))  # 300 merges: ~0.5 tokens per byte
