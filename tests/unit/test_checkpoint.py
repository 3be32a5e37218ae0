"""The checkpoint format: a manifest written last and verified on load, damaged step directories skipped by the
newest-checkpoint search and left alone by pruning, one line for weights of another model, and TRM's puzzle
embedding of another size reset to its mean row when starting from another run's weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from smoltrain.families import build_family, load_config
from smoltrain.runs import RunDir
from smoltrain.runs import checkpoint as ckpt
from smoltrain.runtime.distributed import DistEnv
from tests.helpers import write_sorting_puzzles

WEIGHTS = {"w": torch.arange(64.0), "b": torch.ones(3)}


def _save(root: Path, step: int, keep: int = 10) -> Path:
    return ckpt.save_checkpoint(root, step, WEIGHTS, {"w": WEIGHTS["w"] * 2}, {"step": step, "optimizers": []}, keep)


def _flip_byte(file: Path, offset: int = -5) -> None:
    data = bytearray(file.read_bytes())
    data[offset] ^= 0xFF
    file.write_bytes(bytes(data))


def test_the_manifest_lists_every_file_and_is_written_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(tmp_path, 3)
    manifest = json.loads((path / ckpt.MANIFEST_FILE).read_text())
    assert sorted(manifest["files"]) == [ckpt.EMA_FILE, ckpt.MODEL_FILE, ckpt.STATE_FILE]
    assert manifest["files"][ckpt.MODEL_FILE]["size"] == (path / ckpt.MODEL_FILE).stat().st_size
    model_state, ema_state, state = ckpt.load_checkpoint(path)
    assert torch.equal(model_state["w"], WEIGHTS["w"]) and ema_state is not None and state["step"] == 3

    def crash(_directory: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "_write_manifest", crash)  # a save that dies before its manifest leaves nothing
    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path, 4)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000003"]


@pytest.mark.parametrize("name", [ckpt.MODEL_FILE, ckpt.EMA_FILE, ckpt.STATE_FILE])
def test_a_flipped_byte_is_an_error_naming_the_file(tmp_path: Path, name: str) -> None:
    path = _save(tmp_path, 1)
    _flip_byte(path / name)
    with pytest.raises(ckpt.CheckpointError, match=rf"{name} is damaged .*sha256.*delete {path}"):
        ckpt.load_checkpoint(path)


def test_a_truncated_file_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = _save(tmp_path, 1)
    file = path / ckpt.STATE_FILE
    file.write_bytes(file.read_bytes()[:40])
    with pytest.raises(ckpt.CheckpointError, match=rf"{ckpt.STATE_FILE} is truncated or damaged"):
        ckpt.load_checkpoint(path)
    (path / ckpt.MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ckpt.CheckpointError, match=rf"{ckpt.MANIFEST_FILE} is damaged"):
        ckpt.load_checkpoint(path)


def test_checkpoints_without_a_manifest_load_with_a_warning_when_their_files_do(tmp_path: Path) -> None:
    path = _save(tmp_path, 1)
    (path / ckpt.MANIFEST_FILE).unlink()  # as written before manifests existed
    with pytest.warns(UserWarning, match="no manifest.json .* not verified"):
        assert ckpt.load_checkpoint(path)[2]["step"] == 1
    state = path / ckpt.STATE_FILE
    state.write_bytes(state.read_bytes()[:100])  # truncated: torch.load fails, in one line
    with pytest.warns(UserWarning), pytest.raises(ckpt.CheckpointError, match=rf"{ckpt.STATE_FILE} cannot be read"):
        ckpt.load_checkpoint(path)
    state.write_bytes(b"")
    with pytest.warns(UserWarning), pytest.raises(ckpt.CheckpointError, match=rf"{ckpt.STATE_FILE} cannot be read"):
        ckpt.load_checkpoint(path)
    model = path / ckpt.MODEL_FILE
    model.write_bytes(model.read_bytes()[:30])
    with pytest.warns(UserWarning), pytest.raises(ckpt.CheckpointError, match=rf"{ckpt.MODEL_FILE} cannot be read"):
        ckpt.load_checkpoint(path)


def test_empty_or_model_only_folders_are_not_checkpoints(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.save_checkpoint(2, WEIGHTS, None, {"step": 2, "optimizers": []}, keep=5)
    run.step_dir(9).mkdir()  # empty
    run.step_dir(7).mkdir()
    ckpt.save_checkpoint(tmp_path / "other", 1, WEIGHTS, None, {}, keep=1)
    (run.step_dir(7) / ckpt.MODEL_FILE).write_bytes((tmp_path / "other/step_00000001" / ckpt.MODEL_FILE).read_bytes())
    with pytest.raises(ckpt.CheckpointError, match=r"step_00000007 is not a complete smoltrain checkpoint"):
        ckpt.load_checkpoint(run.step_dir(7))
    with pytest.warns(UserWarning, match="skipping unreadable checkpoint") as caught:
        found = run.newest_loadable()
    assert found is not None and found[0] == run.step_dir(2)
    assert [str(w.message).split(":")[0] for w in caught] == [f"skipping unreadable checkpoint {run.step_dir(s)}"
                                                              for s in (9, 7)]


def test_a_weights_only_checkpoint_verifies(tmp_path: Path) -> None:
    path = ckpt.save_weights_only(tmp_path, 5, WEIGHTS, {"format": "test"})
    _, ema_state, state = ckpt.load_checkpoint(path)
    assert ema_state is None and state["imported"] == {"format": "test"} and not ckpt.holds_training_state(state)


def test_when_no_step_folder_verifies_the_search_refuses(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert run.newest_loadable() is None  # nothing at all: a fresh run
    for step in (1, 2):
        run.save_checkpoint(step, WEIGHTS, None, {"step": step}, keep=5)
        _flip_byte(run.step_dir(step) / ckpt.MODEL_FILE)
    with pytest.warns(UserWarning), pytest.raises(
            ckpt.CheckpointError, match=rf"no checkpoint of {run.root} verifies \(2 damaged or incomplete: "
                                        r"step_00000002, step_00000001.*\); pass resume=none to start over"):
        run.newest_loadable(fix="pass resume=none to start over")


def test_pruning_counts_and_deletes_only_verified_checkpoints(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        _save(tmp_path, step)
    _flip_byte(tmp_path / "step_00000003" / ckpt.MODEL_FILE)  # damaged: neither counted nor deleted
    (tmp_path / "step_00000004").mkdir()
    (tmp_path / "step_00000004" / "notes.txt").write_text("a person's file")  # not ours: left alone
    _save(tmp_path, 5, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000002", "step_00000003",
                                                                 "step_00000004", "step_00000005"]
    assert (tmp_path / "step_00000004" / "notes.txt").read_text() == "a person's file"
    _save(tmp_path, 6, keep=1)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000003", "step_00000004", "step_00000006"]


def test_resaving_an_older_step_never_prunes_it(tmp_path: Path) -> None:
    for step in (10, 20):
        _save(tmp_path, step)
    _flip_byte(tmp_path / "step_00000020" / ckpt.MODEL_FILE)
    _save(tmp_path, 15, keep=1)  # a resume from step 10 that saved again before reaching step 20
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000015", "step_00000020"]


def test_weights_of_another_model_are_one_line(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    ckpt.check_weights(model, model.state_dict(), tmp_path, "x.yaml", fix="no")  # fits: nothing raised
    other = {"0.weight": torch.zeros(5, 4), "0.bias": torch.zeros(3), "2.weight": torch.zeros(1)}
    with pytest.raises(ckpt.CheckpointError) as caught:
        ckpt.check_weights(model, other, tmp_path / "step_00000001", "RUN/config.yaml", fix="use a new run_dir")
    message = str(caught.value)
    assert "\n" not in message
    assert message == (f"checkpoint {tmp_path / 'step_00000001'} holds a model of another architecture/shape than "
                       "RUN/config.yaml: 2 missing keys (first: 1.weight), 1 unexpected (first: 2.weight), "
                       "1 of another shape (first: 0.weight (5, 4) vs (3, 4)); use a new run_dir")


def _trm_family(data: Path):
    cfg = load_config("trm-sudoku-cpu", [f"data_paths=[{data}]", "data_paths_test=[]", "arch.hidden_size=16",
                                         "arch.num_heads=2", "arch.puzzle_emb_ndim=16", "global_batch_size=8",
                                         "device=cpu", "evaluators=[]"])
    return build_family(cfg, DistEnv(), torch.device("cpu"))


def test_a_puzzle_embedding_of_another_size_becomes_its_mean_row(tmp_path: Path) -> None:
    small = _trm_family(write_sorting_puzzles(tmp_path / "a", n_train=16, n_test=8, num_ids=3))
    large = _trm_family(write_sorting_puzzles(tmp_path / "b", n_train=16, n_test=8, num_ids=5))
    source, target = small.build_model(), large.build_model()
    key = "model.inner.puzzle_emb.weights"
    table = torch.randn(3, 16)
    state = {**source.state_dict(), key: table}
    adapted, note = large.adapt_loaded_weights(target, state, tmp_path / "step_00000001")
    assert adapted[key].shape == (5, 16) and torch.equal(adapted[key], table.mean(0, keepdim=True).expand(5, 16))
    assert note == (f"load_checkpoint={tmp_path / 'step_00000001'}: its puzzle embedding has 3 rows, this data 5 "
                    "puzzle ids; every row set to their mean")
    ckpt.check_weights(target, adapted, tmp_path, "the config given", fix="no")  # now it fits
    same, note = small.adapt_loaded_weights(source, state, tmp_path)
    assert same is state and note is None  # a table that fits is left as it is
