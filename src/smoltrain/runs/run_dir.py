"""The run directory: every path in it, and the one way a run directory is written.

A run directory, as the trainer and the importers (``smoltrain import hf|minimind|trm``) leave it::

    RUN/
      .lock                          held (``flock``) by the one training that owns the run; holds its pid
      config.yaml                    the resolved TrainConfig; rewritten atomically at every (re)start
      README.md                      for people: what ran, the last evaluation, the commands to go on
      metrics.jsonl                  one JSON row per logged step (split train, eval or nonfinite)
      errors.log                     the traceback of each training that ended in an unexpected exception, which
                                     the CLI reports in one line (SMOLTRAIN_DEBUG=1: with the traceback)
      tensorboard/                   TensorBoard event files, with tensorboard=true
      wandb/                         wandb's local files, with wandb.mode other than disabled
      tokenizer/                     an LM run's tokenizer (tokenizer.json, tokenizer_config.json, ...)
      checkpoints/step_00001234/     one checkpoint; its files: smoltrain.runs.checkpoint
      eval/step_00001234/            files an evaluation writes for people (ARC's submission.json)
      best.json                      with keep_best: the checkpoint with the best eval metric (kept)
      step_1234_all_preds.0          evaluation outputs of rank 0, with eval_save_outputs (the reference's name)
      reference_all_config.yaml      an imported TRM run only: the reference's own config

An imported run is a run like any other: its weights are a *weights-only* checkpoint (see
:func:`smoltrain.runs.checkpoint.save_weights_only`) in ``checkpoints/``, which loading uses as it
is and from which training goes on at its step with fresh optimizer state.

One training owns a run directory at a time (:meth:`RunDir.lock`), and a run continues only with its own
config: :meth:`RunDir.check_continues` allows changes to :data:`RESUMABLE_CHANGES` alone.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from smoltrain.config import TrainConfig, config_to_yaml, read_saved_config
from smoltrain.data.tokenizer import TOKENIZER_FILES
from smoltrain.errors import ConfigError, SmoltrainError
from smoltrain.families import resolve, validate
from smoltrain.fileio import atomic_directory, atomic_write_bytes, atomic_write_text, check_output_path, writing
from smoltrain.runs import checkpoint as ckpt

__all__ = ["RESUMABLE_CHANGES", "RunDir", "RunLock"]

# The config keys a run may change when it continues from its checkpoint (``resume=auto``): how long it trains,
# how often it logs, evaluates and checkpoints, what it measures, where it is stored and on which machine it
# runs. Every other key (the model, the data, the optimizer, the batch, the seed, ...) decides what the
# checkpoint's state means, so a change there would silently mix two runs. A key names itself and, for a
# section such as ``wandb``, every key in it.
RESUMABLE_CHANGES: tuple[str, ...] = (
    "max_steps", "max_minutes", "epochs", "early_stop_patience", "early_stop_min_delta",
    "eval_every", "eval_interval", "min_eval_interval", "eval_max_examples", "eval_save_outputs", "evaluators",
    "eval_augmentations", "eval_halt_threshold", "eval_answer_examples",
    "data_paths_test",
    "checkpoint_every", "checkpoint_every_eval", "keep_checkpoints", "keep_best", "resume", "load_checkpoint",
    "run_dir", "checkpoint_path", "run_name", "project_name",
    "log_every", "max_nonfinite_steps", "wandb", "tensorboard",
    "device", "precision", "compile", "compile_mode", "num_threads", "dist_timeout_minutes", "strategy",
)
SHOWN_CHANGES = 5  # keys named in the refusal; the rest are counted


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _may_change(key: str) -> bool:
    return any(key == safe or key.startswith(safe + ".") for safe in RESUMABLE_CHANGES)


def _changed_keys(saved: TrainConfig, given: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """``key: (saved value, given value)`` for every key outside :data:`RESUMABLE_CHANGES` that differs."""
    old, new = (_flatten(cfg.model_dump(mode="json")) for cfg in (saved, given))
    return {key: (old.get(key), new.get(key)) for key in sorted(old.keys() | new.keys())
            if old.get(key) != new.get(key) and not _may_change(key)}


class RunLock:
    """Ownership of a run directory: an exclusive ``flock`` on ``RUN/.lock``, which holds the owner's pid.

    The kernel drops the lock when the process ends, however it ends, so a killed training never leaves a
    stale lock behind. The file itself is never deleted: a process could still hold the lock on it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        with writing(path.parent):  # the first write into the run directory: one line on why it cannot be one
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        self._handle: Any = os.fdopen(fd, "r+")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._handle.read().strip() or "unknown"
            self._handle.close()
            raise SmoltrainError(f"{path.parent} is in use by another training (pid {holder}); wait for it to "
                                 "end, or choose another run_dir") from None
        self._handle.truncate(0)
        self._handle.write(f"{os.getpid()}\n")
        self._handle.flush()

    @property
    def held(self) -> bool:
        return not self._handle.closed

    def release(self) -> None:
        """Let another process own the run directory (also when the process ends); releasing twice is fine."""
        if self.held:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()


