"""The frozen models a family's training step reads besides the model it trains (``Family.frozen_models``): DPO's
reference, a copy of the weights the run started from, and a distillation teacher, another run.

Built by the trainer before the first step and again on resume, and by the loader for an evaluation; never saved
with a checkpoint (a reference can be rebuilt from the checkpoint the run started from, a teacher is its own run).
Building one draws random initial weights before its own are loaded: that happens with the RNG state saved and
restored (``torch.random.fork_rng``), so a run resumed after building its frozen models draws the same random
numbers as the run that never stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from smoltrain.errors import SmoltrainError
from smoltrain.families.base import INITIAL_WEIGHTS, Family

__all__ = ["build_frozen_models", "freeze"]


def freeze(model: nn.Module) -> nn.Module:
    """``model`` in eval mode (no dropout) with no parameter asking for a gradient."""
    model.requires_grad_(False)
    return model.eval()


def build_frozen_models(family: Family, initial_weights: Callable[[], dict[str, torch.Tensor]] | None,
                        device: torch.device) -> dict[str, nn.Module]:
    """The family's frozen models on ``device``; ``initial_weights`` gives the weights the run started from (None
    when it started from none)."""
    from smoltrain.runs.loading import load  # the loader builds runs with families, as this module is used from

    models: dict[str, nn.Module] = {}
    for name, source in family.frozen_models().items():
        with torch.random.fork_rng(devices=[]):  # initial weights drawn here leave the run's RNG where it was
            if source == INITIAL_WEIGHTS:
                if initial_weights is None:
                    raise SmoltrainError(f"the {name} model is a copy of the weights the run started from, and it "
                                         "started from none: add init_from=RUN_DIR")
                model = family.build_model()
                # Keys the start did not set (fresh LoRA adapters: B = 0, no change) keep their initial values.
                model.load_state_dict({**model.state_dict(), **initial_weights()})
            else:
                if not Path(source).is_dir():
                    raise SmoltrainError(f"the {name} run {source} does not exist: give a trained run directory")
                model = load(source, device="cpu", need_data=False).model
        models[name] = freeze(model.to(device))
    return models
