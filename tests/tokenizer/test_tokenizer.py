"""reference.tokenizer: the byte table, the merge loop, the files, special tokens, decoding, errors.

The tests in the first half use toy vocabularies written into tmp_path, so they run without
GPT-2's files; the second half checks known GPT-2 ids (the full comparison with tiktoken is in
conformance/test_tokenizer_conformance.py).
"""

from __future__ import annotations

import json
import re

import pytest

from reference.tokenizer import (
    BASE_TOKENS,
    BYTE_TO_UNICODE,
    EOT_TOKEN,
    GPT2Tokenizer,
    StreamDecoder,
    TokenizerFileError,
    bpe_merge,
    bytes_to_token,
    merge_pair,
    read_merges,
    token_to_bytes,
    write_files,
)
from weights.paths import WHERE_TOKENIZER, tokenizer_dir

# ---- the byte <-> stand-in table ---------------------------------------------------------------


def test_byte_table_is_a_bijection_onto_printable_characters():
    assert sorted(BYTE_TO_UNICODE) == list(range(256))
    assert len(set(BYTE_TO_UNICODE.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in BYTE_TO_UNICODE.values())


def test_byte_table_known_entries():
    # printable Latin-1 stands for itself; the 68 others are U+0100.. in byte order
    assert BYTE_TO_UNICODE[ord("A")] == "A" and BYTE_TO_UNICODE[ord("ÿ")] == "ÿ"
    assert BYTE_TO_UNICODE[0] == "\u0100"
    assert BYTE_TO_UNICODE[ord("\n")] == "Ċ"
    assert BYTE_TO_UNICODE[ord(" ")] == "Ġ"
    assert BYTE_TO_UNICODE[0xAD] == "\u0143"  # soft hyphen, the last remapped byte: 0x100 + 67
    assert sum(1 for b, c in BYTE_TO_UNICODE.items() if ord(c) == b) == 188
    # encoder.json's single-byte ids follow this order: printable first
    assert BASE_TOKENS[:3] == ["!", '"', "#"] and BASE_TOKENS[188] == "\u0100"


def test_token_bytes_round_trip():
    data = bytes(range(256)) + "héllo 🤖".encode()
    assert token_to_bytes(bytes_to_token(data)) == data
    assert bytes_to_token(b" the\n") == "ĠtheĊ"


# ---- the merge loop ---------------------------------------------------------------------------


def test_merge_pair_joins_non_overlapping_left_to_right():
    assert merge_pair(["a", "a", "a"], ("a", "a")) == ["aa", "a"]
    assert merge_pair(["a", "b", "a", "b"], ("a", "b")) == ["ab", "ab"]
    assert merge_pair(["a", "b"], ("b", "a")) == ["a", "b"]


def test_bpe_merge_applies_lowest_rank_first():
    ranks = {("h", "e"): 0, ("Ġ", "t"): 1, ("Ġt", "he"): 2, ("t", "h"): 3}
    assert bpe_merge(list("Ġthe"), ranks) == ["Ġthe"]
    # ("t","h") would make "th", but (h,e) is learned earlier and takes the "h" first
    assert bpe_merge(list("the"), ranks) == ["t", "he"]
    assert bpe_merge(list("xyz"), ranks) == ["x", "y", "z"]
    assert bpe_merge(["q"], ranks) == ["q"]


# ---- a toy vocabulary on disk -----------------------------------------------------------------

TOY_MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("a", "a")]


@pytest.fixture
def toy(tmp_path):
    write_files(tmp_path, TOY_MERGES)
    return GPT2Tokenizer.from_files(tmp_path)


