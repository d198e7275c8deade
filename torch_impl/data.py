"""Training data: text, JSONL or Parquet files -> GPT-2 token shards on disk -> (x, y) batches for every rank.

    python -m torch_impl.data INPUT.txt [INPUT2.txt ...] --out data-cache/shakespeare --val-fraction 0.1
    python -m torch_impl.data fineweb/*.parquet --text-column text --out data-cache/fineweb

Shard file format (the one llm.c uses, so shards move freely between the two projects):

    int32[256] header    header[0] = 20240520 (magic), header[1] = 1 (version), header[2] = n_tokens
    uint16[n_tokens]     token ids, each < 65536 (GPT-2's ids are < 50257)

Tokenising text files. Each text file is one document and starts with <|endoftext|> (id 50256),
the separator GPT-2 was trained with. Files are read through mmap in chunks of about
`chunk_bytes`, and a chunk only ends just before a newline that follows printable ASCII: GPT-2's pre-tokeniser
always splits there (no piece takes a newline after a non-space), so chunked tokenisation
gives exactly the ids of whole-file tokenisation (tests/training check this).

Train/val split. The last `val_fraction` of the input bytes (the stream of all files in
order) goes to the val split, cut at the first chunk boundary at or after the split point;
the rest is train. With one input file this is nanoGPT's "first 90% train, last 10% val".

Documents (.jsonl, .jsonl.gz, .parquet; torch_impl/documents.py reads them streamed). Many documents
per file, FineWeb-style: each one is the `text_column` field of a JSON line or a Parquet row, and
each starts with <|endoftext|>. Documents are tokenised whole (no chunking needed: one document is
held in memory at a time). The split counts documents, not bytes: the last val_fraction of all the
inputs' documents (at least one when val_fraction > 0) are val. A first pass counts them (the
non-blank lines of a JSONL file, without parsing them; a Parquet file's row count from its
metadata). Text files and document files are not mixed in one run.

Resuming. `manifest.json` in the output folder is rewritten (atomically) after every shard;
it records the inputs (path and size), the shards written so far and the input position
just after the last token they hold: [file, byte offset] for text files, and for documents
{file, line, offset, document} (lines or rows consumed in that file, bytes consumed, documents
consumed in all), plus the document counts, so a resume does not count again. An interrupted run
started again with the same arguments continues from that position and writes the same shards as
an uninterrupted run; different inputs are refused.

Batches. `ShardLoader` reads a split as one stream of tokens (shard after shard, back to the
first after the last) and hands out B rows of T+1 consecutive tokens. On step s of a
world of W ranks, rank r reads the B*T+1 tokens starting at pos + r*B*T, and pos moves by
W*B*T: the ranks together read exactly what one process with batch W*B reads. The
loader's whole state is (shard index, pos): saved in checkpoints, restored on resume.
"""

from __future__ import annotations

import json
import mmap
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from torch_impl.checkpoint import atomic_write
from torch_impl.documents import count_documents, document_format, read_documents
from weights.errors import ArgumentParser, DataError, run_cli

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MAX_TOKEN_ID = 65535  # uint16
EOT_ID = 50256
MANIFEST = "manifest.json"
DEFAULT_TEXT_COLUMN = "text"  # FineWeb's, and most JSONL corpora's


