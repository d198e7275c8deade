"""Documents from JSONL and Parquet files (FineWeb-style: many documents per file), read streamed.

    FILE.jsonl, FILE.jsonl.gz   one JSON object per line; the document is the object's `text_column`
                                field, a string. Blank lines are skipped. .gz is decompressed on the fly.
    FILE.parquet                a table; each row is a document: its `text_column`, a string column
                                (pyarrow's string or large_string), read one row group at a time (only
                                that column) and handed out in batches of rows.

The suffix decides (`document_format`, case-insensitive); torch_impl/data.py tokenises every other
file as plain text. Nothing here holds more than one line (JSONL) or one row group's text column
(Parquet; pyarrow reads a row group's column chunk, then hands it out in batches of rows) in memory,
whatever the size of the file.

Positions. `read_documents` yields each document with the position just after it: (line, offset),
where `line` is the number of lines (JSONL, blank ones included) or rows (Parquet) consumed and
`offset` the number of bytes consumed (JSONL; of the decompressed stream for .gz; 0 for Parquet).
Reading again from a position gives exactly the documents after it: data.py's manifest stores
one so that an interrupted tokenisation resumes where it stopped. A plain .jsonl seeks to the
offset; a .jsonl.gz decompresses up to it (gzip cannot seek); a Parquet file skips whole row
groups by their row counts, then rows.

Errors are one line (DataError: `error: ...`, exit 2) naming the file and the line (1-based, as an
editor counts) or the row (0-based, as pyarrow and pandas count): a line that is not UTF-8 or not
JSON, a value that is not an object, a missing field or column, a value that is not a string (null
included), a lone surrogate (not Unicode text), a file that is not gzip or Parquet.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from weights.errors import DataError

FORMATS = {".jsonl": "jsonl", ".jsonl.gz": "jsonl.gz", ".parquet": "parquet"}  # suffix -> format
PARQUET_BATCH_ROWS = 1024  # rows per batch read from a Parquet file


def document_format(path: str | os.PathLike) -> str | None:
    """'jsonl', 'jsonl.gz' or 'parquet' by the file name's suffix (any case); None for a text file."""
    name = Path(path).name.lower()
    for suffix in sorted(FORMATS, key=len, reverse=True):  # .jsonl.gz before .jsonl
        if name.endswith(suffix):
            return FORMATS[suffix]
    return None


def _json_type(value) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _open_jsonl(path: Path, offset: int):
    """The file as a binary stream positioned at `offset` (decompressed bytes for .gz)."""
    f = gzip.open(path, "rb") if document_format(path) == "jsonl.gz" else open(path, "rb")
    if offset:
        f.seek(offset)  # gzip: decompresses up to the offset
    return f


def iter_jsonl(path: str | os.PathLike, line: int = 0, offset: int = 0) -> Iterator[tuple[int, dict, int]]:
    """(line number, object, offset after the line) for each non-blank line after position (line, offset).

    line numbers count from 1 and include blank lines; a line that is not UTF-8, not JSON or not a JSON
    object is a DataError naming the file and the line."""
    path = Path(path)
    try:
        with _open_jsonl(path, offset) as f:
            for raw in f:
                line += 1
                offset += len(raw)
                if raw.isspace():
                    continue
                try:
                    obj = json.loads(raw)
                except UnicodeDecodeError as e:
                    where = f"{e.reason} at byte {e.start} of the line"
                    raise DataError(f"{path}: line {line}: not UTF-8 ({where})") from None
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: line {line}: not JSON ({e.msg}: column {e.colno})") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{path}: line {line}: a JSON {_json_type(obj)}, not an object")
                yield line, obj, offset
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a readable gzip file ({e}); after line {line}") from None


