"""User errors: one line on stderr and exit status 2; tracebacks are for bugs.

Every command of the project (compare, conformance.report, torch_impl.train, torch_impl.data,
benchmarks.report, scripts/train_throughput.py) runs its body through `run_cli`:

    def main(argv=None) -> int:
        return run_cli(_main, argv)

    error: model.safetensors: tensor 'ln_f.bias' has shape (3,), expected (768,)     (stderr, exit 2)

A *user error* is a bad input the user can fix: a flag value, a missing or corrupt file, a
checkpoint that is not a GPT-2, a machine without the CUDA the flags ask for. Each of those is
raised as one of the exception types in `USER_ERRORS` with a message that names the flag, file or
tensor. Anything else is a bug in this project and keeps its traceback. `--debug` shows the
traceback of a user error too.

`ArgumentParser` is argparse's with the same one-line form for bad flags (argparse prints a usage
block and `prog: error: ...`), and a `--debug` flag.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from weights.checkpoint import CheckpointError
from weights.config import ConfigError
from weights.hub import HubError
from weights.tokenizer import TokenizerError

EXIT_USER_ERROR = 2


class UsageError(ValueError):
    """A flag or argument value that cannot work; the message names the flag."""


class UserError(ValueError):
    """Any other input the user can fix (a file, a shard, the machine); the message names it."""


class DataError(UserError):
    """Training or evaluation data that cannot be used (a shard, a text, JSONL or Parquet input, an eval
    file); the message names the file and, where there is one, the line or row."""


# Exception types whose message is the whole story for the user. OSError covers a missing file, a
# folder where a file was expected, no permission, a full disk: its message names the path.
USER_ERRORS: tuple[type[BaseException], ...] = (
    UsageError,
    UserError,
    CheckpointError,
    ConfigError,
    HubError,
    TokenizerError,
    OSError,
)


def one_line(e: BaseException) -> str:
    """`error: <message>` with the message folded onto one line (`<file>: <reason>` for an OSError)."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        text = f"{e.filename}: {e.strerror}" + (f" -> {e.filename2}" if e.filename2 is not None else "")
    else:
        text = str(e)
    return "error: " + (" ".join(text.split()) or type(e).__name__)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with bad flags reported as one line (`error: ...`, exit 2) and a `--debug` flag."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", help="show the full traceback of an error")

    def error(self, message: str):  # argparse calls this for unknown flags, bad values, missing arguments
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)


def run_cli(
    body: Callable[[list[str]], int | None],
    argv: Sequence[str] | None = None,
    extra: tuple[type[BaseException], ...] = (),
) -> int:
    """Run `body(argv)`; a user error (USER_ERRORS + `extra`) becomes one line and exit status 2.

    body   the command, taking its argument list and returning its exit status (None: 0)
    extra  the command's own user-error types (DataError is a UserError already)
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:  # the user asked for tracebacks: let everything through
        return body(argv) or 0
    try:
        return body(argv) or 0
    except USER_ERRORS + tuple(extra) as e:
        print(one_line(e), file=sys.stderr)
        return EXIT_USER_ERROR