# ----------------------------------------------------------------------------- shard files
def write_shard(path: str | os.PathLike, tokens: np.ndarray) -> None:
    """Write `tokens` (1-D ints, each in [0, 65535]) as a shard, atomically (temp file + rename)."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise DataError(f"{path}: tokens must be 1-D, got shape {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() > MAX_TOKEN_ID):
        bad = int(tokens.max()) if tokens.max() > MAX_TOKEN_ID else int(tokens.min())
        raise DataError(f"{path}: token id {bad} does not fit a uint16 shard (ids must be in [0, {MAX_TOKEN_ID}])")
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, tokens.size)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(header.tobytes())
            f.write(tokens.astype(np.uint16).tobytes())

    atomic_write(path, write)


def read_shard(path: str | os.PathLike) -> np.ndarray:
    """The tokens of one shard as a read-only uint16 memmap, after checking its header and size."""
    path = Path(path)
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise DataError(f"{path}: {size} bytes, too short for the {HEADER_BYTES}-byte shard header")
    header = np.fromfile(path, dtype=np.int32, count=HEADER_INTS)
    if header[0] != SHARD_MAGIC:
        raise DataError(f"{path}: bad magic {header[0]} (expected {SHARD_MAGIC}); not a token shard")
    if header[1] != SHARD_VERSION:
        raise DataError(f"{path}: shard version {header[1]}, this reader knows version {SHARD_VERSION}")
    n = int(header[2])
    if size != HEADER_BYTES + 2 * n:
        raise DataError(f"{path}: header says {n} tokens but the file holds {(size - HEADER_BYTES) / 2:g}")
    if n == 0:
        return np.zeros(0, dtype=np.uint16)
    return np.memmap(path, dtype=np.uint16, mode="r", offset=HEADER_BYTES, shape=(n,))


def shard_paths(folder: str | os.PathLike, split: str) -> list[Path]:
    """The shards of one split in `folder` (files named *_{split}_NNNNNN.bin), in order."""
    paths = sorted(Path(folder).glob(f"*_{split}_*.bin"))
    if not paths:
        raise DataError(f"{folder}: no {split!r} shards (*_{split}_*.bin); make them with `python -m torch_impl.data`")
    return paths


# ----------------------------------------------------------------------------- tokenising
def _clean_cut(buf, lo: int, size: int) -> int:
    """The first index i >= lo with buf[i] == '\\n' and buf[i-1] printable ASCII (else `size`).

    GPT-2's pre-tokeniser always ends a piece there: no letter, number or punctuation piece takes
    in a newline, and a whitespace piece cannot start on a non-space. So text cut at i tokenises
    the same in two halves as in one (cutting *after* a newline would not: a run "\\n\\n" at the
    end of a chunk becomes one token, where the whole text splits it before the next word)."""
    i = buf.find(b"\n", max(lo, 1))
    while i != -1:
        if 0x21 <= buf[i - 1] <= 0x7E:
            return i
        i = buf.find(b"\n", i + 1)
    return size


@dataclass
class _Chunk:
    file: int  # index into the inputs
    start: int  # byte offsets in that file
    end: int
    split: str  # "train" or "val"


def _plan_chunks(sizes: list[int], files: list[Path], split_at: int, chunk_bytes: int, cursor: tuple[int, int]):
    """Yield the chunks of the input stream from `cursor` = (file index, byte offset) on."""
    base = 0
    for i, (path, size) in enumerate(zip(files, sizes, strict=True)):
        if i < cursor[0] or size == 0:
            base += size
            continue
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            pos = cursor[1] if i == cursor[0] else 0
            while pos < size:
                lo = pos + chunk_bytes
                if base + pos < split_at:  # the chunk holding the split point ends just after it
                    lo = min(lo, split_at - base)
                end = _clean_cut(mm, max(lo, pos + 1), size)
                split = "train" if base + pos < split_at else "val"
                yield _Chunk(i, pos, end, split), mm[pos:end]  # bytes (a copy): outlives the mmap
                pos = end
        base += size


def _encode_grouped(items, text_of, tokenizer, threads: int, group: int):
    """(item, ids) for each item, in order: text_of(item) encoded, `group` items at a time in parallel
    when the tokenizer can (tiktoken's encode_ordinary_batch), which changes no id."""
    batch = getattr(tokenizer, "encode_ordinary_batch", None)

    def encode(pending):
        texts = [text_of(item) for item in pending]
        encoded = batch(texts, num_threads=threads) if batch and threads > 1 else map(tokenizer.encode_ordinary, texts)
        return zip(pending, encoded, strict=True)

    pending: list = []
    for item in items:
        pending.append(item)
        if len(pending) == group:
            yield from encode(pending)
            pending = []
    yield from encode(pending)


def _encoded_chunks(chunks, files: list[Path], tokenizer, threads: int, group: int = 64):
    """(chunk, ids) for each (chunk, raw bytes) of the text files, in order."""

    def text_of(item) -> str:
        chunk, raw = item
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            where = chunk.start + e.start
            raise DataError(f"{files[chunk.file]}: not UTF-8 text (bad byte at offset {where})") from None

    for (chunk, _), ids in _encode_grouped(chunks, text_of, tokenizer, threads, group):
        yield chunk, ids


def _atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _progress(total: int, initial: int, desc: str, enabled: bool, unit: str = "B"):
    """A tqdm bar (in bytes, or documents with unit="doc") if tqdm is installed (and wanted), else a
    do-nothing stand-in."""
    if enabled:
        try:
            from tqdm import tqdm

            scale = unit == "B"
            return tqdm(total=total, initial=initial, unit=unit, unit_scale=scale, desc=desc, file=sys.stderr)
        except ImportError:
            pass

    class _Quiet:
        def update(self, n):
            pass

        def close(self):
            pass

    return _Quiet()


def tokenize_files(
    inputs: list[str | os.PathLike],
    out: str | os.PathLike,
    val_fraction: float = 0.1,
    shard_tokens: int = 100_000_000,
    chunk_bytes: int = 1 << 18,
    prefix: str | None = None,
    progress: bool = True,
    tokenizer=None,
    threads: int = 0,
    text_column: str | None = None,
) -> dict:
    """Tokenise text or document files into train/val shards under `out`; resumable. Returns the manifest.

    inputs        text files (UTF-8; each is one document), or document files (.jsonl, .jsonl.gz,
                  .parquet; each holds many), not both; every document starts with <|endoftext|>
    val_fraction  share of the input, taken from the end, that forms the val split: of the bytes
                  (text files) or of the documents (document files)
    shard_tokens  a shard is closed once it holds at least this many tokens (cut between chunks or documents)
    threads       tokenizer threads (0: one per CPU core)
    text_column   the field (JSONL) or column (Parquet) holding a document's text (default "text")
    """
    files = [Path(p) for p in inputs]
    for p in files:
        if not p.is_file():
            raise DataError(f"{p}: no such input file")
    kinds = [document_format(p) for p in files]
    documents = any(kinds)
    if documents and not all(kinds):
        text = next(p for p, k in zip(files, kinds, strict=True) if k is None)
        doc = next(p for p, k in zip(files, kinds, strict=True) if k is not None)
        raise DataError(
            f"{text} is a text file and {doc} a document file (.jsonl, .jsonl.gz, .parquet): one run takes one "
            "kind; tokenise them into two folders"
        )
    if text_column is not None and not documents:
        raise DataError(f"--text-column {text_column}: only .jsonl, .jsonl.gz and .parquet inputs have columns")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if shard_tokens < 1:
        raise DataError(f"--shard-tokens must be >= 1, got {shard_tokens}")
    if chunk_bytes < 1:
        raise DataError(f"chunk_bytes must be >= 1, got {chunk_bytes}")
    if tokenizer is None:
        from weights.tokenizer import get_tokenizer

        tokenizer = get_tokenizer()
    if threads < 0:
        raise DataError(f"--threads must be >= 0 (0: one per CPU core), got {threads}")
    threads = threads or os.cpu_count() or 1
    vocab = tokenizer.n_vocab
    if vocab - 1 > MAX_TOKEN_ID:
        raise DataError(f"tokenizer has {vocab} ids; uint16 shards hold ids up to {MAX_TOKEN_ID}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: --out exists and is not a folder")
    created = [p for p in (out, *out.parents) if not p.exists()]  # removed again if we fail before writing
    out.mkdir(parents=True, exist_ok=True)
    column = (text_column or DEFAULT_TEXT_COLUMN) if documents else None
    try:
        return _tokenize_into(
            files, out, val_fraction, shard_tokens, chunk_bytes, prefix, progress, tokenizer, threads, column
        )
    except BaseException:
        for p in created:  # deepest first; only folders that are still empty
            if p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        raise


def _read_manifest(path: Path, inputs_record: list, settings: dict) -> dict | None:
    """The manifest of an earlier run on the same inputs and settings, None when there is none."""
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        manifest["inputs"], manifest["settings"], manifest["done"]  # noqa: B018 (the keys a resume needs)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(
            f"{path}: not a manifest of this tool ({type(e).__name__}: {e}); use a fresh --out folder"
        ) from None
    if manifest["inputs"] != inputs_record or manifest["settings"] != settings:
        raise DataError(
            f"{path}: this folder holds shards of other inputs or settings; "
            "use a fresh --out folder (or delete this one) to start over"
        )
    return manifest


