"""Full-state checkpoints: atomic, complete, and enough to resume a run bit for bit.

Layout of one checkpoint, ``<run_dir>/checkpoints/step_00001234/``:

* ``model.safetensors``   the model's state dict (parameters and persistent buffers);
* ``ema.safetensors``     the EMA shadow weights, when EMA is on;
* ``trainer_state.pt``    everything else: optimizer states, step, the data streams' positions, every
                          rank's RNG states and carry. Read back with ``torch.load(weights_only=True)``;
* ``manifest.json``       the size and sha256 of each file above, written last.

Loading verifies the manifest, so a flipped or truncated byte is a :class:`CheckpointError` naming the file,
never a silently different model. A step directory that does not verify (damaged, empty, a stray
``model.safetensors`` alone) is skipped with a warning by :func:`newest_loadable`, and is neither counted nor
deleted when pruning. Checkpoints written before manifests existed (``model.safetensors`` and
``trainer_state.pt``, no ``manifest.json``) are still accepted, with a warning that they cannot be verified,
when their files load; pruning leaves them alone.

A checkpoint is written into a hidden temporary directory (every file fsync'ed) which is then renamed
to its final name, so a directory named ``step_*`` is always complete; a crash mid-write leaves only a
``.tmp`` directory that the next save removes. The newest ``keep_checkpoints`` verified ones are kept.

A *weights-only* checkpoint (:func:`save_weights_only`, how an imported run starts) has the same files but
a trainer state of just its step and where the weights came from: training from it starts at that step with
fresh optimizer, EMA, data and RNG state. :func:`holds_training_state` tells the two kinds apart.

A checkpoint of a run on a frozen base (LoRA: ``lora.rank`` > 0) holds only the weights that train (the
adapters) and, in its trainer state, ``"base"``: a pointer to the checkpoint it started from (``init_from``),
``{"checkpoint": absolute path, "files": {file name: sha256}}`` (its model and EMA files), and ``"lora":
{"rank": r, "alpha": a}`` (what merging its adapters needs). :func:`load_checkpoint` reads the base through the
pointer, checks those hashes, and returns the whole model's state (base + adapters, unmerged), so every reader
(resume, evaluation, generation, export) sees a complete model; a base that moved or changed is one
:class:`BaseWeightsError` line. :func:`plain_weights` folds the adapters in: how another run starts from a LoRA
run (``init_from``), or stacks new adapters on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from smoltrain.errors import SmoltrainError
from smoltrain.fileio import fsync_dir, fsync_file, set_default_permissions, write_json_synced
from smoltrain.models.lora import merge_adapter_weights

STEP_DIR = re.compile(r"^step_(\d+)$")
MODEL_FILE, EMA_FILE, STATE_FILE = "model.safetensors", "ema.safetensors", "trainer_state.pt"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1

Contents = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None, dict[str, Any]]


class CheckpointError(SmoltrainError):
    """A checkpoint directory that is damaged, incomplete, or holds another model than the one asked for.

    ``problem`` is the message without its fix (what a warning about a skipped checkpoint says)."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}; {fix}")
        self.problem = problem


class BaseWeightsError(SmoltrainError):
    """The base checkpoint an adapter checkpoint points at is missing or is not the one it was trained on."""


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
        _write_manifest(tmp)  # last: a directory with a manifest has all its files
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
    _prune(root, final, keep)
    return final


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:  # in chunks: hashing a 2 GB table must not hold it in memory
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write_manifest(directory: Path) -> None:
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(directory.iterdir()) if p.is_file()}
    write_json_synced(directory / MANIFEST_FILE, {"format": MANIFEST_FORMAT, "files": files}, indent=1)


def _read_manifest(path: Path) -> dict[str, dict[str, Any]] | None:
    """The files a checkpoint's manifest lists (name -> size, sha256); None when it has no manifest."""
    file = path / MANIFEST_FILE
    if not file.is_file():
        return None
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
        files = manifest["files"]
        if not all(isinstance(e, dict) and isinstance(e["size"], int) and isinstance(e["sha256"], str)
                   for e in files.values()):
            raise TypeError("an entry lacks size or sha256")
        if not all(Path(name).name == name for name in files):  # files of this directory only
            raise ValueError("it names a file outside its directory")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError,
            AttributeError) as err:
        raise CheckpointError(f"{file} is damaged ({type(err).__name__}: {err})", _fix(path)) from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise CheckpointError(f"{file} is of format {manifest.get('format')!r}; this smoltrain reads format "
                              f"{MANIFEST_FORMAT}", "load it with the smoltrain that wrote it")
    return files


