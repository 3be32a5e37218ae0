"""The run directory: its layout, imported runs training from weights, one training at a time, and a run
continued only with its own config."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import smoltrain
from smoltrain.errors import SmoltrainError
from smoltrain.families import family_class, load_config
from smoltrain.runs import RunDir
from smoltrain.runs import checkpoint as ckpt
from smoltrain.runtime.distributed import DistEnv
from smoltrain.train.logging import read_metrics
from smoltrain.train.trainer import Trainer
from tests.helpers import REPO, read_metrics_safe, run_python, toy_overrides


def _import_toy_run(output: Path, step: int) -> dict[str, torch.Tensor]:
    """An imported run as the importers write one: config, weights-only checkpoint, README."""
    cfg = load_config("toy", toy_overrides(output, max_steps=step + 2, ema=True, eval_every=100))
    torch.manual_seed(123)
    weights = family_class("toy")(cfg, DistEnv(), torch.device("cpu")).build_model().state_dict()
    with RunDir.create(output) as run:
        run.write_config(cfg)
        run.save_weights_only(step, weights, {"source": "elsewhere", "format": "test"})
        run.write_readme("# imported\n")
    return weights


def test_the_trainer_writes_the_layout(tmp_path: Path) -> None:
    Trainer(load_config("toy", toy_overrides(tmp_path / "run", max_steps=2, eval_every=2))).fit()
    run = RunDir(tmp_path / "run")
    assert run.config.is_file() and run.readme.is_file() and run.metrics.is_file()
    assert [p.name for p in run.list_checkpoints()] == ["step_00000002"]
    assert str(run.config) in run.readme.read_text()


def test_an_imported_run_trains_from_its_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = _import_toy_run(tmp_path / "run", step=3)
    run = RunDir(tmp_path / "run")
    _, _, state = ckpt.load_checkpoint(run.step_dir(3))
    assert not ckpt.holds_training_state(state) and state["imported"]["format"] == "test"
    loaded = smoltrain.load(run.root, device="cpu")  # loading uses the weights as they are
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in weights.items())

    starts: list[int] = []
    original = Trainer._start_from_weights

    def spy(self: Trainer, model_state: dict, ema_state: dict | None, step: int) -> None:
        starts.append(step)
        original(self, model_state, ema_state, step)

    monkeypatch.setattr(Trainer, "_start_from_weights", spy)
    trainer = Trainer(run.load_config())
    assert starts == [3] and trainer.step == 3 and trainer.resumed_from == run.step_dir(3)
    assert all(torch.equal(trainer.model.state_dict()[k], v) for k, v in weights.items())
    assert trainer.ema is not None and all(torch.equal(trainer.ema.shadow[k], weights[k]) for k in trainer.ema.shadow)
    assert all(not spec.optimizer.state for spec in trainer.optimizers)  # fresh optimizer state
    assert trainer.fit()["step"] == 5

    # Its own checkpoint now holds training state: the next start resumes it, not the weights path.
    _, _, state = ckpt.load_checkpoint(run.newest_checkpoint())
    assert ckpt.holds_training_state(state) and state["step"] == 5
    resumed = Trainer(run.load_config(["max_steps=6"]))
    assert starts == [3] and resumed.step == 5


def test_load_checkpoint_starts_a_new_run_through_the_same_path(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    weights = _import_toy_run(tmp_path / "imported", step=3)
    starts: list[int] = []
    original = Trainer._start_from_weights
    monkeypatch.setattr(Trainer, "_start_from_weights",
                        lambda self, m, e, step: (starts.append(step), original(self, m, e, step)))
    cfg = load_config("toy", toy_overrides(tmp_path / "new", max_steps=2,
                                           load_checkpoint=RunDir(tmp_path / "imported").step_dir(3)))
    trainer = Trainer(cfg)
    assert starts == [0] and trainer.step == 0 and trainer.resumed_from is None
    assert all(torch.equal(trainer.model.state_dict()[k], v) for k, v in weights.items())


def _wait_for(condition, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def test_a_second_training_on_a_run_dir_is_refused_naming_the_first(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    first = subprocess.Popen([sys.executable, "-m", "smoltrain", "train", "toy",
                              *toy_overrides(run.root, max_steps=1_000_000)],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: len(read_metrics_safe(run.root)) >= 3)
        second = run_python(["-m", "smoltrain", "train", "toy", *toy_overrides(run.root, max_steps=5)])
        assert second.returncode == 2
        assert second.stderr == f"error: {run.root} is in use by another training (pid {first.pid}); wait for it " \
                                "to end, or choose another run_dir\n"
    finally:
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    # The first training went on undisturbed: its checkpoint, and metrics up to its last step.
    step = ckpt.load_checkpoint(run.newest_checkpoint())[2]["step"]
    assert max(r["step"] for r in read_metrics(run.metrics)) == step >= 3
    assert run_python(["-m", "smoltrain", "train", "toy", *toy_overrides(run.root, max_steps=step + 1)]).returncode == 0


def test_the_trainer_owns_its_run_dir_from_start_to_end(tmp_path: Path) -> None:
    cfg = load_config("toy", toy_overrides(tmp_path / "run", max_steps=2))
    trainer = Trainer(cfg)
    with pytest.raises(SmoltrainError, match=rf"in use by another training \(pid {os.getpid()}\)"):
        Trainer(cfg)
    trainer.fit()  # releases it
    refused = load_config("toy", toy_overrides(tmp_path / "run", max_steps=4, resume="none"))
    with pytest.raises(SmoltrainError, match="already holds checkpoints"):
        Trainer(refused)  # a refused start releases it too
    assert Trainer(load_config("toy", toy_overrides(tmp_path / "run", max_steps=4))).fit()["step"] == 4


def test_a_resume_with_another_config_is_refused_and_keeps_the_run(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert run_python(["-m", "smoltrain", "train", "toy", *toy_overrides(run.root, max_steps=3)]).returncode == 0
    config, metrics = run.config.read_text(), run.metrics.read_text()
    for change in ({"lr": 0.5, "max_steps": 5}, {"max_steps": 5, "resume": "none"}):
        proc = run_python(["-m", "smoltrain", "train", "toy", *toy_overrides(run.root, **change)])
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
        assert ("lr: 0.003 -> 0.5" if "lr" in change else "already holds checkpoints") in proc.stderr
        assert run.config.read_text() == config and run.metrics.read_text() == metrics
        assert [p.name for p in run.list_checkpoints()] == ["step_00000003"]
    # Changing only how long it trains continues the run.
    proc = run_python(["-m", "smoltrain", "train", "toy", *toy_overrides(run.root, max_steps=5, log_every=2)])
    assert proc.returncode == 0, proc.stderr
    assert run.load_config().lr == 3e-3 and run.load_config().max_steps == 5


def test_a_new_run_where_the_checkpoints_were_deleted_starts_its_own_metrics(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    Trainer(load_config("toy", toy_overrides(run.root, max_steps=4))).fit()
    shutil.rmtree(run.checkpoints)  # what the refusal of resume=none asks for
    Trainer(load_config("toy", toy_overrides(run.root, max_steps=2, resume="none", lr=0.01))).fit()
    assert [r["step"] for r in read_metrics(run.metrics) if r["split"] == "train"] == [1, 2]
    assert run.load_config().lr == 0.01
