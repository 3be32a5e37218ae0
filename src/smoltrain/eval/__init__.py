"""Evaluators that score a model's predictions (exact accuracy, maze paths, ARC voting pass@k, ...), and
which of them a puzzle dataset gets (see `smoltrain.eval.base`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from smoltrain.data.puzzles import PuzzleKind
from smoltrain.eval.arc import ARCEvaluator
from smoltrain.eval.base import EvalRows, Evaluator, ExactAccuracy, SavedOutputs, UnknownAnswers
from smoltrain.eval.maze import MazePaths, valid_optimal_paths
from smoltrain.eval.voting import RowScore, ViewVoting, exact_rows

__all__ = ["ACCURACY_BY_KIND", "ARCEvaluator", "EvalRows", "Evaluator", "ExactAccuracy", "MazePaths", "SavedOutputs",
           "UnknownAnswers", "ViewVoting", "evaluators_for", "voting_scores"]

# The accuracy evaluator of a kind whose right answers are not only the labelled ones; others get ExactAccuracy.
ACCURACY_BY_KIND: dict[str, type[ExactAccuracy]] = {"maze": MazePaths}


def evaluators_for(kind: PuzzleKind, roots: Sequence[str | Path], arc_options: Mapping[str, Any] | None,
                   solutions: bool = True) -> list[Evaluator]:
    """The evaluators of a run on the datasets ``roots`` of ``kind`` (read one after another, as `PuzzleDataset`
    concatenates them): its kind's accuracy, and the ARC voting evaluator when the run asks for it
    (``arc_options``: its keyword arguments). Without ``solutions`` (a test split whose labels are dummies) no
    accuracy is computed (`UnknownAnswers`); the ARC evaluator then only submits. Built once per run, since the
    ARC votes may pool over its evaluations."""
    accuracy = ACCURACY_BY_KIND.get(kind.name, ExactAccuracy)() if solutions else UnknownAnswers(roots)
    evaluators: list[Evaluator] = [accuracy]
    if arc_options is not None:
        evaluators.append(ARCEvaluator(roots, **arc_options))
    return evaluators


def voting_scores(kind: PuzzleKind) -> dict[str, RowScore]:
    """What test-time voting scores per row on ``kind``: exact match, and for mazes a valid shortest path."""
    scores: dict[str, RowScore] = {"exact_accuracy": exact_rows}
    if kind.name == "maze":
        scores["valid_optimal_path"] = lambda inputs, labels, preds: valid_optimal_paths(inputs, preds)
    return scores
