"""Test-time views (`PuzzleKind.test_views`) and voting over them (`smoltrain.eval.voting`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smoltrain.data.augment import dihedral_transform
from smoltrain.data.puzzles import get_kind
from smoltrain.data.sudoku import generate_sudoku_puzzles, is_valid_solution
from smoltrain.errors import ConfigError
from smoltrain.eval.voting import exact_rows, rank_candidates, vote


@pytest.mark.parametrize("n", [4, 6, 9])
def test_sudoku_views_are_exact_symmetries_and_invert(n):
    kind = get_kind("sudoku")
    views = kind.test_views(n * n, n + 2, 8, np.random.default_rng(0))
    assert len(views) == 8 and len({v.key() for v in views}) == 8
    assert (views[0].source == np.arange(n * n)).all()  # view 0 is the puzzle itself
    questions, answers, _ = generate_sudoku_puzzles(3, n, seed=1)
    tokens = np.stack([kind.encode(a) for a in answers])
    givens = np.stack([kind.encode(q) for q in questions])
    for view in views:
        for x in (tokens, givens):
            assert (view.invert(view.apply(x)) == x).all()
            t = torch.from_numpy(x)
            assert torch.equal(view.invert(view.apply(t)), t)
        for g, a in zip(view.apply(givens), view.apply(tokens), strict=True):  # still a Sudoku and its solution
            assert is_valid_solution(kind.decode(g), kind.decode(a), n)


def test_views_are_seeded():
    kind = get_kind("sudoku")
    a = kind.test_views(36, 8, 4, np.random.default_rng([3, 7]))
    b = kind.test_views(36, 8, 4, np.random.default_rng([3, 7]))
    assert [v.key() for v in a] == [v.key() for v in b]


def test_maze_views_are_the_dihedral_transforms():
    kind = get_kind("maze")
    n = 5
    grid = np.arange(n * n).reshape(n, n) % 6
    views = kind.test_views(n * n, 6, 8, np.random.default_rng(0))
    for k, view in enumerate(views):
        assert (view.apply(grid.reshape(-1)) == dihedral_transform(grid, k).reshape(-1)).all()
        assert (view.invert(view.apply(grid.reshape(-1))) == grid.reshape(-1)).all()
    with pytest.raises(ConfigError, match="at most 8"):
        kind.test_views(n * n, 6, 9, np.random.default_rng(0))


def test_ignored_labels_pass_unchanged():
    view = get_kind("sudoku").test_views(16, 6, 2, np.random.default_rng(0))[1]
    labels = np.full((1, 16), -100)
    labels[0, 0] = 3
    assert (view.invert(view.apply(labels)) == labels).all() and (view.apply(labels) == -100).sum() == 15


def test_voting_a_model_that_answers_each_view_truthfully_gives_the_truth():
    kind = get_kind("sudoku")
    views = kind.test_views(16, 6, 4, np.random.default_rng(0))
    _, answers, _ = generate_sudoku_puzzles(5, 4, seed=2)
    truth = np.stack([kind.encode(a) for a in answers])
    # The model answers each view's own truth (the permuted answer); mapped back, every view says the truth.
    preds = np.stack([v.invert(v.apply(truth)) for v in views])
    assert (vote(preds, np.full(preds.shape[:2], 0.5)) == truth).all()
    assert exact_rows(truth, truth, vote(preds, np.zeros(preds.shape[:2]))).all()


def test_majority_beats_a_wrong_first_view_and_ties_go_to_q_halt():
    truth = np.array([[2, 3, 4, 5]])
    wrong = np.array([[2, 3, 5, 4]])
    preds = np.stack([wrong, truth, truth, wrong.copy() * 0 + truth])  # view 0 wrong, the other three right
    assert (vote(preds, np.array([[0.99], [0.1], [0.1], [0.1]])) == truth).all()
    tie = np.stack([wrong, truth])
    assert (vote(tie, np.array([[0.2], [0.9]])) == truth).all()
    assert (vote(tie, np.array([[0.9], [0.2]])) == wrong).all()
    ranked = rank_candidates({b"a": [0.1, 0.2], b"b": [0.9]})
    assert [c.key for c in ranked] == [b"a", b"b"] and ranked[0].votes == 2