def _fix(path: Path) -> str:
    return (f"delete {path} (resume=auto and eval then use the run's previous checkpoint) "
            "or copy an intact one in its place")


def verify(path: Path) -> None:
    """Raise :class:`CheckpointError` unless ``path`` is a complete checkpoint whose files match its manifest.

    A checkpoint without a manifest (written before smoltrain wrote them) passes with a warning when it has
    the files every checkpoint has; reading them then tells whether they are intact."""
    path = Path(path)
    files = _read_manifest(path)
    if files is None:
        missing = [name for name in (MODEL_FILE, STATE_FILE) if not (path / name).is_file()]
        if missing:
            raise CheckpointError(f"{path} is not a complete smoltrain checkpoint (no {MANIFEST_FILE}, no "
                                  f"{' or '.join(missing)})", _fix(path))
        warnings.warn(f"{path} has no {MANIFEST_FILE} (written by an older smoltrain): its files are not "
                      "verified", stacklevel=2)
        return
    for name in (MODEL_FILE, STATE_FILE):
        if name not in files:
            raise CheckpointError(f"{path / MANIFEST_FILE} lists no {name}: not a complete checkpoint", _fix(path))
    for name, entry in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file} is missing (the checkpoint's manifest lists it)", _fix(path))
        size = file.stat().st_size
        if size != entry["size"]:
            raise CheckpointError(f"{file} is truncated or damaged ({size} bytes, {entry['size']} written)",
                                  _fix(path))
        if _sha256(file) != entry["sha256"]:
            raise CheckpointError(f"{file} is damaged (its sha256 differs from the one written)", _fix(path))


def verifies(path: Path) -> bool:
    """Whether ``path`` is a checkpoint smoltrain wrote (it has a manifest) and its files match it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            verify(path)
    except CheckpointError:
        return False
    return _read_manifest(path) is not None  # one without a manifest is not known to be ours


def _prune(root: Path, just_written: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints that verify (``just_written`` does: its hashes were just taken);
    delete older ones that verify. A directory that does not verify is neither counted nor deleted: it may be
    what a person wants to look at, or not ours at all, and a damaged one must not take the place of an intact
    one. Verifying re-reads the kept checkpoints and the one leaving, once per save: a fraction of what writing
    them cost (hashing runs at about 1 GB/s)."""
    kept = 0
    for path in reversed(list_checkpoints(root)):
        if path == just_written:
            kept += 1
        elif verifies(path):
            if kept < keep:
                kept += 1
            else:
                shutil.rmtree(path, ignore_errors=True)


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


def load_checkpoint(path: Path) -> Contents:
    """(model state, EMA state or None, trainer state) of one checkpoint directory, verified first.

    The weights come back memory-mapped from the files (safetensors' ``load_file``), so loading them into
    a model (``load_state_dict`` copies tensor by tensor) never holds a second in-memory copy of the model.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} is not a directory",
                              f"pass a step directory such as RUN/checkpoints/{step_dir_name(1000)}")
    verify(path)
    model_state = _read_safetensors(path / MODEL_FILE)
    ema_state = _read_safetensors(path / EMA_FILE) if (path / EMA_FILE).is_file() else None
    try:
        trainer_state = torch.load(path / STATE_FILE, weights_only=True)
    except (OSError, EOFError, pickle.UnpicklingError, RuntimeError, ValueError) as err:
        # Truncated (EOF, "failed finding central directory"), not a torch file, or a pickle payload that
        # weights_only refuses: none of them is a trainer state we wrote.
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path / STATE_FILE} cannot be read ({first})", _fix(path)) from None
    if not isinstance(trainer_state, dict):
        raise CheckpointError(f"{path / STATE_FILE} holds a {type(trainer_state).__name__}, not a trainer state",
                              _fix(path))
    if "base" in trainer_state:  # only the adapters are here: the frozen base comes from where the run started
        model_state = {**load_base(trainer_state["base"], path), **model_state}
    return model_state, ema_state, trainer_state


WEIGHT_FILES = (MODEL_FILE, EMA_FILE)


def base_pointer(checkpoint: Path) -> dict[str, Any]:
    """What an adapter checkpoint records of its base ``checkpoint`` (a verified one): its absolute path and
    the sha256 of its weight files, as its manifest lists them."""
    checkpoint = Path(checkpoint)
    files = _read_manifest(checkpoint) or {}
    return {"checkpoint": str(checkpoint.resolve()),
            "files": {name: files[name]["sha256"] for name in WEIGHT_FILES if name in files}}


def load_base(pointer: dict[str, Any], adapter: Path) -> dict[str, torch.Tensor]:
    """The weights (the EMA ones when the base run had EMA) of the base checkpoint ``pointer`` names, after
    checking that they are the ones the adapter checkpoint ``adapter`` was trained on."""
    base = Path(pointer["checkpoint"])
    fix = f"put that checkpoint back at {base} (the adapters of {adapter} were trained on it), or train again"
    if not base.is_dir():
        raise BaseWeightsError(f"{adapter} holds adapters only, and its base checkpoint {base} is gone; {fix}")
    files = _read_manifest(base) or {}
    changed = [name for name, sha in pointer["files"].items() if files.get(name, {}).get("sha256") != sha]
    if changed:
        raise BaseWeightsError(f"the base checkpoint {base} of {adapter} is not the one its adapters were trained "
                               f"on ({', '.join(changed)} differ); {fix}")
    return plain_weights(*load_checkpoint(base))


def plain_weights(model_state: dict[str, torch.Tensor], ema_state: dict[str, torch.Tensor] | None,
                  trainer_state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights to start another run from: :func:`weights_to_use`, with a LoRA checkpoint's adapters folded
    into their base weights (``W + alpha / rank * B @ A``), so they load into a model without adapters."""
    weights = weights_to_use(model_state, ema_state)
    lora = trainer_state.get("lora")
    return merge_adapter_weights(weights, lora["alpha"] / lora["rank"]) if lora else weights


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"{file} cannot be read ({err})", _fix(file.parent)) from None


