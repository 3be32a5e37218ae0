"""`smoltrain solve`'s library: parsing, checking and printing boards, and one puzzle through a run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import smoltrain
from smoltrain.apps.solve import PuzzleSolution, solve_puzzle
from smoltrain.data.sudoku import KIND as SUDOKU
from smoltrain.data.sudoku import format_grid, is_valid_solution, parse_sudoku, solution_problems
from smoltrain.errors import DataError, SmoltrainError
from smoltrain.interop.trm_import import import_reference_checkpoint
from smoltrain.models.trm import act_inference
from tests.unit.test_trm_import import MLP_T, write_reference

SOLVED_9 = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"


PUZZLE_9 = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"


def pattern(n: int, box_rows: int, box_cols: int) -> np.ndarray:
    """A solved n x n grid for boxes of box_rows x box_cols (shifted rows)."""
    r, c = np.indices((n, n))
    return ((box_cols * (r % box_rows) + r // box_rows + c) % n + 1).reshape(-1)


@pytest.fixture(scope="module")
def sudoku_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An imported 4x4-Sudoku-shaped run (seq_len 16, vocab 6) with random weights."""
    root = tmp_path_factory.mktemp("solve")
    _, path = write_reference(root / "ref", MLP_T, seq_len=16, vocab_size=6)
    return import_reference_checkpoint(path, root / "run")


def test_parse_variants_agree() -> None:
    flat = parse_sudoku(PUZZLE_9)
    assert flat.shape == (81,) and flat[:4].tolist() == [5, 3, 0, 0]
    assert np.array_equal(parse_sudoku(PUZZLE_9.replace(".", "0")), flat)
    drawn = "\n".join(" ".join(PUZZLE_9[i:i + 9]) for i in range(0, 81, 9))
    assert np.array_equal(parse_sudoku(drawn), flat)
    assert np.array_equal(parse_sudoku(format_grid(flat, 9)), flat)  # a printed grid pastes back
    assert parse_sudoku("1234 3412 2143 4321").shape == (16,)
    assert parse_sudoku("." * 36).shape == (36,)


@pytest.mark.parametrize(("text", "message"), [
    (PUZZLE_9[:-1], r"the puzzle has 80 cells; a Sudoku needs 81 \(9x9\), 36 \(6x6\) or 16 \(4x4\)"),
    ("12x4" + "." * 12, r"the puzzle has 'x' at character 3; write digits, '\.' or '0' for blanks"),
    ("5" + "." * 15, r"row 1, column 1 holds 5, but a 4x4 Sudoku uses the digits 1\.\.4"),
])
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        parse_sudoku(text)


def test_validity() -> None:
    solved = parse_sudoku(SOLVED_9)
    puzzle = parse_sudoku(PUZZLE_9)
    assert is_valid_solution(puzzle, solved, 9)
    swapped = solved.copy()
    swapped[[0, 1]] = swapped[[1, 0]]  # same row: columns and maybe boxes now repeat
    assert not is_valid_solution(puzzle, swapped, 9)
    assert any("changed" in p for p in solution_problems(puzzle, swapped, 9))
    assert any(p.startswith("column 1 repeats") for p in solution_problems(puzzle, swapped, 9))
    blank = solved.copy()
    blank[40] = 0
    assert solution_problems(puzzle, blank, 9)[0] == "1 cell without a digit"
    # 6x6 boxes are 2 rows x 3 columns: a grid valid for 3x2 boxes is not a solution.
    assert is_valid_solution(np.zeros(36, dtype=int), pattern(6, 2, 3), 6)
    assert not is_valid_solution(np.zeros(36, dtype=int), pattern(6, 3, 2), 6)
    assert is_valid_solution(np.zeros(16, dtype=int), pattern(4, 2, 2), 4)


def test_format_grid() -> None:
    grid = np.array([1, 2, 3, 4, 3, 4, 1, 2, 2, 1, 4, 3, 4, 3, 0, 7])
    assert format_grid(grid, 4) == "1 2 | 3 4\n3 4 | 1 2\n----+----\n2 1 | 4 3\n4 3 | . ?"
    marked = format_grid(grid, 4, changed_mask=np.arange(16) == 1)
    assert marked.splitlines()[0] == " 1 [2]| 3  4"
    assert marked.splitlines()[2] == "------+------"
    six = format_grid(pattern(6, 2, 3), 6).splitlines()
    assert len(six) == 8 and six[2] == six[5] == "------+------" and six[0] == "1 2 3 | 4 5 6"
    assert format_grid(grid, 4).isascii() and marked.isascii()