def _check_text(path: Path, where: str, column: str, value) -> str:
    if value is None:
        raise DataError(f"{path}: {where}: {column!r} is null, not a string")
    if not isinstance(value, str):
        shown = json.dumps(value)[:40] if not isinstance(value, bytes) else repr(value[:20])
        kind = _json_type(value) if not isinstance(value, bytes) else "binary value"
        raise DataError(f"{path}: {where}: {column!r} is a {kind} ({shown}), not a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # JSON can spell a lone surrogate ("\\ud800"); it is no Unicode text
        bad = f"\\u{ord(value[e.start]):04x}"
        raise DataError(f"{path}: {where}: {column!r} holds a lone surrogate {bad}, not Unicode text") from None
    return value


# ----------------------------------------------------------------------------- Parquet
def _parquet_file(path: Path, column: str):
    """pyarrow's ParquetFile, after checking that `column` exists and holds strings."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{path}: reading Parquet needs pyarrow (pip install pyarrow, or this project's [data] extra)"
        ) from None
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({' '.join(str(e).split())})") from None
    schema = pf.schema_arrow
    if column not in schema.names:
        shown = ", ".join(schema.names[:12]) + (", ..." if len(schema.names) > 12 else "")
        raise DataError(f"{path}: no column {column!r} (columns: {shown}); pick one with --text-column")
    kind = schema.field(column).type
    string_view = getattr(pa.types, "is_string_view", lambda t: False)
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or string_view(kind)):
        raise DataError(f"{path}: column {column!r} holds {kind}, not strings; pick a text column with --text-column")
    return pf


def _parquet_documents(path: Path, column: str, row: int) -> Iterator[tuple[str, int, int]]:
    import pyarrow as pa

    pf = _parquet_file(path, column)
    sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
    first, current = 0, 0  # the row group holding `row`, and its first row
    while first < len(sizes) and current + sizes[first] <= row:
        current += sizes[first]
        first += 1
    if first == len(sizes):
        return
    try:
        batches = pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=range(first, len(sizes)), columns=[column])
        for batch in batches:
            for value in batch.column(0).to_pylist():
                if current >= row:  # rows before `row` in its row group are skipped
                    yield _check_text(path, f"row {current}", column, value), current + 1, 0
                current += 1
    except pa.ArrowException as e:
        raise DataError(f"{path}: unreadable Parquet data after row {current} ({' '.join(str(e).split())})") from None


# ----------------------------------------------------------------------------- both formats
def count_documents(path: str | os.PathLike, column: str, progress: Callable[[int], None] | None = None) -> int:
    """The number of documents in the file: non-blank lines (JSONL, one pass over the file, without
    parsing them) or rows (Parquet, from its metadata, after checking the column). `progress(n)` is
    called as the file is read with the n bytes of the file (compressed ones for .gz) read since the last call."""
    path = Path(path)
    size = path.stat().st_size
    if document_format(path) == "parquet":
        n = _parquet_file(path, column).metadata.num_rows
        if progress:
            progress(size)
        return n
    n, reported, step = 0, 0, 1 << 24
    try:
        with _open_jsonl(path, 0) as f:
            raw_file = getattr(f, "fileobj", f)  # gzip: the compressed file underneath
            for i, raw in enumerate(f):
                n += not raw.isspace()
                if progress and i % 4096 == 0 and (where := raw_file.tell()) - reported >= step:
                    progress(where - reported)
                    reported = where
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a readable gzip file ({e})") from None
    if progress:
        progress(size - reported)
    return n


def read_documents(
    path: str | os.PathLike, column: str, line: int = 0, offset: int = 0
) -> Iterator[tuple[str, int, int]]:
    """(text, line, offset) for each document after position (line, offset); the position returned with a
    document is the one just after it (see the module docstring)."""
    path = Path(path)
    if document_format(path) == "parquet":
        yield from _parquet_documents(path, column, line)
        return
    for n, obj, after in iter_jsonl(path, line, offset):
        if column not in obj:
            shown = ", ".join(list(obj)[:8]) + (", ..." if len(obj) > 8 else "")
            raise DataError(f"{path}: line {n}: no {column!r} field (fields: {shown or 'none'}); see --text-column")
        yield _check_text(path, f"line {n}", column, obj[column]), n, after
