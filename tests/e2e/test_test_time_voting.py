"""Test-time voting end to end: a tiny 4x4 Sudoku trained for a few steps, evaluated with eval_augmentations=4."""

from __future__ import annotations

import pytest

from smoltrain.data.sudoku import build_sudoku_dataset
from smoltrain.families import load_config
from smoltrain.train.trainer import Trainer

TINY = ["arch=trm", "arch.L_layers=1", "arch.hidden_size=32", "arch.num_heads=2", "arch.H_cycles=2",
        "arch.L_cycles=1", "arch.halt_max_steps=4", "global_batch_size=16", "lr=1e-3", "lr_warmup_steps=2",
        "log_every=10", "device=cpu", "num_threads=1", "max_steps=40", "eval_max_examples=32"]


@pytest.fixture(scope="module")
def sudoku4(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "sudoku4"
    build_sudoku_dataset(root, "generate", size=4, num_train=200, num_test=32, seed=0)
    return root


def test_eval_augmentations_reports_votes_and_halt_first(sudoku4, tmp_path):
    cfg = load_config(None, [*TINY, f"data_paths=[{sudoku4}]", f"run_dir={tmp_path}", "eval_augmentations=4"])
    metrics = Trainer(cfg).fit()["eval"]
    for key in ("exact_accuracy@1", "exact_accuracy@4", "halt_first/exact_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    assert 1.0 <= metrics["halt_first/mean_steps"] <= 4.0
    # View 0 is the puzzle itself: its score is the reference exact accuracy of the same run.
    assert metrics["exact_accuracy@1"] == pytest.approx(metrics["exact_accuracy"], abs=1e-9)
    assert metrics["count"] == 32


def test_eval_augmentations_off_adds_nothing(sudoku4, tmp_path):
    cfg = load_config(None, [*TINY, "max_steps=2", f"data_paths=[{sudoku4}]", f"run_dir={tmp_path}"])
    metrics = Trainer(cfg).fit()["eval"]
    assert "exact_accuracy" in metrics and not any("@" in k or k.startswith("halt_first") for k in metrics)


def test_maze_votes_over_dihedral_views_with_valid_paths(tmp_path):
    root = tmp_path / "maze"
    from smoltrain.data.maze import build_maze_dataset

    build_maze_dataset(root, "generate", size=6, num_train=64, num_test=16, seed=0)
    cfg = load_config(None, [*TINY, "max_steps=4", f"data_paths=[{root}]", f"run_dir={tmp_path / 'run'}",
                             "eval_augmentations=8"])
    metrics = Trainer(cfg).fit()["eval"]
    for key in ("valid_optimal_path@1", "valid_optimal_path@8", "halt_first/valid_optimal_path",
                "exact_accuracy@8"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["valid_optimal_path@1"] == pytest.approx(metrics["valid_optimal_path"], abs=1e-9)


def test_too_many_maze_views_stop_before_training(tmp_path):
    from smoltrain.data.maze import build_maze_dataset
    from smoltrain.errors import ConfigError

    root = tmp_path / "maze"
    build_maze_dataset(root, "generate", size=6, num_train=16, num_test=4, seed=0)
    cfg = load_config(None, [*TINY, f"data_paths=[{root}]", f"run_dir={tmp_path / 'run'}", "eval_augmentations=9"])
    with pytest.raises(ConfigError, match="at most 8"):
        Trainer(cfg).fit()
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_demo_reports_the_vote_and_the_reference_time(tmp_path):
    import re

    from tests.helpers import run_python

    # A few seconds of training: the numbers mean nothing, the lines and their sources do.
    proc = run_python(["-m", "smoltrain", "demo", "--minutes", "0.05", "--run-dir", str(tmp_path / "demo")],
                      timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = re.search(r"^3/3 Held-out exact accuracy: (\d+\.\d)% of 500 puzzles", proc.stdout, re.MULTILINE)
    voted = re.search(r"^    voting over 8 views of each puzzle .*: (\d+\.\d)%$", proc.stdout, re.MULTILINE)
    assert one and voted and 0.0 <= float(voted.group(1)) <= 100.0
    assert re.search(r"reference TRM code, run on these puzzles by bench/time_to_accuracy.py, needed \d+ s of "
                     r"training for 97%; this recipe with the vote \d+ s\)", proc.stdout)
