"""The TRM on-disk puzzle format, its atomic writer and the sampling loader; and puzzle kinds.

A puzzle kind (`PuzzleKind`: Sudoku, maze, ARC) is what the rows of a dataset mean: how a user writes and reads
a grid, what a right answer is, how it is drawn. Each kind is one object defined beside its builder, looked up
in `PUZZLE_KINDS` / `get_kind`; `detect_kind` is the one place that says which kind a dataset is.

Layout (identical to the reference builders, so datasets move both ways unchanged)::

    <root>/identifiers.json                 id -> name list, "<blank>" at 0
    <root>/<split>/dataset.json             PuzzleDatasetMetadata
    <root>/<split>/all__inputs.npy          [N_examples, seq_len]  uint8 when the vocab fits
    <root>/<split>/all__labels.npy          [N_examples, seq_len]  uint8 when the vocab fits
    <root>/<split>/all__puzzle_identifiers.npy  [N_puzzles]     int32
    <root>/<split>/all__puzzle_indices.npy      [N_puzzles + 1] int32, example offsets
    <root>/<split>/all__group_indices.npy       [N_groups + 1]  int32, puzzle offsets

A group is one original puzzle/task, its puzzles are the augmented versions (one identifier each),
and a puzzle's examples are rows.

Sampling (`PuzzleDataset`) reproduces the reference `puzzle_dataset.py`:

* train: pass `it` (1, 2, ...) uses ``rng = Generator(Philox(seed + it))``; the group order is
  `epochs_per_iter` concatenated permutations of all groups; walking it, each group contributes one
  random puzzle (``rng.integers``) and ``min(puzzle_size, room left)`` of that puzzle's examples
  without replacement; rows are packed into global batches, the last incomplete one is dropped, and
  rank r keeps rows ``[r * local, (r + 1) * local)``.
* test: sequential windows of `global_batch_size` rows; each rank takes its slice and pads it to the
  local batch size (inputs = pad_id, labels = -100, puzzle_identifiers = blank).

Deliberate deviations from the reference (documented because they change which rows are drawn):

* The examples of a multi-example puzzle are chosen with the same seeded `rng` instead of the
  global ``np.random.choice`` (which the reference seeds only through the DataLoader worker), so a
  run is reproducible from `seed` alone. The draw is skipped when a puzzle has a single example --
  there is nothing to choose -- so on Sudoku and Maze datasets (one example per puzzle) our batches
  are the reference's batches, row for row.
* Several roots are concatenated into one dataset (one shuffle over all groups, batches may mix
  roots) instead of being iterated one after the other; non-blank puzzle identifiers of later roots
  are shifted so that the roots never share an identifier (the reference sums the identifier counts
  but does not shift, so two ARC roots would collide).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np
import pydantic
import torch

from smoltrain.errors import ConfigError, DataError
from smoltrain.fileio import atomic_directory, check_output_path, fsync_dir, read_json, write_json_synced, write_synced

__all__ = [
    "FALLBACK_KIND",
    "FIELDS",
    "IGNORE_LABEL_ID",
    "PUZZLE_KINDS",
    "DrawingHints",
    "EvalBatch",
    "PathMarks",
    "PuzzleDataset",
    "PuzzleDatasetMetadata",
    "PuzzleKind",
    "Verdict",
    "atomic_dataset_dir",
    "combine_metadata",
    "check_output_dir",
    "detect_kind",
    "get_kind",
    "has_test_solutions",
    "load_combined_metadata",
    "load_identifiers",
    "load_metadata",
    "write_identifiers",
    "write_split",
]

# Label value the loss ignores (torch's cross-entropy default).
IGNORE_LABEL_ID = -100
# The reference builders always write a single set called "all".
SET_NAME = "all"
FIELDS = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")
# Files whose presence marks a directory as a dataset we may replace (see atomic_dataset_dir).
_DATASET_MARKERS = ("identifiers.json", "build_info.json", "train/dataset.json", "test/dataset.json")


class PuzzleDatasetMetadata(pydantic.BaseModel):
    """`dataset.json`: same fields, types and JSON as the reference `PuzzleDatasetMetadata`."""

    pad_id: int
    ignore_label_id: int | None
    blank_identifier_id: int
    vocab_size: int
    seq_len: int
    num_puzzle_identifiers: int
    total_groups: int
    mean_puzzle_examples: float
    total_puzzles: int
    sets: list[str]


# ------------------------------------------------------------------------------------------------
# Writing


def _looks_like_dataset(path: Path) -> bool:
    return any((path / marker).exists() for marker in _DATASET_MARKERS)


def check_output_dir(output_dir: str | os.PathLike[str]) -> Path:
    """Fail early unless `output_dir` is absent, empty, or a dataset we may replace; returns it absolute.

    Builders call this before spending minutes on generation; `atomic_dataset_dir` checks again.
    """
    out = check_output_path(output_dir)
    if out.exists():
        if any(out.iterdir()) and not _looks_like_dataset(out):
            raise DataError(
                f"{out} exists and is not a dataset directory; refusing to replace it: "
                "choose another --output-dir or empty it first"
            )
    return out


@contextlib.contextmanager
def atomic_dataset_dir(output_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary sibling of `output_dir`; move it onto `output_dir` only on success.

    On an exception the temporary directory is deleted, so a failed or interrupted build never
    leaves a partial dataset behind; an existing `output_dir` is replaced only once the new one is
    complete. To avoid wiping an unrelated directory by a typo, an existing non-empty `output_dir`
    is replaced only if it looks like a dataset (has identifiers.json, build_info.json or a split's
    dataset.json).
    """
    with atomic_directory(check_output_dir(output_dir)) as tmp:
        yield tmp


