"""GPT-2's byte-level BPE tokenizer, built from its two files, token-identical to tiktoken.

GPT-2 turns text into ids in four steps:

    text --(pre-tokenise: GPT_2_SPLIT_PATTERN)--> pieces ("Hello", " world", "!", "\\n\\n", ...)
    piece --(UTF-8)--> bytes --(BYTE_TO_UNICODE)--> a string of printable stand-in characters
    stand-ins --(apply the learned merges, lowest rank first)--> BPE tokens
    BPE tokens --(encoder.json)--> ids

and decoding runs it backwards: ids -> token strings -> bytes -> UTF-8 text. Pieces never
merge across each other, so each distinct piece is encoded once and cached: English text
is a few tens of thousands of distinct pieces however long it is.

The two files, as OpenAI published them (vocab.bpe, encoder.json):

    vocab.bpe      "#version: 0.2", then one merge per line, "first second", in rank order:
                   the line at rank r says "the pair (first, second) becomes first+second",
                   and a lower rank was learned earlier, so it is applied first.
    encoder.json   {token string: id}; ids 0..255 are the 256 single bytes, 256 + r is the
                   token made by merge r, and 50256 is the special token <|endoftext|>.

Token strings in both files are written in the stand-in alphabet of BYTE_TO_UNICODE: every
byte is one printable character, so a space is "Ġ" (U+0120) and a newline is "Ċ" (U+010A).

    tok = GPT2Tokenizer.from_files()                  # the files weights.paths finds
    ids = tok.encode("Hello world")                   # [15496, 995]
    tok.decode(ids)                                   # "Hello world"
    tok.encode("a<|endoftext|>b", allowed_special={"<|endoftext|>"})   # [64, 50256, 65]

The API follows tiktoken.Encoding (encode, encode_ordinary, decode, decode_bytes,
decode_single_token_bytes, n_vocab, eot_token), so either can stand in for the other.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Collection, Iterable, Set
from itertools import pairwise
from pathlib import Path
from typing import Literal

import regex  # the `re` module has no \p{L} / \p{N}; `regex` is the maintained library that does

EOT_TOKEN = "<|endoftext|>"

# GPT-2's pre-tokeniser, as in OpenAI's encoder.py. Alternatives are tried left to right:
#   's 't 're 've 'm 'll 'd      English contractions (ASCII apostrophe, lower case only)
#    ?\p{L}+                     a run of letters, with at most one leading space
#    ?\p{N}+                     a run of digits / numerals, with at most one leading space
#    ?[^\s\p{L}\p{N}]+           a run of punctuation / symbols, with at most one leading space
#   \s+(?!\S)                    whitespace, leaving its last character to the word after it
#   \s+                          any whitespace that is left
# The leading-space alternatives are why " world" is one token and why a run of spaces before a
# word gives up its last space: "a   b" -> "a", "  ", " b".
# tiktoken writes the same pattern with possessive quantifiers (\p{L}++), "\s++$" and a final
# "\s" instead of "\s+"; those are speed-ups that match the same pieces (the conformance suite
# checks that on all of Tiny Shakespeare and a fuzz corpus).
GPT_2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def bytes_to_unicode() -> dict[int, str]:
    """The byte -> stand-in character table of GPT-2's files (256 entries, a bijection).

    Bytes that are printable Latin-1 characters other than space stand for themselves:
    '!'..'~' (33..126), '¡'..'¬' (161..172) and '®'..'ÿ' (174..255), 188 bytes in all.
    The other 68 (control bytes, space, DEL, NBSP, soft hyphen, ...) are given the
    characters U+0100, U+0101, ... in increasing byte order, so that every byte is one
    visible character and BPE merges can be written as whitespace-separated text.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    next_free = 256
    for b in range(256):
        if b not in table:
            table[b] = chr(next_free)
            next_free += 1
    return table


BYTE_TO_UNICODE: dict[int, str] = bytes_to_unicode()
UNICODE_TO_BYTE: dict[str, int] = {c: b for b, c in BYTE_TO_UNICODE.items()}
# The order of the single-byte tokens in encoder.json (ids 0..255): the printable bytes first,
# then the remapped ones; the table above is built in exactly that order.
BASE_TOKENS: list[str] = list(BYTE_TO_UNICODE.values())


