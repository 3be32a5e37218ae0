"""ARC evaluation: undo each prediction's augmentation, vote across augmentations, score pass@k, write a submission.

Semantics follow the reference `evaluators/arc.py` (TRM), with the differences listed at the end.

Per row (`ARCEvaluator.update`):

* Rows with puzzle identifier 0 (the blank id the test loader pads short batches with) are dropped.
* The identifier's name (`identifiers.json`) gives the original task, the dihedral transform and the colour
  map the row was built with (`smoltrain.data.augment.parse_arc_name`).
* Both the input and the prediction are cropped (`crop_sizes`) and de-augmented: inverse dihedral
  transform, then inverse colour map (the two commute; this is the reference order).
* The de-augmented *input* is hashed to find which test pair of the task the row belongs to (a task can have
  several test inputs and the row does not say which one it is). A row whose input matches no test input of
  its task (or whose task is not in `test_puzzles.json`) is counted as unmatched and reported in
  `arc_scores.json`; it casts no vote.
* The row casts one vote for its de-augmented prediction, with confidence sigmoid(q_halt logit) in float64.

Crop (`crop_sizes`, exactly the reference `_crop`): on the n x n canvas (30x30 in the reference; n is the
square root of the rows' length, so datasets built with `--canvas-size` work unchanged), a cell is a colour
when its token is 2..11 (PAD 0, EOS 1 and anything above 11 are not). Walking down the rows, the usable width
is the running minimum over rows of "cells before the first non-colour cell"; the crop is the top-left
rectangle of height h and that running width at h with the largest area (the first, i.e. the shortest, on
ties). So it is the largest-area top-left rectangle made only of colour cells. An n x n canvas full of colours
crops to n x n (no EOS needed); a prediction with a non-colour token at the top-left crops to an empty 0x0 grid.

Voting (`ARCEvaluator.result`): per test pair, identical de-augmented predictions are grouped; candidates
rank by (vote count, mean sigmoid(q_halt)) descending. pass@k for a pair = the label is among the top k.
A task's score at k = the fraction of its test pairs solved; `ARC/pass@k` = the mean over every task of
`test_puzzles.json` (a task without predictions scores 0).

Invalid predictions: an empty crop is an ordinary candidate in the vote, as in the reference: it can take a
top-k slot but never equals a label (ARC grids are at least 1x1), so it only ever costs pass@k. The
submission skips it (see below).

Pooling: as in the reference (`aggregated_voting=True`), votes are kept across `begin()` by default
(`pool_evaluations=True`), so the k-th evaluation of a run pools the votes of all k checkpoints evaluated so
far; `pool_evaluations=False` clears them at every `begin()` and scores each checkpoint on its own.

Differences from the reference, on purpose:

* Works in one process without `torch.distributed`; gathers across ranks only when a process group with
  more than one rank is initialised.
* Exact ties in (count, mean confidence) are broken by the candidate's hash, so the ranking does not depend
  on the row order (the reference keeps the arrival order, which differs between single- and multi-rank
  runs). Mean confidences are summed with `math.fsum` (exactly rounded, order-free) for the same reason.
* `submission.json` takes its attempts from the best-ranked *valid* (non-empty) candidates; when there
  are fewer than `submission_k`, the attempts are padded with the first; a test input without any valid
  candidate gets a grid of zeros the shape of that test input (the Kaggle format needs a grid there, and
  the shape is a better guess than 1x1).

Several datasets (``data_paths=[a, b]``): the evaluator reads them as `PuzzleDataset` concatenates them, the
identifiers of each root after those of the roots before it, and scores the test tasks of all of them together
(one `ARC/pass@k`, one submission.json); a task id in two roots must have the same test pairs there.

Distributed: every rank calls `result()`; when `torch.distributed` is initialised with more than one rank, the
votes go to rank 0 with `gather_object` (on the default group, or on `group=` given to the constructor, e.g.
a gloo group next to NCCL; under NCCL the rank's CUDA device must be set, as `torchrun` set-up does).
Two test inputs of one task that are the same grid share their votes (the row cannot tell them apart).

Unknown solutions: a test pair without an "output" in `test_puzzles.json` (a dataset built without a solutions
file, e.g. Kaggle's hidden test set) still gets submission attempts but is not scored: a task's score is over
its pairs with outputs, `ARC/pass@k` over the tasks with at least one; when some tasks have none,
`ARC/unscored_tasks` counts them and a warning says so, and when no task has one there is no `ARC/pass@k` at
all ("nothing to score"), never a 0% measured against unknown answers.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from smoltrain.data.arc import COLOUR_OFFSET, EOS_ID, GRID_SIZE, PAD_ID, crop_grid, crop_sizes
from smoltrain.data.augment import inverse_colour_permutation, parse_arc_name
from smoltrain.data.puzzles import load_identifiers
from smoltrain.errors import ConfigError, DataError
from smoltrain.eval.base import EvalRows, Evaluator
from smoltrain.eval.voting import Candidate, rank_candidates
from smoltrain.fileio import atomic_write_text, read_json

__all__ = [
    "ARC_OPTIONS",
    "ARCEvaluator",
    "CANVAS_SIZE",
    "COLOUR_OFFSET",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "arc_evaluator_options",
    "crop_grid",
    "crop_sizes",
    "deaugment_grid",
    "grid_key",
    "votable",
]

PAD_TOKEN, EOS_TOKEN = PAD_ID, EOS_ID  # the format's constants (data/arc.py)
# The reference's (and the largest) canvas side; a dataset's own is sqrt(seq_len), read from the rows.
CANVAS_SIZE = GRID_SIZE
# How many of each test pair's best candidates arc_scores.json lists.
REPORTED_CANDIDATES = 10


# ------------------------------------------------------------------------------------------------
# Options

# The reference's option names of its ARC evaluator, and ours.
ARC_OPTIONS = {"submission_K": "submission_k", "pass_Ks": "pass_ks", "aggregated_voting": "pool_evaluations",
               "submission_k": "submission_k", "pass_ks": "pass_ks", "pool_evaluations": "pool_evaluations"}


def arc_evaluator_options(evaluators: str | list[Any], arc_data: bool) -> dict[str, Any] | None:
    """The ARC evaluator's keyword arguments from ``evaluators`` (None when it is not asked for).

    ``"auto"`` (the default) is the reference's default config (``evaluators: [arc@ARC]``) where it fits: the
    evaluator with the reference's defaults when the test data is ARC (``arc_data``), nothing otherwise.
    Explicitly, the reference writes ``evaluators=[{name: arc@ARC}]``; its ``aggregated_voting`` (pooling votes
    over every evaluation of a run, on by default there and here) is ``pool_evaluations``.
    """
    if evaluators == "auto":
        return {} if arc_data else None
    if isinstance(evaluators, str):
        raise ConfigError(f"evaluators: {evaluators!r} is not a list; write evaluators=auto, evaluators=[] or "
                          "evaluators=[{name: arc}]")
    options: dict[str, Any] | None = None
    for entry in evaluators:
        entry = {"name": entry} if isinstance(entry, str) else dict(entry)
        name = str(entry.pop("name", ""))
        if name.split("@")[0].lower() != "arc":
            raise ConfigError(f"evaluators: unknown evaluator {name!r}; the one there is is the ARC voting "
                              "evaluator: evaluators=[{name: arc}] (or [] for the exact-accuracy metrics only)")
        unknown = sorted(set(entry) - set(ARC_OPTIONS))
        if unknown:
            raise ConfigError(f"evaluators: the arc evaluator has no option {unknown[0]!r}; choose from "
                              f"{', '.join(sorted(set(ARC_OPTIONS)))}")
        options = {ARC_OPTIONS[key]: value for key, value in entry.items()}
    return options


def votable(root: str | os.PathLike[str]) -> bool:
    """Whether the ARC evaluator can vote on the dataset ``root``: it has the task list and the names it reads
    (``test_puzzles.json``, ``identifiers.json``, written by `smoltrain data arc` and the reference builder)."""
    return (Path(root) / "test_puzzles.json").is_file() and (Path(root) / "identifiers.json").is_file()


# ------------------------------------------------------------------------------------------------
# Canvas -> grid


# Inverse dihedral transforms as plain slicing views (`np.rot90`/`np.flip` cost microseconds of argument
# handling per call, and the evaluator undoes ~1M grids per ARC evaluation). `_UNDO_DIHEDRAL[k]` is
# `inverse_dihedral_transform(., k)`; tests check the two agree for all 8 ids.
_UNDO_DIHEDRAL = (
    lambda m: m,  # 0 identity
    lambda m: m[::-1].T,  # 1 undoes rot90 by rot270
    lambda m: m[::-1, ::-1],  # 2 rot180 is its own inverse
    lambda m: m[:, ::-1].T,  # 3 undoes rot270 by rot90
    lambda m: m[:, ::-1],  # 4 left-right flip
    lambda m: m[::-1],  # 5 up-down flip
    lambda m: m.T,  # 6 transpose
    lambda m: m[::-1, ::-1].T,  # 7 anti-diagonal reflection
)


def deaugment_grid(grid: np.ndarray, dihedral: int, inverse_mapping: np.ndarray) -> np.ndarray:
    """Undo an augmentation: inverse dihedral transform, then the inverse colour map (`inverse[new] = old`).

    Same result as `inverse_dihedral_transform` followed by `apply_colour_permutation(., inverse_mapping)`.
    """
    if not 0 <= dihedral < len(_UNDO_DIHEDRAL):
        raise ValueError(f"dihedral transform id must be in 0..7, got {dihedral}")
    restored = _UNDO_DIHEDRAL[dihedral](np.asarray(grid))
    return np.asarray(inverse_mapping, dtype=np.uint8)[restored]


def grid_key(grid: np.ndarray) -> bytes:
    """A 16-byte digest of a grid's shape and cells: equal grids, equal keys (shape included, so a 2x3 and a
    3x2 grid with the same cells differ). Votes are stored by key, so each distinct grid is kept once."""
    grid = np.ascontiguousarray(np.asarray(grid, dtype=np.uint8))
    digest = hashlib.blake2b(digest_size=16)
    digest.update(np.asarray(grid.shape, dtype=np.int32).tobytes())
    digest.update(grid.tobytes())
    return digest.digest()


# ------------------------------------------------------------------------------------------------
# The test set


@dataclass
class _TestTask:
    """One task of test_puzzles.json: its test inputs (for the output placeholder) and their labels."""

    inputs: list[np.ndarray]
    label_keys: list[bytes | None]  # None when the file has no output for that test input
    # De-augmented input key -> every test pair with that input (two equal test inputs share their votes).
    pairs_by_input: dict[bytes, list[int]] = field(default_factory=dict)


def _as_grid(value: object, where: str) -> np.ndarray:
    try:
        grid = np.asarray(value, dtype=np.int64)
    except (TypeError, ValueError):
        grid = np.zeros(0)
    if grid.ndim != 2 or grid.size == 0 or grid.min() < 0 or grid.max() >= 10:
        raise DataError(f"{where} is not a grid of colours 0..9 (a non-empty list of equal-length rows): "
                        "rebuild the dataset with `smoltrain data arc`")
    return grid.astype(np.uint8)


def _load_test_puzzles(path: Path, root: Path) -> dict[str, _TestTask]:
    if not path.is_file():
        raise DataError(f"{root} is not an ARC dataset built by `smoltrain data arc` (missing {path.name}): "
                        f"build one with `smoltrain data arc --output-dir {root}`")
    raw = read_json(path, dict, "rebuild the dataset with `smoltrain data arc`")  # task id -> its test pairs
    tasks: dict[str, _TestTask] = {}
    for task_id, puzzle in raw.items():
        tests = puzzle.get("test") if isinstance(puzzle, dict) else None
        if not isinstance(tests, list) or not tests or not all(isinstance(t, dict) for t in tests):
            raise DataError(f"{path}: task {task_id!r} has no list of test pairs: rebuild the dataset")
        task = _TestTask(inputs=[], label_keys=[])
        for index, pair in enumerate(tests):
            where = f"{path}: task {task_id!r} test pair {index}"
            grid = _as_grid(pair.get("input"), f"{where} input")
            task.inputs.append(grid)
            task.pairs_by_input.setdefault(grid_key(grid), []).append(index)
            output = pair.get("output")
            task.label_keys.append(None if output is None else grid_key(_as_grid(output, f"{where} output")))
        tasks[str(task_id)] = task
    return tasks


# ------------------------------------------------------------------------------------------------
# The evaluator


_Candidate = Candidate  # the ranking and its candidates live in smoltrain.eval.voting


class ARCEvaluator(Evaluator):
    """Votes over augmented predictions of the ARC test split; see the module docstring for the semantics.

    Call `begin()` at the start of each evaluation, `update(...)` with each batch's real rows (or `add` with
    the rows of a TRM evaluation), then `result(output_dir)` on every rank: rank 0 gets
    `{"ARC/pass@k": score}` and writes `submission.json` and `arc_scores.json` into `output_dir` when given;
    other ranks get None.
    """

    output_keys = ("preds", "q_halt_logits")

    def __init__(
        self,
        data_path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        submission_k: int = 2,
        pass_ks: Sequence[int] = (1, 2, 5, 10, 100, 1000),
        pool_evaluations: bool = True,
        *,
        group: object | None = None,
    ) -> None:
        if submission_k < 1:
            raise ConfigError(f"submission_k must be at least 1, got {submission_k}")
        if not pass_ks or any(int(k) < 1 for k in pass_ks):
            raise ConfigError(f"pass_ks must be positive integers, got {list(pass_ks)}")
        roots = [Path(data_path)] if isinstance(data_path, (str, os.PathLike)) else [Path(p) for p in data_path]
        if not roots:
            raise ConfigError("the ARC evaluator needs at least one dataset path")
        self.data_paths = roots
        self.data_path = roots[0]
        self.submission_k = int(submission_k)
        self.pass_ks = tuple(int(k) for k in pass_ks)
        self.pool_evaluations = bool(pool_evaluations)
        self.group = group  # process group for the gather (None: the default group)
        # Several roots read as one, as `PuzzleDataset` concatenates them: the identifiers of root i follow those
        # of the roots before it (the blank id 0 shared), and the tasks of all roots are scored together.
        self.tasks: dict[str, _TestTask] = {}
        self.identifiers: list[str] = []
        for index, root in enumerate(roots):
            for task_id, task in _load_test_puzzles(root / "test_puzzles.json", root).items():
                known = self.tasks.setdefault(task_id, task)
                if known is not task and (known.label_keys != task.label_keys
                                          or [grid_key(g) for g in known.inputs] != [grid_key(g) for g in task.inputs]):
                    raise DataError(f"task {task_id!r} is in two of the test datasets {[str(r) for r in roots]} with "
                                    "different test pairs: evaluate them one at a time")
            names = load_identifiers(root)
            if names is None:
                raise DataError(f"{root} is not an ARC dataset built by `smoltrain data arc` (missing "
                                f"identifiers.json): build one with `smoltrain data arc --output-dir {root}`")
            self.identifiers.extend(names if index == 0 else names[1:])
        # identifier -> (task, dihedral id, inverse colour map), parsed on first use (there are ~1M names).
        self._augmentations: dict[int, tuple[str, int, np.ndarray]] = {}
        self._clear()

    # --- state -----------------------------------------------------------------------------------

    def _clear(self) -> None:
        # (task, test pair) -> candidate key -> the sigmoid(q_halt) of each vote for it.
        self._votes: dict[tuple[str, int], dict[bytes, list[float]]] = {}
        self._grids: dict[bytes, np.ndarray] = {}  # candidate key -> de-augmented grid
        self._unmatched: Counter[str] = Counter()  # task -> rows whose input is no test input of it
        self._rows = 0
        self.unmatched_rows = 0  # set by result(): rows (all ranks) whose input matched no test input

    def begin(self) -> None:
        """Start an evaluation: forget the previous evaluation's votes unless `pool_evaluations` (the default)."""
        if not self.pool_evaluations:
            self._clear()

    def _augmentation(self, identifier: int) -> tuple[str, int, np.ndarray]:
        cached = self._augmentations.get(identifier)
        if cached is None:
            if not 0 < identifier < len(self.identifiers):
                raise DataError(
                    f"puzzle identifier {identifier} is not among the {len(self.identifiers)} names of "
                    f"{', '.join(str(r / 'identifiers.json') for r in self.data_paths)}: the predictions come from a "
                    "different dataset; "
                    "evaluate with the dataset the model was trained on")
            name = self.identifiers[identifier]
            try:
                task, dihedral, mapping = parse_arc_name(name)
            except ValueError as e:
                raise DataError(f"{e}: {', '.join(map(str, self.data_paths))} is not an ARC dataset built by "
                                "`smoltrain data arc`") from None
            cached = (task, dihedral, inverse_colour_permutation(mapping).astype(np.uint8))
            self._augmentations[identifier] = cached
        return cached

    # --- per batch -------------------------------------------------------------------------------

    def add(self, rows: EvalRows) -> None:
        self.update(rows.scored("inputs"), rows.scored("puzzle_identifiers"), rows.scored("preds"),
                    rows.scored("q_halt_logits"))

    def update(
        self,
        inputs: np.ndarray,
        puzzle_identifiers: np.ndarray,
        preds: np.ndarray,
        q_halt_logits: np.ndarray,
    ) -> None:
        """Record one batch: `inputs`/`preds` `[B, n*n]` tokens (n x n the dataset's canvas, 30x30 by default),
        `puzzle_identifiers` `[B]`, `q_halt_logits` `[B]`.

        Rows with identifier 0 (padding) are dropped. Accepts numpy arrays or CPU tensors.
        """
        identifiers = np.asarray(puzzle_identifiers).reshape(-1).astype(np.int64)
        inputs = np.asarray(inputs).reshape(identifiers.shape[0], -1)
        preds = np.asarray(preds).reshape(identifiers.shape[0], -1)
        logits = np.asarray(q_halt_logits, dtype=np.float64).reshape(-1)
        seq_len = inputs.shape[1]
        square = seq_len > 0 and math.isqrt(seq_len) ** 2 == seq_len  # the canvas side comes from the rows
        if not square or preds.shape[1] != seq_len or logits.shape[0] != identifiers.shape[0]:
            raise ValueError("ARCEvaluator.update expects [B, n*n] inputs and preds (one n x n canvas per row) and "
                             f"[B] ids and logits, got {inputs.shape}, {preds.shape}, {identifiers.shape}, "
                             f"{logits.shape}")
        keep = identifiers != 0
        if not keep.any():
            return
        identifiers, inputs, preds, logits = identifiers[keep], inputs[keep], preds[keep], logits[keep]
        with np.errstate(over="ignore"):
            confidences = 1.0 / (1.0 + np.exp(-logits))  # float64 sigmoid, as the reference
        input_heights, input_widths = crop_sizes(inputs)
        pred_heights, pred_widths = crop_sizes(preds)
        for row in range(identifiers.shape[0]):
            self._rows += 1
            task_id, dihedral, inverse_mapping = self._augmentation(int(identifiers[row]))
            task = self.tasks.get(task_id)
            source = deaugment_grid(crop_grid(inputs[row], input_heights[row], input_widths[row]),
                                    dihedral, inverse_mapping)
            pairs = task.pairs_by_input.get(grid_key(source)) if task is not None else None
            if not pairs:
                self._unmatched[task_id] += 1
                continue
            answer = deaugment_grid(crop_grid(preds[row], pred_heights[row], pred_widths[row]),
                                    dihedral, inverse_mapping)
            key = grid_key(answer)
            self._grids.setdefault(key, answer)
            for pair in pairs:
                self._votes.setdefault((task_id, pair), {}).setdefault(key, []).append(float(confidences[row]))

    # --- result ----------------------------------------------------------------------------------

    def _gathered_state(self) -> tuple[bool, list[tuple]]:
        """(is rank 0, every rank's state); the gather only happens with >1 initialised ranks."""
        state = (self._votes, self._grids, dict(self._unmatched), self._rows)
        try:
            import torch.distributed as dist
        except ImportError:  # a torch build without distributed support
            return True, [state]
        if not (dist.is_available() and dist.is_initialized()):
            return True, [state]
        world_size = dist.get_world_size(self.group)
        if world_size <= 1:
            return True, [state]
        rank = dist.get_rank(self.group)
        dst = 0 if self.group is None else dist.get_global_rank(self.group, 0)
        gathered: list | None = [None] * world_size if rank == 0 else None
        dist.gather_object(state, gathered, dst=dst, group=self.group)
        return rank == 0, gathered or []

    def _ranked(self, votes: dict[bytes, list[float]]) -> list[_Candidate]:
        return rank_candidates(votes)  # the one ranking of votes, shared with test-time voting on every kind

    def result(self, output_dir: str | os.PathLike[str] | None = None) -> dict[str, float] | None:
        """Score the votes of this evaluation (of all evaluations with `pool_evaluations`).

        Every rank must call it. Rank 0 returns `{"ARC/pass@k": score}` for each k in `pass_ks` (over the tasks
        with known test outputs; with `ARC/unscored_tasks` when some have none, and only that when none has one)
        and, when `output_dir` is given, writes `submission.json` and `arc_scores.json` there atomically; other
        ranks return None.
        """
        is_main, states = self._gathered_state()
        if not is_main:
            return None
        votes: dict[tuple[str, int], dict[bytes, list[float]]] = {}
        grids: dict[bytes, np.ndarray] = {}
        unmatched: Counter[str] = Counter()
        rows = 0
        for rank_votes, rank_grids, rank_unmatched, rank_rows in states:
            for pair, by_key in rank_votes.items():
                merged = votes.setdefault(pair, {})
                for key, qs in by_key.items():
                    merged.setdefault(key, []).extend(qs)
            grids.update(rank_grids)
            unmatched.update(rank_unmatched)
            rows += rank_rows

        task_scores: dict[str, dict] = {}
        submission: dict[str, list[dict[str, list[list[int]]]]] = {}
        totals = dict.fromkeys(self.pass_ks, 0.0)
        unscored: list[str] = []  # tasks none of whose test pairs has a known output
        for task_id, task in self.tasks.items():
            solved = dict.fromkeys(self.pass_ks, 0)
            pair_reports = []
            attempts_per_input = []
            for pair, test_input in enumerate(task.inputs):
                ranked = self._ranked(votes.get((task_id, pair), {}))
                label = task.label_keys[pair]
                label_rank = None if label is None else next(
                    (i + 1 for i, c in enumerate(ranked) if c.key == label), None)
                for k in self.pass_ks:
                    solved[k] += label_rank is not None and label_rank <= k
                pair_reports.append({
                    "scored": label is not None,
                    "votes_cast": sum(c.votes for c in ranked),
                    "label_rank": label_rank,
                    "top_candidates": [
                        {"votes": c.votes, "mean_q_halt": c.mean_q, "shape": list(grids[c.key].shape),
                         "correct": None if label is None else c.key == label}
                        for c in ranked[:REPORTED_CANDIDATES]
                    ],
                })
                valid = [grids[c.key] for c in ranked if grids[c.key].size > 0][: self.submission_k]
                if not valid:
                    valid = [np.zeros_like(test_input)]
                valid += [valid[0]] * (self.submission_k - len(valid))
                attempts_per_input.append({f"attempt_{i + 1}": g.tolist() for i, g in enumerate(valid)})
            # A task is scored on its test pairs with a known output; one with none is not scored at all
            # (a dataset built without solutions): counting it as unsolved would report a wrong 0%.
            labelled = sum(key is not None for key in task.label_keys)
            if labelled:
                scores: dict[str, float | None] = {f"pass@{k}": solved[k] / labelled for k in self.pass_ks}
                for k in self.pass_ks:
                    totals[k] += solved[k] / labelled
            else:
                scores = dict.fromkeys((f"pass@{k}" for k in self.pass_ks), None)
                unscored.append(task_id)
            task_scores[task_id] = {**scores, "scored": bool(labelled), "test_pairs": pair_reports}
            submission[task_id] = attempts_per_input

        self.unmatched_rows = sum(unmatched.values())
        if self.unmatched_rows:
            warnings.warn(f"ARC evaluation: {self.unmatched_rows} rows have an input that is no test input of their "
                          f"task (by task: {dict(unmatched.most_common(5))}); they cast no vote", stacklevel=2)
        scored_tasks = len(self.tasks) - len(unscored)
        metrics = {f"ARC/pass@{k}": totals[k] / scored_tasks for k in self.pass_ks} if scored_tasks else {}
        if unscored:
            metrics["ARC/unscored_tasks"] = float(len(unscored))
            where = "submission.json" if output_dir is None else str(Path(output_dir) / "submission.json")
            if scored_tasks:
                warnings.warn(f"ARC evaluation: {len(unscored)} of {len(self.tasks)} test tasks have no solutions "
                              f"(e.g. {unscored[0]}); ARC/pass@k is over the other {scored_tasks}", stacklevel=2)
            else:
                warnings.warn(f"ARC evaluation: nothing to score, none of the {len(self.tasks)} test tasks has a "
                              f"solution (a dataset built without a solutions file); no ARC/pass@k, the predictions "
                              f"are in {where}", stacklevel=2)
        if output_dir is not None:
            out = Path(output_dir)
            report = {
                "metrics": metrics,
                "scored_tasks": scored_tasks,
                "unscored_tasks": unscored,
                "pass_ks": list(self.pass_ks),
                "submission_k": self.submission_k,
                "pool_evaluations": self.pool_evaluations,
                "data_paths": [str(root) for root in self.data_paths],
                "rows_voted": rows - sum(unmatched.values()),
                "unmatched_rows": self.unmatched_rows,
                "unmatched_rows_by_task": dict(sorted(unmatched.items())),
                "tasks": task_scores,
            }
            atomic_write_text(out / "submission.json", json.dumps(submission))
            atomic_write_text(out / "arc_scores.json", json.dumps(report, indent=1))
        return metrics