def _token_dtype(vocab_size: int) -> type[np.integer]:
    # The reference builders store tokens as uint8; wider vocabularies need int32.
    return np.uint8 if vocab_size <= 256 else np.int32


def write_split(
    root: str | os.PathLike[str],
    split: str,
    inputs: np.ndarray,
    labels: np.ndarray,
    puzzle_identifiers: np.ndarray,
    puzzle_indices: np.ndarray,
    group_indices: np.ndarray,
    metadata: PuzzleDatasetMetadata,
) -> Path:
    """Write `<root>/<split>/dataset.json` and the five `all__*.npy` arrays (fsynced).

    Checks that the arrays agree with each other and with `metadata` first, so a builder bug cannot
    produce a dataset that only fails at training time. Returns the split directory.
    """
    inputs = np.asarray(inputs)
    labels = np.asarray(labels)
    puzzle_identifiers = np.asarray(puzzle_identifiers)
    puzzle_indices = np.asarray(puzzle_indices)
    group_indices = np.asarray(group_indices)
    where = f"split '{split}' for {root}"
    if metadata.sets != [SET_NAME]:
        raise DataError(f"{where}: metadata.sets must be ['{SET_NAME}'] (one set per split), got {metadata.sets}")
    if inputs.ndim != 2 or inputs.shape[1] != metadata.seq_len:
        raise DataError(f"{where}: inputs must be [N, seq_len={metadata.seq_len}], got {inputs.shape}")
    if labels.shape != inputs.shape:
        raise DataError(f"{where}: labels shape {labels.shape} differs from inputs shape {inputs.shape}")
    for name, arr in (("inputs", inputs), ("labels", labels)):
        if arr.size and (arr.min() < 0 or arr.max() >= metadata.vocab_size):
            raise DataError(
                f"{where}: {name} hold tokens in [{arr.min()}, {arr.max()}], outside the vocabulary "
                f"0..{metadata.vocab_size - 1}"
            )
    _check_indices(where, inputs.shape[0], puzzle_identifiers, puzzle_indices, group_indices, metadata)

    split_dir = Path(root) / split
    split_dir.mkdir(parents=True, exist_ok=True)
    token_dtype = _token_dtype(metadata.vocab_size)
    arrays = {
        "inputs": inputs.astype(token_dtype),
        "labels": labels.astype(token_dtype),
        "puzzle_identifiers": puzzle_identifiers.astype(np.int32),
        "puzzle_indices": puzzle_indices.astype(np.int32),
        "group_indices": group_indices.astype(np.int32),
    }
    for name, arr in arrays.items():
        write_synced(split_dir / f"{SET_NAME}__{name}.npy", lambda f, a=arr: np.save(f, a))
    write_json_synced(split_dir / "dataset.json", metadata.model_dump())
    fsync_dir(split_dir)
    return split_dir


def write_identifiers(root: str | os.PathLike[str], names: Sequence[str]) -> Path:
    """Write `<root>/identifiers.json`: the list of identifier names, index = identifier id."""
    path = Path(root) / "identifiers.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_synced(path, list(names))
    return path


# ------------------------------------------------------------------------------------------------
# Reading


def _build_hint(root: Path) -> str:
    """The builder command for a missing dataset. With no dataset there is nothing for `detect_kind` to read, so
    the kind is guessed from the folder's name (recipes name theirs after the kind)."""
    name = root.name.lower()
    kind = next((k for k in PUZZLE_KINDS if k != FALLBACK_KIND and k in name), FALLBACK_KIND)
    others = " / ".join(f"`smoltrain data {k}`" for k in PUZZLE_KINDS if k != kind)
    return (f"build one with `smoltrain data {kind} --output-dir {root}` (or {others}; the README gives "
            "each recipe's command)")


