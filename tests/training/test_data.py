"""torch_impl.data: shard files, exact chunked tokenisation, the train/val split, resuming, the loader."""

from __future__ import annotations

import json

import numpy as np
import pytest

import torch_impl.data as data
from torch_impl.data import DataError, ShardLoader, read_shard, shard_paths, tokenize_files, write_shard
from weights.paths import WHERE_TINYSHAKESPEARE, WHERE_TOKENIZER, tinyshakespeare_path, tokenizer_dir

needs_text = pytest.mark.skipif(
    tokenizer_dir() is None or tinyshakespeare_path() is None,
    reason=f"needs the GPT-2 tokenizer ({WHERE_TOKENIZER}) and Tiny Shakespeare ({WHERE_TINYSHAKESPEARE})",
)


# ----------------------------------------------------------------------------- shard files
def test_shard_round_trip_and_llmc_header(tmp_path):
    tokens = np.array([0, 1, 50256, 65535, 7], dtype=np.int64)
    path = tmp_path / "x_train_000000.bin"
    write_shard(path, tokens)
    header = np.fromfile(path, dtype=np.int32, count=256)
    assert header[:3].tolist() == [20240520, 1, 5]  # llm.c's magic, version, count
    assert path.stat().st_size == 256 * 4 + 2 * 5
    np.testing.assert_array_equal(read_shard(path), tokens)


@pytest.mark.parametrize("bad", [65536, -1])
def test_write_rejects_ids_outside_uint16(tmp_path, bad):
    with pytest.raises(DataError, match=f"token id {bad}"):
        write_shard(tmp_path / "a.bin", np.array([1, bad, 2]))
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_read_rejects_bad_magic_and_truncation(tmp_path):
    path = tmp_path / "a.bin"
    write_shard(path, np.arange(10))
    raw = bytearray(path.read_bytes())
    (tmp_path / "trunc.bin").write_bytes(raw[:-2])
    with pytest.raises(DataError, match="header says 10 tokens"):
        read_shard(tmp_path / "trunc.bin")
    raw[0] ^= 0xFF
    (tmp_path / "magic.bin").write_bytes(raw)
    with pytest.raises(DataError, match="bad magic"):
        read_shard(tmp_path / "magic.bin")
    (tmp_path / "short.bin").write_bytes(b"abc")
    with pytest.raises(DataError, match="too short"):
        read_shard(tmp_path / "short.bin")


def test_shard_paths_names_the_missing_split(tmp_path):
    with pytest.raises(DataError, match="no 'val' shards"):
        shard_paths(tmp_path, "val")


# ----------------------------------------------------------------------------- tokenising
@needs_text
@pytest.mark.parametrize("chunk_bytes", [777, 1 << 18])
def test_chunked_tokenisation_equals_whole_text(tmp_path, chunk_bytes):
    """Cutting the text into chunks (before a newline that follows printable ASCII) must not change
    a single id: the concatenated shards are exactly <|endoftext|> + encode(whole file)."""
    from weights.tokenizer import get_tokenizer

    src = tinyshakespeare_path()
    manifest = tokenize_files(
        [src], tmp_path / "ts", val_fraction=0.1, shard_tokens=50_000, chunk_bytes=chunk_bytes, progress=False
    )
    train = np.concatenate([read_shard(p) for p in shard_paths(tmp_path / "ts", "train")])
    val = np.concatenate([read_shard(p) for p in shard_paths(tmp_path / "ts", "val")])
    whole = [50256] + get_tokenizer().encode_ordinary(src.read_text())
    np.testing.assert_array_equal(np.concatenate([train, val]), whole)
    # the split is the last 10% of bytes, cut at a chunk boundary: within 1% of the tokens
    assert abs(val.size / len(whole) - 0.1) < 0.01
    assert len(shard_paths(tmp_path / "ts", "train")) > 1  # shard_tokens=50k really splits the data
    assert manifest["done"] and sum(s["tokens"] for s in manifest["shards"]) == len(whole)


