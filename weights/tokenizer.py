"""GPT-2's byte-level BPE tokenizer, through tiktoken.

`get_tokenizer()` returns a ``tiktoken.Encoding`` identical to ``tiktoken.get_encoding("gpt2")``.
It is built offline from GPT-2's two files when they are found locally (see weights.paths),
hash-checked against the hashes tiktoken itself pins; otherwise tiktoken fetches them.

    vocab.bpe      50,000 merges, in rank order
    encoder.json   token string -> id, 50,257 entries (the last is <|endoftext|> = 50256)
"""

from __future__ import annotations

import functools
from pathlib import Path

from weights.paths import WHERE_TOKENIZER, tokenizer_dir

EOT_TOKEN = "<|endoftext|>"
EOT_ID = 50256
N_VOCAB = 50257

VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


class TokenizerError(RuntimeError):
    pass


def _from_files(folder: Path):
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str  # GPT-2's pre-tokenisation regex

    try:
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(folder / "vocab.bpe"),
            encoder_json_file=str(folder / "encoder.json"),
            vocab_bpe_hash=VOCAB_BPE_SHA256,
            encoder_json_hash=ENCODER_JSON_SHA256,
        )
    except ValueError as e:
        raise TokenizerError(f"{folder}: GPT-2 tokenizer files fail their hash check ({e})") from None
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={EOT_TOKEN: EOT_ID},
        explicit_n_vocab=N_VOCAB,
    )


@functools.cache
def get_tokenizer(folder: str | None = None):
    """The GPT-2 encoding: from `folder`, else from the local files, else from tiktoken's download."""
    local = Path(folder) if folder else tokenizer_dir()
    if local is not None:
        return _from_files(local)
    import tiktoken

    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:
        raise TokenizerError(
            f"GPT-2 tokenizer files not found locally and not downloadable ({e}); {WHERE_TOKENIZER}"
        ) from None