def load_metadata(root: str | os.PathLike[str], split: str) -> PuzzleDatasetMetadata:
    """Read `<root>/<split>/dataset.json`, with a clear DataError when it is missing or malformed.

    Datasets built by the HRM-era builders have no `total_puzzles`; it is filled in from
    `all__puzzle_identifiers.npy` so they load too.
    """
    root_path = Path(root)
    path = root_path / split / "dataset.json"
    if not root_path.is_dir():
        raise DataError(f"no dataset at {root_path}: {_build_hint(root_path)}")
    if not path.is_file():
        raise DataError(f"no '{split}' split in {root_path} (missing {path}): {_build_hint(root_path)}")
    data = read_json(path, dict, "rebuild the dataset")
    if "total_puzzles" not in data:
        ids_path = root_path / split / f"{SET_NAME}__puzzle_identifiers.npy"
        data["total_puzzles"] = int(_load_array(ids_path, mmap=True).shape[0])
    try:
        return PuzzleDatasetMetadata.model_validate(data)
    except pydantic.ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise DataError(f"{path} is not a valid dataset.json ({problems}): rebuild the dataset") from None


def combine_metadata(parts: Sequence[tuple[Path, PuzzleDatasetMetadata]]) -> PuzzleDatasetMetadata:
    """The metadata of several dataset roots read as one (`PuzzleDataset` over ``data_paths``): their rows one
    after another, group and puzzle counts summed, identifier 0 (blank) shared and every root's other identifiers
    in a range of their own, root after root. A DataError names two roots whose shapes do not combine."""
    first_path, first = parts[0]
    if len(parts) == 1:
        return first
    for path, other in parts[1:]:
        for field in ("seq_len", "vocab_size", "pad_id", "ignore_label_id", "blank_identifier_id"):
            a, b = getattr(first, field), getattr(other, field)
            if a != b:
                raise DataError(
                    f"cannot combine datasets {first_path} and {path}: {field} is {a} in the first "
                    f"and {b} in the second; only datasets with the same seq_len, vocab_size, pad_id, "
                    "ignore_label_id and blank_identifier_id can be trained on together"
                )
    if first.blank_identifier_id != 0:
        raise DataError(
            f"combining several datasets needs blank_identifier_id 0, {first_path} uses "
            f"{first.blank_identifier_id}: train on one dataset at a time"
        )
    metas = [meta for _, meta in parts]
    total_puzzles = sum(m.total_puzzles for m in metas)
    mean_examples = (
        sum(m.mean_puzzle_examples * m.total_puzzles for m in metas) / total_puzzles
        if total_puzzles
        else first.mean_puzzle_examples
    )
    return first.model_copy(
        update={
            "num_puzzle_identifiers": 1 + sum(m.num_puzzle_identifiers - 1 for m in metas),
            "total_groups": sum(m.total_groups for m in metas),
            "mean_puzzle_examples": mean_examples,
            "total_puzzles": total_puzzles,
        }
    )


def load_combined_metadata(roots: Sequence[str | os.PathLike[str]], split: str) -> PuzzleDatasetMetadata:
    """`combine_metadata` of the ``split`` of every root (the shape a model trained on all of them has)."""
    return combine_metadata([(Path(root), load_metadata(root, split)) for root in roots])


# ------------------------------------------------------------------------------------------------
# Puzzle kinds

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Verdict:
    """How one answer fares: ``correct`` (None when nothing can tell, e.g. ARC without a target) and the
    one-line verdict `smoltrain solve` prints and the picture page shows."""

    correct: bool | None
    line: str


@dataclass(frozen=True)
class PathMarks:
    """Tiles that mark an answer's path against the target's: ``extra`` where the answer has the ``path``
    token and the target does not, ``missed`` where the answer left a ``free`` cell on the target's path."""

    path: int
    free: int
    extra: RGB
    missed: RGB


@dataclass(frozen=True)
class DrawingHints:
    """What `smoltrain.apps.render` needs to draw a kind's grids; the cells themselves come from
    `PuzzleKind.cells`. A kind is drawn as a board of digits (``digits`` set: Sudoku) or as coloured tiles."""

    changed: RGB  # outline of the cells an ACT step changed, in a colour the kind's grids do not use
    palette: Mapping[int, RGB] = dataclasses.field(default_factory=dict)  # tiles: colour per cell value
    grid_line: RGB = (215, 215, 215)  # tiles: the lines between cells
    cell: int | None = None  # a fixed cell size in pixels; None: cells shrink as grids grow
    show_size: bool = False  # captions give each grid's rows x columns (the kind's grids differ in size)
    path: PathMarks | None = None  # tiles: mark the answer's path against the target's
    # Board of digits: each token's digit (0 blank, -1 not a digit) and the box rows x columns of an n x n board.
    digits: Callable[[np.ndarray], np.ndarray] | None = None
    boxes: Callable[[int], tuple[int, int]] | None = None


