"""Multiple choice in HellaSwag's format: which ending does the model find most likely after the context?

    python -m torch_impl.eval_hellaswag --weights runs/124m/step_0019000 --data hellaswag_val.jsonl
    python -m torch_impl.eval_hellaswag --weights gpt2 --data hellaswag_val.jsonl --out hellaswag.json

The file (rowanz/hellaswag's data/hellaswag_{train,val}.jsonl; the test split has no labels): one
JSON object per line, of which this reads

    ctx        the context; without it, ctx_a and ctx_b: ctx = ctx_a + " " + ctx_b (just ctx_a when
               ctx_b is empty), which is how HellaSwag's ctx is made
    endings    the candidate endings, a list of strings (4 in HellaSwag)
    label      the index of the right ending: an int, or a string of digits (the Hugging Face copy's)

and ignores the rest (ind, activity_label, split, split_type, source_id). Blank lines are skipped;
a line that is not a JSON object or lacks a field is an error naming the file and the line.

Scoring ("completion style", as llm.c's dev/data/hellaswag.py scores it): every candidate is one token
row, context then ending,

    row_i = encode(ctx) + encode(" " + endings[i])        (GPT-2's tokenizer, encode_ordinary)

and the model's cross-entropy is taken at the positions that predict an ending token (position t
predicts row[t + 1]; the context's own tokens are not scored):

    mean_i  = mean of those losses      accuracy             = share of examples with argmin_i mean_i == label
    total_i = sum of those losses       accuracy_total_loss  = share with argmin_i total_i == label

`accuracy`, the mean loss per ending token, does not favour short endings; it is llm.c's "acc_norm"
(llm.c reports 0.2955 for GPT-2 124M on the 10,042 val examples, 0.2859 for the summed loss; not
measured here). EleutherAI's harness normalises by characters instead, so its numbers differ. A row
longer than the model's n_ctx loses context tokens from the left (the ending is always whole).
Every model evaluates in float32 on CPU; on CUDA under bf16 autocast unless --dtype fp32.
"""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from torch_impl.devices import choose_device, wants_bf16
from torch_impl.documents import iter_jsonl
from weights.errors import ArgumentParser, DataError, UsageError, UserError, run_cli


@dataclass
class Example:
    line: int  # 1-based line of the file
    context: str
    endings: list[str]
    label: int


