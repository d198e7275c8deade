"""The HellaSwag-format multiple-choice eval: the scoring checked by hand, the format, a trained model.

Scoring by hand: for a synthetic tiny GPT-2 and token ids written in the test, the NumPy reference
(float64) gives the logits of each row context + ending on its own (no padding, no batch); the mean
and the sum of -log softmax at the positions that predict the ending's tokens are computed here and
compared with ending_losses (float32 torch, rows batched and padded) at 1e-5 relative: the float32
ceiling of a loss in conformance/tolerances.py is 1e-5 too, and a wrong position (off by one) or a
padding leak moves these numbers by far more (whole nats).
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

import weights
from torch_impl import eval_hellaswag
from torch_impl.eval_hellaswag import Example, ending_losses, evaluate_file, main, read_examples, render
from torch_impl.model import GPT2
from weights.errors import DataError
from weights.paths import WHERE_TOKENIZER, tokenizer_dir

needs_tokenizer = pytest.mark.skipif(tokenizer_dir() is None, reason=f"GPT-2 tokenizer files absent: {WHERE_TOKENIZER}")


def _by_hand(params, config, context, ending):
    """(mean, total) loss of the ending's tokens after the context, from the float64 reference, for one row."""
    import reference

    row = (context + ending)[-config.n_ctx :]
    start = len(row) - len(ending)
    logits, _ = reference.forward({k: v.astype(np.float64) for k, v in params.items()}, config, np.array([row]))
    z = logits[0] - logits[0].max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    losses = [-logp[t, row[t + 1]] for t in range(start - 1, len(row) - 1)]
    return float(np.mean(losses)), float(np.sum(losses))


class Chars:
    """A stand-in tokenizer for the tiny model's 64 ids: one id per character (code point mod 64)."""

    n_vocab = 64

    def encode_ordinary(self, text):
        return [ord(c) % 64 for c in text]


def test_one_example_scored_by_hand():
    config = weights.GPT2Config.tiny()  # V=64, n_ctx=16
    params = weights.synthetic(config, seed=3)
    model = GPT2.from_params(params, config).eval()
    context = [5, 17, 33, 2]
    endings = [[9], [40, 41, 42], [7, 7, 7, 7, 7, 7], [63, 0]]  # lengths differ: rows are padded
    mean, total = ending_losses(model, context, endings)
    for i, ending in enumerate(endings):
        want_mean, want_total = _by_hand(params, config, context, ending)
        assert mean[i] == pytest.approx(want_mean, rel=1e-5), i
        assert total[i] == pytest.approx(want_total, rel=1e-5), i
    # a context longer than n_ctx = 16 loses its first tokens; the ending stays whole
    long_context = list(range(1, 21))
    mean, total = ending_losses(model, long_context, endings)
    for i, ending in enumerate(endings):
        assert mean[i] == pytest.approx(_by_hand(params, config, long_context, ending)[0], rel=1e-5), i
    with pytest.raises(ValueError, match="ending 0 is 16 tokens"):
        ending_losses(model, context, [[1] * 16, [2]])


def test_accuracy_is_the_share_of_argmin_mean_loss_at_the_label(tmp_path):
    """Each label is the ending of least mean loss by the hand computation: accuracy 1. The summed loss
    favours the short endings (about ln 64 nats per token for this untrained model), so its choice
    differs in some examples: accuracy_total_loss is the hand-counted share where the two agree."""
    config = weights.GPT2Config.tiny()
    params = weights.synthetic(config, seed=3)
    model = GPT2.from_params(params, config).eval()
    tok = Chars()
    rows, agree = [], 0
    for k in range(12):
        ex = Example(0, f"ctx{k}", [f"a{k}", "bb" * (k % 3 + 1), "c", f"d{k}d"], label=0)
        context, endings = render(ex, tok)
        scores = [_by_hand(params, config, context, e) for e in endings]
        by_mean, by_total = np.argmin([m for m, _ in scores]), np.argmin([t for _, t in scores])
        agree += int(by_mean == by_total)
        rows.append({"ctx": ex.context, "endings": ex.endings, "label": int(by_mean)})
    assert agree < 12  # the two rules differ somewhere, so the test tells them apart
    path = tmp_path / "mc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = evaluate_file(model, path, tok)
    assert (result["examples"], result["correct"], result["correct_total_loss"]) == (12, 12, agree)
    assert result["accuracy"] == 1.0 and result["accuracy_total_loss"] == agree / 12 and result["chance"] == 0.25
    assert evaluate_file(model, path, tok, limit=5)["examples"] == 5