class RunDir:
    """The paths of one run directory (``RunDir(path)`` touches no file) and what reads and writes them."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    # ------------------------------------------------------------------------------------------
    # The layout

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def readme(self) -> Path:
        return self.root / "README.md"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def curves(self) -> Path:
        """The picture of the run's curves, drawn from metrics.jsonl when a training ends (runs/curves.py)."""
        return self.root / "curves.png"

    @property
    def error_log(self) -> Path:
        return self.root / "errors.log"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def wandb(self) -> Path:
        return self.root / "wandb"

    @property
    def eval_root(self) -> Path:
        return self.root / "eval"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def reference_config(self) -> Path:
        """An imported TRM run's copy of the reference's ``all_config.yaml``."""
        return self.root / "reference_all_config.yaml"

    def step_dir(self, step: int) -> Path:
        return self.checkpoints / ckpt.step_dir_name(step)

    def eval_dir(self, checkpoint: Path) -> Path:
        """Where evaluating ``checkpoint`` (a step directory, of this run or not) writes its reports."""
        return self.eval_root / Path(checkpoint).name

    def predictions(self, step: int, rank: int) -> Path:
        """The evaluation outputs of ``rank`` at ``step`` (``eval_save_outputs``), named as the reference names them."""
        return self.root / f"step_{step}_all_preds.{rank}"

    def layout_entries(self) -> list[Path]:
        """The files and folders of the layout above that exist, ``.lock`` aside (it is never deleted: another
        process may hold a lock on it); what a caller that owns the whole directory (the demo) clears."""
        named = [self.config, self.readme, self.metrics, self.curves, self.tensorboard, self.wandb, self.tokenizer,
                 self.checkpoints, self.eval_root, self.reference_config, self.best]
        predictions = sorted(self.root.glob("step_*_all_preds.*")) if self.root.is_dir() else []
        return [path for path in named if path.exists()] + predictions

    # ------------------------------------------------------------------------------------------
    # Config and README

    def load_config(self, overrides: list[str] | None = None) -> TrainConfig:
        """The run's saved config, with ``overrides`` (``key=value``) on top."""
        if not self.config.is_file():
            raise ConfigError(f"{self.root} is not a run directory (no {self.config.name}); "
                              "train one with `smoltrain train`")
        return validate(read_saved_config(self.config, overrides))

    def check_continues(self, cfg: TrainConfig) -> None:
        """Refuse to continue this run's checkpoints with ``cfg`` where it differs from the saved config.yaml
        outside :data:`RESUMABLE_CHANGES` (``lr=0.5`` would otherwise be taken, and written over the run's
        real value). Both configs are compared resolved, so the shapes the dataset fills in are no difference."""
        if not self.config.is_file():
            return
        saved = self.load_config()
        if all(Path(path).is_dir() for path in saved.data_paths):  # else its data moved: a difference anyway
            saved = resolve(saved)
        changes = _changed_keys(saved, resolve(cfg))
        if not changes:
            return
        shown = [f"{key}: {old!r} -> {new!r}" for key, (old, new) in list(changes.items())[:SHOWN_CHANGES]]
        if len(changes) > SHOWN_CHANGES:
            shown.append(f"{len(changes) - SHOWN_CHANGES} more")
        raise ConfigError(
            f"{self.root} holds a run trained with another config ({'; '.join(shown)})"
            f": continue it without those changes, or choose another run_dir (a run continues with its own "
            f"{self.config.name}, changing only how long and how it runs: max_steps, max_minutes, eval_every, ...)"
        )

    def check_fresh(self) -> None:
        """Refuse to start a new run (``resume=none``) where checkpoints of another run lie: keeping
        checkpoints would prune the new run's and keep the old ones, and metrics.jsonl would mix both. Folders
        that do not verify are not a run's checkpoints: a new run may start beside them (they are left alone)."""
        found = [path.name for path in self.list_checkpoints() if ckpt.verifies(path)]
        if found:
            names = found[0] if len(found) == 1 else f"{found[0]} .. {found[-1]}"
            raise ConfigError(f"{self.root} already holds checkpoints ({names}) and resume=none starts a new run: "
                              "choose another run_dir, or delete them yourself")

    def lock(self) -> RunLock:
        """Own this run directory until :meth:`RunLock.release` (or the process ends); a directory another
        process owns raises one line naming that process."""
        return RunLock(self.lock_file)

    def check_writable(self) -> None:
        """Refuse, before any work, a run directory that cannot be created (a file in its place, a name
        too long): one :class:`~smoltrain.errors.OutputError` line."""
        check_output_path(self.root)

    def write_config(self, cfg: TrainConfig) -> None:
        with writing(self.root):
            self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config, config_to_yaml(cfg))

    def write_readme(self, text: str) -> None:
        atomic_write_text(self.readme, text)

    def append_error(self, text: str) -> Path | None:
        """Append ``text`` (a traceback, with a header line) to ``errors.log``; returns the log's path, or None when
        it cannot be written (the error being reported matters more than its log)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with self.error_log.open("a", encoding="utf-8") as log:
                log.write(text if text.endswith("\n") else text + "\n")
        except OSError:
            return None
        return self.error_log

    # ------------------------------------------------------------------------------------------
    # Checkpoints (their format: smoltrain.runs.checkpoint)

    def list_checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        return ckpt.list_checkpoints(self.checkpoints)

    def newest_checkpoint(self) -> Path | None:
        """The newest step directory by name, unverified (for messages; loading uses :meth:`newest_loadable`)."""
        found = self.list_checkpoints()
        return found[-1] if found else None

    def newest_loadable(self, fix: str = ckpt.DAMAGED_RUN_FIX,
                        with_base: bool = True) -> tuple[Path, ckpt.Contents] | None:
        """The newest checkpoint that verifies and loads, with its contents (damaged ones are skipped with a
        warning); None without any, and an error ending with ``fix`` when there are some and none loads.
        ``with_base=False``: an adapter checkpoint's adapters alone (``checkpoint.load_checkpoint``)."""
        return ckpt.newest_loadable(self.checkpoints, fix, with_base)

    def save_checkpoint(self, step: int, model_state: dict[str, torch.Tensor],
                        ema_state: dict[str, torch.Tensor] | None, trainer_state: dict[str, Any], keep: int,
                        protect_step: int | None = None) -> Path:
        """Write checkpoint ``step``; pruning keeps the newest ``keep`` and the one of ``protect_step`` (the best)."""
        protect = self.step_dir(protect_step) if protect_step is not None else None
        with writing(self.step_dir(step)):  # a full disk mid-run ends it with one line; the checkpoint is not left half
            return ckpt.save_checkpoint(self.checkpoints, step, model_state, ema_state, trainer_state, keep, protect)

    @property
    def best(self) -> Path:
        """``best.json``: the checkpoint with the best value of the ``keep_best`` metric (metric, step, value,
        checkpoint), which pruning keeps."""
        return self.root / "best.json"

    def read_best(self) -> dict[str, Any] | None:
        """The recorded best checkpoint, or None when there is none (or the record is unreadable: it is rebuilt)."""
        try:
            record = json.loads(self.best.read_text())
        except (OSError, ValueError):
            return None
        ok = isinstance(record, dict) and isinstance(record.get("step"), int) and isinstance(record.get("value"), float)
        return record if ok else None

    def write_best(self, metric: str, step: int, value: float) -> None:
        record = {"metric": metric, "step": step, "value": value, "checkpoint": str(self.step_dir(step))}
        atomic_write_text(self.best, json.dumps(record, indent=2) + "\n")

    def save_weights_only(self, step: int, model_state: dict[str, torch.Tensor], origin: dict[str, Any]) -> Path:
        with writing(self.step_dir(step)):
            return ckpt.save_weights_only(self.checkpoints, step, model_state, origin)

    # ------------------------------------------------------------------------------------------
    # Tokenizer

    def save_tokenizer(self, source: Path) -> list[str]:
        """Copy the tokenizer files found in ``source`` into ``tokenizer/``, unless it already holds a
        tokenizer (a resumed run keeps the one it trained with); returns the names copied."""
        if (self.tokenizer / TOKENIZER_FILES[0]).is_file():
            return []
        copied = [name for name in TOKENIZER_FILES if (source / name).is_file()]
        for name in copied:
            atomic_write_bytes(self.tokenizer / name, (source / name).read_bytes())
        return copied

    # ------------------------------------------------------------------------------------------
    # Writing a new run directory all at once (the importers)

    @staticmethod
    @contextmanager
    def create(output: str | Path) -> Iterator[RunDir]:
        """Yield a :class:`RunDir` on a temporary sibling of ``output`` to fill (config, weights, tokenizer,
        README); only when the body succeeds is it renamed to ``output``, so the run is complete or absent.
        ``output`` must not exist or be an empty directory."""
        output = RunDir.check_new(output)
        with atomic_directory(output) as tmp:
            yield RunDir(tmp)

    @staticmethod
    def check_new(output: str | Path) -> Path:
        """``output``, refused unless it is absent or an empty directory (importers ask before their work)."""
        output = check_output_path(output)
        if output.exists() and any(output.iterdir()):
            raise SmoltrainError(f"{output} already exists and is not empty; choose another --output or remove it")
        return output
