"""What one evaluation of a TRM-family run scores: evaluators, fed the test batches one by one.

`TRMFamily.evaluate` runs each test batch for ``halt_max_steps`` ACT steps and hands the last step's rows
(`EvalRows`) to every evaluator it chose for the dataset (`smoltrain.eval.evaluators_for`, once per run);
at the end every rank calls each evaluator's `result`, and the metrics are the union of what they report.

* `ExactAccuracy`: the reference metrics, which every kind gets: the loss head's sums (``count``,
  ``accuracy``, ``exact_accuracy``, ``q_halt_accuracy``, ``steps``, the losses) over the test set and all
  ranks, divided by the number of scored sequences.
* `smoltrain.eval.maze.MazePaths`: exact accuracy plus ``valid_optimal_path``.
* `smoltrain.eval.arc.ARCEvaluator`: ``ARC/pass@k`` from votes over augmentations, when the run asks for it.
* `SavedOutputs`: ``eval_save_outputs``, the rows' batch fields and model outputs saved to a file.

A new evaluator subclasses `Evaluator` and is chosen in `smoltrain.eval.evaluators_for`.
"""

from __future__ import annotations

import io
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from smoltrain.data.puzzles import IGNORE_LABEL_ID
from smoltrain.fileio import atomic_write_bytes
from smoltrain.runtime.distributed import all_reduce_sum

__all__ = ["EvalRows", "Evaluator", "ExactAccuracy", "SavedOutputs", "UnknownAnswers"]


@dataclass
class EvalRows:
    """One test batch after its last ACT step: this rank's rows, of which the first ``num_real`` are examples
    (the rest pad the batch to the local batch size)."""

    batch: Mapping[str, torch.Tensor]  # inputs, labels (IGNORE_LABEL_ID where not scored), puzzle_identifiers
    outputs: Mapping[str, torch.Tensor]  # the model outputs the evaluators asked for (their output_keys)
    metrics: Mapping[str, torch.Tensor]  # the loss head's sums over the batch
    num_real: int
    # With eval_augmentations: one `smoltrain.eval.voting.ViewTrace` per view (view 0 the puzzle as it is).
    views: Sequence = ()
    _scored: np.ndarray | None = field(default=None, repr=False)

    def real(self, key: str) -> torch.Tensor:
        """Batch field or model output ``key`` of the real rows."""
        value = self.batch[key] if key in self.batch else self.outputs[key]
        return value[: self.num_real]

    def scored(self, key: str) -> np.ndarray:
        """``key`` of the real rows with at least one label, as a numpy array (floats in float32)."""
        if self._scored is None:
            self._scored = (self.real("labels") != IGNORE_LABEL_ID).any(-1).cpu().numpy()
        value = self.real(key)
        return (value.float() if value.is_floating_point() else value).cpu().numpy()[self._scored]


class Evaluator(ABC):
    """Scores the rows of one evaluation: `begin`, `add` for every test batch, then `result` on every rank."""

    output_keys: tuple[str, ...] = ()  # the model outputs `add` reads (``preds``, ``q_halt_logits``, ...)

    def begin(self) -> None:  # noqa: B027 - most evaluators keep nothing between evaluations
        """Start an evaluation."""

    @abstractmethod
    def add(self, rows: EvalRows) -> None:
        """Take one test batch."""

    @abstractmethod
    def result(self, report_dir: Path | None = None) -> dict[str, float] | None:
        """The metrics (None: nothing on this rank); collective, so every rank calls it. Reports that go with
        them are written to ``report_dir`` when given."""


class ExactAccuracy(Evaluator):
    """The reference metrics: the loss head's per-batch sums, summed over the test set and all ranks, each
    divided by ``count`` (the scored sequences). Subclasses add sums of their own with `_add`."""

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}

    def begin(self) -> None:
        self._sums = {}

    def _add(self, key: str, value: torch.Tensor) -> None:
        value = value.float()
        self._sums[key] = self._sums[key] + value if key in self._sums else value.clone()

    def add(self, rows: EvalRows) -> None:
        for key, value in rows.metrics.items():
            self._add(key, value)

    def result(self, report_dir: Path | None = None) -> dict[str, float]:
        if not self._sums:
            return {}
        names = sorted(self._sums)
        totals = dict(zip(names, all_reduce_sum(torch.stack([self._sums[k] for k in names])).tolist(), strict=True))
        count = totals.pop("count")
        return {"count": count, **{k: (v / count if count else 0.0) for k, v in totals.items()}}


class UnknownAnswers(Evaluator):
    """Instead of `ExactAccuracy` on test data whose labels are not the answers (an ARC test set built without
    its solutions file holds dummy labels): reports no accuracy, and says once per evaluation that there is
    nothing to score, rather than a 0% measured against dummies."""

    def __init__(self, roots: Sequence[str | Path]) -> None:
        self.roots = [str(root) for root in roots]

    def add(self, rows: EvalRows) -> None:
        pass  # the loss head's sums compare with dummy labels: nothing in them means anything

    def result(self, report_dir: Path | None = None) -> dict[str, float]:
        warnings.warn(f"evaluation: the test split of {', '.join(self.roots)} has no solutions (built without a "
                      "solutions file), so no accuracy is reported", stacklevel=2)
        return {}


class SavedOutputs(Evaluator):
    """``eval_save_outputs``: the named batch fields (``inputs``, ``labels``, ``puzzle_identifiers``) and model
    outputs (``logits``, ``preds``, ``q_halt_logits`` ...) of this rank's real rows, saved to ``path`` with
    ``torch.save`` as the reference does. Reports no metric."""

    def __init__(self, keys: Sequence[str], path: Path) -> None:
        self.keys = tuple(keys)
        self.output_keys = self.keys  # the batch fields among them are not model outputs; the loss head skips them
        self.path = path
        self._saved: dict[str, list[torch.Tensor]] = {}

    def begin(self) -> None:
        self._saved = {key: [] for key in self.keys}

    def add(self, rows: EvalRows) -> None:
        for key in self.keys:
            self._saved[key].append(rows.real(key).cpu())

    def result(self, report_dir: Path | None = None) -> None:
        buffer = io.BytesIO()
        torch.save({k: torch.cat(v) for k, v in self._saved.items() if v}, buffer)
        atomic_write_bytes(self.path, buffer.getvalue())
        return None
