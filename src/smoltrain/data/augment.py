"""Grid augmentations and their inverses: Sudoku symmetries, the 8 dihedral transforms, colour maps.

Sudoku augmentation (`sudoku_shuffle`) generalises the reference `shuffle_sudoku` from 9x9 to any
n x n board with r x c boxes (n = r * c): relabel the digits (blank 0 stays 0), permute the bands
(groups of r rows) and the rows inside each band, permute the stacks (groups of c columns) and the
columns inside each stack, and transpose with probability 1/2 -- but only when the boxes are square,
because a transpose turns r x c boxes into c x r boxes, which is a different puzzle family.
Every one of these maps a valid Sudoku onto a valid Sudoku, and the same map is applied to the
board and its solution, so the transformed solution solves the transformed board.

The dihedral transforms and their inverse table follow the reference numbering exactly (ARC
predictions are mapped back with `inverse_dihedral_transform`, so the numbering must match the one
the dataset was built with).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "ARC_NAME_SEPARATOR",
    "DIHEDRAL_INVERSE",
    "arc_augmented_name",
    "apply_colour_permutation",
    "dihedral_transform",
    "inverse_colour_permutation",
    "inverse_dihedral_transform",
    "parse_arc_name",
    "random_colour_permutation",
    "sudoku_shuffle",
    "sudoku_shuffle_batch",
    "TokenView",
    "dihedral_view",
    "sudoku_views",
]

# DIHEDRAL_INVERSE[k] undoes transform k: rotations by 90 and 270 degrees undo each other, every
# other transform is its own inverse.
DIHEDRAL_INVERSE: list[int] = [0, 3, 2, 1, 4, 5, 6, 7]


def dihedral_transform(grid: np.ndarray, k: int) -> np.ndarray:
    """Apply dihedral transform `k` (0..7) to a 2-D grid (returns a view where numpy can).

    0 identity, 1/2/3 counter-clockwise rotation by 90/180/270 degrees (`np.rot90`), 4 left-right
    flip, 5 up-down flip, 6 transpose, 7 anti-diagonal reflection (rotate 90 then flip left-right).
    """
    if grid.ndim != 2:
        raise ValueError(f"dihedral_transform expects a 2-D grid, got shape {grid.shape}")
    if k == 0:
        return grid
    if k in (1, 2, 3):
        return np.rot90(grid, k=k)
    if k == 4:
        return np.fliplr(grid)
    if k == 5:
        return np.flipud(grid)
    if k == 6:
        return grid.T
    if k == 7:
        return np.fliplr(np.rot90(grid, k=1))
    raise ValueError(f"dihedral transform id must be in 0..7, got {k}")


def inverse_dihedral_transform(grid: np.ndarray, k: int) -> np.ndarray:
    """Undo `dihedral_transform(., k)`."""
    if not 0 <= k < 8:
        raise ValueError(f"dihedral transform id must be in 0..7, got {k}")
    return dihedral_transform(grid, DIHEDRAL_INVERSE[k])


def random_colour_permutation(
    rng: np.random.Generator, num_colours: int = 10, fixed: tuple[int, ...] = (0,)
) -> np.ndarray:
    """A random relabelling of colours 0..num_colours-1 that keeps the colours in `fixed` in place.

    Returns `mapping` with `mapping[old] = new` (ARC keeps the background colour 0 fixed).
    """
    mapping = np.arange(num_colours, dtype=np.int64)
    free = np.array([c for c in range(num_colours) if c not in fixed], dtype=np.int64)
    mapping[free] = rng.permutation(free)
    return mapping


def apply_colour_permutation(grid: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """Relabel every cell of `grid` through `mapping` (`new = mapping[old]`); keeps `grid`'s dtype."""
    return np.asarray(mapping)[grid].astype(grid.dtype, copy=False)


def inverse_colour_permutation(mapping: np.ndarray) -> np.ndarray:
    """The mapping that undoes `mapping` (`inverse[mapping[c]] == c`)."""
    mapping = np.asarray(mapping)
    inverse = np.empty_like(mapping)
    inverse[mapping] = np.arange(mapping.size, dtype=mapping.dtype)
    return inverse


# ARC puzzle names carry their augmentation, as the reference builder writes them:
# "{task}|||t{dihedral id}|||{mapping}", where mapping is the ten digits mapping[0..9] (mapping[old] = new).
# The evaluator reads the augmentation back from the name to undo it; a name without the separator is the
# original task (identity transform).
ARC_NAME_SEPARATOR = "|||"


