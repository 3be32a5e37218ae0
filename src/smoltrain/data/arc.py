"""ARC: load ARC-AGI / ConceptARC tasks and build the augmented puzzle dataset (reference §3.5).

Sources (one of the two):

* ``input_file_prefix``: the Kaggle "combined" layout of the reference repository,
  ``{prefix}_{subset}_challenges.json`` = ``{task: {"train": [{"input", "output"}...], "test": [{"input"}...]}}``
  and ``{prefix}_{subset}_solutions.json`` = ``{task: [output grid per test input]}``.
* ``input_dir``: the public ARC repositories' layout, one file per task, ``{dir}/{subset}/{task}.json`` =
  ``{"train": [...], "test": [{"input", "output"}...]}``.

Both give the same tasks and therefore byte-identical datasets. Tasks are taken in sorted-id order within
each subset, subsets in the order given.

What the builder does, as the reference `build_arc_dataset.py` does it:

* Split assignment: the train pairs of every task go to `train`; the test pairs of the `test_set_name`
  subset go to `test`, those of the other subsets to `train`. So evaluation tasks' demonstrations are trained
  on, under the same puzzle identifier as their test inputs (test-time training).
* Augmentation: per task the original version comes first, then up to ``5 * num_aug`` trials of (random
  dihedral id 0..7, random permutation of the colours 1..9 with 0 fixed); a trial is kept when the whole
  augmented task (all pairs of both splits, compared as a set of pairs) differs from every version kept so
  far, until ``num_aug + 1`` versions exist. Symmetric tasks therefore get fewer versions.
* Identifiers: 0 is ``"<blank>"``; every version of every task gets its own identifier, in build order. The
  original is named by its bare task id (as the reference does); the others by
  ``arc_augmented_name(task, dihedral, mapping)`` = ``"{task}|||t{k}|||{mapping digits}"``. `parse_arc_name`
  reads both back.
* Encoding: a 30x30 canvas, ``PAD 0, EOS 1, colour c -> c + 2`` (vocab 12, seq_len 900). EOS marks the row
  just below the grid (over the grid's columns only) and the column just right of it (over the grid's rows
  only), each only when inside the canvas; the corner cell diagonal to the grid stays PAD, exactly as the
  reference writes it. `ignore_label_id` 0, so PAD is unsupervised while EOS is (the model predicts the size).
* Smaller canvas (``canvas_size`` n < 30, not in the reference): rows are n x n (seq_len n*n), so a model
  trains on a laptop CPU; tasks with any grid larger than n x n are skipped whole (a task without all its
  pairs would teach and score a different puzzle) and listed in ``build_info.json``. Readers (crop,
  evaluator, pictures) take the canvas side from the rows' length, so they need no setting.
* Translation: in the train split every example of a puzzle except one (chosen at random) is shifted by a
  random offset, the same for its input and output, so that both fit the canvas; the test split is always
  top-left.
* `<root>/test_puzzles.json` holds the original grids of every task of the test subset, test outputs
  included, for the evaluator (`smoltrain.eval.arc`).
* Unknown test outputs (Kaggle's hidden test set: a challenges file without its solutions file; or per-task
  files whose test pairs have no "output"), allowed for the `test_set_name` subset only: as the reference, each
  such test pair gets the dummy output `[[0]]` (so it is augmented and encoded like any pair, its label rows
  meaning nothing). Unlike the reference, `test_puzzles.json` then leaves "output" out of those pairs and
  `build_info.json` records ``test_solutions: false`` (and ``counts.test_pairs_without_solution``), so an
  evaluation writes submission.json but scores nothing on them instead of a wrong 0%. Other subsets without
  their outputs are an error (their dummy outputs would be trained on).

Differences from the reference, all deliberate: one seeded `numpy.random.Generator` per task (derived from
`seed` and the task id) instead of the global NumPy RNG, so a build is reproducible and a task's
augmentations do not depend on which other tasks are built; tasks are not shuffled (the loader shuffles
groups anyway); duplicate task ids across subsets are an error. Rows are streamed to the `.npy` files task by
task, so the ARC-AGI-1 + ConceptARC build with 1000 augmentations (3.6M train rows, 6.8 GiB) peaks at about
0.6 GB resident (bench/arc_build.py).

De-duplication bounds the versions of a task that uses few colours: with c non-background colours there are
at most 8 * 9!/(9-c)! distinct versions, 576 for c = 2 and 72 for c = 1. On ARC-AGI-1 + ConceptARC 164 of the
960 tasks are such, so 1000 augmentations give 876k identifiers rather than the 960 * 1001 = 961k a count
without de-duplication suggests (the reference hashes the same way, so it is bounded the same way).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numba import njit
from tqdm import tqdm

from smoltrain.data.augment import arc_augmented_name, dihedral_transform
from smoltrain.data.build import DatasetBuilder
from smoltrain.data.puzzles import (  # _check_indices: write_split's own consistency check, for streamed rows
    DrawingHints,
    PuzzleDatasetMetadata,
    PuzzleKind,
    Verdict,
    _check_indices,
    write_identifiers,
)
from smoltrain.errors import ConfigError, DataError
from smoltrain.fileio import write_json_synced, write_synced

__all__ = [
    "ARC_COLOURS",
    "ARC_SUBSETS",
    "EOS_ID",
    "GRID_SIZE",
    "KIND",
    "PAD_ID",
    "SEQ_LEN",
    "VOCAB_SIZE",
    "ArcBuilder",
    "ArcOptions",
    "ARCKind",
    "ArcTask",
    "build_arc_dataset",
    "canvas_side",
    "grid_to_tokens",
    "crop_grid",
    "crop_sizes",
    "load_arc_tasks",
]

GRID_SIZE = 30  # ARC grids are at most 30x30; also the default (and largest) canvas
SEQ_LEN = GRID_SIZE * GRID_SIZE  # of the default canvas; a dataset's own is its dataset.json seq_len
PAD_ID = 0
EOS_ID = 1
COLOUR_OFFSET = 2  # colour c is token c + 2
VOCAB_SIZE = 10 + COLOUR_OFFSET
AUGMENT_RETRIES_FACTOR = 5  # trials per wanted augmentation before giving up (reference value)
# Dihedral transforms that swap rows and columns (rotations by 90/270 degrees, transpose, anti-transpose).
_TRANSPOSING = (1, 3, 6, 7)
ARC_SUBSETS = ("training", "evaluation", "training2", "evaluation2", "concept")
# The output the reference gives a test input whose solution is unknown: a 1x1 grid of colour 0.
DUMMY_OUTPUT = np.zeros((1, 1), dtype=np.uint8)

Grid = np.ndarray  # 2-D uint8, values 0..9
Pair = tuple[Grid, Grid]


@dataclass
class ArcTask:
    """One ARC task: its demonstration (train) pairs and its test pairs, outputs included."""

    subset: str
    task_id: str
    train: list[Pair]
    test: list[Pair]
    # False when the test outputs are unknown (a challenges file without solutions, such as Kaggle's hidden test
    # set): the test pairs then carry the reference's dummy output, a 1x1 grid of colour 0 (DUMMY_OUTPUT).
    test_solved: bool = True

    @property
    def pairs(self) -> list[Pair]:
        """All pairs, train first: the order the augmentation and the row layout refer to."""
        return [*self.train, *self.test]


# ------------------------------------------------------------------------------------------------
# Tokens


def grid_to_tokens(
    grid: np.ndarray | Sequence[Sequence[int]], offset: tuple[int, int] = (0, 0), canvas_size: int = GRID_SIZE
) -> np.ndarray:
    """A grid on the `canvas_size` square canvas (default 30x30) as `canvas_size`**2 uint8 tokens, its
    top-left cell at `offset` (row, column).

    Colour c becomes c + 2, EOS (1) fills the row below the grid (grid columns only) and the column right
    of it (grid rows only) where they lie inside the canvas; everything else is PAD (0).
    """
    g = np.asarray(grid, dtype=np.int64)
    r0, c0 = offset
    h, w = g.shape
    n = canvas_size
    if not (0 <= r0 and 0 <= c0 and r0 + h <= n and c0 + w <= n):
        raise ValueError(f"a {h}x{w} grid at offset {offset} does not fit the {n}x{n} canvas")
    canvas = np.zeros((n, n), dtype=np.uint8)
    canvas[r0 : r0 + h, c0 : c0 + w] = g + COLOUR_OFFSET
    if r0 + h < n:
        canvas[r0 + h, c0 : c0 + w] = EOS_ID
    if c0 + w < n:
        canvas[r0 : r0 + h, c0 + w] = EOS_ID
    return canvas.reshape(-1)


def canvas_side(seq_len: int) -> int:
    """The side n of an n x n canvas of `seq_len` tokens; a ValueError when `seq_len` is not a positive square.

    Datasets do not record their canvas anywhere but in the row length, so every reader derives it here.
    """
    side = math.isqrt(max(int(seq_len), 0))
    if side < 1 or side * side != seq_len:
        raise ValueError(f"an ARC canvas is n x n tokens, but rows have {seq_len} tokens (not a positive square)")
    return side


def crop_sizes(canvases: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(heights, widths) of the crop of each canvas in a batch `[B, n*n]` or `[B, n, n]` (one canvas `[n*n]`
    also works): the largest-area top-left rectangle of colour tokens (2..11), as the reference evaluator's
    `_crop`; (0, 0) when none. The side n comes from the array's shape (30 for the reference datasets).

    Vectorised over the batch: per row, the run of colour cells from the left; its running minimum down
    the rows is the widest all-colour rectangle of each height; the best height maximises height x width
    (`argmax` returns the first maximum, as the reference's strict `>` keeps the first).
    """
    canvases = np.asarray(canvases)
    if canvases.ndim == 3:
        if canvases.shape[1] != canvases.shape[2]:
            raise ValueError(f"crop_sizes expects square canvases [B, n, n], got shape {canvases.shape}")
        batch = canvases
    elif canvases.ndim in (1, 2):
        flat = canvases.reshape(1 if canvases.ndim == 1 else canvases.shape[0], canvases.shape[-1])
        side = canvas_side(flat.shape[1])
        batch = flat.reshape(flat.shape[0], side, side)
    else:
        raise ValueError(f"crop_sizes expects canvases [B, n*n] or [B, n, n], got shape {canvases.shape}")
    side = batch.shape[1]
    is_colour = (batch >= COLOUR_OFFSET) & (batch < VOCAB_SIZE)
    # First non-colour column of each row (the side when the whole row is colours).
    row_runs = np.where(is_colour.all(axis=2), side, np.argmin(is_colour, axis=2))
    widths_by_height = np.minimum.accumulate(row_runs, axis=1)  # [B, n]: widest rectangle of height i+1
    areas = widths_by_height * np.arange(1, side + 1)
    best = np.argmax(areas, axis=1)
    rows = np.arange(batch.shape[0])
    found = areas[rows, best] > 0
    heights = np.where(found, best + 1, 0)
    widths = np.where(found, widths_by_height[rows, best], 0)
    return heights, widths