def test_write_files_format(tmp_path):
    write_files(tmp_path, TOY_MERGES)
    assert (tmp_path / "vocab.bpe").read_text(encoding="utf-8") == "#version: 0.2\nĠ t\nh e\nĠt he\na a\n"
    encoder = json.loads((tmp_path / "encoder.json").read_text(encoding="utf-8"))
    assert len(encoder) == 256 + 4 + 1
    assert encoder["!"] == 0 and encoder["Ġt"] == 256 and encoder["aa"] == 259 and encoder[EOT_TOKEN] == 260
    assert read_merges(tmp_path / "vocab.bpe") == TOY_MERGES


def test_toy_encode_decode(toy):
    ids = toy.encode(" the aaa")
    # " the" -> "Ġthe" (258); " aaa" -> "Ġ", "aa", "a"
    assert ids == [258, toy.encoder["Ġ"], 259, toy.encoder["a"]]
    assert toy.decode(ids) == " the aaa"
    assert toy.n_vocab == 261 and toy.eot_token == 260


def test_pairs_merge_by_rule_and_whole_pieces_short_cut(tmp_path):
    """A hand-made vocabulary that no BPE training would produce: "abc" is made by (ab, c), but
    (b, c) is learned first, so from "xabc"'s bytes the merges reach x, a, bc and stop ((a, bc)
    is no merge rule). A piece that is itself a token is that token. (tiktoken, which ranks a pair
    by the token it would make, gives x, abc here: see docs/tokenizer.md.)"""
    write_files(tmp_path, [("b", "c"), ("a", "b"), ("ab", "c")])
    tok = GPT2Tokenizer.from_files(tmp_path)
    assert [tok.decode([i]) for i in tok.encode("xabc")] == ["x", "a", "bc"]
    assert tok.encode("abc") == [tok.encoder["abc"]] == [258]


def test_unseen_bytes_still_encode(toy):
    text = "\x00東🤖\x7f"
    ids = toy.encode(text)
    assert len(ids) == len(text.encode("utf-8"))  # no merges apply: one id per byte
    assert toy.decode(ids) == text


def test_piece_cache_is_bounded(tmp_path):
    write_files(tmp_path, TOY_MERGES)
    tok = GPT2Tokenizer(
        read_merges(tmp_path / "vocab.bpe"), json.loads((tmp_path / "encoder.json").read_text()), cache_size=8
    )
    text = " ".join(f"w{i}" for i in range(100))
    assert tok.decode(tok.encode(text)) == text
    assert 0 < len(tok._cache) <= 8


# ---- special tokens -------------------------------------------------------------------------


def test_special_token_allowed_disallowed_and_as_text(toy):
    text = f"a{EOT_TOKEN}b"
    assert toy.encode(text, allowed_special={EOT_TOKEN}) == [toy.encoder["a"], 260, toy.encoder["b"]]
    assert toy.encode(text, allowed_special="all") == [toy.encoder["a"], 260, toy.encoder["b"]]
    with pytest.raises(ValueError, match=r"special token '<\|endoftext\|>'.*disallowed"):
        toy.encode(text)
    as_text = toy.encode(text, disallowed_special=())
    assert 260 not in as_text and toy.decode(as_text) == text
    assert toy.encode_ordinary(text) == as_text


def test_unknown_allowed_special_is_an_error(toy):
    with pytest.raises(ValueError, match=re.escape("<|fim|>")):
        toy.encode("x", allowed_special={"<|fim|>"})


# ---- decoding ----------------------------------------------------------------------------------


def test_decode_partial_utf8_gives_replacement_characters(toy):
    ids = toy.encode("🤖")  # four bytes, four ids with no merges
    assert len(ids) == 4
    assert toy.decode(ids[:2]) == "\ufffd"
    assert toy.decode_bytes(ids[:2]) == "🤖".encode()[:2]
    with pytest.raises(UnicodeDecodeError):
        toy.decode(ids[:2], errors="strict")


def test_stream_decoder_holds_back_unfinished_characters(toy):
    text = "a🤖b東"
    ids = toy.encode(text)
    stream = StreamDecoder(toy)
    pieces = [stream.feed(t) for t in ids]
    assert pieces == ["a", "", "", "", "🤖", "b", "", "", "東"]
    assert stream.flush() == ""
    cut = StreamDecoder(toy)
    assert "".join(cut.feed(t) for t in ids[:3]) == "a"
    assert cut.flush() == "\ufffd"  # the stream ended inside a character


