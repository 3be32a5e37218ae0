"""Importing reference TRM checkpoints: synthetic ``step_N`` files in the reference layout (our model's
state dict under the loss head, optionally ``_orig_mod.``-prefixed, with an ``all_config.yaml``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

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


def test_cli_imports_a_reference_single_z_checkpoint(tmp_path: Path) -> None:
    """`smoltrain import trm` on a single-z checkpoint written as the reference writes it (compiled: `_orig_mod.`
    keys, `L_init` only, arch `recursive_reasoning.trm_singlez@...`); the run evaluates to the reference port's
    logits at every ACT step (1e-5: the same computation, see tests/unit/test_trm_reference_parity.py)."""
    from tests.unit.test_trm_reference_parity import TOLERANCE, _bench_module

    parity = _bench_module("reference_parity")
    reference = _bench_module("reference_trm")
    head = parity.reference_head("single-z")
    path = reference.save_reference_checkpoint(head, tmp_path / "ref", step=7, compiled=True)
    assert "_orig_mod.model.inner.L_init" in torch.load(path, weights_only=True)

    result = run_python(["-m", "smoltrain", "import", "trm", "--checkpoint", str(path), "--output",
                         str(tmp_path / "run"), "--seq-len", str(parity.SHAPE["seq_len"])], timeout=240)
    assert result.returncode == 0, result.stderr
    assert f"imported {path} (step 7, arch trm_singlez)" in result.stdout

    run = smoltrain.load(tmp_path / "run", device="cpu")
    assert run.config.arch.name == "trm_singlez"
    steps = parity.per_step_differences(head.model, run.model.model, parity.evaluation_batch())
    for step, differences in enumerate(steps, start=1):
        for key in parity.OUTPUT_KEYS:
            assert differences[key] <= TOLERANCE, f"ACT step {step}: {key} differs by {differences[key]:.2e}"
