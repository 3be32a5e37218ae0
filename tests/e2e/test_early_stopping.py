"""Early stopping (``early_stop_patience``, ``early_stop_min_delta``) through the trainer: it stops at the right
evaluation, the stop is a normal end (final checkpoint, ``stopped_by: early_stopping``), resume keeps the counter
and does not train past a stop; and mistakes in its keys (and label_smoothing's) are one line, exit 2."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from smoltrain.families import load_config
from smoltrain.runs import checkpoint as ckpt
from smoltrain.train.logging import read_metrics
from smoltrain.train.trainer import Patience, Trainer
from tests.helpers import run_python, toy_overrides


def scripted_trainer(run_dir: Path, values: Iterator[float], **overrides: object) -> Trainer:
    """A toy run whose evaluations report the next of ``values`` as exact_accuracy: a metric that plateaus on cue."""
    cfg = load_config("toy", toy_overrides(run_dir, eval_every=2, keep_best="exact_accuracy", **overrides))
    trainer = Trainer(cfg)
    trainer.family.evaluate = lambda *args, **kwargs: {"exact_accuracy": next(values), "loss": 1.0}
    return trainer


def eval_steps(run_dir: Path) -> list[int]:
    return [row["step"] for row in read_metrics(run_dir / "metrics.jsonl") if row["split"] == "eval"]


def test_patience_counts_gains_above_min_delta_only() -> None:
    patience = Patience("loss", maximise=False, patience=2, min_delta=0.1)
    for step, value in enumerate([1.0, 0.95, 0.8, 0.75, float("nan")], start=1):
        patience.update(value, step)
    # 0.95 is within min_delta of 1.0 (stale 1); 0.8 beats it by 0.2 (best, stale 0); 0.75 and NaN are stale.
    assert (patience.best, patience.best_step, patience.stale, patience.exhausted) == (0.8, 3, 2, True)


def test_early_stopping_stops_at_the_evaluation_that_exhausts_patience(tmp_path):
    # Evaluations every 2 steps; min_delta 0.05: 0.33 and 0.52 are within it of the best (stale), 0.53 too.
    values = iter([0.1, 0.3, 0.33, 0.5, 0.52, 0.53, 0.9, 0.95])
    trainer = scripted_trainer(tmp_path, values, max_steps=40, early_stop_patience=2, early_stop_min_delta=0.05)
    summary = trainer.fit()
    assert summary["stopped_by"] == "early_stopping" and summary["step"] == 12
    assert eval_steps(tmp_path) == [2, 4, 6, 8, 10, 12]  # no evaluation after the stop: it was of the whole split
    assert ckpt.list_checkpoints(tmp_path / "checkpoints")[-1].name == ckpt.step_dir_name(12)
    assert (tmp_path / "best.json").is_file()  # keep_best still kept its best (0.53, an improvement, if small)
    assert "early_stopping" in (tmp_path / "README.md").read_text()


def test_resume_keeps_the_counter_and_does_not_train_past_a_stop(tmp_path):
    # First session: 8 steps, 4 evaluations; the last two do not improve (stale 2 of patience 3).
    trainer = scripted_trainer(tmp_path, iter([0.1, 0.5, 0.4, 0.45]), max_steps=8, early_stop_patience=3)
    assert trainer.fit()["stopped_by"] is None
    state = ckpt.load_checkpoint(ckpt.list_checkpoints(tmp_path / "checkpoints")[-1])[2]
    assert state["early_stop"]["stale"] == 2 and state["early_stop"]["best"] == 0.5
    # Resumed for longer: one more stale evaluation stops it (a counter started afresh would stop at step 14).
    trainer = scripted_trainer(tmp_path, iter([0.3, 0.9]), max_steps=40, early_stop_patience=3)
    summary = trainer.fit()
    assert summary["stopped_by"] == "early_stopping" and summary["step"] == 10
    # Resumed again with the same config: nothing to train, nothing evaluated or written.
    trainer = scripted_trainer(tmp_path, iter([]), max_steps=40, early_stop_patience=3)
    summary = trainer.fit()
    assert summary["stopped_by"] == "early_stopping" and summary["step"] == 10
    assert eval_steps(tmp_path) == [2, 4, 6, 8, 10]
    # A larger patience trains on, counting from 3 stale evaluations: two more stale ones stop it at step 14.
    trainer = scripted_trainer(tmp_path, iter([0.2, 0.2, 0.2]), max_steps=40, early_stop_patience=5)
    summary = trainer.fit()
    assert summary["stopped_by"] == "early_stopping" and summary["step"] == 14


def test_label_smoothing_changes_the_toy_training_loss(tmp_path):
    losses = []
    for smoothing in (0.0, 0.3):
        cfg = load_config("toy", toy_overrides(tmp_path / f"ls{smoothing}", max_steps=1,
                                               label_smoothing=smoothing))
        trainer = Trainer(cfg)
        losses.append(float(trainer.compute_gradients(next(trainer.stream))[0]))
        trainer.release_run_dir()
    # The config reaches the loss (its formula is tests/unit/test_label_smoothing.py's): the same first batch and
    # weights, and e * (mean -log p - CE) apart, which is far above fp32 rounding (~1e-7 of a loss of ~2.4).
    assert abs(losses[1] - losses[0]) > 1e-4


BAD = [
    ("label_smoothing of 1", ["label_smoothing=1"], "label_smoothing"),
    ("negative label_smoothing", ["label_smoothing=-0.1"], "label_smoothing"),
    ("patience 0", ["early_stop_patience=0"], "early_stop_patience"),
    ("patience without keep_best", ["early_stop_patience=2"], "keep_best"),
    ("min_delta without patience", ["early_stop_min_delta=0.1"], "early_stop_patience"),
    ("negative min_delta", ["early_stop_patience=2", "keep_best=loss", "early_stop_min_delta=-1"],
     "early_stop_min_delta"),
]


def test_bad_values_are_one_line(tmp_path):
    def run(case: tuple[str, list[str], str]) -> subprocess.CompletedProcess:
        return run_python(["-m", "smoltrain", "train", "toy", *toy_overrides(tmp_path / case[0].replace(" ", "-")),
                           *case[1]], timeout=120)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, BAD))
    for (name, _, word), done in zip(BAD, results, strict=True):
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), (name, done.stderr)
        assert word in lines[0], (name, lines[0])


@pytest.mark.parametrize("stage", ["dpo"])
def test_dpo_refuses_label_smoothing(stage, tmp_path):
    from smoltrain.errors import ConfigError
    from smoltrain.families.lm import LMFamily
    from smoltrain.runtime.distributed import DistEnv

    cfg = load_config("lm-dpo-cpu", ["data_paths=[]", "arch.vocab_size=64", f"stage={stage}", "label_smoothing=0.1",
                                     f"run_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="stage=dpo"):
        LMFamily(cfg, DistEnv(), torch.device("cpu"))


def test_a_stop_at_a_subset_evaluation_scores_the_whole_split_once_more(tmp_path):
    wholes: list[bool] = []
    values = iter([0.5, 0.4, 0.9])  # the 0.9 is the final, whole-split evaluation: it must not undo the stop

    def evaluate(*args, whole=False, **kwargs):
        wholes.append(whole)
        return {"exact_accuracy": next(values), "loss": 1.0}

    trainer = scripted_trainer(tmp_path, values, max_steps=40, early_stop_patience=1, eval_max_examples=8)
    trainer.family.evaluate = evaluate
    summary = trainer.fit()
    assert summary["stopped_by"] == "early_stopping" and summary["step"] == 4
    assert wholes == [False, False, True] and eval_steps(tmp_path) == [2, 4, 4]
    state = ckpt.load_checkpoint(ckpt.list_checkpoints(tmp_path / "checkpoints")[-1])[2]["early_stop"]
    assert state["stopped_at"] == 4 and state["stale"] == 1  # saved after the final evaluation, counter untouched
    again = scripted_trainer(tmp_path, iter([]), max_steps=40, early_stop_patience=1, eval_max_examples=8)
    assert again.fit()["step"] == 4  # still stopped


def test_ranks_agree_on_an_early_stop_under_torchrun(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_dir = tmp_path / "run"
    # lr=0: the weights never change, so exact_accuracy plateaus from the first evaluation and stops at the third.
    done = run_python(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
                       "-m", "smoltrain", "train", "toy",
                       *toy_overrides(run_dir, max_steps=40, eval_every=2, lr=0.0, keep_best="exact_accuracy",
                                      early_stop_patience=2)], timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("early stopping at step 6") == 1, done.stdout  # rank 0 says it, once
    assert eval_steps(run_dir) == [2, 4, 6]
    assert ckpt.list_checkpoints(run_dir / "checkpoints")[-1].name == ckpt.step_dir_name(6)
