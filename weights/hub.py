"""Downloading the real GPT-2 weights from the Hugging Face hub, hash-checked.

`download("gpt2")` fetches ``model.safetensors`` of ``openai-community/gpt2`` at a pinned
revision through ``huggingface_hub`` (its progress bar and its cache), then checks the
file's size and SHA-256 against the values pinned here. A mismatch deletes nothing of
yours: the cached file is left where it is and the error says where and what differed.

Offline, the download fails fast with a message that says what to do instead.
"""

from __future__ import annotations

import hashlib
import os
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path


class HubError(RuntimeError):
    """The hub could not give us a verified checkpoint."""


@dataclass(frozen=True)
class HubCheckpoint:
    repo_id: str
    revision: str
    filename: str
    size: int
    sha256: str
    preset: str = "gpt2"  # its config, GPT2Config.preset(preset): the download brings no config.json


# The released GPT-2 124M (the LFS object id of model.safetensors is its SHA-256).
KNOWN = {
    "openai-community/gpt2": HubCheckpoint(
        repo_id="openai-community/gpt2",
        revision="607a30d783dfa663caf39e06633721c8d4cfcd7e",
        filename="model.safetensors",
        size=548_105_171,
        sha256="248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707",
        preset="gpt2",
    ),
}
ALIASES = {"gpt2": "openai-community/gpt2"}
# The other released sizes have configs (GPT2Config.preset: gpt2-medium, gpt2-large, gpt2-xl) but no pin:
# this project has no size and SHA-256 of their model.safetensors from a source it trusts, and a
# download it cannot verify is refused. Download one yourself and pass the file with its digest.
UNPINNED = {"gpt2-medium", "gpt2-large", "gpt2-xl"}


def pinned(hub_id: str) -> HubCheckpoint | None:
    """The pin of a hub id or alias ("gpt2", "openai-community/gpt2"), None if this project pins none."""
    return KNOWN.get(ALIASES.get(hub_id, hub_id))


OFFLINE_HELP = (
    "pass a local checkpoint instead (a model.safetensors file or a folder holding one, e.g. "
    "`--weights path/to/gpt2/`), or use the synthetic default (`--weights synthetic`), "
    "which is clearly labelled as not OpenAI's weights"
)


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, expected: HubCheckpoint) -> None:
    size = path.stat().st_size
    if size != expected.size:
        raise HubError(f"{path}: size {size} bytes, expected {expected.size} for {expected.repo_id}")
    digest = sha256_of(path)
    if digest != expected.sha256:
        raise HubError(f"{path}: sha256 {digest}, expected {expected.sha256} for {expected.repo_id}")


def _check_reachable(endpoint: str, timeout_s: float) -> None:
    """One TCP connect to the hub, so that an offline machine fails in seconds, not after retries."""
    url = urllib.parse.urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        raise HubError(f"the hub ({host}) cannot be reached: {e}; {OFFLINE_HELP}") from None


def download(hub_id: str, timeout_s: float = 10.0) -> Path:
    """Fetch (or find in the HF cache) a known GPT-2 checkpoint and return its verified path."""
    repo_id = ALIASES.get(hub_id, hub_id)
    size = hub_id.removeprefix("openai-community/")
    if size in UNPINNED:
        raise HubError(
            f"{hub_id!r}: its config is known (GPT2Config.preset({size!r})) but its download is not pinned (no "
            f"trusted size and SHA-256 here); download openai-community/{size}'s model.safetensors yourself and "
            "pass the file (with its SHA-256 to have it checked: --sha256, or --init-sha256 for the trainer)"
        )
    if repo_id not in KNOWN:
        raise HubError(
            f"{hub_id!r}: not a local file or folder, and not a hub checkpoint this project pins "
            f"(known: {sorted(set(ALIASES) | set(KNOWN))}); {OFFLINE_HELP}"
        )
    ckpt = KNOWN[repo_id]
    try:
        import huggingface_hub
    except ImportError:
        raise HubError(
            f"downloading {repo_id} needs huggingface_hub (pip install huggingface_hub); {OFFLINE_HELP}"
        ) from None
    cached = huggingface_hub.try_to_load_from_cache(repo_id, ckpt.filename, revision=ckpt.revision)
    if isinstance(cached, str):  # already downloaded: no network needed
        verify(Path(cached), ckpt)
        return Path(cached)
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise HubError(f"{repo_id} is not in the local HF cache and HF_HUB_OFFLINE is set; {OFFLINE_HELP}")
    _check_reachable(huggingface_hub.constants.ENDPOINT, timeout_s)
    try:
        path = huggingface_hub.hf_hub_download(repo_id, ckpt.filename, revision=ckpt.revision)
    except Exception as e:  # offline, DNS failure, proxy refusal, HTTP error: all end the same way
        raise HubError(
            f"could not download {repo_id}/{ckpt.filename} ({type(e).__name__}: {e}); {OFFLINE_HELP}"
        ) from None
    path = Path(path)
    verify(path, ckpt)
    return path
