"""safetensors, the part golden and candidate files use: read memory-mapped (bf16 too), write streamed.

A safetensors file is three things, back to back (https://github.com/huggingface/safetensors):

    8 bytes      N, the header length, unsigned little-endian
    N bytes      a JSON object, UTF-8: {"<tensor name>": {"dtype": "F64", "shape": [2, 4],
                 "data_offsets": [begin, end]}, ..., "__metadata__": {"<key>": "<string>", ...}}
                 (padded with spaces to a multiple of 8 by this writer)
    the data     every tensor's bytes, row-major (C order), little-endian; data_offsets count from
                 the first byte after the header

The official library does not read bf16 into NumPy (NumPy has no bf16), and its writer builds the
whole file in memory; golden files of the 124M cases are gigabytes. So this module reads by memory
map, one tensor at a time (bf16 widened to float32 exactly: a bf16 is the top 16 bits of a float32),
and writes tensor by tensor. tests/conformance/test_golden.py reads what it writes with the official
library, so the two agree on the format.

    f = TensorFile(path)            # the header only; raises UserError naming the file
    f.metadata                      # dict[str, str]
    f.entries["logits"].dtype       # "F64", "F32", "BF16", "I64", ...; .shape a tuple
    f.array("logits")               # np.ndarray (read-only view of the file; bf16 -> float32)
    write(path, tensors, metadata)  # atomic (weights.checkpoint.atomic_write)
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from weights.checkpoint import atomic_write
from weights.errors import UserError

# safetensors dtype -> NumPy dtype (little-endian). BF16 is read as uint16 and widened.
NUMPY_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "BF16": "<u2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
INT_DTYPES = ("I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8")
_WRITE_DTYPES = {np.dtype(v): k for k, v in NUMPY_DTYPES.items() if k != "BF16"}
MAX_HEADER = 100 * 1024 * 1024  # the official library's limit


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: str  # a safetensors dtype string, as written (not necessarily one this module can read)
    shape: tuple[int, ...]
    begin: int  # byte offsets into the data section
    end: int


class TensorFile:
    """The header of a safetensors file, and its tensors on demand (memory-mapped)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: no such file")
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise UserError(f"{self.path}: not a safetensors file ({size} bytes, no header)")
            (n,) = struct.unpack("<Q", head)
            if n > min(MAX_HEADER, size - 8):
                raise UserError(f"{self.path}: not a safetensors file (header length {n} does not fit the file)")
            try:
                header = json.loads(f.read(n).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise UserError(f"{self.path}: not a safetensors file (header is not JSON: {e})") from None
        if not isinstance(header, dict):
            raise UserError(f"{self.path}: not a safetensors file (header is not a JSON object)")
        self.data_start = 8 + n
        data_len = size - self.data_start
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise UserError(f"{self.path}: __metadata__ must map strings to strings")
        self.metadata: dict[str, str] = dict(meta)
        self.entries: dict[str, Entry] = {}
        for name, info in header.items():
            try:
                dtype, shape, (begin, end) = info["dtype"], tuple(int(s) for s in info["shape"]), info["data_offsets"]
                if not all(isinstance(v, int) and not isinstance(v, bool) for v in (begin, end)):
                    raise TypeError("data_offsets must be two integers")
            except (KeyError, TypeError, ValueError):
                raise UserError(f"{self.path}: tensor {name!r}: malformed header entry {info!r}") from None
            if not (0 <= begin <= end <= data_len) or any(s < 0 for s in shape):
                raise UserError(f"{self.path}: tensor {name!r}: data_offsets {[begin, end]} outside the file's data")
            if dtype in NUMPY_DTYPES:
                want = int(np.prod(shape, dtype=np.int64)) * np.dtype(NUMPY_DTYPES[dtype]).itemsize
                if end - begin != want:
                    raise UserError(
                        f"{self.path}: tensor {name!r}: {end - begin} bytes for {dtype} {list(shape)} ({want} expected)"
                    )
            self.entries[name] = Entry(name, dtype, shape, begin, end)
        self._map = None

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def names(self) -> list[str]:
        return list(self.entries)

    def array(self, name: str) -> np.ndarray:
        """The tensor as an array: a read-only view of the file, except bf16 (widened to a float32 copy)."""
        e = self.entries[name]
        if e.dtype not in NUMPY_DTYPES:
            raise UserError(f"{self.path}: tensor {name!r} has dtype {e.dtype}, which this reader does not read")
        dtype = np.dtype(NUMPY_DTYPES[e.dtype])
        count = (e.end - e.begin) // dtype.itemsize
        if count == 0:
            arr = np.empty(e.shape, dtype)
        else:
            if self._map is None:
                self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
            arr = np.frombuffer(self._map, dtype, count, offset=self.data_start + e.begin).reshape(e.shape)
        if e.dtype == "BF16":
            arr = (arr.astype("<u4") << 16).view("<f4")
        return arr


def write(path: str | os.PathLike, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write `tensors` (name -> array of a dtype in NUMPY_DTYPES except bf16) and string metadata, atomically.

    Tensors are laid out widest dtype first, so every tensor starts at a multiple of its own item size
    (the header is padded to a multiple of 8): memory-mapped reads are aligned.
    """
    arrays = {}
    for name, a in tensors.items():
        a = np.asarray(a)
        key = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        if key not in _WRITE_DTYPES:
            raise TypeError(f"tensor {name!r}: dtype {a.dtype} has no safetensors equivalent here")
        arrays[name] = np.asarray(a, dtype=key, order="C")  # (ascontiguousarray would make a 0-d loss 1-d)
    order = sorted(arrays, key=lambda k: -arrays[k].dtype.itemsize)  # stable: insertion order within a width
    header, offset = {}, 0
    for name in order:
        a = arrays[name]
        span = [offset, offset + a.nbytes]
        header[name] = {"dtype": _WRITE_DTYPES[a.dtype], "shape": list(a.shape), "data_offsets": span}
        offset += a.nbytes
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)

    def _write(tmp):
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for name in order:
                f.write(arrays[name].reshape(-1).view(np.uint8).data)

    atomic_write(Path(path), _write)