def _tokenize_into(
    files, out: Path, val_fraction, shard_tokens, chunk_bytes, prefix, progress, tokenizer, threads, column
):
    prefix = prefix or out.name or "data"
    sizes = [p.stat().st_size for p in files]
    inputs_record = [{"path": str(p.resolve()), "size": s} for p, s in zip(files, sizes, strict=True)]
    settings = {"val_fraction": val_fraction, "shard_tokens": shard_tokens}
    if column is None:
        settings.update(chunk_bytes=chunk_bytes, prefix=prefix)
    else:
        settings.update(prefix=prefix, text_column=column)
    manifest_path = out / MANIFEST
    manifest = _read_manifest(manifest_path, inputs_record, settings)
    if manifest is not None and manifest["done"]:
        return manifest
    if column is None:  # text files: the split and the cursor in bytes
        if manifest is None:
            manifest = {"inputs": inputs_record, "settings": settings, "shards": [], "cursor": [0, 0], "done": False}
        total = sum(sizes)
        split_at = total - int(round(total * val_fraction))
        cursor = tuple(manifest["cursor"])
        done = sum(sizes[: cursor[0]]) + cursor[1]
        bar = _progress(total, done, f"tokenising -> {out}", progress)
        pieces = _text_pieces(files, sizes, split_at, chunk_bytes, cursor, tokenizer, threads)
        end = [len(files), 0]
    else:  # documents: the split and the cursor in documents
        if manifest is None:
            counts = _count(files, sizes, column, progress)
            n_val = max(1, round(sum(counts) * val_fraction)) if val_fraction > 0 else 0
            if sum(counts) - n_val < 1:
                raise DataError(
                    f"{files[0] if len(files) == 1 else 'the inputs'}: {sum(counts)} document(s) leave none for "
                    f"train with --val-fraction {val_fraction} ({n_val} for val)"
                )
            cursor = {"file": 0, "line": 0, "offset": 0, "document": 0}
            manifest = {"inputs": inputs_record, "settings": settings, "shards": [], "cursor": cursor, "done": False}
            manifest["documents"] = {"per_file": counts, "train": sum(counts) - n_val, "val": n_val}
        docs = manifest["documents"]
        total = docs["train"] + docs["val"]
        bar = _progress(total, manifest["cursor"]["document"], f"tokenising -> {out}", progress, unit="doc")
        pieces = _document_pieces(files, column, docs["train"], manifest["cursor"], tokenizer, threads)
        end = {"file": len(files), "line": 0, "offset": 0, "document": total}
    try:
        _write_shards(pieces, out, prefix, manifest, shard_tokens, tokenizer.n_vocab, files, bar)
    finally:
        bar.close()
    manifest["cursor"] = end
    manifest["done"] = True
    _atomic_write_text(manifest_path, json.dumps(manifest, indent=1) + "\n")
    return manifest


