"""Document inputs (JSONL, JSONL.gz, Parquet): the ids of every document, the split, resume, the errors.

Most tests tokenise with a stand-in tokenizer (bytes as ids), so the expected shards are written down
independently of the code under test: [50256] + the UTF-8 bytes of each document, in order. One test
runs GPT-2's tokenizer (tiktoken) and compares with its own encode_ordinary of each document.
Parquet needs pyarrow (the project's [data] extra): those tests skip with that reason without it.
"""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

import torch_impl.data as data
from torch_impl.data import DataError, read_shard, shard_paths, tokenize_files
from torch_impl.documents import count_documents, document_format, read_documents
from weights.paths import WHERE_TOKENIZER, tokenizer_dir

try:
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError:
    pa = pq = None
needs_pyarrow = pytest.mark.skipif(pa is None, reason="Parquet inputs need pyarrow (pip install pyarrow, or [data])")
EOT = 50256
FORMATS = ["jsonl", "jsonl.gz", pytest.param("parquet", marks=needs_pyarrow)]


class Bytes:
    """Bytes as ids: a stand-in tokenizer (n_vocab 50257 like GPT-2's; no encode_ordinary_batch)."""

    n_vocab = 50257

    def encode_ordinary(self, text):
        return list(text.encode())


def _docs(n: int = 120) -> list[str]:
    """Documents of varied lengths, with what JSON must escape (quotes, newlines, non-ASCII)."""
    return [f'doc {i}: "{"é" * (i % 3)}"\n' + "word " * (i % 11) for i in range(n)]


def _write(path, docs, fmt: str, blank_lines: bool = False, row_group: int = 16):
    """The documents as `fmt` under path (the suffix added); JSONL gets an extra field, optional blank lines."""
    path = path.with_name(f"{path.name}.{fmt}")
    if fmt == "parquet":
        pq.write_table(pa.table({"id": list(range(len(docs))), "text": docs}), path, row_group_size=row_group)
        return path
    lines = []
    for i, d in enumerate(docs):
        lines.append(json.dumps({"id": i, "text": d}) + "\n")
        if blank_lines and i % 7 == 0:
            lines.append("\n  \n")
    raw = "".join(lines).encode()
    path.write_bytes(gzip.compress(raw) if fmt == "jsonl.gz" else raw)
    return path


def _expected(docs) -> list[int]:
    return [t for d in docs for t in [EOT, *d.encode()]]


def _split_ids(folder, split) -> np.ndarray:
    return np.concatenate([read_shard(p) for p in shard_paths(folder, split)])


QUIET = dict(progress=False, tokenizer=Bytes())


# ----------------------------------------------------------------------------- the ids and the split
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_document_starts_with_endoftext_and_the_last_tenth_is_val(tmp_path, fmt):
    """120 documents, val_fraction 0.1: train = documents 0..107, val = 108..119, each [EOT] + its bytes;
    the blank lines of a JSONL file are skipped; shards of at least 1000 tokens, cut between documents."""
    docs = _docs()
    src = _write(tmp_path / "in", docs, fmt, blank_lines=True)
    manifest = tokenize_files([src], tmp_path / "out", val_fraction=0.1, shard_tokens=1000, **QUIET)
    np.testing.assert_array_equal(_split_ids(tmp_path / "out", "train"), _expected(docs[:108]))
    np.testing.assert_array_equal(_split_ids(tmp_path / "out", "val"), _expected(docs[108:]))
    assert manifest["documents"] == {"per_file": [120], "train": 108, "val": 12}
    train_shards = shard_paths(tmp_path / "out", "train")
    assert len(train_shards) > 2
    for p in train_shards:
        assert read_shard(p)[0] == EOT  # a shard starts at a document
    assert all(s["tokens"] >= 1000 for s in manifest["shards"][: len(train_shards) - 1])


@needs_pyarrow
def test_several_files_are_one_stream_of_documents(tmp_path):
    """JSONL, .gz and Parquet in one run: documents in file order; val is the last documents of all."""
    docs = _docs(30)
    files = [_write(tmp_path / "a", docs[:10], "jsonl"), _write(tmp_path / "b", docs[10:25], "parquet")]
    files.append(_write(tmp_path / "c", docs[25:], "jsonl.gz"))
    manifest = tokenize_files(files, tmp_path / "out", val_fraction=0.2, **QUIET)
    assert manifest["documents"] == {"per_file": [10, 15, 5], "train": 24, "val": 6}
    np.testing.assert_array_equal(_split_ids(tmp_path / "out", "train"), _expected(docs[:24]))
    np.testing.assert_array_equal(_split_ids(tmp_path / "out", "val"), _expected(docs[24:]))


