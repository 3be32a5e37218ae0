"""Variants of TRM that reuse its pieces: HRM (the predecessor) and single-z TRM (paper ablation).

Both have the same forward / carry interface as ``TRM`` (``initial_carry``, ``forward(carry, batch)``,
``TRMCarry``, ``carry_to_state``/``carry_from_state``, ``act_inference``); only the inner recursion and
the modules it needs differ (``trm.md`` §1.9).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import model_validator

from smoltrain.models.trm import (
    TRM,
    TRMBlock,
    TRMConfig,
    TRMInner,
    TRMInnerCarry,
    TRMReasoningModule,
)
from smoltrain.models.trm_layers import CosSin, trunc_normal_init_

__all__ = [
    "HRM",
    "HRMConfig",
    "HRMInner",
    "TRMSingleZ",
    "TRMSingleZConfig",
    "TRMSingleZInner",
]


# ---------------------------------------------------------------------------------------------------
# HRM
# ---------------------------------------------------------------------------------------------------


class HRMConfig(TRMConfig):
    """HRM architecture (reference ``arch/hrm.yaml``: H/L layers 4, H/L cycles 2, rope).

    Same fields as ``TRMConfig``, with the HRM defaults: ``H_layers`` is required, the puzzle prefix is
    ``ceil(puzzle_emb_ndim / hidden_size)`` positions (``puzzle_emb_len=0``), and halting uses
    ``q_halt > q_continue`` with the Q-learning continue target (``no_ACT_continue=False``).
    """

    H_layers: int
    puzzle_emb_len: int = 0
    no_ACT_continue: bool = False

    @model_validator(mode="after")
    def _check_h_layers(self) -> HRMConfig:
        if self.H_layers < 1:
            raise ValueError(f"HRM needs H_layers >= 1, got {self.H_layers}")
        return self


class HRMInner(TRMInner):
    """Two separate networks: ``L_level`` (fast) and ``H_level`` (slow), each its own stack of blocks."""

    def _build_levels(self) -> None:
        self.H_level = TRMReasoningModule([TRMBlock(self.config) for _ in range(self.config.H_layers)])
        self.L_level = TRMReasoningModule([TRMBlock(self.config) for _ in range(self.config.L_layers)])

    def _recurse(
        self, z_H: torch.Tensor, z_L: torch.Tensor | None, x: torch.Tensor, cos_sin: CosSin | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``H_cycles x (L_cycles L-updates + 1 H-update)``; only the very last L- and H-update carry a
        gradient (HRM's 1-step gradient approximation)."""
        assert z_L is not None
        h_cycles, l_cycles = self.config.H_cycles, self.config.L_cycles
        with torch.no_grad():
            for h_step in range(h_cycles):
                injection = z_H + x
                for l_step in range(l_cycles):
                    if h_step == h_cycles - 1 and l_step == l_cycles - 1:
                        break  # the last L-update is the one with gradient
                    z_L = self.L_level(z_L, injection, cos_sin)
                if h_step < h_cycles - 1:
                    z_H = self.H_level(z_H, z_L, cos_sin)
        z_L = self.L_level(z_L, z_H + x, cos_sin)
        z_H = self.H_level(z_H, z_L, cos_sin)
        return z_H, z_L


class HRM(TRM):
    """Hierarchical Reasoning Model with the same ACT wrapper as TRM."""

    config_class: ClassVar[type[TRMConfig]] = HRMConfig
    inner_class: ClassVar[type[TRMInner]] = HRMInner


# ---------------------------------------------------------------------------------------------------
# Single-z TRM
# ---------------------------------------------------------------------------------------------------


class TRMSingleZConfig(TRMConfig):
    """Same fields and defaults as ``TRMConfig``."""


class TRMSingleZInner(TRMInner):
    """Only one latent ``z`` (kept in ``TRMInnerCarry.z_H``, the state the heads read; ``z_L`` is ``None``).

    One recursion: ``n`` times ``z = f(z + x)``, then ``z = f(z)``. ``z`` starts from the buffer ``L_init``, as the
    reference's ``trm_singlez`` names it (there is no ``H_init``), so its checkpoints import by name.
    """

    def _init_states(self) -> None:
        self.register_buffer("L_init", trunc_normal_init_(torch.empty(self.config.hidden_size), std=1.0))
        self._register_load_state_dict_pre_hook(_rename_old_singlez_init)

    def empty_carry(self, batch_size: int) -> TRMInnerCarry:
        shape = (batch_size, self.config.total_seq_len, self.config.hidden_size)
        return TRMInnerCarry(
            z_H=torch.zeros(shape, dtype=self.forward_dtype, device=self.L_init.device), z_L=None
        )

    def reset_carry(self, reset_flag: torch.Tensor, carry: TRMInnerCarry) -> TRMInnerCarry:
        z = torch.where(reset_flag.view(-1, 1, 1), self.L_init.to(self.forward_dtype), carry.z_H)
        return TRMInnerCarry(z_H=z, z_L=None)

    def _cycle_z(self, z: torch.Tensor, x: torch.Tensor, cos_sin: CosSin | None) -> torch.Tensor:
        for _ in range(self.config.L_cycles):
            z = self.L_level(z, x, cos_sin)
        return self.L_level(z, None, cos_sin)

    def _recurse(
        self, z_H: torch.Tensor, z_L: torch.Tensor | None, x: torch.Tensor, cos_sin: CosSin | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = z_H
        with torch.no_grad():
            for _ in range(self.config.H_cycles - 1):
                z = self._cycle_z(z, x, cos_sin)
        return self._cycle_z(z, x, cos_sin), None


def _rename_old_singlez_init(state_dict: dict[str, torch.Tensor], prefix: str, *_args: object) -> None:
    """smoltrain before 0.1.1 named the single-z start state ``H_init``: its runs keep loading."""
    if prefix + "H_init" in state_dict and prefix + "L_init" not in state_dict:
        state_dict[prefix + "L_init"] = state_dict.pop(prefix + "H_init")


class TRMSingleZ(TRM):
    """Single-latent TRM ablation with the same ACT wrapper."""

    config_class: ClassVar[type[TRMConfig]] = TRMSingleZConfig
    inner_class: ClassVar[type[TRMInner]] = TRMSingleZInner