def _toy_tokenizer():
    """Bytes as ids: a stand-in tokenizer for file-handling tests (n_vocab 50257 like GPT-2's)."""

    class Bytes:
        n_vocab = 50257

        def encode_ordinary(self, text):
            return list(text.encode())

    return Bytes()


def test_each_file_is_a_document_starting_with_endoftext(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("first\nfile")
    b.write_text("second")
    tokenize_files([a, b], tmp_path / "out", val_fraction=0.0, progress=False, tokenizer=_toy_tokenizer())
    ids = read_shard(shard_paths(tmp_path / "out", "train")[0]).tolist()
    assert ids == [50256] + list(b"first\nfile") + [50256] + list(b"second")


def test_resume_after_interruption_gives_the_same_shards(tmp_path, monkeypatch):
    text = "".join(f"line {i} of the text\n" for i in range(3000))
    src = tmp_path / "in.txt"
    src.write_text(text)
    kwargs = dict(val_fraction=0.1, shard_tokens=4000, chunk_bytes=500, progress=False, tokenizer=_toy_tokenizer())
    tokenize_files([src], tmp_path / "full", **kwargs)

    real_write, calls = data.write_shard, []

    def crashing_write(path, tokens):
        calls.append(path)
        if len(calls) == 4:
            raise KeyboardInterrupt("simulated crash")
        real_write(path, tokens)

    monkeypatch.setattr(data, "write_shard", crashing_write)
    with pytest.raises(KeyboardInterrupt):
        tokenize_files([src], tmp_path / "cut", **kwargs)
    manifest = json.loads((tmp_path / "cut" / "manifest.json").read_text())
    assert len(manifest["shards"]) == 3 and not manifest["done"]
    monkeypatch.setattr(data, "write_shard", real_write)
    tokenize_files([src], tmp_path / "cut", **kwargs)  # picks up at shard 4
    full = sorted(p.name for p in (tmp_path / "full").glob("*.bin"))
    cut = sorted(p.name for p in (tmp_path / "cut").glob("*.bin"))
    assert [n.replace("full", "") for n in full] == [n.replace("cut", "") for n in cut]
    for f, c in zip(full, cut, strict=True):
        np.testing.assert_array_equal(read_shard(tmp_path / "full" / f), read_shard(tmp_path / "cut" / c))


def test_other_inputs_in_a_used_folder_are_refused(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("one\n")
    b.write_text("two\n")
    tokenize_files([a], tmp_path / "out", val_fraction=0.0, progress=False, tokenizer=_toy_tokenizer())
    with pytest.raises(DataError, match="other inputs or settings"):
        tokenize_files([b], tmp_path / "out", val_fraction=0.0, progress=False, tokenizer=_toy_tokenizer())


def test_bad_inputs_name_the_culprit(tmp_path):
    with pytest.raises(DataError, match="nope.txt: no such input file"):
        tokenize_files([tmp_path / "nope.txt"], tmp_path / "out", progress=False, tokenizer=_toy_tokenizer())
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok text\n\xff\xfe")
    with pytest.raises(DataError, match="bad.txt: not UTF-8"):
        tokenize_files([bad], tmp_path / "out2", val_fraction=0.0, progress=False, tokenizer=_toy_tokenizer())


def test_a_failure_leaves_no_empty_out_folder_but_keeps_finished_shards(tmp_path):
    """Folders this run created are removed when nothing was written into them; whole shards stay (resumable)."""
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xffnot utf-8\n")
    with pytest.raises(DataError, match="bad.txt: not UTF-8"):
        tokenize_files([bad], tmp_path / "a" / "b" / "out", progress=False, tokenizer=_toy_tokenizer())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt"]  # not even the parents a/ and a/b/
    good = tmp_path / "good.txt"
    good.write_text("fine text\n" * 200)  # 200 chunks: more than one group of chunks encoded together
    with pytest.raises(DataError, match="bad.txt: not UTF-8"):  # the first file's shards are written, then the error
        tokenize_files([good, bad], tmp_path / "o", 0.0, 1, chunk_bytes=16, progress=False, tokenizer=_toy_tokenizer())
    assert (tmp_path / "o" / "manifest.json").is_file() and shard_paths(tmp_path / "o", "train")


def test_loader_reports_the_largest_token_id(tmp_path):
    write_shard(tmp_path / "x_train_000000.bin", np.array([3, 9, 4] * 10))
    write_shard(tmp_path / "x_train_000001.bin", np.array([1, 2, 70] * 10))
    assert ShardLoader.from_folder(tmp_path, "train", 2, 4).max_token_id() == 70


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert data.main([str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o"), "--threads", "-1"]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope.txt'}: no such input file\n"
    (tmp_path / "a.txt").write_text("hi\n")
    assert data.main([str(tmp_path / "a.txt"), "--out", str(tmp_path / "o"), "--threads", "-1"]) == 2
    assert capsys.readouterr().err == "error: --threads must be >= 0 (0: one per CPU core), got -1\n"
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(tokenizer_dir() is None, reason=f"GPT-2 tokenizer files absent: {WHERE_TOKENIZER}")
def test_cli_writes_both_splits(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("hello there\n" * 200)
    assert data.main([str(src), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "train:" in out and "val:" in out
    assert shard_paths(tmp_path / "o", "train") and shard_paths(tmp_path / "o", "val")


# ----------------------------------------------------------------------------- the loader
def test_ranks_together_read_what_one_process_reads(tmp_path):
    """world=2 with B rows each == world=1 with 2B rows, step after step (also across a shard change)."""
    write_shard(tmp_path / "d_train_000000.bin", np.arange(1000) % 50000)
    write_shard(tmp_path / "d_train_000001.bin", 20000 + np.arange(700))
    paths = shard_paths(tmp_path, "train")
    one = ShardLoader(paths, B=4, T=8)
    ranks = [ShardLoader(paths, B=2, T=8, rank=r, world=2) for r in range(2)]
    for _ in range(40):
        x1, y1 = one.next_batch()
        parts = [r.next_batch() for r in ranks]
        np.testing.assert_array_equal(x1, np.concatenate([p[0] for p in parts]))
        np.testing.assert_array_equal(y1, np.concatenate([p[1] for p in parts]))
        np.testing.assert_array_equal(x1[:, 1:], y1[:, :-1])  # y is x shifted by one
        assert one.state() == ranks[0].state() == ranks[1].state()
    assert {one.shard} <= {0, 1}


def test_loader_state_restores_the_stream(tmp_path):
    write_shard(tmp_path / "d_train_000000.bin", np.arange(500))
    write_shard(tmp_path / "d_train_000001.bin", np.arange(500, 900))
    loader = ShardLoader(shard_paths(tmp_path, "train"), B=3, T=10)
    for _ in range(20):
        loader.next_batch()
    state = loader.state()
    expected = [loader.next_batch()[0] for _ in range(20)]
    fresh = ShardLoader(shard_paths(tmp_path, "train"), B=3, T=10)
    fresh.load_state(state)
    for want in expected:
        np.testing.assert_array_equal(fresh.next_batch()[0], want)


def test_loader_wraps_and_skips_short_tails(tmp_path):
    write_shard(tmp_path / "d_train_000000.bin", np.arange(25))  # 2 steps of 10 (+1) tokens fit
    loader = ShardLoader(shard_paths(tmp_path, "train"), B=1, T=10)
    firsts = [int(loader.next_batch()[0][0, 0]) for _ in range(5)]
    assert firsts == [0, 10, 0, 10, 0]


def test_loader_rejects_shards_too_short_for_a_step(tmp_path):
    write_shard(tmp_path / "d_train_000000.bin", np.arange(64))
    with pytest.raises(DataError, match="too short for one step"):
        ShardLoader(shard_paths(tmp_path, "train"), B=4, T=8, rank=0, world=2)  # needs 65 tokens
