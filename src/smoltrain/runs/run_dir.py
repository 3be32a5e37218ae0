"""The run directory: every path in it, and the one way a run directory is written.

A run directory, as the trainer and the importers (``smoltrain import hf|minimind|trm``) leave it::

    RUN/
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
      step_1234_all_preds.0          evaluation outputs of rank 0, with eval_save_outputs (the reference's name)
      reference_all_config.yaml      an imported TRM run only: the reference's own config

An imported run is a run like any other: its weights are a *weights-only* checkpoint (see
:func:`smoltrain.runs.checkpoint.save_weights_only`) in ``checkpoints/``, which loading uses as it
is and from which training goes on at its step with fresh optimizer state.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from smoltrain.config import TrainConfig, config_to_yaml, read_saved_config
from smoltrain.data.tokenizer import TOKENIZER_FILES
from smoltrain.errors import ConfigError, SmoltrainError
from smoltrain.families import validate
from smoltrain.fileio import atomic_directory, atomic_write_bytes, atomic_write_text
from smoltrain.runs import checkpoint as ckpt

__all__ = ["RunDir"]


class RunDir:
    """The paths of one run directory (``RunDir(path)`` touches no file) and what reads and writes them."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    # ------------------------------------------------------------------------------------------
    # The layout

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
    def error_log(self) -> Path:
        return self.root / "errors.log"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

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
        return self.root / "eval" / Path(checkpoint).name

    def predictions(self, step: int, rank: int) -> Path:
        """The evaluation outputs of ``rank`` at ``step`` (``eval_save_outputs``), named as the reference names them."""
        return self.root / f"step_{step}_all_preds.{rank}"

    # ------------------------------------------------------------------------------------------
    # Config and README

    def load_config(self, overrides: list[str] | None = None) -> TrainConfig:
        """The run's saved config, with ``overrides`` (``key=value``) on top."""
        if not self.config.is_file():
            raise ConfigError(f"{self.root} is not a run directory (no {self.config.name}); "
                              "train one with `smoltrain train`")
        return validate(read_saved_config(self.config, overrides))

    def write_config(self, cfg: TrainConfig) -> None:
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
        found = self.list_checkpoints()
        return found[-1] if found else None

    def newest_loadable(self) -> tuple[Path, tuple] | None:
        """The newest checkpoint that loads, with its contents (damaged ones are skipped with a warning)."""
        return ckpt.newest_loadable(self.checkpoints)

    def save_checkpoint(self, step: int, model_state: dict[str, torch.Tensor],
                        ema_state: dict[str, torch.Tensor] | None, trainer_state: dict[str, Any], keep: int) -> Path:
        return ckpt.save_checkpoint(self.checkpoints, step, model_state, ema_state, trainer_state, keep)

    def save_weights_only(self, step: int, model_state: dict[str, torch.Tensor], origin: dict[str, Any]) -> Path:
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
        output = Path(output)
        if output.exists() and (not output.is_dir() or any(output.iterdir())):
            raise SmoltrainError(f"{output} already exists and is not empty; choose another --output or remove it")
        return output
