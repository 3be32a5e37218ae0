"""The fine-tuning losses (models/lm_losses.py) against hand computations on tiny cases."""

from __future__ import annotations

import math

import pytest
import torch

from smoltrain.models.lm_losses import distillation_loss, dpo_loss, sequence_logprobs

# Hand values are computed in float64 with `math`; the functions run in float32, whose relative rounding is
# ~6e-8 per operation: 1e-6 leaves room for the few operations of these tiny cases and nothing more.
TOL = {"rtol": 1e-6, "atol": 1e-6}


def _log_softmax(row: list[float]) -> list[float]:
    top = max(row)
    log_z = top + math.log(sum(math.exp(x - top) for x in row))
    return [x - log_z for x in row]


def test_sequence_logprobs_sums_the_supervised_positions_only() -> None:
    logits = torch.tensor([[[1.0, 2.0, 0.5], [0.0, 0.0, 3.0], [2.0, -1.0, 0.0]]])  # [1, 3, 3]
    targets = torch.tensor([[1, -100, 0]])  # the middle position is a prompt token
    want = _log_softmax([1.0, 2.0, 0.5])[1] + _log_softmax([2.0, -1.0, 0.0])[0]
    torch.testing.assert_close(sequence_logprobs(logits, targets), torch.tensor([want]), **TOL)
    # A row with nothing supervised scores 0 (not NaN), whatever its logits.
    assert sequence_logprobs(logits, torch.full((1, 3), -100)).item() == 0.0


def test_dpo_loss_is_log2_when_the_policy_is_its_reference() -> None:
    scores = torch.tensor([-3.5, -12.25, -0.75])
    other = torch.tensor([-4.0, -2.0, -9.5])
    terms = dpo_loss(scores, other, scores, other, beta=0.15)
    # The margin is exactly 0, so each loss is -logsigmoid(0) = log 2 to float32's last bit.
    assert torch.equal(terms.losses, torch.full((3,), math.log(2), dtype=torch.float32))
    assert torch.equal(terms.chosen_rewards, torch.zeros(3)) and torch.equal(terms.rejected_rewards, torch.zeros(3))


def test_dpo_loss_against_a_hand_computation() -> None:
    beta = 0.5
    terms = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), beta)
    margin = (-1.0 - -3.0) - (-2.0 - -2.0)  # 2
    torch.testing.assert_close(terms.losses, torch.tensor([math.log1p(math.exp(-beta * margin))]), **TOL)
    torch.testing.assert_close(terms.chosen_rewards, torch.tensor([beta * (-1.0 - -2.0)]), **TOL)
    torch.testing.assert_close(terms.rejected_rewards, torch.tensor([beta * (-3.0 - -2.0)]), **TOL)
    # Its gradient pushes the chosen answer up and the rejected one down.
    chosen, rejected = torch.tensor([-1.0], requires_grad=True), torch.tensor([-3.0], requires_grad=True)
    dpo_loss(chosen, rejected, torch.tensor([-2.0]), torch.tensor([-2.0]), beta).losses.sum().backward()
    assert chosen.grad.item() < 0 < rejected.grad.item()


def _hand_distillation(student: list[list[float]], teacher: list[list[float]], targets: list[int], alpha: float,
                       temperature: float) -> tuple[float, float, float]:
    """(loss, CE, KL) over the positions whose target is not -100, the teacher cut to the student's vocabulary."""
    ces, kls = [], []
    for s, t, y in zip(student, teacher, targets, strict=True):
        if y == -100:
            continue
        ces.append(-_log_softmax(s)[y])
        log_s = _log_softmax([x / temperature for x in s])
        log_t = _log_softmax([x / temperature for x in t[: len(s)]])
        kls.append(sum(math.exp(lt) * (lt - ls) for lt, ls in zip(log_t, log_s, strict=True)))
    ce, kl = sum(ces) / len(ces), sum(kls) / len(kls)
    return alpha * ce + (1 - alpha) * temperature**2 * kl, ce, kl


def test_distillation_loss_against_a_hand_computation() -> None:
    student = [[0.2, -1.0, 1.5], [1.0, 0.0, -0.5], [0.3, 0.3, 2.0]]
    teacher = [[1.0, 0.5, -0.2, 9.0], [-1.0, 2.0, 0.0, 9.0], [0.0, 1.0, 1.0, 9.0]]  # a 4th id the student lacks
    targets = [2, -100, 0]
    alpha, temperature = 0.3, 1.5
    loss, ce, kl = _hand_distillation(student, teacher, targets, alpha, temperature)
    terms = distillation_loss(torch.tensor([student]), torch.tensor([teacher]), torch.tensor([targets]), alpha,
                              temperature)
    assert terms.positions == 2
    torch.testing.assert_close(terms.ce, torch.tensor(ce), **TOL)
    torch.testing.assert_close(terms.kl, torch.tensor(kl), **TOL)
    torch.testing.assert_close(terms.loss, torch.tensor(loss), **TOL)


def test_distillation_loss_limits() -> None:
    logits = torch.tensor([[[0.5, -0.5, 2.0], [1.0, 1.0, 0.0]]])
    targets = torch.tensor([[2, 1]])
    # alpha = 1 is plain cross-entropy; a teacher equal to the student has KL 0.
    same = distillation_loss(logits, logits.clone(), targets, alpha=1.0, temperature=2.0)
    torch.testing.assert_close(same.loss, torch.nn.functional.cross_entropy(logits[0], targets[0]), **TOL)
    assert abs(same.kl.item()) < 1e-7  # KL of a distribution with itself: 0 up to float32 rounding of the logs
    # Nothing supervised: 0, not NaN.
    empty = distillation_loss(logits, logits + 1, torch.full((1, 2), -100), alpha=0.5, temperature=1.0)
    assert empty.loss.item() == 0.0 and empty.positions == 0
    with pytest.raises(ValueError, match="smaller than the student"):
        distillation_loss(logits, logits[..., :2], targets, alpha=0.5, temperature=1.0)
