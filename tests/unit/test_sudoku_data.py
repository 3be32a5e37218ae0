"""Sudoku solver, offline generator and dataset builder (CSV, Hugging Face and generate sources)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from smoltrain.data.puzzles import PuzzleDataset, load_metadata
from smoltrain.data.sudoku import (
    build_sudoku_dataset,
    generate_sudoku_puzzles,
    rate_sudoku,
    solve_sudoku,
)
from smoltrain.errors import DataError

SHAPES = {4: (2, 2), 6: (2, 3), 9: (3, 3)}


AI_ESCARGOT = "1....7.9..3..2...8..96..5....53..9...1..8...26....4...3......1..4......7..7...3.."


def board(text: str) -> np.ndarray:
    return np.array([0 if ch in ".0" else int(ch) for ch in text], dtype=np.int8)


def text_of(digits: np.ndarray, blank: str = ".") -> str:
    return "".join(blank if d == 0 else str(d) for d in digits)


def count_solutions_py(puzzle: list[int], n: int, limit: int = 2) -> int:
    """Independent plain backtracking counter (no propagation beyond the row/col/box check)."""
    box_rows, box_cols = SHAPES[n]
    grid = list(puzzle)

    def allowed(cell: int) -> list[int]:
        r, c = divmod(cell, n)
        r0, c0 = r - r % box_rows, c - c % box_cols
        used = {grid[r * n + j] for j in range(n)} | {grid[i * n + c] for i in range(n)}
        used |= {grid[i * n + j] for i in range(r0, r0 + box_rows) for j in range(c0, c0 + box_cols)}
        return [d for d in range(1, n + 1) if d not in used]

    def count() -> int:
        blanks = [i for i, v in enumerate(grid) if v == 0]
        if not blanks:
            return 1
        cell = min(blanks, key=lambda i: len(allowed(i)))
        total = 0
        for d in allowed(cell):
            grid[cell] = d
            total += count()
            grid[cell] = 0
            if total >= limit:
                break
        return min(total, limit)

    # Reject givens that already clash.
    for i, v in enumerate(puzzle):
        if v:
            grid[i] = 0
            ok = v in allowed(i)
            grid[i] = v
            if not ok:
                return 0
    return count()


def is_valid_solution(grid: np.ndarray, n: int) -> bool:
    box_rows, box_cols = SHAPES[n]
    g = np.asarray(grid).reshape(n, n)
    units = [g[i] for i in range(n)] + [g[:, j] for j in range(n)]
    units += [g[r : r + box_rows, c : c + box_cols] for r in range(0, n, box_rows) for c in range(0, n, box_cols)]
    return all(sorted(u.reshape(-1).tolist()) == list(range(1, n + 1)) for u in units)


def write_csv(path: Path, rows: list[tuple[str, str, str, str]], header: str = "source,question,answer,rating") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "".join(",".join(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def puzzles9() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return generate_sudoku_puzzles(12, 9, seed=1)


def csv_rows(questions: np.ndarray, answers: np.ndarray, ratings: np.ndarray, blank: str = "."):
    return [
        ("gen", text_of(q, blank), text_of(a), str(int(r))) for q, a, r in zip(questions, answers, ratings, strict=True)
    ]


MALFORMED = {
    "short question": (lambda q, a: ("x", q[:-1], a, "0"), "question has 80 characters"),
    "bad character": (lambda q, a: ("x", "x" + q[1:], a, "0"), "bad character 'x' at position 1"),
    "answer disagrees": (lambda q, a: ("x", q, a[:-2] + a[-1] + a[-2], "0"), "answer|not a valid Sudoku"),
    "missing field": (lambda q, a: ("x", q, a), "expected 4 fields"),
    "invalid answer": (lambda q, a: ("x", "." * 81, "1" * 81, "0"), "not a valid Sudoku solution"),
    "bad rating": (lambda q, a: ("x", q, a, "hard"), "rating 'hard' is not an integer"),
}


def test_solver_known_puzzles() -> None:
    count, guesses, sol = solve_sudoku(board(AI_ESCARGOT), 9)
    assert count == 1 and is_valid_solution(sol, 9)
    assert guesses == 65  # our rating scale (data.md section 2.2: singles + locked candidates)
    assert rate_sudoku(board(AI_ESCARGOT), 9) == 65
    clash = board("11" + "." * 79)
    assert solve_sudoku(clash, 9)[0] == 0
    assert solve_sudoku(np.zeros(16, np.int8), 4, limit=2)[0] == 2
    assert solve_sudoku(np.zeros(16, np.int8), 4, limit=500)[0] == 288  # all 4x4 grids


@pytest.mark.parametrize("n", [4, 6])
def test_solver_agrees_with_plain_backtracking(n: int) -> None:
    rng = np.random.default_rng(n)
    questions, _, _ = generate_sudoku_puzzles(5, n, seed=2)
    for q in questions:
        # Knock out further clues to get multi-solution puzzles too.
        for extra in range(4):
            p = q.copy()
            p[rng.choice(np.flatnonzero(p), size=min(extra, int((p > 0).sum())), replace=False)] = 0
            assert solve_sudoku(p, n, limit=3)[0] == count_solutions_py(p.tolist(), n, limit=3)


@pytest.mark.parametrize("n", [4, 6, 9])
def test_generated_puzzles_are_valid_unique_and_minimal(n: int) -> None:
    questions, answers, ratings = generate_sudoku_puzzles(8, n, seed=4)
    assert questions.shape == (8, n * n) and questions.dtype == np.uint8
    assert len({q.tobytes() for q in questions}) == 8
    for q, a, r in zip(questions, answers, ratings, strict=True):
        assert is_valid_solution(a, n)
        assert ((q == 0) | (q == a)).all()
        count, guesses, sol = solve_sudoku(q, n)
        assert count == 1 and (sol == a).all() and guesses == r
        if n < 9:  # independent check, affordable on small boards
            assert count_solutions_py(q.tolist(), n) == 1
            for i in np.flatnonzero(q)[:6]:  # minimal: every clue is needed
                p = q.copy()
                p[i] = 0
                assert count_solutions_py(p.tolist(), n) == 2


def test_generator_is_deterministic() -> None:
    a = generate_sudoku_puzzles(20, 6, seed=9)
    b = generate_sudoku_puzzles(20, 6, seed=9, workers=1)
    c = generate_sudoku_puzzles(20, 6, seed=10)
    assert all((x == y).all() for x, y in zip(a, b, strict=True))
    assert not (a[0] == c[0]).all()


def test_generator_target_clues_and_min_difficulty() -> None:
    q, _, _ = generate_sudoku_puzzles(5, 9, seed=0, target_clues=40)
    assert ((q > 0).sum(1) >= 40).all() and ((q > 0).sum(1) <= 41).all()
    q, a, r = generate_sudoku_puzzles(4, 9, seed=0, min_difficulty=6)
    assert (r >= 6).all()
    assert [rate_sudoku(x, 9) for x in q] == r.tolist()
    with pytest.raises(DataError, match="lower --min-difficulty"):
        generate_sudoku_puzzles(3, 4, seed=0, min_difficulty=1, harden_steps=0)


def test_climb_yields_distinct_hard_neighbours_with_its_solution() -> None:
    kwargs = dict(min_difficulty=8, harden_steps=200, per_climb=4)
    q, a, r = generate_sudoku_puzzles(24, 9, seed=5, **kwargs)
    assert (r >= 8).all() and [rate_sudoku(x, 9) for x in q] == r.tolist()
    assert len({row.tobytes() for row in q}) == 24
    for question, answer in zip(q, a, strict=True):
        count, _, solution = solve_sudoku(question, 9)
        assert count == 1 and (solution == answer).all()
    # Puzzles of one climb share its solution grid; their givens differ in at least 4 positions.
    grids: dict[bytes, list[np.ndarray]] = {}
    for question, answer in zip(q, a, strict=True):
        grids.setdefault(answer.tobytes(), []).append(question > 0)
    assert max(len(g) for g in grids.values()) > 1 and all(len(g) <= 4 for g in grids.values())
    for given_sets in grids.values():
        for i, first in enumerate(given_sets):
            for second in given_sets[i + 1 :]:
                assert (first != second).sum() >= 4
    # Still a function of the seed alone, however many threads.
    again = generate_sudoku_puzzles(24, 9, seed=5, workers=1, **kwargs)
    assert all((x == y).all() for x, y in zip((q, a, r), again, strict=True))
    with pytest.raises(DataError, match=r"per_climb \(--per-climb\) must be >= 1"):
        generate_sudoku_puzzles(2, 9, seed=5, per_climb=0)


def test_build_generate_disjoint_and_reference_layout(tmp_path: Path) -> None:
    out = tmp_path / "s4"
    info = build_sudoku_dataset(out, "generate", size=4, num_train=150, num_test=60, num_aug=8, seed=3)
    meta = load_metadata(out, "train")
    assert (meta.vocab_size, meta.seq_len, meta.num_puzzle_identifiers) == (6, 16, 1)
    assert meta.total_groups == 150 and meta.mean_puzzle_examples == 1
    train_inputs = np.load(out / "train" / "all__inputs.npy")
    test_inputs = np.load(out / "test" / "all__inputs.npy")
    assert train_inputs.dtype == np.uint8 and train_inputs.min() >= 1 and train_inputs.max() <= 5
    # No test puzzle appears verbatim among the train rows, augmentations included (4x4 is tiny).
    assert not {r.tobytes() for r in test_inputs} & {r.tobytes() for r in train_inputs}
    assert info["train_test_overlap"] == 0
    labels = np.load(out / "train" / "all__labels.npy")
    assert ((train_inputs == 1) | (train_inputs == labels)).all() and (labels >= 2).all()
    groups = np.load(out / "train" / "all__group_indices.npy")
    assert groups[-1] == train_inputs.shape[0] == info["counts"]["train_rows"]
    assert json.loads((out / "identifiers.json").read_text()) == ["<blank>"]
    build_info = json.loads((out / "build_info.json").read_text())
    assert build_info["counts"]["test_puzzles"] == 60 and build_info["seed"] == 3
    assert (out / "generated" / "train.csv").is_file()
    # The loader reads it back and batches work.
    ds = PuzzleDataset(out, "train", global_batch_size=32, seed=0)
    batch = next(ds.iter_train())
    assert batch["inputs"].shape == (32, 16)
    # Same seed, same dataset.
    build_sudoku_dataset(tmp_path / "again", "generate", size=4, num_train=150, num_test=60, num_aug=8, seed=3)
    again = np.load(tmp_path / "again" / "train" / "all__inputs.npy")
    assert (again == train_inputs).all()


def test_build_generate_min_difficulty(tmp_path: Path) -> None:
    info = build_sudoku_dataset(tmp_path / "d", "generate", size=9, num_train=4, num_test=2, min_difficulty=5)
    assert info["rating"]["train"]["mean"] >= 5
    assert info["per_climb"] == 8  # the default while climbing
    inputs = np.load(tmp_path / "d" / "train" / "all__inputs.npy").astype(np.int8)
    assert all(rate_sudoku(np.where(row == 1, 0, row - 1), 9) >= 5 for row in inputs)


def test_build_from_csv_dir_with_both_blank_styles(tmp_path: Path, puzzles9) -> None:
    q, a, r = puzzles9
    src = tmp_path / "src"
    write_csv(src / "train.csv", csv_rows(q[:8], a[:8], r[:8], blank="."))
    write_csv(src / "test.csv", csv_rows(q[8:], a[8:], r[8:], blank="0"))
    out = tmp_path / "out"
    info = build_sudoku_dataset(out, f"csv:{src}", num_aug=2, seed=0)
    inputs = np.load(out / "train" / "all__inputs.npy")
    assert inputs.shape == (8 * 3, 81)
    np.testing.assert_array_equal(inputs[0], q[0] + 1)  # blank -> 1, digit d -> d + 1
    np.testing.assert_array_equal(np.load(out / "train" / "all__labels.npy")[0], a[0] + 1)
    np.testing.assert_array_equal(np.load(out / "test" / "all__inputs.npy"), q[8:] + 1)
    assert info["counts"] == {"train_puzzles": 8, "train_rows": 24, "test_puzzles": 4}


def test_csv_subsample_is_seeded_and_recorded(tmp_path: Path, puzzles9) -> None:
    q, a, r = puzzles9
    src = tmp_path / "src"
    write_csv(src / "train.csv", csv_rows(q[:10], a[:10], r[:10]))
    write_csv(src / "test.csv", csv_rows(q[10:], a[10:], r[10:]))
    chosen = []
    for name in ("a", "b"):
        build_sudoku_dataset(tmp_path / name, f"csv:{src}", subsample_size=4, seed=5)
        record = json.loads((tmp_path / name / "subsample_indices.json").read_text())
        rows = record["train"]["rows"]
        inputs = np.load(tmp_path / name / "train" / "all__inputs.npy")
        np.testing.assert_array_equal(inputs, q[rows] + 1)
        chosen.append(rows)
        assert record["test"]["rows"] is None  # test not subsampled: all rows in file order
    assert chosen[0] == chosen[1] and len(set(chosen[0])) == 4


def test_csv_min_difficulty_filter(tmp_path: Path, puzzles9) -> None:
    q, a, _ = puzzles9
    ratings = np.arange(12)
    src = tmp_path / "src"
    write_csv(src / "train.csv", csv_rows(q[:8], a[:8], ratings[:8]))
    write_csv(src / "test.csv", csv_rows(q[8:], a[8:], ratings[8:]))
    info = build_sudoku_dataset(tmp_path / "out", f"csv:{src}", min_difficulty=5)
    assert info["counts"]["train_puzzles"] == 3  # ratings 5, 6, 7
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "train" / "all__inputs.npy"), q[5:8] + 1)


def test_csv_single_file_is_split(tmp_path: Path, puzzles9) -> None:
    q, a, r = puzzles9
    path = write_csv(tmp_path / "all.csv", csv_rows(q, a, r))
    info = build_sudoku_dataset(tmp_path / "out", f"csv:{path}", num_test=3, seed=1)
    assert info["counts"]["train_puzzles"] == 9 and info["counts"]["test_puzzles"] == 3
    record = json.loads((tmp_path / "out" / "subsample_indices.json").read_text())
    assert sorted(record["train"]["rows"] + record["test"]["rows"]) == list(range(12))


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_csv_names_file_and_line(tmp_path: Path, puzzles9, case: str) -> None:
    q, a, r = puzzles9
    rows = csv_rows(q[:6], a[:6], r[:6])
    make_bad, message = MALFORMED[case]
    rows.insert(3, make_bad(rows[3][1], rows[3][2]))  # header is line 1, so this is line 5
    src = tmp_path / "src"
    write_csv(src / "train.csv", rows)  # type: ignore[arg-type]
    write_csv(src / "test.csv", csv_rows(q[6:], a[6:], r[6:]))
    out = tmp_path / "out"
    with pytest.raises(DataError, match=rf"train\.csv, line 5: .*({message})"):
        build_sudoku_dataset(out, f"csv:{src}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # nothing partial left


def test_csv_header_and_path_errors(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_csv(src / "train.csv", [], header="source,puzzle,solution,rating")
    write_csv(src / "test.csv", [])
    with pytest.raises(DataError, match=r"train\.csv, line 1: .*no question / answer column"):
        build_sudoku_dataset(tmp_path / "out", f"csv:{src}")
    with pytest.raises(DataError, match="no CSV file or directory"):
        build_sudoku_dataset(tmp_path / "out", f"csv:{tmp_path / 'missing'}")
    (src / "test.csv").unlink()
    with pytest.raises(DataError, match="test.csv"):
        build_sudoku_dataset(tmp_path / "out", f"csv:{src}")
    with pytest.raises(DataError, match="unknown Sudoku source"):
        build_sudoku_dataset(tmp_path / "out", "kaggle")


def test_hf_source_downloads_with_reference_arguments(tmp_path: Path, puzzles9, monkeypatch) -> None:
    q, a, r = puzzles9
    files = {
        "train.csv": write_csv(tmp_path / "hf" / "train.csv", csv_rows(q[:8], a[:8], r[:8])),
        "test.csv": write_csv(tmp_path / "hf" / "test.csv", csv_rows(q[8:], a[8:], r[8:])),
    }
    calls = []

    def fake_download(repo_id: str, filename: str, repo_type: str | None = None) -> str:
        calls.append((repo_id, filename, repo_type))
        return str(files[filename])

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(hf_hub_download=fake_download))
    info = build_sudoku_dataset(tmp_path / "out", "hf", subsample_size=5, num_aug=1, seed=2)
    assert calls == [
        ("sapientinc/sudoku-extreme", "train.csv", "dataset"),
        ("sapientinc/sudoku-extreme", "test.csv", "dataset"),
    ]
    assert info["counts"] == {"train_puzzles": 5, "train_rows": 10, "test_puzzles": 4}

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed
    with pytest.raises(DataError, match=r"smoltrain\[hf\]"):
        build_sudoku_dataset(tmp_path / "out2", "hf")
    assert not (tmp_path / "out2").exists()