class PuzzleKind(ABC):
    """One kind of puzzle: how its grids are tokens, how a user writes and reads one, what a right answer is,
    and how it is drawn. `smoltrain solve`, the pictures and TRM evaluation ask the kind; none of them
    branches on its name.

    Tokens are one flat ``seq_len`` array per grid, in the dataset's vocabulary (0 is PAD in every kind, and
    the loaders turn ignored labels into 0 too). Each kind is one object, ``KIND``, defined beside its dataset
    builder (``data/sudoku.py``, ``data/maze.py``, ``data/arc.py``). To add a kind: subclass this beside the
    new builder, name the instance ``KIND`` there, have the builder write ``{"builder": name}`` into
    build_info.json, and add the module to ``_KIND_MODULES`` below (in detection order when ``claims_shape``
    recognises its datasets without build_info.json).
    """

    name: ClassVar[str]
    drawing: DrawingHints

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<{self.name} puzzle kind>"

    def claims_shape(self, vocab_size: int, seq_len: int) -> bool:
        """Whether a dataset of this shape without build_info.json is of this kind."""
        return False

    def side(self, seq_len: int) -> int:
        """The side n of an n x n grid of ``seq_len`` cells; a ConfigError when it is not a square."""
        side = math.isqrt(seq_len)
        if side * side != seq_len:
            raise ConfigError(f"cannot draw {self.name} puzzles of {seq_len} cells: the grid is not square; "
                              "rendering knows Sudoku, Maze and ARC datasets (all n x n)")
        return side

    def cells(self, tokens: np.ndarray) -> np.ndarray:
        """The 2-D grid of values that is drawn and compared: by default the tokens, n x n."""
        tokens = np.asarray(tokens).reshape(-1)
        side = self.side(tokens.size)
        return tokens.reshape(side, side)

    def scored(self, target_cells: np.ndarray) -> np.ndarray:
        """Which cells of a target (from `cells`) say what the answer must be: PAD and ignored labels do not."""
        return np.asarray(target_cells) > 0

    def count_wrong(self, answer: np.ndarray, target: np.ndarray) -> int | None:
        """Cells where ``answer`` disagrees with ``target`` (tokens); None when their grids differ in size."""
        got, want = self.cells(answer), self.cells(target)
        if got.shape != want.shape:
            return None
        return int((self.scored(want) & (got != want)).sum())

    def matches(self, answer: np.ndarray, target: np.ndarray) -> bool:
        """Whether ``answer`` equals ``target`` wherever the target says something."""
        return self.count_wrong(answer, target) == 0

    def title(self, index: int, name: str) -> str:
        """The heading of test example ``index`` whose puzzle identifier is called ``name``."""
        return f"test example {index}"

    def test_views(self, seq_len: int, vocab_size: int, count: int, rng: np.random.Generator) -> list:
        """``count`` distinct views (`smoltrain.data.augment.TokenView`, the identity first) that test-time voting
        (``eval_augmentations``) runs; a ConfigError for a kind that has none."""
        raise ConfigError(f"eval_augmentations={count}: {self.name} puzzles have no test-time views; set "
                          "eval_augmentations=1")

    @abstractmethod
    def encode(self, grid: np.ndarray) -> np.ndarray:
        """A user's grid (the kind's own values, as `decode` gives them) as tokens."""

    @abstractmethod
    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """Tokens as the user's grid; tokens with no meaning there become the kind's empty value."""

    @abstractmethod
    def parse(self, text: str) -> np.ndarray:
        """The tokens of a puzzle the user typed; a DataError saying what to fix when the text is not one."""

    @abstractmethod
    def format(self, tokens: np.ndarray) -> str:
        """A grid as plain text, the way `parse` reads it back."""

    @abstractmethod
    def check_typed(self, tokens: np.ndarray, seq_len: int, vocab_size: int) -> None:
        """Raise a SmoltrainError when a parsed puzzle does not suit a model of this shape or breaks the rules."""

    @abstractmethod
    def verdict(self, inputs: np.ndarray, target: np.ndarray | None, answer: np.ndarray) -> Verdict:
        """How ``answer`` does on the puzzle ``inputs`` (and against ``target`` when known)."""

    @abstractmethod
    def report(self, inputs: np.ndarray, target: np.ndarray | None, answer: np.ndarray, steps: int) -> list[str]:
        """The lines `smoltrain solve` prints for a puzzle and its answer after ``steps`` ACT steps."""


# name -> the module whose ``KIND`` it is, in detection order. Imported on first use: those modules are the
# builders, which import this one.
_KIND_MODULES = {"arc": "smoltrain.data.arc", "maze": "smoltrain.data.maze", "sudoku": "smoltrain.data.sudoku"}
# What a dataset no other kind claims is: the reference Sudoku datasets carry no build_info.json.
FALLBACK_KIND = "sudoku"


class _KindRegistry(Mapping[str, PuzzleKind]):
    """``PUZZLE_KINDS``: name -> kind; listing the names imports nothing, looking one up imports its module."""

    def __getitem__(self, name: str) -> PuzzleKind:
        kind = importlib.import_module(_KIND_MODULES[name]).KIND
        assert isinstance(kind, PuzzleKind) and kind.name == name, f"{_KIND_MODULES[name]}.KIND is not {name!r}"
        return kind

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(_KIND_MODULES, key=("sudoku", "maze", "arc").index))  # the order users read them in

    def __len__(self) -> int:
        return len(_KIND_MODULES)


