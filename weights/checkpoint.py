"""Reading and writing GPT-2 checkpoints (safetensors), strictly.

    load(source)  -> (params, config)     source: a .safetensors file, a folder holding
                                          model.safetensors (+ config.json), or a hub id this
                                          project pins (weights/hub.py: "gpt2" or "openai-community/gpt2")
    save(params, config, folder)          writes model.safetensors (hub layout) + config.json
                                          + model.safetensors.sha256 (its digest, sha256sum's format)

Integrity: a hub download is checked against its pinned size and SHA-256; a local file against
`sha256=` when given, else against a `<file>.sha256` sidecar beside it when there is one (`save`
writes it). A mismatch is an error naming the file and both digests.

Accepted layouts on load:
  * the hub file (``openai-community/gpt2``): names without prefix, plus the causal-mask
    buffers ``h.{i}.attn.bias`` / ``h.{i}.attn.masked_bias``, which are skipped by exact name;
  * ``save_pretrained`` output: every name prefixed ``transformer.``, plus ``lm_head.weight``,
    which must equal ``wte.weight`` when the head is tied (GPT-2's is);
  * a variant (config.json with model_type "gpt2-variant", weights/config.py): the tensors of its
    layout (weights/layout.py), ``lm_head.weight`` among them when its head is untied.

Everything else is an error that names the file and the tensor: an unknown or missing
name, a wrong shape or dtype, a non-finite value, a truncated or corrupt file.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from weights.config import ConfigError, GPT2Config
from weights.layout import infer_config, param_shapes, validate_params


class CheckpointError(ValueError):
    """A checkpoint that is not a valid GPT-2 in our layout."""


MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
SHA256_SUFFIX = ".sha256"  # the sidecar: "<hex digest>  <file name>", as sha256sum writes it

# Non-parameter buffers that HF GPT-2 files carry, matched by exact name only:
# a suffix test for "attn.bias" would also swallow the real parameter "attn.c_attn.bias".
_MASK_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")

_ACCEPTED_DTYPES = (np.float32, np.float64, np.float16)


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    size = path.stat().st_size
    if size < 8:
        raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
    try:
        return load_file(str(path))
    except SafetensorError as e:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({e})") from None
    except (TypeError, ValueError) as e:  # e.g. bf16, which NumPy cannot hold
        raise CheckpointError(f"{path}: unsupported tensor data ({e}); expected float32 tensors") from None


def _canonical_names(raw: Mapping[str, np.ndarray], path: Path) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Map a hub or save_pretrained state dict onto canonical names (no prefix, no buffers).
    Returns (tensors, lm_head.weight of a prefixed file or None): whether that one is a parameter or a
    copy of wte depends on the config (`_place_head`)."""
    prefixed = any(k.startswith("transformer.") for k in raw)
    out: dict[str, np.ndarray] = {}
    lm_head = None
    for key, value in raw.items():
        name = key
        if prefixed:
            if key == "lm_head.weight":
                lm_head = value
                continue
            if not key.startswith("transformer."):
                raise CheckpointError(f"{path}: unknown tensor name {key!r} (file uses the 'transformer.' prefix)")
            name = key[len("transformer.") :]
        if _MASK_BUFFER.fullmatch(name):
            continue
        out[name] = value
    return out, lm_head


def _place_head(tensors: dict[str, np.ndarray], lm_head: np.ndarray | None, config: GPT2Config, path: Path) -> None:
    """A prefixed file's lm_head.weight: the untied head's parameter, or (tied) a copy that must equal wte."""
    if lm_head is None:
        return
    if not config.tied_head:
        tensors["lm_head.weight"] = lm_head
        return
    wte = tensors.get("wte.weight")
    if wte is None or wte.shape != lm_head.shape or not np.array_equal(wte, lm_head):
        raise CheckpointError(
            f"{path}: lm_head.weight differs from wte.weight; GPT-2's output head is tied to the embedding"
        )


def _check_tensors(tensors: Mapping[str, np.ndarray], config: GPT2Config, path: Path) -> None:
    expected = param_shapes(config)
    for name in tensors:
        if name not in expected:
            raise CheckpointError(f"{path}: unknown tensor name {name!r}")
    for name, shape in expected.items():
        if name not in tensors:
            raise CheckpointError(f"{path}: missing tensor {name!r}")
        arr = tensors[name]
        if tuple(arr.shape) != shape:
            raise CheckpointError(f"{path}: tensor {name!r} has shape {tuple(arr.shape)}, expected {shape}")
        if arr.dtype not in _ACCEPTED_DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {arr.dtype}, expected a float type")
        if not np.isfinite(arr).all():
            raise CheckpointError(f"{path}: tensor {name!r} contains NaN or inf")


def resolve(source: str | os.PathLike) -> Path:
    """A local file, a local folder, or a hub id -> path of the .safetensors file."""
    from weights.hub import download, pinned

    path = Path(source)
    if path.is_dir():
        path = path / MODEL_FILE
        if not path.is_file():
            raise CheckpointError(f"{source}: folder has no {MODEL_FILE}")
        return path
    if path.is_file():
        return path
    if pinned(str(source)) is not None:  # "gpt2" or "openai-community/gpt2": the hub, hash-checked
        return download(str(source))
    if path.suffix or os.sep in str(source) or str(source).startswith("."):
        raise CheckpointError(f"{source}: no such checkpoint file or folder")
    return download(str(source))  # an id this project does not pin: HubError, naming the ones it does


