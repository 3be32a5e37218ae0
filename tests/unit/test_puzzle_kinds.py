"""Puzzle kinds (`smoltrain.data.puzzles.PuzzleKind`): each kind's encode/decode, parse/format and verdict round
trips, the registry, and the one detector of a dataset's kind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from smoltrain.data.puzzles import (
    PUZZLE_KINDS,
    PuzzleDatasetMetadata,
    PuzzleKind,
    detect_kind,
    get_kind,
    write_identifiers,
    write_split,
)
from smoltrain.errors import ConfigError, DataError, SmoltrainError

SUDOKU, MAZE, ARC = (get_kind(name) for name in ("sudoku", "maze", "arc"))


SOLVED_4 = "1234341221434321"


MAZE_TEXT = "S.#\n  #\n##G"


def test_registry_lists_every_kind_beside_its_builder() -> None:
    assert list(PUZZLE_KINDS) == ["sudoku", "maze", "arc"]
    for name in PUZZLE_KINDS:
        kind = PUZZLE_KINDS[name]
        assert isinstance(kind, PuzzleKind) and kind.name == name == str(kind)
        assert type(kind).__module__ == f"smoltrain.data.{name}"  # defined beside its builder
    with pytest.raises(ConfigError, match="unknown puzzle kind 'chess': choose from sudoku, maze, arc"):
        get_kind("chess")


def test_sudoku_round_trips() -> None:
    digits = np.array([int(c) for c in SOLVED_4])
    digits[[1, 6]] = 0  # two blanks
    tokens = SUDOKU.encode(digits)
    assert tokens.tolist()[:3] == [2, 1, 4]  # digit + 1, blank 1
    assert np.array_equal(SUDOKU.decode(tokens), digits)
    assert np.array_equal(SUDOKU.parse(SUDOKU.format(tokens)), tokens)  # printed boards paste back
    assert SUDOKU.format(tokens).splitlines()[0] == "1 . | 3 4"
    stray = tokens.copy()
    stray[0] = 0  # PAD where a digit belongs: no digit when decoded, "?" in the picture
    assert SUDOKU.decode(stray)[0] == 0 and SUDOKU.drawing.digits(stray)[0] == -1
    with pytest.raises(DataError, match="the puzzle has 'x' at character 1"):
        SUDOKU.parse("x" * 16)


def test_sudoku_checks_and_verdicts() -> None:
    solved = SUDOKU.parse(SOLVED_4)
    puzzle = solved.copy()
    puzzle[[1, 6]] = 1
    verdict = SUDOKU.verdict(puzzle, solved, solved)
    assert (verdict.correct, verdict.line) == (True, "valid solution (equals the dataset's answer)")
    wrong = solved.copy()
    wrong[[0, 1]] = wrong[[1, 0]]  # a given moved
    verdict = SUDOKU.verdict(puzzle, None, wrong)
    assert verdict.correct is False and verdict.line.startswith("not a valid solution: 1 given changed")
    SUDOKU.check_typed(puzzle, 16, 6)
    with pytest.raises(SmoltrainError, match=r"trained on 9x9 puzzles \(81 cells\); got 16 cells"):
        SUDOKU.check_typed(puzzle, 81, 11)
    with pytest.raises(SmoltrainError, match="vocabulary has 5 tokens but 4x4 Sudoku uses 6"):
        SUDOKU.check_typed(puzzle, 16, 5)
    with pytest.raises(DataError, match=r"breaks the rules \(row 1 repeats 1"):
        SUDOKU.check_typed(SUDOKU.parse("11.. .... .... ...."), 16, 6)
    assert SUDOKU.report(puzzle, None, solved, 3)[2] == "answer after 3 ACT steps ([d] = filled in by the model):"


def test_maze_round_trips() -> None:
    tokens = MAZE.parse(MAZE_TEXT)
    assert tokens.tolist() == [3, 2, 1, 2, 2, 1, 1, 1, 4]
    assert MAZE.format(tokens) == "S #\n  #\n##G"  # '.' reads as free and prints as a space
    assert np.array_equal(MAZE.parse(MAZE.format(tokens)), tokens)
    grid = MAZE.decode(tokens)
    assert grid.shape == (3, 3) and "".join(grid[0]) == "S #"
    assert np.array_equal(MAZE.encode(grid), tokens)
    assert MAZE.format(np.zeros(9, dtype=np.int64)) == "???\n???\n???"  # PAD
    with pytest.raises(DataError, match="2 G"):
        MAZE.parse("S #\n G#\n##G")


def test_maze_checks_and_verdicts() -> None:
    inputs = MAZE.parse("S  \n## \n  G")
    path = inputs.copy()
    path[[1, 2, 5]] = 5
    verdict = MAZE.verdict(inputs, path, path)
    assert (verdict.correct, verdict.line) == (True, "a valid shortest path (equals the dataset's path)")
    verdict = MAZE.verdict(inputs, None, inputs)  # no path drawn
    assert verdict.correct is False and verdict.line.startswith("not a valid shortest path: ")
    MAZE.check_typed(inputs, 9, 6)
    with pytest.raises(DataError, match="the maze is 3x3, but this run was trained on 7x7 mazes"):
        MAZE.check_typed(inputs, 49, 6)


def test_arc_round_trips_and_verdicts() -> None:
    grid = np.array([[0, 1, 2], [3, 4, 5]], dtype=np.uint8)
    tokens = ARC.encode(grid, canvas_size=5)
    assert tokens.shape == (25,) and tokens[:4].tolist() == [2, 3, 4, 1]  # colour + 2, then EOS
    assert np.array_equal(ARC.decode(tokens), grid)
    assert ARC.format(tokens) == "012\n345"
    assert ARC.format(np.ones(25, dtype=np.int64)) == "(no grid: the canvas starts with EOS or PAD)"
    assert ARC.verdict(tokens, tokens, tokens).line == "equals the target"
    assert ARC.verdict(tokens, None, tokens).correct is None
    other = grid.copy()
    other[0, 0] = 9
    assert ARC.verdict(tokens, tokens, ARC.encode(other, 5)).line == "differs from the target in 1 of 6 cells"
    assert ARC.count_wrong(ARC.encode(grid[:1], 5), tokens) is None  # another size
    assert ARC.title(3, "task-b") == "test example 3 (task-b)" and SUDOKU.title(3, "<blank>") == "test example 3"
    with pytest.raises(DataError, match="typed ARC puzzles are not supported"):
        ARC.parse("012")


def test_detect_kind_by_shape_build_info_and_dataset(tmp_path: Path) -> None:
    def by_shape(vocab_size: int, seq_len: int) -> str:
        return detect_kind(vocab_size=vocab_size, seq_len=seq_len).name

    assert by_shape(12, 900) == by_shape(12, 100) == "arc"
    assert by_shape(6, 49) == "maze" and by_shape(6, 16) == by_shape(11, 81) == by_shape(12, 99) == "sudoku"
    # A reference-built dataset (no build_info.json): the shapes of its dataset.json.
    meta = PuzzleDatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=6, seq_len=9,
                                 num_puzzle_identifiers=1, total_groups=1, mean_puzzle_examples=1.0,
                                 total_puzzles=1, sets=["all"])
    tokens = MAZE.parse(MAZE_TEXT)[None]
    write_split(tmp_path, "test", tokens, tokens, np.zeros(1, dtype=np.int32), np.arange(2), np.arange(2), meta)
    write_identifiers(tmp_path, ["<blank>"])
    assert detect_kind(tmp_path) is MAZE
    (tmp_path / "build_info.json").write_text(json.dumps({"builder": "arc"}))  # the builder's word wins
    assert detect_kind(tmp_path) is ARC and detect_kind(tmp_path, vocab_size=6, seq_len=9) is ARC
    with pytest.raises(ValueError, match="needs a dataset root"):
        detect_kind()