def arc_augmented_name(task: str, dihedral: int, mapping: np.ndarray) -> str:
    """The identifier name of `task` under dihedral transform `dihedral` and colour map `mapping`."""
    digits = "".join(str(int(c)) for c in np.asarray(mapping))
    if len(digits) != 10:
        raise ValueError(f"an ARC colour map has ten entries 0..9, got {mapping}")
    return f"{task}{ARC_NAME_SEPARATOR}t{dihedral}{ARC_NAME_SEPARATOR}{digits}"


def parse_arc_name(name: str) -> tuple[str, int, np.ndarray]:
    """`(task, dihedral id, colour map)` of an identifier name written by `arc_augmented_name`.

    A name without the separator is an un-augmented task: identity transform and identity map.
    """
    if ARC_NAME_SEPARATOR not in name:
        return name, 0, np.arange(10, dtype=np.int64)
    task, transform, digits = name.rsplit(ARC_NAME_SEPARATOR, 2)
    if not (transform.startswith("t") and transform[1:].isdigit() and int(transform[1:]) < 8):
        raise ValueError(f"ARC identifier {name!r}: expected a dihedral id t0..t7, got {transform!r}")
    mapping = np.array([int(c) for c in digits], dtype=np.int64) if digits.isdigit() else np.zeros(0)
    if mapping.size != 10 or sorted(mapping.tolist()) != list(range(10)):
        raise ValueError(f"ARC identifier {name!r}: expected a permutation of the digits 0..9, got {digits!r}")
    return task, int(transform[1:]), mapping


def _check_sudoku_shape(board: np.ndarray, n: int, box_rows: int, box_cols: int) -> None:
    if box_rows * box_cols != n:
        raise ValueError(f"boxes of {box_rows}x{box_cols} do not tile a {n}x{n} board")
    if board.size != n * n:
        raise ValueError(f"expected a board of {n * n} cells for n={n}, got shape {board.shape}")


def _permutations(rng: np.random.Generator, k: int, m: int) -> np.ndarray:
    """k independent uniform permutations of 0..m-1 as a [k, m] array, drawn in one call."""
    return rng.permuted(np.tile(np.arange(m), (k, 1)), axis=1)