@pytest.mark.parametrize("bad", [-1, 261, 10**9])
def test_out_of_range_ids_are_named(toy, bad):
    with pytest.raises(ValueError, match=rf"token id {bad} at position 1 is out of range: ids are 0..260"):
        toy.decode([5, bad])
    with pytest.raises(ValueError, match=rf"token id {bad}"):
        toy.decode_single_token_bytes(bad)


# ---- malformed files ---------------------------------------------------------------------------


def test_missing_version_line(tmp_path):
    write_files(tmp_path, TOY_MERGES)
    (tmp_path / "vocab.bpe").write_text("Ġ t\n", encoding="utf-8")
    with pytest.raises(TokenizerFileError, match="#version"):
        GPT2Tokenizer.from_files(tmp_path)


def test_malformed_merge_line_is_named(tmp_path):
    write_files(tmp_path, TOY_MERGES)
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\nĠ t\nh e x\n", encoding="utf-8")
    with pytest.raises(TokenizerFileError, match=r"vocab.bpe:3: .*'h e x'"):
        GPT2Tokenizer.from_files(tmp_path)


def test_merge_without_encoder_entry_is_named(tmp_path):
    write_files(tmp_path, TOY_MERGES)
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\nĠ t\nx y\n", encoding="utf-8")
    with pytest.raises(TokenizerFileError, match=r"merge 1 \('x' 'y'\): 'xy' is not in encoder.json"):
        GPT2Tokenizer.from_files(tmp_path)


def test_missing_byte_token_is_named(tmp_path):
    write_files(tmp_path, TOY_MERGES)
    encoder = json.loads((tmp_path / "encoder.json").read_text(encoding="utf-8"))
    del encoder["Ċ"]
    with pytest.raises(TokenizerFileError, match=r"single-byte token 'Ċ' \(byte 10\)"):
        GPT2Tokenizer(TOY_MERGES, encoder)


def test_gap_in_ids_is_an_error():
    encoder = {tok: i for i, tok in enumerate(BASE_TOKENS)}
    encoder[EOT_TOKEN] = 300
    with pytest.raises(TokenizerFileError, match="without gaps"):
        GPT2Tokenizer([], encoder)


def test_write_files_rejects_a_token_made_twice(tmp_path):
    with pytest.raises(TokenizerFileError, match="already exists"):
        write_files(tmp_path, [("a", "b"), ("ab", "c"), ("b", "c"), ("a", "bc")])


def test_missing_files_folder_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.bpe"):
        GPT2Tokenizer.from_files(tmp_path)


# ---- GPT-2's own files -------------------------------------------------------------------------

needs_gpt2_files = pytest.mark.skipif(
    tokenizer_dir() is None, reason=f"GPT-2 tokenizer files absent: {WHERE_TOKENIZER}"
)


@pytest.fixture(scope="module")
def gpt2():
    return GPT2Tokenizer.from_files()


@needs_gpt2_files
def test_gpt2_file_sizes(gpt2):
    assert len(gpt2.merge_ranks) == 50_000
    assert gpt2.n_vocab == 50_257 and gpt2.eot_token == 50_256


@needs_gpt2_files
@pytest.mark.parametrize(
    "text, ids",
    [
        ("Hello world", [15496, 995]),
        (" the", [262]),
        ("\n\n", [628]),
        ("   x", [220, 220, 2124]),  # a space run gives its last space to the word after it
        ("I'm", [40, 1101]),
        ("<|endoftext|>", [50256]),
    ],
)
def test_gpt2_known_ids(gpt2, text, ids):
    assert gpt2.encode(text, allowed_special="all") == ids
    assert gpt2.decode(ids) == text
