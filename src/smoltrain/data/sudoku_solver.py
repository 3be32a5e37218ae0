"""The compiled Sudoku kernels (numba): solver, rater and puzzle generator, and the index tables they read.

Boards are flat arrays of n*n raw digits, 0 = blank, 1..n = digits; the Python API over these kernels
(`solve_sudoku`, `rate_sudoku`, `generate_sudoku_puzzles`) is in `smoltrain.data.sudoku`, which also owns the
board rules (box shapes) and the dataset builder.

Solver (one 32-bit candidate mask per cell): constraint propagation with naked singles, hidden singles and
locked candidates (pointing / claiming over the box-line intersections), then depth-first search branching on
a cell with the fewest candidates (MRV). It counts solutions up to a limit and counts *guesses*: every branch
taken while the branch point still has other candidates left; the last remaining candidate is forced, not a
guess (the DPLL convention). Rating = guesses of the exhaustive limit-2 search, 0 meaning "solved by
propagation alone". The scale is ours, not tdoku's: shared/reference/data.md section 2.2 measured a similar
rating at about 4x the tdoku backtrack count (the Sudoku-Extreme `rating` column) on hard puzzles.

Generator: random full grid (randomised search from an empty board), then try to remove the clues in random
order, keeping a removal only if the solution stays unique (so the result is a minimal puzzle, or stops at
`target_clues`). Uniqueness after removing clue i of a unique puzzle is checked by asking for a solution with
cell i != its known value (a limit-1 search), about twice as fast as counting to 2. Optional hardening
hill-climbs: drop one or two clues, add clues from the known solution until the puzzle is unique again,
re-minimise, and keep the result if its rating did not drop; it stops early once a target rating is reached.
Random minimal 9x9 puzzles rate ~1.3 on average, so a `min_difficulty` much above ~5 is reached by hardening,
not by filtering. `generate_batch` runs without the GIL, so the Python side spreads candidates over threads;
each candidate is a pure function of its own seed, so the output does not depend on the number of threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["Topology", "generate_batch", "solve_board"]


class Topology:
    """Index tables of an n x n board (n = box_rows * box_cols) with box_rows x box_cols boxes, as int32
    arrays for the kernels.

    units: the 3n rows, columns and boxes; peers: the cells sharing a unit with each cell.
    For locked candidates, every (box, row) intersection gives a row segment with the rest of its
    row and the rest of its box (rseg/rline/rbox), and likewise for (box, column) (cseg/cline/cbox).
    """

    def __init__(self, box_rows: int, box_cols: int) -> None:
        n = box_rows * box_cols
        self.n = n
        self.box_rows, self.box_cols = box_rows, box_cols
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


# ------------------------------------------------------------------------------------------------
# Kernels


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
def solve_board(puzzle: np.ndarray, tables: tuple, pop: np.ndarray, n: int, full: int, limit: int):
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
def generate_batch(
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
