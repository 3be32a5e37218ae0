"""The trainer's guarantees: accumulation, exact resume, atomic checkpoints, signals, NaN guard, DDP."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from smoltrain.families import load_config
from smoltrain.runs import checkpoint as ckpt
from smoltrain.train.logging import read_metrics
from smoltrain.train.trainer import Trainer, TrainingDiverged
from tests.helpers import REPO, RUNNER, read_metrics_safe, run_python, toy_overrides


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt.list_checkpoints(run_dir / "checkpoints")[-1] / ckpt.MODEL_FILE))


def _metric_rows(run_dir: Path) -> list[dict]:
    keep = ("split", "step", "loss", "lr", "grad_norm", "accuracy", "exact_accuracy")
    return [{k: r[k] for k in keep if k in r} for r in read_metrics(run_dir / "metrics.jsonl")]


def _inject_nan_gradients(trainer: Trainer, at_steps: set[int]) -> None:
    real_step = trainer.family.train_step

    def train_step(model, batch, carry):
        out = real_step(model, batch, carry)
        if trainer.step + 1 in at_steps:
            out.loss.register_hook(lambda g: g * float("nan"))  # finite loss, NaN gradients
        return out

    trainer.family.train_step = train_step  # type: ignore[method-assign]


def test_accumulation_matches_one_big_batch(tmp_path):
    grads = []
    for accum in (1, 4):
        cfg = load_config("toy", toy_overrides(tmp_path / f"a{accum}", global_batch_size=32,
                                               grad_accum_steps=accum))
        trainer = Trainer(cfg)
        batch = next(trainer.stream)
        trainer.compute_gradients(batch)
        grads.append([p.grad.clone() for p in trainer.trainable])
    for one, four in zip(*grads, strict=True):
        assert torch.allclose(one, four, atol=1e-6, rtol=0)


def test_sigkill_then_resume_is_bitwise_exact(tmp_path):
    # dropout > 0 so the torch RNG state matters; EMA and evals so their state is covered too.
    common = dict(max_steps=40, checkpoint_every=20, eval_every=10, ema=True, ema_rate=0.9, **{"arch.dropout": 0.1})
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    assert run_python([RUNNER, *toy_overrides(straight, **common)]).returncode == 0
    killed = run_python([RUNNER, "--kill-at-step", "27", *toy_overrides(crashed, **common)])
    assert killed.returncode == -signal.SIGKILL
    assert [p.name for p in ckpt.list_checkpoints(crashed / "checkpoints")] == ["step_00000020"]
    assert max(r["step"] for r in read_metrics(crashed / "metrics.jsonl")) == 27
    resumed = run_python([RUNNER, *toy_overrides(crashed, **common, resume="auto")])
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    a, b = _final_weights(straight), _final_weights(crashed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _metric_rows(straight) == _metric_rows(crashed)


def test_kill_during_checkpoint_write_keeps_previous(tmp_path):
    run = tmp_path / "run"
    args = toy_overrides(run, max_steps=30, checkpoint_every=10)
    proc = run_python([RUNNER, "--kill-in-save", "2", *args])
    assert proc.returncode == -signal.SIGKILL
    complete = ckpt.list_checkpoints(run / "checkpoints")
    assert [p.name for p in complete] == ["step_00000010"]  # the half-written step 20 is not visible
    assert list((run / "checkpoints").glob(".step_00000020.tmp*"))  # it was left as a temp dir
    model_state, _, state = ckpt.load_checkpoint(complete[0])
    assert state["step"] == 10 and model_state
    resumed = run_python([RUNNER, *args])
    assert resumed.returncode == 0, resumed.stderr
    assert [p.name for p in ckpt.list_checkpoints(run / "checkpoints")][-1] == "step_00000030"
    assert not list((run / "checkpoints").glob(".step_*"))  # the next save cleaned the temp dir


def test_sigterm_saves_and_exits_zero(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "smoltrain", "train", "toy",
                             *toy_overrides(run, max_steps=1_000_000)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and len(read_metrics_safe(run)) < 5:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped by SIGTERM" in out
    last = ckpt.list_checkpoints(run / "checkpoints")[-1]
    _, _, state = ckpt.load_checkpoint(last)
    assert state["step"] == max(r["step"] for r in read_metrics(run / "metrics.jsonl")) >= 5


def test_nan_gradient_step_is_skipped_and_logged(tmp_path):
    trainer = Trainer(load_config("toy", toy_overrides(tmp_path / "run", max_steps=6)))
    _inject_nan_gradients(trainer, {3})
    weights_after: dict[int, list[torch.Tensor]] = {}
    trainer.callbacks.append(lambda t: weights_after.__setitem__(t.step, [p.detach().clone() for p in t.trainable]))
    trainer.fit()
    assert all(torch.equal(a, b) for a, b in zip(weights_after[2], weights_after[3], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(weights_after[3], weights_after[4], strict=True))
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    skipped = [r for r in rows if r.get("skipped")]
    assert [r["step"] for r in skipped] == [3] and skipped[0]["grad_norm"] == "nan"
    assert trainer.step == 6


def test_too_many_nonfinite_steps_stop_with_checkpoint_intact(tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(load_config("toy", toy_overrides(run, max_steps=50, checkpoint_every=5,
                                                       max_nonfinite_steps=3)))
    _inject_nan_gradients(trainer, set(range(8, 50)))
    with pytest.raises(TrainingDiverged, match="non-finite for 3 steps in a row.*step_00000005.*intact"):
        trainer.fit()
    assert ckpt.load_checkpoint(ckpt.list_checkpoints(run / "checkpoints")[-1])[2]["step"] == 5


def test_an_unexpected_exception_keeps_its_traceback_in_the_run(tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(load_config("toy", toy_overrides(run, max_steps=5)))

    def fail_at_step_2(t: Trainer) -> None:
        if t.step == 2:
            raise RuntimeError("a bug at step 2")

    trainer.callbacks.append(fail_at_step_2)
    with pytest.raises(RuntimeError, match="a bug at step 2") as raised:
        trainer.fit()
    log = (run / "errors.log").read_text()
    assert "rank 0 step 2: RuntimeError" in log and "Traceback" in log and "fail_at_step_2" in log
    assert raised.value.__notes__ == [f"traceback kept in {run / 'errors.log'}"]
    # A user mistake is not a bug: no log for it.
    trainer = Trainer(load_config("toy", toy_overrides(tmp_path / "diverged", max_steps=5, max_nonfinite_steps=1)))
    _inject_nan_gradients(trainer, {1})
    with pytest.raises(TrainingDiverged):
        trainer.fit()
    assert not (tmp_path / "diverged" / "errors.log").exists()


def test_ddp_two_cpu_processes_match_one(tmp_path):
    args = dict(max_steps=8, global_batch_size=16, eval_every=100)
    single = run_python(["-m", "smoltrain", "train", "toy", *toy_overrides(tmp_path / "one", **args)])
    assert single.returncode == 0, single.stderr
    ddp = run_python(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "smoltrain",
                      "train", "toy", *toy_overrides(tmp_path / "two", **args)], timeout=240)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one, two = ([r for r in read_metrics(tmp_path / name / "metrics.jsonl") if r["split"] == "train"]
                for name in ("one", "two"))
    assert [r["step"] for r in two] == [r["step"] for r in one] == list(range(1, 9))  # rank 0 logs, once
    for a, b in zip(one, two, strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * abs(a["loss"])
    assert len(ckpt.list_checkpoints(tmp_path / "two" / "checkpoints")) == 1


def test_grad_clip_bounds_the_applied_gradient(tmp_path):
    trainer = Trainer(load_config("toy", toy_overrides(tmp_path, grad_clip=0.01)))
    trainer.compute_gradients(next(trainer.stream))
    norm_before = trainer._grad_norm().item()  # clips in place, returns the norm before clipping
    after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.trainable])).item()
    assert norm_before > 0.01 and after == pytest.approx(0.01, rel=1e-4)


def test_each_optimizer_gets_its_base_lr_times_the_schedule(tmp_path):
    from smoltrain.families.base import OptimizerSpec

    trainer = Trainer(load_config("toy", toy_overrides(tmp_path, lr_warmup_steps=4, lr=1e-3)))
    params = list(trainer.model.parameters())
    second = torch.optim.SGD(params[:1], lr=0.0)
    trainer.optimizers.append(OptimizerSpec(second, base_lr=0.5))
    trainer.train_step(next(trainer.stream))  # step 1 of a 4-step warmup: factor 1/4
    assert trainer.optimizers[0].optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 / 4)
    assert second.param_groups[0]["lr"] == pytest.approx(0.5 / 4)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_trains_on_cpu(tmp_path, precision):
    # CUDA is where these pay off; on the CPU this checks the autocast and GradScaler plumbing.
    trainer = Trainer(load_config("toy", toy_overrides(tmp_path, precision=precision, max_steps=3)))
    assert (trainer.scaler is not None) == (precision == "fp16")
    trainer.fit()
    losses = [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
