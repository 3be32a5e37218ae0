"""The run directory: its layout, atomic config, checkpoints found, its one owner, the config a run continues with,
and files that follow the umask."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from smoltrain.config import TrainConfig
from smoltrain.data.tokenizer import TOKENIZER_FILES
from smoltrain.errors import ConfigError, SmoltrainError
from smoltrain.families import load_config, resolve
from smoltrain.runs import RunDir
from smoltrain.runs import checkpoint as ckpt
from smoltrain.runs.run_dir import RESUMABLE_CHANGES
from tests.helpers import toy_overrides, write_sorting_puzzles


def test_layout_paths(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    root = tmp_path / "run"
    assert run.config == root / "config.yaml"
    assert run.readme == root / "README.md"
    assert run.metrics == root / "metrics.jsonl"
    assert run.tensorboard == root / "tensorboard"
    assert run.tokenizer == root / "tokenizer"
    assert run.checkpoints == root / "checkpoints"
    assert run.step_dir(1234) == root / "checkpoints" / "step_00001234"
    assert run.eval_dir(run.step_dir(7)) == root / "eval" / "step_00000007"
    assert run.predictions(12, 1) == root / "step_12_all_preds.1"  # the reference's name, unpadded
    assert run.reference_config == root / "reference_all_config.yaml"
    assert not root.exists()  # naming paths touches nothing


def test_config_is_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = RunDir(tmp_path / "run")
    first = load_config("toy", toy_overrides(run.root, max_steps=2))
    run.write_config(first)
    assert run.load_config() == first
    assert run.load_config(["max_steps=9"]).max_steps == 9

    def crash(*_args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        run.write_config(load_config("toy", toy_overrides(run.root, max_steps=3)))
    monkeypatch.undo()
    assert run.load_config() == first  # the old config, whole
    assert sorted(p.name for p in run.root.iterdir()) == ["config.yaml"]  # no temporary file left


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"is not a run directory \(no config.yaml\)"):
        RunDir(tmp_path).load_config()


def test_a_damaged_config_is_one_line(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.write_config(load_config("toy", toy_overrides(run.root)))
    text = run.config.read_bytes()
    run.config.write_bytes(text[:20] + b"\xff\xfe" + text[20:])
    with pytest.raises(ConfigError, match=r"config.yaml is not UTF-8 text \(byte 20\); fix or restore the file"):
        run.load_config()
    run.config.write_text("lr: [1, 2\nseed: 3\n")
    with pytest.raises(ConfigError, match=r"config.yaml is not valid YAML: .* at line \d+, column \d+") as err:
        run.load_config()
    assert "\n" not in str(err.value)


def test_newest_checkpoint_is_found(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert run.newest_checkpoint() is None and run.newest_loadable() is None
    weights = {"w": torch.arange(3.0)}
    for step in (2, 10, 7):
        run.save_checkpoint(step, weights, None, {"step": step}, keep=5)
    (run.checkpoints / ".step_00000011.tmp123").mkdir()  # a crashed save: not a checkpoint
    assert [p.name for p in run.list_checkpoints()] == ["step_00000002", "step_00000007", "step_00000010"]
    assert run.newest_checkpoint() == run.step_dir(10)
    (run.step_dir(10) / ckpt.MODEL_FILE).write_bytes(b"damaged")
    with pytest.warns(UserWarning, match="skipping unreadable checkpoint"):
        found = run.newest_loadable()
    assert found is not None and found[0] == run.step_dir(7)


def test_create_is_all_or_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), RunDir.create(tmp_path / "run") as run:
        run.write_readme("half\n")
        raise RuntimeError("importer failed")
    assert not (tmp_path / "run").exists()
    with RunDir.create(tmp_path / "run") as run:
        run.write_readme("whole\n")
    assert RunDir(tmp_path / "run").readme.read_text() == "whole\n"
    with pytest.raises(SmoltrainError, match="already exists and is not empty"):
        RunDir.check_new(tmp_path / "run")


def test_one_process_owns_a_run_directory(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    lock = run.lock()
    assert run.lock_file == run.root / ".lock" and run.lock_file.read_text().strip() == str(os.getpid())
    # flock is per open file, so a second owner is refused even in the same process.
    with pytest.raises(SmoltrainError, match=rf"run is in use by another training \(pid {os.getpid()}\)") as err:
        run.lock()
    assert "\n" not in str(err.value)
    lock.release()
    lock.release()  # twice is fine
    again = run.lock()
    assert again.held and not lock.held
    again.release()
    assert run.lock_file.exists()  # never deleted: another process may hold a lock on it


def test_a_run_continues_only_with_its_own_config(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    saved = load_config("toy", toy_overrides(run.root, max_steps=2))
    run.check_continues(saved)  # no config.yaml yet: nothing to compare
    run.write_config(saved)
    run.check_continues(saved)
    # How long and how it runs may change.
    run.check_continues(load_config("toy", toy_overrides(run.root, max_steps=9, eval_every=3, log_every=5,
                                                         device="auto", num_threads=2, keep_checkpoints=1,
                                                         **{"wandb.mode": "offline", "tensorboard": True})))
    run.check_continues(load_config("toy", toy_overrides(tmp_path / "moved", max_steps=2)))  # a moved run
    # What is trained and how may not.
    with pytest.raises(ConfigError, match=r"holds a run trained with another config \(lr: 0\.003 -> 0\.5\)") as err:
        run.check_continues(load_config("toy", toy_overrides(run.root, lr=0.5)))
    assert "\n" not in str(err.value) and "choose another run_dir" in str(err.value)
    with pytest.raises(ConfigError, match=r"\(arch\.hidden_size: 16 -> 32; seed: 0 -> 1\)"):
        run.check_continues(load_config("toy", toy_overrides(run.root, seed=1, **{"arch.hidden_size": 32})))
    many = {"lr": 0.1, "seed": 4, "beta1": 0.5, "beta2": 0.5, "weight_decay": 0.0, "ema": True}
    with pytest.raises(ConfigError, match=r"; 1 more\)"):
        run.check_continues(load_config("toy", toy_overrides(run.root, **many)))


def test_resumable_changes_name_real_keys() -> None:
    keys = set(TrainConfig.model_fields)
    assert all(key.split(".")[0] in keys for key in RESUMABLE_CHANGES)
    assert {"lr", "seed", "arch", "data_paths", "global_batch_size", "optimizer"}.isdisjoint(RESUMABLE_CHANGES)


def test_the_shapes_the_data_fills_in_are_no_difference(tmp_path: Path) -> None:
    sorting = write_sorting_puzzles(tmp_path / "sorting", seq_len=6)
    longer = write_sorting_puzzles(tmp_path / "longer", seq_len=8)
    run = RunDir(tmp_path / "run")
    given = load_config(None, ["arch=trm", f"data_paths=[{sorting}]", f"run_dir={run.root}"])
    assert given.arch.seq_len is None
    run.write_config(resolve(given))  # the trainer saves the resolved config
    run.check_continues(given)
    run.write_config(given)  # a config saved unresolved (written by hand or by an importer)
    run.check_continues(resolve(given))
    with pytest.raises(ConfigError, match=r"arch\.seq_len: 6 -> 8; data_paths: \[.*sorting'\] -> \[.*longer'\]"):
        run.check_continues(given.model_copy(update={"data_paths": [str(longer)]}))


def test_a_new_run_is_refused_where_checkpoints_lie(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.check_fresh()
    run.save_checkpoint(2, {"w": torch.zeros(1)}, None, {"step": 2}, keep=3)
    with pytest.raises(ConfigError, match=r"run already holds checkpoints \(step_00000002\) and resume=none .*: "
                                          r"choose another run_dir, or delete them yourself"):
        run.check_fresh()
    run.save_checkpoint(5, {"w": torch.zeros(1)}, None, {"step": 5}, keep=3)
    with pytest.raises(ConfigError, match=r"\(step_00000002 \.\. step_00000005\)"):
        run.check_fresh()


def test_layout_entries_are_the_run_files_that_exist(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert run.layout_entries() == []
    run.write_config(load_config("toy", toy_overrides(run.root)))
    run.save_checkpoint(1, {"w": torch.zeros(1)}, None, {"step": 1}, keep=1)
    run.lock().release()
    run.predictions(1, 0).write_bytes(b"")
    (run.root / "notes.txt").write_text("mine")
    assert run.layout_entries() == [run.config, run.checkpoints, run.predictions(1, 0)]


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_run_files_follow_the_umask(tmp_path: Path, mask: int) -> None:
    previous = os.umask(mask)
    try:
        run = RunDir(tmp_path / "run")
        run.write_config(load_config("toy", toy_overrides(run.root)))
        run.write_readme("# run\n")
        step = run.save_checkpoint(1, {"w": torch.zeros(2)}, {"w": torch.ones(2)}, {"step": 1}, keep=1)
        tokenizer = tmp_path / "tok"
        tokenizer.mkdir()
        (tokenizer / TOKENIZER_FILES[0]).write_text("{}")
        run.save_tokenizer(tokenizer)
        files = [run.config, run.readme, *(step / name for name in (ckpt.MODEL_FILE, ckpt.EMA_FILE, ckpt.STATE_FILE)),
                 run.tokenizer / TOKENIZER_FILES[0]]
        assert {path.name: oct(path.stat().st_mode & 0o777) for path in files} == \
            {path.name: oct(0o666 & ~mask) for path in files}
        assert step.stat().st_mode & 0o777 == 0o777 & ~mask
    finally:
        os.umask(previous)


def test_a_run_directory_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(SmoltrainError, match=r"cannot write .*file/run: Not a directory; a file is in the way of a "
                                             "directory of this path: remove it or choose another path"):
        RunDir(tmp_path / "file" / "run").lock()


def test_errors_are_appended_to_the_run_log(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.append_error("--- first\nTraceback ...") == run.error_log == tmp_path / "run" / "errors.log"
    run.append_error("--- second\n")
    assert run.error_log.read_text() == "--- first\nTraceback ...\n--- second\n"
    (tmp_path / "file").write_text("not a directory")
    assert RunDir(tmp_path / "file").append_error("lost") is None  # the error itself still reaches the user
