"""Test-time voting over augmented views of every puzzle (``eval_augmentations=K``), and the halt-first ensemble.

`TRMFamily.evaluate` runs each test batch K times, once per view of the kind (`PuzzleKind.test_views`: view 0 is
the puzzle itself), maps every view's answers back to the original puzzle and hands them over as `ViewTrace` s.
Per puzzle, identical answers are grouped and ranked by (votes, mean sigmoid(q_halt)) -- `rank_candidates`, the
ranking the ARC evaluator uses too. Reported: ``<score>@1`` (view 0 alone: today's number), ``<score>@K`` (the
top-ranked answer), and the halt-first ensemble: per puzzle, the answer at the first ACT step at which some view's
sigmoid(q_halt) exceeds ``eval_halt_threshold`` (several views: the most confident; none ever: the @K vote), with
``halt_first/mean_steps`` (ACT steps to that answer; the evaluation itself still runs every step).
Scores: ``exact_accuracy`` for every kind, ``valid_optimal_path`` for mazes too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from smoltrain.data.puzzles import IGNORE_LABEL_ID
from smoltrain.eval.base import EvalRows, Evaluator
from smoltrain.runtime.distributed import all_reduce_sum

__all__ = ["Candidate", "RowScore", "ViewTrace", "ViewVoting", "exact_rows", "rank_candidates", "vote"]

RowScore = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (inputs, labels, preds) -> bool per row


@dataclass
class Candidate:
    key: bytes
    votes: int
    mean_q: float


def rank_candidates(votes: Mapping[bytes, list[float]]) -> list[Candidate]:
    """Candidates best first: most votes, then highest mean confidence, then the key (order-free ties)."""
    candidates = [Candidate(key, len(qs), math.fsum(qs) / len(qs)) for key, qs in votes.items()]
    candidates.sort(key=lambda c: c.key)
    candidates.sort(key=lambda c: (c.votes, c.mean_q), reverse=True)  # stable: keeps the key order on ties
    return candidates


def vote(preds: np.ndarray, confidences: np.ndarray) -> np.ndarray:
    """The winning answer per row: ``preds`` [K, B, L] (mapped back), ``confidences`` [K, B] -> [B, L]."""
    out = np.empty(preds.shape[1:], dtype=preds.dtype)
    for b in range(preds.shape[1]):
        votes: dict[bytes, list[float]] = {}
        answers: dict[bytes, np.ndarray] = {}
        for k in range(preds.shape[0]):
            key = np.ascontiguousarray(preds[k, b]).tobytes()
            votes.setdefault(key, []).append(float(confidences[k, b]))
            answers.setdefault(key, preds[k, b])
        out[b] = answers[rank_candidates(votes)[0].key]
    return out


def exact_rows(inputs: np.ndarray, labels: np.ndarray, preds: np.ndarray) -> np.ndarray:
    supervised = labels != IGNORE_LABEL_ID
    return np.all((preds == labels) | ~supervised, axis=-1) & supervised.any(axis=-1)


def _sigmoid(x: torch.Tensor) -> np.ndarray:
    return torch.sigmoid(x.double()).cpu().numpy()


class ViewTrace:
    """One view's run over a batch, fed step by step: its last answer and the first step where it would halt."""

    def __init__(self, view, threshold: float) -> None:  # type: ignore[no-untyped-def]
        self.view, self.threshold = view, threshold
        self.steps = 0
        self.halt_step: np.ndarray | None = None  # 1-based step of the first crossing, 0: never
        self.halt_preds: np.ndarray | None = None
        self.halt_q: np.ndarray | None = None

    def record(self, preds: torch.Tensor, q_halt_logits: torch.Tensor) -> None:
        self.steps += 1
        answer = self.view.invert(preds).cpu().numpy()
        q = _sigmoid(q_halt_logits)
        if self.halt_step is None:
            self.halt_step = np.zeros(q.shape[0], dtype=np.int64)
            self.halt_preds, self.halt_q = answer.copy(), q.copy()
        first = (self.halt_step == 0) & (q > self.threshold)
        self.halt_step[first] = self.steps
        self.halt_preds[first], self.halt_q[first] = answer[first], q[first]
        self.last_preds, self.last_q = answer, q


class ViewVoting(Evaluator):
    """``<score>@1``, ``<score>@K`` and ``halt_first/*`` from the `ViewTrace` s of `EvalRows.views`."""

    def __init__(self, scores: Mapping[str, RowScore], views: int) -> None:
        self.scores, self.views = dict(scores), views
        self._sums: dict[str, float] = {}

    def begin(self) -> None:
        self._sums = {}

    def _add(self, key: str, value: float) -> None:
        self._sums[key] = self._sums.get(key, 0.0) + float(value)

    def add(self, rows: EvalRows) -> None:
        traces = rows.views
        n = rows.num_real
        labels = rows.real("labels").cpu().numpy()
        scored = (labels != IGNORE_LABEL_ID).any(-1)
        if not traces or not scored.any():
            return
        inputs = rows.real("inputs").cpu().numpy()[scored]
        labels = labels[scored]
        last = np.stack([t.last_preds[:n] for t in traces])[:, scored]
        last_q = np.stack([t.last_q[:n] for t in traces])[:, scored]
        voted = vote(last, last_q)
        halt_step = np.stack([t.halt_step[:n] for t in traces])[:, scored]  # [K, B]
        halt_q = np.stack([t.halt_q[:n] for t in traces])[:, scored]
        halt_preds = np.stack([t.halt_preds[:n] for t in traces])[:, scored]
        crossed = halt_step > 0
        first = np.where(crossed, halt_step, np.iinfo(np.int64).max).min(axis=0)  # [B]
        at_first = crossed & (halt_step == first[None])
        best = np.where(at_first, halt_q, -1.0).argmax(axis=0)
        cols = np.arange(best.shape[0])
        ever = crossed.any(axis=0)
        halted = np.where(ever[:, None], halt_preds[best, cols], voted)
        steps = np.where(ever, first, traces[0].steps)
        self._add("count", scored.sum())
        self._add("halt_first/mean_steps", steps.sum())
        for name, score in self.scores.items():
            self._add(f"{name}@1", score(inputs, labels, last[0]).sum())
            self._add(f"{name}@{self.views}", score(inputs, labels, voted).sum())
            self._add(f"halt_first/{name}", score(inputs, labels, halted).sum())

    def result(self, report_dir: Path | None = None) -> dict[str, float]:
        if not self._sums:
            return {}
        names = sorted(self._sums)
        totals = dict(zip(names, all_reduce_sum(torch.tensor([self._sums[k] for k in names],
                                                             dtype=torch.float64)).tolist(), strict=True))
        count = totals.pop("count")
        return {k: (v / count if count else 0.0) for k, v in totals.items()}
