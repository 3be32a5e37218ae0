"""Tests of the token losses and the ACT loss head (smoltrain.models.trm_loss)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from smoltrain.errors import ConfigError
from smoltrain.models.trm import TRMCarry, TRMInnerCarry
from smoltrain.models.trm_loss import (
    IGNORE_LABEL_ID,
    ACTLossHead,
    softmax_cross_entropy,
    stablemax_cross_entropy,
)


def reference_stablemax_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The straightforward formula, element by element in Python floats (fp64)."""
    out = torch.zeros(labels.shape, dtype=torch.float64)
    flat_logits = logits.double().reshape(-1, logits.shape[-1])
    for i, label in enumerate(labels.reshape(-1).tolist()):
        if label == IGNORE_LABEL_ID:
            continue
        s = [1 / (1 - x + 1e-30) if x < 0 else x + 1 for x in flat_logits[i].tolist()]
        out.view(-1)[i] = -math.log(s[label] / sum(s))
    return out


class FixedOutputModel(nn.Module):
    """Stands in for TRM: returns given outputs and halting state, so the loss head can be checked by hand."""

    def __init__(self, logits: torch.Tensor, q_halt: torch.Tensor, halted: torch.Tensor, steps: torch.Tensor,
                 target_q_continue: torch.Tensor | None = None) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits)
        self.q = nn.Parameter(torch.stack([q_halt, -q_halt], dim=-1))
        self.halted, self.steps, self.target = halted, steps, target_q_continue

    def initial_carry(self, batch: Mapping[str, torch.Tensor]) -> TRMCarry:
        n = batch["inputs"].shape[0]
        return TRMCarry(TRMInnerCarry(torch.zeros(n), None), torch.zeros(n, dtype=torch.int32),
                        torch.ones(n, dtype=torch.bool), {k: torch.zeros_like(v) for k, v in batch.items()})

    def forward(self, carry: TRMCarry, batch: Mapping[str, torch.Tensor]) -> tuple[TRMCarry, dict]:
        outputs = {"logits": self.logits * 1, "q_halt_logits": self.q[:, 0],
                   "q_continue_logits": self.q[:, 1]}
        if self.target is not None:
            outputs["target_q_continue"] = self.target
        return TRMCarry(carry.inner_carry, self.steps, self.halted, dict(batch)), outputs


def test_stablemax_value_matches_reference_formula() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 5) * 3
    logits[0, 0, 2] = 1.0
    logits[1, 1, :] = 0.0
    labels = torch.randint(0, 5, (3, 7))
    labels[2, 3:] = IGNORE_LABEL_ID
    got = stablemax_cross_entropy(logits, labels, ignore_index=IGNORE_LABEL_ID)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, reference_stablemax_ce(logits, labels), rtol=1e-12, atol=1e-12)
    assert torch.all(got[2, 3:] == 0)
    # An explicit valid mask is honoured too.
    mask = labels != IGNORE_LABEL_ID
    torch.testing.assert_close(stablemax_cross_entropy(logits, labels, valid_mask=mask), got)
    # fp32 math: same value to fp32 precision.
    got32 = stablemax_cross_entropy(logits, labels, compute_dtype=torch.float32)
    torch.testing.assert_close(got32.double(), got, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("compute_dtype", [torch.float64, torch.float32])
def test_stablemax_gradient_finite_at_logit_one(compute_dtype: torch.dtype) -> None:
    logits = torch.tensor([[1.0, -2.0, 0.5, 1.0]], requires_grad=True)
    labels = torch.tensor([0])
    stablemax_cross_entropy(logits, labels, compute_dtype=compute_dtype).sum().backward()
    assert torch.isfinite(logits.grad).all()

    # The trap this guards against: the unguarded formula gives NaN in fp32.
    x = logits.detach().clone().requires_grad_()
    s = torch.where(x < 0, 1 / (1 - x + 1e-30), x + 1)
    (-torch.log(s[0, 0] / s.sum())).backward()
    assert torch.isnan(x.grad).any()

    # Gradient value equals the fp64 reference's.
    x64 = logits.detach().double().requires_grad_()
    s64 = torch.where(x64 < 0, 1 / (1 - x64 + 1e-30), x64 + 1)
    (-torch.log(s64[0, 0] / s64.sum())).backward()
    torch.testing.assert_close(logits.grad.double(), x64.grad, rtol=1e-6, atol=1e-6)


def test_stablemax_bf16_logits() -> None:
    logits = torch.tensor([[[1.0, 0.0, -1.0]]], dtype=torch.bfloat16, requires_grad=True)
    loss = stablemax_cross_entropy(logits, torch.tensor([[2]]))
    loss.sum().backward()
    assert logits.grad.dtype == torch.bfloat16 and torch.isfinite(logits.grad.float()).all()
    torch.testing.assert_close(loss, torch.tensor([[-math.log(0.5 / (2 + 1 + 0.5))]], dtype=torch.float64))


def test_softmax_cross_entropy_with_masking() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6)
    labels = torch.randint(0, 6, (2, 4))
    labels[1, 2] = IGNORE_LABEL_ID
    got = softmax_cross_entropy(logits, labels, ignore_index=IGNORE_LABEL_ID)
    expected = -torch.log_softmax(logits, -1).gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    expected[1, 2] = 0
    torch.testing.assert_close(got, expected)
    mask = torch.ones_like(labels, dtype=torch.bool)
    mask[0, 0] = False
    masked = softmax_cross_entropy(logits, labels.clamp_min(0), valid_mask=mask)
    assert masked[0, 0] == 0 and torch.isclose(masked[0, 1], expected[0, 1])


