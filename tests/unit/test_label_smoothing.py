"""Label smoothing (``label_smoothing=e``): the LM loss, distillation's CE term, TRM's token losses and the
ACT head, against hand computations; 0 changes nothing, bit for bit."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from smoltrain.models.lm import LMConfig, LMForCausalLM
from smoltrain.models.lm_losses import distillation_loss
from smoltrain.models.trm_loss import (
    IGNORE_LABEL_ID,
    ACTLossHead,
    softmax_cross_entropy,
    stablemax_cross_entropy,
)
from tests.unit.test_trm_loss import FixedOutputModel

pytestmark = pytest.mark.usefixtures("single_thread")


def smoothed_by_hand(probs: list[float], label: int, eps: float) -> float:
    """(1 - e) * -log p[label] + e * mean over classes of -log p, in Python floats."""
    return (1 - eps) * -math.log(probs[label]) + eps * sum(-math.log(p) for p in probs) / len(probs)


def tiny_lm() -> LMForCausalLM:
    torch.manual_seed(0)
    return LMForCausalLM(LMConfig(vocab_size=23, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  num_key_value_heads=1, intermediate_size=32, max_position_embeddings=32))


def test_lm_loss_is_torchs_smoothed_cross_entropy_over_the_scored_tokens() -> None:
    model = tiny_lm()
    ids = torch.randint(0, 23, (2, 6))
    targets = torch.randint(0, 23, (2, 6))
    targets[0, :3] = -100  # a prompt (SFT) or padding: not scored, smoothed or not
    out = model(ids, targets=targets, label_smoothing=0.2)
    keep = targets != -100
    logits = out.logits[keep]
    want = F.cross_entropy(logits, targets[keep], label_smoothing=0.2)
    torch.testing.assert_close(out.loss, want)
    # One position by hand: the formula the config documents.
    probs = logits[0].double().softmax(-1).tolist()
    by_hand = smoothed_by_hand(probs, int(targets[keep][0]), 0.2)
    per_token = F.cross_entropy(logits, targets[keep], label_smoothing=0.2, reduction="none")
    assert per_token[0].item() == pytest.approx(by_hand, rel=1e-5)  # fp32 logits: 1e-5 covers their rounding
    # What the ignored positions hold does not matter.
    other = targets.clone()
    other[0, :3] = -100
    assert model(ids, targets=other, label_smoothing=0.2).loss.item() == out.loss.item()


def test_lm_loss_without_smoothing_is_bit_identical() -> None:
    model = tiny_lm()
    ids = torch.randint(0, 23, (2, 6))
    targets = torch.randint(0, 23, (2, 6))
    targets[1, 4:] = -100
    # The same ops on the same machine: equal bits, not merely close.
    assert torch.equal(model(ids, targets=targets).loss, model(ids, targets=targets, label_smoothing=0.0).loss)
    assert model(ids, targets=targets, label_smoothing=0.1).loss.item() != model(ids, targets=targets).loss.item()


def test_distillation_smooths_its_cross_entropy_term_only() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 4, 7), torch.randn(2, 4, 9)
    targets = torch.randint(0, 7, (2, 4))
    targets[1, :2] = -100
    plain = distillation_loss(student, teacher, targets, alpha=0.5, temperature=2.0)
    smooth = distillation_loss(student, teacher, targets, alpha=0.5, temperature=2.0, label_smoothing=0.3)
    keep = targets != -100
    torch.testing.assert_close(smooth.ce, F.cross_entropy(student[keep], targets[keep], label_smoothing=0.3))
    assert torch.equal(smooth.kl, plain.kl)  # the teacher's soft targets are not smoothed again
    torch.testing.assert_close(smooth.loss, 0.5 * smooth.ce + 0.5 * 4.0 * smooth.kl)


def test_stablemax_smoothing_by_hand() -> None:
    logits = torch.tensor([[[1.5, -0.5, 0.0, -2.0], [0.3, 0.2, -1.0, 2.0]]])
    labels = torch.tensor([[2, IGNORE_LABEL_ID]])
    got = stablemax_cross_entropy(logits, labels, label_smoothing=0.2)
    s = [x + 1 if x >= 0 else 1 / (1 - x) for x in logits[0, 0].tolist()]
    probs = [v / sum(s) for v in s]
    # float64 maths on both sides: only the last bits can differ
    assert got[0, 0].item() == pytest.approx(smoothed_by_hand(probs, 2, 0.2), rel=1e-12)
    assert got[0, 1].item() == 0.0  # ignored stays ignored
    # Without smoothing: exactly the unsmoothed function's value.
    assert torch.equal(stablemax_cross_entropy(logits, labels, label_smoothing=0.0),
                       stablemax_cross_entropy(logits, labels))


def test_softmax_token_loss_smoothing_is_torchs() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5)
    labels = torch.randint(0, 5, (2, 3))
    labels[0, 1] = IGNORE_LABEL_ID
    got = softmax_cross_entropy(logits, labels, label_smoothing=0.1)
    want = F.cross_entropy(logits.reshape(-1, 5), labels.reshape(-1), ignore_index=IGNORE_LABEL_ID,
                           label_smoothing=0.1, reduction="none").view(2, 3)
    torch.testing.assert_close(got, want)
    assert got[0, 1] == 0


def test_act_head_smooths_the_token_loss_and_not_the_halting_loss() -> None:
    logits = torch.tensor([[[2.0, -1.0, 0.0], [-1.0, 2.0, 0.5]], [[0.0, 0.0, 1.0], [1.0, 0.0, -1.0]]])
    labels = torch.tensor([[0, 1], [2, IGNORE_LABEL_ID]])
    model = FixedOutputModel(logits, torch.tensor([1.0, -1.0]), torch.tensor([True, True]),
                             torch.tensor([1, 1], dtype=torch.int32))
    head = ACTLossHead(model)
    batch = {"inputs": torch.zeros(2, 2, dtype=torch.long), "labels": labels,
             "puzzle_identifiers": torch.zeros(2, dtype=torch.int32)}
    plain = head(head.initial_carry(batch), batch)
    smooth = head(head.initial_carry(batch), batch, label_smoothing=0.2)
    token = stablemax_cross_entropy(logits, labels, label_smoothing=0.2)
    want_lm = token[0].sum() / 2 + token[1].sum() / 1
    torch.testing.assert_close(smooth.metrics["lm_loss"], want_lm.to(smooth.metrics["lm_loss"].dtype))
    assert torch.equal(smooth.metrics["q_halt_loss"], plain.metrics["q_halt_loss"])
    assert torch.equal(smooth.metrics["exact_accuracy"], plain.metrics["exact_accuracy"])
    assert torch.equal(head(head.initial_carry(batch), batch, label_smoothing=0.0).loss, plain.loss)
