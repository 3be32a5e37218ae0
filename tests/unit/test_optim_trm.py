"""Optimizers of the TRM recipe: AdamATan2 (formula check) and SparseSignSGD (the puzzle-embedding rule)."""

from __future__ import annotations

import math

import pytest
import torch

from smoltrain.models.trm import TRM, CastedSparseEmbedding
from smoltrain.optim import AdamATan2, SparseSignSGD


def adam_atan2_scalar(p: float, grads: list[float], lr: float, wd: float, b1: float, b2: float) -> float:
    """The CUDA kernel's rule on one scalar, in plain Python floats."""
    m = v = 0.0
    for t, g in enumerate(grads, start=1):
        p = p * (1 - lr * wd)
        m = m + (g - m) * (1 - b1)
        v = v + (g * g - v) * (1 - b2)
        p = p - lr / (1 - b1**t) * math.atan2(m, math.sqrt(v) / math.sqrt(1 - b2**t))
    return p


def make_embedding() -> CastedSparseEmbedding:
    emb = CastedSparseEmbedding(4, 2, batch_size=3, init_std=0.0, cast_to=torch.float32)
    with torch.no_grad():
        emb.weights.copy_(torch.tensor([[1.0, 1.0], [2.0, -2.0], [3.0, 3.0], [4.0, 4.0]]))
    return emb


def backward_rows(emb: CastedSparseEmbedding, ids: list[int], grads: list[list[float]]) -> None:
    out = emb(torch.tensor(ids, dtype=torch.int32))
    (out * torch.tensor(grads)).sum().backward()  # d loss / d row = the given grad


def test_adam_atan2_two_steps_with_weight_decay() -> None:
    lr, wd, b1, b2 = 0.1, 0.5, 0.9, 0.95
    p0 = [1.0, -2.0, 0.0]
    grads = [[0.5, -0.1, 0.0], [-0.2, 0.3, 0.0]]
    param = torch.nn.Parameter(torch.tensor(p0))
    opt = AdamATan2([param], lr=lr, betas=(b1, b2), weight_decay=wd)
    for g in grads:
        param.grad = torch.tensor(g)
        opt.step()

    # By hand, element 0. Step 1: p = 1 * 0.95 = 0.95; m = 0.05, v = 0.0125;
    #   update = 0.1/0.1 * atan2(0.05, sqrt(0.0125)/sqrt(0.05) = 0.5) = atan2(0.05, 0.5) = 0.0996687
    #   p = 0.95 - 0.0996687 = 0.8503313.
    # Step 2: p = 0.8503313 * 0.95 = 0.8078147; m = 0.9*0.05 - 0.02 = 0.025; v = 0.95*0.0125 + 0.05*0.04
    #   = 0.013875; bc1 = 0.19, bc2 = 0.0975; denom = sqrt(0.013875)/sqrt(0.0975) = 0.3772365
    #   update = 0.1/0.19 * atan2(0.025, 0.3772365) = 0.5263158 * 0.0661733 = 0.0348281
    #   p = 0.8078147 - 0.0348281 = 0.7729866.
    assert param[0].item() == pytest.approx(0.7729866, abs=1e-6)
    expected = [adam_atan2_scalar(p, [g[i] for g in grads], lr, wd, b1, b2) for i, p in enumerate(p0)]
    torch.testing.assert_close(param.detach(), torch.tensor(expected), rtol=1e-6, atol=1e-7)
    assert expected[2] == 0.0  # zero grad, zero param: atan2(0, 0) = 0, no NaN


def test_adam_atan2_lr_zero_and_state_dict() -> None:
    param = torch.nn.Parameter(torch.tensor([1.0]))
    opt = AdamATan2([param], lr=0.0, weight_decay=0.1)
    param.grad = torch.tensor([1.0])
    opt.step()
    assert param.item() == 1.0
    state = opt.state_dict()
    opt2 = AdamATan2([param], lr=0.5)
    opt2.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == 0.0 and opt2.state[param]["step"].item() == 1


def test_sparse_sign_sgd_by_hand() -> None:
    emb = make_embedding()
    opt = SparseSignSGD(emb.buffers(), lr=0.1, weight_decay=0.5)
    # id 1 appears twice: its grads are summed *before* the sign: [0.5-1, -1-1] -> sign [-1, -1].
    backward_rows(emb, [1, 3, 1], [[0.5, -1.0], [2.0, 0.0], [-1.0, -1.0]])
    opt.step()
    expected = torch.tensor([
        [1.0, 1.0],  # untouched rows are not decayed
        [2.0 * 0.95 + 0.1, -2.0 * 0.95 + 0.1],  # p * (1 - lr*wd) - lr * sign(g)
        [3.0, 3.0],
        [4.0 * 0.95 - 0.1, 4.0 * 0.95],  # sign(0) = 0: decay only
    ])
    torch.testing.assert_close(emb.weights, expected)

    # After zero_grad there is no gradient: step is a no-op.
    opt.zero_grad()
    opt.step()
    torch.testing.assert_close(emb.weights, expected)


def test_sparse_sign_sgd_lr_zero_and_state_dict() -> None:
    emb = make_embedding()
    opt = SparseSignSGD(emb.buffers(), lr=0.0, weight_decay=1.0)
    before = emb.weights.clone()
    backward_rows(emb, [0, 1, 2], [[1.0, 1.0]] * 3)
    opt.step()
    assert torch.equal(emb.weights, before)
    opt.param_groups[0]["lr"] = 0.25
    opt2 = SparseSignSGD(emb.buffers(), lr=0.0)
    opt2.load_state_dict(opt.state_dict())
    assert opt2.param_groups[0]["lr"] == 0.25 and opt2.param_groups[0]["weight_decay"] == 1.0
    with pytest.raises(ValueError):
        SparseSignSGD(emb.buffers(), lr=-1.0)


def test_sparse_sign_sgd_with_model_touches_only_batch_rows() -> None:
    torch.manual_seed(0)
    model = TRM(dict(
        batch_size=2, seq_len=4, vocab_size=5, num_puzzle_identifiers=6, puzzle_emb_ndim=8, puzzle_emb_len=1,
        H_cycles=1, L_cycles=1, L_layers=1, hidden_size=8, expansion=2, num_heads=2, pos_encodings="rope",
        halt_max_steps=2, halt_exploration_prob=0.0, forward_dtype="float32", swiglu_multiple=8,
    )).train()
    assert model.puzzle_emb is not None
    with torch.no_grad():
        model.puzzle_emb.weights.fill_(1.0)
    opt = SparseSignSGD(model.puzzle_emb.buffers(), lr=0.01, weight_decay=0.1)
    batch = {"inputs": torch.randint(0, 5, (2, 4)),
             "puzzle_identifiers": torch.tensor([4, 1], dtype=torch.int32)}
    _, out = model(model.initial_carry(batch), batch)
    out["logits"].square().sum().backward()
    opt.step()
    changed = (model.puzzle_emb.weights != 1.0).any(-1)
    assert changed.tolist() == [False, True, False, False, True, False]
