"""Token losses and the ACT loss head of TRM-family models (``trm.md`` §1.7).

Fixes against the reference: stablemax has no NaN-gradient trap (the unused ``where`` branch is
guarded), and ``softmax_cross_entropy`` honours the ignore index / valid mask instead of crashing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from smoltrain.errors import ConfigError
from smoltrain.models.trm import TRMCarry
from smoltrain.runtime.device import widest_float

__all__ = [
    "IGNORE_LABEL_ID",
    "LOSS_TYPES",
    "ACTLossHead",
    "ACTStep",
    "softmax_cross_entropy",
    "stablemax",
    "stablemax_cross_entropy",
]

IGNORE_LABEL_ID = -100


def stablemax(x: torch.Tensor) -> torch.Tensor:
    """``s(x) = 1 / (1 - x + 1e-30)`` for ``x < 0``, else ``x + 1`` (positive, grows linearly).

    Each branch only ever sees inputs from its own domain: the reference evaluates ``1/(1-x)`` on all
    of ``x`` and masks it away, and at ``x == 1`` (common after bf16 rounding) that branch's gradient is
    ``1/(1e-30)**2`` = inf in fp32, so ``0 * inf`` = NaN reaches the logits. Clamping the input of the
    reciprocal branch to ``x <= 0`` keeps every value and gradient finite in any dtype.
    """
    negative = x < 0
    x_neg = torch.where(negative, x, torch.zeros_like(x))
    return torch.where(negative, 1.0 / (1.0 - x_neg + 1e-30), x + 1.0)


def stablemax_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = IGNORE_LABEL_ID,
    valid_mask: torch.Tensor | None = None,
    compute_dtype: torch.dtype | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Per-token stablemax cross entropy ``[...]`` (0 where the label is ignored).

    Computed in ``compute_dtype`` (default: float64, the reference's value, or float32 where the device has no
    float64, as MPS; fp32 is also NaN-free thanks to the guarded ``stablemax``) and returned in that dtype.
    Only the label's probability is formed: ``-(log s(x_y) - log sum s(x))``, which equals the reference's
    ``log(s / sum s)`` gather without materialising the full log-probability tensor.

    ``label_smoothing`` ``e`` defines smoothing as softmax's is (torch's ``F.cross_entropy``) with stablemax's
    probabilities ``p = s(x) / sum s(x)`` in place of softmax's: ``(1 - e) * CE + e * mean over classes of -log p``.
    """
    if valid_mask is None:
        valid_mask = labels != ignore_index
    s_x = stablemax(logits.to(compute_dtype or widest_float(logits.device)))
    safe_labels = torch.where(valid_mask, labels, 0).to(torch.long)
    label_s = s_x.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)
    log_sum = torch.log(s_x.sum(dim=-1))
    log_prob = torch.log(label_s) - log_sum
    if label_smoothing:  # a separate branch, so that 0 computes exactly what it did before smoothing existed
        mean_log_prob = torch.log(s_x).mean(dim=-1) - log_sum
        log_prob = (1 - label_smoothing) * log_prob + label_smoothing * mean_log_prob
    return -torch.where(valid_mask, log_prob, torch.zeros_like(log_prob))


def softmax_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = IGNORE_LABEL_ID,
    valid_mask: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Per-token softmax cross entropy in fp32 ``[...]`` (0 where the label is ignored / not valid);
    ``label_smoothing`` as torch's."""
    if valid_mask is not None:
        labels = torch.where(valid_mask, labels, ignore_index)
    loss = F.cross_entropy(
        logits.to(torch.float32).reshape(-1, logits.shape[-1]),
        labels.to(torch.long).reshape(-1),
        ignore_index=ignore_index,
        reduction="none",
        label_smoothing=label_smoothing,
    )
    return loss.view(labels.shape)


LossFn = Callable[..., torch.Tensor]
LOSS_TYPES: dict[str, LossFn] = {
    "stablemax_cross_entropy": stablemax_cross_entropy,
    "softmax_cross_entropy": softmax_cross_entropy,
}