def crop_grid(canvas: np.ndarray, height: int | None = None, width: int | None = None) -> np.ndarray:
    """The colour grid (values 0..9, uint8) at the top-left of one canvas (`[n*n]` or `[n, n]`, the side from
    its size); `(0, 0)` when there is none.

    Pass `height`/`width` from `crop_sizes` to skip recomputing them.
    """
    board = np.asarray(canvas)
    side = canvas_side(board.size)
    board = board.reshape(side, side)
    if height is None or width is None:
        heights, widths = crop_sizes(board[None])
        height, width = int(heights[0]), int(widths[0])
    # Cells of the crop are tokens 2..11, so the subtraction stays inside uint8.
    return board[:height, :width].astype(np.uint8) - np.uint8(COLOUR_OFFSET)


# ------------------------------------------------------------------------------------------------
# Loading and validation


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}): fix or replace the file"
        ) from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason}): fix or replace the file") from None
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror})") from None


def _to_grid(value: Any, where: str) -> Grid:
    """Validate one grid (list of equal-length rows of ints 0..9, at most 30x30) and return it as uint8."""
    if not isinstance(value, list) or not value or not all(isinstance(row, list) for row in value):
        raise DataError(f"{where}: a grid must be a non-empty list of rows (lists of colours 0..9)")
    widths = {len(row) for row in value}
    if len(widths) != 1:
        raise DataError(f"{where}: ragged grid, rows have lengths {sorted(widths)}; every row needs the same length")
    if 0 in widths:
        raise DataError(f"{where}: empty rows; a grid needs at least one cell")
    try:
        arr = np.array(value)
    except ValueError:  # rows of equal length whose cells are lists of different shapes
        arr = np.array([], dtype=object)
    if arr.ndim != 2:
        raise DataError(f"{where}: grid cells must be single integers 0..9, found nested lists")
    if arr.dtype.kind not in "iu":
        raise DataError(f"{where}: grid cells must be integers 0..9, found {arr.dtype} values")
    h, w = arr.shape
    if h > GRID_SIZE or w > GRID_SIZE:
        raise DataError(f"{where}: grid is {h}x{w}, larger than the {GRID_SIZE}x{GRID_SIZE} ARC maximum")
    if arr.min() < 0 or arr.max() > 9:
        raise DataError(f"{where}: grid holds colour values {int(arr.min())}..{int(arr.max())}, outside 0..9")
    return arr.astype(np.uint8)


