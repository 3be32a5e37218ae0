"""Logging: metrics.jsonl rows, plain progress lines off a terminal, wandb offline and TensorBoard files."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest

from smoltrain.families import load_config
from smoltrain.train.logging import bar_postfix, read_metrics
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


def test_a_logged_row_is_the_mean_of_its_window(tmp_path):
    """log_every=3 logs, at steps 3 and 6, the means of the per-step values a log_every=1 run of the same seed logs
    (TRM logs read as zeros between halting steps when a row was the last step alone)."""
    each = _train_rows(tmp_path / "each", log_every=1)
    windows = _train_rows(tmp_path / "window", log_every=3)
    assert [r["step"] for r in windows] == [3, 6]
    for row in windows:
        steps = [r for r in each if row["step"] - 3 < r["step"] <= row["step"]]
        for key in ("loss", "grad_norm", "accuracy", "exact_accuracy"):
            # Both runs do the same ops on this CPU; only the Python mean of three doubles differs in rounding.
            assert row[key] == pytest.approx(sum(r[key] for r in steps) / 3, rel=1e-9), key
        assert row["lr"] == steps[-1]["lr"]  # the rate the row's last step used, not a mean
    assert windows[0]["loss"] != each[2]["loss"]  # not the snapshot of the window's last step


def test_resumed_windows_log_as_an_uninterrupted_run(tmp_path):
    """The window's sums travel in checkpoints: stopping at step 4 (mid-window) and resuming logs the same rows."""
    straight = _train_rows(tmp_path / "straight", log_every=3)
    stop_at_4 = lambda trainer: setattr(trainer, "stop_signal", "SIGTERM") if trainer.step == 4 else None
    _train_rows(tmp_path / "resumed", [stop_at_4], log_every=3)
    resumed = _train_rows(tmp_path / "resumed", log_every=3, resume="auto")
    assert [(r["step"], r["loss"]) for r in resumed] == [(r["step"], r["loss"]) for r in straight]


def _train_rows(run, callbacks=None, **options):
    options = {"max_steps": 6, "lr_warmup_steps": 0, **options}
    Trainer(load_config("toy", toy_overrides(run, **options)), callbacks).fit()
    return [r for r in read_metrics(run / "metrics.jsonl") if r["split"] == "train"]


def test_the_bar_shows_throughput_and_the_latest_eval():
    train = {"step": 7, "loss": 0.51234, "accuracy": 0.75, "lr": 1e-3, "samples_per_s": 1234.0, "tokens_per_s": 56789.0}
    text = bar_postfix(train, {"step": 5, "count": 64.0, "accuracy": 0.5, "elapsed_s": 3.0})
    assert text == "loss=0.5123 | accuracy=0.75 | 56.8k tokens/s | eval@5: accuracy=0.5"
    assert bar_postfix({"step": 1, "loss": 2.0, "samples_per_s": 80.5}, None) == "loss=2 | 80.5 samples/s"
    assert len(bar_postfix({"step": 1, **{f"m{i}_accuracy": 0.5 for i in range(40)}}, None)) == 110


def test_on_a_terminal_the_bar_shows_eta_rate_and_the_latest_eval(tmp_path):
    """A training under a pseudo-terminal, 200 columns wide, draws tqdm's bar with the postfix."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))  # a pty starts 0 columns wide
    args = ["-m", "smoltrain", "train", "toy", *toy_overrides(tmp_path, max_steps=60, log_every=10, eval_every=30)]
    proc = subprocess.Popen([sys.executable, *args], stdout=follower, stderr=follower, env=os.environ.copy())
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    assert proc.wait(timeout=120) == 0
    bars = [line for line in output.decode(errors="replace").replace("\r", "\n").split("\n") if "60/60" in line]
    assert bars, output[-2000:]
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d", bars[-1])  # elapsed<remaining: tqdm's ETA
    assert "samples/s" in bars[-1] and "eval@30: loss=" in bars[-1] and "loss=" in bars[-1]