def _count(files: list[Path], sizes: list[int], column: str, progress: bool) -> list[int]:
    """Documents per file (the first pass over document inputs), with a bar in bytes of the files."""
    bar = _progress(sum(sizes), 0, "counting documents", progress)
    counts = []
    try:
        for path in files:
            counts.append(count_documents(path, column, bar.update))
    finally:
        bar.close()
    return counts


def _text_pieces(files, sizes, split_at, chunk_bytes, cursor, tokenizer, threads):
    """(split, ids, cursor after, bytes read) for each chunk of the text files from `cursor` on."""
    chunks = _plan_chunks(sizes, files, split_at, chunk_bytes, cursor)
    for chunk, ids in _encoded_chunks(chunks, files, tokenizer, threads):
        if chunk.start == 0:
            ids = [EOT_ID] + ids
        yield chunk.split, ids, files[chunk.file], [chunk.file, chunk.end], chunk.end - chunk.start


def _document_pieces(files, column, n_train, cursor, tokenizer, threads, group: int = 256):
    """(split, ids, source file, cursor after, 1) for each document of the inputs after `cursor`; ids
    start with <|endoftext|>."""

    def documents():
        done = cursor["document"]
        for i in range(cursor["file"], len(files)):
            start = (cursor["line"], cursor["offset"]) if i == cursor["file"] else (0, 0)
            for text, line, offset in read_documents(files[i], column, *start):
                done += 1
                yield text, {"file": i, "line": line, "offset": offset, "document": done}

    for (_, after), ids in _encode_grouped(documents(), lambda item: item[0], tokenizer, threads, group):
        split = "train" if after["document"] <= n_train else "val"
        yield split, [EOT_ID] + ids, files[after["file"]], after, 1


