"""Maze generator, CSV reader, dataset builder, CLI and the valid-optimal-path metric."""

from __future__ import annotations

import json
from pathlib import Path

from smoltrain.data.puzzles import load_metadata
from tests.helpers import run_python


def test_cli_builds_a_small_maze_dataset_and_reports_bad_sources(tmp_path: Path) -> None:
    out = tmp_path / "maze10"
    proc = run_python(["-m", "smoltrain", "data", "maze", "--source", "generate", "--size", "10", "--num-train", "6",
                       "--num-test", "3", "--aug", "--seed", "3", "--workers", "1", "--output-dir", str(out)])
    assert proc.returncode == 0, proc.stderr
    assert "6 train mazes (48 rows" in proc.stdout
    info = json.loads((out / "build_info.json").read_text())
    assert info["builder"] == "maze" and info["size"] == 10 and info["aug"] is True
    assert load_metadata(out, "test").seq_len == 100

    proc = run_python(["-m", "smoltrain", "data", "maze", "--source", "csv:missing.csv", "--output-dir",
                       str(tmp_path / "bad")], cwd_override=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing.csv" in lines[0], proc.stderr
    assert not (tmp_path / "bad").exists()
