from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from smoltrain.train.schedule import EMA, warmup_cosine_factor


def test_warmup_is_linear_from_step_one():
    assert warmup_cosine_factor(1, 2000, 10000, 1.0) == pytest.approx(1 / 2000)
    assert warmup_cosine_factor(1000, 2000, 10000, 1.0) == pytest.approx(0.5)


def test_constant_after_warmup_when_min_ratio_is_one():
    assert [warmup_cosine_factor(s, 10, 100, 1.0) for s in (10, 50, 100)] == [1.0, 1.0, 1.0]


def test_cosine_after_warmup_and_at_the_end():
    warmup, total, r = 10, 110, 0.1
    assert warmup_cosine_factor(warmup, warmup, total, r) == pytest.approx(1.0)
    mid = warmup_cosine_factor(60, warmup, total, r)  # progress 0.5 -> halfway between 1 and r
    assert mid == pytest.approx(r + (1 - r) * 0.5)
    quarter = warmup_cosine_factor(35, warmup, total, r)
    assert quarter == pytest.approx(r + (1 - r) * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert warmup_cosine_factor(total, warmup, total, r) == pytest.approx(r)


def test_ema_arithmetic_and_swap():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
    ema = EMA(model, rate=0.9)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 0.0]]))
    ema.update(model)  # 0.9 * [1, 2] + 0.1 * [3, 0]
    assert torch.allclose(ema.shadow["weight"], torch.tensor([[1.2, 1.8]]))
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0.0]]))
    ema.update(model)  # 0.9 * [1.2, 1.8]
    assert torch.allclose(ema.shadow["weight"], torch.tensor([[1.08, 1.62]]))
    ema.swap_into(model)
    assert torch.allclose(model.weight, torch.tensor([[1.08, 1.62]]))
    ema.swap_into(model)
    assert torch.equal(model.weight, torch.zeros(1, 2))


def test_ema_ignores_frozen_parameters():
    model = nn.Linear(2, 2)
    model.bias.requires_grad_(False)
    assert set(EMA(model, 0.99).shadow) == {"weight"}