def token_to_bytes(token: str) -> bytes:
    """A token string in the stand-in alphabet -> the bytes it stands for ("Ġthe" -> b" the")."""
    return bytes(UNICODE_TO_BYTE[c] for c in token)


def bytes_to_token(data: bytes) -> str:
    """Bytes -> their token string in the stand-in alphabet (b" the" -> "Ġthe")."""
    return "".join(BYTE_TO_UNICODE[b] for b in data)


class TokenizerFileError(ValueError):
    """vocab.bpe / encoder.json are malformed or disagree with each other."""


def read_merges(path: str | Path) -> list[tuple[str, str]]:
    """vocab.bpe -> the merges in rank order, [(first, second), ...]."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").split("\n")
    if not lines or not lines[0].startswith("#version"):
        raise TokenizerFileError(f"{path}: first line should be '#version: ...', got {lines[0][:40]!r}")
    merges = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise TokenizerFileError(f"{path}:{lineno}: a merge is two tokens separated by one space, got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def read_encoder(path: str | Path) -> dict[str, int]:
    """encoder.json -> {token string: id}."""
    path = Path(path)
    encoder = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(encoder, dict) or not all(isinstance(v, int) for v in encoder.values()):
        raise TokenizerFileError(f"{path}: expected a JSON object of token string -> integer id")
    return encoder


def write_files(
    folder: str | Path, merges: list[tuple[str, str]], special_tokens: Iterable[str] = (EOT_TOKEN,)
) -> None:
    """Save merges as GPT-2's two files: folder/vocab.bpe and folder/encoder.json.

    The ids are implied by the merges: 0..255 the single bytes in BASE_TOKENS order, 256 + r
    the token of merge r, then the special tokens. vocab.bpe ends with a newline after its last
    merge, as GPT-2's does (tiktoken's reader relies on it).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    encoder = {tok: i for i, tok in enumerate(BASE_TOKENS)}
    for first, second in merges:
        if first + second in encoder:
            raise TokenizerFileError(f"merge {first!r} + {second!r} makes a token that already exists")
        encoder[first + second] = len(encoder)
    for special in special_tokens:
        encoder[special] = len(encoder)
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (folder / "vocab.bpe").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "encoder.json").write_text(json.dumps(encoder, ensure_ascii=False), encoding="utf-8")


_NOT_A_MERGE = float("inf")  # the rank of a pair that vocab.bpe does not list


