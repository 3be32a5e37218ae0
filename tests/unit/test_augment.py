"""Sudoku symmetries, dihedral transforms and colour permutations."""

from __future__ import annotations

import numpy as np
import pytest

from smoltrain.data.augment import (
    DIHEDRAL_INVERSE,
    apply_colour_permutation,
    dihedral_transform,
    inverse_colour_permutation,
    inverse_dihedral_transform,
    random_colour_permutation,
    sudoku_shuffle,
    sudoku_shuffle_batch,
)
from smoltrain.data.sudoku import generate_sudoku_puzzles, solve_sudoku

SHAPES = {4: (2, 2), 6: (2, 3), 9: (3, 3)}


def is_valid_solution(grid: np.ndarray, n: int, box_rows: int, box_cols: int) -> bool:
    g = grid.reshape(n, n)
    digits = set(range(1, n + 1))
    units = [g[i] for i in range(n)] + [g[:, j] for j in range(n)]
    units += [
        g[r : r + box_rows, c : c + box_cols].reshape(-1) for r in range(0, n, box_rows) for c in range(0, n, box_cols)
    ]
    return all(set(u.tolist()) == digits for u in units)


def pattern_solution(n: int, box_rows: int, box_cols: int) -> np.ndarray:
    """A valid grid from the classic shifted-row pattern (no solver involved)."""
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return ((box_cols * (i % box_rows) + i // box_rows + j) % n + 1).astype(np.uint8)


@pytest.mark.parametrize("n", [4, 6, 9])
def test_shuffle_keeps_sudoku_valid(n: int) -> None:
    box_rows, box_cols = SHAPES[n]
    rng = np.random.default_rng(n)
    solution = pattern_solution(n, box_rows, box_cols)
    assert is_valid_solution(solution, n, box_rows, box_cols)
    board = np.where(rng.random((n, n)) < 0.5, solution, 0).astype(np.uint8)
    for _ in range(200):
        b, s = sudoku_shuffle(board, solution, n, box_rows, box_cols, rng)
        assert b.shape == board.shape and b.dtype == board.dtype
        assert is_valid_solution(s, n, box_rows, box_cols)
        assert ((b == 0) | (b == s)).all()  # every given agrees with the transformed solution
        assert (b == 0).sum() == (board == 0).sum()  # blanks stay blanks, digits stay digits


@pytest.mark.parametrize("n", [4, 6, 9])
def test_shuffle_preserves_unique_solution(n: int) -> None:
    box_rows, box_cols = SHAPES[n]
    questions, answers, _ = generate_sudoku_puzzles(5, n, seed=3)
    rng = np.random.default_rng(0)
    for q, a in zip(questions, answers, strict=True):
        boards, solutions = sudoku_shuffle_batch(q, a, n, box_rows, box_cols, rng, 20)
        for b, s in zip(boards, solutions, strict=True):
            assert is_valid_solution(s, n, box_rows, box_cols)
            count, _, found = solve_sudoku(b, n)
            assert count == 1 and (found == s).all()


def test_shuffle_applies_same_map_to_board_and_solution() -> None:
    n, (box_rows, box_cols) = 9, SHAPES[9]
    rng = np.random.default_rng(5)
    row_code = np.repeat(np.arange(1, n + 1), n).reshape(n, n)  # cell value = its source row + 1
    col_code = np.tile(np.arange(1, n + 1), n).reshape(n, n)
    saw_transpose = False
    for _ in range(50):
        state = rng.bit_generator.state
        rows, cols = sudoku_shuffle(row_code, col_code, n, box_rows, box_cols, rng)
        rng.bit_generator.state = state
        again_rows, again_cols = sudoku_shuffle(row_code, col_code, n, box_rows, box_cols, rng)
        assert (rows == again_rows).all() and (cols == again_cols).all()
        # Each output row draws from a single source row (no transpose) or a single source column.
        from_one_source_row = all(len(set(r.tolist())) == 1 for r in rows)
        from_one_source_col = all(len(set(r.tolist())) == 1 for r in cols)
        assert from_one_source_row != from_one_source_col
        saw_transpose |= from_one_source_col
    assert saw_transpose


def test_rectangular_boxes_never_transpose() -> None:
    n, (box_rows, box_cols) = 6, SHAPES[6]
    rng = np.random.default_rng(6)
    row_code = np.repeat(np.arange(1, n + 1), n).reshape(n, n)
    rows, _ = sudoku_shuffle_batch(row_code, row_code, n, box_rows, box_cols, rng, 200)
    for r in rows:
        assert all(len(set(line.tolist())) == 1 for line in r)


@pytest.mark.parametrize("shape", [(3, 5), (4, 4), (1, 7)])
def test_dihedral_inverse_round_trip(shape: tuple[int, int]) -> None:
    grid = np.arange(np.prod(shape)).reshape(shape)
    seen = set()
    for k in range(8):
        out = dihedral_transform(grid, k)
        np.testing.assert_array_equal(inverse_dihedral_transform(out, k), grid)
        np.testing.assert_array_equal(dihedral_transform(out, DIHEDRAL_INVERSE[k]), grid)
        seen.add((out.shape, out.tobytes()))
    if shape == (4, 4):
        assert len(seen) == 8  # the 8 transforms are distinct on a generic square grid
    with pytest.raises(ValueError):
        dihedral_transform(grid, 8)


def test_dihedral_numbering_matches_reference() -> None:
    g = np.array([[1, 2], [3, 4]])
    np.testing.assert_array_equal(dihedral_transform(g, 1), np.rot90(g))
    np.testing.assert_array_equal(dihedral_transform(g, 4), np.fliplr(g))
    np.testing.assert_array_equal(dihedral_transform(g, 5), np.flipud(g))
    np.testing.assert_array_equal(dihedral_transform(g, 6), g.T)
    np.testing.assert_array_equal(dihedral_transform(g, 7), np.fliplr(np.rot90(g)))


def test_colour_permutation_helpers() -> None:
    rng = np.random.default_rng(0)
    mapping = random_colour_permutation(rng, 10, fixed=(0,))
    assert mapping[0] == 0 and sorted(mapping.tolist()) == list(range(10))
    grid = rng.integers(0, 10, size=(5, 7)).astype(np.uint8)
    out = apply_colour_permutation(grid, mapping)
    assert out.dtype == np.uint8 and ((grid == 0) == (out == 0)).all()
    np.testing.assert_array_equal(apply_colour_permutation(out, inverse_colour_permutation(mapping)), grid)