def test_act_loss_head_by_hand() -> None:
    # 3 sequences of 3 tokens, vocab 2. Row 0: all correct; row 1: one wrong, one ignored; row 2: no labels.
    logits = torch.tensor([
        [[2.0, -1.0], [-1.0, 2.0], [0.5, 0.0]],
        [[2.0, -1.0], [2.0, -1.0], [0.0, 3.0]],
        [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]],
    ])
    labels = torch.tensor([[0, 1, 0], [0, 1, IGNORE_LABEL_ID], [IGNORE_LABEL_ID] * 3])
    q_halt = torch.tensor([1.0, 0.5, -2.0])
    halted = torch.tensor([True, True, True])
    steps = torch.tensor([3, 2, 1], dtype=torch.int32)
    target = torch.tensor([0.25, 0.5, 0.75])
    model = FixedOutputModel(logits, q_halt, halted, steps, target)
    head = ACTLossHead(model)
    batch = {"inputs": torch.zeros(3, 3, dtype=torch.long), "labels": labels,
             "puzzle_identifiers": torch.zeros(3, dtype=torch.int32)}
    step = head(head.initial_carry(batch), batch, return_keys=("preds",))
    loss, metrics, outputs, all_finish = step.loss, step.metrics, step.outputs, step.all_halted

    ce = reference_stablemax_ce(logits, labels)
    lm_loss = ce[0].sum() / 3 + ce[1].sum() / 2  # row 2: nothing labelled, divisor clamped to 1, loss 0
    seq_correct = [1.0, 0.0, 1.0]  # a row without labels counts as exactly correct (0 == 0)

    def bce(x: float, y: float) -> float:
        return -(y * math.log(1 / (1 + math.exp(-x))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-x))))

    q_halt_loss = sum(bce(x, y) for x, y in zip(q_halt.tolist(), seq_correct, strict=True))
    q_cont_loss = sum(bce(x, y) for x, y in zip((-q_halt).tolist(), target.tolist(), strict=True))

    torch.testing.assert_close(metrics["lm_loss"], lm_loss)
    assert metrics["q_halt_loss"].item() == pytest.approx(q_halt_loss, rel=1e-6)
    assert metrics["q_continue_loss"].item() == pytest.approx(q_cont_loss, rel=1e-6)
    assert loss.item() == pytest.approx(lm_loss.item() + 0.5 * (q_halt_loss + q_cont_loss), rel=1e-6)
    # Metrics are sums over valid = halted & has labels (rows 0 and 1).
    assert metrics["count"].item() == 2
    assert metrics["accuracy"].item() == pytest.approx(1.0 + 0.5)
    assert metrics["exact_accuracy"].item() == 1
    assert metrics["q_halt_accuracy"].item() == 1  # row 0: q>=0 and correct; row 1: q>=0 but wrong
    assert metrics["steps"].item() == 3 + 2
    assert bool(all_finish)
    assert torch.equal(outputs["preds"], logits.argmax(-1)) and set(outputs) == {"preds"}
    loss.backward()
    assert torch.isfinite(model.logits.grad).all()
    assert torch.all(model.logits.grad[2] == 0)  # no labels, no gradient


def test_act_loss_head_only_halted_rows_count() -> None:
    logits = torch.tensor([[[2.0, -1.0]], [[2.0, -1.0]]])
    labels = torch.tensor([[0], [0]])
    model = FixedOutputModel(logits, torch.tensor([0.0, 0.0]), torch.tensor([False, True]),
                             torch.tensor([4, 7], dtype=torch.int32))
    head = ACTLossHead(model, loss_type="softmax_cross_entropy")
    batch = {"inputs": torch.zeros(2, 1, dtype=torch.long), "labels": labels,
             "puzzle_identifiers": torch.zeros(2, dtype=torch.int32)}
    step = head(head.initial_carry(batch), batch)
    loss, metrics, all_finish = step.loss, step.metrics, step.all_halted
    assert metrics["count"].item() == 1 and metrics["steps"].item() == 7
    assert "q_continue_loss" not in metrics and not bool(all_finish)
    expected_lm = 2 * F.cross_entropy(logits[0], labels[0]).item()  # the lm loss covers every row
    assert metrics["lm_loss"].item() == pytest.approx(expected_lm, rel=1e-6)
    assert loss.item() == pytest.approx(expected_lm + 0.5 * 2 * math.log(2), rel=1e-6)


def test_unknown_loss_type() -> None:
    with pytest.raises(ConfigError):
        ACTLossHead(nn.Identity(), loss_type="hinge")


def test_the_loss_dtype_follows_what_the_device_can_compute() -> None:
    # MPS has no float64: the reference's float64 stablemax loss would fail there, so it runs in float32.
    from smoltrain.runtime.device import widest_float

    assert widest_float(torch.device("mps")) == torch.float32
    assert widest_float(torch.device("cpu")) == widest_float(torch.device("cuda")) == torch.float64
    logits, labels = torch.randn(2, 3, 5), torch.randint(0, 5, (2, 3))
    assert stablemax_cross_entropy(logits, labels).dtype == torch.float64  # on the CPU, the reference's
    torch.testing.assert_close(stablemax_cross_entropy(logits, labels, compute_dtype=torch.float32),
                               stablemax_cross_entropy(logits, labels).float(), rtol=1e-5, atol=1e-6)
