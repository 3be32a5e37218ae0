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
