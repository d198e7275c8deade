"""llm.c's two files, both ways: the checkpoint (`gpt2_124M.bin`) and the debug state (`gpt2_124M_debug_state.bin`).

llm.c (github.com/karpathy/llm.c, the GPT-2 in C and CUDA) reads a model from one flat file and checks
its own forward and backward pass against a second file that its PyTorch script wrote. Read and
write both, and any checkpoint of ours becomes an llm.c model, any llm.c model loads into every
backend here, and a debug state becomes a golden file (docs/golden-format.md) that any candidate can
be scored against. docs/llmc.md says what every byte is; in short (little-endian throughout):

    model file        256 int32 header: [0] 20240326, [1] version, [2] maxT, [3] V, [4] L, [5] NH,
                      [6] C, [7] Vp (the padded vocabulary; versions 3 and 5), the rest 0
                      then the 16 parameter tensors of LLMC_TENSORS, in that order, each for all
                      L layers at once: wte (Vp, C), wpe (maxT, C), ln1w (L, C), ..., qkvw (L, 3C, C), ...
                      version 1: float32, no padding (Vp = V); 3: float32, wte's rows V..Vp zero;
                      5: bfloat16 (3's layout, every tensor in bfloat16)
    debug state       256 int32 header: [0] 20240327, [1] version, [2] B, [3] T, the rest 0
                      x (B, T) int32, y (B, T) int32, logits (B, T, V) float32 (never padded),
                      loss float32, the gradients float32 in the model file's layout
                      (version 2: wte's gradient (Vp, C), rows V..Vp zero; version 1: (V, C))

The debug state's header has no V, Vp, L or C: it is read together with its model file.

llm.c's linear weights are nn.Linear's (out, in); ours are Conv1D's (in, out) (weights/layout.py), so
the four weight matrices of a block are transposed on the way in and out. Only GPT-2 fits the format:
the variants (docs/variants.md) are refused by name.

    python -m conformance llmc to-llmc CHECKPOINT OUT.bin [--version 3]
    python -m conformance llmc from-llmc IN.bin OUTDIR
    python -m conformance llmc debug-state (GOLDEN | CASE) OUT.bin [--model OUT_MODEL.bin]
    python -m conformance llmc golden-from-debug-state STATE.bin MODEL.bin OUT.safetensors
    python -m conformance llmc info FILE [--model MODEL.bin]
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from weights import GPT2Config, atomic_write, param_shapes, tensor_kind, validate_params
from weights.errors import ArgumentParser, UsageError, UserError, run_cli
from weights.hub import sha256_of

MODEL_MAGIC = 20240326
STATE_MAGIC = 20240327
HEADER_INTS = 256
HEADER_BYTES = 4 * HEADER_INTS
VOCAB_MULTIPLE = 128  # llm.c pads V up to a multiple of 128: 50257 -> 50304
LAYER_NORM_EPS = 1e-5  # llm.c's LayerNorm has it built in; the file has no room for another

# Model file versions: the value type, and whether wte has Vp rows. llm.c's readers take 3 and 5 today;
# version 1 is the float32 layout from before the padded vocabulary.
MODEL_VERSIONS = {1: ("float32", False), 3: ("float32", True), 5: ("bfloat16", True)}
# Debug state versions: whether wte's gradient has Vp rows (2) or V rows (1, before the padding).
STATE_VERSIONS = {1: False, 2: True}

# llm.c's 16 parameter tensors in file order: (llm.c's name, our tensor kind, one per layer?, transposed?).
# A per-layer tensor is the L layers' tensors stacked: (L, *shape); a transposed one is our (in, out)
# weight as llm.c's (out, in).
LLMC_TENSORS: tuple[tuple[str, str, bool, bool], ...] = (
    ("wte", "wte.weight", False, False),  # (Vp, C)
    ("wpe", "wpe.weight", False, False),  # (maxT, C)
    ("ln1w", "ln_1.weight", True, False),  # (L, C)
    ("ln1b", "ln_1.bias", True, False),  # (L, C)
    ("qkvw", "attn.c_attn.weight", True, True),  # (L, 3C, C)
    ("qkvb", "attn.c_attn.bias", True, False),  # (L, 3C)
    ("attprojw", "attn.c_proj.weight", True, True),  # (L, C, C)
    ("attprojb", "attn.c_proj.bias", True, False),  # (L, C)
    ("ln2w", "ln_2.weight", True, False),  # (L, C)
    ("ln2b", "ln_2.bias", True, False),  # (L, C)
    ("fcw", "mlp.c_fc.weight", True, True),  # (L, 4C, C)
    ("fcb", "mlp.c_fc.bias", True, False),  # (L, 4C)
    ("fcprojw", "mlp.c_proj.weight", True, True),  # (L, C, 4C)
    ("fcprojb", "mlp.c_proj.bias", True, False),  # (L, C)
    ("lnfw", "ln_f.weight", False, False),  # (C,)
    ("lnfb", "ln_f.bias", False, False),  # (C,)
)


class LlmcError(UserError):
    """A file that is not what llm.c writes, or a model llm.c's format cannot hold; the message names it."""