@needs_tokenizer
def test_rendering_follows_the_hellaswag_format(tmp_path):
    """ctx when present, else ctx_a + " " + ctx_b; each ending encoded with a leading space; label "3" read as 3."""
    from weights.tokenizer import get_tokenizer

    enc = get_tokenizer()
    endings = ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.", "is holding a cube.", "x"]
    path = tmp_path / "hs.jsonl"
    lines = [
        {"ind": 24, "ctx_a": "A man is sitting on a roof.", "ctx_b": "he", "endings": endings, "label": "3"},
        {"ctx": "Full context.", "ctx_a": "ignored", "ctx_b": "too", "endings": endings, "label": 0},
        {"ctx_a": "No second part.", "ctx_b": "", "endings": endings, "label": 1},
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    first, second, third = read_examples(path)
    assert (first.context, first.label) == ("A man is sitting on a roof. he", 3)
    assert (second.context, third.context) == ("Full context.", "No second part.")
    context, ids = render(first, enc)
    assert context == enc.encode_ordinary("A man is sitting on a roof. he")
    assert ids == [enc.encode_ordinary(" " + e) for e in endings]
    assert ids[0][0] == enc.encode_ordinary(" is")[0]  # " is", one token with its space


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"endings": ["a", "b"], "label": 0}', r"line 2: no string 'ctx' \(or 'ctx_a' and 'ctx_b'\) field"),
        ('{"ctx": "c", "endings": ["a"], "label": 0}', r"line 2: 'endings' must be a list of at least 2 strings"),
        ('{"ctx": "c", "endings": ["a", 3], "label": 0}', r"line 2: 'endings' must be a list of at least 2 strings"),
        ('{"ctx": "c", "endings": ["a", "b"]}', r"line 2: no 'label' field \(HellaSwag's test split has no labels"),
        ('{"ctx": "c", "endings": ["a", "b"], "label": 2}', r"line 2: 'label' 2 is not an index into its 2 endings"),
        ('{"ctx": "c", "endings": ["a", "b"], "label": true}', r"line 2: 'label' true is not an index"),
        ('{"ctx": "c", "endings": ["a", "b"], "label": 0', r"line 2: not JSON"),
    ],
    ids=["no-ctx", "one-ending", "non-string-ending", "no-label", "label-range", "label-bool", "malformed"],
)
def test_bad_examples_are_named_by_line(tmp_path, line, message):
    path = tmp_path / "hs.jsonl"
    path.write_text('{"ctx": "fine", "endings": ["a", "b"], "label": 1}\n' + line + "\n")
    with pytest.raises(DataError, match=r"hs.jsonl: " + message):
        read_examples(path)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["--weights", "nowhere", "--data", str(tmp_path / "none.jsonl")]) == 2
    assert (
        capsys.readouterr().err == f"error: {tmp_path / 'none.jsonl'}: no such file (--data: a HellaSwag .jsonl file)\n"
    )
    (tmp_path / "hs.jsonl").write_text('{"ctx": "c", "endings": ["a", "b"], "label": 0}\n')
    config = weights.GPT2Config.tiny()
    weights.save(weights.synthetic(config, seed=0), config, tmp_path / "tiny")
    if tokenizer_dir() is not None:
        assert main(["--weights", str(tmp_path / "tiny"), "--data", str(tmp_path / "hs.jsonl")]) == 2
        assert "a vocabulary of 64 ids; HellaSwag is tokenised with GPT-2's 50257" in capsys.readouterr().err
    assert main(["--weights", str(tmp_path / "tiny"), "--data", str(tmp_path / "hs.jsonl"), "--limit", "-1"]) == 2
    assert capsys.readouterr().err == "error: --limit -1: must be >= 0 (0: all)\n"


