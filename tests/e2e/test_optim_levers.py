"""Issue 16's levers through the trainer: keep_best through pruning, evaluation subsets with a whole final
evaluation, and optimizer=muon resumed exactly after SIGKILL."""

from __future__ import annotations

import json

import pytest

from smoltrain.errors import ConfigError
from smoltrain.families import load_config
from smoltrain.runs import checkpoint as ckpt
from smoltrain.train.logging import read_metrics
from smoltrain.train.trainer import Trainer
from tests.e2e.test_lm_training import check_resume_after_sigkill_is_bitwise_exact
from tests.e2e.test_trm_training import TINY_TRM, sudoku4  # noqa: F401
from tests.helpers import run_python, toy_overrides
from tests.unit.test_lm_training import text_data  # noqa: F401


def test_keep_best_survives_pruning(tmp_path):
    cfg = load_config("toy", toy_overrides(tmp_path, max_steps=24, eval_every=4, checkpoint_every=4,
                                           keep_checkpoints=1, keep_best="+loss"))
    Trainer(cfg).fit()
    evals = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "eval"]
    # The highest loss (+loss) is an early one: loss falls, so its checkpoint is one pruning would have deleted.
    best = max(evals, key=lambda r: r["loss"])
    assert best["step"] < 20
    record = json.loads((tmp_path / "best.json").read_text())
    assert record["metric"] == "loss" and record["step"] == best["step"] and record["value"] == best["loss"]
    kept = {p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")}
    assert kept == {ckpt.step_dir_name(best["step"]), ckpt.step_dir_name(24)}  # the newest 1, and the best
    proc = run_python(["-m", "smoltrain", "eval", str(tmp_path), "--checkpoint", "best", "--device", "cpu"])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["loss"] == pytest.approx(best["loss"], rel=1e-5)  # the same eval, another process


def test_keep_best_with_an_unknown_metric_lists_the_metrics(tmp_path):
    cfg = load_config("toy", toy_overrides(tmp_path, max_steps=4, eval_every=2, keep_best="accuracyy"))
    with pytest.raises(ConfigError, match=r"no metric 'accuracyy'; it has accuracy, exact_accuracy, loss"):
        Trainer(cfg).fit()


def test_trm_evaluates_a_subset_and_the_whole_split_at_the_end(sudoku4, tmp_path):  # noqa: F811
    cfg = load_config(None, ["arch=trm", "arch.L_layers=1", *TINY_TRM, f"data_paths=[{sudoku4}]",
                             f"run_dir={tmp_path}", "max_steps=4", "eval_every=2", "eval_max_examples=10",
                             "optimizer=adamw"])
    Trainer(cfg).fit()
    counts = {r["step"]: r["count"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "eval"}
    assert counts == {2: 10, 4: 64}  # the test split has 64 puzzles


def test_lm_evaluates_a_subset_and_the_whole_split_at_the_end(text_data, tmp_path):  # noqa: F811
    from tests.unit.test_lm_training import TINY
    cfg = load_config("lm-pretrain-cpu", [*TINY, f"data_paths=[{text_data}]", f"run_dir={tmp_path}", "max_steps=4",
                                          "eval_every=2", "eval_max_examples=3"])
    Trainer(cfg).fit()
    tokens = {r["step"]: r["tokens"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "eval"}
    assert tokens[2] == 3 * 32 and tokens[4] > tokens[2]  # 3 packed windows of seq_len 32, then all of them


def test_lm_muon_resume_after_sigkill_is_bitwise_exact(text_data, tmp_path):  # noqa: F811
    check_resume_after_sigkill_is_bitwise_exact(text_data, tmp_path, ["optimizer=muon"], steps=12, kill_at=8)
