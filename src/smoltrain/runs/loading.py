"""The Python API: load a trained run and evaluate it.

>>> run = smoltrain.load("runs/demo")      # newest checkpoint, EMA weights when the run used EMA
>>> run.model, run.config                  # the model in eval mode, and its resolved TrainConfig
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from smoltrain.config import TrainConfig
from smoltrain.errors import SmoltrainError
from smoltrain.families import Family, build_family, load_run_config
from smoltrain.runs import checkpoint as ckpt
from smoltrain.runtime.device import pick_device
from smoltrain.runtime.distributed import DistEnv


@dataclass
class LoadedRun:
    model: nn.Module
    config: TrainConfig
    family: Family
    checkpoint: Path
    device: torch.device


def load(run_dir: str | Path, checkpoint: str | Path | None = None, device: str = "auto",
         overrides: list[str] | None = None) -> LoadedRun:
    """Build a run's model from its saved config and load a checkpoint (the newest by default).

    The model comes back in eval mode on ``device``; when the run trained with EMA, the EMA weights
    are loaded, as the reference evaluates and saves them.
    """
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir, overrides)
    if checkpoint is None:
        found = ckpt.list_checkpoints(run_dir / "checkpoints")
        if not found:
            raise SmoltrainError(f"{run_dir} has no checkpoint yet; train it with `smoltrain train` first")
        checkpoint = found[-1]
    model_state, ema_state, _ = ckpt.load_checkpoint(Path(checkpoint))
    dev = pick_device(device)
    family = build_family(cfg, DistEnv(), dev)
    model = family.build_model()
    try:
        model.load_state_dict({**model_state, **(ema_state or {})})
    except RuntimeError as err:  # torch lists every key; the first tells the user enough
        lines = str(err).splitlines()
        first = lines[1].strip() if len(lines) > 1 else str(err)
        raise SmoltrainError(f"checkpoint {checkpoint} does not match {run_dir}/config.yaml: {first}") from None
    model.to(dev).eval()
    return LoadedRun(model=model, config=family.cfg, family=family, checkpoint=Path(checkpoint), device=dev)


def evaluate(run_dir: str | Path, checkpoint: str | Path | None = None, device: str = "auto",
             overrides: list[str] | None = None, report_dir: str | Path | None = None) -> dict[str, float]:
    """The family's evaluation metrics of a trained run.

    Files the evaluation writes for people (ARC's ``submission.json``, ``arc_scores.json``) go to
    ``report_dir``, by default ``RUN_DIR/eval/<checkpoint name>``.
    """
    run = load(run_dir, checkpoint, device, overrides)
    report = Path(report_dir) if report_dir is not None else Path(run_dir) / "eval" / run.checkpoint.name
    with torch.inference_mode():
        return run.family.evaluate(run.model, report_dir=report)
