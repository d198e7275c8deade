"""Where the data that lives outside the repository is found.

The project reads GPT-2's tokenizer files and the Tiny Shakespeare corpus from a
``shared`` folder beside the project root (``../shared``), or from the folders named by
environment variables:

    GPT2_SHARED_DIR      the whole shared folder (holds gpt2-tokenizer/ and data/)
    GPT2_TOKENIZER_DIR   a folder holding vocab.bpe and encoder.json
    GPT2_DATA_DIR        a folder holding tinyshakespeare.txt

Each function returns None when the thing is absent; callers (and tests) decide whether
that is an error or a skip, and say which file was looked for.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path | None:
    env = os.environ.get("GPT2_SHARED_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(PROJECT_ROOT.parent / "shared")
    for c in candidates:
        if c.is_dir():
            return c
    return None


def tokenizer_dir() -> Path | None:
    env = os.environ.get("GPT2_TOKENIZER_DIR")
    if env:
        return Path(env) if (Path(env) / "vocab.bpe").is_file() else None
    shared = shared_dir()
    if shared and (shared / "gpt2-tokenizer" / "vocab.bpe").is_file():
        return shared / "gpt2-tokenizer"
    return None


def tinyshakespeare_path() -> Path | None:
    env = os.environ.get("GPT2_DATA_DIR")
    if env:
        p = Path(env) / "tinyshakespeare.txt"
        return p if p.is_file() else None
    shared = shared_dir()
    if shared and (shared / "data" / "tinyshakespeare.txt").is_file():
        return shared / "data" / "tinyshakespeare.txt"
    return None


WHERE_TOKENIZER = (
    "set GPT2_TOKENIZER_DIR to a folder with vocab.bpe + encoder.json, or place them in ../shared/gpt2-tokenizer/"
)
WHERE_TINYSHAKESPEARE = "set GPT2_DATA_DIR to a folder with tinyshakespeare.txt, or place it in ../shared/data/"