def _write_shards(pieces, out: Path, prefix: str, manifest: dict, shard_tokens: int, vocab: int, files, bar) -> None:
    """Append each piece's ids to the shard being filled; close it (write it, then the manifest with the
    cursor after its last piece) once it holds shard_tokens tokens, and before the split changes.

    pieces  (split, ids, source file, cursor after, progress units) in input order"""
    manifest_path = out / MANIFEST
    buffer: list[np.ndarray] = []
    buffered = 0
    buffer_split = None
    next_index = {s: sum(1 for sh in manifest["shards"] if sh["split"] == s) for s in ("train", "val")}

    def flush(cursor) -> None:
        nonlocal buffer, buffered
        if buffered == 0:
            return
        name = f"{prefix}_{buffer_split}_{next_index[buffer_split]:06d}.bin"
        write_shard(out / name, np.concatenate(buffer))
        next_index[buffer_split] += 1
        manifest["shards"].append({"name": name, "split": buffer_split, "tokens": buffered})
        manifest["cursor"] = cursor
        _atomic_write_text(manifest_path, json.dumps(manifest, indent=1) + "\n")
        buffer, buffered = [], 0

    cursor = manifest["cursor"]
    for split, ids, source, after, units in pieces:
        if buffer_split is not None and split != buffer_split:
            flush(cursor)  # a shard never mixes the splits
        buffer_split = split
        arr = np.asarray(ids, dtype=np.int64)
        if arr.size and (arr.min() < 0 or arr.max() >= vocab):
            raise DataError(f"{source}: tokenizer produced id {int(arr.max())} outside [0, {vocab})")
        buffer.append(arr.astype(np.uint16))
        buffered += arr.size
        cursor = after
        bar.update(units)
        if buffered >= shard_tokens:
            flush(cursor)
    flush(cursor)


# ----------------------------------------------------------------------------- batches
class SplitShards:
    """What every loader of one split starts from: its shards (paths and token counts) and the batch
    geometry B, T of rank `rank` of `world` ranks, checked. ShardLoader reads the shards in order,
    ShuffledLoader (torch_impl/shuffled_loader.py) in a seeded order of windows."""

    def __init__(self, paths: list[Path], B: int, T: int, rank: int = 0, world: int = 1):
        if B < 1 or T < 1:
            raise DataError(f"batch size B={B} and sequence length T={T} must be positive")
        if not 0 <= rank < world:
            raise DataError(f"rank {rank} is not in [0, {world})")
        self.paths = [Path(p) for p in paths]
        self.B, self.T, self.rank, self.world = B, T, rank, world
        self.step_tokens = world * B * T
        self.lengths = [read_shard(p).size for p in self.paths]

    @classmethod
    def from_folder(cls, folder, split: str, *args, **kwargs):
        """The loader of `split` ("train" or "val") of a shard folder; the other arguments are the constructor's."""
        return cls(shard_paths(folder, split), *args, **kwargs)

    def max_token_id(self) -> int:
        """The largest token id in any of this split's shards (-1 if they are empty); reads every shard once."""
        return max((int(read_shard(p).max()) for p, n in zip(self.paths, self.lengths, strict=True) if n), default=-1)