# ----------------------------------------------------------------------------- a model that learned the right endings
SENTENCES = [
    ("The farmer walks to the barn.", "He milks the brown cow every morning."),
    ("A girl opens her red umbrella.", "She walks home through the heavy rain."),
    ("The chef heats a large pan.", "He fries two eggs with fresh butter."),
    ("Two boys kick a ball outside.", "They run across the green field laughing."),
    ("The old man sits by the fire.", "He reads a long book about ships."),
    ("A woman plants seeds in spring.", "She waters the small garden each evening."),
    ("The cat climbs onto the roof.", "It watches the birds fly over town."),
    ("A driver stops at the station.", "He fills the tank and buys coffee."),
    ("The teacher writes on the board.", "She explains the lesson to the class."),
    ("A dog waits near the door.", "It barks when the mail arrives."),
    ("The pilot checks the engines.", "She flies the plane above the clouds."),
    ("A baker wakes before dawn.", "He bakes fresh bread for the village."),
]


@needs_tokenizer
def test_a_trained_model_picks_the_ending_it_was_trained_on(tmp_path, tiny_config, monkeypatch):
    """Train a 1-layer GPT-2 (C=32, GPT-2's vocabulary) on the 12 sentences (JSONL -> shards -> the
    trainer, shuffled windows); then each example offers the trained ending and three shuffles of its
    words (the same tokens, another order, so no unigram preference can choose). Chance is 0.25; at least
    9 of 12 right has probability 4e-4 by chance. Measured (80 steps of B=4, T=32; train loss 10.8 -> 1.7):
    12 of 12 for each of --data-seed 0, 1, 2; after 30-40 steps of B=8 it was still 6-11 of 12."""
    from torch_impl.data import tokenize_files
    from torch_impl.train import train

    docs = tmp_path / "train.jsonl"
    docs.write_text("".join(json.dumps({"text": f"{c} {e}"}) + "\n" for c, e in SENTENCES) * 4)
    tokenize_files([docs], tmp_path / "shards", val_fraction=0.0, progress=False)
    cfg = tiny_config(
        tmp_path / "shards",
        tmp_path / "run",
        model="small",
        n_layer=1,
        n_embd=32,
        padded_vocab=50304,
        batch_size=4,
        seq_len=32,
        max_steps=80,
        lr=1e-2,
        warmup_steps=4,
        data_order="shuffled",
    )
    out = train(cfg)
    rng = random.Random(0)
    lines = []
    for k, (context, ending) in enumerate(SENTENCES):
        words, wrong = ending.split(), set()
        while len(wrong) < 3:
            rng.shuffle(words)
            if " ".join(words) != ending:
                wrong.add(" ".join(words))
        endings = sorted(wrong)
        endings.insert(k % 4, ending)
        lines.append(json.dumps({"ctx": context, "endings": endings, "label": k % 4}))
    (tmp_path / "hs.jsonl").write_text("\n".join(lines) + "\n")
    hs, result_file = tmp_path / "hs.jsonl", tmp_path / "r.json"
    argv = ["--weights", str(out["checkpoint"]), "--data", str(hs), "--out", str(result_file)]
    reads = []
    monkeypatch.setattr(eval_hellaswag, "read_examples", lambda *a: reads.append(a) or read_examples(*a))
    assert main([*argv, "--no-progress", "--device", "cpu"]) == 0
    assert len(reads) == 1  # the file is read once: checked before the model loads, then evaluated
    result = json.loads(result_file.read_text())
    assert result["examples"] == 12 and result["chance"] == 0.25
    assert result["correct"] >= 9, result
    assert result["provenance"]["git"]