# ------------------------------------------------------------------------------------------ shapes
def padded_vocab_size(vocab_size: int, multiple: int = VOCAB_MULTIPLE) -> int:
    """V rounded up to a multiple of `multiple` (llm.c's Vp): 50257 -> 50304, 64 -> 128."""
    return -(-vocab_size // multiple) * multiple


def check_gpt2(config: GPT2Config, what: str) -> None:
    """Refuse, by name, a config llm.c's file cannot describe: any variant option, an MLP not 4C wide,
    a LayerNorm eps other than llm.c's built-in 1e-5."""
    options = dict(config.variant_options())
    if options:
        named = ", ".join(f"{k}={v!r}" for k, v in options.items())
        raise LlmcError(f"{what}: llm.c's format holds only GPT-2; this config has {named} (docs/variants.md)")
    if config.layer_norm_eps != LAYER_NORM_EPS:
        raise LlmcError(f"{what}: llm.c's LayerNorm eps is {LAYER_NORM_EPS}; this config has {config.layer_norm_eps}")


@dataclass(frozen=True)
class ModelHeader:
    """The numbers of an llm.c model file's header (versions 1, 3, 5)."""

    version: int
    max_seq_len: int  # maxT
    vocab_size: int  # V
    num_layers: int  # L
    num_heads: int  # NH
    channels: int  # C
    padded_vocab_size: int  # Vp (= V in version 1)

    @classmethod
    def for_config(cls, config: GPT2Config, version: int = 3, padded: int | None = None, what: str = "config"):
        """The header of `config` in `version`, Vp = `padded` (default: V rounded up to a multiple of 128)."""
        if version not in MODEL_VERSIONS:
            raise UsageError(f"llm.c model version {version} is not one of {sorted(MODEL_VERSIONS)}")
        check_gpt2(config, what)
        V = config.vocab_size
        Vp = (padded_vocab_size(V) if padded is None else padded) if MODEL_VERSIONS[version][1] else V
        if padded is not None and Vp != padded:
            raise UsageError(f"llm.c model version {version} has no padded vocabulary (Vp = V = {V}), got {padded}")
        if Vp < V:
            raise UsageError(f"padded vocabulary {Vp} is smaller than the vocabulary {V}")
        return cls(version, config.n_ctx, V, config.n_layer, config.n_head, config.n_embd, Vp)

    @property
    def config(self) -> GPT2Config:
        return GPT2Config(n_layer=self.num_layers, n_head=self.num_heads, n_embd=self.channels,
                          vocab_size=self.vocab_size, n_ctx=self.max_seq_len)  # fmt: skip

    @property
    def dtype(self) -> str:
        return MODEL_VERSIONS[self.version][0]

    def ints(self) -> np.ndarray:
        """The 256 int32 header values (version 1 leaves [7] at 0, as llm.c's writer of that time did)."""
        h = np.zeros(HEADER_INTS, dtype="<i4")
        h[:7] = (MODEL_MAGIC, self.version, self.max_seq_len, self.vocab_size, self.num_layers, self.num_heads,
                 self.channels)  # fmt: skip
        if MODEL_VERSIONS[self.version][1]:
            h[7] = self.padded_vocab_size
        return h

    def tensor_shapes(self, padded: bool = True) -> list[tuple[str, tuple[int, ...]]]:
        """(llm.c name, shape) of the 16 tensors in file order; padded=False gives wte V rows (debug state v1)."""
        L, C, V4 = self.num_layers, self.channels, 4 * self.channels
        rows = self.padded_vocab_size if padded else self.vocab_size
        per_layer = {"ln1w": (C,), "ln1b": (C,), "qkvw": (3 * C, C), "qkvb": (3 * C,), "attprojw": (C, C),
                     "attprojb": (C,), "ln2w": (C,), "ln2b": (C,), "fcw": (V4, C), "fcb": (V4,),
                     "fcprojw": (C, V4), "fcprojb": (C,)}  # fmt: skip
        shapes = []
        for name, _, layered, _ in LLMC_TENSORS:
            if name == "wte":
                shapes.append((name, (rows, C)))
            elif name == "wpe":
                shapes.append((name, (self.max_seq_len, C)))
            elif layered:
                shapes.append((name, (L, *per_layer[name])))
            else:
                shapes.append((name, (C,)))
        return shapes

    def num_parameters(self, padded: bool = True) -> int:
        """Values in the file's parameter block (llm.c's num_parameters: 124,475,904 for GPT-2 124M)."""
        return sum(int(np.prod(s)) for _, s in self.tensor_shapes(padded))

    def file_size(self) -> int:
        return HEADER_BYTES + self.num_parameters() * (4 if self.dtype == "float32" else 2)

    def describe(self) -> str:
        kind = {1: "float32, unpadded vocabulary", 3: "float32, padded vocabulary", 5: "bfloat16, padded vocabulary"}
        return (f"llm.c model, version {self.version} ({kind[self.version]}): maxT {self.max_seq_len}, "
                f"V {self.vocab_size}, Vp {self.padded_vocab_size}, L {self.num_layers}, NH {self.num_heads}, "
                f"C {self.channels}; {self.num_parameters():,} parameters")  # fmt: skip


# ------------------------------------------------------------------------------------------ bfloat16
def to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """float32 values -> their bfloat16 bit patterns (uint16), rounded to nearest, ties to even (as torch)."""
    u = np.ascontiguousarray(x, dtype="<f4").view("<u4")
    return ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype("<u2")


def from_bfloat16_bits(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32 values (exact: bfloat16 is float32's upper half)."""
    return (np.asarray(bits, dtype="<u2").astype("<u4") << 16).view("<f4")


# ------------------------------------------------------------------------------------------ tensors
def to_llmc_tensors(params: Mapping[str, np.ndarray], header: ModelHeader, padded: bool = True) -> dict:
    """Our canonical dict (params or gradients) -> llm.c's 16 tensors (float32, file order and shapes):
    layers stacked, weight matrices transposed to (out, in), wte zero-padded to Vp rows."""
    L = header.num_layers
    out = {}
    for (name, kind, layered, transposed), (_, shape) in zip(LLMC_TENSORS, header.tensor_shapes(padded), strict=True):
        if layered:
            layers = [np.asarray(params[f"h.{i}.{kind}"], dtype=np.float32) for i in range(L)]
            value = np.stack([w.T if transposed else w for w in layers])
        else:
            value = np.asarray(params[kind], dtype=np.float32)
        if name == "wte" and shape[0] > value.shape[0]:
            value = np.concatenate([value, np.zeros((shape[0] - value.shape[0], shape[1]), np.float32)])
        assert value.shape == shape, (name, value.shape, shape)
        out[name] = np.ascontiguousarray(value)
    return out


def from_llmc_tensors(tensors: Mapping[str, np.ndarray], header: ModelHeader) -> dict[str, np.ndarray]:
    """llm.c's 16 tensors -> our canonical dict (float32): layers unstacked, matrices back to (in, out),
    wte's pad rows dropped."""
    kinds = {kind: (name, layered, transposed) for name, kind, layered, transposed in LLMC_TENSORS}
    out = {}
    for pname in param_shapes(header.config):
        name, layered, transposed = kinds[tensor_kind(pname)]
        value = tensors[name][int(pname.split(".")[1])] if layered else tensors[name]
        value = value.T if transposed else value
        if name == "wte":
            value = value[: header.vocab_size]
        out[pname] = np.ascontiguousarray(value, dtype=np.float32)
    return out


def _write_values(f, tensors: Mapping[str, np.ndarray], dtype: str) -> None:
    for value in tensors.values():
        (to_bfloat16_bits(value) if dtype == "bfloat16" else np.asarray(value, dtype="<f4")).tofile(f)


def _read_values(path: Path, offset: int, shapes, dtype: str, what: str) -> dict[str, np.ndarray]:
    count = sum(int(np.prod(s)) for _, s in shapes)
    raw = np.fromfile(path, dtype="<u2" if dtype == "bfloat16" else "<f4", count=count, offset=offset)
    flat = from_bfloat16_bits(raw) if dtype == "bfloat16" else raw.astype(np.float32)
    out, at = {}, 0
    for name, shape in shapes:
        n = int(np.prod(shape))
        value = flat[at : at + n].reshape(shape)
        if not np.isfinite(value).all():
            raise LlmcError(f"{path}: {what} tensor {name} holds NaN or inf")
        out[name], at = value, at + n
    return out


# ------------------------------------------------------------------------------------------ model file
def write_model(params: Mapping[str, np.ndarray], config: GPT2Config, path, version: int = 3,
                padded: int | None = None) -> ModelHeader:  # fmt: skip
    """Write `params` (canonical dict of a GPT-2 config) as an llm.c model file, atomically.
    version 3 (llm.c's float32 file; the default), 5 (bfloat16) or 1 (float32, unpadded); `padded` sets
    Vp (default: V rounded up to a multiple of 128)."""
    header = ModelHeader.for_config(config, version, padded, what=str(path))
    validate_params(params, config, what=str(path))
    tensors = to_llmc_tensors(params, header)

    def write(tmp):
        with open(tmp, "wb") as f:
            header.ints().tofile(f)
            _write_values(f, tensors, header.dtype)

    atomic_write(Path(path), write)
    return header


def _header_ints(path: Path, what: str) -> np.ndarray:
    size = path.stat().st_size  # a missing file: OSError, which names it
    if size < HEADER_BYTES:
        raise LlmcError(f"{path}: truncated: {size} bytes, shorter than llm.c's {HEADER_BYTES}-byte {what} header")
    return np.fromfile(path, dtype="<i4", count=HEADER_INTS)


def _check_size(path: Path, expected: int, sizes: str) -> None:
    size = path.stat().st_size
    if size != expected:
        how = "truncated" if size < expected else f"{size - expected} bytes too many"
        raise LlmcError(f"{path}: {how}: the header says {sizes}, {expected:,} bytes; the file has {size:,}")


def read_model_header(path) -> ModelHeader:
    """The header of an llm.c model file, checked: magic, version, sizes, and the file's length."""
    path = Path(path)
    h = _header_ints(path, "model")
    if h[0] != MODEL_MAGIC:
        if h[0] == STATE_MAGIC:
            raise LlmcError(f"{path}: an llm.c debug state (magic {STATE_MAGIC}), not a model file ({MODEL_MAGIC})")
        raise LlmcError(f"{path}: bad magic {h[0]}: not an llm.c model file (magic {MODEL_MAGIC})")
    version = int(h[1])
    if version not in MODEL_VERSIONS:
        raise LlmcError(f"{path}: llm.c model version {version} is not supported (supported: "
                        f"{', '.join(map(str, MODEL_VERSIONS))})")  # fmt: skip
    maxT, V, L, NH, C, Vp = (int(x) for x in h[2:8])
    named = dict(maxT=maxT, V=V, L=L, NH=NH, C=C)
    for key, value in named.items():
        if value < 1:
            raise LlmcError(f"{path}: header field {key} = {value}, must be positive")
    if C % NH:
        raise LlmcError(f"{path}: header says C = {C} channels for NH = {NH} heads: not a multiple")
    if MODEL_VERSIONS[version][1]:
        if Vp < V:
            raise LlmcError(f"{path}: header says padded vocabulary Vp = {Vp} < V = {V}")
    else:
        if Vp not in (0, V):
            raise LlmcError(f"{path}: version {version} has no padded vocabulary, but header field [7] is {Vp}")
        Vp = V
    header = ModelHeader(version, maxT, V, L, NH, C, Vp)
    sizes = f"maxT={maxT}, V={V}, Vp={Vp}, L={L}, C={C}: {header.num_parameters():,} {header.dtype} values"
    _check_size(path, header.file_size(), sizes)
    return header


def read_model(path) -> tuple[dict[str, np.ndarray], GPT2Config]:
    """An llm.c model file (version 1, 3 or 5) -> (our canonical params, float32; the GPT-2 config)."""
    path = Path(path)
    header = read_model_header(path)
    tensors = _read_values(path, HEADER_BYTES, header.tensor_shapes(), header.dtype, "parameter")
    return from_llmc_tensors(tensors, header), header.config


# ------------------------------------------------------------------------------------------ debug state
def write_debug_state(path, config: GPT2Config, idx, targets, logits, loss, grads: Mapping[str, np.ndarray],
                      version: int = 2, padded: int | None = None) -> None:  # fmt: skip
    """Write llm.c's debug state, atomically: x = idx, y = targets (B, T), logits (B, T, V), the loss, and
    the gradients in the model file's layout (wte's padded to Vp rows in version 2). Every value float32.
    `padded` must be the Vp of the model file this state goes with (default: V rounded up to 128)."""
    if version not in STATE_VERSIONS:
        raise UsageError(f"llm.c debug state version {version} is not one of {sorted(STATE_VERSIONS)}")
    header = ModelHeader.for_config(config, 3, padded, what=str(path))
    validate_params(grads, config, what=f"{path}: gradients")
    idx, targets = np.asarray(idx), np.asarray(targets)
    if idx.ndim != 2 or targets.shape != idx.shape:
        raise LlmcError(f"{path}: idx and targets must both be (B, T), got {idx.shape} and {targets.shape}")
    B, T = idx.shape
    V = config.vocab_size
    for name, ids in (("idx", idx), ("targets", targets)):
        bad = int(((ids < 0) | (ids >= V)).sum())
        if bad:
            raise LlmcError(f"{path}: {name} has {bad} id(s) outside [0, {V}); llm.c's debug state has no ignored "
                            f"positions (-1): its loss is the mean over every position")  # fmt: skip
    logits = np.asarray(logits, dtype="<f4")
    if logits.shape != (B, T, V):
        raise LlmcError(f"{path}: logits must be (B, T, V) = {(B, T, V)}, got {logits.shape}")
    ints = np.zeros(HEADER_INTS, dtype="<i4")
    ints[:4] = (STATE_MAGIC, version, B, T)
    tensors = to_llmc_tensors(grads, header, padded=STATE_VERSIONS[version])

    def write(tmp):
        with open(tmp, "wb") as f:
            ints.tofile(f)
            idx.astype("<i4").tofile(f)
            targets.astype("<i4").tofile(f)
            logits.tofile(f)
            np.asarray([loss], dtype="<f4").tofile(f)
            _write_values(f, tensors, "float32")

    atomic_write(Path(path), write)


def read_state_header(path) -> tuple[int, int, int]:
    """(version, B, T) of an llm.c debug state, checked (magic, version, positive sizes)."""
    path = Path(path)
    h = _header_ints(path, "debug state")
    if h[0] != STATE_MAGIC:
        if h[0] == MODEL_MAGIC:
            raise LlmcError(f"{path}: an llm.c model file (magic {MODEL_MAGIC}), not a debug state ({STATE_MAGIC})")
        raise LlmcError(f"{path}: bad magic {h[0]}: not an llm.c debug state (magic {STATE_MAGIC})")
    version, B, T = (int(x) for x in h[1:4])
    if version not in STATE_VERSIONS:
        raise LlmcError(f"{path}: llm.c debug state version {version} is not supported (supported: 1, 2)")
    if B < 1 or T < 1:
        raise LlmcError(f"{path}: header says B = {B}, T = {T}; both must be positive")
    return version, B, T


def read_debug_state(path, model) -> dict[str, np.ndarray]:
    """An llm.c debug state, read with its model file (a path, or its ModelHeader), as golden-file tensors:
    "input.idx", "input.targets" int64 (B, T); "logits" (B, T, V), "loss" (), "grad.<name>" float32."""
    path = Path(path)
    header = model if isinstance(model, ModelHeader) else read_model_header(model)
    version, B, T = read_state_header(path)
    V, padded = header.vocab_size, STATE_VERSIONS[version]
    if T > header.max_seq_len:
        raise LlmcError(f"{path}: T = {T} is longer than the model's maxT = {header.max_seq_len}")
    n_grads = header.num_parameters(padded)
    expected = HEADER_BYTES + 4 * (2 * B * T + B * T * V + 1 + n_grads)
    _check_size(path, expected, f"B={B}, T={T} (with the model's V={V}, {n_grads:,} gradient values)")
    at = HEADER_BYTES
    ids = np.fromfile(path, dtype="<i4", count=2 * B * T, offset=at).astype(np.int64)
    x, y = ids[: B * T].reshape(B, T), ids[B * T :].reshape(B, T)
    for name, v in (("x", x), ("y", y)):
        bad = int(((v < 0) | (v >= V)).sum())
        if bad:
            raise LlmcError(f"{path}: {name} holds {bad} token id(s) outside [0, V = {V})")
    at += 8 * B * T
    values = _read_values(path, at, [("logits", (B, T, V)), ("loss", ())], "float32", "output")
    at += 4 * (B * T * V + 1)
    grads = from_llmc_tensors(_read_values(path, at, header.tensor_shapes(padded), "float32", "gradient"), header)
    out = {"input.idx": x, "input.targets": y, "logits": values["logits"], "loss": values["loss"].reshape(())}
    out.update({f"grad.{name}": g for name, g in grads.items()})
    return out


# ------------------------------------------------------------------------------------------ golden files
def write_golden(path, tensors: Mapping[str, np.ndarray], case: str, config: GPT2Config, weights: dict,
                 adamw: dict | None, reference: str = "llm.c debug state (float32)") -> None:  # fmt: skip
    """A golden file of format 1 (docs/golden-format.md), atomically, by conformance/golden.py's rules:
    floats as float64, ids as int64, the checks its tensors allow ("forward_backward": a debug state has
    no AdamW trajectory and no generated tokens), `weights` as given (where the model lives)."""
    from conformance import golden, tensorfile
    from conformance.tolerances import CEILINGS, LOCALIZE
    from weights.provenance import provenance

    out = {}
    for name, value in tensors.items():
        value = np.asarray(value)
        out[name] = np.array(value, dtype=np.int64 if value.dtype.kind in "iu" else np.float64, order="C")
    B, T = out["input.idx"].shape
    meta = {
        "format": golden.FORMAT,
        "format_version": golden.FORMAT_VERSION,
        "case": case,
        "config": json.dumps(config.to_hf_dict()),
        "checks": json.dumps(["forward_backward"]),
        "batch": json.dumps({"B": int(B), "T": int(T), "tokens": "llm.c debug state"}),
        "reference": reference,
        "weights": json.dumps(weights),
        "ceilings": json.dumps(CEILINGS),
        "localize": json.dumps(LOCALIZE),
        "provenance": json.dumps(provenance()),
    }
    if adamw is not None:
        meta["adamw"] = json.dumps(adamw)
    tensorfile.write(Path(path), out, meta)


def read_golden(path) -> tuple[dict[str, np.ndarray], dict[str, str], GPT2Config]:
    """(tensors, metadata, config) of a golden file, read and validated by conformance/golden.py."""
    from conformance.golden import open_golden

    g = open_golden(path)
    return {name: np.array(g.array(name)) for name in g.names()}, dict(g.file.metadata), g.config


def golden_from_debug_state(state_path, model_path, out_path, case: str | None = None,
                            with_weights: bool = False) -> dict[str, np.ndarray]:  # fmt: skip
    """Turn an llm.c debug state (and its model file) into a golden file: input.idx, input.targets, logits,
    loss, grad.* (and weight.* with `with_weights`). The weights are named by the model file's path
    (relative to the golden file) and sha256, and by their params_sha256, so a checker can load them."""
    import os

    from conformance.cases import LLMC_ADAMW
    from conformance.golden import decayed, params_sha256

    header = read_model_header(model_path)
    tensors = read_debug_state(state_path, header)
    params, _ = read_model(model_path)
    if with_weights:
        tensors.update({f"weight.{name}": value for name, value in params.items()})
    relative = os.path.relpath(Path(model_path).resolve(), Path(out_path).resolve().parent)
    weights = {"source": "file", "format": f"llm.c model version {header.version}",
               "stored": "inline" if with_weights else "file", "file": Path(relative).as_posix(),
               "sha256": sha256_of(Path(model_path)),
               "params_sha256": params_sha256(params, header.config)}  # fmt: skip
    # no adamw.* tensors here; the hyperparameters are those of llm.c's test that this state belongs to
    hp = dict(LLMC_ADAMW)
    adamw = dict(hp, steps=10, stored_steps=[], decayed=decayed(header.config, hp["decay"]))
    write_golden(out_path, tensors, case or Path(state_path).stem, header.config, weights, adamw)
    return tensors


def _golden_weights(tensors, meta, config, path: Path) -> dict[str, np.ndarray]:
    """The parameters of a golden file: its weight.* tensors or weights file, else the synthetic weights it names."""
    from conformance.golden import open_golden

    params = open_golden(path).params()  # weight.* inside, or the file beside it (its sha256 checked)
    if params is not None:
        return params
    weights = json.loads(meta.get("weights", "null") or "null")
    if isinstance(weights, dict) and weights.get("source") == "synthetic" and isinstance(weights.get("seed"), int):
        from weights import synthetic

        return synthetic(config, seed=weights["seed"])
    raise LlmcError(f"{path}: carries no weight.* tensors and names no synthetic seed: no model to write")


def debug_state_from_golden(golden_path, out_path, model_out=None, version: int = 2) -> None:
    """An llm.c debug state (and with `model_out` its model file, version 3) from a golden file."""
    path = Path(golden_path)
    tensors, meta, config = read_golden(path)
    check_gpt2(config, str(path))
    needed = ["input.idx", "input.targets", "logits", "loss"] + [f"grad.{n}" for n in param_shapes(config)]
    missing = [n for n in needed if n not in tensors]
    if missing:
        raise LlmcError(f"{path}: missing tensor(s) {missing[:4]}{' ...' if len(missing) > 4 else ''}")
    grads = {n: tensors[f"grad.{n}"] for n in param_shapes(config)}
    if model_out is not None:
        write_model(_golden_weights(tensors, meta, config, path), config, model_out)
    write_debug_state(out_path, config, tensors["input.idx"], tensors["input.targets"], tensors["logits"],
                      float(tensors["loss"]), grads, version)  # fmt: skip


def debug_state_from_case(case_name: str, out_path, model_out=None, version: int = 2) -> None:
    """The debug state of a conformance case, computed by the float64 reference (and its model file)."""
    import reference
    from conformance.cases import CASES, batch, params_for

    case = next((c for c in CASES if c.name == case_name), None)
    if case is None:
        raise UsageError(f"{case_name}: neither a golden file nor a conformance case (cases: "
                         f"{', '.join(c.name for c in CASES)})")  # fmt: skip
    check_gpt2(case.config, f"case {case_name}")
    params = params_for(case)
    idx, targets = batch(case)
    p64 = {k: np.asarray(v, np.float64) for k, v in params.items()}
    logits, loss, grads = reference.forward_backward(p64, case.config, idx, targets)
    if model_out is not None:
        write_model(params, case.config, model_out)
    write_debug_state(out_path, case.config, idx, targets, logits, loss, grads, version)


# ------------------------------------------------------------------------------------------ command line
def main(argv=None) -> int:
    """`python -m conformance llmc ...`; bad flags or files are one line (`error: ...`) and exit status 2."""
    return run_cli(_main, argv)


def _parser() -> ArgumentParser:
    ap = ArgumentParser(prog="python -m conformance llmc", description="llm.c's model and debug-state files.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("to-llmc", help="a checkpoint of ours (safetensors) -> an llm.c model file")
    p.add_argument("checkpoint", help="a .safetensors file or a folder holding model.safetensors")
    p.add_argument("out", help="the llm.c model file to write (e.g. gpt2_124M.bin)")
    p.add_argument("--version", type=int, default=3, choices=sorted(MODEL_VERSIONS),
                   help="3: float32 (llm.c's file; default); 5: bfloat16; 1: float32, unpadded")  # fmt: skip
    p.add_argument("--padded-vocab", type=int, default=None, help="Vp (default: V rounded up to a multiple of 128)")
    p = sub.add_parser("from-llmc", help="an llm.c model file -> OUTDIR/model.safetensors + config.json")
    p.add_argument("model")
    p.add_argument("outdir")
    p = sub.add_parser("debug-state", help="an llm.c debug state from a golden file or a conformance case")
    p.add_argument("source", help="a golden file (docs/golden-format.md), or a conformance case's name "
                   "(conformance/cases.py; computed by the float64 reference)")  # fmt: skip
    p.add_argument("out", help="the debug state to write")
    p.add_argument("--model", dest="model_out", help="also write the llm.c model file the state goes with")
    p.add_argument("--version", type=int, default=2, choices=sorted(STATE_VERSIONS))
    p = sub.add_parser("golden-from-debug-state", help="an llm.c debug state + its model file -> a golden file")
    p.add_argument("state")
    p.add_argument("model")
    p.add_argument("out", help="the golden .safetensors file to write")
    p.add_argument("--case", help="the golden file's case name (default: the state file's stem)")
    p.add_argument("--with-weights", action="store_true", help="also store the model's weights (weight.*)")
    p = sub.add_parser("info", help="what an llm.c file's header says (checked against the file's size)")
    p.add_argument("file")
    p.add_argument("--model", help="the model file a debug state goes with (to check its size)")
    return ap


def _out_path(path: str, flag: str) -> Path:
    out = Path(path)
    if not out.parent.is_dir():
        raise UsageError(f"{flag} {path}: folder {out.parent} does not exist")
    return out


def _main(argv: list[str]) -> int:
    args = _parser().parse_args([a for a in argv if a != "--debug"])
    if args.command == "to-llmc":
        from weights import load

        params, config = load(args.checkpoint)
        header = write_model(params, config, _out_path(args.out, "OUT"), args.version, args.padded_vocab)
        print(f"wrote {args.out}: {header.describe()}")
    elif args.command == "from-llmc":
        from weights import save

        params, config = read_model(args.model)
        meta = {"source": f"llm.c model {Path(args.model).name}", "sha256": sha256_of(Path(args.model))}
        print(f"wrote {save(params, config, args.outdir, metadata=meta)} (+ config.json)")
    elif args.command == "debug-state":
        out = _out_path(args.out, "OUT")
        model_out = None if args.model_out is None else _out_path(args.model_out, "--model")
        if Path(args.source).is_file():
            debug_state_from_golden(args.source, out, model_out, args.version)
        else:
            debug_state_from_case(args.source, out, model_out, args.version)
        print(f"wrote {out}" + (f" and {model_out}" if model_out else ""))
    elif args.command == "golden-from-debug-state":
        out = _out_path(args.out, "OUT")
        tensors = golden_from_debug_state(args.state, args.model, out, args.case, args.with_weights)
        print(f"wrote {out}: {len(tensors)} tensors (loss {float(tensors['loss']):.6f})")
    elif args.command == "info":
        path = Path(args.file)
        magic = int(_header_ints(path, "llm.c")[0])
        if magic == STATE_MAGIC:
            version, B, T = read_state_header(path)
            if args.model:
                read_debug_state(path, args.model)  # checks every size and id
            note = "" if args.model else " (pass --model MODEL.bin to check its size)"
            print(f"llm.c debug state, version {version}: B {B}, T {T}{note}")
        else:
            print(read_model_header(path).describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