def _pairs(examples: Any, kind: str, where: str, outputs: list | None = None,
           unknown_outputs: bool = False) -> list[Pair]:
    """Validate a task's `train` or `test` list; `outputs` supplies test outputs from a solutions file;
    `unknown_outputs`: the test outputs are unknown and every pair gets `DUMMY_OUTPUT`."""
    if not isinstance(examples, list):
        raise DataError(f"{where}: '{kind}' must be a list of {{'input', 'output'}} pairs")
    pairs: list[Pair] = []
    for i, example in enumerate(examples):
        at = f"{where}, {kind} pair {i}"
        if not isinstance(example, dict) or "input" not in example:
            raise DataError(f"{at}: expected an object with 'input' (and 'output')")
        if unknown_outputs:
            pairs.append((_to_grid(example["input"], f"{at} input"), DUMMY_OUTPUT.copy()))
            continue
        if outputs is not None:
            output = outputs[i]
        elif "output" in example:
            output = example["output"]
        else:
            raise DataError(f"{at}: no 'output'; every pair needs its output grid")
        pairs.append((_to_grid(example["input"], f"{at} input"), _to_grid(output, f"{at} output")))
    return pairs


def _task(subset: str, task_id: str, data: Any, where: str, solutions: Any = None,
          unsolved_ok: bool = False) -> ArcTask:
    """One task; `solutions` gives its test outputs (Kaggle layout). With `unsolved_ok` (the test subset), a task
    without test outputs (no solutions file, or per-task test pairs without "output") gets dummy outputs."""
    if not isinstance(data, dict) or "train" not in data or "test" not in data:
        raise DataError(f"{where}: a task must be an object with 'train' and 'test' lists")
    outputs = None
    tests = data["test"] if isinstance(data["test"], list) else []
    if solutions is not None:
        if not isinstance(solutions, list) or len(solutions) != len(tests):
            n = len(solutions) if isinstance(solutions, list) else "no list of"
            raise DataError(f"{where}: the solutions file has {n} output grids for {len(tests)} test inputs")
        outputs = solutions
    with_output = [isinstance(t, dict) and "output" in t for t in tests]
    unknown = unsolved_ok and outputs is None and bool(tests) and not any(with_output)
    if unsolved_ok and outputs is None and any(with_output) and not all(with_output):
        raise DataError(f"{where}: some test pairs have an 'output' and some not; give every test output or none")
    train = _pairs(data["train"], "train", where)
    test = _pairs(data["test"], "test", where, outputs, unknown_outputs=unknown)
    if not train:
        raise DataError(f"{where}: no train pairs; a task needs at least one demonstration")
    return ArcTask(subset, task_id, train, test, test_solved=not unknown)


def _load_kaggle_subset(prefix: str, subset: str, wanted: Collection[str] | None,
                        unsolved_ok: bool = False) -> list[ArcTask]:
    challenges_path = Path(f"{prefix}_{subset}_challenges.json")
    solutions_path = Path(f"{prefix}_{subset}_solutions.json")
    if not challenges_path.is_file():
        raise DataError(f"{challenges_path} not found; drop `{subset}` from --subsets or add the file")
    if not solutions_path.is_file() and not unsolved_ok:
        raise DataError(f"{solutions_path} not found; drop `{subset}` from --subsets or add the file (only the "
                        "--test-set-name subset may come without solutions)")
    challenges = _read_json(challenges_path)
    # No solutions file (Kaggle's hidden test set): the test outputs are unknown; the reference fills dummies.
    solutions = _read_json(solutions_path) if solutions_path.is_file() else None
    for path, obj in ((challenges_path, challenges), (solutions_path, solutions)):
        if obj is not None and not isinstance(obj, dict):
            raise DataError(f"{path}: expected a JSON object keyed by task id, got {type(obj).__name__}")
    tasks = []
    for task_id in sorted(challenges):
        if wanted is not None and task_id not in wanted:
            continue
        where = f"{challenges_path}, task {task_id}"
        if solutions is None:
            tasks.append(_task(subset, task_id, challenges[task_id], where, unsolved_ok=True))
            continue
        if task_id not in solutions:
            raise DataError(f"{where}: no entry in {solutions_path}; add its test outputs there")
        tasks.append(_task(subset, task_id, challenges[task_id], where, solutions[task_id]))
    return tasks