@dataclass
class ACTStep:
    """What one ACT step of `ACTLossHead` gives back."""

    carry: TRMCarry  # the state for the next step
    # lm_loss + 0.5 * (q_halt_loss + q_continue_loss), lm_loss = sum_b mean_t CE and summed BCE losses (the
    # trainer divides by the global batch size).
    loss: torch.Tensor
    # SUMS over valid = halted & (labelled tokens > 0): count, accuracy (per-sequence token accuracy),
    # exact_accuracy, q_halt_accuracy, steps; and lm_loss, q_halt_loss (+ q_continue_loss) over the whole batch.
    metrics: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]  # the detached model outputs named in return_keys (logits, preds, ...)
    all_halted: torch.Tensor  # 0-dim bool, every slot halted (no host sync here; the caller decides)


class ACTLossHead(nn.Module):
    """Wraps a TRM-family model (attribute ``model``) and computes the deep-supervision loss of one step;
    ``forward`` returns an `ACTStep`."""

    def __init__(self, model: nn.Module, loss_type: str = "stablemax_cross_entropy") -> None:
        super().__init__()
        if loss_type not in LOSS_TYPES:
            raise ConfigError(f"unknown loss_type {loss_type!r}; choose one of {sorted(LOSS_TYPES)}")
        self.model = model
        self.loss_type = loss_type
        self.loss_fn = LOSS_TYPES[loss_type]

    def initial_carry(self, batch: Mapping[str, torch.Tensor]) -> TRMCarry:
        return self.model.initial_carry(batch)

    def forward(
        self,
        carry: TRMCarry,
        batch: Mapping[str, torch.Tensor],
        return_keys: Sequence[str] = (),
        label_smoothing: float = 0.0,
    ) -> ACTStep:
        """One ACT step; ``label_smoothing`` smooths the token loss (training passes the run's, evaluations none)."""
        new_carry, outputs = self.model(carry, batch)
        labels = new_carry.current_data["labels"]  # the labels of the sample each slot worked on
        logits = outputs["logits"]
        q_halt = outputs["q_halt_logits"]

        with torch.no_grad():
            outputs["preds"] = torch.argmax(logits, dim=-1)
            mask = labels != IGNORE_LABEL_ID
            loss_counts = mask.sum(-1)
            loss_divisor = loss_counts.clamp_min(1).unsqueeze(-1)
            is_correct = mask & (outputs["preds"] == labels)
            seq_is_correct = is_correct.sum(-1) == loss_counts

            valid = new_carry.halted & (loss_counts > 0)
            metrics: dict[str, torch.Tensor] = {
                "count": valid.sum(),
                "accuracy": torch.where(valid, (is_correct.float() / loss_divisor).sum(-1), 0).sum(),
                "exact_accuracy": (valid & seq_is_correct).sum(),
                "q_halt_accuracy": (valid & ((q_halt >= 0) == seq_is_correct)).sum(),
                "steps": torch.where(valid, new_carry.steps, 0).sum(),
            }

        token_loss = self.loss_fn(logits, labels, ignore_index=IGNORE_LABEL_ID, valid_mask=mask,
                                  label_smoothing=label_smoothing)
        lm_loss = (token_loss / loss_divisor).sum()
        q_halt_loss = F.binary_cross_entropy_with_logits(
            q_halt, seq_is_correct.to(q_halt.dtype), reduction="sum"
        )
        metrics["lm_loss"] = lm_loss.detach()
        metrics["q_halt_loss"] = q_halt_loss.detach()

        q_continue_loss: torch.Tensor | float = 0.0
        if "target_q_continue" in outputs:
            q_continue_loss = F.binary_cross_entropy_with_logits(
                outputs["q_continue_logits"], outputs["target_q_continue"], reduction="sum"
            )
            metrics["q_continue_loss"] = q_continue_loss.detach()
        # Same association as the reference, so the fp value matches bit for bit.
        loss = lm_loss + 0.5 * (q_halt_loss + q_continue_loss)

        detached = {k: outputs[k].detach() for k in return_keys if k in outputs}
        return ACTStep(new_carry, loss, metrics, detached, new_carry.halted.all())
