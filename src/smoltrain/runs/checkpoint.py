"""Full-state checkpoints: atomic, complete, and enough to resume a run bit for bit.

Layout of one checkpoint, ``<run_dir>/checkpoints/step_00001234/``:

* ``model.safetensors``   the model's state dict (parameters and persistent buffers);
* ``ema.safetensors``     the EMA shadow weights, when EMA is on;
* ``trainer_state.pt``    everything else: optimizer states, step, the data streams' positions, every
                          rank's RNG states and carry. Read back with ``torch.load(weights_only=True)``.

A checkpoint is written into a hidden temporary directory (every file fsync'ed) which is then renamed
to its final name, so a directory named ``step_*`` is always complete; a crash mid-write leaves only a
``.tmp`` directory that the next save removes. The newest ``keep_checkpoints`` are kept.

A *weights-only* checkpoint (:func:`save_weights_only`, how an imported run starts) has the same files but
a trainer state of just its step and where the weights came from: training from it starts at that step with
fresh optimizer, EMA, data and RNG state. :func:`holds_training_state` tells the two kinds apart.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from smoltrain.errors import SmoltrainError
from smoltrain.fileio import fsync_dir, fsync_file, set_default_permissions

STEP_DIR = re.compile(r"^step_(\d+)$")
MODEL_FILE, EMA_FILE, STATE_FILE = "model.safetensors", "ema.safetensors", "trainer_state.pt"


def step_dir_name(step: int) -> str:
    """``step_00001234``: zero-padded, so names sort like steps."""
    return f"step_{step:08d}"


def _to_safetensors(state: dict[str, torch.Tensor], path: Path) -> None:
    """Write ``state`` without copying it: peak memory stays that of the model, even for ARC's 2 GB
    puzzle-embedding table. safetensors (>= 0.8) writes straight from each tensor's memory; it refuses
    tensors that share storage (tied embeddings) or are not contiguous, so only those are cloned."""
    tensors: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for key, value in state.items():
        tensor = value.detach().to("cpu").contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in storages:
            tensor = tensor.clone()
        storages.add(tensor.untyped_storage().data_ptr())
        tensors[key] = tensor
    save_file(tensors, str(path))
    set_default_permissions(path)  # safetensors creates it 0600; the rest of the run follows the umask
    fsync_file(path)


def save_checkpoint(
    root: Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    ema_state: dict[str, torch.Tensor] | None,
    trainer_state: dict[str, Any],
    keep: int,
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically and prune to the newest ``keep``."""
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".step_*.tmp*"):
        shutil.rmtree(stale, ignore_errors=True)
    final = root / step_dir_name(step)
    tmp = root / f".{final.name}.tmp{os.getpid()}"
    tmp.mkdir()
    try:
        _to_safetensors(model_state, tmp / MODEL_FILE)
        if ema_state is not None:
            _to_safetensors(ema_state, tmp / EMA_FILE)
        torch.save(trainer_state, tmp / STATE_FILE)
        fsync_file(tmp / STATE_FILE)
        fsync_dir(tmp)
        if final.exists():  # re-saving the same step (e.g. after a resume): swap, then drop the old
            old = root / f".{final.name}.old{os.getpid()}.tmp"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old_dir in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old_dir, ignore_errors=True)
    return final


def save_weights_only(root: Path, step: int, model_state: dict[str, torch.Tensor], origin: dict[str, Any]) -> Path:
    """Write a weights-only checkpoint ``step`` under ``root``; ``origin`` (kept as ``"imported"``) says
    where the weights came from."""
    return save_checkpoint(root, step, model_state, None, {"step": step, "imported": origin, "world_size": 1},
                           keep=1)


def holds_training_state(trainer_state: dict[str, Any]) -> bool:
    """Whether a checkpoint continues its run bit for bit (it has the optimizer states, data positions and
    RNG states), as opposed to a weights-only one, from which training starts afresh at its step."""
    return "optimizers" in trainer_state


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None, dict[str, Any]]:
    """(model state, EMA state or None, trainer state) of one checkpoint directory.

    The weights come back memory-mapped from the files (safetensors' ``load_file``), so loading them into
    a model (``load_state_dict`` copies tensor by tensor) never holds a second in-memory copy of the model.
    """
    path = Path(path)
    if not (path / MODEL_FILE).is_file():
        raise SmoltrainError(f"{path} is not a smoltrain checkpoint (no {MODEL_FILE})")
    model_state = load_file(str(path / MODEL_FILE))
    ema_state = load_file(str(path / EMA_FILE)) if (path / EMA_FILE).is_file() else None
    trainer_state = torch.load(path / STATE_FILE, weights_only=True) if (path / STATE_FILE).is_file() else {}
    return model_state, ema_state, trainer_state


def weights_to_use(model_state: dict[str, torch.Tensor],
                   ema_state: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """The state dict to evaluate or start from: the EMA weights over the model's when the run had EMA
    (the EMA copy holds only trainable parameters; buffers come from the model's state)."""
    return {**model_state, **(ema_state or {})}


def newest_loadable(root: Path) -> tuple[Path, tuple] | None:
    """The newest checkpoint that loads, with its contents; a damaged one is skipped with a warning."""
    for path in reversed(list_checkpoints(root)):
        try:
            return path, load_checkpoint(path)
        except Exception as err:  # a damaged file must not stop a resume from an older one
            warnings.warn(f"skipping unreadable checkpoint {path}: {err}", stacklevel=2)
    return None