class ShardLoader(SplitShards):
    """(x, y) batches of shape (B, T) from one split, for rank `rank` of `world` ranks.

    x[b] = tokens[p + b*T : p + (b+1)*T] and y[b] the same shifted by one, with
    p = pos + rank*B*T. After a step pos moves by world*B*T; when the next step would run past
    the shard's end the loader moves on to the next shard (after the last, back to the first)
    and pos = 0. The tail of a shard too short for a whole step is skipped.
    (torch_impl/shuffled_loader.py reads the same rows in a seeded order, a new one each epoch.)
    """

    order = "sequential"

    def __init__(self, paths: list[Path], B: int, T: int, rank: int = 0, world: int = 1):
        super().__init__(paths, B, T, rank, world)
        need = self.step_tokens + 1
        short = [f"{p.name} ({n} tokens)" for p, n in zip(self.paths, self.lengths, strict=True) if n < need]
        if short:
            raise DataError(
                f"shard(s) {', '.join(short)} too short for one step: world*B*T+1 = {world}*{B}*{T}+1 = {need} tokens"
            )
        self.shard, self.pos = 0, 0
        self._tokens = read_shard(self.paths[0])

    def state(self) -> dict:
        return {"shard": self.shard, "pos": self.pos}

    def load_state(self, state: dict) -> None:
        if state.get("order", self.order) != self.order:  # states of older checkpoints have no "order"
            raise DataError(f"loader state {state} is not a sequential loader's (it reads {state['order']})")
        shard, pos = int(state["shard"]), int(state["pos"])
        if not 0 <= shard < len(self.paths) or not 0 <= pos <= self.lengths[shard]:
            raise DataError(f"loader state {state} does not fit these shards ({len(self.paths)} shards)")
        self.shard, self.pos = shard, pos
        self._tokens = read_shard(self.paths[shard])

    def reset(self) -> None:
        self.load_state({"shard": 0, "pos": 0})

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """x, y: int64 arrays (B, T) for this rank; advances the shared position by one step."""
        if self.pos + self.step_tokens + 1 > self.lengths[self.shard]:
            self.load_state({"shard": (self.shard + 1) % len(self.paths), "pos": 0})
        B, T = self.B, self.T
        start = self.pos + self.rank * B * T
        buf = np.asarray(self._tokens[start : start + B * T + 1], dtype=np.int64)
        self.pos += self.step_tokens
        return buf[:-1].reshape(B, T), buf[1:].reshape(B, T)


# ----------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    """The command line; bad inputs or flags are one line (`error: ...`) and exit status 2."""
    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    ap = ArgumentParser(
        prog="python -m torch_impl.data",
        description="Tokenise text, JSONL or Parquet files with the GPT-2 tokenizer into uint16 train/val shards "
        "(resumable).",
    )
    ap.add_argument(
        "inputs",
        nargs="+",
        help="UTF-8 text files (each one is a document), or .jsonl / .jsonl.gz / .parquet files of many documents",
    )
    ap.add_argument("--out", required=True, help="output folder for the shards and manifest.json")
    ap.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of the input (from the end) for val: of the bytes of text files, of the documents of the others",
    )
    ap.add_argument(
        "--text-column",
        default=None,
        help=f"the field (.jsonl) or column (.parquet) holding each document's text (default: {DEFAULT_TEXT_COLUMN})",
    )
    ap.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard (about)")
    ap.add_argument("--prefix", default=None, help="shard file name prefix (default: the output folder's name)")
    ap.add_argument("--threads", type=int, default=0, help="tokenizer threads (0: one per CPU core)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    manifest = tokenize_files(
        args.inputs,
        args.out,
        args.val_fraction,
        args.shard_tokens,
        prefix=args.prefix,
        progress=not args.no_progress,
        threads=args.threads,
        text_column=args.text_column,
    )
    for split in ("train", "val"):
        shards = [s for s in manifest["shards"] if s["split"] == split]
        docs = f"{manifest['documents'][split]:,} documents, " if "documents" in manifest else ""
        print(f"{split}: {docs}{sum(s['tokens'] for s in shards):,} tokens in {len(shards)} shard(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