def _load_dir_subset(root: Path, subset: str, wanted: Collection[str] | None,
                     unsolved_ok: bool = False) -> list[ArcTask]:
    folder = root / subset
    if not folder.is_dir():
        raise DataError(
            f"{folder} not found (per-task json files of subset `{subset}`); drop `{subset}` from "
            "--subsets or add the folder"
        )
    files = sorted(folder.glob("*.json"))
    if not files:
        raise DataError(f"{folder} holds no .json task files; drop `{subset}` from --subsets or add them")
    tasks = []
    for path in files:
        if wanted is not None and path.stem not in wanted:
            continue
        tasks.append(_task(subset, path.stem, _read_json(path), str(path), unsolved_ok=unsolved_ok))
    return tasks


def load_arc_tasks(
    input_file_prefix: str | os.PathLike[str] | None = None,
    input_dir: str | os.PathLike[str] | None = None,
    subsets: Sequence[str] = ("training", "evaluation", "concept"),
    task_ids: Collection[str] | None = None,
    max_tasks: int | None = None,
    unsolved_subset: str | None = None,
) -> list[ArcTask]:
    """Read and validate the tasks of `subsets` from exactly one of the two layouts (module docstring).

    `unsolved_subset` (the test subset of a build) may come without test outputs: no solutions file, or
    per-task files whose test pairs have no "output". Its tasks then get `test_solved=False` and the reference's
    dummy outputs (`DUMMY_OUTPUT`); every other subset needs its outputs.

    `task_ids` keeps only those tasks, `max_tasks` the first ones (sorted by id) of each subset: for tests
    and quick builds. Every grid is checked (list of equal rows, ints 0..9, at most 30x30); problems raise
    DataError naming the file, task and pair. Task ids must be unique across subsets.
    """
    if (input_file_prefix is None) == (input_dir is None):
        raise ConfigError(
            "give exactly one ARC source: --input-file-prefix (Kaggle combined json) or --input-dir "
            "(one json per task in DIR/<subset>/)"
        )
    if not subsets:
        raise ConfigError("no ARC subsets given: pass --subsets, e.g. training evaluation concept")
    if len(set(subsets)) != len(subsets):
        raise ConfigError(f"--subsets lists a subset twice: {list(subsets)}")
    if max_tasks is not None and max_tasks < 1:
        raise ConfigError(f"max_tasks must be >= 1, got {max_tasks}")
    wanted = set(task_ids) if task_ids is not None else None
    tasks: list[ArcTask] = []
    seen: dict[str, str] = {}
    for subset in subsets:
        unsolved_ok = subset == unsolved_subset
        if input_file_prefix is not None:
            loaded = _load_kaggle_subset(str(input_file_prefix), subset, wanted, unsolved_ok)
        else:
            loaded = _load_dir_subset(Path(input_dir), subset, wanted, unsolved_ok)  # type: ignore[arg-type]
        if max_tasks is not None:
            loaded = loaded[:max_tasks]
        for task in loaded:
            if task.task_id in seen:
                raise DataError(
                    f"task {task.task_id} is in both subsets `{seen[task.task_id]}` and `{subset}`; "
                    "drop one of them from --subsets (ids name puzzles and must be unique)"
                )
            seen[task.task_id] = subset
        tasks.extend(loaded)
    if not tasks:
        among = " with the given task ids" if wanted is not None else ""
        raise DataError(f"no ARC tasks found in subsets {list(subsets)}{among}")
    missing = sorted(wanted - seen.keys()) if wanted is not None and max_tasks is None else []
    if missing:
        raise DataError(f"task ids not found in subsets {list(subsets)}: {', '.join(missing)}; "
                        "check the ids or add the subset that holds them to --subsets")
    return tasks


# ------------------------------------------------------------------------------------------------
# Augmentation plan


def _task_rngs(seed: int, task_id: str) -> tuple[np.random.Generator, np.random.Generator]:
    """Two independent generators for a task (augmentation plan, translations), from `seed` and its id."""
    digest = hashlib.sha256(task_id.encode("utf-8")).digest()
    words = np.frombuffer(digest[:16], dtype=np.uint32).tolist()
    plan, shift = np.random.SeedSequence([seed, *words]).spawn(2)
    return np.random.default_rng(plan), np.random.default_rng(shift)


