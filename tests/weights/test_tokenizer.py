"""weights.tokenizer: the offline GPT-2 encoding is tiktoken's gpt2 encoding exactly."""

from __future__ import annotations

import pytest

from weights.paths import WHERE_TOKENIZER, tokenizer_dir

pytestmark = pytest.mark.skipif(tokenizer_dir() is None, reason=f"GPT-2 tokenizer files absent: {WHERE_TOKENIZER}")


@pytest.fixture(scope="module")
def enc():
    from weights.tokenizer import get_tokenizer

    return get_tokenizer()


def test_known_ids(enc):
    assert enc.encode("Hello world") == [15496, 995]
    assert enc.encode(" the") == [262]
    assert enc.n_vocab == 50257
    assert enc.eot_token == 50256


def test_endoftext_round_trip(enc):
    text = "First doc.<|endoftext|>Second doc."
    ids = enc.encode(text, allowed_special={"<|endoftext|>"})
    assert 50256 in ids
    assert enc.decode(ids) == text
    with pytest.raises(ValueError):  # disallowed by default, as in tiktoken
        enc.encode(text)


@pytest.mark.parametrize(
    "text", ["", "  leading spaces", "naïve café 東京 🤖", "it's 1234567 o'clock\n\n\tend", "a" * 500]
)
def test_round_trip(enc, text):
    assert enc.decode(enc.encode(text)) == text


def test_hash_check_rejects_tampered_files(tmp_path):
    from weights.tokenizer import TokenizerError, _from_files

    src = tokenizer_dir()
    (tmp_path / "encoder.json").write_bytes((src / "encoder.json").read_bytes())
    (tmp_path / "vocab.bpe").write_bytes((src / "vocab.bpe").read_bytes() + b"x y\n")
    with pytest.raises(TokenizerError, match="fail their hash check"):
        _from_files(tmp_path)
