"""Logging: metrics.jsonl rows, plain progress lines off a terminal, wandb offline and TensorBoard files."""

from __future__ import annotations

import pytest

from smoltrain.families import load_config
from smoltrain.train.logging import read_metrics
from smoltrain.train.trainer import Trainer
from tests.helpers import run_python, toy_overrides


def test_metrics_rows_have_the_promised_fields(tmp_path):
    Trainer(load_config("toy", toy_overrides(tmp_path, max_steps=4, log_every=2, eval_every=4))).fit()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    train = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train] == [2, 4]
    for key in ("loss", "lr", "grad_norm", "samples_per_s", "elapsed_s", "accuracy"):
        assert all(isinstance(r[key], float) for r in train), key
    assert [r["step"] for r in rows if r["split"] == "eval"] == [4]


def test_plain_lines_when_not_on_a_terminal(tmp_path):
    proc = run_python(["-m", "smoltrain", "train", "toy", *toy_overrides(tmp_path, max_steps=4, log_every=2)])
    assert proc.returncode == 0, proc.stderr
    assert "[train step 2] loss=" in proc.stdout and "[train step 4] loss=" in proc.stdout


def test_tensorboard_event_files(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is an optional extra: pip install 'smoltrain[tensorboard]'")
    Trainer(load_config("toy", toy_overrides(tmp_path, max_steps=2, tensorboard=True))).fit()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_wandb_offline_needs_no_account(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is an optional extra: pip install 'smoltrain[wandb]'")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    Trainer(load_config("toy", toy_overrides(tmp_path, max_steps=2, **{"wandb.mode": "offline"}))).fit()
    assert list((tmp_path / "wandb").glob("offline-run-*"))
