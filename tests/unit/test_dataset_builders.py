"""The builder skeleton: the three builders write the same build_info.json envelope and the same subsample record,
and the CLI `data` verbs map their flags onto the builders' options one to one."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest

from smoltrain.cli import build_parser
from smoltrain.data.arc import ArcOptions, build_arc_dataset
from smoltrain.data.build import BUILD_INFO_KEYS
from smoltrain.data.maze import MazeOptions, build_maze_dataset
from smoltrain.data.sudoku import SudokuOptions, build_sudoku_dataset
from tests.unit.test_arc_data import synthetic_tasks, write_kaggle

TAIL = ["build_seconds", "smoltrain_version"]


# What the fixed-size puzzle pipeline records for every kind it builds, besides the kind's own settings.
PIPELINE_KEYS = {"size", "train_test_overlap"}


GENERATOR_KEYS = {"generation_seconds", "workers"}


CSV_KEYS = {"rows_in_source"}


def _info(root: Path) -> dict:
    return json.loads((root / "build_info.json").read_text())


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("builders")
    build_sudoku_dataset(base / "sudoku", "generate", size=4, num_train=8, num_test=4, num_aug=1, seed=1, workers=1)
    build_maze_dataset(base / "maze", "generate", size=6, num_train=8, num_test=4, aug=True, seed=1, workers=1)
    build_arc_dataset(base / "arc", input_file_prefix=write_kaggle(base / "kaggle", synthetic_tasks()),
                      subsets=["training", "evaluation"], num_aug=2, seed=1)
    # From the generated CSVs, train subsampled and test untouched: the case where the records once drifted.
    build_sudoku_dataset(base / "sudoku-csv", f"csv:{base / 'sudoku' / 'generated'}", size=4, subsample_size=5)
    build_maze_dataset(base / "maze-csv", f"csv:{base / 'maze' / 'generated'}", size=6, subsample_size=5)
    return {p.name: p for p in base.iterdir()}


def _data_parser(kind: str) -> argparse.ArgumentParser:
    def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return action.choices

    return subparsers(subparsers(build_parser())["data"])[kind]


def test_every_builder_writes_the_same_build_info_envelope(built: dict[str, Path]) -> None:
    for name in ("sudoku", "maze", "arc", "sudoku-csv", "maze-csv"):
        info = _info(built[name])
        keys = list(info)
        assert keys[0] == "builder" and keys[-2:] == TAIL, name
        assert set(BUILD_INFO_KEYS) <= set(keys), name
        assert "train_rows" in info["counts"], name
    assert [_info(built[k])["builder"] for k in ("sudoku", "maze", "arc")] == ["sudoku", "maze", "arc"]


@pytest.mark.parametrize("source, extra", [("", GENERATOR_KEYS), ("-csv", CSV_KEYS)])
def test_sudoku_and_maze_record_what_their_shared_pipeline_does(built: dict[str, Path], source: str,
                                                                 extra: set[str]) -> None:
    for kind in ("sudoku", "maze"):
        info = _info(built[kind + source])
        assert PIPELINE_KEYS | extra <= set(info), kind
        noun = {"sudoku": "puzzles", "maze": "mazes"}[kind]
        assert list(info["counts"]) == [f"train_{noun}", "train_rows", f"test_{noun}"]
        if not source:
            assert f"generation_rate_{noun}_per_s" in info


def test_sudoku_and_maze_write_the_same_subsample_record(built: dict[str, Path]) -> None:
    records = [json.loads((built[name] / "subsample_indices.json").read_text()) for name in ("sudoku-csv", "maze-csv")]
    for record in records:
        assert list(record) == ["note", "train", "test"]
        assert len(record["train"]["rows"]) == 5 and record["train"]["file"].endswith("train.csv")
        assert record["test"]["rows"] is None  # every test row, in file order
    assert records[0]["note"] == records[1]["note"]


@pytest.mark.parametrize("kind, options_type", [("sudoku", SudokuOptions), ("maze", MazeOptions), ("arc", ArcOptions)])
def test_data_flags_are_the_builder_options(kind: str, options_type: type) -> None:
    """Every flag of `smoltrain data KIND` but --output-dir is a field of the builder's options, with its default."""
    defaults = {a.dest: a.default for a in _data_parser(kind)._actions if a.dest not in ("help", "output_dir")}
    fields = {f.name: f.default for f in dataclasses.fields(options_type)}
    assert set(defaults) == set(fields)
    for name, default in fields.items():
        flag = defaults[name]
        assert (list(flag) if isinstance(flag, list) else flag) == (list(default) if isinstance(default, tuple)
                                                                    else default), name
