"""Activation checkpointing through the trainer (issue 17): a run with `activation_checkpointing=true` logs the same
losses and ends with the same weights as without, for the LM (with dropout, DropPath and LayerScale on, so the
recomputation must replay the random masks) and for TRM (its recursion and ACT carry)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from smoltrain.families import load_config
from smoltrain.runs import checkpoint as ckpt
from smoltrain.train.logging import read_metrics
from smoltrain.train.trainer import Trainer
from tests.e2e.test_trm_training import TINY_TRM
from tests.helpers import write_sorting_puzzles
from tests.unit.test_lm_training import TINY, text_data  # noqa: F401


def losses_and_weights(cfg_recipe: str | None, overrides: list[str], run: Path) -> tuple[list[float], dict]:
    Trainer(load_config(cfg_recipe, [*overrides, f"run_dir={run}"])).fit()
    losses = [r["loss"] for r in read_metrics(run / "metrics.jsonl") if r["split"] == "train"]
    return losses, load_file(str(ckpt.list_checkpoints(run / "checkpoints")[-1] / ckpt.MODEL_FILE))


def assert_same_runs(recipe: str | None, overrides: list[str], tmp_path: Path, steps: int) -> None:
    plain = losses_and_weights(recipe, overrides, tmp_path / "plain")
    checkpointed = losses_and_weights(recipe, [*overrides, "activation_checkpointing=true"], tmp_path / "ckpt")
    # Bit-equal: recomputation runs the same ops on the same inputs with the RNG state restored (see the unit tests).
    assert plain[0] == checkpointed[0] and len(plain[0]) == steps
    assert plain[1].keys() == checkpointed[1].keys()
    assert all(torch.equal(plain[1][k], checkpointed[1][k]) for k in plain[1])


def test_lm_run_with_checkpointing_matches_the_run_without(text_data, tmp_path) -> None:  # noqa: F811
    options = ["arch.dropout=0.1", "arch.drop_path_rate=0.2", "arch.layer_scale_init=0.1"]
    assert_same_runs("lm-pretrain-cpu", [*TINY, *options, f"data_paths=[{text_data}]", "max_steps=6",
                                         "eval_max_examples=8"], tmp_path, 6)


def test_trm_run_with_checkpointing_matches_the_run_without(tmp_path) -> None:
    data = write_sorting_puzzles(tmp_path / "data", n_train=64, n_test=16)
    assert_same_runs(None, ["arch=trm", "arch.L_layers=2", *TINY_TRM, f"data_paths=[{data}]", "max_steps=6",
                            "eval_max_examples=16"], tmp_path, 6)
