"""What one step of each LM fine-tuning stage computes, for ``families.lm.LMFamily`` (``stage=``).

* ``sft``: the LM loss of ``LMFamily`` itself, on chat rows whose targets are -100 outside the assistant turns,
  so only the answers are learnt; nothing here.
* ``dpo``: :func:`dpo_step` / :func:`dpo_eval_sums` score each chosen and rejected answer by the policy and by the
  frozen reference (the weights the run started from) in one forward each (chosen rows, then rejected rows, as
  MiniMind concatenates them), and train on ``-logsigmoid(beta * margin)``.
* ``distill``: :func:`distill_step`: ``alpha * CE + (1 - alpha) * T^2 * KL`` against a frozen teacher's logits.

Losses are normalised as ``StepOutput`` asks (their sum over micro-batches and ranks is the global batch's loss);
metrics are sums over the micro-batch with ``count`` its rows (pairs for DPO).
"""

from __future__ import annotations

import torch
from torch import nn

from smoltrain.families.base import Batch, StepOutput
from smoltrain.models.lm_losses import IGNORE, DPOTerms, distillation_loss, dpo_loss, sequence_logprobs

__all__ = ["DPO_METRICS", "distill_step", "dpo_eval_sums", "dpo_step", "dpo_terms"]

# The DPO metrics, as sums over pairs (``count``): the loss, how often the chosen answer's implicit reward is the
# larger (reward accuracy), by how much (margin), and each reward.
DPO_METRICS = ("dpo_loss", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward")


def _pairs_as_rows(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``[2B, T]`` input ids and targets: the chosen rows, then the rejected rows (both sides share ``seq_len``)."""
    ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])
    targets = torch.cat([batch["chosen_targets"], batch["rejected_targets"]])
    return ids, targets


def dpo_terms(model: nn.Module, reference: nn.Module, batch: Batch,
              beta: float) -> tuple[DPOTerms, torch.Tensor | None, int]:
    """(the pairs' DPO terms, the policy's MoE router loss or None, supervised tokens) of one batch of pairs."""
    ids, targets = _pairs_as_rows(batch)
    out = model(ids)
    policy = sequence_logprobs(out.logits, targets)
    with torch.no_grad():
        ref = sequence_logprobs(reference(ids).logits, targets)
    pairs = ids.shape[0] // 2
    terms = dpo_loss(policy[:pairs], policy[pairs:], ref[:pairs], ref[pairs:], beta)
    return terms, out.aux_loss, int((targets != IGNORE).sum())


def _dpo_sums(terms: DPOTerms) -> dict[str, torch.Tensor]:
    margin = terms.chosen_rewards - terms.rejected_rewards
    return {"count": torch.tensor(float(len(margin))), "dpo_loss": terms.losses.detach().sum(),
            "reward_accuracy": (margin > 0).float().sum(), "reward_margin": margin.sum(),
            "chosen_reward": terms.chosen_rewards.sum(), "rejected_reward": terms.rejected_rewards.sum()}


def dpo_step(model: nn.Module, reference: nn.Module, batch: Batch, beta: float, global_batch_size: int) -> StepOutput:
    terms, aux_loss, tokens = dpo_terms(model, reference, batch, beta)
    pairs = len(terms.losses)
    loss = terms.losses.sum() / global_batch_size
    metrics = {**_dpo_sums(terms), "tokens": torch.tensor(float(tokens))}
    if aux_loss is not None:  # the MoE router's balance loss, weighted by the micro-batch's share as the LM's is
        loss = loss + aux_loss * (pairs / global_batch_size)
        metrics["aux_loss"] = aux_loss.detach() * pairs
    return StepOutput(loss=loss, metrics=metrics)


def dpo_eval_sums(model: nn.Module, reference: nn.Module, batch: Batch, beta: float) -> dict[str, torch.Tensor]:
    """The DPO metric sums (:data:`DPO_METRICS` and ``count``) of one held-out batch of pairs."""
    return _dpo_sums(dpo_terms(model, reference, batch, beta)[0])


def distill_step(model: nn.Module, teacher: nn.Module, batch: Batch, alpha: float, temperature: float,
                 global_batch_size: int, label_smoothing: float = 0.0) -> StepOutput:
    """Knowledge distillation on one micro-batch of chat rows; the loss is weighted by the micro-batch's share of
    the global batch's rows, as the LM family's token-mean loss is."""
    ids, targets = batch["input_ids"], batch["targets"]
    out = model(ids)
    with torch.no_grad():
        teacher_logits = teacher(ids).logits
    terms = distillation_loss(out.logits, teacher_logits, targets, alpha, temperature, label_smoothing)
    rows = ids.shape[0]
    share = rows / global_batch_size
    loss = terms.loss * share
    metrics = {"count": torch.tensor(float(rows)), "lm_loss": terms.ce * rows, "kl": terms.kl * rows,
               "tokens": torch.tensor(float(terms.positions))}
    if out.aux_loss is not None:
        loss = loss + out.aux_loss * share
        metrics["aux_loss"] = out.aux_loss.detach() * rows
    return StepOutput(loss=loss, metrics=metrics)
