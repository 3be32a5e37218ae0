"""Tiny Recursive Model (TRM, arXiv 2510.04871) with its ACT / deep-supervision wrapper.

Read top to bottom: config -> sparse puzzle embedding -> block -> reasoning module -> inner network (one
ACT step) -> ACT wrapper -> carry (de)serialisation -> inference helper.

Numerics and module names follow the reference implementation (``trm.md`` §1), so a reference state dict
(keys ``model.inner.*`` under the loss head) loads by name. Deliberate fixes of reference bugs:

* ``puzzle_emb_ndim=0`` disables the puzzle prefix entirely (the reference still reserves
  ``puzzle_emb_len`` positions and crashes unless the user also sets ``puzzle_emb_len=0``);
* ``no_ACT_continue=False`` works (Q-learning continue target from a second inner forward, as in HRM);
* ``H_init``/``L_init`` are stored as fp32 buffers and cast to the forward dtype at use (the reference
  stores them in the forward dtype; loading either into ours gives the same values at use).

Shapes: ``B`` batch, ``L`` puzzle length (``seq_len``), ``P`` puzzle-prefix positions, ``D`` hidden size.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, model_validator
from torch import nn
from torch.utils.checkpoint import checkpoint

from smoltrain.models.trm_layers import (
    Attention,
    CastedEmbedding,
    CastedLinear,
    CosSin,
    RotaryEmbedding,
    SwiGLU,
    rms_norm,
    trunc_normal_init_,
)

__all__ = [
    "CastedSparseEmbedding",
    "TRM",
    "TRMBlock",
    "TRMCarry",
    "TRMConfig",
    "TRMInner",
    "TRMInnerCarry",
    "TRMReasoningModule",
    "act_inference",
    "act_trace",
    "carry_from_state",
    "carry_to_state",
]

_FLOAT_DTYPES = ("float32", "bfloat16", "float16", "float64")


# ---------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------


class TRMConfig(BaseModel):
    """Architecture of TRM; field names and defaults are those of the reference (``trm.md`` §1.1).

    ``swiglu_multiple`` (ours) is the rounding of SwiGLU inner widths: 256 reproduces the reference;
    small CPU models may use e.g. 32 to avoid padding-dominated MLPs (changes parameter shapes).
    """

    model_config = ConfigDict(extra="forbid")

    batch_size: int  # rows of the sparse puzzle-embedding's per-batch buffer (= per-rank batch)
    seq_len: int
    vocab_size: int
    num_puzzle_identifiers: int
    puzzle_emb_ndim: int = 0  # 0 disables the puzzle embedding (and the prefix)

    H_cycles: int  # paper's T: outer recursions, the first T-1 without gradient
    L_cycles: int  # paper's n: z_L updates per recursion
    H_layers: int = 0  # unused by TRM (kept for config compatibility; HRM uses it)
    L_layers: int  # blocks in the single shared network

    hidden_size: int
    expansion: float
    num_heads: int
    pos_encodings: str  # "rope" | "learned" | anything else = none

    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0

    halt_max_steps: int  # N_sup: maximum ACT (deep-supervision) steps
    halt_exploration_prob: float

    forward_dtype: str = "bfloat16"  # activation dtype; use "float32" on CPU

    mlp_t: bool = False  # token-mixing SwiGLU (MLP-Mixer style) instead of attention
    puzzle_emb_len: int = 16  # prefix positions; 0 => ceil(puzzle_emb_ndim / hidden_size)
    no_ACT_continue: bool = True  # halt on sigmoid(q_halt) > 0.5 only; no Q-learning continue target

    swiglu_multiple: int = 256

    @model_validator(mode="after")
    def _check(self) -> TRMConfig:
        for name in ("batch_size", "seq_len", "vocab_size", "num_puzzle_identifiers", "H_cycles",
                     "L_cycles", "L_layers", "hidden_size", "num_heads", "halt_max_steps", "swiglu_multiple"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.puzzle_emb_ndim < 0 or self.puzzle_emb_len < 0:
            raise ValueError("puzzle_emb_ndim and puzzle_emb_len must be >= 0")
        if self.forward_dtype not in _FLOAT_DTYPES:
            raise ValueError(f"forward_dtype must be one of {_FLOAT_DTYPES}, got {self.forward_dtype!r}")
        if not 0.0 <= self.halt_exploration_prob <= 1.0:
            raise ValueError(f"halt_exploration_prob must be in [0, 1], got {self.halt_exploration_prob}")
        if not self.mlp_t:
            if self.hidden_size % self.num_heads:
                raise ValueError(
                    f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
                )
            if self.pos_encodings == "rope" and (self.hidden_size // self.num_heads) % 2:
                raise ValueError("RoPE needs an even head dimension (hidden_size / num_heads)")
        if self.puzzle_emb_ndim > self.effective_puzzle_emb_len * self.hidden_size:
            raise ValueError(
                f"puzzle_emb_ndim {self.puzzle_emb_ndim} does not fit in puzzle_emb_len "
                f"{self.puzzle_emb_len} x hidden_size {self.hidden_size}; raise puzzle_emb_len or set it to 0"
            )
        return self

    @property
    def effective_puzzle_emb_len(self) -> int:
        """Prefix positions actually used: 0 without a puzzle embedding, else ``puzzle_emb_len`` or the
        ceil-division default."""
        if self.puzzle_emb_ndim == 0:
            return 0
        if self.puzzle_emb_len == 0:
            return -(self.puzzle_emb_ndim // -self.hidden_size)
        return self.puzzle_emb_len

    @property
    def total_seq_len(self) -> int:
        """Positions the network sees: puzzle prefix + puzzle."""
        return self.seq_len + self.effective_puzzle_emb_len

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.forward_dtype)


# ---------------------------------------------------------------------------------------------------
# Sparse puzzle embedding
# ---------------------------------------------------------------------------------------------------


class CastedSparseEmbedding(nn.Module):
    """Per-puzzle embedding table trained by sign-SGD on the rows of the current batch only.

    ``weights [num_ids, ndim]`` is a persistent fp32 *buffer* (not a parameter: it is excluded from
    AdamATan2, the EMA and parameter counts, as in the reference). In training mode the rows of the batch
    are copied into the non-persistent leaf ``local_weights [batch_size, ndim]`` (``requires_grad``) and
    their ids into ``local_ids``; gradients land on ``local_weights.grad`` and ``SparseSignSGD`` writes the
    update back into ``weights``. In eval mode it is a plain lookup. The training batch must have exactly
    ``batch_size`` rows (the sampler drops the last partial batch).
    """

    def __init__(
        self, num_embeddings: int, embedding_dim: int, batch_size: int, init_std: float, cast_to: torch.dtype
    ) -> None:
        super().__init__()
        self.cast_to = cast_to
        self.register_buffer(
            "weights", trunc_normal_init_(torch.empty(num_embeddings, embedding_dim), std=init_std)
        )
        self.register_buffer(
            "local_weights", torch.zeros(batch_size, embedding_dim, requires_grad=True), persistent=False
        )
        self.register_buffer("local_ids", torch.zeros(batch_size, dtype=torch.int32), persistent=False)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.embedding(inputs, self.weights).to(self.cast_to)
        if inputs.shape[0] != self.local_weights.shape[0]:
            raise ValueError(
                f"training batch has {inputs.shape[0]} rows but the puzzle embedding was built for "
                f"batch_size={self.local_weights.shape[0]}"
            )
        with torch.no_grad():
            self.local_weights.copy_(self.weights[inputs])
            self.local_ids.copy_(inputs)
        return self.local_weights.to(self.cast_to)

    def _apply(self, fn: Any, recurse: bool = True) -> CastedSparseEmbedding:
        # ``module.to(device)`` replaces buffers by ``fn(buffer)``, which is a non-leaf when it copies;
        # the optimizer needs ``local_weights`` to stay a leaf that accumulates ``.grad``.
        super()._apply(fn, recurse)
        if not self.local_weights.is_leaf or not self.local_weights.requires_grad:
            self.local_weights = self.local_weights.detach().requires_grad_(True)
        return self


# ---------------------------------------------------------------------------------------------------
# The network f
# ---------------------------------------------------------------------------------------------------


class TRMBlock(nn.Module):
    """Post-norm block: ``h = norm(h + mix(h)); h = norm(h + SwiGLU(h))``, parameter-free RMSNorm.

    ``mix`` is self-attention, or with ``mlp_t`` a SwiGLU over the sequence axis whose residual is
    normalised over the sequence axis as well (reference behaviour).
    """

    def __init__(self, config: TRMConfig) -> None:
        super().__init__()
        self.use_mlp_t = config.mlp_t
        self.norm_eps = config.rms_norm_eps
        if config.mlp_t:
            self.mlp_t = SwiGLU(config.total_seq_len, config.expansion, config.swiglu_multiple)
        else:
            self.self_attn = Attention(
                hidden_size=config.hidden_size,
                head_dim=config.hidden_size // config.num_heads,
                num_heads=config.num_heads,
                causal=False,
            )
        self.mlp = SwiGLU(config.hidden_size, config.expansion, config.swiglu_multiple)

    def forward(self, hidden_states: torch.Tensor, cos_sin: CosSin | None = None) -> torch.Tensor:
        if self.use_mlp_t:
            # [B, P+L, D] -> [B, D, P+L]: the SwiGLU and the norm act on the sequence axis. (A transposed
            # linear was measured faster on CPU than a matmul over dim -2 without the transposes.)
            h = hidden_states.transpose(1, 2)
            h = rms_norm(h + self.mlp_t(h), self.norm_eps)
            hidden_states = h.transpose(1, 2)
        else:
            hidden_states = rms_norm(hidden_states + self.self_attn(cos_sin, hidden_states), self.norm_eps)
        return rms_norm(hidden_states + self.mlp(hidden_states), self.norm_eps)


class TRMReasoningModule(nn.Module):
    """``f(h, injection)``: add the injection once, then run the blocks in order.

    With ``activation_checkpointing`` (set by ``TRM.set_activation_checkpointing``) a call that builds a graph
    (training, gradients on: the last recursion) keeps only its inputs and recomputes its blocks in backward; the
    no-grad recursions are untouched (they keep nothing anyway).
    """

    def __init__(self, layers: list[TRMBlock]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.activation_checkpointing = False

    def forward(
        self, hidden_states: torch.Tensor, injection: torch.Tensor | None, cos_sin: CosSin | None
    ) -> torch.Tensor:
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            # Non-reentrant (as the LM's layers): no RNG is drawn inside, and it accepts a None injection.
            return checkpoint(self._run, hidden_states, injection, cos_sin, use_reentrant=False)
        return self._run(hidden_states, injection, cos_sin)

    def _run(
        self, hidden_states: torch.Tensor, injection: torch.Tensor | None, cos_sin: CosSin | None
    ) -> torch.Tensor:
        if injection is not None:
            hidden_states = hidden_states + injection
        for layer in self.layers:
            hidden_states = layer(hidden_states, cos_sin)
        return hidden_states


# ---------------------------------------------------------------------------------------------------
# One ACT step
# ---------------------------------------------------------------------------------------------------


@dataclass
class TRMInnerCarry:
    """Latent states ``[B, P+L, D]`` in the forward dtype. ``z_H`` is the paper's y (the answer state the
    heads read), ``z_L`` its z (the latent). The single-z variant keeps only ``z_H`` (``z_L is None``)."""

    z_H: torch.Tensor
    z_L: torch.Tensor | None


class TRMInner(nn.Module):
    """Embeddings, the recursion and the two heads: one ACT step without the halting logic.

    Subclasses (HRM, single-z) override ``_build_levels``, ``_init_states`` and ``_recurse`` only.
    """

    def __init__(self, config: TRMConfig) -> None:
        super().__init__()
        self.config = config
        self.forward_dtype = config.torch_dtype
        self.puzzle_emb_len = config.effective_puzzle_emb_len
        hidden = config.hidden_size

        # I/O. Registration order mirrors the reference so state-dict key order matches too.
        self.embed_scale = math.sqrt(hidden)
        embed_init_std = 1.0 / self.embed_scale
        self.embed_tokens = CastedEmbedding(config.vocab_size, hidden, embed_init_std, self.forward_dtype)
        self.lm_head = CastedLinear(hidden, config.vocab_size, bias=False)
        self.q_head = CastedLinear(hidden, 2, bias=True)

        self.puzzle_emb: CastedSparseEmbedding | None = None
        if config.puzzle_emb_ndim > 0:
            # Zero init: every puzzle starts from the same (empty) prefix.
            self.puzzle_emb = CastedSparseEmbedding(
                config.num_puzzle_identifiers, config.puzzle_emb_ndim, config.batch_size, 0.0,
                self.forward_dtype,
            )

        self.rotary_emb: RotaryEmbedding | None = None
        self.embed_pos: CastedEmbedding | None = None
        if config.pos_encodings == "rope":
            self.rotary_emb = RotaryEmbedding(
                hidden // config.num_heads, config.total_seq_len, config.rope_theta
            )
        elif config.pos_encodings == "learned":
            self.embed_pos = CastedEmbedding(config.total_seq_len, hidden, embed_init_std, self.forward_dtype)

        self._build_levels()
        self._init_states()

        # q_head starts at sigmoid(-5) ~ 0.007: "do not halt" while the answer is still poor.
        with torch.no_grad():
            self.q_head.weight.zero_()
            assert self.q_head.bias is not None
            self.q_head.bias.fill_(-5.0)

    # -- construction hooks ------------------------------------------------------------------------

    def _build_levels(self) -> None:
        """TRM: one shared network for both the z_L and the z_H update."""
        self.L_level = TRMReasoningModule([TRMBlock(self.config) for _ in range(self.config.L_layers)])

    def _init_states(self) -> None:
        """Fixed (untrained) initial latents, std 1, broadcast to every position; fp32 storage."""
        hidden = self.config.hidden_size
        self.register_buffer("H_init", trunc_normal_init_(torch.empty(hidden), std=1.0))
        self.register_buffer("L_init", trunc_normal_init_(torch.empty(hidden), std=1.0))

    # -- carry -------------------------------------------------------------------------------------

    def empty_carry(self, batch_size: int) -> TRMInnerCarry:
        # Zeros rather than ``empty``: every slot is reset before use, but zeros keep saved carries and
        # debugging deterministic at negligible cost.
        shape = (batch_size, self.config.total_seq_len, self.config.hidden_size)
        device = self.H_init.device
        return TRMInnerCarry(
            z_H=torch.zeros(shape, dtype=self.forward_dtype, device=device),
            z_L=torch.zeros(shape, dtype=self.forward_dtype, device=device),
        )

    def reset_carry(self, reset_flag: torch.Tensor, carry: TRMInnerCarry) -> TRMInnerCarry:
        """Slots with ``reset_flag`` restart from ``H_init``/``L_init``; the others keep their latents."""
        flag = reset_flag.view(-1, 1, 1)
        assert carry.z_L is not None
        return TRMInnerCarry(
            z_H=torch.where(flag, self.H_init.to(self.forward_dtype), carry.z_H),
            z_L=torch.where(flag, self.L_init.to(self.forward_dtype), carry.z_L),
        )

    # -- forward -----------------------------------------------------------------------------------

    def input_embeddings(self, inputs: torch.Tensor, puzzle_identifiers: torch.Tensor) -> torch.Tensor:
        """``sqrt(D) * [puzzle prefix; token embeddings] (+ learned positions)`` -> ``[B, P+L, D]``."""
        embedding = self.embed_tokens(inputs.to(torch.int32))
        if self.puzzle_emb is not None:
            puzzle_embedding = self.puzzle_emb(puzzle_identifiers)
            # The puzzle vector fills the prefix row-major; the rest of the prefix stays zero (extra
            # working memory once the latents are mixed in).
            pad_count = self.puzzle_emb_len * self.config.hidden_size - puzzle_embedding.shape[-1]
            if pad_count > 0:
                puzzle_embedding = F.pad(puzzle_embedding, (0, pad_count))
            prefix = puzzle_embedding.view(-1, self.puzzle_emb_len, self.config.hidden_size)
            embedding = torch.cat((prefix, embedding), dim=-2)
        if self.embed_pos is not None:
            # 1/sqrt(2) keeps the variance of the sum of two unit-variance embeddings.
            embedding = 0.707106781 * (embedding + self.embed_pos.embedding_weight.to(self.forward_dtype))
        return self.embed_scale * embedding

    def _cycle(
        self, z_H: torch.Tensor, z_L: torch.Tensor, x: torch.Tensor, cos_sin: CosSin | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One recursion: ``n`` times ``z_L = f(z_L, z_H + x)``, then ``z_H = f(z_H, z_L)``."""
        injection = z_H + x  # constant over the L loop; formed before adding to z_L, as in the reference
        for _ in range(self.config.L_cycles):
            z_L = self.L_level(z_L, injection, cos_sin)
        z_H = self.L_level(z_H, z_L, cos_sin)
        return z_H, z_L

    def _recurse(
        self, z_H: torch.Tensor, z_L: torch.Tensor | None, x: torch.Tensor, cos_sin: CosSin | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``T-1`` recursions without gradient, then one with gradient (backprop through n+1 calls)."""
        assert z_L is not None
        with torch.no_grad():
            for _ in range(self.config.H_cycles - 1):
                z_H, z_L = self._cycle(z_H, z_L, x, cos_sin)
        return self._cycle(z_H, z_L, x, cos_sin)

    def forward(
        self, carry: TRMInnerCarry, batch: Mapping[str, torch.Tensor]
    ) -> tuple[TRMInnerCarry, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Returns ``(detached new carry, logits [B, L, vocab], (q_halt, q_continue) fp32 [B])``."""
        cos_sin = self.rotary_emb() if self.rotary_emb is not None else None
        x = self.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
        z_H, z_L = self._recurse(carry.z_H, carry.z_L, x, cos_sin)

        new_carry = TRMInnerCarry(z_H=z_H.detach(), z_L=z_L.detach() if z_L is not None else None)
        # Slice before the head: same values as the reference's head-then-slice, fewer FLOPs.
        logits = self.lm_head(z_H[:, self.puzzle_emb_len:])
        # Position 0 acts as a CLS token (the puzzle-embedding slot when there is a prefix).
        q_logits = self.q_head(z_H[:, 0]).to(torch.float32)
        return new_carry, logits, (q_logits[..., 0], q_logits[..., 1])


# ---------------------------------------------------------------------------------------------------
# ACT wrapper
# ---------------------------------------------------------------------------------------------------


@dataclass
class TRMCarry:
    """State carried across ACT steps (and optimizer steps in training).

    ``steps`` int32 [B], ``halted`` bool [B], ``current_data`` the batch tensors each slot works on.
    """

    inner_carry: TRMInnerCarry
    steps: torch.Tensor
    halted: torch.Tensor
    current_data: dict[str, torch.Tensor]


class TRM(nn.Module):
    """TRM with adaptive computation time: one ``forward`` call = one deep-supervision step.

    Per call: halted slots restart from the initial latents and take the new batch's sample (other slots
    keep their sample; the new batch's entry for them is dropped), the inner network runs, ``steps`` grows
    and the halting rule decides which slots finish. In eval mode every slot runs exactly
    ``halt_max_steps`` steps. Outputs: ``logits``, ``q_halt_logits``, ``q_continue_logits`` and, when
    training with ``no_ACT_continue=False``, ``target_q_continue``.
    """

    config_class: ClassVar[type[TRMConfig]] = TRMConfig
    inner_class: ClassVar[type[TRMInner]] = TRMInner

    def __init__(self, config: TRMConfig | Mapping[str, Any]) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            data = config.model_dump() if isinstance(config, BaseModel) else dict(config)
            config = self.config_class.model_validate(data)
        self.config = config
        self.inner = self.inner_class(config)

    @property
    def puzzle_emb(self) -> CastedSparseEmbedding | None:
        return self.inner.puzzle_emb

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Activation checkpointing of each recursion step with gradient (every call of the network, ``L_level``
        and HRM's ``H_level``, in the last recursion): its blocks are recomputed in backward instead of kept."""
        for module in self.modules():
            if isinstance(module, TRMReasoningModule):
                module.activation_checkpointing = enabled

    def initial_carry(self, batch: Mapping[str, torch.Tensor]) -> TRMCarry:
        """All slots start halted, so the first call loads the batch into every slot."""
        batch_size = batch["inputs"].shape[0]
        device = batch["inputs"].device
        return TRMCarry(
            inner_carry=self.inner.empty_carry(batch_size),
            steps=torch.zeros(batch_size, dtype=torch.int32, device=device),
            halted=torch.ones(batch_size, dtype=torch.bool, device=device),
            current_data={k: torch.zeros_like(v) for k, v in batch.items()},
        )

    def forward(
        self, carry: TRMCarry, batch: Mapping[str, torch.Tensor]
    ) -> tuple[TRMCarry, dict[str, torch.Tensor]]:
        config = self.config
        halted = carry.halted

        # 1. Reset halted slots and give them the fresh samples.
        inner_carry = self.inner.reset_carry(halted, carry.inner_carry)
        steps = torch.where(halted, 0, carry.steps)
        current_data = {
            k: torch.where(halted.view((-1,) + (1,) * (batch[k].ndim - 1)), batch[k], v)
            for k, v in carry.current_data.items()
        }

        # 2. One ACT step of the network.
        inner_carry, logits, (q_halt, q_continue) = self.inner(inner_carry, current_data)
        outputs = {"logits": logits, "q_halt_logits": q_halt, "q_continue_logits": q_continue}

        # 3. Halting (no gradient; no host sync).
        with torch.no_grad():
            steps = steps + 1
            is_last_step = steps >= config.halt_max_steps
            halted = is_last_step
            if self.training and config.halt_max_steps > 1:
                if config.no_ACT_continue:
                    halted = halted | (q_halt > 0)
                else:
                    halted = halted | (q_halt > q_continue)
                # Exploration: with probability p a slot must run at least U{2..N} steps.
                explore = torch.rand_like(q_halt) < config.halt_exploration_prob
                min_halt_steps = explore * torch.randint_like(steps, low=2, high=config.halt_max_steps + 1)
                halted = halted & (steps >= min_halt_steps)
                if not config.no_ACT_continue:
                    # Q-learning target for "continue" from the next step's Q values (no replay buffer
                    # nor target network; the many parallel slots play that role, as in HRM).
                    _, _, (next_q_halt, next_q_continue) = self.inner(inner_carry, current_data)
                    outputs["target_q_continue"] = torch.sigmoid(
                        torch.where(is_last_step, next_q_halt, torch.maximum(next_q_halt, next_q_continue))
                    )

        return TRMCarry(inner_carry, steps.to(torch.int32), halted, current_data), outputs


# ---------------------------------------------------------------------------------------------------
# Carry (de)serialisation and inference
# ---------------------------------------------------------------------------------------------------


def carry_to_state(carry: TRMCarry) -> dict[str, torch.Tensor]:
    """Flatten a carry into ``{name: tensor}`` (loadable with ``torch.load(weights_only=True)``).

    Keys: ``inner_carry.z_H``, ``inner_carry.z_L`` (absent for single-z), ``steps``, ``halted``,
    ``current_data.<batch key>``.
    """
    state = {"inner_carry.z_H": carry.inner_carry.z_H, "steps": carry.steps, "halted": carry.halted}
    if carry.inner_carry.z_L is not None:
        state["inner_carry.z_L"] = carry.inner_carry.z_L
    state.update({f"current_data.{k}": v for k, v in carry.current_data.items()})
    return state


_STATE_KEY = re.compile(r"^(inner_carry\.z_H|inner_carry\.z_L|steps|halted|current_data\..+)$")


def carry_from_state(state: Mapping[str, torch.Tensor]) -> TRMCarry:
    """Inverse of ``carry_to_state``."""
    unknown = [k for k in state if not _STATE_KEY.match(k)]
    missing = [k for k in ("inner_carry.z_H", "steps", "halted") if k not in state]
    if unknown or missing:
        raise KeyError(f"not a TRM carry state: unknown keys {unknown}, missing keys {missing}")
    prefix = "current_data."
    return TRMCarry(
        inner_carry=TRMInnerCarry(z_H=state["inner_carry.z_H"], z_L=state.get("inner_carry.z_L")),
        steps=state["steps"],
        halted=state["halted"],
        current_data={k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)},
    )


@torch.inference_mode()
def act_inference(model_or_loss_head: nn.Module, batch: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """Full ACT inference on one batch; returns the logits ``[B, seq_len, vocab]`` of every ACT step.

    ``model_or_loss_head`` is a ``TRM`` (or HRM / single-z) or a loss head whose ``.model`` is one.
    ``batch`` needs ``inputs`` and ``puzzle_identifiers`` (int tensors on the model's device). The model
    runs in eval mode (restored afterwards), where every sample takes exactly ``halt_max_steps`` steps, so
    the list has ``halt_max_steps`` entries; the last one is the final prediction.
    """
    return [outputs["logits"] for outputs in act_trace(model_or_loss_head, batch)]


def act_trace(model_or_loss_head: nn.Module, batch: Mapping[str, torch.Tensor],
              max_steps: int | None = None) -> list[dict[str, torch.Tensor]]:
    """The outputs (``logits``, ``q_halt_logits`` ``[B]``, ``q_continue_logits``) of every ACT step, as
    :func:`act_inference` runs them; ``max_steps`` stops earlier than ``halt_max_steps``."""
    model = getattr(model_or_loss_head, "model", model_or_loss_head)
    was_training = model.training
    model.eval()
    try:
        carry = model.initial_carry(batch)
        steps = model.config.halt_max_steps if max_steps is None else min(max_steps, model.config.halt_max_steps)
        all_outputs = []
        for _ in range(steps):
            carry, outputs = model(carry, batch)
            all_outputs.append(outputs)
        return all_outputs
    finally:
        model.train(was_training)