def test_solve_typed_sudoku(sudoku_run: Path) -> None:
    puzzle = "1.3. ..1. 2... ...1"
    result = solve_puzzle(sudoku_run, puzzle_text=puzzle, device="cpu")
    assert isinstance(result, PuzzleSolution) and result.kind.name == "sudoku"
    givens = SUDOKU.decode(result.trace.inputs)
    assert np.array_equal(givens, parse_sudoku(puzzle))
    assert len(result.trace.steps) == 2  # halt_max_steps
    assert all(step.shape == (16,) for step in result.trace.steps) and result.answer is result.trace.steps[-1]
    answer = SUDOKU.decode(result.answer)
    assert answer.min() >= 0 and answer.max() <= 4
    assert result.correct == is_valid_solution(givens, answer, 4) == result.verdict.line.startswith("valid")

    # Same answer from an already loaded run, and it is the model's argmax.
    run = smoltrain.load(sudoku_run, device="cpu")
    again = solve_puzzle(run, puzzle_text=puzzle)
    assert np.array_equal(again.answer, result.answer)
    batch = {"inputs": torch.from_numpy(givens + 1).int()[None], "puzzle_identifiers": torch.zeros(1).int()}
    tokens = act_inference(run.model, batch)[-1][0].argmax(-1).numpy()
    assert np.array_equal(tokens, result.answer)
    assert np.array_equal(np.where((tokens >= 2) & (tokens <= 5), tokens - 1, 0), answer)


def test_solve_errors(sudoku_run: Path, tmp_path: Path) -> None:
    with pytest.raises(SmoltrainError, match=r"this run was trained on 4x4 puzzles \(16 cells\); got 81 cells"):
        solve_puzzle(sudoku_run, puzzle_text=PUZZLE_9, device="cpu")
    with pytest.raises(DataError, match=r"the puzzle breaks the rules \(row 1 repeats 1.*\); check the givens"):
        solve_puzzle(sudoku_run, puzzle_text="11.. .... .... ....", device="cpu")
    _, path = write_reference(tmp_path / "ref", MLP_T, seq_len=16, vocab_size=5)  # not a Sudoku vocabulary
    other = import_reference_checkpoint(path, tmp_path / "run")
    with pytest.raises(SmoltrainError, match=r"vocabulary has 5 tokens but 4x4 Sudoku uses 6"):
        solve_puzzle(other, puzzle_text="." * 16, device="cpu")


def test_solve_cli_prints_and_renders(sudoku_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    from smoltrain.apps.render import draw_trace
    from smoltrain.cli import main

    puzzle = "1.3. ..1. 2... ...1"
    out_dir = tmp_path / "pictures"
    assert main(["solve", str(sudoku_run), "--puzzle", puzzle, "--device", "cpu", "--render", str(out_dir)]) == 0
    out = capsys.readouterr().out
    solution = solve_puzzle(sudoku_run, puzzle_text=puzzle, device="cpu")
    givens, answer = SUDOKU.decode(solution.trace.inputs), SUDOKU.decode(solution.answer)
    assert out.startswith("puzzle:\n" + format_grid(givens, 4) + "\n\nanswer after 2 ACT steps ([d] = filled "
                          "in by the model):\n" + format_grid(answer, 4, changed_mask=answer != givens) + "\n")
    assert ("valid solution" if solution.correct else "not a valid solution: ") in out

    # The picture: input | step 1 | step 2 (a typed puzzle has no target), one frame per step, and the page.
    drawn = draw_trace(solution.trace)
    assert [p.caption for p in drawn.panels] == ["input", "step 1", "step 2"]
    image = Image.open(out_dir / "puzzle.png")
    assert image.size == drawn.image.size
    assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(drawn.image))
    frames = sorted(p.name for p in (out_dir / "frames").glob("*.png"))
    assert frames == ["puzzle-step-01.png", "puzzle-step-02.png"]
    page = (out_dir / "index.html").read_text()
    assert '"puzzle.png"' in page and all(f'"frames/{f}"' in page for f in frames)

    # Cells the model filled are drawn in blue in the last panel, the givens in black.
    left, top, _, _ = drawn.panels[-1].box
    panel = np.asarray(drawn.image)[top:top + 4 * 24, left:left + 4 * 24]
    for cell in range(16):
        r, c = divmod(cell, 4)
        if 1 <= answer[cell] <= 4:
            pixels = panel[r * 24 + 3:r * 24 + 21, c * 24 + 3:c * 24 + 21].reshape(-1, 3).astype(int)
            darkest = pixels[pixels.sum(axis=1).argmin()]
            bluish = darkest[2] > darkest[0] + 60
            assert bluish == (givens[cell] == 0), (cell, darkest)