PUZZLE_KINDS: Mapping[str, PuzzleKind] = _KindRegistry()


def get_kind(name: str) -> PuzzleKind:
    """The kind called ``name``; a ConfigError naming the known ones otherwise."""
    if name not in _KIND_MODULES:
        raise ConfigError(f"unknown puzzle kind {name!r}: choose from {', '.join(PUZZLE_KINDS)}")
    return PUZZLE_KINDS[name]


def detect_kind(root: str | os.PathLike[str] | None = None, vocab_size: int | None = None,
                seq_len: int | None = None) -> PuzzleKind:
    """What a dataset holds, as its kind object. The one place that decides it.

    Our builders record it in ``<root>/build_info.json`` ("builder"), and that wins. A dataset built by the
    reference code has no such file, so its shape decides: ``vocab_size`` and ``seq_len`` when given (a run
    whose dataset is not on this machine knows them from its model), else those of ``root``'s dataset.json.
    Each kind says whether it claims a shape (ARC: a square canvas of at most 30x30 over 12 tokens; maze: 6
    tokens on a square grid but 4x4, which a 4x4 Sudoku also is); a shape no kind claims is a Sudoku.
    """
    if root is not None:
        try:
            name = json.loads((Path(root) / "build_info.json").read_text()).get("builder")
        except (OSError, ValueError, AttributeError):
            name = None
        if name in _KIND_MODULES:
            return PUZZLE_KINDS[name]
        if vocab_size is None or seq_len is None:
            root_path = Path(root)
            meta = load_metadata(root_path, "test" if (root_path / "test" / "dataset.json").is_file() else "train")
            vocab_size, seq_len = meta.vocab_size, meta.seq_len
    if vocab_size is None or seq_len is None:
        raise ValueError("detect_kind needs a dataset root or its vocab_size and seq_len")
    for name in _KIND_MODULES:
        kind = PUZZLE_KINDS[name]
        if kind.claims_shape(vocab_size, seq_len):
            return kind
    return PUZZLE_KINDS[FALLBACK_KIND]


def has_test_solutions(root: str | os.PathLike[str]) -> bool:
    """Whether the test split's labels are the real answers: False when the builder recorded that it had none
    (``build_info.json`` ``test_solutions: false``, an ARC test set built without its solutions file, whose
    labels are dummies). Datasets without that record (the reference's, older builds) have them."""
    try:
        info = json.loads((Path(root) / "build_info.json").read_text())
    except (OSError, ValueError):
        return True
    return not (isinstance(info, dict) and info.get("test_solutions") is False)


def load_identifiers(root: str | os.PathLike[str]) -> list[str] | None:
    """`<root>/identifiers.json` as a list (id -> name), or None when the file is absent."""
    path = Path(root) / "identifiers.json"
    if not path.is_file():
        return None
    return [str(n) for n in read_json(path, list, "rebuild the dataset")]


def _load_array(path: Path, mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"missing {path}: the dataset is incomplete, rebuild it")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path} ({e}): the file is corrupt, rebuild the dataset") from None


def _check_indices(
    where: str,
    num_examples: int,
    puzzle_identifiers: np.ndarray,
    puzzle_indices: np.ndarray,
    group_indices: np.ndarray,
    metadata: PuzzleDatasetMetadata,
) -> None:
    """Consistency of the index hierarchy groups -> puzzles -> examples (cheap, all in memory)."""
    num_puzzles = puzzle_identifiers.shape[0]
    checks = [
        (
            puzzle_identifiers.ndim == 1,
            f"puzzle_identifiers must be 1-D, got shape {puzzle_identifiers.shape}",
        ),
        (
            puzzle_indices.shape == (num_puzzles + 1,),
            f"puzzle_indices must have {num_puzzles + 1} entries (puzzles + 1), got {puzzle_indices.shape}",
        ),
        (
            group_indices.ndim == 1 and group_indices.shape[0] >= 1,
            f"group_indices must be 1-D and non-empty, got shape {group_indices.shape}",
        ),
    ]
    for ok, msg in checks:
        if not ok:
            raise DataError(f"{where}: {msg}")
    checks = [
        (
            puzzle_indices[0] == 0 and puzzle_indices[-1] == num_examples,
            f"puzzle_indices must run from 0 to the number of examples {num_examples}, "
            f"got {puzzle_indices[0]}..{puzzle_indices[-1]}",
        ),
        (bool(np.all(np.diff(puzzle_indices) >= 0)), "puzzle_indices must be non-decreasing"),
        (
            group_indices[0] == 0 and group_indices[-1] == num_puzzles,
            f"group_indices must run from 0 to the number of puzzles {num_puzzles}, "
            f"got {group_indices[0]}..{group_indices[-1]}",
        ),
        (bool(np.all(np.diff(group_indices) > 0)), "group_indices must be increasing (no empty group)"),
        (
            metadata.total_groups == group_indices.shape[0] - 1,
            f"metadata total_groups={metadata.total_groups} but group_indices holds "
            f"{group_indices.shape[0] - 1} groups",
        ),
        (
            metadata.total_puzzles == num_puzzles,
            f"metadata total_puzzles={metadata.total_puzzles} but there are {num_puzzles} puzzles",
        ),
        (
            num_puzzles == 0
            or (puzzle_identifiers.min() >= 0 and puzzle_identifiers.max() < metadata.num_puzzle_identifiers),
            f"puzzle_identifiers must lie in 0..{metadata.num_puzzle_identifiers - 1} (below num_puzzle_identifiers)",
        ),
    ]
    for ok, msg in checks:
        if not ok:
            raise DataError(f"{where}: {msg}")