@pytest.mark.skipif(tokenizer_dir() is None, reason=f"GPT-2 tokenizer files absent: {WHERE_TOKENIZER}")
def test_gpt2_tokenizer_on_documents(tmp_path):
    """With tiktoken (parallel batches): each document is encode_ordinary of its text; a literal
    <|endoftext|> inside a document is ordinary text (several tokens), never the separator."""
    from weights.tokenizer import get_tokenizer

    enc = get_tokenizer()
    docs = ["Hello world.\n\nA second paragraph.", "<|endoftext|> is text here", "naïve café 😀"] * 100
    src = _write(tmp_path / "in", docs, "jsonl")
    tokenize_files([src], tmp_path / "out", val_fraction=0.0, progress=False, threads=2)
    want = [t for d in docs for t in [EOT, *enc.encode_ordinary(d)]]
    np.testing.assert_array_equal(_split_ids(tmp_path / "out", "train"), want)
    assert want.count(EOT) == len(docs)


# ----------------------------------------------------------------------------- positions and resume
@pytest.mark.parametrize("fmt", FORMATS)
def test_reading_from_any_position_gives_the_documents_after_it(tmp_path, fmt):
    """read_documents from the position yielded with document i gives exactly documents i+1, ...
    (JSONL with blank lines: line numbers count them; Parquet: positions inside row groups of 16)."""
    docs = _docs(40)
    src = _write(tmp_path / "in", docs, fmt, blank_lines=True)
    everything = list(read_documents(src, "text"))
    assert [t for t, _, _ in everything] == docs
    assert count_documents(src, "text") == 40
    for i, (_, line, offset) in enumerate(everything):
        assert [t for t, _, _ in read_documents(src, "text", line, offset)] == docs[i + 1 :], i


@pytest.mark.parametrize("fmt", FORMATS)
def test_resume_after_an_interruption_gives_the_same_shards(tmp_path, monkeypatch, fmt):
    """Interrupted at every shard write in turn (after 0, 1, ... finished shards), then run again: the
    same shard files, byte for byte, as one uninterrupted run; the resumed run does not count again."""
    docs = _docs(150)
    src = _write(tmp_path / "in", docs, fmt, row_group=7)
    kwargs = dict(val_fraction=0.1, shard_tokens=700, **QUIET)
    tokenize_files([src], tmp_path / "full", **kwargs)
    full = {p.name: p.read_bytes() for p in (tmp_path / "full").glob("*.bin")}
    assert len(full) >= 5
    real_write, real_count = data.write_shard, data.count_documents
    for crash_at in range(1, len(full) + 1):
        calls = []

        def crashing_write(path, tokens, calls=calls, crash_at=crash_at):
            calls.append(path)
            if len(calls) == crash_at:
                raise KeyboardInterrupt("simulated crash")
            real_write(path, tokens)

        out = tmp_path / f"cut{crash_at}"
        monkeypatch.setattr(data, "write_shard", crashing_write)
        with pytest.raises(KeyboardInterrupt):
            tokenize_files([src], out, prefix="full", **kwargs)
        if crash_at > 1:
            cursor = json.loads((out / "manifest.json").read_text())["cursor"]
            assert 0 < cursor["document"] < 150 and cursor["line"] > 0, cursor
        monkeypatch.setattr(data, "write_shard", real_write)
        if crash_at > 1:  # the manifest holds the counts: a resume must not count again
            monkeypatch.setattr(data, "count_documents", lambda *a, **k: pytest.fail("counted again"))
        manifest = tokenize_files([src], out, prefix="full", **kwargs)
        monkeypatch.setattr(data, "count_documents", real_count)
        assert manifest["done"]
        assert {p.name: p.read_bytes() for p in out.glob("*.bin")} == full, crash_at


def test_progress_bars_count_bytes_then_documents(tmp_path, capsys):
    pytest.importorskip("tqdm")
    src = _write(tmp_path / "in", _docs(50), "jsonl.gz")
    tokenize_files([src], tmp_path / "out", val_fraction=0.1, progress=True, tokenizer=Bytes())
    err = capsys.readouterr().err
    assert "counting documents" in err and "50/50" in err and "doc" in err