def check_weights(model: nn.Module, state: dict[str, torch.Tensor], checkpoint: Path, against: str,
                  fix: str) -> None:
    """Raise one :class:`CheckpointError` line unless ``state`` has exactly ``model``'s keys and shapes.

    ``against`` names what the model was built from (a run's config.yaml, "the config given"); ``fix`` says
    what to do. Torch would list every key; the counts and the first of each kind tell the user enough."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or reshaped):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (first: {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
    if reshaped:
        key = reshaped[0]
        parts.append(f"{len(reshaped)} of another shape (first: {key} {tuple(state[key].shape)} vs "
                     f"{tuple(expected[key].shape)})")
    raise CheckpointError(f"checkpoint {checkpoint} holds a model of another architecture/shape than {against}: "
                          f"{', '.join(parts)}", fix)


def weights_to_use(model_state: dict[str, torch.Tensor],
                   ema_state: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """The state dict to evaluate or start from: the EMA weights over the model's when the run had EMA
    (the EMA copy holds only trainable parameters; buffers come from the model's state)."""
    return {**model_state, **(ema_state or {})}


DAMAGED_RUN_FIX = "delete the damaged step directories, or copy intact checkpoints in"


def newest_loadable(root: Path, fix: str = DAMAGED_RUN_FIX) -> tuple[Path, Contents] | None:
    """The newest checkpoint that verifies and loads, with its contents; a damaged one is skipped with a warning.

    None when ``root`` holds no step directory at all; when it holds some and none loads, one
    :class:`CheckpointError` line lists them, ending with ``fix``."""
    skipped: list[str] = []
    for path in reversed(list_checkpoints(root)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as err:  # a damaged file must not stop a resume from an older one
            warnings.warn(f"skipping unreadable checkpoint {path}: {err.problem}", stacklevel=2)
            skipped.append(path.name)
    if skipped:
        raise CheckpointError(f"no checkpoint of {root.parent} verifies ({len(skipped)} damaged or incomplete: "
                              f"{', '.join(skipped[:3])}{', ...' if len(skipped) > 3 else ''}; warnings above "
                              "say why)", fix)
    return None
