"""The run directory: its layout, atomic config, checkpoints found, and imported runs training from weights."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from smoltrain.errors import ConfigError, SmoltrainError
from smoltrain.families import load_config
from smoltrain.runs import RunDir
from smoltrain.runs import checkpoint as ckpt
from tests.helpers import toy_overrides


def test_layout_paths(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    root = tmp_path / "run"
    assert run.config == root / "config.yaml"
    assert run.readme == root / "README.md"
    assert run.metrics == root / "metrics.jsonl"
    assert run.tensorboard == root / "tensorboard"
    assert run.tokenizer == root / "tokenizer"
    assert run.checkpoints == root / "checkpoints"
    assert run.step_dir(1234) == root / "checkpoints" / "step_00001234"
    assert run.eval_dir(run.step_dir(7)) == root / "eval" / "step_00000007"
    assert run.predictions(12, 1) == root / "step_12_all_preds.1"  # the reference's name, unpadded
    assert run.reference_config == root / "reference_all_config.yaml"
    assert not root.exists()  # naming paths touches nothing


def test_config_is_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = RunDir(tmp_path / "run")
    first = load_config("toy", toy_overrides(run.root, max_steps=2))
    run.write_config(first)
    assert run.load_config() == first
    assert run.load_config(["max_steps=9"]).max_steps == 9

    def crash(*_args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        run.write_config(load_config("toy", toy_overrides(run.root, max_steps=3)))
    monkeypatch.undo()
    assert run.load_config() == first  # the old config, whole
    assert sorted(p.name for p in run.root.iterdir()) == ["config.yaml"]  # no temporary file left


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"is not a run directory \(no config.yaml\)"):
        RunDir(tmp_path).load_config()


def test_newest_checkpoint_is_found(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert run.newest_checkpoint() is None and run.newest_loadable() is None
    weights = {"w": torch.arange(3.0)}
    for step in (2, 10, 7):
        run.save_checkpoint(step, weights, None, {"step": step}, keep=5)
    (run.checkpoints / ".step_00000011.tmp123").mkdir()  # a crashed save: not a checkpoint
    assert [p.name for p in run.list_checkpoints()] == ["step_00000002", "step_00000007", "step_00000010"]
    assert run.newest_checkpoint() == run.step_dir(10)
    (run.step_dir(10) / ckpt.MODEL_FILE).write_bytes(b"damaged")
    with pytest.warns(UserWarning, match="skipping unreadable checkpoint"):
        found = run.newest_loadable()
    assert found is not None and found[0] == run.step_dir(7)


def test_create_is_all_or_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), RunDir.create(tmp_path / "run") as run:
        run.write_readme("half\n")
        raise RuntimeError("importer failed")
    assert not (tmp_path / "run").exists()
    with RunDir.create(tmp_path / "run") as run:
        run.write_readme("whole\n")
    assert RunDir(tmp_path / "run").readme.read_text() == "whole\n"
    with pytest.raises(SmoltrainError, match="already exists and is not empty"):
        RunDir.check_new(tmp_path / "run")


def test_errors_are_appended_to_the_run_log(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.append_error("--- first\nTraceback ...") == run.error_log == tmp_path / "run" / "errors.log"
    run.append_error("--- second\n")
    assert run.error_log.read_text() == "--- first\nTraceback ...\n--- second\n"
    (tmp_path / "file").write_text("not a directory")
    assert RunDir(tmp_path / "file").append_error("lost") is None  # the error itself still reaches the user
