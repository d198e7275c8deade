"""`python -m conformance <command> ...`: the conformance kit for any GPT-2 implementation.

    python -m conformance export  [...]                 golden files from the float64 reference (golden.py)
    python -m conformance check GOLDEN CANDIDATE [...]  score a candidate file against a golden one (check.py)
    python -m conformance inspect [...]                 a look inside one forward pass (look.py)
    python -m conformance llmc  [...]                   llm.c's checkpoint and debug-state files, both ways (llmc.py)

Each command is one module with a `main(argv)`; `python -m conformance <command> --help` says more.
The suite itself stays `python -m conformance.report` (every case on every backend of this project).
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "export": ("conformance.golden", "golden files from the float64 reference"),
    "check": ("conformance.check", "score a candidate's tensors against a golden file"),
    "inspect": ("conformance.look", "per-layer statistics, attention maps, logit lens, divergence"),
    "llmc": ("conformance.llmc", "llm.c's gpt2_124M.bin and debug-state files, both ways"),
}


def usage() -> str:
    lines = ["usage: python -m conformance <command> [args]", "", "commands:"]
    lines += [f"  {name:<8} {what}" for name, (_, what) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
