"""Damaged and mismatched checkpoints through the CLI: one `error:` line (exit 2), never a traceback or a silently
wrong model; a damaged newest checkpoint makes resume and eval use the previous one, with a warning."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import smoltrain
from smoltrain.runs import checkpoint as ckpt
from tests.helpers import run_python, toy_overrides


def _smoltrain(*args: object) -> subprocess.CompletedProcess:
    return run_python(["-m", "smoltrain", *(str(a) for a in args)])


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A toy run with checkpoints at steps 2 and 4 (copy it before damaging it)."""
    run = tmp_path_factory.mktemp("runs") / "toy"
    proc = _smoltrain("train", "toy", *toy_overrides(run, max_steps=4, checkpoint_every=2, eval_every=100))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [p.name for p in ckpt.list_checkpoints(run / "checkpoints")] == ["step_00000002", "step_00000004"]
    return run


def _copy(run: Path, target: Path) -> Path:
    subprocess.run(["cp", "-r", str(run), str(target)], check=True)
    return target


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def test_a_truncated_trainer_state_is_one_line_and_the_previous_checkpoint_is_used(toy_run: Path,
                                                                                    tmp_path: Path) -> None:
    run = _copy(toy_run, tmp_path / "run")
    newest = run / "checkpoints" / "step_00000004"
    _truncate(newest / ckpt.STATE_FILE)
    (run / "checkpoints" / "step_00000009").mkdir()  # an empty folder is not the newest checkpoint

    line = _one_error_line(_smoltrain("eval", run, "--checkpoint", newest))
    assert f"{newest / ckpt.STATE_FILE} is truncated or damaged" in line and f"delete {newest}" in line

    evaluated = _smoltrain("eval", run)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert f"skipping unreadable checkpoint {newest}" in evaluated.stderr
    with pytest.warns(UserWarning, match="skipping unreadable checkpoint"):
        assert smoltrain.load(run, device="cpu").checkpoint == run / "checkpoints" / "step_00000002"

    resumed = _smoltrain("train", "toy", *toy_overrides(run, max_steps=5, eval_every=100, resume="auto"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {run / 'checkpoints' / 'step_00000002'} at step 2" in resumed.stdout
    assert "skipping unreadable checkpoint" in resumed.stderr


def test_a_run_whose_checkpoints_are_all_damaged_refuses_to_start_over(toy_run: Path, tmp_path: Path) -> None:
    run = _copy(toy_run, tmp_path / "run")
    for step_dir in ckpt.list_checkpoints(run / "checkpoints"):
        _truncate(step_dir / ckpt.MODEL_FILE)

    line = _one_error_line(_smoltrain("train", "toy", *toy_overrides(run, max_steps=6, resume="auto")))
    assert f"no checkpoint of {run} verifies (2 damaged or incomplete: step_00000004, step_00000002" in line
    assert line.endswith("pass resume=none to start over")
    assert "error: no checkpoint of" in _one_error_line(_smoltrain("eval", run))
    assert not (run / "checkpoints" / "step_00000006").exists()


def test_weights_of_another_shape_are_one_line(toy_run: Path, tmp_path: Path) -> None:
    run = _copy(toy_run, tmp_path / "run")
    line = _one_error_line(_smoltrain("eval", run, "arch.hidden_size=32"))
    assert f"holds a model of another architecture/shape than {run / 'config.yaml'} with the overrides given" in line
    assert "of another shape (first: " in line and " vs " in line

    line = _one_error_line(_smoltrain("train", "toy", *toy_overrides(run, max_steps=6, **{"arch.hidden_size": 32})))
    assert "holds a model of another architecture/shape than the config given (arch.name=toy)" in line
    assert "use a new run_dir, or the run's own config" in line
