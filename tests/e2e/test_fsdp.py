"""strategy=fsdp under torchrun (2 CPU processes on gloo): the same training as strategy=ddp, exact resume, and
checkpoints one process reads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from smoltrain.errors import ConfigError
from smoltrain.families import load_config
from smoltrain.runs import checkpoint as ckpt
from smoltrain.train.logging import read_metrics
from smoltrain.train.trainer import Trainer
from tests.helpers import RUNNER, run_python, toy_overrides
from tests.unit.test_lm_training import TINY, text_data  # noqa: F401

STEPS = 20


def _train_2_ranks(text_data: Path, run_dir: Path, *extra: str, kill_at: int = 0):
    """The tiny LM (2 decoder layers, tied head, EMA, clipped gradients) trained by two ranks under torchrun."""
    options = [*TINY, f"data_paths=[{text_data}]", f"max_steps={STEPS}", f"checkpoint_every={STEPS // 2}",
               "grad_clip=1.0", "ema=True", "device=cpu", "optimizer=adamw", f"run_dir={run_dir}", *extra]
    kill = ["--kill-at-step", str(kill_at)] if kill_at else []
    return run_python(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", RUNNER,
                       "--recipe", "lm-pretrain-cpu", *kill, *options], timeout=300)


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["split"] == "train"]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt.list_checkpoints(run_dir / "checkpoints")[-1] / ckpt.MODEL_FILE))


@pytest.fixture(scope="module")
def fsdp_run(text_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("fsdp") / "run"
    result = _train_2_ranks(text_data, run, "strategy=fsdp")
    assert result.returncode == 0, result.stderr[-3000:]
    return run


@pytest.mark.slow  # torchrun trainings: ~1 min each on 2 cores
def test_fsdp_trains_as_ddp_does_and_its_checkpoint_is_a_plain_one(text_data, fsdp_run, tmp_path):
    ddp_run = tmp_path / "ddp"
    result = _train_2_ranks(text_data, ddp_run, "strategy=ddp")
    assert result.returncode == 0, result.stderr[-3000:]
    fsdp_losses, ddp_losses = _losses(fsdp_run), _losses(ddp_run)
    assert len(fsdp_losses) == len(ddp_losses) == STEPS
    # Both sum the same fp32 gradients over the ranks, but in another order (FSDP reduce-scatters each layer's
    # flat shards; ddp all-reduces flat buckets, and clips with the norm of the whole rather than of the shards):
    # a few ulps per step, ~1e-7 relative after 20 steps here, far below 1e-5.
    for a, b in zip(fsdp_losses, ddp_losses, strict=True):
        assert abs(a - b) <= 1e-5 * abs(b)
    fsdp_weights, ddp_weights = _weights(fsdp_run), _weights(ddp_run)
    assert fsdp_weights.keys() == ddp_weights.keys()  # the plain model's names, the tied head included
    assert all(torch.allclose(fsdp_weights[k], ddp_weights[k], rtol=0, atol=1e-5) for k in ddp_weights)
    # The optimizer state in the plain format too: integer ids, full tensors (what a single process loads).
    states = [torch.load(ckpt.list_checkpoints(run / "checkpoints")[-1] / "trainer_state.pt", weights_only=False)
              for run in (fsdp_run, ddp_run)]
    fsdp_opt, ddp_opt = (state["optimizers"][0] for state in states)
    assert fsdp_opt["param_groups"] == ddp_opt["param_groups"] and fsdp_opt["state"].keys() == ddp_opt["state"].keys()
    for i, moments in ddp_opt["state"].items():
        for key, value in moments.items():
            assert fsdp_opt["state"][i][key].shape == value.shape
            assert torch.allclose(fsdp_opt["state"][i][key], value, rtol=1e-4, atol=1e-7), (i, key)
    # One process evaluates it (with its EMA weights), as it evaluates the ddp run.
    scores = []
    for run in (fsdp_run, ddp_run):
        result = run_python(["-m", "smoltrain", "eval", str(run), "--device", "cpu"])
        assert result.returncode == 0, result.stderr[-2000:]
        scores.append(json.loads(result.stdout[result.stdout.index("{"):])["loss"])
    assert scores[0] == pytest.approx(scores[1], rel=1e-5)


@pytest.mark.slow  # torchrun trainings: ~1 min each on 2 cores
def test_fsdp_resumes_exactly_after_a_kill_and_under_ddp_too(text_data, fsdp_run, tmp_path):
    crashed = tmp_path / "crashed"
    killed = _train_2_ranks(text_data, crashed, "strategy=fsdp", kill_at=STEPS // 2 + 1)  # after the step-10 save
    assert killed.returncode != 0  # torchrun reports its SIGKILLed workers
    assert [p.name for p in ckpt.list_checkpoints(crashed / "checkpoints")] == ["step_00000010"]
    under_ddp = tmp_path / "crashed_ddp"
    shutil.copytree(crashed, under_ddp)
    resumed = _train_2_ranks(text_data, crashed, "strategy=fsdp")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # The same shards of the same weights and optimizer state, the same data and RNG: bit for bit.
    assert _losses(crashed) == _losses(fsdp_run)
    straight, again = _weights(fsdp_run), _weights(crashed)
    assert all(torch.equal(straight[k], again[k]) for k in straight)
    # The checkpoint is a plain one: ddp continues it (its own reduction order: within 1e-5, as above).
    resumed = _train_2_ranks(text_data, under_ddp, "strategy=ddp")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    for a, b in zip(_losses(under_ddp), _losses(fsdp_run), strict=True):
        assert abs(a - b) <= 1e-5 * abs(b)


@pytest.mark.parametrize(("recipe", "extra", "refusal"), [
    ("toy", [], "strategy=fsdp shards LM runs (arch=lm), not arch.name=toy"),
    ("lm-pretrain-cpu", ["optimizer=muon"], "strategy=fsdp cannot run optimizer=muon"),
    ("lm-pretrain-cpu", ["optimizer=adamw", "precision=fp16"], "strategy=fsdp has no fp16 loss scaling here"),
])
def test_fsdp_refuses_what_it_does_not_shard_with_one_line(text_data, tmp_path, recipe, extra, refusal):
    overrides = toy_overrides(tmp_path / "run") if recipe == "toy" else \
        [*TINY, f"data_paths=[{text_data}]", f"run_dir={tmp_path / 'run'}", "device=cpu"]
    with pytest.raises(ConfigError) as err:
        Trainer(load_config(recipe, [*overrides, "strategy=fsdp", *extra]))
    assert str(err.value).startswith(refusal) and str(err.value).endswith("or use strategy=ddp")


def test_fsdp_with_one_process_trains_as_plain(text_data, tmp_path):
    common = [*TINY, f"data_paths=[{text_data}]", "max_steps=3", "device=cpu", "optimizer=adamw"]
    for strategy in ("ddp", "fsdp"):
        cfg = load_config("lm-pretrain-cpu", [*common, f"strategy={strategy}", f"run_dir={tmp_path / strategy}"])
        Trainer(cfg).fit()
    assert _losses(tmp_path / "fsdp") == _losses(tmp_path / "ddp")  # the same ops in one process: bit for bit