class _Root(NamedTuple):
    path: Path
    metadata: PuzzleDatasetMetadata
    inputs: np.ndarray  # memory-mapped
    labels: np.ndarray  # memory-mapped
    puzzle_identifiers: np.ndarray
    puzzle_indices: np.ndarray
    group_indices: np.ndarray


def _open_root(root: Path, split: str) -> _Root:
    metadata = load_metadata(root, split)
    split_dir = root / split
    arrays = {
        name: _load_array(split_dir / f"{SET_NAME}__{name}.npy", mmap=name in ("inputs", "labels")) for name in FIELDS
    }
    inputs, labels = arrays["inputs"], arrays["labels"]
    where = str(split_dir)
    if inputs.ndim != 2 or inputs.shape[1] != metadata.seq_len:
        raise DataError(
            f"{where}: all__inputs.npy has shape {inputs.shape}, expected [N, seq_len={metadata.seq_len}]: "
            "rebuild the dataset"
        )
    if labels.shape != inputs.shape:
        raise DataError(f"{where}: all__labels.npy shape {labels.shape} differs from inputs {inputs.shape}")
    if not (np.issubdtype(inputs.dtype, np.integer) and np.issubdtype(labels.dtype, np.integer)):
        raise DataError(f"{where}: inputs/labels must be integer arrays, got {inputs.dtype}/{labels.dtype}")
    if metadata.sets != [SET_NAME]:
        raise DataError(f"{where}: sets must be ['{SET_NAME}'], got {metadata.sets}")
    _check_indices(
        where,
        inputs.shape[0],
        arrays["puzzle_identifiers"],
        arrays["puzzle_indices"],
        arrays["group_indices"],
        metadata,
    )
    return _Root(
        root,
        metadata,
        inputs,
        labels,
        arrays["puzzle_identifiers"].astype(np.int64),
        arrays["puzzle_indices"].astype(np.int64),
        arrays["group_indices"].astype(np.int64),
    )


class EvalBatch(NamedTuple):
    """One test-mode batch for this rank: `batch` is padded to the local batch size."""

    batch: dict[str, torch.Tensor]
    num_real: int  # real (unpadded) rows of this rank's slice; the rest is padding
    global_num_real: int  # real rows over all ranks (the reference's "global effective batch size")