def read_examples(path: str | Path, limit: int = 0) -> list[Example]:
    """The examples of a HellaSwag-format JSONL file (the first `limit`, 0: all), checked as they are read."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (--data: a HellaSwag .jsonl file)")
    examples = []
    for line, obj, _ in iter_jsonl(path):
        where = f"{path}: line {line}"
        if isinstance(obj.get("ctx"), str):
            context = obj["ctx"]
        elif isinstance(obj.get("ctx_a"), str) and isinstance(obj.get("ctx_b", ""), str):
            context = obj["ctx_a"] + (" " + obj["ctx_b"] if obj.get("ctx_b") else "")
        else:
            raise DataError(f"{where}: no string 'ctx' (or 'ctx_a' and 'ctx_b') field")
        if not context:
            raise DataError(f"{where}: the context is empty; nothing to condition the endings on")
        endings = obj.get("endings")
        if not (isinstance(endings, list) and len(endings) >= 2 and all(isinstance(e, str) for e in endings)):
            raise DataError(f"{where}: 'endings' must be a list of at least 2 strings, got {json.dumps(endings)[:60]}")
        if "label" not in obj:
            raise DataError(f"{where}: no 'label' field (HellaSwag's test split has no labels: use train or val)")
        label = obj["label"]
        if isinstance(label, str) and label.isdigit():
            label = int(label)
        if not (isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(endings)):
            raise DataError(
                f"{where}: 'label' {json.dumps(obj['label'])} is not an index into its {len(endings)} endings"
            )
        examples.append(Example(line, context, endings, label))
        if limit and len(examples) == limit:
            break
    if not examples:
        raise DataError(f"{path}: no examples (expected one JSON object per line)")
    return examples


def render(example: Example, tokenizer) -> tuple[list[int], list[list[int]]]:
    """(context ids, [ending ids, ...]): encode_ordinary(ctx) and encode_ordinary(" " + ending)."""
    return tokenizer.encode_ordinary(example.context), [tokenizer.encode_ordinary(" " + e) for e in example.endings]


@torch.no_grad()
def ending_losses(model, context: list[int], endings: list[list[int]], autocast=None) -> tuple[np.ndarray, np.ndarray]:
    """(mean, total) cross-entropy of each ending's tokens given the context: float64 arrays (n_endings,).

    One forward pass over the rows context + ending_i (n_endings, L), right-padded with token 0: a causal
    model's loss at a position never sees the positions after it, so the padding changes nothing.
    A row longer than n_ctx keeps its last n_ctx tokens (context cut from the left)."""
    n_ctx = model.config.n_ctx
    rows, starts = [], []
    for i, ending in enumerate(endings):
        if len(ending) >= n_ctx:
            raise ValueError(f"ending {i} is {len(ending)} tokens, and the model's n_ctx {n_ctx} leaves no context")
        row = (context + ending)[-n_ctx:]
        rows.append(row)
        starts.append(len(row) - len(ending))  # row[starts:] is the ending; position starts-1 predicts its first
    L = max(len(r) for r in rows)
    device = next(model.parameters()).device
    idx = torch.zeros((len(rows), L), dtype=torch.long)
    mask = torch.zeros((len(rows), L - 1), dtype=torch.bool)  # mask[i, t]: position t predicts an ending token
    for i, (row, start) in enumerate(zip(rows, starts, strict=True)):
        idx[i, : len(row)] = torch.tensor(row)
        mask[i, start - 1 : len(row) - 1] = True
    with autocast or contextlib.nullcontext():
        logits, _ = model(idx.to(device))  # (n, L, V)
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    nll = -logp.gather(-1, idx[:, 1:, None].to(device))[..., 0].cpu().double()  # (n, L-1)
    total = (nll * mask).sum(dim=1)
    return (total / mask.sum(dim=1)).numpy(), total.numpy()


def evaluate_file(
    model, path, tokenizer, limit: int = 0, progress: bool = False, autocast=None, examples: list | None = None
) -> dict:
    """Accuracy of `model` on the HellaSwag-format file (see the module docstring): a dict with examples,
    correct, accuracy, correct_total_loss, accuracy_total_loss, chance (the mean of 1 / endings).
    examples: read_examples(path, limit) when the caller has read them already (the file is read once)."""
    if examples is None:
        examples = read_examples(path, limit)
    vocab = model.config.vocab_size
    bar = None
    if progress:
        with contextlib.suppress(ImportError):
            from tqdm import tqdm

            bar = tqdm(total=len(examples), desc="hellaswag", unit="ex", file=sys.stderr)
    correct = correct_total = 0
    try:
        for n, ex in enumerate(examples, 1):
            context, endings = render(ex, tokenizer)
            top = max(max(context), *(max(e) for e in endings))
            if top >= vocab:
                raise DataError(f"{path}: line {ex.line}: token id {top} is outside the model's vocabulary of {vocab}")
            try:
                mean, total = ending_losses(model, context, endings, autocast)
            except ValueError as e:
                raise DataError(f"{path}: line {ex.line}: {e}") from None
            correct += int(np.argmin(mean) == ex.label)
            correct_total += int(np.argmin(total) == ex.label)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(accuracy=f"{correct / n:.4f}")
    finally:
        if bar is not None:
            bar.close()
    n = len(examples)
    return {
        "data": str(path),
        "examples": n,
        "correct": correct,
        "accuracy": correct / n,
        "correct_total_loss": correct_total,
        "accuracy_total_loss": correct_total / n,
        "chance": float(np.mean([1 / len(ex.endings) for ex in examples])),
    }


# ----------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    """The command line; bad flags or files are one line (`error: ...`) and exit status 2."""
    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    ap = ArgumentParser(
        prog="python -m torch_impl.eval_hellaswag",
        description="HellaSwag-style multiple choice: the accuracy of a checkpoint (the ending of least mean loss).",
    )
    ap.add_argument("--weights", required=True, help="any checkpoint weights.load takes: a folder, a file, 'gpt2'")
    ap.add_argument("--sha256", default=None, help="the --weights file's expected SHA-256")
    ap.add_argument("--data", required=True, help="a HellaSwag .jsonl file (ctx or ctx_a/ctx_b, endings, label)")
    ap.add_argument("--limit", type=int, default=0, help="evaluate the first N examples only (0: all)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: CUDA if available")
    ap.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"), help="auto: bf16 on CUDA, else fp32")
    ap.add_argument("--out", default=None, help="also write the result as JSON to this file")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    if args.limit < 0:
        raise UsageError(f"--limit {args.limit}: must be >= 0 (0: all)")
    device = choose_device(args.device)
    bf16 = wants_bf16(args.dtype, device)
    if bf16 and device.type != "cuda":
        raise UsageError("--dtype bf16 needs --device cuda (on CPU this command evaluates in float32)")
    examples_path = Path(args.data)
    examples = read_examples(examples_path, args.limit)  # a bad file is named before the model is loaded

    import weights
    from torch_impl.model import GPT2
    from weights.tokenizer import get_tokenizer

    params, config = weights.load(args.weights, sha256=args.sha256)
    tokenizer = get_tokenizer()
    if config.vocab_size < tokenizer.n_vocab:
        raise UserError(
            f"--weights {args.weights}: a vocabulary of {config.vocab_size} ids; HellaSwag is tokenised with GPT-2's "
            f"{tokenizer.n_vocab}"
        )
    model = GPT2.from_params(params, config, device=device).eval()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else None
    result = evaluate_file(model, examples_path, tokenizer, args.limit, not args.no_progress, autocast, examples)
    result.update(weights=str(args.weights), dtype="bf16" if bf16 else "fp32", device=str(device))
    print(
        f"hellaswag: {result['examples']:,} examples of {args.data}: accuracy {result['accuracy']:.4f} "
        f"(mean loss per ending token), {result['accuracy_total_loss']:.4f} (total loss); chance {result['chance']:.4f}"
    )
    if args.out:
        from weights import atomic_write
        from weights.provenance import provenance

        text = json.dumps({**result, "provenance": provenance()}, indent=1) + "\n"
        atomic_write(Path(args.out), lambda tmp: Path(tmp).write_text(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
