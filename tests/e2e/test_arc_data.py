"""ARC builder: loading/validation, token canvas, augmentation, translation, splits, files, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import run_python
from tests.unit.test_arc_data import _grid, pair, small_canvas_tasks, synthetic_tasks, write_kaggle  # noqa: F401


def test_cli_builds_and_reports_errors(tmp_path: Path) -> None:
    prefix = write_kaggle(tmp_path / "src", synthetic_tasks())
    out = tmp_path / "ds"
    ok = run_python(
        [
            "-m",
            "smoltrain",
            "data",
            "arc",
            "--input-file-prefix",
            prefix,
            "--subsets",
            "training",
            "evaluation",
            "--test-set-name",
            "evaluation",
            "--output-dir",
            str(out),
            "--num-aug",
            "2",
            "--seed",
            "3",
        ]
    )
    assert ok.returncode == 0, ok.stderr
    assert "4 tasks" in ok.stdout and (out / "test_puzzles.json").is_file()
    info = json.loads((out / "build_info.json").read_text())
    assert (info["num_aug"], info["seed"], info["counts"]["identifiers"]) == (2, 3, 1 + 3 * 3 + 1)
    bad = run_python(
        [
            "-m",
            "smoltrain",
            "data",
            "arc",
            "--input-file-prefix",
            prefix,
            "--subsets",
            "training",
            "concept",
            "--test-set-name",
            "concept",
            "--output-dir",
            str(tmp_path / "x"),
        ]
    )
    assert bad.returncode == 2
    assert "arc-agi_concept_challenges.json not found; drop `concept` from --subsets" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_cli_canvas_size(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from smoltrain.cli import main

    prefix = write_kaggle(tmp_path / "src", small_canvas_tasks())
    base = ["data", "arc", "--input-file-prefix", prefix, "--subsets", "training", "evaluation", "--num-aug", "1"]
    assert main([*base, "--output-dir", str(tmp_path / "ds"), "--canvas-size", "10"]) == 0
    printed = capsys.readouterr().out
    assert "on a 10x10 canvas" in printed
    assert "skipped 3 tasks with grids larger than 10x10: a0000003, e0000001, e0000004" in printed
    assert json.loads((tmp_path / "ds" / "build_info.json").read_text())["canvas_size"] == 10
    for bad in ("0", "31"):
        proc = run_python(["-m", "smoltrain", *base, "--output-dir", str(tmp_path / f"x{bad}"), "--canvas-size", bad])
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines() == [
            f"error: --canvas-size must be from 1 to 30 (ARC grids are at most 30x30), got {bad}"
        ]
        assert not (tmp_path / f"x{bad}").exists()
