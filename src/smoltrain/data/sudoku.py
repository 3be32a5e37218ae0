"""Sudoku: the board rules, the Python API of the compiled solver/rater/generator, and the dataset builder.

Board encoding used throughout: a flat array of n*n raw digits, 0 = blank, 1..n = digits.
Dataset tokens (reference `build_sudoku_dataset.py`): 0 = PAD, 1 = blank, 2..n+1 = digits, i.e.
token = digit + 1; vocab n + 2, seq_len n * n; labels are the full solution, so every cell
(givens included) is supervised.

The solver counts guesses (rating = guesses of the exhaustive limit-2 search, 0 = solved by
propagation alone); the generator removes clues of a random full grid while the solution stays unique,
then optionally hill-climbs the rating. How both work is told in `smoltrain.data.sudoku_solver`, which
holds the numba kernels.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from smoltrain.data.augment import sudoku_shuffle_batch, sudoku_views
from smoltrain.data.build import PuzzleBuilder
from smoltrain.data.puzzle_source import (
    CSV_COLUMNS,
    CsvPuzzles,
    PuzzleSplit,
    candidate_seeds,
    check_counts,
    check_seed,
    default_workers,
    read_puzzle_csv,
    run_in_chunks,
    select,
    write_puzzle_csv,
)
from smoltrain.data.puzzles import DrawingHints, PuzzleKind, Verdict
from smoltrain.data.sudoku_solver import Topology, generate_batch, solve_board
from smoltrain.errors import DataError, SmoltrainError

# ------------------------------------------------------------------------------------------------
# Board topology


def box_shape(n: int) -> tuple[int, int]:
    """Box rows x box columns for an n x n Sudoku: 4 -> 2x2, 6 -> 2x3 (2 rows, 3 columns), 9 -> 3x3."""
    if n not in (4, 6, 8, 9):
        raise DataError(f"unsupported Sudoku size {n}: use 4, 6, 8 or 9 (boxes 2x2, 2x3, 2x4, 3x3)")
    rows = max(d for d in range(1, int(n**0.5) + 1) if n % d == 0)
    return rows, n // rows


_TOPOLOGIES: dict[int, Topology] = {}


def topology(n: int) -> Topology:
    """The kernels' index tables of an n x n board (built once per size)."""
    if n not in _TOPOLOGIES:
        _TOPOLOGIES[n] = Topology(*box_shape(n))
    return _TOPOLOGIES[n]


# ------------------------------------------------------------------------------------------------
# Python API of the solver and generator


def solve_sudoku(puzzle: np.ndarray, n: int = 9, limit: int = 2) -> tuple[int, int, np.ndarray]:
    """Solve a board of raw digits (0 = blank, flat or n x n).

    Returns (number of solutions found, stopping at `limit`; guesses; first solution, zeros if none).
    """
    topo = topology(n)
    board = np.ascontiguousarray(np.asarray(puzzle, dtype=np.int8).reshape(-1))
    if board.shape[0] != n * n:
        raise ValueError(f"expected {n * n} cells for a {n}x{n} Sudoku, got {board.shape[0]}")
    count, guesses, sol1, _ = solve_board(board, topo.tables, topo.pop, n, topo.full, limit)
    return int(count), int(guesses), sol1


def rate_sudoku(puzzle: np.ndarray, n: int = 9) -> int:
    """Guesses of the exhaustive limit-2 search (0 = solved by propagation alone)."""
    return solve_sudoku(puzzle, n, limit=2)[1]


# Walk budget per extra puzzle of a climb, and how far apart (in given positions) its puzzles must be.
# Measured on 9x9 at --min-difficulty 60-80: about one kept neighbour per 100 walk steps at distance 4.
WALK_STEPS_PER_PUZZLE = 200
NEIGHBOUR_MIN_DISTANCE = 4


def _check_per_climb(per_climb: int) -> None:
    if per_climb < 1:
        raise DataError(
            f"per_climb (--per-climb) must be >= 1 (1 = a new solution grid for every puzzle), got {per_climb}"
        )


