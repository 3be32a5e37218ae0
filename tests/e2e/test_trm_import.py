"""Importing reference TRM checkpoints: synthetic ``step_N`` files in the reference layout (our model's
state dict under the loss head, optionally ``_orig_mod.``-prefixed, with an ``all_config.yaml``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import smoltrain
from smoltrain.interop.trm_import import import_reference_checkpoint
from tests.helpers import run_python, write_sorting_puzzles
from tests.unit.test_trm_import import MODELS, TINY_ARCH, write_reference  # noqa: F401


def test_import_with_data_then_cli_eval(tmp_path: Path) -> None:
    """RoPE attention (seq_len not in the weights) with the dataset; `smoltrain eval` runs on the result."""
    data = write_sorting_puzzles(tmp_path / "data", n_train=16, n_test=8, seq_len=6, digits=4)
    _, path = write_reference(tmp_path / "ref")
    run_dir = import_reference_checkpoint(path, tmp_path / "run", data_paths=[str(data)])
    assert smoltrain.load(run_dir, device="cpu").config.data_paths == [str(data)]

    result = run_python(["-m", "smoltrain", "eval", str(run_dir), f"data_paths=[{data}]", "--device", "cpu"],
                        timeout=240)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    # The CLI reports what the library computes on the same weights and data (not just some number in [0, 1]).
    expected = smoltrain.evaluate(run_dir, device="cpu", overrides=[f"data_paths=[{data}]"])
    assert metrics["count"] == 8 and metrics == pytest.approx(expected, rel=1e-5)


def test_training_continues_from_an_imported_run(tmp_path: Path) -> None:
    from smoltrain.families import load_config
    from smoltrain.train.trainer import Trainer

    data = write_sorting_puzzles(tmp_path / "data", n_train=16, n_test=8, seq_len=6, digits=4)
    _, path = write_reference(tmp_path / "ref")
    run_dir = import_reference_checkpoint(path, tmp_path / "run", data_paths=[str(data)])
    cfg = load_config(str(run_dir / "config.yaml"), ["max_steps=6", "device=cpu", "eval_interval=null"])
    trainer = Trainer(cfg)
    assert trainer.step == 5
    assert trainer.fit()["step"] == 6
