"""Sudoku: a compiled solver/rater, an offline puzzle generator, and the dataset builder.

Board encoding used throughout: a flat array of n*n raw digits, 0 = blank, 1..n = digits.
Dataset tokens (reference `build_sudoku_dataset.py`): 0 = PAD, 1 = blank, 2..n+1 = digits, i.e.
token = digit + 1; vocab n + 2, seq_len n * n; labels are the full solution, so every cell
(givens included) is supervised.

Solver (numba, one 32-bit candidate mask per cell): constraint propagation with naked singles,
hidden singles and locked candidates (pointing / claiming over the box-line intersections), then
depth-first search branching on a cell with the fewest candidates (MRV). It counts solutions up to a
limit and counts *guesses*: every branch taken while the branch point still has other candidates
left; the last remaining candidate is forced, not a guess (the DPLL convention). Rating = guesses of
the exhaustive limit-2 search, 0 meaning "solved by propagation alone". The scale is ours, not
tdoku's: shared/reference/data.md section 2.2 measured a similar rating at about 4x the tdoku backtrack
count (the Sudoku-Extreme `rating` column) on hard puzzles.

Generator: random full grid (randomised search from an empty board), then try to remove the clues
in random order, keeping a removal only if the solution stays unique (so the result is a minimal
puzzle, or stops at `target_clues`). Uniqueness after removing clue i of a unique puzzle is checked
by asking for a solution with cell i != its known value (a limit-1 search), about twice as fast as
counting to 2. Optional hardening hill-climbs: drop one or two clues, add clues from the known
solution until the puzzle is unique again, re-minimise, and keep the result if its rating did not
drop; it stops early once a target rating is reached. Random minimal 9x9 puzzles rate ~1.3 on
average, so a `min_difficulty` much above ~5 is reached by hardening, not by filtering.
Candidates are generated on several threads (the compiled loop releases the GIL); each candidate is
a pure function of its own seed, so the output does not depend on the number of threads.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit
from tqdm import tqdm

from smoltrain.data.augment import sudoku_shuffle_batch
from smoltrain.data.puzzle_source import (
    CSV_COLUMNS,
    CsvPuzzles,
    PuzzleSplit,
    candidate_seeds,
    check_counts,
    default_workers,
    load_source_splits,
    read_puzzle_csv,
    run_in_chunks,
    select,
    subsample,
    train_size,
    write_build_info,
    write_puzzle_csv,
    write_puzzle_files,
)
from smoltrain.data.puzzles import DrawingHints, PuzzleKind, Verdict, atomic_dataset_dir, check_output_dir
from smoltrain.errors import DataError, SmoltrainError

# ------------------------------------------------------------------------------------------------
# Board topology


def box_shape(n: int) -> tuple[int, int]:
    """Box rows x box columns for an n x n Sudoku: 4 -> 2x2, 6 -> 2x3 (2 rows, 3 columns), 9 -> 3x3."""
    if n not in (4, 6, 8, 9):
        raise DataError(f"unsupported Sudoku size {n}: use 4, 6, 8 or 9 (boxes 2x2, 2x3, 2x4, 3x3)")
    rows = max(d for d in range(1, int(n**0.5) + 1) if n % d == 0)
    return rows, n // rows


class Topology:
    """Index tables of an n x n board with box_rows x box_cols boxes, as int32 arrays for numba.

    units: the 3n rows, columns and boxes; peers: the cells sharing a unit with each cell.
    For locked candidates, every (box, row) intersection gives a row segment with the rest of its
    row and the rest of its box (rseg/rline/rbox), and likewise for (box, column) (cseg/cline/cbox).
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.box_rows, self.box_cols = box_shape(n)
        br, bc = self.box_rows, self.box_cols
        cell = np.arange(n * n).reshape(n, n)
        boxes = [cell[r0 : r0 + br, c0 : c0 + bc].reshape(-1) for r0 in range(0, n, br) for c0 in range(0, n, bc)]
        units = np.concatenate([cell, cell.T, np.stack(boxes)]).astype(np.int32)
        peers = []
        for c in range(n * n):
            mine = [u for u in units if c in u]
            peers.append(sorted({int(p) for u in mine for p in u} - {c}))
        rseg, rline, rbox, cseg, cline, cbox = [], [], [], [], [], []
        for b in boxes:
            box_set = set(b.tolist())
            for r in range(br):
                seg = b[r * bc : (r + 1) * bc]
                row = cell[seg[0] // n]
                rseg.append(seg)
                rline.append([x for x in row if x not in box_set])
                rbox.append([x for x in b if x not in set(seg.tolist())])
            for c in range(bc):
                seg = b[c::bc]
                col = cell[:, seg[0] % n]
                cseg.append(seg)
                cline.append([x for x in col if x not in box_set])
                cbox.append([x for x in b if x not in set(seg.tolist())])

        def arr(x: object) -> np.ndarray:
            return np.ascontiguousarray(np.array(x, dtype=np.int32))

        self.tables = (
            arr(units),
            arr(peers),
            arr(rseg),
            arr(rline),
            arr(rbox),
            arr(cseg),
            arr(cline),
            arr(cbox),
        )
        self.full = (1 << n) - 1
        self.pop = np.array([bin(m).count("1") for m in range(1 << n)], dtype=np.int32)


_TOPOLOGIES: dict[int, Topology] = {}


def topology(n: int) -> Topology:
    if n not in _TOPOLOGIES:
        _TOPOLOGIES[n] = Topology(n)
    return _TOPOLOGIES[n]


# ------------------------------------------------------------------------------------------------
# Compiled core


@njit(cache=True)
def _eliminate_locked(cand: np.ndarray, seg: np.ndarray, line: np.ndarray, box: np.ndarray) -> bool:
    """Pointing and claiming over every segment (box-line intersection); True if anything changed.

    A digit of the box that appears only in the segment cannot be elsewhere in the line (pointing);
    a digit of the line that appears only in the segment cannot be elsewhere in the box (claiming).
    An emptied cell is left for the caller's next sweep to report as a contradiction.
    """
    changed = False
    for s in range(seg.shape[0]):
        seg_mask = 0
        for k in range(seg.shape[1]):
            seg_mask |= cand[seg[s, k]]
        line_mask = 0
        for k in range(line.shape[1]):
            line_mask |= cand[line[s, k]]
        box_mask = 0
        for k in range(box.shape[1]):
            box_mask |= cand[box[s, k]]
        pointing = seg_mask & ~box_mask & line_mask
        if pointing:
            for k in range(line.shape[1]):
                c = line[s, k]
                if cand[c] & pointing:
                    cand[c] &= ~pointing
                    changed = True
        claiming = seg_mask & ~line_mask & box_mask
        if claiming:
            for k in range(box.shape[1]):
                c = box[s, k]
                if cand[c] & claiming:
                    cand[c] &= ~claiming
                    changed = True
    return changed


@njit(cache=True)
def _propagate(cand: np.ndarray, done: np.ndarray, tables: tuple, pop: np.ndarray, n: int, full: int) -> bool:
    """Apply singles and locked candidates to a fixpoint in place; False on a contradiction.

    `done[c]` marks solved cells whose digit was already removed from their peers.
    """
    units, peers, rseg, rline, rbox, cseg, cline, cbox = tables
    ncell = cand.shape[0]
    npeer = peers.shape[1]
    while True:
        # Naked singles, cascading until nothing new is solved (cheapest rule first).
        changed = True
        while changed:
            changed = False
            for c in range(ncell):
                m = cand[c]
                if m == 0:
                    return False
                if done[c] == 0 and pop[m] == 1:
                    done[c] = 1
                    changed = True
                    for k in range(npeer):
                        p = peers[c, k]
                        if cand[p] & m:
                            cand[p] &= ~m
                            if cand[p] == 0:
                                return False
        # Hidden singles: `once` = digits seen in the unit, `twice` = digits seen at least twice.
        found = False
        for u in range(units.shape[0]):
            once = 0
            twice = 0
            for k in range(n):
                m = cand[units[u, k]]
                twice |= once & m
                once |= m
            if once != full:
                return False  # some digit has no place left in this unit
            hidden = once & ~twice
            if hidden:
                for k in range(n):
                    c = units[u, k]
                    m = cand[c]
                    h = m & hidden
                    if h:
                        if pop[h] > 1:
                            return False  # two digits that can only go in the same cell
                        if m != h:
                            cand[c] = h
                            found = True
        if found:
            continue
        if _eliminate_locked(cand, rseg, rline, rbox):
            continue
        if _eliminate_locked(cand, cseg, cline, cbox):
            continue
        return True


@njit(cache=True)
def _pick_cell(cand: np.ndarray, pop: np.ndarray) -> int:
    """An unsolved cell with the fewest candidates (first one found), or -1 if all are solved."""
    best = -1
    best_count = 1 << 30
    for c in range(cand.shape[0]):
        p = pop[cand[c]]
        if 1 < p < best_count:
            best = c
            best_count = p
            if p == 2:
                break
    return best


@njit(cache=True)
def _pick_digit(mask: int, randomize: bool, pop: np.ndarray) -> int:
    if not randomize:
        return mask & -mask  # lowest candidate
    k = np.random.randint(pop[mask])
    while True:
        bit = mask & -mask
        if k == 0:
            return bit
        mask &= ~bit
        k -= 1


@njit(cache=True)
def _masks_to_digits(cand: np.ndarray, out: np.ndarray) -> None:
    for c in range(cand.shape[0]):
        m = cand[c]
        d = 1
        while m > 1:
            m >>= 1
            d += 1
        out[c] = d


@njit(cache=True)
def _search(
    cand0: np.ndarray,
    tables: tuple,
    pop: np.ndarray,
    n: int,
    full: int,
    limit: int,
    randomize: bool,
    sol1: np.ndarray,
    sol2: np.ndarray,
) -> tuple[int, int]:
    """Count solutions (stopping at `limit`) and guesses, from candidate masks `cand0`.

    Writes the first two solutions found into sol1 / sol2. Iterative DFS: frame f keeps the state
    before its branch in states[f], the branch cell and the candidates not yet tried; the current
    state lives in states[nf]. Trying the last candidate of a frame reuses the frame's own slot.
    """
    ncell = cand0.shape[0]
    states = np.empty((ncell + 1, ncell), dtype=np.int32)
    done = np.zeros((ncell + 1, ncell), dtype=np.uint8)
    branch_cell = np.empty(ncell + 1, dtype=np.int64)
    branch_rest = np.empty(ncell + 1, dtype=np.int64)
    states[0, :] = cand0
    nf = 0
    count = 0
    guesses = 0
    ok = _propagate(states[0], done[0], tables, pop, n, full)
    while True:
        if ok:
            c = _pick_cell(states[nf], pop)
            if c < 0:
                if count == 0:
                    _masks_to_digits(states[nf], sol1)
                elif count == 1:
                    _masks_to_digits(states[nf], sol2)
                count += 1
                if count >= limit:
                    break
            else:
                branch_cell[nf] = c
                branch_rest[nf] = states[nf, c]
                nf += 1
        if nf == 0:
            break
        f = nf - 1
        c = branch_cell[f]
        d = _pick_digit(branch_rest[f], randomize, pop)
        branch_rest[f] &= ~d
        if branch_rest[f]:
            guesses += 1
            states[nf, :] = states[f, :]
            done[nf, :] = done[f, :]
            states[nf, c] = d
            ok = _propagate(states[nf], done[nf], tables, pop, n, full)
        else:  # last candidate: forced, continue in the frame's own slot
            states[f, c] = d
            nf = f
            ok = _propagate(states[f], done[f], tables, pop, n, full)
    return count, guesses


@njit(cache=True)
def _givens_to_masks(puzzle: np.ndarray, full: int) -> np.ndarray:
    cand = np.empty(puzzle.shape[0], dtype=np.int32)
    for c in range(puzzle.shape[0]):
        cand[c] = full if puzzle[c] == 0 else 1 << (puzzle[c] - 1)
    return cand


@njit(cache=True)
def _solve(puzzle: np.ndarray, tables: tuple, pop: np.ndarray, n: int, full: int, limit: int):
    """(solution count up to limit, guesses, first solution, second solution) of a digit board."""
    for c in range(puzzle.shape[0]):
        if puzzle[c] < 0 or puzzle[c] > n:
            return 0, 0, np.zeros_like(puzzle), np.zeros_like(puzzle)
    sol1 = np.zeros_like(puzzle)
    sol2 = np.zeros_like(puzzle)
    count, guesses = _search(_givens_to_masks(puzzle, full), tables, pop, n, full, limit, False, sol1, sol2)
    return count, guesses, sol1, sol2


@njit(cache=True)
def _minimise(
    puzzle: np.ndarray,
    solution: np.ndarray,
    target_clues: int,
    tables: tuple,
    pop: np.ndarray,
    n: int,
    full: int,
) -> None:
    """Remove clues of a unique puzzle in random order while it stays unique (in place)."""
    ncell = puzzle.shape[0]
    sol1 = np.zeros_like(puzzle)
    sol2 = np.zeros_like(puzzle)
    clues = 0
    for c in range(ncell):
        if puzzle[c]:
            clues += 1
    for i in np.random.permutation(ncell):
        if clues <= target_clues:
            break
        if puzzle[i] == 0:
            continue
        cand = _givens_to_masks(puzzle, full)
        # Unique without clue i <=> no solution puts another digit in cell i.
        cand[i] = full & ~(1 << (solution[i] - 1))
        count, _ = _search(cand, tables, pop, n, full, 1, False, sol1, sol2)
        if count == 0:
            puzzle[i] = 0
            clues -= 1


@njit(cache=True)
def _rate(puzzle: np.ndarray, tables: tuple, pop: np.ndarray, n: int, full: int) -> int:
    sol1 = np.zeros_like(puzzle)
    sol2 = np.zeros_like(puzzle)
    _, guesses = _search(_givens_to_masks(puzzle, full), tables, pop, n, full, 2, False, sol1, sol2)
    return guesses


@njit(cache=True)
def _propose(
    puzzle: np.ndarray, solution: np.ndarray, target_clues: int, tables: tuple, pop: np.ndarray, n: int, full: int
) -> np.ndarray:
    """A minimal unique neighbour of `puzzle` with the same solution (a new array; may equal `puzzle`)."""
    sol1 = np.zeros_like(puzzle)
    sol2 = np.zeros_like(puzzle)
    proposal = puzzle.copy()
    # Drop one or two random clues: the puzzle becomes ambiguous, then repair it differently.
    for _drop in range(1 + np.random.randint(2)):
        givens = np.nonzero(proposal)[0]
        if givens.shape[0] > 1:
            proposal[givens[np.random.randint(givens.shape[0])]] = 0
    # Repair: pin a cell where a solution found disagrees with the target until unique again.
    # (A variant that also adds a random clue, letting the solution grid change as in data.md
    # section 2.2, climbed more slowly in our measurements.)
    count, _ = _search(_givens_to_masks(proposal, full), tables, pop, n, full, 2, False, sol1, sol2)
    while count > 1:
        wrong = np.nonzero((sol1 != solution) | (sol2 != solution))[0]
        cell = wrong[np.random.randint(wrong.shape[0])]
        proposal[cell] = solution[cell]
        count, _ = _search(_givens_to_masks(proposal, full), tables, pop, n, full, 2, False, sol1, sol2)
    _minimise(proposal, solution, target_clues, tables, pop, n, full)
    return proposal


@njit(cache=True)
def _harden(
    puzzle: np.ndarray,
    solution: np.ndarray,
    rating: int,
    steps: int,
    target: int,
    target_clues: int,
    tables: tuple,
    pop: np.ndarray,
    n: int,
    full: int,
) -> int:
    """Hill-climb the rating of a minimal unique puzzle with a fixed solution (in place).

    Stops early once the rating reaches `target` (when target > 0).
    """
    for _ in range(steps):
        if 0 < target <= rating:
            break
        proposal = _propose(puzzle, solution, target_clues, tables, pop, n, full)
        new_rating = _rate(proposal, tables, pop, n, full)
        if new_rating >= rating:
            puzzle[:] = proposal
            rating = new_rating
    return rating


@njit(cache=True)
def _walk(
    puzzles: np.ndarray,
    ratings: np.ndarray,
    solution: np.ndarray,
    min_rating: int,
    steps: int,
    min_distance: int,
    target_clues: int,
    tables: tuple,
    pop: np.ndarray,
    n: int,
    full: int,
) -> None:
    """Fill puzzles[1:] with hard neighbours of puzzles[0] (rated >= min_rating) and their ratings.

    A random walk that only moves to neighbours rated >= min_rating: hard puzzles cluster, so once a
    climb has reached the difficulty its neighbourhood yields more hard puzzles far faster than a
    new climb (the forum collections in Sudoku-Extreme were found the same way). A puzzle is kept
    only if its givens sit in at least `min_distance` other cells than every puzzle kept before.
    """
    ncell = puzzles.shape[1]
    current = puzzles[0].copy()
    kept = 1
    for _ in range(steps):
        if kept == puzzles.shape[0]:
            break
        proposal = _propose(current, solution, target_clues, tables, pop, n, full)
        rating = _rate(proposal, tables, pop, n, full)
        if rating < min_rating:
            continue
        current[:] = proposal
        far = True
        for j in range(kept):
            distance = 0
            for c in range(ncell):
                if (puzzles[j, c] != 0) != (current[c] != 0):
                    distance += 1
            if distance < min_distance:
                far = False
                break
        if far:
            puzzles[kept] = current
            ratings[kept] = rating
            kept += 1


@njit(cache=True)
def _generate_one(
    seed: int,
    target_clues: int,
    harden_steps: int,
    target_rating: int,
    walk_steps: int,
    min_distance: int,
    tables: tuple,
    pop: np.ndarray,
    n: int,
    full: int,
    puzzles: np.ndarray,
    solution: np.ndarray,
    ratings: np.ndarray,
) -> None:
    """Fill `puzzles` ([per_climb, cells]), `solution` and `ratings` from `seed` alone.

    puzzles[0] is the climbed puzzle; once it reaches `target_rating`, the rest are its hard
    neighbours (rating -1 where the walk found too few).
    """
    np.random.seed(seed)  # numba's per-thread generator: the candidate depends on its seed only
    ncell = n * n
    dummy = np.zeros(ncell, dtype=solution.dtype)
    _search(np.full(ncell, full, dtype=np.int32), tables, pop, n, full, 1, True, solution, dummy)
    puzzle = puzzles[0]
    puzzle[:] = solution
    _minimise(puzzle, solution, target_clues, tables, pop, n, full)
    rating = _rate(puzzle, tables, pop, n, full)
    if harden_steps > 0:
        rating = _harden(puzzle, solution, rating, harden_steps, target_rating, target_clues, tables, pop, n, full)
    ratings[0] = rating
    ratings[1:] = -1  # empty slots until the walk fills them
    if rating >= target_rating:
        _walk(puzzles, ratings, solution, target_rating, walk_steps, min_distance, target_clues, tables, pop, n, full)


@njit(cache=True, nogil=True)
def _generate_batch(
    seeds: np.ndarray,
    target_clues: int,
    harden_steps: int,
    target_rating: int,
    walk_steps: int,
    min_distance: int,
    tables: tuple,
    pop: np.ndarray,
    n: int,
    full: int,
    puzzles: np.ndarray,
    solutions: np.ndarray,
    ratings: np.ndarray,
) -> None:
    # Runs without the GIL: the Python side splits a batch over threads (cheaper to compile than
    # numba's parallel=True, which recompiles every callee for the parallel backend).
    for i in range(seeds.shape[0]):
        _generate_one(
            seeds[i], target_clues, harden_steps, target_rating, walk_steps, min_distance,
            tables, pop, n, full, puzzles[i], solutions[i], ratings[i],
        )  # fmt: skip


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
    count, guesses, sol1, _ = _solve(board, topo.tables, topo.pop, n, topo.full, limit)
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
        _generate_batch(
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


def _encode(digits: np.ndarray) -> np.ndarray:
    # Reference token layout: 0 PAD, 1 blank, 2..n+1 digits.
    return digits.astype(np.uint8) + 1


def _split_strings(questions: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in questions.astype(np.uint8)}


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


def _filter_difficulty(split: SudokuSplit, min_difficulty: int | None) -> SudokuSplit:
    if min_difficulty is None:
        return split
    if split.ratings.size and (split.ratings < 0).any():
        raise DataError(
            f"{split.path} has no rating column, so --min-difficulty cannot filter it: add a rating column "
            "or drop --min-difficulty"
        )
    return select(split, np.flatnonzero(split.ratings >= min_difficulty))


def build_sudoku_dataset(
    output_dir: str | os.PathLike[str],
    source: str = "generate",
    *,
    size: int = 9,
    num_train: int | None = None,
    num_test: int | None = None,
    subsample_size: int | None = None,
    num_aug: int = 0,
    min_difficulty: int | None = None,
    seed: int = 0,
    target_clues: int | None = None,
    harden_steps: int | None = None,
    per_climb: int | None = None,
    workers: int | None = None,
    source_repo: str = SOURCE_REPO,
    progress: bool = False,
) -> dict[str, Any]:
    """Build a Sudoku dataset in the reference layout at `output_dir` (atomically); return build info.

    source:
      "hf"        download `train.csv` / `test.csv` of `source_repo` (Sudoku-Extreme, 9x9 only).
      "csv:PATH"  a directory with train.csv and test.csv, or one CSV file that is split with a seeded
                  random `num_test` rows (default 10%) held out for test.
      "generate"  the offline generator: `num_train` (default 1000) and `num_test` (default 1000)
                  puzzles from independent seed streams; test puzzles never occur among train puzzles.
    Train puzzles are subsampled to `subsample_size` (alias `num_train` for CSV sources) with a seeded
    `choice` and the chosen rows go to subsample_indices.json; `num_test` subsamples the CSV test split
    (default: all of it, like the reference). `min_difficulty` keeps puzzles with rating >= it (CSV:
    the rating column; generate: our solver's guess count, reached by hill-climbing for up to
    `harden_steps` steps; each climb that gets there yields up to `per_climb` puzzles). `num_aug`
    augmentations per train puzzle (test is never augmented).
    `target_clues` stops the generator's clue removal early (easier puzzles).
    """
    started = time.perf_counter()
    output_dir = check_output_dir(output_dir)
    check_counts(num_train=num_train, num_test=num_test, subsample_size=subsample_size)
    if num_aug < 0:
        raise DataError(f"num_aug must be >= 0, got {num_aug}")
    if min_difficulty is not None and min_difficulty < 0:
        raise DataError(f"min_difficulty must be >= 0, got {min_difficulty}")
    box_rows, box_cols = box_shape(size)  # also rejects unsupported sizes
    streams = np.random.SeedSequence(seed).spawn(5)  # train gen, test gen, subsample, test split, augment
    info: dict[str, Any] = {
        "builder": "sudoku",  # what kind of puzzle this is: solve, eval and render read it
        "source": source,
        "size": size,
        "box": [box_rows, box_cols],
        "seed": seed,
        "num_aug": num_aug,
        "min_difficulty": min_difficulty,
        "target_clues": target_clues,
    }
    subsample_record: dict[str, Any] | None = None
    info["rating_scale"] = (
        "smoltrain solver guesses (singles + locked candidates, limit-2 search)"
        if source == "generate"
        else "the source file's rating column (Sudoku-Extreme: tdoku backtracks)"
    )

    if source == "generate":
        n_train = train_size(num_train, subsample_size, "the generator") or 1000
        n_test = num_test if num_test is not None else 1000
        steps = default_harden_steps(min_difficulty) if harden_steps is None else harden_steps
        per_climb = default_per_climb(steps) if per_climb is None else per_climb
        gen_start = time.perf_counter()
        train_q, train_a, train_r = generate_sudoku_puzzles(
            n_train,
            size,
            streams[0],
            min_difficulty=min_difficulty,
            target_clues=target_clues,
            harden_steps=steps,
            per_climb=per_climb,
            workers=workers,
            progress=progress,
        )
        test_q, test_a, test_r = generate_sudoku_puzzles(
            n_test,
            size,
            streams[1],
            min_difficulty=min_difficulty,
            target_clues=target_clues,
            harden_steps=steps,
            per_climb=per_climb,
            exclude=_split_strings(train_q),
            workers=workers,
            progress=progress,
        )
        gen_seconds = time.perf_counter() - gen_start
        train = SudokuSplit(train_q, train_a, train_r, np.arange(n_train))
        test = SudokuSplit(test_q, test_a, test_r, np.arange(n_test))
        info.update(
            harden_steps=steps,
            per_climb=per_climb,
            generation_seconds=round(gen_seconds, 3),
            generation_rate_puzzles_per_s=round((n_train + n_test) / max(gen_seconds, 1e-9), 2),
            workers=workers or default_workers(),
        )
    elif source == "hf" or source.startswith("csv:"):
        if source == "hf":
            if size != 9:
                raise DataError(f"{source_repo} holds 9x9 puzzles; --size {size} needs --source generate or csv:PATH")
            info["source_repo"] = source_repo
        train, test = load_source_splits(
            source, lambda path: read_sudoku_csv(path, size), source_repo=source_repo, num_test=num_test,
            rng=np.random.default_rng(streams[3]), noun="puzzles", example="data/sudoku-csv",
        )  # fmt: skip
        train_wanted = train_size(num_train, subsample_size, "a CSV source")
        info["rows_in_source"] = {"train": int(train.questions.shape[0]), "test": int(test.questions.shape[0])}
        train = _filter_difficulty(train, min_difficulty)
        test = _filter_difficulty(test, min_difficulty)
        sub_rng = np.random.default_rng(streams[2])
        train, train_sampled = subsample(train, train_wanted, sub_rng)
        single_file = source.startswith("csv:") and Path(source[4:]).is_file()
        test, test_sampled = subsample(test, None if single_file else num_test, sub_rng)
        # Row lists for the splits that are not simply "every row of the file, in file order" (null).
        filtered = min_difficulty is not None
        if train_sampled or test_sampled or single_file or filtered:
            subsample_record = {
                "note": "0-based data rows (header excluded) of the source files, in dataset order; "
                "null = every row in file order",
                "train": {
                    "file": train.path,
                    "rows": train.rows.tolist() if train_sampled or single_file or filtered else None,
                },
                "test": {
                    "file": test.path,
                    "rows": test.rows.tolist() if test_sampled or single_file or filtered else None,
                },
            }
    else:
        raise DataError(f"unknown Sudoku source {source!r}: use 'hf', 'csv:PATH' or 'generate'")

    for name, split in (("train", train), ("test", test)):
        if split.questions.shape[0] == 0:
            hint = " after the --min-difficulty filter" if min_difficulty is not None else ""
            raise DataError(f"no {name} puzzles left{hint}: lower --min-difficulty or use a larger source")

    test_strings = _split_strings(test.questions)
    overlap = sum(row.tobytes() in test_strings for row in train.questions.astype(np.uint8))
    aug_q, aug_a, sizes, counters = _augment(
        train, size, num_aug, np.random.default_rng(streams[4]), test_strings, progress
    )

    with atomic_dataset_dir(output_dir) as tmp:
        test_rows = (_encode(test.questions), _encode(test.answers))
        write_puzzle_files(tmp, (_encode(aug_q), _encode(aug_a), sizes), test_rows, size + 2, subsample_record)
        if source == "generate":
            name = f"smoltrain-generate-{size}x{size}"
            write_sudoku_csv(tmp / "generated" / "train.csv", train, name)
            write_sudoku_csv(tmp / "generated" / "test.csv", test, name)

        def rating_stats(split: SudokuSplit) -> dict[str, float] | None:
            r = split.ratings[split.ratings >= 0]
            if r.size == 0:
                return None
            return {"mean": round(float(r.mean()), 3), "median": float(np.median(r)), "max": int(r.max())}

        info.update(
            counts={
                "train_puzzles": int(train.questions.shape[0]),
                "train_rows": int(aug_q.shape[0]),
                "test_puzzles": int(test.questions.shape[0]),
            },
            mean_clues={
                "train": round(float((train.questions > 0).sum(1).mean()), 3),
                "test": round(float((test.questions > 0).sum(1).mean()), 3),
            },
            rating={"train": rating_stats(train), "test": rating_stats(test)},
            train_test_overlap=int(overlap),
            augmentations_redrawn=counters["redrawn"],
            augmentations_dropped=counters["dropped"],
        )
        write_build_info(tmp, info, started)
    return info


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