class PuzzleDataset:
    """Reference-compatible sampler over one or several dataset roots (see the module docstring).

    Train mode: `iter_train()` yields the remaining batches of the current pass as dicts of int32
    tensors ``{inputs, labels, puzzle_identifiers}`` with ``global_batch_size // world_size`` rows.
    Each call continues where the previous one stopped, so the stream of batches over successive
    calls is the same whether or not it was interrupted. `state_dict()` gives the position of the
    next batch, ``{"pass": p, "batch": b}`` (pass counted from 1 like the reference `_iters`, batch
    from 0); `load_state_dict` on a fresh dataset makes the same batches come next (the pass's order
    is regenerated from the seed and the first b batches are skipped without loading rows). The state
    rolls over to ``{"pass": p + 1, "batch": 0}`` as soon as the last batch of pass p is yielded,
    so ``state["pass"] - 1`` passes are complete whenever ``state["batch"] == 0``.

    Test mode: `iter_test()` yields `EvalBatch` tuples covering every example exactly once.
    Iterating the dataset itself dispatches on `test_mode`. One iterator at a time per dataset, and
    keep using it until it ends: every `iter_train()` call replays its pass up to the saved position.
    """

    def __init__(
        self,
        root_or_roots: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        split: str,
        global_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        test_mode: bool = False,
        epochs_per_iter: int = 1,
    ) -> None:
        if isinstance(root_or_roots, (str, os.PathLike)):
            roots = [Path(root_or_roots)]
        else:
            roots = [Path(r) for r in root_or_roots]
        if not roots:
            raise ConfigError("no dataset path given: set data_paths to at least one dataset directory")
        if global_batch_size <= 0:
            raise ConfigError(f"global_batch_size must be positive, got {global_batch_size}")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is not in 0..world_size-1 (world_size={world_size})")
        if global_batch_size % world_size:
            raise ConfigError(
                f"global_batch_size {global_batch_size} must be a multiple of the number of processes "
                f"{world_size}: change global_batch_size"
            )
        if epochs_per_iter <= 0:
            raise ConfigError(f"epochs_per_iter must be positive, got {epochs_per_iter}")
        self.split = split
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // world_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.test_mode = test_mode
        self.epochs_per_iter = epochs_per_iter

        self._roots = [_open_root(r, split) for r in roots]
        self.metadata = self._merge_metadata()
        self._concatenate_indices()
        self._index_lists: tuple[list[int], list[int]] | None = None  # built on first train pass
        # Position of the next train batch (see class docstring).
        self._pass = 1
        self._batch = 0

    # -- construction ---------------------------------------------------------------------------

    def _merge_metadata(self) -> PuzzleDatasetMetadata:
        return combine_metadata([(r.path, r.metadata) for r in self._roots])

    def _concatenate_indices(self) -> None:
        example_offsets = [0]
        puzzle_offsets = [0]
        id_offset = 0
        puzzle_indices, group_indices, identifiers = [], [], []
        blank = self.metadata.blank_identifier_id
        for r in self._roots:
            puzzle_indices.append(r.puzzle_indices[:-1] + example_offsets[-1])
            group_indices.append(r.group_indices[:-1] + puzzle_offsets[-1])
            ids = r.puzzle_identifiers
            identifiers.append(np.where(ids == blank, blank, ids + id_offset))
            example_offsets.append(example_offsets[-1] + r.inputs.shape[0])
            puzzle_offsets.append(puzzle_offsets[-1] + r.puzzle_identifiers.shape[0])
            id_offset += r.metadata.num_puzzle_identifiers - 1
        self._example_offsets = np.array(example_offsets, dtype=np.int64)
        self.puzzle_indices = np.concatenate([*puzzle_indices, [example_offsets[-1]]]).astype(np.int64)
        self.group_indices = np.concatenate([*group_indices, [puzzle_offsets[-1]]]).astype(np.int64)
        self.puzzle_identifiers = np.concatenate(identifiers).astype(np.int64)
        self.num_examples = int(example_offsets[-1])

    @property
    def identifiers(self) -> list[str] | None:
        """Identifier names (id -> name) of the combined dataset, or None if a root has none."""
        names: list[str] = []
        for i, r in enumerate(self._roots):
            root_names = load_identifiers(r.path)
            if root_names is None:
                return None
            names.extend(root_names if i == 0 else root_names[1:])  # drop repeated "<blank>"
        return names

    # -- schedule helpers -----------------------------------------------------------------------

    @property
    def steps_per_epoch(self) -> float:
        """Optimizer steps per epoch as the reference counts them (one augmentation per group)."""
        return self.metadata.total_groups * self.metadata.mean_puzzle_examples / self.global_batch_size

    def total_steps(self, epochs: int | float) -> int:
        """The reference `total_steps = int(epochs * total_groups * mean_puzzle_examples / batch)`."""
        return int(epochs * self.metadata.total_groups * self.metadata.mean_puzzle_examples / self.global_batch_size)

    # -- row access -----------------------------------------------------------------------------

    def _gather(self, field: str, rows: np.ndarray) -> np.ndarray:
        """Rows `rows` (global example indices) of `field` as int32, from the memory maps."""
        out = np.empty((rows.shape[0], self.metadata.seq_len), dtype=np.int32)
        if len(self._roots) == 1:
            out[:] = getattr(self._roots[0], field)[rows]
            return out
        which = np.searchsorted(self._example_offsets, rows, side="right") - 1
        for i, r in enumerate(self._roots):
            mask = which == i
            if mask.any():
                out[mask] = getattr(r, field)[rows[mask] - self._example_offsets[i]]
        return out

    def _collate(self, rows: np.ndarray, puzzles: np.ndarray) -> dict[str, torch.Tensor]:
        inputs = self._gather("inputs", rows)
        labels = self._gather("labels", rows)
        if self.metadata.ignore_label_id is not None:
            labels[labels == self.metadata.ignore_label_id] = IGNORE_LABEL_ID
        identifiers = self.puzzle_identifiers[puzzles].astype(np.int32)
        pad = self.local_batch_size - rows.shape[0]
        if pad > 0:
            inputs = np.concatenate([inputs, np.full((pad, inputs.shape[1]), self.metadata.pad_id, np.int32)])
            labels = np.concatenate([labels, np.full((pad, labels.shape[1]), IGNORE_LABEL_ID, np.int32)])
            identifiers = np.concatenate([identifiers, np.full(pad, self.metadata.blank_identifier_id, np.int32)])
        return {
            "inputs": torch.from_numpy(inputs),
            "labels": torch.from_numpy(labels),
            "puzzle_identifiers": torch.from_numpy(identifiers),
        }

    # -- train ----------------------------------------------------------------------------------

    def _pass_batches(self, pass_id: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Global batches of pass `pass_id` as (example rows, puzzle of each row); indices only."""
        rng = np.random.Generator(np.random.Philox(seed=self.seed + pass_id))
        num_groups = self.group_indices.shape[0] - 1
        group_order = np.concatenate([rng.permutation(num_groups) for _ in range(self.epochs_per_iter)]).tolist()
        # Plain Python ints and lists in this loop: it runs once per group (millions of times per pass
        # for Sudoku recipes), and numpy scalar/array overhead would dominate. Same RNG calls as the
        # reference, in the same order.
        if self._index_lists is None:
            self._index_lists = (self.group_indices.tolist(), self.puzzle_indices.tolist())
        group_indices, puzzle_indices = self._index_lists
        integers, choice = rng.integers, rng.choice
        batch_size = self.global_batch_size
        total = len(group_order)
        pos = 0
        while pos < total:
            rows: list[int] = []
            puzzles: list[int] = []
            size = 0
            while pos < total and size < batch_size:
                group = group_order[pos]
                pos += 1
                puzzle = int(integers(group_indices[group], group_indices[group + 1]))
                start = puzzle_indices[puzzle]
                puzzle_size = puzzle_indices[puzzle + 1] - start
                take = min(puzzle_size, batch_size - size)
                if puzzle_size == 1:  # nothing to choose: no draw, keeps 1-example datasets reference-identical
                    rows.append(start)
                    puzzles.append(puzzle)
                elif take > 0:
                    rows.extend((start + choice(puzzle_size, take, replace=False)).tolist())
                    puzzles.extend([puzzle] * take)
                size += take
            if size < batch_size:
                return  # drop the last incomplete batch, as the reference does
            yield np.array(rows, dtype=np.int64), np.array(puzzles, dtype=np.int64)

    def iter_train(self) -> Iterator[dict[str, torch.Tensor]]:
        """Yield the rest of the current pass (resuming mid-pass after `load_state_dict`)."""
        pass_id, skip = self._pass, self._batch
        batches = self._pass_batches(pass_id)
        upcoming = next(batches, None)
        for _ in range(skip):
            upcoming = next(batches, None)
        if upcoming is None:
            if skip:
                raise DataError(
                    f"cannot resume at batch {skip} of pass {pass_id}: that pass has fewer batches; the "
                    "checkpoint belongs to a different dataset, batch size or seed"
                )
            raise DataError(
                f"the {self.split} split has too few examples for one global batch of "
                f"{self.global_batch_size} rows (a pass draws one puzzle from each group of examples, so it "
                f"holds fewer rows than the split): lower global_batch_size, e.g. "
                f"global_batch_size={max(1, self.global_batch_size // 4)}, or add puzzles or augmentations"
            )
        index = skip
        while upcoming is not None:
            current = upcoming
            # Look one batch ahead so the state already points at the next pass when this is the last
            # batch of the pass (a checkpoint taken then resumes at the start of the next pass).
            upcoming = next(batches, None)
            if upcoming is None:
                self._pass, self._batch = pass_id + 1, 0
            else:
                self._batch = index + 1
            index += 1
            rows, puzzles = current
            lo, hi = self.rank * self.local_batch_size, (self.rank + 1) * self.local_batch_size
            yield self._collate(rows[lo:hi], puzzles[lo:hi])

    def state_dict(self) -> dict[str, int]:
        """Position of the next train batch: ``{"pass": p, "batch": b}``."""
        return {"pass": self._pass, "batch": self._batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a `state_dict()`; the same batches as in the saved run come next."""
        try:
            pass_id, batch = int(state["pass"]), int(state["batch"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"invalid data loader state {state!r}: expected {{'pass': int, 'batch': int}}") from None
        if pass_id < 1 or batch < 0:
            raise DataError(f"invalid data loader state {state!r}: pass must be >= 1 and batch >= 0")
        self._pass, self._batch = pass_id, batch

    # -- test -----------------------------------------------------------------------------------

    def iter_test(self, examples: np.ndarray | None = None) -> Iterator[EvalBatch]:
        """Every example once (or the examples ``examples`` names, in their order), in global windows; this
        rank's slice padded to local size."""
        order = np.arange(self.num_examples, dtype=np.int64) if examples is None else np.asarray(examples, np.int64)
        total = len(order)
        for start in range(0, total, self.global_batch_size):
            end = min(total, start + self.global_batch_size)
            lo = start + self.rank * self.local_batch_size
            hi = min(start + (self.rank + 1) * self.local_batch_size, end)
            rows = order[lo:max(lo, hi)]
            # The puzzle of a row is the last puzzle starting at or before it (skips empty puzzles).
            puzzles = np.searchsorted(self.puzzle_indices, rows, side="right") - 1
            yield EvalBatch(self._collate(rows, puzzles), int(rows.shape[0]), end - start)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]] | Iterator[EvalBatch]:
        return self.iter_test() if self.test_mode else self.iter_train()