# ----------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"text": "a", }', r"bad.jsonl: line 3: not JSON \(Expecting property name enclosed in double quotes: col"),
        (b'{"body": "a"}', r"bad.jsonl: line 3: no 'text' field \(fields: body\); see --text-column"),
        (b'{"text": 7}', r"bad.jsonl: line 3: 'text' is a number \(7\), not a string"),
        (b'{"text": null}', r"bad.jsonl: line 3: 'text' is null, not a string"),
        (b'["text"]', r"bad.jsonl: line 3: a JSON array, not an object"),
        (b'{"text": "\\ud800"}', r"bad.jsonl: line 3: 'text' holds a lone surrogate \\ud800, not Unicode text"),
        (b'{"text": "caf\xe9"}', r"bad.jsonl: line 3: not UTF-8"),
    ],
    ids=["malformed", "missing-field", "number", "null", "array", "surrogate", "latin-1"],
)
def test_a_bad_jsonl_line_is_named(tmp_path, line, message):
    """Line 3 (after a good line and a blank one) is bad: the error names the file and line 3;
    nothing is left behind (no shard was finished, so not even the --out folder)."""
    src = tmp_path / "bad.jsonl"
    src.write_bytes(b'{"text": "good"}\n\n' + line + b"\n")
    with pytest.raises(DataError, match=message):
        tokenize_files([src], tmp_path / "out", val_fraction=0.0, **QUIET)
    assert not (tmp_path / "out").exists()


@needs_pyarrow
def test_bad_parquet_inputs_are_named(tmp_path):
    good = tmp_path / "t.parquet"
    pq.write_table(pa.table({"body": ["a", "b"], "n": [1, 2]}), good)
    with pytest.raises(DataError, match=r"t.parquet: no column 'text' \(columns: body, n\); pick one with --text-"):
        tokenize_files([good], tmp_path / "o", **QUIET)
    with pytest.raises(DataError, match=r"t.parquet: column 'n' holds int64, not strings"):
        tokenize_files([good], tmp_path / "o", text_column="n", **QUIET)
    nulls = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"text": ["a", "b", None, "d"]}), nulls, row_group_size=2)
    with pytest.raises(DataError, match=r"nulls.parquet: row 2: 'text' is null, not a string"):
        tokenize_files([nulls], tmp_path / "o", val_fraction=0.0, **QUIET)
    fake = tmp_path / "fake.parquet"
    fake.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"fake.parquet: not a readable Parquet file"):
        tokenize_files([fake], tmp_path / "o", **QUIET)
    assert not (tmp_path / "o").exists()


def test_bad_gzip_mixed_kinds_and_too_few_documents_are_named(tmp_path):
    fake = tmp_path / "fake.jsonl.gz"
    fake.write_bytes(b'{"text": "plain, not gzip"}\n')
    with pytest.raises(DataError, match=r"fake.jsonl.gz: not a readable gzip file"):
        tokenize_files([fake], tmp_path / "o", **QUIET)
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress(b'{"text": "a"}\n' * 1000)[:-30])
    with pytest.raises(DataError, match=r"cut.jsonl.gz: not a readable gzip file"):
        tokenize_files([cut], tmp_path / "o", **QUIET)
    txt, one = tmp_path / "a.txt", tmp_path / "one.jsonl"
    txt.write_text("text\n")
    one.write_text('{"text": "only one"}\n')
    with pytest.raises(DataError, match=r"a.txt is a text file and .*one.jsonl a document file"):
        tokenize_files([txt, one], tmp_path / "o", **QUIET)
    with pytest.raises(DataError, match=r"--text-column body: only .jsonl, .jsonl.gz and .parquet inputs"):
        tokenize_files([txt], tmp_path / "o", text_column="body", **QUIET)
    with pytest.raises(DataError, match=r"one.jsonl: 1 document\(s\) leave none for train with --val-fraction 0.1"):
        tokenize_files([one], tmp_path / "o", val_fraction=0.1, **QUIET)
    assert not (tmp_path / "o").exists()
    assert document_format("X.JSONL.GZ") == "jsonl.gz" and document_format("x.json") is None


@pytest.mark.skipif(tokenizer_dir() is None, reason=f"GPT-2 tokenizer files absent: {WHERE_TOKENIZER}")
def test_cli_takes_documents_and_reports_errors_in_one_line(tmp_path, capsys):
    src = _write(tmp_path / "in", _docs(20), "jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 1}\n')
    assert data.main([str(bad), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert capsys.readouterr().err == f"error: {bad}: line 2: 'text' is a number (1), not a string\n"
    assert not (tmp_path / "o").exists()
    (tmp_path / "body.jsonl").write_text(src.read_text().replace('"text"', '"body"'))
    argv = [str(tmp_path / "body.jsonl"), "--text-column", "body", "--out", str(tmp_path / "o"), "--no-progress"]
    assert data.main(argv) == 0
    out = capsys.readouterr().out
    assert "train: 18 documents" in out and "val: 2 documents" in out