def read_sha256_sidecar(path: Path) -> str | None:
    """The digest a `<file>.sha256` sidecar beside `path` records, None without one."""
    sidecar = path.with_name(path.name + SHA256_SUFFIX)
    if not sidecar.is_file():
        return None
    fields = sidecar.read_text().split()
    if not fields or len(fields[0]) != 64 or any(c not in "0123456789abcdef" for c in fields[0].lower()):
        raise CheckpointError(f"{sidecar}: not a SHA-256 digest (expected 64 hex digits, then the file name)")
    return fields[0].lower()


def verify_sha256(path: Path, expected: str, where: str) -> None:
    """Raise CheckpointError unless the file's SHA-256 is `expected` (`where` says who expects it)."""
    from weights.hub import sha256_of

    expected = expected.strip().lower()
    if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
        raise CheckpointError(f"{where}: {expected!r} is not a SHA-256 digest (64 hex digits)")
    digest = sha256_of(path)
    if digest != expected:
        raise CheckpointError(f"{path}: sha256 {digest}, but {where} says {expected}: the file is not that checkpoint")


def load(
    source: str | os.PathLike,
    dtype=np.float32,
    config: GPT2Config | None = None,
    sha256: str | None = None,
    sha256_from: str = "--sha256",
) -> tuple[dict[str, np.ndarray], GPT2Config]:
    """Load a GPT-2 checkpoint into the canonical params dict (float32, or float64 on request).

    The config comes from `config` if given, else from config.json beside the file, else (a pinned
    hub checkpoint) from its pin, else it is inferred from the tensor shapes, which works for GPT-2's
    head size of 64 only and is refused otherwise. sha256: the file's expected SHA-256 (else a
    `<file>.sha256` sidecar is checked when present); sha256_from: who expects it (the error says).
    """
    from weights.hub import pinned

    if np.dtype(dtype) not in (np.float32, np.float64):
        raise ValueError(f"load: dtype must be float32 or float64, got {dtype}")
    path = resolve(source)
    tensors, lm_head = _canonical_names(_read_safetensors(path), path)
    hub = pinned(str(source)) if not Path(source).exists() else None
    if config is None:
        cfg_path = path.parent / CONFIG_FILE
        if cfg_path.is_file():
            try:
                raw = json.loads(cfg_path.read_text())
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from None
            config = GPT2Config.from_hf_dict(raw, source=str(cfg_path))
        elif hub is not None:
            config = GPT2Config.preset(hub.preset)
        else:
            try:
                config = infer_config({k: v.shape for k, v in tensors.items()})
            except (ValueError, ConfigError) as e:
                raise CheckpointError(f"{path}: {e}") from None
    _place_head(tensors, lm_head, config, path)
    _check_tensors(tensors, config, path)
    # the digest last: a truncated file, a wrong tensor or shape is named by the checks above
    if sha256 is not None:
        verify_sha256(path, sha256, sha256_from)
    elif (recorded := read_sha256_sidecar(path)) is not None:
        verify_sha256(path, recorded, str(path.with_name(path.name + SHA256_SUFFIX)))
    params = {name: np.ascontiguousarray(tensors[name], dtype=dtype) for name in param_shapes(config)}
    return params, config


def atomic_write(final: Path, write) -> None:
    """Call write(tmp_path) on a temp file in the same folder, fsync it, then rename over `final`.

    A crash at any moment leaves either the old file or the new one under `final`, never half a file.
    """
    final = Path(final)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes the file owner-only, and some writers (safetensors) replace it with an owner-only
        # file of their own; a checkpoint is an ordinary readable file, so set the mode after writing.
        os.chmod(tmp, 0o644)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def save(
    params: Mapping[str, np.ndarray], config: GPT2Config, folder: str | os.PathLike, metadata: dict | None = None
) -> Path:
    """Write `folder`/model.safetensors (hub layout, float32) and `folder`/config.json, atomically.

    The result loads with `load(folder)` and with transformers' `GPT2LMHeadModel.from_pretrained(folder)`.
    """
    from safetensors.numpy import save_file

    validate_params(params, config, what="save")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: np.ascontiguousarray(params[name], dtype=np.float32) for name in param_shapes(config)}
    meta = {"format": "pt"}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    atomic_write(folder / MODEL_FILE, lambda tmp: save_file(tensors, tmp, metadata=meta))
    text = json.dumps(config.to_hf_dict(), indent=2) + "\n"
    atomic_write(folder / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text))
    from weights.hub import sha256_of

    digest = f"{sha256_of(folder / MODEL_FILE)}  {MODEL_FILE}\n"
    atomic_write(folder / (MODEL_FILE + SHA256_SUFFIX), lambda tmp: Path(tmp).write_text(digest))
    return folder / MODEL_FILE


def read_metadata(source: str | os.PathLike) -> dict[str, str]:
    """The string metadata stored in a checkpoint's safetensors header (e.g. the synthetic label)."""
    from safetensors import safe_open

    path = resolve(source)
    with safe_open(str(path), framework="numpy") as f:
        return dict(f.metadata() or {})
