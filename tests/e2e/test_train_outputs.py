"""A training whose outputs cannot be written mid-run ends with one line, its checkpoints whole."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from smoltrain.cli import main
from tests.helpers import toy_overrides


def test_a_full_disk_at_a_checkpoint_is_one_line_and_leaves_no_half_checkpoint(tmp_path: Path, capsys,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    run = tmp_path / "run"
    monkeypatch.setattr(torch, "save", full)  # the trainer state, the last file of a checkpoint
    assert main(["train", "toy", *toy_overrides(run, max_steps=2)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert errors == [f"error: cannot write {run}/checkpoints/step_00000002: No space left on device; "
                      "free some disk space or write somewhere else"]
    assert list((run / "checkpoints").iterdir()) == []  # no temporary step folder left


def test_a_full_disk_for_the_metrics_is_one_line(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    real_open = open

    def full_open(path, mode="r", *args, **kwargs):  # metrics.jsonl opens, then every write fails
        handle = real_open(path, mode, *args, **kwargs)
        if str(path).endswith("metrics.jsonl") and "a" in mode:
            def full(_text: str) -> int:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            handle.write = full
        return handle

    monkeypatch.setattr("builtins.open", full_open)
    assert main(["train", "toy", *toy_overrides(run, max_steps=2)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert errors == [f"error: cannot write {run}/metrics.jsonl: No space left on device; "
                      "free some disk space or write somewhere else"]