def bpe_merge(symbols: list[str], merge_ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply the learned merges to one piece; returns its BPE tokens (as stand-in strings).

    symbols:      the piece as single stand-in characters, one per byte, e.g. ["Ġ", "t", "h", "e"]
    merge_ranks:  {(first, second): rank} from vocab.bpe

    Repeat: among all adjacent pairs, take the one with the lowest rank (the merge learned
    earliest); join every occurrence of it, left to right; stop when no adjacent pair is a merge.
        ["Ġ","t","h","e"] -> (Ġ,t) -> ["Ġt","h","e"] -> (h,e) -> ["Ġt","he"] -> (Ġt,he) -> ["Ġthe"]
    """
    while len(symbols) > 1:
        best = min(pairwise(symbols), key=lambda pair: merge_ranks.get(pair, _NOT_A_MERGE))
        if best not in merge_ranks:
            break
        symbols = merge_pair(symbols, best)
    return symbols


def merge_pair(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """Join every non-overlapping occurrence of `pair`, scanning left to right.

    merge_pair(["a","a","a"], ("a","a")) -> ["aa","a"]
    """
    first, second = pair
    merged, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
            merged.append(first + second)
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


class GPT2Tokenizer:
    """Byte-level BPE with GPT-2's pre-tokeniser and special tokens; tiktoken.Encoding's API."""

    def __init__(
        self,
        merges: list[tuple[str, str]],
        encoder: dict[str, int],
        special_tokens: Collection[str] = (EOT_TOKEN,),
        pattern: str = GPT_2_SPLIT_PATTERN,
        cache_size: int = 1 << 18,
    ):
        """merges: vocab.bpe's pairs in rank order; encoder: encoder.json's {token: id}.

        special_tokens are the entries of `encoder` that are not byte sequences but markers
        (GPT-2 has one, <|endoftext|>); they are matched in the text only when allowed.
        """
        self.merge_ranks = {pair: rank for rank, pair in enumerate(merges)}
        if len(self.merge_ranks) != len(merges):
            raise TokenizerFileError("vocab.bpe lists the same merge twice")
        self.special_tokens = {tok: encoder[tok] for tok in special_tokens if tok in encoder}
        missing_special = set(special_tokens) - set(self.special_tokens)
        if missing_special:
            raise TokenizerFileError(f"special tokens {sorted(missing_special)} have no id in encoder.json")
        self.encoder = {tok: i for tok, i in encoder.items() if tok not in self.special_tokens}
        self._check_consistent(merges)
        self.decoder_bytes: dict[int, bytes] = {i: token_to_bytes(tok) for tok, i in self.encoder.items()}
        self.decoder_bytes.update({i: tok.encode("utf-8") for tok, i in self.special_tokens.items()})
        self.n_vocab = max(self.decoder_bytes) + 1
        if len(self.decoder_bytes) != self.n_vocab:
            raise TokenizerFileError(f"ids are not 0..{self.n_vocab - 1} without gaps or repeats")
        self.pattern = regex.compile(pattern)
        self._special_pattern = (
            regex.compile("|".join(regex.escape(t) for t in sorted(self.special_tokens, key=len, reverse=True)))
            if self.special_tokens
            else None
        )
        # piece -> its ids. Bounded so that adversarial text (millions of distinct pieces) cannot
        # grow it without limit: when full it is simply emptied and refilled.
        self._cache: dict[str, tuple[int, ...]] = {}
        self.cache_size = cache_size

    def _check_consistent(self, merges: list[tuple[str, str]]) -> None:
        for byte, tok in BYTE_TO_UNICODE.items():
            if tok not in self.encoder:
                raise TokenizerFileError(f"encoder.json lacks the single-byte token {tok!r} (byte {byte})")
        for rank, (first, second) in enumerate(merges):
            for part in (first, second, first + second):
                if part not in self.encoder:
                    raise TokenizerFileError(f"merge {rank} ({first!r} {second!r}): {part!r} is not in encoder.json")
        unknown = [c for tok in self.encoder for c in tok if c not in UNICODE_TO_BYTE]
        if unknown:
            raise TokenizerFileError(f"encoder.json token uses {unknown[0]!r}, not a byte stand-in character")

    @classmethod
    def from_files(cls, folder: str | Path | None = None) -> GPT2Tokenizer:
        """Load vocab.bpe + encoder.json from `folder` (default: weights.paths.tokenizer_dir())."""
        if folder is None:
            from weights.paths import WHERE_TOKENIZER, tokenizer_dir

            folder = tokenizer_dir()
            if folder is None:
                raise FileNotFoundError(f"GPT-2 tokenizer files not found: {WHERE_TOKENIZER}")
        folder = Path(folder)
        return cls(read_merges(folder / "vocab.bpe"), read_encoder(folder / "encoder.json"))

    # ---- encoding ----------------------------------------------------------------------------

    @property
    def eot_token(self) -> int:
        return self.special_tokens[EOT_TOKEN]

    @property
    def special_tokens_set(self) -> set[str]:
        return set(self.special_tokens)

    def encode_bytes(self, data: bytes) -> list[int]:
        """BPE on raw bytes, with no pre-tokenisation: the bytes are treated as one piece."""
        symbols = [BYTE_TO_UNICODE[b] for b in data]
        whole = self.encoder.get("".join(symbols))
        if whole is not None:
            # The piece is itself a token (" the", "Hello"): most pieces are. tiktoken takes the
            # same shortcut; for vocabularies learned by BPE (GPT-2's, bpe_train's) the merges
            # arrive at that token anyway (the conformance suite checks all 50,256 of GPT-2's).
            return [whole]
        return [self.encoder[tok] for tok in bpe_merge(symbols, self.merge_ranks)]

    def encode_piece(self, piece: str) -> tuple[int, ...]:
        """One pre-tokenised piece -> its ids (cached: a piece always encodes the same way)."""
        ids = self._cache.get(piece)
        if ids is None:
            ids = tuple(self.encode_bytes(piece.encode("utf-8")))
            if len(self._cache) >= self.cache_size:
                self._cache.clear()
            self._cache[piece] = ids
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Text -> ids, reading special-token strings as plain text."""
        text = _replace_surrogates(text)
        ids: list[int] = []
        for piece in self.pattern.findall(text):
            ids.extend(self.encode_piece(piece))
        return ids

    def encode(
        self,
        text: str,
        *,
        allowed_special: Literal["all"] | Set[str] = frozenset(),
        disallowed_special: Literal["all"] | Collection[str] = "all",
    ) -> list[int]:
        """Text -> ids, with tiktoken's rules for special tokens.

        allowed_special:     special tokens that become their own id where they appear ("all" = every one)
        disallowed_special:  special tokens whose appearance raises ValueError ("all" = every one not
                             allowed); pass () to encode them as ordinary text instead.
        """
        if allowed_special == "all":
            allowed_special = self.special_tokens_set
        unknown = set(allowed_special) - self.special_tokens_set
        if unknown:
            raise ValueError(f"allowed_special names tokens this tokenizer does not have: {sorted(unknown)}")
        if disallowed_special == "all":
            disallowed_special = self.special_tokens_set - set(allowed_special)
        for special in disallowed_special:
            if special in text:
                raise ValueError(
                    f"text contains the special token {special!r}, which is disallowed: pass "
                    f"allowed_special={{{special!r}}} to encode it as id {self.special_tokens.get(special)}, "
                    f"or disallowed_special=() to encode it as plain text"
                )
        if not allowed_special:
            return self.encode_ordinary(text)
        # Split at the allowed special tokens; the text between them is encoded on its own
        # (a piece never reaches across a special token).
        text = _replace_surrogates(text)
        ids: list[int] = []
        start = 0
        for match in self._special_pattern.finditer(text):
            if match.group() not in allowed_special:
                continue
            ids.extend(self.encode_ordinary(text[start : match.start()]))
            ids.append(self.special_tokens[match.group()])
            start = match.end()
        ids.extend(self.encode_ordinary(text[start:]))
        return ids

    # ---- decoding ----------------------------------------------------------------------------

    def decode_single_token_bytes(self, token: int) -> bytes:
        self._check_ids([token])
        return self.decoder_bytes[int(token)]

    def decode_bytes(self, tokens: Iterable[int]) -> bytes:
        """ids -> the bytes they stand for (may end, or even begin, mid-way through a character)."""
        tokens = [int(t) for t in tokens]
        self._check_ids(tokens)
        return b"".join(self.decoder_bytes[t] for t in tokens)

    def decode(self, tokens: Iterable[int], errors: str = "replace") -> str:
        """ids -> text. Bytes that are not valid UTF-8 (a character cut between tokens) become
        U+FFFD with errors="replace", as in tiktoken; errors="strict" raises instead."""
        return self.decode_bytes(tokens).decode("utf-8", errors=errors)

    def _check_ids(self, tokens: list[int]) -> None:
        for position, t in enumerate(tokens):
            if not 0 <= t < self.n_vocab:
                raise ValueError(f"token id {t} at position {position} is out of range: ids are 0..{self.n_vocab - 1}")


class StreamDecoder:
    """Decode ids as they arrive (e.g. from generate), never printing half a character.

    A multi-byte UTF-8 character can be split across tokens (most emoji and CJK characters
    are two or three GPT-2 tokens). `feed` returns only the text that is complete so far and
    holds back the bytes of an unfinished character until the next token completes it;
    `flush` ends the stream, turning any bytes still held into U+FFFD.

        stream = StreamDecoder(tok)
        "".join(stream.feed(t) for t in ids) + stream.flush() == tok.decode(ids)
    """

    def __init__(self, tokenizer: GPT2Tokenizer):
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token: int) -> str:
        return self._utf8.decode(self.tokenizer.decode_single_token_bytes(token))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


def _replace_surrogates(text: str) -> str:
    """Lone surrogates (U+D800..U+DFFF) cannot be UTF-8 encoded; like tiktoken, turn a valid
    surrogate pair into its character and anything else into U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
