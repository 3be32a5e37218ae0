"""Maze: an offline Maze-Hard-style generator, a shortest-path checker, and the dataset builder.

Encoding (reference `build_maze_dataset.py`): a maze is an n x n grid written row by row over the
charset ``"# SGo"`` -- ``#`` wall, space free, ``S`` start, ``G`` goal, ``o`` a cell of the path
between them (only in answers). Token = charset index + 1, so 0 = PAD, ``#`` 1, space 2, ``S`` 3,
``G`` 4, ``o`` 5; vocab 6, seq_len n * n; every cell of the answer is supervised. Arrays in this
module hold those tokens (uint8) unless stated otherwise.

Path length: counted in *cells on the path including S and G* (= moves + 1). That is the unit of the
generated CSV's `rating` column, of `min_path_length` and of the build statistics. Maze-Hard keeps
"shortest path length > 110", which we read as >= 111 cells, i.e. >= 110 moves (shared/reference
data.md section 3.2 uses the same unit).

Generator (Lehnert et al., "Beyond A*" / Searchformer, made fast): a wall map with a number of walls
drawn uniformly from Lehnert's range [3 * (n*n // 10), 5 * (n*n // 10)] (30-50%) at uniformly random
cells (no border walls). Long shortest paths only occur just below the percolation threshold (the
accepted 30x30 Maze-Hard-like maps average ~37% walls), so most maps are rejected, and cheaply: BFS
from a random free cell, then BFS from the farthest cell found (double sweep, a lower bound on the
cluster's diameter); a map whose sweep does not reach `min_path_length` is dropped (~300 maps per
accepted 30x30 maze, ~10 ms compiled). Otherwise up to `_START_TRIES` times: S uniform
in that cluster, BFS, G uniform among the cells at least `min_path_length` cells away. The label is one shortest path,
traced back from G choosing the first neighbour one step closer to S in the fixed order up, down,
left, right -- so the label is a function of the input (random-wall mazes have millions of shortest
paths; evaluation therefore also scores "valid and optimal", see `smoltrain.eval.maze`). Each
candidate is a pure function of its own seed and runs compiled without the GIL, so candidates are
spread over threads and the output does not depend on the number of threads.

Default minimum path length: 111 cells for 30x30 (Maze-Hard's "> 110"); for other sizes
``max(n, round(0.12 * n * n))`` -- the same ~12% of n^2 as 111/900, and never below Lehnert's own
filter of n -- e.g. 12 for 10x10 and 27 for 15x15.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit
from tqdm import tqdm

from smoltrain.data.augment import dihedral_transform, dihedral_view
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
from smoltrain.data.puzzles import DrawingHints, PathMarks, PuzzleKind, Verdict
from smoltrain.errors import ConfigError, DataError

__all__ = [
    "CHARSET",
    "CSV_COLUMNS",
    "KIND",
    "PATH_CHECK_REASONS",
    "SOURCE_REPO",
    "VOCAB_SIZE",
    "MazeBuilder",
    "MazeOptions",
    "MazeKind",
    "MazeSplit",
    "build_maze_dataset",
    "check_maze_paths",
    "decode_maze",
    "default_min_path_length",
    "encode_maze",
    "generate_maze_candidates",
    "generate_mazes",
    "parse_maze",
    "read_maze_csv",
    "write_maze_csv",
]

CHARSET = "# SGo"
PAD, WALL, FREE, START, GOAL, PATH = 0, 1, 2, 3, 4, 5
VOCAB_SIZE = len(CHARSET) + 1
SOURCE_REPO = "sapientinc/maze-30x30-hard-1k"

# Maze-Hard: 30x30 with shortest paths > 110 (cells, see the module docstring).
HARD_SIZE = 30
HARD_MIN_PATH_LENGTH = 111
# S choices per wall map that passed the double sweep, and wall maps per candidate before it gives up.
_START_TRIES = 20
_MAX_WALL_MAPS = 20_000


def default_min_path_length(size: int) -> int:
    """Minimum shortest-path length in cells (S and G included) used when none is given."""
    if size == HARD_SIZE:
        return HARD_MIN_PATH_LENGTH
    return max(size, round(0.12 * size * size))


def encode_maze(text: str) -> np.ndarray:
    """One maze string over ``"# SGo"`` -> tokens (uint8); raises ValueError on other characters."""
    table = _char_table(allow_path=True)
    tokens = table[np.frombuffer(text.encode("latin-1", errors="replace"), dtype=np.uint8)]
    if (tokens == 255).any():
        raise ValueError(f"maze text has characters outside {CHARSET!r}")
    return tokens


def decode_maze(tokens: np.ndarray) -> str:
    """Tokens -> the maze string (PAD and unknown tokens shown as '?')."""
    chars = np.frombuffer(("?" + CHARSET).encode("ascii"), dtype=np.uint8)
    flat = np.asarray(tokens).reshape(-1).astype(np.int64)
    flat = np.where((flat >= 0) & (flat < VOCAB_SIZE), flat, 0)
    return chars[flat].tobytes().decode("ascii")


# ------------------------------------------------------------------------------------------------
# Compiled kernels: BFS, path tracing, generation, path checking


@njit(cache=True, nogil=True)
def _bfs(grid: np.ndarray, n: int, source: int, dist: np.ndarray, queue: np.ndarray) -> int:
    """Distances (moves) from `source` over non-wall cells into `dist` (-1 = unreachable).

    On return `queue[:size]` lists the reached cells in BFS order; returns `size` (the last entry is
    a farthest cell).
    """
    dist[:] = -1
    dist[source] = 0
    queue[0] = source
    head = 0
    tail = 1
    while head < tail:
        cell = queue[head]
        head += 1
        d = dist[cell] + 1
        row = cell // n
        col = cell - row * n
        if row > 0:
            nb = cell - n
            if grid[nb] != WALL and dist[nb] < 0:
                dist[nb] = d
                queue[tail] = nb
                tail += 1
        if row < n - 1:
            nb = cell + n
            if grid[nb] != WALL and dist[nb] < 0:
                dist[nb] = d
                queue[tail] = nb
                tail += 1
        if col > 0:
            nb = cell - 1
            if grid[nb] != WALL and dist[nb] < 0:
                dist[nb] = d
                queue[tail] = nb
                tail += 1
        if col < n - 1:
            nb = cell + 1
            if grid[nb] != WALL and dist[nb] < 0:
                dist[nb] = d
                queue[tail] = nb
                tail += 1
    return tail


@njit(cache=True, nogil=True)
def _trace_path(dist: np.ndarray, n: int, goal: int, label: np.ndarray) -> None:
    """Mark one shortest path S..G in `label` with PATH (S and G excluded), given `dist` from S.

    From G, step to the first neighbour one move closer in the fixed order up, down, left, right:
    the tie-break that makes the label a function of the maze.
    """
    cell = goal
    d = dist[goal]
    while d > 1:
        row = cell // n
        col = cell - row * n
        if row > 0 and dist[cell - n] == d - 1:
            cell = cell - n
        elif row < n - 1 and dist[cell + n] == d - 1:
            cell = cell + n
        elif col > 0 and dist[cell - 1] == d - 1:
            cell = cell - 1
        else:
            cell = cell + 1
        label[cell] = PATH
        d -= 1


@njit(cache=True, nogil=True)
def _generate_one(
    seed: int,
    n: int,
    min_moves: int,
    wall_lo: int,
    wall_hi: int,
    grid: np.ndarray,
    label: np.ndarray,
    dist: np.ndarray,
    queue: np.ndarray,
    component: np.ndarray,
    order: np.ndarray,
) -> tuple[int, int]:
    """Fill `grid` (question) and `label` (answer) from `seed`; return (path cells or -1, wall maps)."""
    np.random.seed(seed)  # numba's per-thread generator: the maze depends on its seed only
    cells = n * n
    for i in range(cells):
        order[i] = i
    for maps in range(1, _MAX_WALL_MAPS + 1):
        num_walls = np.random.randint(wall_lo, wall_hi + 1)
        grid[:] = FREE
        # Partial Fisher-Yates: order[:num_walls] becomes a uniform random set of wall cells.
        for i in range(num_walls):
            j = np.random.randint(i, cells)
            tmp = order[i]
            order[i] = order[j]
            order[j] = tmp
            grid[order[i]] = WALL
        num_free = cells - num_walls
        if num_free < 2:
            continue
        # Double sweep: a cheap lower bound on the diameter of a random free cell's cluster.
        size = _bfs(grid, n, order[num_walls + np.random.randint(0, num_free)], dist, queue)
        size = _bfs(grid, n, queue[size - 1], dist, queue)
        if dist[queue[size - 1]] < min_moves:
            continue
        component[:size] = queue[:size]
        for _ in range(_START_TRIES):
            start = component[np.random.randint(0, size)]
            _bfs(grid, n, start, dist, queue)
            far = 0
            for i in range(size):
                if dist[component[i]] >= min_moves:
                    far += 1
            if far == 0:
                continue
            pick = np.random.randint(0, far)
            goal = -1
            for i in range(size):
                if dist[component[i]] >= min_moves:
                    if pick == 0:
                        goal = component[i]
                        break
                    pick -= 1
            grid[start] = START
            grid[goal] = GOAL
            label[:] = grid
            _trace_path(dist, n, goal, label)
            return dist[goal] + 1, maps
    return -1, _MAX_WALL_MAPS


@njit(cache=True, nogil=True)
def _generate_batch(
    seeds: np.ndarray,
    n: int,
    min_moves: int,
    wall_lo: int,
    wall_hi: int,
    grids: np.ndarray,
    labels: np.ndarray,
    lengths: np.ndarray,
    maps: np.ndarray,
) -> None:
    cells = n * n
    dist = np.empty(cells, dtype=np.int32)
    queue = np.empty(cells, dtype=np.int32)
    component = np.empty(cells, dtype=np.int32)
    order = np.empty(cells, dtype=np.int32)
    for i in range(seeds.shape[0]):
        lengths[i], maps[i] = _generate_one(
            seeds[i], n, min_moves, wall_lo, wall_hi, grids[i], labels[i], dist, queue, component, order
        )


# Reasons `check_maze_paths` gives (index = code).
PATH_CHECK_REASONS = (
    "a valid shortest path",
    "the input is not a maze (needs exactly one S and one G, only '# SG' cells)",
    "a cell other than a path cell differs from the input (wall, S, G or free cell changed)",
    "a path cell ('o') lies on a wall, S or G of the input",
    "the path cells do not form one simple 4-connected path from S to G (gap, branch or stray 'o')",
    "the path is longer than the shortest path",
)


@njit(cache=True, nogil=True)
def _path_degree(pred: np.ndarray, n: int, cell: int) -> int:
    """Neighbours of `cell` that belong to the path (o, S or G) in `pred`."""
    row = cell // n
    col = cell - row * n
    deg = 0
    if row > 0 and pred[cell - n] >= START:
        deg += 1
    if row < n - 1 and pred[cell + n] >= START:
        deg += 1
    if col > 0 and pred[cell - 1] >= START:
        deg += 1
    if col < n - 1 and pred[cell + 1] >= START:
        deg += 1
    return deg


@njit(cache=True, nogil=True)
def _check_one(inp: np.ndarray, pred: np.ndarray, n: int, dist: np.ndarray, queue: np.ndarray) -> int:
    cells = n * n
    start = -1
    goal = -1
    num_start = 0
    num_goal = 0
    num_path = 0
    changed = False
    on_blocked = False
    for c in range(cells):
        t = inp[c]
        if t < WALL or t > GOAL:
            return 1
        if t == START:
            start = c
            num_start += 1
        elif t == GOAL:
            goal = c
            num_goal += 1
        p = pred[c]
        if p == PATH:
            if t == FREE:
                num_path += 1
            else:
                on_blocked = True
        elif p != t:
            changed = True
    if num_start != 1 or num_goal != 1:
        return 1
    if changed:
        return 2
    if on_blocked:
        return 3
    # S and G end the path (one path neighbour each), every 'o' continues it (two); then the walk
    # from S is forced and must reach G through every 'o' (otherwise a loop of 'o's is left over).
    if _path_degree(pred, n, start) != 1 or _path_degree(pred, n, goal) != 1:
        return 4
    for c in range(cells):
        if pred[c] == PATH and _path_degree(pred, n, c) != 2:
            return 4
    prev = -1
    cell = start
    moves = 0
    while cell != goal:
        row = cell // n
        col = cell - row * n
        nxt = -1
        if row > 0 and pred[cell - n] >= START and cell - n != prev:
            nxt = cell - n
        elif row < n - 1 and pred[cell + n] >= START and cell + n != prev:
            nxt = cell + n
        elif col > 0 and pred[cell - 1] >= START and cell - 1 != prev:
            nxt = cell - 1
        elif col < n - 1 and pred[cell + 1] >= START and cell + 1 != prev:
            nxt = cell + 1
        if nxt < 0 or nxt == start:
            return 4
        prev = cell
        cell = nxt
        moves += 1
    if moves - 1 != num_path:
        return 4
    _bfs(inp, n, start, dist, queue)
    if moves != dist[goal]:
        return 5
    return 0


@njit(cache=True, nogil=True)
def _check_batch(inputs: np.ndarray, preds: np.ndarray, n: int, codes: np.ndarray) -> None:
    dist = np.empty(n * n, dtype=np.int32)
    queue = np.empty(n * n, dtype=np.int32)
    for i in range(inputs.shape[0]):
        codes[i] = _check_one(inputs[i], preds[i], n, dist, queue)


def _infer_size(seq_len: int, size: int | None) -> int:
    if size is None:
        size = round(seq_len**0.5)
    if size * size != seq_len:
        raise ValueError(f"rows of {seq_len} tokens are not {size}x{size} mazes")
    return size


def check_maze_paths(inputs: np.ndarray, preds: np.ndarray, size: int | None = None) -> np.ndarray:
    """Per row, 0 when `preds` is a valid shortest S->G path for the maze `inputs`, else a reason code.

    Both are token arrays [B, n*n] (n inferred from the row length unless `size` is given); the code
    indexes `PATH_CHECK_REASONS`. Valid means: outside the path every cell equals the input; 'o' only
    on free cells; the 'o' cells with S and G form one simple 4-connected path from S to G; its number
    of moves equals the BFS distance from S to G in the input.
    """
    inputs = np.asarray(inputs)
    preds = np.asarray(preds)
    if inputs.ndim == 1:
        inputs, preds = inputs[None], preds[None]
    if inputs.shape != preds.shape or inputs.ndim != 2:
        raise ValueError(f"inputs {inputs.shape} and preds {preds.shape} must both be [B, n*n]")
    n = _infer_size(inputs.shape[1], size)
    codes = np.zeros(inputs.shape[0], dtype=np.int8)
    if inputs.shape[0]:
        _check_batch(
            np.ascontiguousarray(inputs, dtype=np.int32), np.ascontiguousarray(preds, dtype=np.int32), n, codes
        )
    return codes


# ------------------------------------------------------------------------------------------------
# Python API of the generator


def _check_size(size: int) -> None:
    if not 3 <= size <= 255:
        raise DataError(f"maze size must be in 3..255 (n x n grid), got {size}")


def generate_maze_candidates(
    seeds: np.ndarray, size: int, min_path_length: int, workers: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One maze per seed, spread over `workers` threads (default: all cores).

    Returns (questions [k, n*n] uint8 tokens, answers, path lengths in cells [k] (-1 where the
    candidate found no map in `_MAX_WALL_MAPS` tries), wall maps drawn [k]).
    """
    _check_size(size)
    cells = size * size
    seeds = np.ascontiguousarray(seeds, dtype=np.int64)
    k = seeds.shape[0]
    questions = np.zeros((k, cells), dtype=np.uint8)
    answers = np.zeros((k, cells), dtype=np.uint8)
    lengths = np.zeros(k, dtype=np.int64)
    maps = np.zeros(k, dtype=np.int64)
    wall_lo, wall_hi = 3 * (cells // 10), 5 * (cells // 10)  # Lehnert's wall count range

    def run(lo: int, hi: int) -> None:
        _generate_batch(
            seeds[lo:hi], size, min_path_length - 1, wall_lo, wall_hi,
            questions[lo:hi], answers[lo:hi], lengths[lo:hi], maps[lo:hi],
        )  # fmt: skip

    run_in_chunks(run, k, workers)
    return questions, answers, lengths, maps


def generate_mazes(
    num: int,
    size: int = HARD_SIZE,
    seed: int | np.random.SeedSequence = 0,
    *,
    min_path_length: int | None = None,
    exclude: Iterable[bytes] = (),
    workers: int | None = None,
    progress: bool = False,
    stats: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`num` distinct mazes: (questions [num, n*n] uint8 tokens, answers, shortest path lengths in cells).

    Deterministic for a given seed and any number of `workers`: candidate i is a pure function of
    (seed, i) and candidates are accepted in index order. A candidate is dropped when its question
    is a duplicate or in `exclude` (question token bytes, e.g. the other split). `stats`, if given,
    receives the number of candidates and wall maps drawn.
    """
    _check_size(size)
    if num < 0:
        raise DataError(f"the number of mazes to generate must be >= 0, got {num}")
    if workers is not None and workers < 1:
        raise DataError(f"workers must be >= 1, got {workers}")
    min_len = default_min_path_length(size) if min_path_length is None else int(min_path_length)
    if not 2 <= min_len <= size * size:
        raise DataError(f"min_path_length must be in 2..{size * size} cells for a {size}x{size} maze, got {min_len}")
    seen = set(exclude)
    cells = size * size
    questions = np.zeros((num, cells), dtype=np.uint8)
    answers = np.zeros((num, cells), dtype=np.uint8)
    lengths = np.zeros(num, dtype=np.int64)
    workers = workers or default_workers()
    accepted = tried = failed = wall_maps = 0
    max_candidates = 20 * num + 1000  # tiny sizes have few distinct mazes: stop instead of looping forever
    with tqdm(total=num, disable=not progress, desc=f"generating {size}x{size} mazes", unit="maze") as bar:
        while accepted < num:
            if (accepted == 0 and failed >= 16) or tried >= max_candidates:
                raise DataError(
                    f"tried {tried} {size}x{size} candidates ({wall_maps:,} wall maps) but found only {accepted} of "
                    f"the {num} distinct mazes asked for with a shortest path of >= {min_len} cells: lower "
                    f"--min-path-length (default for {size}x{size}: {default_min_path_length(size)}) or ask for fewer"
                )
            rate = (accepted + 1) / (tried + 1)
            # Large mazes take milliseconds each: smaller batches keep the progress bar moving.
            cap = 4096 if size * size <= 400 else 32 * workers
            batch = int(min(cap, max(2 * workers, np.ceil((num - accepted) / rate))))
            seeds = candidate_seeds(seed, tried, batch)
            q, a, lens, maps = generate_maze_candidates(seeds, size, min_len, workers)
            tried += batch
            wall_maps += int(maps.sum())
            for j in range(batch):
                if lens[j] < 0:
                    failed += 1
                    continue
                key = q[j].tobytes()
                if key in seen:
                    continue
                seen.add(key)
                questions[accepted], answers[accepted], lengths[accepted] = q[j], a[j], lens[j]
                accepted += 1
                bar.update(1)
                if accepted == num:
                    break
    if stats is not None:
        stats.update(candidates=tried, failed_candidates=failed, wall_maps=wall_maps, min_path_length=min_len)
    return questions, answers, lengths


# ------------------------------------------------------------------------------------------------
# CSV sources (the Maze-Hard files and anything in the same format)


@dataclass
class MazeSplit(PuzzleSplit):
    """Mazes of one split as tokens (questions and answers), with where each came from."""

    def path_lengths(self) -> np.ndarray:
        """Shortest path length of each maze in cells, S and G included (from the answers)."""
        return (self.answers == PATH).sum(axis=1).astype(np.int64) + 2


def _char_table(allow_path: bool) -> np.ndarray:
    table = np.full(256, 255, dtype=np.uint8)
    for token, ch in enumerate(CHARSET, start=1):
        if ch != "o" or allow_path:
            table[ord(ch)] = token
    return table


def read_maze_csv(path: str | os.PathLike[str], size: int = HARD_SIZE) -> MazeSplit:
    """Read and validate a `source,question,answer,rating` maze CSV (header line required).

    `question` and `answer` have size*size characters over ``"# SGo"`` (no 'o' in the question).
    Any malformed row stops with a DataError naming the file, the line and the problem: wrong field
    count, wrong length, a bad character, not exactly one S and one G, an answer that differs from
    the question outside its path cells, or an answer whose path is not a shortest S->G path.
    """
    raw = read_puzzle_csv(path, size * size, lambda length: f"for a {size}x{size} maze{_size_hint(length)}")
    q_tokens, a_tokens = _decode_and_check(raw, size)
    return MazeSplit(q_tokens, a_tokens, raw.ratings, np.arange(raw.lines.shape[0]), str(raw.path))


def _size_hint(length: int) -> str:
    """For a question of the wrong length: the maze size it would fit, as a --size hint ('' if none)."""
    root = round(length**0.5)
    return f" (a {root}x{root} maze? pass --size {root})" if root * root == length else ""


def _decode_and_check(raw: CsvPuzzles, n: int) -> tuple[np.ndarray, np.ndarray]:
    """ASCII bytes -> tokens, with every check of `read_maze_csv` (vectorised, first bad row reported)."""

    def cell(col: int) -> str:
        return f"row {col // n + 1}, column {col % n + 1}"

    q = _char_table(allow_path=False)[raw.questions]
    a = _char_table(allow_path=True)[raw.answers]
    for what, decoded, ascii_codes, allowed in (
        ("question", q, raw.questions, "'#' wall, ' ' free, 'S' start, 'G' goal"),
        ("answer", a, raw.answers, "'#', ' ', 'S', 'G' and 'o' for the path"),
    ):
        bad = decoded == 255
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise DataError(
                f"{raw.where(row)}: {what} has the bad character {chr(ascii_codes[row, col])!r} at {cell(col)}; "
                f"allowed are {allowed}"
            )
    for token, name in ((START, "S"), (GOAL, "G")):
        counts = (q == token).sum(axis=1)
        bad_rows = np.flatnonzero(counts != 1)
        if bad_rows.size:
            row = bad_rows[0]
            raise DataError(f"{raw.where(row)}: the question has {counts[row]} '{name}' cells, expected exactly one")
    clash = np.where(a == PATH, q != FREE, a != q)
    if clash.any():
        row, col = np.argwhere(clash)[0]
        raise DataError(
            f"{raw.where(row)}: the answer has {CHARSET[a[row, col] - 1]!r} at {cell(col)} but the question has "
            f"{CHARSET[q[row, col] - 1]!r} there (an answer may only turn free cells into 'o')"
        )
    codes = check_maze_paths(q, a, n)
    bad_rows = np.flatnonzero(codes)
    if bad_rows.size:
        row = bad_rows[0]
        raise DataError(f"{raw.where(row)}: the answer is not a shortest S-G path: {PATH_CHECK_REASONS[codes[row]]}")
    return q, a


def write_maze_csv(path: Path, split: MazeSplit, source_name: str) -> None:
    """Write mazes in the Maze-Hard CSV layout (rating = shortest path length in cells), readable by csv:PATH."""
    write_puzzle_csv(path, split, source_name, decode_maze)


# ------------------------------------------------------------------------------------------------
# Dataset builder


def _dihedral_versions(split: MazeSplit, n: int, aug: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train rows: per maze its 8 dihedral transforms (numbering of `dihedral_transform`, 0 = the maze
    itself) as 8 puzzles of one group, like the reference `--aug`; without `aug` one puzzle per group.

    Returns (questions, answers, group sizes). A shortest path stays a shortest path under every
    symmetry of the grid, though not necessarily the one the fixed tie-break would pick.
    """
    num = split.questions.shape[0]
    if not aug:
        return split.questions, split.answers, np.ones(num, dtype=np.int64)
    q = split.questions.reshape(num, n, n)
    a = split.answers.reshape(num, n, n)
    # [num, 8, n*n]: transform k of every maze at once (dihedral_transform works on the last two axes' views).
    out_q = np.stack([_transform_all(q, k) for k in range(8)], axis=1).reshape(num * 8, n * n)
    out_a = np.stack([_transform_all(a, k) for k in range(8)], axis=1).reshape(num * 8, n * n)
    return out_q, out_a, np.full(num, 8, dtype=np.int64)


def _transform_all(grids: np.ndarray, k: int) -> np.ndarray:
    """`dihedral_transform(grid, k)` for every grid of a [num, n, n] stack."""
    if grids.shape[0] == 0:
        return grids
    return np.stack([dihedral_transform(g, k) for g in grids])


def _length_stats(split: MazeSplit) -> dict[str, float]:
    lengths = split.path_lengths()
    return {
        "min": int(lengths.min()),
        "mean": round(float(lengths.mean()), 3),
        "median": float(np.median(lengths)),
        "max": int(lengths.max()),
    }


@dataclass(frozen=True)
class MazeOptions:
    """What a maze build makes, checked when made; one field per `smoltrain data maze` flag of that name.

    source:
      "generate"  the offline generator: `num_train` and `num_test` (default 1000 each) size x size mazes
                  with shortest paths of >= `min_path_length` cells (default `default_min_path_length(size)`), from
                  independent seed streams on `workers` threads; no test maze occurs among the train mazes. The
                  CSVs go to `generated/` in the dataset, so `csv:<dataset>/generated` rebuilds the same arrays.
      "hf"        download `train.csv` / `test.csv` of `source_repo` (Maze-Hard, 30x30 only).
      "csv:PATH"  a directory with train.csv and test.csv, or one CSV file that is split with a seeded
                  random `num_test` rows (default 10%) held out for test.
    For CSV sources, `subsample_size` (alias `num_train`) keeps a seeded random subset of the train mazes
    (default all), `num_test` of the test mazes (default all), and `min_path_length` (if given) filters both splits.
    `aug` adds the 8 dihedral versions of every train maze (a group of 8 puzzles); test is never augmented.
    """

    source: str = "generate"
    size: int = HARD_SIZE
    num_train: int | None = None
    num_test: int | None = None
    min_path_length: int | None = None
    subsample_size: int | None = None
    aug: bool = False
    seed: int = 0
    workers: int | None = None
    source_repo: str = SOURCE_REPO

    def __post_init__(self) -> None:
        _check_size(self.size)
        check_counts(num_train=self.num_train, num_test=self.num_test, subsample_size=self.subsample_size)
        check_seed(self.seed)
        cells = self.size * self.size
        if self.min_path_length is not None and not 2 <= self.min_path_length <= cells:
            raise DataError(
                f"min_path_length must be in 2..{cells} cells for {self.size}x{self.size} mazes, "
                f"got {self.min_path_length}"
            )


class MazeBuilder(PuzzleBuilder[MazeOptions]):
    """The maze hooks of the fixed-size puzzle build: tokens in the splits, path lengths as ratings."""

    kind = "maze"
    noun = "mazes"
    title = "maze"
    filter_flag = "--min-path-length"
    hf_size = HARD_SIZE
    csv_example = "data/maze-csv"

    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZE

    @property
    def filter_threshold(self) -> int | None:
        return self.options.min_path_length

    def settings(self) -> dict[str, Any]:
        o = self.options
        return {
            "size": o.size,
            "seed": o.seed,
            "aug": o.aug,
            "path_length_unit": "cells on the shortest path, S and G included (= moves + 1)",
        }

    def read_csv(self, path: Path) -> MazeSplit:
        return read_maze_csv(path, self.options.size)

    def generation_settings(self) -> dict[str, Any]:
        o = self.options
        return {"min_path_length": default_min_path_length(o.size) if o.min_path_length is None else o.min_path_length}

    def generate(
        self, count: int, seed: np.random.SeedSequence, exclude: set[bytes], settings: dict[str, Any], progress: bool
    ) -> tuple[MazeSplit, dict[str, Any]]:
        o = self.options
        stats: dict[str, Any] = {}
        questions, answers, lengths = generate_mazes(
            count, o.size, seed, min_path_length=settings["min_path_length"], exclude=exclude, workers=o.workers,
            progress=progress, stats=stats,
        )  # fmt: skip
        return MazeSplit(questions, answers, lengths, np.arange(count)), stats

    def generation_summary(self, stats: list[dict[str, Any]]) -> dict[str, Any]:
        wall_maps = sum(s["wall_maps"] for s in stats)
        candidates = sum(s["candidates"] for s in stats)
        return {"wall_maps_per_candidate": round(wall_maps / candidates, 2)}

    def filter(self, train: MazeSplit, test: MazeSplit, info: dict[str, Any]) -> tuple[MazeSplit, MazeSplit]:
        threshold = self.options.min_path_length
        assert threshold is not None  # called only with a filter
        info["min_path_length"] = threshold
        return (
            select(train, np.flatnonzero(train.path_lengths() >= threshold)),
            select(test, np.flatnonzero(test.path_lengths() >= threshold)),
        )

    def augment(
        self, train: MazeSplit, forbidden: set[bytes], rng: np.random.Generator, progress: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        # The 8 versions are fixed, not drawn: nothing to redraw, so `forbidden` and `rng` go unused.
        return (*_dihedral_versions(train, self.options.size, self.options.aug), {})

    def to_tokens(self, cells: np.ndarray) -> np.ndarray:
        return cells  # the splits hold tokens already

    def statistics(self, train: MazeSplit, test: MazeSplit) -> dict[str, Any]:
        return {
            "path_length": {"train": _length_stats(train), "test": _length_stats(test)},
            "wall_fraction": {
                "train": round(float((train.questions == WALL).mean()), 4),
                "test": round(float((test.questions == WALL).mean()), 4),
            },
        }

    def write_csv(self, path: Path, split: MazeSplit, source_name: str) -> None:
        write_maze_csv(path, split, source_name)


def build_maze_dataset(
    output_dir: str | os.PathLike[str], source: str = "generate", *, progress: bool = False, **options: Any
) -> dict[str, Any]:
    """Build a maze dataset in the reference layout at `output_dir` (atomically); return build info.

    `options` are the other fields of `MazeOptions` (which tells what each does), as keywords. The returned
    info (also `<output_dir>/build_info.json`) has counts and path-length stats in cells.
    """
    return MazeBuilder(MazeOptions(source=source, **options)).build(output_dir, progress)


# ------------------------------------------------------------------------------------------------
# The puzzle kind: mazes a user types and reads, and what solves one

# What a user may type: the question's characters, and '.' for a free cell (spaces are easy to lose).
_TYPED = {**{ch: token for token, ch in enumerate(CHARSET, start=1) if ch != "o"}, ".": FREE}


def parse_maze(text: str) -> np.ndarray:
    """The ``n*n`` tokens of a maze written as ``n`` lines of ``n`` characters, or as one ``n*n``-character line.

    ``#`` is a wall, space or ``.`` a free cell, ``S`` the start and ``G`` the goal (exactly one each). Lines
    shorter than ``n`` are padded with free cells, since editors strip trailing spaces.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if len(lines) > 1 and lines[-1] == "":
        lines.pop()  # the file's final newline
    # Rows of spaces are free cells, so blank lines at the ends are dropped only while there are more lines
    # than the widest row has characters (extra newlines, not rows).
    width = max(len(line) for line in lines)
    while len(lines) > max(width, 1) and not lines[-1].strip():
        lines.pop()
    while len(lines) > max(width, 1) and not lines[0].strip():
        lines.pop(0)
    if not "".join(lines).strip():
        raise DataError("the maze is empty; write n lines of '#' (wall), ' ' or '.' (free), 'S' and 'G'")
    if len(lines) == 1:
        n = math.isqrt(len(lines[0]))
        if n * n != len(lines[0]):
            raise DataError(f"the maze is one line of {len(lines[0])} characters, which is not n*n; write n lines "
                            "of n characters, or one line of n*n")
        rows = [lines[0][i:i + n] for i in range(0, n * n, n)]
    else:
        n = len(lines)
        for r, line in enumerate(lines, start=1):
            if len(line) > n:
                raise DataError(f"maze row {r} has {len(line)} characters, but a maze of {n} rows needs {n} per row")
        rows = [line.ljust(n) for line in lines]
    tokens = np.empty((n, n), dtype=np.int64)
    for r, row in enumerate(rows):
        for c, char in enumerate(row):
            if char not in _TYPED:
                raise DataError(f"the maze has {char!r} at row {r + 1}, column {c + 1}; write '#' (wall), ' ' or '.' "
                                "(free), 'S' and 'G' -- the model draws the path")
            tokens[r, c] = _TYPED[char]
    for token, name in ((START, "S (start)"), (GOAL, "G (goal)")):
        count = int((tokens == token).sum())
        if count != 1:
            raise DataError(f"the maze has {count} {name} cells; it needs exactly one")
    return tokens.reshape(-1)


class MazeKind(PuzzleKind):
    """Mazes: the user's grid is ``n x n`` characters of ``"# SGo"`` (``?`` for PAD or stray tokens), tokens
    are charset index + 1, and a right answer is a valid shortest S-to-G path, whether or not it is the one
    the dataset labels (random-wall mazes have many)."""

    name = "maze"
    drawing = DrawingHints(
        changed=(240, 18, 190),
        palette={WALL: (43, 43, 43), FREE: (244, 244, 244), START: (0, 116, 217), GOAL: (255, 65, 54),
                 PATH: (46, 204, 64)},
        grid_line=(215, 215, 215),
        path=PathMarks(path=PATH, free=FREE, extra=(255, 133, 27), missed=(190, 238, 196)),
    )

    def claims_shape(self, vocab_size: int, seq_len: int) -> bool:
        # A 4x4 Sudoku has 6 tokens and 16 cells too; a foreign 4x4 maze needs its build_info.json.
        return vocab_size == VOCAB_SIZE and seq_len != 16 and math.isqrt(seq_len) ** 2 == seq_len

    def test_views(self, seq_len: int, vocab_size: int, count: int, rng: np.random.Generator) -> list:
        if count > 8:
            raise ConfigError(f"eval_augmentations={count}: a maze has 8 dihedral views; set eval_augmentations "
                              "to at most 8")
        return [dihedral_view(self.side(seq_len), k, vocab_size) for k in range(count)]

    def encode(self, grid: np.ndarray) -> np.ndarray:
        return encode_maze("".join(np.asarray(grid).reshape(-1).tolist())).astype(np.int64)

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens).reshape(-1)
        side = self.side(tokens.size)
        return np.array(list(decode_maze(tokens))).reshape(side, side)

    def parse(self, text: str) -> np.ndarray:
        return parse_maze(text)

    def format(self, tokens: np.ndarray) -> str:
        return "\n".join("".join(row) for row in self.decode(tokens))

    def check_typed(self, tokens: np.ndarray, seq_len: int, vocab_size: int) -> None:
        if tokens.size != seq_len:
            side, trained = math.isqrt(tokens.size), math.isqrt(seq_len)
            raise DataError(f"the maze is {side}x{side}, but this run was trained on {trained}x{trained} mazes")

    def verdict(self, inputs: np.ndarray, target: np.ndarray | None, answer: np.ndarray) -> Verdict:
        code = int(check_maze_paths(np.asarray(inputs)[None], np.asarray(answer)[None])[0])
        line = "a valid shortest path" if code == 0 else "not a valid shortest path: " + PATH_CHECK_REASONS[code]
        if target is not None:
            line += f" ({'equals' if self.matches(answer, target) else 'differs from'} the dataset's path)"
        return Verdict(code == 0, line)

    def report(self, inputs: np.ndarray, target: np.ndarray | None, answer: np.ndarray, steps: int) -> list[str]:
        return [self.format(inputs), "", f"answer after {steps} ACT steps (o = path):", self.format(answer)]


KIND = MazeKind()
