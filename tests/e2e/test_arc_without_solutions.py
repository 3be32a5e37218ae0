"""ARC test sets without solutions (Kaggle's hidden test set): `smoltrain data arc` builds them with the
reference's dummy outputs, and evaluation writes a full submission.json but claims no accuracy or pass@k."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from smoltrain.apps.solve import solve_puzzle
from smoltrain.data.arc import COLOUR_OFFSET, EOS_ID
from smoltrain.families import load_config
from smoltrain.train.trainer import Trainer
from tests.e2e.test_arc_several_datasets import TINY_ARC
from tests.e2e.test_arc_training import mirror_tasks
from tests.helpers import run_python
from tests.unit.test_arc_data import write_kaggle

pytestmark = pytest.mark.usefixtures("single_thread")


def hidden_test_source(root: Path) -> tuple[str, dict[str, int]]:
    """Kaggle files: `training` with solutions, `test` as the challenges file alone; returns the prefix and the
    number of test inputs of each test task (one task has two)."""
    tasks = mirror_tasks()["training"]
    ids = sorted(t for t in tasks if t.startswith("m"))
    test = {t: tasks[t] for t in ids[4:]}
    test[ids[4]] = {**test[ids[4]], "test": test[ids[4]]["test"] + tasks["zz000000"]["test"]}
    prefix = write_kaggle(root, {"training": {t: tasks[t] for t in ids[:4]}, "test": test})
    (root / "arc-agi_test_solutions.json").unlink()
    return prefix, {t: len(v["test"]) for t, v in test.items()}


def test_build_train_and_submit_without_solutions(tmp_path: Path) -> None:
    prefix, test_inputs = hidden_test_source(tmp_path / "src")
    data = tmp_path / "data"
    proc = run_python(["-m", "smoltrain", "data", "arc", "--input-file-prefix", prefix, "--subsets", "training",
                       "test", "--test-set-name", "test", "--canvas-size", "8", "--num-aug", "2",
                       "--output-dir", str(data)])
    assert proc.returncode == 0, proc.stderr
    assert "no solutions for 3 test inputs of `test`" in proc.stdout
    info = json.loads((data / "build_info.json").read_text())
    assert info["test_solutions"] is False and info["counts"]["test_pairs_without_solution"] == 3
    puzzles = json.loads((data / "test_puzzles.json").read_text())
    assert {t: len(p["test"]) for t, p in puzzles.items()} == test_inputs
    assert all("output" not in pair for p in puzzles.values() for pair in p["test"])  # no dummy to score against
    labels = np.load(data / "test" / "all__labels.npy")
    # The reference's dummy output [[0]] on the canvas: colour 0 at the corner, EOS right of and below it.
    assert (labels[:, 0] == COLOUR_OFFSET).all() and (labels[:, 1] == EOS_ID).all() and (labels[:, 8] == EOS_ID).all()

    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="nothing to score|no accuracy is reported") as caught:
        summary = Trainer(load_config(None, [*TINY_ARC, f"data_paths=[{data}]", f"run_dir={run}"])).fit()["eval"]
    assert any("no accuracy is reported" in str(w.message) for w in caught)
    # Nothing measured against the dummies: no pass@k, no accuracy, only the count of unscored tasks.
    assert summary == {"ARC/unscored_tasks": float(len(test_inputs))}
    report = run / "eval" / "step_00000003"
    submission = json.loads((report / "submission.json").read_text())
    assert {t: len(attempts) for t, attempts in submission.items()} == test_inputs
    for attempts in submission.values():
        for attempt in attempts:
            assert set(attempt) == {"attempt_1", "attempt_2"}
            for grid in attempt.values():
                assert grid and all(len(row) == len(grid[0]) and all(0 <= c <= 9 for c in row) for row in grid)
    scores = json.loads((report / "arc_scores.json").read_text())
    assert scores["scored_tasks"] == 0 and sorted(scores["unscored_tasks"]) == sorted(test_inputs)

    # `smoltrain eval` says so too, and prints no score.
    proc = run_python(["-m", "smoltrain", "eval", str(run), "--device", "cpu"])
    assert proc.returncode == 0, proc.stderr
    assert "nothing to score" in proc.stderr and "pass@" not in proc.stdout and "accuracy" not in proc.stdout

    # `solve --example` shows the input and the answer, but neither the dummy as a target nor a verdict on it.
    solution = solve_puzzle(run, example=0, device="cpu")
    assert solution.trace.target is None and solution.verdict.correct is None
    assert "target:" not in solution.report() and solution.report().endswith("no target to compare with")


def test_other_subsets_still_need_their_solutions(tmp_path: Path) -> None:
    prefix, _ = hidden_test_source(tmp_path / "src")
    proc = run_python(["-m", "smoltrain", "data", "arc", "--input-file-prefix", prefix, "--subsets", "training",
                       "test", "--test-set-name", "training", "--output-dir", str(tmp_path / "out")])
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "arc-agi_test_solutions.json not found" in proc.stderr and "--test-set-name" in proc.stderr


def test_real_evaluation_challenges_without_solutions(shared_dir: Path, tmp_path: Path) -> None:
    source = shared_dir / "data" / "arc"
    challenges = source / "arc-agi_evaluation_challenges.json"
    if not challenges.is_file():
        pytest.skip(f"{challenges} not found (the ARC-AGI-1 files of the smoltrain workspace)")
    (tmp_path / "arc-agi_evaluation_challenges.json").write_text(challenges.read_text())  # the solutions stay out
    wanted = sorted(json.loads(challenges.read_text()))[:2]
    proc = run_python(["-m", "smoltrain", "data", "arc", "--input-file-prefix", str(tmp_path / "arc-agi"),
                       "--subsets", "evaluation", "--test-set-name", "evaluation", "--tasks", *wanted,
                       "--num-aug", "1", "--output-dir", str(tmp_path / "data")])
    assert proc.returncode == 0, proc.stderr
    puzzles = json.loads((tmp_path / "data" / "test_puzzles.json").read_text())
    originals = json.loads(challenges.read_text())
    assert sorted(puzzles) == wanted
    for task in wanted:
        assert [p["input"] for p in puzzles[task]["test"]] == [p["input"] for p in originals[task]["test"]]
        assert all("output" not in p for p in puzzles[task]["test"])
    assert json.loads((tmp_path / "data" / "build_info.json").read_text())["test_solutions"] is False
