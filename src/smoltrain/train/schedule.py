"""The learning-rate schedule and the EMA of the weights: what the trainer applies around every optimizer."""

from __future__ import annotations

import math

import torch
from torch import nn


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """The reference TRM schedule, as a multiplier of each optimizer's own base LR.

    ``step`` counts from 1 (the first optimizer step uses step=1), as in the reference trainer:
    linear warmup ``step / warmup_steps`` while ``step < warmup_steps``, then a cosine from 1 down to
    ``min_ratio`` at ``total_steps``. ``min_ratio = 1`` gives a constant LR after warmup.
    """
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of a model's trainable parameters.

    ``shadow = rate * shadow + (1 - rate) * param`` after every optimizer step. Only parameters with
    ``requires_grad`` are tracked (buffers such as TRM's puzzle-embedding table are not), as in the
    reference. ``swap_into`` exchanges model and shadow weights in place, so evaluating with the EMA
    weights needs no copy of the model.
    """

    def __init__(self, model: nn.Module, rate: float) -> None:
        self.rate = rate
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad
        }

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach(), 1.0 - self.rate)

    @torch.no_grad()
    def swap_into(self, model: nn.Module) -> None:
        """Exchange the model's weights with the shadow weights (call twice to undo)."""
        for name, p in model.named_parameters():
            if name in self.shadow:
                tmp = p.detach().clone()
                p.copy_(self.shadow[name])
                self.shadow[name].copy_(tmp)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:3]}")
        for name, tensor in self.shadow.items():
            tensor.copy_(state[name])