def test_solve_cli_errors_are_one_line(sudoku_run: Path, capsys: pytest.CaptureFixture) -> None:
    from smoltrain.cli import main

    for args, message in ((["--puzzle", "12x4" + "." * 12], "the puzzle has 'x' at character 3"),
                          (["--example", "0"], "this run has no dataset"),
                          (["--puzzle-file", "/nonexistent/p.txt"], "cannot read the puzzle file /nonexistent/p.txt")):
        assert main(["solve", str(sudoku_run), *args, "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    with pytest.raises(SystemExit) as exit_info:  # a puzzle and an example at once: argparse says no
        main(["solve", str(sudoku_run), "--puzzle", "." * 16, "--example", "0"])
    assert exit_info.value.code == 2


def test_render_examples_of_a_sudoku_dataset(sudoku_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`eval --render`'s library on a hand-made 4x4 dataset: traces with targets, verdicts, the page."""
    import json

    from smoltrain.apps.solve import render_examples, trace_test_examples
    from smoltrain.data.puzzles import PuzzleDatasetMetadata, write_identifiers, write_split

    solved = pattern(4, 2, 2) + 1  # tokens: digit + 1
    puzzles = np.stack([np.where(np.arange(16) % (k + 2) == 0, 1, solved) for k in range(3)])
    root = tmp_path / "sudoku4"
    for split in ("train", "test"):
        meta = PuzzleDatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=6, seq_len=16,
                                     num_puzzle_identifiers=1, total_groups=3, mean_puzzle_examples=1.0,
                                     total_puzzles=3, sets=["all"])
        write_split(root, split, puzzles, np.stack([solved] * 3), np.zeros(3, dtype=np.int32), np.arange(4),
                    np.arange(4), meta)
    write_identifiers(root, ["<blank>"])
    (root / "build_info.json").write_text(json.dumps({"builder": "sudoku"}))

    run = smoltrain.load(sudoku_run, device="cpu", overrides=[f"data_paths=[{root}]"])
    traces, kept = trace_test_examples(run, [2, 0])
    assert kept == [2, 0] and [t.title for t in traces] == ["test example 2", "test example 0"]
    assert np.array_equal(traces[0].inputs, puzzles[2]) and np.array_equal(traces[0].target, solved)
    # Same predictions as solving the typed puzzle; the verdict also compares with the dataset's answer.
    typed = solve_puzzle(run, puzzle_text="".join(str(d - 1) if d > 1 else "." for d in puzzles[2]))
    assert np.array_equal(traces[0].steps[-1], typed.answer)
    solution = solve_puzzle(run, example=2)
    assert solution.correct == typed.correct
    assert solution.verdict.line.endswith("the dataset's answer)")
    assert ("equals" in solution.verdict.line) == np.array_equal(traces[0].steps[-1], solved)

    page = render_examples(run, tmp_path / "pictures", count=5)  # only 3 test examples: all of them
    assert sorted(p.name for p in page.parent.glob("*.png")) == ["example-0000.png", "example-0001.png",
                                                                "example-0002.png"]
    assert len(list((page.parent / "frames").glob("*.png"))) == 3 * 2  # halt_max_steps frames each
    with pytest.raises(DataError, match=r"--example 3 is out of range: the test split of .* has 3 examples \(0\.\.2\)"):
        solve_puzzle(run, example=3)