def generate_candidates(
    seeds: np.ndarray,
    n: int = 9,
    target_clues: int = 0,
    harden_steps: int = 0,
    target_rating: int = 0,
    workers: int | None = None,
    per_climb: int = 1,
    min_distance: int = NEIGHBOUR_MIN_DISTANCE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Puzzles from each seed (0 <= seed < 2**32), spread over `workers` threads (default: all cores).

    Returns (puzzles [k, per_climb, n*n] int8, solutions [k, n*n] int8, ratings [k, per_climb] int64).
    Every puzzle has a unique solution; it is minimal unless `target_clues` stopped the clue removal
    first. With `harden_steps`, up to that many hill-climbing steps raise the rating of puzzles[:, 0],
    stopping at `target_rating`; a climb that got there adds up to `per_climb - 1` hard neighbours with
    the same solution (see `_walk`). Empty slots have rating -1.
    """
    topo = topology(n)
    seeds = np.ascontiguousarray(seeds, dtype=np.int64)
    k = seeds.shape[0]
    _check_per_climb(per_climb)
    puzzles = np.zeros((k, per_climb, n * n), dtype=np.int8)
    solutions = np.zeros((k, n * n), dtype=np.int8)
    ratings = np.zeros((k, per_climb), dtype=np.int64)
    walk_steps = WALK_STEPS_PER_PUZZLE * (per_climb - 1)

    def run(lo: int, hi: int) -> None:
        # Row slices of C-contiguous arrays are contiguous views: results land in place.
        generate_batch(
            seeds[lo:hi],
            target_clues,
            harden_steps,
            target_rating,
            walk_steps,
            min_distance,
            topo.tables,
            topo.pop,
            n,
            topo.full,
            puzzles[lo:hi],
            solutions[lo:hi],
            ratings[lo:hi],
        )

    run_in_chunks(run, k, workers)  # small chunks: hardened candidates take very different times
    return puzzles, solutions, ratings


def default_harden_steps(min_difficulty: int | None) -> int:
    """Hill-climbing budget used when a difficulty is asked for and no budget is given.

    Random minimal 9x9 puzzles average a rating of ~1.3 and almost never reach 20, so filtering alone
    cannot reach a high `min_difficulty`; the climb stops as soon as the target is reached, so a
    generous budget only costs time on candidates that stall (those are then rejected).
    """
    if not min_difficulty or min_difficulty <= 0:
        return 0
    return int(min(3000, max(100, 25 * min_difficulty)))


def default_per_climb(harden_steps: int) -> int:
    """Puzzles per successful climb: 8 when climbing (about 3x faster at Sudoku-Extreme's difficulty
    than one per climb, measured in bench/RESULTS.md), else 1 (random minimal puzzles are cheap)."""
    return 8 if harden_steps > 0 else 1


def generate_sudoku_puzzles(
    num: int,
    size: int = 9,
    seed: int | np.random.SeedSequence = 0,
    *,
    min_difficulty: int | None = None,
    target_clues: int | None = None,
    harden_steps: int | None = None,
    exclude: Iterable[bytes] = (),
    workers: int | None = None,
    progress: bool = False,
    per_climb: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`num` distinct puzzles: (questions [num, size**2] uint8 with 0 = blank, answers, ratings).

    Deterministic for a given seed (any number of `workers`): candidate i is a pure function of
    (seed, i), and candidates are accepted in index order. A candidate is rejected if its rating is
    below `min_difficulty`, or if its question string is a duplicate or in `exclude` (raw-digit
    bytes of questions, e.g. the other split). `harden_steps=None` picks `default_harden_steps`.
    `per_climb`: how many puzzles one successful climb may yield (itself and hard neighbours with
    the same solution grid); None picks `default_per_climb`. 1 gives a new grid for every puzzle.
    """
    if num < 0:
        raise DataError(f"the number of puzzles to generate must be >= 0, got {num}")
    box_shape(size)  # validates the size
    if harden_steps is None:
        harden_steps = default_harden_steps(min_difficulty)
    if harden_steps < 0:
        raise DataError(f"harden_steps must be >= 0, got {harden_steps}")
    if per_climb is None:
        per_climb = default_per_climb(harden_steps)
    _check_per_climb(per_climb)
    if target_clues is not None and not 0 <= target_clues <= size * size:
        raise DataError(f"target_clues must be in 0..{size * size} for a {size}x{size} Sudoku, got {target_clues}")
    min_rating = int(min_difficulty or 0)
    seen = set(exclude)
    questions = np.zeros((num, size * size), dtype=np.uint8)
    answers = np.zeros((num, size * size), dtype=np.uint8)
    ratings = np.zeros(num, dtype=np.int64)
    # Give up when acceptance is hopeless (a too-high min_difficulty, or more distinct 4x4 puzzles
    # than exist) instead of looping forever.
    max_candidates = 200 * num + 20_000
    if workers is not None and workers < 1:
        raise DataError(f"workers must be >= 1, got {workers}")
    workers = workers or default_workers()
    accepted = 0
    tried = 0
    with tqdm(total=num, disable=not progress, desc=f"generating {size}x{size} sudokus", unit="puzzle") as bar:
        while accepted < num:
            if tried >= max_candidates:
                raise DataError(
                    f"generated {tried} {size}x{size} candidates but only {accepted} of the {num} asked for "
                    f"were new and had rating >= {min_rating}: lower --min-difficulty, raise --harden-steps, "
                    "or ask for fewer puzzles (4x4 has only a few thousand distinct minimal puzzles)"
                )
            # Size the next batch by the acceptance rate so far (optimistic, so little is wasted);
            # hardened candidates take seconds each, so keep their batches small for progress updates.
            rate = (accepted + per_climb) / (tried + 1)
            cap = 1024 if harden_steps == 0 else 16 * workers
            batch = int(min(cap, max(2 * workers, np.ceil((num - accepted) / rate))))
            batch = min(batch, max_candidates - tried)
            seeds = candidate_seeds(seed, tried, batch)
            puzzles, solutions, cand_ratings = generate_candidates(
                seeds, size, target_clues or 0, harden_steps, min_rating, workers, per_climb
            )
            tried += batch
            for j, slot in np.argwhere(cand_ratings >= max(min_rating, 0)):  # candidate order, then slot
                key = puzzles[j, slot].astype(np.uint8).tobytes()
                if key in seen:
                    continue
                seen.add(key)
                questions[accepted] = puzzles[j, slot]
                answers[accepted] = solutions[j]
                ratings[accepted] = cand_ratings[j, slot]
                accepted += 1
                bar.update(1)
                if accepted == num:
                    break
    return questions, answers, ratings


# ------------------------------------------------------------------------------------------------
# CSV sources (the Sudoku-Extreme files and anything in the same format)

SOURCE_REPO = "sapientinc/sudoku-extreme"

# One split as raw digits: questions 0 = blank, answers 1..n (the fields of the shared PuzzleSplit).
SudokuSplit = PuzzleSplit


def _digit_table(n: int, allow_blank: bool) -> np.ndarray:
    table = np.full(256, 255, dtype=np.uint8)
    if allow_blank:
        table[ord(".")] = 0
        table[ord("0")] = 0
    for d in range(1, n + 1):
        table[ord(str(d))] = d
    return table


def read_sudoku_csv(path: str | os.PathLike[str], n: int = 9) -> SudokuSplit:
    """Read and validate a `source,question,answer,rating` CSV (header line required).

    `question` has n*n characters, `.` or `0` for a blank, 1..n for a given; `answer` is the full
    solution. Any malformed row stops with a DataError naming the file, the line and the problem:
    wrong field count, wrong length, a bad character, a given that disagrees with the answer, an
    answer that is not a valid Sudoku, or a rating that is not an integer.
    """
    raw = read_puzzle_csv(path, n * n, lambda _length: f"for a {n}x{n} Sudoku")
    _decode_and_check(raw, n)
    return SudokuSplit(raw.questions, raw.answers, raw.ratings, np.arange(raw.lines.shape[0]), str(raw.path))


def _decode_and_check(raw: CsvPuzzles, n: int) -> None:
    """Turn ASCII bytes into digits in place and validate, in chunks to bound memory."""
    q_table, a_table = _digit_table(n, True), _digit_table(n, False)
    units = topology(n).tables[0]
    full = ((1 << n) - 1) << 1  # digits 1..n as bits 1..n
    chunk = 100_000
    for start in range(0, raw.questions.shape[0], chunk):
        q_raw = raw.questions[start : start + chunk]
        a_raw = raw.answers[start : start + chunk]
        q, a = q_table[q_raw], a_table[a_raw]
        for what, decoded, ascii_codes, allowed in (
            ("question", q, q_raw, f"'.' or '0' for a blank and 1-{n}"),
            ("answer", a, a_raw, f"1-{n} (the full solution, no blanks)"),
        ):
            bad = decoded == 255
            if bad.any():
                row, col = np.argwhere(bad)[0]
                raise DataError(
                    f"{raw.where(start + row)}: {what} has the bad character "
                    f"{chr(ascii_codes[row, col])!r} at position {col + 1}; allowed are {allowed}"
                )
        clash = (q != 0) & (q != a)
        if clash.any():
            row, col = np.argwhere(clash)[0]
            raise DataError(
                f"{raw.where(start + row)}: question gives {q[row, col]} at row {col // n + 1}, "
                f"column {col % n + 1} but the answer has {a[row, col]} there"
            )
        bits = np.left_shift(np.int32(1), a.astype(np.int32))[:, units]  # [rows, 3n, n]
        unit_ok = np.bitwise_or.reduce(bits, axis=2) == full
        if not unit_ok.all():
            row, unit = np.argwhere(~unit_ok)[0]
            kind = ("row", "column", "box")[unit // n]
            raise DataError(
                f"{raw.where(start + row)}: the answer is not a valid Sudoku solution "
                f"({kind} {unit % n + 1} repeats a digit)"
            )
        q_raw[:] = q
        a_raw[:] = a


def _digits_text(digits: np.ndarray) -> str:
    return "".join("." if d == 0 else str(d) for d in digits)


def write_sudoku_csv(path: Path, split: SudokuSplit, source_name: str) -> None:
    """Write puzzles in the Sudoku-Extreme CSV layout (`.` for blanks), readable by `csv:PATH`."""
    write_puzzle_csv(path, split, source_name, _digits_text)


# ------------------------------------------------------------------------------------------------
# Dataset builder


@dataclass(frozen=True)
class SudokuOptions:
    """What a Sudoku build makes, checked when made; one field per `smoltrain data sudoku` flag of that name.

    source:
      "generate"  the offline generator: `num_train` (default 1000) and `num_test` (default 1000)
                  puzzles from independent seed streams; test puzzles never occur among train puzzles.
      "hf"        download `train.csv` / `test.csv` of `source_repo` (Sudoku-Extreme, 9x9 only).
      "csv:PATH"  a directory with train.csv and test.csv, or one CSV file that is split with a seeded
                  random `num_test` rows (default 10%) held out for test.
    Train puzzles are subsampled to `subsample_size` (alias `num_train` for CSV sources) with a seeded
    `choice` and the chosen rows go to subsample_indices.json; `num_test` subsamples the CSV test split
    (default: all of it, like the reference). `min_difficulty` keeps puzzles with rating >= it (CSV:
    the rating column; generate: our solver's guess count, reached by hill-climbing for up to
    `harden_steps` steps; each climb that gets there yields up to `per_climb` puzzles). `num_aug`
    augmentations per train puzzle (test is never augmented).
    `target_clues` stops the generator's clue removal early (easier puzzles); `workers` are its threads.
    """

    source: str = "generate"
    size: int = 9
    num_train: int | None = None
    num_test: int | None = None
    subsample_size: int | None = None
    num_aug: int = 0
    min_difficulty: int | None = None
    seed: int = 0
    target_clues: int | None = None
    harden_steps: int | None = None
    per_climb: int | None = None
    workers: int | None = None
    source_repo: str = SOURCE_REPO

    def __post_init__(self) -> None:
        check_counts(num_train=self.num_train, num_test=self.num_test, subsample_size=self.subsample_size)
        check_seed(self.seed)
        if self.num_aug < 0:
            raise DataError(f"num_aug must be >= 0, got {self.num_aug}")
        if self.min_difficulty is not None and self.min_difficulty < 0:
            raise DataError(f"min_difficulty must be >= 0, got {self.min_difficulty}")
        box_shape(self.size)  # rejects unsupported sizes


def _encode(digits: np.ndarray) -> np.ndarray:
    # Reference token layout: 0 PAD, 1 blank, 2..n+1 digits.
    return digits.astype(np.uint8) + 1


def _augment(
    split: SudokuSplit,
    n: int,
    num_aug: int,
    rng: np.random.Generator,
    forbidden: set[bytes],
    progress: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """Originals followed by their augmentations, group by group.

    An augmentation whose question equals a test question is redrawn (then dropped after 100 tries),
    so no test puzzle ever appears verbatim among the train rows (this matters for 4x4, whose puzzle
    space is tiny). Returns (questions, answers, group_sizes, counters).
    """
    box_rows, box_cols = box_shape(n)
    out_q, out_a, sizes = [], [], []
    redrawn = dropped = 0
    for i in tqdm(range(split.questions.shape[0]), disable=not progress, desc="augmenting", unit="puzzle"):
        q0, a0 = split.questions[i], split.answers[i]
        if num_aug == 0:
            qs, as_ = q0[None], a0[None]
        else:
            aug_q, aug_a = sudoku_shuffle_batch(q0, a0, n, box_rows, box_cols, rng, num_aug)
            if forbidden:
                for _attempt in range(100):
                    bad = [j for j in range(num_aug) if aug_q[j].tobytes() in forbidden]
                    if not bad:
                        break
                    redrawn += len(bad)
                    new_q, new_a = sudoku_shuffle_batch(q0, a0, n, box_rows, box_cols, rng, len(bad))
                    aug_q[bad], aug_a[bad] = new_q, new_a
                keep = np.array([aug_q[j].tobytes() not in forbidden for j in range(num_aug)])
                dropped += int((~keep).sum())
                aug_q, aug_a = aug_q[keep], aug_a[keep]
            qs, as_ = np.concatenate([q0[None], aug_q]), np.concatenate([a0[None], aug_a])
        out_q.append(qs)
        out_a.append(as_)
        sizes.append(qs.shape[0])
    cells = n * n
    questions = np.concatenate(out_q) if out_q else np.zeros((0, cells), np.uint8)
    answers = np.concatenate(out_a) if out_a else np.zeros((0, cells), np.uint8)
    return questions, answers, np.asarray(sizes, dtype=np.int64), {"redrawn": redrawn, "dropped": dropped}


def _filter_difficulty(split: SudokuSplit, min_difficulty: int) -> SudokuSplit:
    if split.ratings.size and (split.ratings < 0).any():
        raise DataError(
            f"{split.path} has no rating column, so --min-difficulty cannot filter it: add a rating column "
            "or drop --min-difficulty"
        )
    return select(split, np.flatnonzero(split.ratings >= min_difficulty))


def _rating_stats(split: SudokuSplit) -> dict[str, float] | None:
    r = split.ratings[split.ratings >= 0]
    if r.size == 0:
        return None
    return {"mean": round(float(r.mean()), 3), "median": float(np.median(r)), "max": int(r.max())}


class SudokuBuilder(PuzzleBuilder[SudokuOptions]):
    """The Sudoku hooks of the fixed-size puzzle build: raw digits in the splits, tokens digit + 1."""

    kind = "sudoku"
    noun = "puzzles"
    title = "Sudoku"
    filter_flag = "--min-difficulty"
    hf_size = 9
    csv_example = "data/sudoku-csv"

    @property
    def vocab_size(self) -> int:
        return self.options.size + 2

    @property
    def filter_threshold(self) -> int | None:
        return self.options.min_difficulty

    def settings(self) -> dict[str, Any]:
        o = self.options
        return {
            "size": o.size,
            "box": list(box_shape(o.size)),
            "seed": o.seed,
            "num_aug": o.num_aug,
            "min_difficulty": o.min_difficulty,
            "target_clues": o.target_clues,
            "rating_scale": "smoltrain solver guesses (singles + locked candidates, limit-2 search)"
            if o.source == "generate"
            else "the source file's rating column (Sudoku-Extreme: tdoku backtracks)",
        }

    def read_csv(self, path: Path) -> SudokuSplit:
        return read_sudoku_csv(path, self.options.size)

    def generation_settings(self) -> dict[str, Any]:
        o = self.options
        steps = default_harden_steps(o.min_difficulty) if o.harden_steps is None else o.harden_steps
        return {"harden_steps": steps, "per_climb": default_per_climb(steps) if o.per_climb is None else o.per_climb}

    def generate(
        self, count: int, seed: np.random.SeedSequence, exclude: set[bytes], settings: dict[str, Any], progress: bool
    ) -> tuple[SudokuSplit, dict[str, Any]]:
        o = self.options
        questions, answers, ratings = generate_sudoku_puzzles(
            count, o.size, seed, min_difficulty=o.min_difficulty, target_clues=o.target_clues,
            harden_steps=settings["harden_steps"], per_climb=settings["per_climb"], exclude=exclude,
            workers=o.workers, progress=progress,
        )  # fmt: skip
        return SudokuSplit(questions, answers, ratings, np.arange(count)), {}

    def filter(self, train: SudokuSplit, test: SudokuSplit, info: dict[str, Any]) -> tuple[SudokuSplit, SudokuSplit]:
        threshold = self.options.min_difficulty
        assert threshold is not None  # called only with a filter
        return _filter_difficulty(train, threshold), _filter_difficulty(test, threshold)

    def augment(
        self, train: SudokuSplit, forbidden: set[bytes], rng: np.random.Generator, progress: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        questions, answers, sizes, counters = _augment(
            train, self.options.size, self.options.num_aug, rng, forbidden, progress
        )
        facts = {"augmentations_redrawn": counters["redrawn"], "augmentations_dropped": counters["dropped"]}
        return questions, answers, sizes, facts

    def to_tokens(self, cells: np.ndarray) -> np.ndarray:
        return _encode(cells)

    def statistics(self, train: SudokuSplit, test: SudokuSplit) -> dict[str, Any]:
        return {
            "mean_clues": {
                "train": round(float((train.questions > 0).sum(1).mean()), 3),
                "test": round(float((test.questions > 0).sum(1).mean()), 3),
            },
            "rating": {"train": _rating_stats(train), "test": _rating_stats(test)},
        }

    def write_csv(self, path: Path, split: SudokuSplit, source_name: str) -> None:
        write_sudoku_csv(path, split, source_name)


def build_sudoku_dataset(
    output_dir: str | os.PathLike[str], source: str = "generate", *, progress: bool = False, **options: Any
) -> dict[str, Any]:
    """Build a Sudoku dataset in the reference layout at `output_dir` (atomically); return build info.

    `options` are the other fields of `SudokuOptions` (which tells what each does), as keywords.
    """
    return SudokuBuilder(SudokuOptions(source=source, **options)).build(output_dir, progress)


# ------------------------------------------------------------------------------------------------
# The puzzle kind: boards a user types and reads, and what solves one

SIZES = {16: 4, 36: 6, 81: 9}  # cells -> n of the sizes a user may type
SEPARATORS = frozenset("|-+")  # drawn grids paste as-is; whitespace is skipped too


def parse_sudoku(text: str) -> np.ndarray:
    """The ``n*n`` digits (0 = blank) of a 4x4, 6x6 or 9x9 puzzle written as 16, 36 or 81 cells.

    Blanks are ``.`` or ``0``; whitespace and the separators ``|``, ``-``, ``+`` are ignored, so both
    ``"53..7...."`` and a drawn grid work.
    """
    cells: list[int] = []
    for position, char in enumerate(text, start=1):
        if char.isspace() or char in SEPARATORS:
            continue
        if char == ".":
            cells.append(0)
        elif char in "0123456789":
            cells.append(int(char))
        else:
            raise DataError(f"the puzzle has {char!r} at character {position}; write digits, '.' or '0' for "
                            "blanks (spaces and | - + are ignored)")
    n = SIZES.get(len(cells))
    if n is None:
        raise DataError(f"the puzzle has {len(cells)} cells; a Sudoku needs 81 (9x9), 36 (6x6) or 16 (4x4), "
                        "with '.' or '0' for blanks")
    grid = np.array(cells, dtype=np.int64)
    if (grid > n).any():
        cell = int(np.argmax(grid > n))
        raise DataError(f"row {cell // n + 1}, column {cell % n + 1} holds {grid[cell]}, but a {n}x{n} Sudoku "
                        f"uses the digits 1..{n}")
    return grid


def _units(n: int) -> list[tuple[str, np.ndarray]]:
    """(name, cell indices) of every row, column and box."""
    cells = np.arange(n * n).reshape(n, n)
    rows, cols = box_shape(n)
    units = [(f"row {r + 1}", cells[r]) for r in range(n)]
    units += [(f"column {c + 1}", cells[:, c]) for c in range(n)]
    units += [
        (f"box {b + 1}", cells[r0:r0 + rows, c0:c0 + cols].reshape(-1))
        for b, (r0, c0) in enumerate((r0, c0) for r0 in range(0, n, rows) for c0 in range(0, n, cols))
    ]
    return units


def rule_breaks(grid: np.ndarray, n: int) -> list[str]:
    """One line per row, column or box of the board ``grid`` holding a digit more than once (blanks ignored)."""
    grid = np.asarray(grid).reshape(-1)
    problems = []
    for name, idx in _units(n):
        digits = grid[idx]
        counts = np.bincount(digits[(digits >= 1) & (digits <= n)], minlength=n + 1)
        repeated = [str(d) for d in range(1, n + 1) if counts[d] > 1]
        if repeated:
            problems.append(f"{name} repeats {', '.join(repeated)}")
    return problems


def solution_problems(givens: np.ndarray, grid: np.ndarray, n: int) -> list[str]:
    """Why ``grid`` does not solve ``givens`` (empty when it does): missing digits, changed givens, repeats."""
    givens = np.asarray(givens).reshape(-1)
    grid = np.asarray(grid).reshape(-1)
    if grid.size != n * n or givens.size != n * n:
        raise ValueError(f"a {n}x{n} board has {n * n} cells; got {givens.size} givens and {grid.size} cells")
    problems = []
    missing = int(((grid < 1) | (grid > n)).sum())
    if missing:
        problems.append(f"{missing} cell{'s' if missing > 1 else ''} without a digit")
    changed = np.flatnonzero((givens > 0) & (grid != givens))
    if changed.size:
        cell = int(changed[0])
        problems.append(f"{changed.size} given{'s' if changed.size > 1 else ''} changed (first: row {cell // n + 1}, "
                        f"column {cell % n + 1}: {givens[cell]} -> {grid[cell]})")
    return problems + rule_breaks(grid, n)


def is_valid_solution(givens: np.ndarray, grid: np.ndarray, n: int) -> bool:
    """Whether ``grid`` is a complete, rule-abiding ``n x n`` Sudoku that keeps every given."""
    return not solution_problems(givens, grid, n)


def format_grid(grid: np.ndarray, n: int, changed_mask: np.ndarray | None = None) -> str:
    """The board as plain-ASCII text with box separators; blanks are ``.``, non-digits ``?``.

    With ``changed_mask`` every cell takes three characters and the marked ones are bracketed, ``[7]``.
    """
    cells = np.asarray(grid).reshape(n, n)
    marks = np.zeros((n, n), dtype=bool) if changed_mask is None else np.asarray(changed_mask, dtype=bool).reshape(n, n)
    rows, cols = box_shape(n)
    lines: list[str] = []
    separator = ""
    for r in range(n):
        segments = []
        for c0 in range(0, n, cols):
            texts = []
            for c in range(c0, c0 + cols):
                value = int(cells[r, c])
                char = "." if value == 0 else str(value) if 1 <= value <= n else "?"
                if changed_mask is None:
                    texts.append(char)
                else:
                    texts.append(f"[{char}]" if marks[r, c] else f" {char} ")
            segments.append((" " if changed_mask is None else "").join(texts))
        if changed_mask is None:
            separator = "-+-".join("-" * len(s) for s in segments)
            line = " | ".join(segments)
        else:
            separator = "+".join("-" * len(s) for s in segments)
            line = "|".join(segments)
        if r and r % rows == 0:
            lines.append(separator)
        lines.append(line.rstrip())
    return "\n".join(lines)


class SudokuKind(PuzzleKind):
    """Sudoku boards: the user's grid is the flat ``n*n`` digits (0 = blank) used throughout this module,
    tokens are ``digit + 1`` (0 PAD, 1 blank; vocabulary ``n + 2``), and a right answer is a valid solution
    that keeps every given, whether or not it is the dataset's."""

    name = "sudoku"

    def __init__(self) -> None:
        self.drawing = DrawingHints(changed=(255, 150, 0), cell=24, digits=self.digits, boxes=self.boxes)

    def digits(self, tokens: np.ndarray) -> np.ndarray:
        """Each token's digit: 1..n, 0 for the blank token, -1 for PAD or a token outside the vocabulary."""
        tokens = np.asarray(tokens)
        n = self.side(tokens.size)
        digits = tokens.astype(np.int64) - 1
        return np.where((digits >= 0) & (digits <= n), digits, -1)

    def boxes(self, n: int) -> tuple[int, int]:
        """Box rows x columns; a size without boxes we know is one n x n box (drawn with thin lines only)."""
        return box_shape(n) if n in (4, 6, 8, 9) else (n, n)

    def test_views(self, seq_len: int, vocab_size: int, count: int, rng: np.random.Generator) -> list:
        n = self.side(seq_len)
        return sudoku_views(n, *box_shape(n), rng, count, token_offset=1)

    def encode(self, grid: np.ndarray) -> np.ndarray:
        return _encode(np.asarray(grid).reshape(-1)).astype(np.int64)

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """The board's digits; tokens that are not digits (PAD, blank, strays) become 0."""
        return np.maximum(self.digits(np.asarray(tokens).reshape(-1)), 0)

    def parse(self, text: str) -> np.ndarray:
        return self.encode(parse_sudoku(text))

    def format(self, tokens: np.ndarray) -> str:
        return format_grid(self.decode(tokens), self.side(np.asarray(tokens).size))

    def check_typed(self, tokens: np.ndarray, seq_len: int, vocab_size: int) -> None:
        givens = self.decode(tokens)
        n = self.side(givens.size)
        if seq_len != givens.size:
            trained = SIZES.get(seq_len)
            what = f"{trained}x{trained} puzzles ({seq_len} cells)" if trained else \
                f"puzzles of {seq_len} cells (not a Sudoku size)"
            raise SmoltrainError(f"this run was trained on {what}; got {givens.size} cells")
        if vocab_size != n + 2:
            raise SmoltrainError(f"this run's vocabulary has {vocab_size} tokens but {n}x{n} Sudoku uses {n + 2} "
                                 f"(PAD, blank, digits 1..{n}); was it trained on Sudoku?")
        conflicts = rule_breaks(givens, n)
        if conflicts:
            raise DataError(f"the puzzle breaks the rules ({'; '.join(conflicts)}); check the givens")

    def verdict(self, inputs: np.ndarray, target: np.ndarray | None, answer: np.ndarray) -> Verdict:
        n = self.side(np.asarray(answer).size)
        problems = solution_problems(self.decode(inputs), self.decode(answer), n)
        line = "valid solution" if not problems else "not a valid solution: " + "; ".join(problems)
        if target is not None:
            line += f" ({'equals' if self.matches(answer, target) else 'differs from'} the dataset's answer)"
        return Verdict(not problems, line)

    def report(self, inputs: np.ndarray, target: np.ndarray | None, answer: np.ndarray, steps: int) -> list[str]:
        n = self.side(np.asarray(answer).size)
        givens, digits = self.decode(inputs), self.decode(answer)
        return [format_grid(givens, n), "", f"answer after {steps} ACT steps ([d] = filled in by the model):",
                format_grid(digits, n, changed_mask=digits != givens)]


KIND = SudokuKind()


__all__ = [
    "CSV_COLUMNS",
    "KIND",
    "SIZES",
    "SOURCE_REPO",
    "SudokuBuilder",
    "SudokuOptions",
    "SudokuKind",
    "SudokuSplit",
    "box_shape",
    "build_sudoku_dataset",
    "default_harden_steps",
    "default_per_climb",
    "default_workers",
    "format_grid",
    "generate_candidates",
    "generate_sudoku_puzzles",
    "is_valid_solution",
    "parse_sudoku",
    "rate_sudoku",
    "read_sudoku_csv",
    "rule_breaks",
    "solution_problems",
    "solve_sudoku",
    "write_sudoku_csv",
]
