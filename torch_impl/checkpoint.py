"""Training checkpoints: the model in weights/ format plus everything needed to resume exactly.

Layout under a run's output folder:

    out/step_0000500/model.safetensors   the weights, hub layout (weights.save): every backend
    out/step_0000500/config.json         and (for GPT-2) transformers' from_pretrained load this
                                         folder; a variant's config.json (model_type gpt2-variant,
                                         docs/variants.md) carries its options, and weights.load
                                         reads it back exactly
    out/step_0000500/train_state.pt      optimizer moments, step, RNG, data-loader position,
                                         pad rows of the head's matrix (wte, or an untied lm_head),
                                         the run's settings
    out/latest                           the name of the newest complete checkpoint folder

Each file is written to a temporary name, flushed to disk and renamed over the final name, so
a crash leaves either the old file or the new one, never half of one. The `latest` pointer is
written last: a checkpoint folder that a crash left unfinished is never pointed to, and a
resume always starts from the last checkpoint that was written whole.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# The one temp-file + fsync + rename helper of the project (weights/ writes model files with it too);
# it leaves files 0644 like any ordinary file (mkstemp alone would make them owner-only).
from weights import CheckpointError, atomic_write

LATEST = "latest"
STATE_FILE = "train_state.pt"


def checkpoint_dir(out_dir: str | os.PathLike, step: int) -> Path:
    return Path(out_dir) / f"step_{step:07d}"


def save_checkpoint(out_dir, step: int, params: dict, config, train_state: dict, keep_last: int = 0) -> Path:
    """Write checkpoint `step` (the number of optimizer steps taken) and point `latest` at it.

    params       canonical weights dict (numpy), e.g. model.to_params()
    train_state  a dict of tensors / numbers / strings for torch.save (see train.py)
    keep_last    if > 0, delete all but the newest `keep_last` step_* folders afterwards
    """
    import torch

    import weights

    out_dir = Path(out_dir)
    folder = checkpoint_dir(out_dir, step)
    folder.mkdir(parents=True, exist_ok=True)
    weights.save(params, config, folder, metadata={"step": step, "written_by": "torch_impl.train"})
    atomic_write(folder / STATE_FILE, lambda tmp: torch.save(train_state, tmp))
    atomic_write(out_dir / LATEST, lambda tmp: Path(tmp).write_text(folder.name + "\n"))
    if keep_last > 0:
        old = sorted(p for p in out_dir.glob("step_*") if p.is_dir() and p != folder)
        for p in old[: max(0, len(old) - (keep_last - 1))]:
            shutil.rmtree(p, ignore_errors=True)
    return folder


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The folder `out_dir/latest` names, or None when the run has no checkpoint yet."""
    pointer = Path(out_dir) / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text(errors="replace").strip()
    folder = Path(out_dir) / name
    if not name or "/" in name or not (folder / STATE_FILE).is_file():
        raise CheckpointError(f"{pointer} names {name!r}, which is not a checkpoint folder with a {STATE_FILE}")
    return folder


def load_checkpoint(folder: str | os.PathLike) -> tuple[dict, object, dict]:
    """(params, config, train_state) of a checkpoint folder written by save_checkpoint."""
    import torch

    import weights

    folder = Path(folder)
    state_path = folder / STATE_FILE
    if not state_path.is_file():
        raise CheckpointError(f"{folder}: no {STATE_FILE}; not a training checkpoint (weights only?)")
    params, config = weights.load(folder)
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign files fail inside pickle/zipfile with many exception types
        raise CheckpointError(f"{state_path}: unreadable training state ({type(e).__name__}: {e})") from None
    missing = [
        k for k in ("step", "optimizer", "loader", "rng", "pad_rows") if not isinstance(state, dict) or k not in state
    ]
    if missing:
        raise CheckpointError(f"{state_path}: not a training state of torch_impl.train (missing {missing})")
    return params, config, state