def sudoku_shuffle_batch(
    board: np.ndarray,
    solution: np.ndarray,
    n: int,
    box_rows: int,
    box_cols: int,
    rng: np.random.Generator,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """`k` independent random Sudoku symmetries of one (board, solution) pair, vectorised.

    Returns arrays of shape `[k, *board.shape]`. Cell values are raw digits: 0 = blank, 1..n.
    Drawing all k transforms with a handful of vectorised RNG calls keeps 1000 augmentations per
    puzzle cheap (the builder makes a million of them for the reference 1k x 1000 recipe).
    """
    board = np.asarray(board)
    solution = np.asarray(solution)
    _check_sudoku_shape(board, n, box_rows, box_cols)
    _check_sudoku_shape(solution, n, box_rows, box_cols)
    num_bands = n // box_rows  # horizontal groups of box_rows rows
    num_stacks = n // box_cols  # vertical groups of box_cols columns

    # Digit relabelling: digit_map[0] = 0 keeps blanks blank.
    digit_map = np.zeros((k, n + 1), dtype=np.int64)
    digit_map[:, 1:] = _permutations(rng, k, n) + 1
    transpose = (rng.random(k) < 0.5) if box_rows == box_cols else np.zeros(k, dtype=bool)
    bands = _permutations(rng, k, num_bands)
    rows_in_band = _permutations(rng, k * num_bands, box_rows).reshape(k, num_bands, box_rows)
    stacks = _permutations(rng, k, num_stacks)
    cols_in_stack = _permutations(rng, k * num_stacks, box_cols).reshape(k, num_stacks, box_cols)
    # New row i of augmentation j comes from old row row_perm[j, i].
    row_perm = (bands[:, :, None] * box_rows + rows_in_band).reshape(k, n)
    col_perm = (stacks[:, :, None] * box_cols + cols_in_stack).reshape(k, n)

    # Flat source cell for each target cell; with transpose the source grid is read as x.T, i.e.
    # target (i, j) reads x[col_perm[j], row_perm[i]] instead of x[row_perm[i], col_perm[j]].
    src_plain = row_perm[:, :, None] * n + col_perm[:, None, :]
    src_transposed = col_perm[:, None, :] * n + row_perm[:, :, None]
    src = np.where(transpose[:, None, None], src_transposed, src_plain).reshape(k, n * n)

    def apply(x: np.ndarray) -> np.ndarray:
        moved = x.reshape(-1)[src]  # [k, n*n]
        relabelled = np.take_along_axis(digit_map, moved.astype(np.int64), axis=1)
        return relabelled.astype(x.dtype, copy=False).reshape((k, *x.shape))

    return apply(board), apply(solution)


def sudoku_shuffle(
    board: np.ndarray,
    solution: np.ndarray,
    n: int,
    box_rows: int,
    box_cols: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """One random Sudoku symmetry applied identically to `board` and `solution` (same shapes out).

    Digits are raw (0 = blank, 1..n). Transposes only when `box_rows == box_cols`.
    """
    boards, solutions = sudoku_shuffle_batch(board, solution, n, box_rows, box_cols, rng, 1)
    return boards[0], solutions[0]


class TokenView:
    """One test-time view of a flat token grid: ``view[i] = token_map[original[source[i]]]`` (a cell permutation
    and a token relabelling), and its exact inverse. Every Sudoku symmetry and every dihedral transform is one.
    Works on ``[B, L]`` numpy arrays and torch tensors alike; negative values (ignored labels) pass unchanged."""

    def __init__(self, source: np.ndarray, token_map: np.ndarray) -> None:
        self.source = np.asarray(source, dtype=np.int64)
        self.token_map = np.asarray(token_map, dtype=np.int64)
        self.inverse_source = np.argsort(self.source)
        self.inverse_map = inverse_colour_permutation(self.token_map)

    def key(self) -> bytes:
        return self.source.tobytes() + self.token_map.tobytes()

    @staticmethod
    def _relabel(x, table: np.ndarray):  # type: ignore[no-untyped-def]
        if isinstance(x, np.ndarray):
            mapped = table[np.clip(x, 0, None)]
            return np.where(x < 0, x, mapped).astype(x.dtype, copy=False)
        import torch

        t = torch.as_tensor(table, device=x.device, dtype=x.dtype)
        return torch.where(x < 0, x, t[x.clamp_min(0).long()])

    def apply(self, x):  # type: ignore[no-untyped-def]
        """The view of ``x`` ``[..., L]``."""
        return self._relabel(x[..., self.source], self.token_map)

    def invert(self, x):  # type: ignore[no-untyped-def]
        """The original of the view ``x`` (``invert(apply(x)) == x``)."""
        return self._relabel(x, self.inverse_map)[..., self.inverse_source]


def dihedral_view(n: int, k: int, vocab_size: int) -> TokenView:
    """Dihedral transform ``k`` of an n x n grid as a `TokenView` (tokens kept)."""
    source = np.ascontiguousarray(dihedral_transform(np.arange(n * n).reshape(n, n), k)).reshape(-1)
    return TokenView(source, np.arange(vocab_size))


def sudoku_views(n: int, box_rows: int, box_cols: int, rng: np.random.Generator, count: int,
                 token_offset: int = 1) -> list[TokenView]:
    """``count`` distinct Sudoku symmetries as `TokenView` s, the identity first; tokens are digits + ``token_offset``
    (0 PAD and ``token_offset`` blank stay). Drawn like `sudoku_shuffle_batch` (digits, bands, rows, stacks,
    columns, transpose when boxes are square); a view equal to an earlier one is redrawn (up to 100 times)."""
    cells = np.arange(n * n)
    identity_map = np.arange(n + 1 + token_offset)
    views = [TokenView(cells, identity_map)]
    seen = {views[0].key()}
    tries = 0
    while len(views) < count and tries < 100 * count:
        tries += 1
        view = _one_sudoku_view(n, box_rows, box_cols, rng, token_offset)
        if view.key() not in seen:
            seen.add(view.key())
            views.append(view)
    return views


def _one_sudoku_view(n: int, box_rows: int, box_cols: int, rng: np.random.Generator, token_offset: int) -> TokenView:
    num_bands, num_stacks = n // box_rows, n // box_cols
    digits = rng.permutation(n) + 1
    transpose = box_rows == box_cols and bool(rng.random() < 0.5)
    bands = rng.permutation(num_bands)
    rows = np.concatenate([b * box_rows + rng.permutation(box_rows) for b in bands])
    stacks = rng.permutation(num_stacks)
    cols = np.concatenate([s * box_cols + rng.permutation(box_cols) for s in stacks])
    source = (cols[None, :] * n + rows[:, None]) if transpose else (rows[:, None] * n + cols[None, :])
    token_map = np.arange(n + 1 + token_offset)
    token_map[1 + token_offset:] = digits + token_offset
    return TokenView(source.reshape(-1), token_map)
