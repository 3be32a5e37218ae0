"""The demos' directory: only what a demo wrote there is ever deleted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from smoltrain.apps.demo import MARKER, prepare_demo_dir
from smoltrain.errors import SmoltrainError
from smoltrain.runs import RunDir


def _an_earlier_demo(path: Path) -> RunDir:
    prepare_demo_dir(path)
    run = RunDir(path)
    run.write_readme("# demo\n")
    run.save_checkpoint(3, {"w": torch.zeros(1)}, None, {"step": 3}, keep=1)
    (path / "data" / "train").mkdir(parents=True)
    (path / "tokenizer-src").mkdir()
    (run.root / "metrics.jsonl").write_text("{}\n")
    return run


@pytest.mark.parametrize("exists", [False, True])
def test_a_new_or_empty_directory_becomes_the_demos(tmp_path: Path, exists: bool) -> None:
    path = tmp_path / "demo"
    if exists:
        path.mkdir()
    prepare_demo_dir(path)
    assert (path / MARKER).is_file()


def test_a_later_demo_deletes_only_what_the_demo_wrote(tmp_path: Path) -> None:
    path = tmp_path / "demo"
    run = _an_earlier_demo(path)
    (path / "notes.txt").write_text("the user's")
    (path / "mine").mkdir()
    prepare_demo_dir(path)
    assert sorted(p.name for p in path.iterdir()) == [".lock", MARKER, "mine", "notes.txt"]
    assert (path / "notes.txt").read_text() == "the user's" and run.list_checkpoints() == []


@pytest.mark.parametrize("content", ["a file", "a run", "a file instead of a directory"])
def test_a_directory_the_demo_did_not_make_is_refused_untouched(tmp_path: Path, content: str) -> None:
    path = tmp_path / "demo"
    if content == "a file instead of a directory":
        path.write_text("x")
    else:
        path.mkdir()
        (path / "notes.txt").write_text("x")
        if content == "a run":
            RunDir(path).save_checkpoint(3, {"w": torch.zeros(1)}, None, {"step": 3}, keep=1)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(SmoltrainError, match="already exists and was not made by `smoltrain demo`: choose another "
                                             "--run-dir") as err:
        prepare_demo_dir(path)
    assert "\n" not in str(err.value)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_a_demo_still_training_keeps_its_files(tmp_path: Path) -> None:
    path = tmp_path / "demo"
    run = _an_earlier_demo(path)
    lock = run.lock()  # the earlier demo is still training
    try:
        with pytest.raises(SmoltrainError, match="in use by another training"):
            prepare_demo_dir(path)
        assert run.list_checkpoints() == [run.step_dir(3)]
    finally:
        lock.release()
