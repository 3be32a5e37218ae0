"""The losses of the LM fine-tuning stages, as pure functions of logits and shifted targets.

``targets`` follow the training rows' convention (``data.chat.SFTRows``): ``targets[b, t]`` is the token after
``input_ids[b, t]`` where that token is supervised (an assistant token), ``-100`` elsewhere (prompt, padding).
Supervised-token cross-entropy (SFT) needs nothing here: it is ``LMForCausalLM``'s loss with these targets.

* :func:`sequence_logprobs`: log-probability of each row's supervised tokens, summed (DPO's sequence score).
* :func:`dpo_loss`: ``-logsigmoid(beta * ((pi_c - pi_r) - (ref_c - ref_r)))`` per pair, and the implicit rewards.
* :func:`distillation_loss`: ``alpha * CE + (1 - alpha) * T^2 * KL(teacher_T || student_T)`` over the supervised
  positions (MiniMind's ``train_distillation.py``), the teacher's vocabulary cut to the student's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE = -100

__all__ = ["DPOTerms", "DistillTerms", "distillation_loss", "dpo_loss", "sequence_logprobs"]


def sequence_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[B]``: the sum over each row's supervised positions of ``log p(targets[b, t])`` (in fp32); logits
    ``[B, T, V]``."""
    mask = targets != IGNORE
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # ignored ids read token 0, then masked
    return (picked * mask).sum(dim=-1)


@dataclass
class DPOTerms:
    """Per pair ``[B]``: the loss, and the implicit rewards ``beta * (policy - reference)`` of each answer."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor, beta: float) -> DPOTerms:
    """DPO (Rafailov et al. 2023) on sequence log-probabilities ``[B]``: ``-logsigmoid(beta * margin)`` with
    ``margin = (pi_c - pi_r) - (ref_c - ref_r)``; log 2 per pair while the policy equals its reference."""
    margin = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)
    return DPOTerms(losses=-F.logsigmoid(beta * margin),
                    chosen_rewards=beta * (policy_chosen - reference_chosen).detach(),
                    rejected_rewards=beta * (policy_rejected - reference_rejected).detach())


@dataclass
class DistillTerms:
    """Means over the supervised positions: the combined loss, its cross-entropy and its KL (before ``T^2``)."""

    loss: torch.Tensor
    ce: torch.Tensor
    kl: torch.Tensor
    positions: int


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                      alpha: float, temperature: float, label_smoothing: float = 0.0) -> DistillTerms:
    """Knowledge distillation over the supervised positions (``targets != -100``), logits ``[B, T, V]``.

    ``CE`` is the student's mean cross-entropy on the targets; ``KL`` the mean over positions of
    ``sum_v p_t(v) (log p_t(v) - log p_s(v))`` with both distributions softened by ``temperature``; the loss is
    ``alpha * CE + (1 - alpha) * T^2 * KL`` (``T^2`` keeps the soft term's gradients on the scale of the hard
    one's, Hinton et al. 2015). A teacher with a larger vocabulary is cut to the student's first ids (a tokenizer
    extended at the end); a smaller one cannot be compared. An all-ignored batch gives 0, not NaN.
    ``label_smoothing`` smooths the CE term's targets only (the KL term already has soft ones: the teacher's).
    """
    vocab = student_logits.shape[-1]
    if teacher_logits.shape[-1] < vocab:
        raise ValueError(f"the teacher's vocabulary ({teacher_logits.shape[-1]}) is smaller than the student's "
                         f"({vocab})")
    mask = targets != IGNORE
    positions = int(mask.sum())
    student = student_logits[mask].float()  # [N, V]: only the supervised positions enter either term
    teacher = teacher_logits[..., :vocab][mask].float()
    denominator = max(positions, 1)
    ce = F.cross_entropy(student, targets[mask], reduction="sum", label_smoothing=label_smoothing) / denominator
    log_student = torch.log_softmax(student / temperature, dim=-1)
    log_teacher = torch.log_softmax(teacher / temperature, dim=-1)
    kl = F.kl_div(log_student, log_teacher, log_target=True, reduction="sum") / denominator
    loss = alpha * ce + (1 - alpha) * temperature**2 * kl
    return DistillTerms(loss=loss, ce=ce.detach(), kl=kl.detach(), positions=positions)