class _TaskGrids:
    """A task's grids under each of the 8 dihedral transforms, flattened for fast colour mapping.

    Grid order: pair 0 input, pair 0 output, pair 1 input, ... (train pairs then test pairs). The cell
    count of every grid is the same under every transform, so one `starts` table serves all eight.
    """

    def __init__(self, task: ArcTask) -> None:
        grids = [g for pair in task.pairs for g in pair]
        self.num_pairs = len(task.pairs)
        sizes = np.array([g.size for g in grids], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.cells = np.empty((8, int(self.starts[-1])), dtype=np.uint8)
        self.shapes = np.empty((8, len(grids), 2), dtype=np.int64)
        for k in range(8):
            moved = [dihedral_transform(g, k) for g in grids]
            self.cells[k] = np.concatenate([m.reshape(-1) for m in moved])
            self.shapes[k] = [m.shape for m in moved]
        # Per transform and pair: (input header, input start, middle, output header, end) for the hash key.
        self._key_parts = [
            [
                (
                    bytes(self.shapes[k, 2 * p].tolist()),
                    int(self.starts[2 * p]),
                    int(self.starts[2 * p + 1]),
                    bytes(self.shapes[k, 2 * p + 1].tolist()),
                    int(self.starts[2 * p + 2]),
                )
                for p in range(self.num_pairs)
            ]
            for k in range(8)
        ]

    def key(self, k: int, mapping: np.ndarray) -> bytes:
        """Digest of the task under (dihedral k, colour map): equal iff the same set of (input, output) pairs.

        Pairs are compared as a sorted list, as the reference `puzzle_hash` does, so a transform that only
        reorders the pairs counts as a duplicate.
        """
        flat = mapping[self.cells[k]].tobytes()
        pieces = sorted(hin + flat[a:m] + hout + flat[m:e] for hin, a, m, hout, e in self._key_parts[k])
        return hashlib.sha256(b"".join(pieces)).digest()


def _augmentation_plan(grids: _TaskGrids, num_aug: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(dihedral ids [V], colour maps [V, 10]) of the kept versions, the original first; V <= num_aug + 1."""
    identity = np.arange(10, dtype=np.uint8)
    dihedrals = [0]
    mappings = [identity]
    if num_aug > 0:
        trials = AUGMENT_RETRIES_FACTOR * num_aug
        trial_k = rng.integers(0, 8, size=trials)
        trial_perm = rng.permuted(np.tile(np.arange(1, 10, dtype=np.uint8), (trials, 1)), axis=1)
        seen = {grids.key(0, identity)}
        for k, perm in zip(trial_k.tolist(), trial_perm, strict=True):
            mapping = np.concatenate([identity[:1], perm])
            digest = grids.key(k, mapping)
            if digest in seen:
                continue
            seen.add(digest)
            dihedrals.append(k)
            mappings.append(mapping)
            if len(dihedrals) > num_aug:
                break
    return np.array(dihedrals, dtype=np.int64), np.stack(mappings)


def _translations(
    grids: _TaskGrids, pair_ids: np.ndarray, dihedrals: np.ndarray, rng: np.random.Generator, canvas_size: int
) -> np.ndarray:
    """Offsets [V, P, 2] for the train split: random per example, except one random example per version at 0.

    The offset range keeps both the input and the output inside the `canvas_size` canvas (reference behaviour).
    """
    rows = np.maximum(grids.shapes[:, 2 * pair_ids, 0], grids.shapes[:, 2 * pair_ids + 1, 0])[dihedrals]  # [V, P]
    cols = np.maximum(grids.shapes[:, 2 * pair_ids, 1], grids.shapes[:, 2 * pair_ids + 1, 1])[dihedrals]
    offsets = np.stack([rng.integers(0, canvas_size - rows + 1), rng.integers(0, canvas_size - cols + 1)], axis=-1)
    untranslated = rng.integers(0, len(pair_ids), size=len(dihedrals))
    offsets[np.arange(len(dihedrals)), untranslated] = 0
    return offsets


@njit(cache=True)
def _fill_rows(cells, starts, shapes, grid_ids, dihedrals, mappings, offsets, n, out):  # pragma: no cover - numba
    """Write grid `grid_ids[p]` of version v to row v * P + p of `out` ([V * P, n * n] uint8), on the n x n canvas.

    Mirrors `grid_to_tokens`: colours + 2 at the offset, EOS below (grid columns) and right (grid rows).
    """
    num_versions = dihedrals.shape[0]
    num_pairs = grid_ids.shape[0]
    for v in range(num_versions):
        k = dihedrals[v]
        for p in range(num_pairs):
            row = v * num_pairs + p
            out[row, :] = 0
            g = grid_ids[p]
            h = shapes[k, g, 0]
            w = shapes[k, g, 1]
            r0 = offsets[v, p, 0]
            c0 = offsets[v, p, 1]
            base = starts[g]
            for i in range(h):
                for j in range(w):
                    out[row, (r0 + i) * n + c0 + j] = mappings[v, cells[k, base + i * w + j]] + 2
            if r0 + h < n:
                for j in range(w):
                    out[row, (r0 + h) * n + c0 + j] = 1
            if c0 + w < n:
                for i in range(h):
                    out[row, (r0 + i) * n + c0 + w] = 1


def _encode_split(
    grids: _TaskGrids,
    pair_ids: np.ndarray,
    dihedrals: np.ndarray,
    mappings: np.ndarray,
    offsets: np.ndarray,
    canvas_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and labels [V * P, n * n] of the pairs `pair_ids` under every version (version-major rows)."""
    rows = len(dihedrals) * len(pair_ids)
    inputs = np.empty((rows, canvas_size * canvas_size), dtype=np.uint8)
    labels = np.empty((rows, canvas_size * canvas_size), dtype=np.uint8)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    for grid_ids, out in ((2 * pair_ids, inputs), (2 * pair_ids + 1, labels)):
        _fill_rows(grids.cells, grids.starts, grids.shapes, grid_ids, dihedrals, mappings, offsets, canvas_size, out)
    return inputs, labels


# ------------------------------------------------------------------------------------------------
# Writing


class _RowStream:
    """A `[rows, seq_len]` uint8 `.npy` file filled sequentially, block by block.

    The header comes from `np.lib.format.open_memmap` (so the file is a standard .npy); the rows are then
    written with plain file writes, which keeps them in the page cache instead of in this process's
    resident memory (a written memory map would count its dirty pages against the build's RSS).
    """

    def __init__(self, path: Path, rows: int, seq_len: int) -> None:
        header = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(rows, seq_len))
        offset = header.offset
        del header
        self.path = path
        self.rows = rows
        self.written = 0
        self._file: BinaryIO = open(path, "r+b")  # noqa: SIM115 - closed in close()
        self._file.seek(offset)

    def write(self, block: np.ndarray) -> None:
        if self.written + block.shape[0] > self.rows:
            raise RuntimeError(f"{self.path}: more rows than the {self.rows} planned")
        self._file.write(memoryview(np.ascontiguousarray(block)))
        self.written += block.shape[0]

    def close(self, check: bool = True) -> None:
        """Close the file; with `check`, fail unless exactly the planned rows were written."""
        self._file.close()
        if check and self.written != self.rows:
            raise RuntimeError(f"{self.path}: wrote {self.written} rows, planned {self.rows}")


@dataclass
class _SplitPlan:
    """Row counts and index arrays of one split, known before any row is written."""

    name: str
    seq_len: int
    examples_per_puzzle: list[int] = field(default_factory=list)
    identifiers: list[int] = field(default_factory=list)
    puzzles_per_group: list[int] = field(default_factory=list)

    def add_group(self, first_identifier: int, num_versions: int, num_examples: int) -> None:
        self.examples_per_puzzle.extend([num_examples] * num_versions)
        self.identifiers.extend(range(first_identifier, first_identifier + num_versions))
        self.puzzles_per_group.append(num_versions)

    @property
    def rows(self) -> int:
        return int(sum(self.examples_per_puzzle))

    def metadata(self, num_identifiers: int) -> PuzzleDatasetMetadata:
        puzzles = len(self.identifiers)
        return PuzzleDatasetMetadata(
            pad_id=PAD_ID,
            ignore_label_id=0,
            blank_identifier_id=0,
            vocab_size=VOCAB_SIZE,
            seq_len=self.seq_len,
            num_puzzle_identifiers=num_identifiers,
            total_groups=len(self.puzzles_per_group),
            mean_puzzle_examples=self.rows / puzzles if puzzles else 0.0,
            total_puzzles=puzzles,
            sets=["all"],
        )

    def write_indices(self, root: Path, num_identifiers: int) -> None:
        """Check the index hierarchy against the rows, then write the three index arrays and dataset.json."""
        metadata = self.metadata(num_identifiers)
        identifiers = np.array(self.identifiers, dtype=np.int32)
        puzzle_indices = np.concatenate([[0], np.cumsum(self.examples_per_puzzle, dtype=np.int64)]).astype(np.int32)
        group_indices = np.concatenate([[0], np.cumsum(self.puzzles_per_group, dtype=np.int64)]).astype(np.int32)
        _check_indices(f"ARC split '{self.name}'", self.rows, identifiers, puzzle_indices, group_indices, metadata)
        split_dir = root / self.name
        for name, arr in (
            ("puzzle_identifiers", identifiers),
            ("puzzle_indices", puzzle_indices),
            ("group_indices", group_indices),
        ):
            write_synced(split_dir / f"all__{name}.npy", lambda f, a=arr: np.save(f, a))
        write_json_synced(split_dir / "dataset.json", metadata.model_dump())


def _pair_ids(task: ArcTask, test_set_name: str) -> dict[str, np.ndarray]:
    """Indices into `task.pairs` that each split receives (see the split assignment in the module docstring)."""
    train = list(range(len(task.train)))
    test = list(range(len(task.train), len(task.pairs)))
    if task.subset == test_set_name:
        return {"train": np.array(train, dtype=np.int64), "test": np.array(test, dtype=np.int64)}
    return {"train": np.array(train + test, dtype=np.int64), "test": np.array([], dtype=np.int64)}


def _test_puzzles(tasks: list[ArcTask], test_set_name: str) -> dict[str, Any]:
    """The test subset's tasks for the evaluator; test pairs whose output is unknown have no "output" (the
    dummy is no answer to score against), so the evaluator scores them not at all rather than as wrong."""
    def pairs(items: list[Pair], solved: bool = True) -> list[dict[str, list]]:
        return [{"input": i.tolist(), "output": o.tolist()} if solved else {"input": i.tolist()} for i, o in items]

    return {t.task_id: {"train": pairs(t.train), "test": pairs(t.test, t.test_solved)}
            for t in tasks if t.subset == test_set_name}


def _fits(task: ArcTask, canvas_size: int) -> bool:
    """Whether every grid of the task (train and test, input and output) fits an n x n canvas.

    A dihedral transform only swaps height and width, so a task that fits, fits in every version.
    """
    return all(max(grid.shape) <= canvas_size for pair in task.pairs for grid in pair)


@dataclass(frozen=True)
class ArcOptions:
    """What an ARC build makes, checked when made; one field per `smoltrain data arc` flag (`task_ids`: --tasks).

    The tasks are read with `load_arc_tasks` from exactly one of `input_file_prefix` / `input_dir`;
    `task_ids` / `max_tasks` restrict the build (see `load_arc_tasks`). Every task gets its original version
    and up to `num_aug` de-duplicated augmentations; the test pairs of `test_set_name` form the test split.
    `canvas_size` n (1..30) gives rows of n * n tokens; tasks with a grid larger than n x n are skipped and
    listed in the build info (`skipped_tasks`). The same inputs and `seed` give byte-identical files, and
    tasks that fit a smaller canvas get the same augmentations there as on the default one.
    """

    input_file_prefix: str | os.PathLike[str] | None = None
    input_dir: str | os.PathLike[str] | None = None
    subsets: Sequence[str] = ("training", "evaluation", "concept")
    test_set_name: str = "evaluation"
    num_aug: int = 1000
    seed: int = 42
    task_ids: Collection[str] | None = None
    max_tasks: int | None = None
    canvas_size: int = GRID_SIZE

    def __post_init__(self) -> None:
        # Frozen: the normalised values are set through object.__setattr__, once, here.
        object.__setattr__(self, "subsets", tuple(self.subsets))
        if self.test_set_name not in self.subsets:
            raise ConfigError(
                f"--test-set-name {self.test_set_name!r} is not among --subsets {list(self.subsets)}: add it to "
                "--subsets or name one of them"
            )
        if self.num_aug < 0:
            raise ConfigError(f"--num-aug must be >= 0, got {self.num_aug}")
        if self.seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {self.seed}")
        if not 1 <= self.canvas_size <= GRID_SIZE:
            raise ConfigError(
                f"--canvas-size must be from 1 to {GRID_SIZE} (ARC grids are at most {GRID_SIZE}x{GRID_SIZE}), "
                f"got {self.canvas_size}"
            )
        object.__setattr__(self, "canvas_size", int(self.canvas_size))  # a NumPy integer would reach the JSON


@dataclass
class _ArcPlan:
    """Every task's versions and both splits' row counts, known before any row is written."""

    tasks: list[ArcTask]
    # Per task: its grids, dihedral ids, colour maps, pair ids per split and the translation generator.
    versions: list[tuple[_TaskGrids, np.ndarray, np.ndarray, dict[str, np.ndarray], np.random.Generator]]
    names: list[str]  # identifier names, "<blank>" first
    skipped: list[str]  # ids of the tasks left out because a grid is larger than the canvas, in build order
    splits: dict[str, _SplitPlan]
    short_tasks: int  # tasks with fewer than num_aug + 1 distinct versions


class ArcBuilder(DatasetBuilder[ArcOptions, _ArcPlan]):
    """The ARC build: plan every task's versions (pass 1), then stream their rows to disk (pass 2)."""

    kind = "arc"

    def prepare(self, info: dict[str, Any], progress: bool) -> _ArcPlan:
        o = self.options
        loaded = load_arc_tasks(o.input_file_prefix, o.input_dir, o.subsets, task_ids=o.task_ids, max_tasks=o.max_tasks,
                                unsolved_subset=o.test_set_name)
        # Whole tasks only: a task missing some of its pairs would be a different puzzle (and the evaluator
        # would score its test inputs against demonstrations it never saw).
        tasks = [task for task in loaded if _fits(task, o.canvas_size)]
        skipped_tasks = [task for task in loaded if not _fits(task, o.canvas_size)]
        skipped = [task.task_id for task in skipped_tasks]
        if not tasks:
            raise DataError(
                f"none of the {len(loaded)} selected ARC tasks fits a {o.canvas_size}x{o.canvas_size} canvas (each "
                f"has a larger grid): raise --canvas-size (ARC grids are up to {GRID_SIZE}x{GRID_SIZE}) or select "
                "other tasks"
            )
        seq_len = o.canvas_size * o.canvas_size

        # Pass 1: every task's versions (cheap: colour-mapped byte strings and hashes, no canvas yet).
        versions = []
        names = ["<blank>"]
        splits = {name: _SplitPlan(name, seq_len) for name in ("train", "test")}
        short_tasks = 0
        for task in tqdm(tasks, desc="augment", disable=not progress, unit="task"):
            grids = _TaskGrids(task)
            plan_rng, shift_rng = _task_rngs(o.seed, task.task_id)
            dihedrals, mappings = _augmentation_plan(grids, o.num_aug, plan_rng)
            short_tasks += len(dihedrals) < o.num_aug + 1
            first_id = len(names)
            names.append(task.task_id)  # the original keeps its bare id, as in the reference
            augmented = zip(dihedrals[1:].tolist(), mappings[1:], strict=True)
            names.extend(arc_augmented_name(task.task_id, k, m) for k, m in augmented)
            pair_ids = _pair_ids(task, o.test_set_name)
            for split_name, ids in pair_ids.items():
                if len(ids):
                    splits[split_name].add_group(first_id, len(dihedrals), len(ids))
            versions.append((grids, dihedrals, mappings, pair_ids, shift_rng))
        if splits["test"].rows == 0:
            too_big = sum(task.subset == o.test_set_name for task in skipped_tasks)
            because = (
                f" ({too_big} of its tasks were skipped for grids larger than {o.canvas_size}x{o.canvas_size}: "
                "raise --canvas-size)"
                if too_big
                else ""
            )
            raise DataError(
                f"the selected tasks of subset `{o.test_set_name}` have no test pairs, so the test split would be "
                f"empty{because}"
            )
        info.update(
            source={
                "input_file_prefix": None if o.input_file_prefix is None else str(o.input_file_prefix),
                "input_dir": None if o.input_dir is None else str(o.input_dir),
            },
            subsets=list(o.subsets),
            test_set_name=o.test_set_name,
            num_aug=o.num_aug,
            seed=o.seed,
            canvas_size=o.canvas_size,
            original_name="bare task id (augmented versions: arc_augmented_name)",
            skipped_tasks=skipped,  # empty at 30
            # False: some test outputs are unknown (no solutions file); their labels are dummies, nothing to score.
            test_solutions=all(t.test_solved for t in tasks if t.subset == o.test_set_name),
        )
        return _ArcPlan(tasks, versions, names, skipped, splits, short_tasks)

    def write(self, root: Path, prepared: _ArcPlan, info: dict[str, Any], progress: bool) -> None:
        o = self.options
        splits = prepared.splits
        seq_len = o.canvas_size * o.canvas_size
        # Pass 2: encode and stream the rows in the order the index arrays describe.
        streams: dict[str, tuple[_RowStream, _RowStream]] = {}
        finished = False
        try:
            for name, split in splits.items():
                (root / name).mkdir()
                streams[name] = (
                    _RowStream(root / name / "all__inputs.npy", split.rows, seq_len),
                    _RowStream(root / name / "all__labels.npy", split.rows, seq_len),
                )
            for grids, dihedrals, mappings, pair_ids, shift_rng in tqdm(
                prepared.versions, desc="encode", disable=not progress, unit="task"
            ):
                for name, ids in pair_ids.items():
                    if not len(ids):
                        continue
                    if name == "train":
                        offsets = _translations(grids, ids, dihedrals, shift_rng, o.canvas_size)
                    else:
                        offsets = np.zeros((len(dihedrals), len(ids), 2), dtype=np.int64)
                    inputs, labels = _encode_split(grids, ids, dihedrals, mappings, offsets, o.canvas_size)
                    streams[name][0].write(inputs)
                    streams[name][1].write(labels)
            finished = True
        finally:
            for pair in streams.values():
                for stream in pair:
                    stream.close(check=finished)
        num_identifiers = len(prepared.names)
        for split in splits.values():
            split.write_indices(root, num_identifiers)
        write_identifiers(root, prepared.names)
        write_json_synced(root / "test_puzzles.json", _test_puzzles(prepared.tasks, o.test_set_name))
        subset_tasks = {s: sum(t.subset == s for t in prepared.tasks) for s in o.subsets}
        info["counts"] = {
            "tasks": len(prepared.tasks),
            "skipped_tasks": len(prepared.skipped),
            "tasks_per_subset": subset_tasks,
            "test_tasks": subset_tasks[o.test_set_name],
            "puzzles": num_identifiers - 1,
            "tasks_with_fewer_versions": int(prepared.short_tasks),
            "train_rows": splits["train"].rows,
            "test_rows": splits["test"].rows,
            "test_puzzles": len(splits["test"].identifiers),
            "test_pairs_without_solution": sum(len(t.test) for t in prepared.tasks
                                               if t.subset == o.test_set_name and not t.test_solved),
            "identifiers": num_identifiers,
        }


def build_arc_dataset(output_dir: str | os.PathLike[str], *, progress: bool = False, **options: Any) -> dict[str, Any]:
    """Build the augmented ARC dataset at `output_dir` (atomically) and return its build info.

    `options` are the fields of `ArcOptions` (which tells what each does), as keywords. Writes
    `identifiers.json`, `test_puzzles.json`, `build_info.json` and the `train` / `test` splits.
    """
    return ArcBuilder(ArcOptions(**options)).build(output_dir, progress)


# ------------------------------------------------------------------------------------------------
# The puzzle kind: grids a user reads, and what solves one

ARC_COLOURS = ("#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00",
               "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25")  # ARC's standard ten, colour 0..9


def _rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


class ARCKind(PuzzleKind):
    """ARC: the user's grid is the colours 0..9 of the cropped top-left grid of the canvas (see `crop_grid`),
    tokens are colour + 2 on an n x n canvas (0 PAD, 1 EOS), and a right answer is exactly the target grid.
    A task is known to the model only by its puzzle identifier, so puzzles come from a dataset, never typed."""

    name = "arc"
    drawing = DrawingHints(changed=(255, 255, 255), palette={c: _rgb(hex_) for c, hex_ in enumerate(ARC_COLOURS)},
                           grid_line=(85, 85, 85), show_size=True)

    def claims_shape(self, vocab_size: int, seq_len: int) -> bool:
        # 12 tokens on a square canvas of at most 30x30, which no Sudoku (n + 2) or maze (6) vocabulary is.
        return vocab_size == VOCAB_SIZE and 1 <= seq_len <= SEQ_LEN and math.isqrt(seq_len) ** 2 == seq_len

    def cells(self, tokens: np.ndarray) -> np.ndarray:
        """The cropped colour grid (0x0 when the canvas starts with EOS or PAD)."""
        tokens = np.asarray(tokens).reshape(-1)
        self.side(tokens.size)  # a ConfigError, not crop_grid's ValueError, for a canvas that is not square
        return crop_grid(tokens)

    def scored(self, target_cells: np.ndarray) -> np.ndarray:
        return np.ones(np.shape(target_cells), dtype=bool)  # colour 0 is black, not PAD: every cell counts

    def title(self, index: int, name: str) -> str:
        return f"test example {index}" + (f" ({name})" if name else "")

    def encode(self, grid: np.ndarray, canvas_size: int = GRID_SIZE) -> np.ndarray:
        return grid_to_tokens(grid, canvas_size=canvas_size).astype(np.int64)

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        return self.cells(tokens)

    def parse(self, text: str) -> np.ndarray:
        raise DataError("typed ARC puzzles are not supported (the model needs the task's puzzle identifier); "
                        "use --example N to solve test example N of the run's dataset")

    def format(self, tokens: np.ndarray) -> str:
        grid = self.cells(tokens)
        if grid.size == 0:
            return "(no grid: the canvas starts with EOS or PAD)"
        return "\n".join("".join(str(int(v)) for v in row) for row in grid)

    def check_typed(self, tokens: np.ndarray, seq_len: int, vocab_size: int) -> None:
        pass  # nothing to check: `parse` refuses typed puzzles

    def verdict(self, inputs: np.ndarray, target: np.ndarray | None, answer: np.ndarray) -> Verdict:
        if target is None:
            return Verdict(None, "no target to compare with")
        got, want = self.cells(answer), self.cells(target)
        if np.array_equal(got, want):
            return Verdict(True, "equals the target")
        if got.shape != want.shape:
            return Verdict(False, f"differs from the target: {got.shape[0]}x{got.shape[1]} instead of "
                                  f"{want.shape[0]}x{want.shape[1]}")
        return Verdict(False, f"differs from the target in {int((got != want).sum())} of {want.size} cells")

    def _shaped(self, what: str, tokens: np.ndarray) -> list[str]:
        rows, cols = self.cells(tokens).shape
        return [f"{what} ({rows}x{cols}):", self.format(tokens)]

    def report(self, inputs: np.ndarray, target: np.ndarray | None, answer: np.ndarray, steps: int) -> list[str]:
        lines = self._shaped("input", inputs)
        if target is not None:
            lines += ["", *self._shaped("target", target)]
        return lines + ["", *self._shaped(f"answer after {steps} ACT steps", answer)]


KIND = ARCKind()
