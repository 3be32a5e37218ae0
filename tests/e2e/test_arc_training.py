"""The `trm-arc-cpu` path end to end: build (CLI, --tasks, small canvas), train, vote over augmentations,
submit; on a synthetic task set always, and on the recipe's real ARC-AGI-1 tasks where the files exist."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from smoltrain.families import load_config
from smoltrain.train.trainer import Trainer
from tests.helpers import run_python
from tests.unit.test_arc_data import write_kaggle

RECIPE_TASKS = ["3c9b0459", "6150a2bd", "67a3c6ac", "68b16354", "74dd1130", "9dfd6313", "c8f0f002", "d511f180",
                "0d3d703e", "b1948b0a"]  # the task list in recipes/trm-arc-cpu.yaml


def mirror_tasks(count: int = 6) -> dict[str, dict[str, dict]]:
    """`count` small tasks of one rule (mirror left-right), plus one task that --tasks leaves out."""
    rng = np.random.default_rng(0)

    def pair() -> dict:
        h, w = (int(v) for v in rng.integers(2, 6, size=2))
        grid = rng.integers(0, 10, size=(h, w))
        return {"input": grid.tolist(), "output": grid[:, ::-1].tolist()}

    tasks = {f"m{i:07d}": {"train": [pair() for _ in range(3)], "test": [pair()]} for i in range(count)}
    tasks["zz000000"] = {"train": [pair()], "test": [pair()]}
    return {"training": tasks}


def build(prefix: str, out: Path, tasks: list[str], num_aug: int) -> None:
    proc = run_python(["-m", "smoltrain", "data", "arc", "--input-file-prefix", prefix, "--subsets", "training",
                       "--test-set-name", "training", "--tasks", *tasks, "--canvas-size", "8",
                       "--num-aug", str(num_aug), "--output-dir", str(out)])
    assert proc.returncode == 0, proc.stderr
    assert "on a 8x8 canvas" in proc.stdout


def train_and_check_submission(data: Path, run: Path, tasks: list[str], steps: int) -> dict:
    cfg = load_config("trm-arc-cpu", [f"data_paths=[{data}]", f"run_dir={run}", f"max_steps={steps}",
                                      "global_batch_size=8", "log_every=10"])
    summary = Trainer(cfg).fit()["eval"]
    test_pairs = json.loads((data / "test_puzzles.json").read_text())
    assert sorted(test_pairs) == sorted(tasks)
    ks = (1, 2, 5, 10, 100, 1000)
    passes = [summary[f"ARC/pass@{k}"] for k in ks]
    assert passes == sorted(passes)  # more attempts never solve fewer tasks
    for value in passes:  # a share of whole tasks (a task's test inputs all count or it does not)
        assert abs(value * len(tasks) - round(value * len(tasks))) < 1e-9
    report = run / "eval" / f"step_{steps:08d}"
    submission = json.loads((report / "submission.json").read_text())
    assert sorted(submission) == sorted(tasks)
    for task_id, attempts in submission.items():
        assert len(attempts) == len(test_pairs[task_id]["test"])
        for attempt in attempts:
            assert set(attempt) == {"attempt_1", "attempt_2"}
            for grid in attempt.values():  # a list of equal-length rows of colours
                assert all(len(row) == len(grid[0]) and all(0 <= c <= 9 for c in row) for row in grid)
    scores = json.loads((report / "arc_scores.json").read_text())  # per-task scores next to the submission
    assert sorted(scores["tasks"]) == sorted(tasks)
    assert scores["metrics"] == {f"ARC/pass@{k}": summary[f"ARC/pass@{k}"] for k in ks}
    assert scores["unmatched_rows"] == 0 and scores["rows_voted"] == summary["count"]
    return summary


@pytest.mark.slow
def test_trm_arc_cpu_end_to_end_on_synthetic_tasks(tmp_path: Path) -> None:
    tasks = mirror_tasks()
    prefix = write_kaggle(tmp_path / "src", tasks)
    wanted = sorted(t for t in tasks["training"] if t.startswith("m"))
    build(prefix, tmp_path / "data", wanted, num_aug=4)
    summary = train_and_check_submission(tmp_path / "data", tmp_path / "run", wanted, steps=40)
    assert summary["count"] == json.loads((tmp_path / "data" / "build_info.json").read_text())["counts"]["test_rows"]


@pytest.mark.slow
def test_trm_arc_cpu_end_to_end_on_the_recipe_tasks(shared_dir: Path, tmp_path: Path) -> None:
    build(str(shared_dir / "data" / "arc" / "arc-agi"), tmp_path / "data", RECIPE_TASKS, num_aug=2)
    train_and_check_submission(tmp_path / "data", tmp_path / "run", RECIPE_TASKS, steps=20)


def test_unknown_task_ids_are_named(tmp_path: Path) -> None:
    prefix = write_kaggle(tmp_path / "src", mirror_tasks(2))
    proc = run_python(["-m", "smoltrain", "data", "arc", "--input-file-prefix", prefix, "--subsets", "training",
                       "--test-set-name", "training", "--tasks", "m0000000", "nope1234", "--output-dir",
                       str(tmp_path / "out")])
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "nope1234" in proc.stderr and "--subsets" in proc.stderr
    assert not (tmp_path / "out").exists()
