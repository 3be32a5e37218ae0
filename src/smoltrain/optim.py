"""Optimizers that families build: AdamATan2 (the reference TRM optimizer) and the sparse sign-SGD of
TRM's puzzle-embedding table. The schedule and the EMA, which the trainer owns, are in ``train/schedule.py``.

Everything here is pure PyTorch and runs on any device.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


class AdamATan2(torch.optim.Optimizer):
    """Adam with ``atan2`` in place of the epsilon division: the exact update of the reference CUDA kernel.

    Per element, with ``t`` the step after increment::

        p = p * (1 - lr * wd)                                  # decoupled weight decay
        m = lerp(m, g, 1 - beta1);  v = lerp(v, g * g, 1 - beta2)
        p = p - lr / (1 - beta1**t) * atan2(m, sqrt(v) / sqrt(1 - beta2**t))

    Unlike the CUDA-only package it needs no compiler, and it may be built with ``lr=0`` (the trainer
    sets the LR every step).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.0,
    ) -> None:
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"].item()
                m, v = state["exp_avg"], state["exp_avg_sq"]
                grad = p.grad
                p.mul_(1.0 - lr * wd)
                m.lerp_(grad, 1.0 - beta1)
                v.lerp_(grad * grad, 1.0 - beta2)
                step_size = lr / (1.0 - beta1**t)
                denom = v.sqrt().div_(math.sqrt(1.0 - beta2**t))
                p.add_(torch.atan2(m, denom), alpha=-step_size)
        return loss


class SparseSignSGD(torch.optim.Optimizer):
    """Sign-SGD with decoupled weight decay for TRM's sparse puzzle-embedding table.

    The reference ``CastedSparseEmbeddingSignSGD_Distributed``. A param group holds the three buffers of
    a ``CastedSparseEmbedding`` (e.g. ``list(model.puzzle_emb.buffers())``): the table ``weights``
    ``[num_ids, ndim]``, the batch's ``local_ids`` ``[B]`` and ``local_weights`` ``[B, ndim]`` whose
    ``.grad`` the backward filled. One step::

        ids, grad = gather over ranks (when torch.distributed runs with world_size > 1)
        ids = unique(ids); grad[id] = sum of the grads of the rows with that id
        p = weights[ids];  p *= 1 - lr * wd;  p -= lr * sign(grad);  weights[ids] = p

    Only rows seen in the batch are decayed. ``lr=0`` is allowed (the trainer sets the LR each step).
    The optimizer has no per-parameter state; ``state_dict`` holds the hyper-parameters only.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
    ) -> None:
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            # Tell the three buffers apart by their role, as the group is a plain list of tensors.
            local_grad = local_ids = weights = None
            for p in group["params"]:
                if p.requires_grad:
                    local_grad = p.grad
                elif p.ndim == 1:
                    local_ids = p
                elif p.ndim == 2:
                    weights = p
            if local_ids is None or weights is None:
                raise ValueError(
                    "SparseSignSGD needs a param group with local_weights, local_ids and weights"
                )
            if local_grad is None:
                continue  # no backward through the embedding since the last zero_grad
            _sparse_sign_sgd_update(local_grad, local_ids, weights, group["lr"], group["weight_decay"])
        return loss


def _sparse_sign_sgd_update(
    grad: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, lr: float, weight_decay: float
) -> None:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        # Every rank applies the same update to its full copy of the table, so gather all ranks' rows.
        world_size = dist.get_world_size()
        all_grad = grad.new_empty((world_size * grad.shape[0], *grad.shape[1:]))
        all_ids = ids.new_empty(world_size * ids.shape[0])
        # ``all_gather_single`` is the newer name of ``all_gather_into_tensor`` (deprecated in torch 2.13).
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        gather(all_grad, grad.contiguous())
        gather(all_ids, ids.contiguous())
        grad, ids = all_grad, all_ids

    unique_ids, inverse = ids.to(torch.long).unique(return_inverse=True)
    # Several samples of a batch can share an id (e.g. Sudoku's single blank id): sum their grads first.
    summed = grad.new_zeros((unique_ids.shape[0], *grad.shape[1:])).index_add_(0, inverse, grad)
    rows = weights[unique_ids]
    rows.mul_(1.0 - lr * weight_decay).add_(torch.sign(summed).to(rows.dtype), alpha=-lr)
    weights[unique_ids] = rows


def build_adamw(params: list[torch.Tensor], lr: float, betas: tuple[float, float],
                weight_decay: float) -> torch.optim.AdamW:
    """torch's AdamW, with its fused kernel where it has one (CPU and CUDA): one pass over each tensor instead of the
    ~10 elementwise kernels per parameter of the default CPU loop, the same update up to float rounding."""
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused or None)


def split_hidden_matrices(named_params: Iterable[tuple[str, torch.Tensor]],
                          outside: tuple[str, ...]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The trainable parameters as (hidden weight matrices, the rest), the split Muon needs: Muon orthogonalises
    the update of a 2-D matrix that maps hidden states to hidden states; embeddings and output heads (whose names
    contain one of ``outside``), norms and biases (not 2-D) stay with an Adam-type optimizer, as Muon's authors and
    the sic recipe do."""
    matrices, rest = [], []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        is_hidden = p.ndim == 2 and not any(part in name for part in outside)
        (matrices if is_hidden else rest).append(p)
    return matrices, rest


def build_muon(params: list[torch.Tensor], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """torch's Muon (Nesterov momentum 0.95, 5 Newton-Schulz steps; its default shape-dependent LR scale)."""
    return torch.optim.Muon(params, lr=lr, weight_decay=weight_decay)
