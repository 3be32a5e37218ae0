"""A straightforward eager port of the reference TRM training step (the baseline of ``trm_throughput.py``).

    python bench/reference_trm.py --check     # parameter counts + two tiny training steps per arch

Three reference archs: ``trm`` (``trm.py``: mlp_t, RoPE or learned positions), ``hrm`` (``hrm.py``: separate
``H_level``/``L_level``, the 1-step gradient, prefix ``ceil(ndim / D)``, ``q_halt > q_continue`` halting with
the Q-learning target) and ``trm_singlez`` (``trm_singlez.py``: the single latent ``z_L``). The checkpoint
writer (``save_reference_checkpoint``) produces what ``pretrain.py`` saves: ``step_N`` with the loss head's
state dict (``model.inner.*``, ``_orig_mod.``-prefixed when compiled) and ``all_config.yaml``.

Written from the description of the reference code in ``trm.md`` §1-§2 (SamsungSAILMontreal/
TinyRecursiveModels @ e7b6871), computing what the reference computes, *the way* it computes it: no fusion,
no hoisting, no guarded branches. It imports nothing from smoltrain, so the benchmark measures smoltrain
against an independent implementation (and ``reference_parity.py`` checks smoltrain's evaluation against it).
HRM and single-z (``trm.md`` §1.9) were added the same way, their state-dict names and loop order checked
against the reference files. What it keeps from the reference, on purpose:

* ``CastedLinear`` / ``CastedEmbedding`` cast their fp32 weights at every call (the embedding casts the
  whole table, then gathers);
* ``rms_norm`` = ``x.float()`` -> ``x * rsqrt(mean(x²) + eps)`` -> cast back (composite ops);
* SwiGLU widths rounded up to a multiple of 256; ``mlp_t`` = explicit transposes around the token SwiGLU
  and its rms_norm over the last (sequence) axis;
* attention variant: fused qkv, RoPE (rotate_half, fp32) and ``scaled_dot_product_attention``;
* recursion: ``z_H + x`` re-formed inside every L cycle, the first ``H_cycles - 1`` cycles under
  ``torch.no_grad``;
* ACT wrapper with the carry (``torch.where`` resets of latents, steps and data; q_halt > 0 halting and
  exploration);
* loss: stablemax in float64 with the *unguarded* ``where`` (``s(x) = where(x<0, 1/(1-x+eps), x+1)``),
  ``log(s / sum s)`` over the full vocab, gather; q-halt BCE; ``(loss / batch).backward()``;
* AdamATan2 as the reference CUDA kernel's per-element math, a plain loop over parameters.

Deviations (none changes the arithmetic of a step):

* config is a dataclass instead of pydantic; no ``torch.compile``, no distributed code;
* puzzle embedding: the reference's ``CastedSparseEmbedding`` + distributed sign-SGD is replaced by a
  stand-in with the same forward (a buffer table, not a parameter, as in the reference, so parameter
  counts match; the rows of the batch become a leaf that receives the gradient) and a single-process
  sign-SGD step. Sudoku has one puzzle id, so that step touches one row of 512 numbers: negligible cost.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_LABEL_ID = -100


# ---------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------


@dataclass
class RefConfig:
    """The reference ``TinyRecursiveReasoningModel_ACTV1Config`` fields this port uses (``trm.md`` §1.1)."""

    batch_size: int
    seq_len: int
    vocab_size: int
    num_puzzle_identifiers: int
    H_cycles: int
    L_cycles: int
    L_layers: int
    hidden_size: int
    expansion: float
    num_heads: int
    pos_encodings: str  # "rope" | "learned" | anything else = none
    halt_max_steps: int
    halt_exploration_prob: float
    puzzle_emb_ndim: int = 0
    puzzle_emb_len: int = 16  # 0 => ceil(puzzle_emb_ndim / hidden_size); HRM ignores it (always the ceil)
    mlp_t: bool = False
    H_layers: int = 0  # HRM's H_level depth; ignored by TRM and single-z
    no_ACT_continue: bool = True  # TRM / single-z only; HRM always trains the continue head
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    forward_dtype: torch.dtype = torch.bfloat16


def sudoku_mlp_config(batch_size: int = 8, forward_dtype: torch.dtype = torch.float32) -> RefConfig:
    """The paper's Sudoku-Extreme TRM-MLP (5,028,866 parameters)."""
    return RefConfig(
        batch_size=batch_size, seq_len=81, vocab_size=11, num_puzzle_identifiers=1, H_cycles=3, L_cycles=6,
        L_layers=2, hidden_size=512, expansion=4, num_heads=8, pos_encodings="none", halt_max_steps=16,
        halt_exploration_prob=0.1, puzzle_emb_ndim=512, puzzle_emb_len=16, mlp_t=True,
        forward_dtype=forward_dtype,
    )


def sudoku6_config(batch_size: int = 64, forward_dtype: torch.dtype = torch.float32) -> RefConfig:
    """The 6x6 CPU config of ``tiny_trm_cpu.md`` (154,754 parameters)."""
    return RefConfig(
        batch_size=batch_size, seq_len=36, vocab_size=8, num_puzzle_identifiers=1, H_cycles=2, L_cycles=2,
        L_layers=2, hidden_size=64, expansion=4, num_heads=4, pos_encodings="none", halt_max_steps=8,
        halt_exploration_prob=0.1, puzzle_emb_ndim=0, puzzle_emb_len=0, mlp_t=True,
        forward_dtype=forward_dtype,
    )


# ---------------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def trunc_normal_init_(tensor: torch.Tensor, std: float = 1.0, lower: float = -2.0, upper: float = 2.0) -> torch.Tensor:
    """JAX-style truncated normal whose actual std is ``std`` (bounds in units of std)."""
    if std == 0:
        return tensor.zero_()
    sqrt2 = math.sqrt(2.0)
    a, b = math.erf(lower / sqrt2), math.erf(upper / sqrt2)
    z = (b - a) / 2
    c = (2 * math.pi) ** -0.5
    pdf_l, pdf_u = c * math.exp(-0.5 * lower**2), c * math.exp(-0.5 * upper**2)
    comp_std = std / math.sqrt(1 - (upper * pdf_u - lower * pdf_l) / z - ((pdf_u - pdf_l) / z) ** 2)
    tensor.uniform_(a, b).erfinv_().mul_(sqrt2 * comp_std).clip_(lower * comp_std, upper * comp_std)
    return tensor


def rms_norm(hidden_states: torch.Tensor, variance_epsilon: float) -> torch.Tensor:
    input_dtype = hidden_states.dtype
    hidden_states = hidden_states.to(torch.float32)
    variance = hidden_states.square().mean(-1, keepdim=True)
    hidden_states = hidden_states * torch.rsqrt(variance + variance_epsilon)
    return hidden_states.to(input_dtype)


def find_multiple(a: int, b: int) -> int:
    return (-(a // -b)) * b


class CastedLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(
            trunc_normal_init_(torch.empty(out_features, in_features), std=1.0 / math.sqrt(in_features))
        )
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.weight.to(x.dtype), bias=bias)


class CastedEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, init_std: float, cast_to: torch.dtype) -> None:
        super().__init__()
        self.cast_to = cast_to
        self.embedding_weight = nn.Parameter(trunc_normal_init_(torch.empty(num_embeddings, embedding_dim),
                                                                std=init_std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.embedding(x, self.embedding_weight.to(self.cast_to))  # cast the table, then gather


class PuzzleEmbedding(nn.Module):
    """Stand-in for the reference ``CastedSparseEmbedding`` (see the module docstring).

    ``weights`` is a buffer (excluded from parameters and AdamATan2, as in the reference); in training the
    batch's rows are copied into the leaf ``local_weights`` whose ``.grad`` the sign-SGD step reads.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, cast_to: torch.dtype) -> None:
        super().__init__()
        self.cast_to = cast_to
        self.register_buffer("weights", torch.zeros(num_embeddings, embedding_dim))  # zero init (reference)
        self.local_weights: torch.Tensor | None = None
        self.local_ids: torch.Tensor | None = None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.embedding(ids, self.weights).to(self.cast_to)
        self.local_weights = self.weights[ids].detach().requires_grad_(True)
        self.local_ids = ids
        return self.local_weights.to(self.cast_to)

    @torch.no_grad()
    def sign_sgd_step(self, lr: float, weight_decay: float) -> None:
        if self.local_weights is None or self.local_weights.grad is None or self.local_ids is None:
            return
        ids, inverse = self.local_ids.to(torch.long).unique(return_inverse=True)
        grad = torch.zeros(ids.shape[0], self.weights.shape[1], device=self.weights.device)
        grad.index_add_(0, inverse, self.local_weights.grad)
        rows = self.weights[ids] * (1.0 - lr * weight_decay) - lr * torch.sign(grad)
        self.weights[ids] = rows
        self.local_weights = None


class RotaryEmbedding(nn.Module):
    def __init__(self, dim: int, max_position_embeddings: int, base: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        freqs = torch.outer(torch.arange(max_position_embeddings, dtype=torch.float32), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cached", emb.cos(), persistent=False)
        self.register_buffer("sin_cached", emb.sin(), persistent=False)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos_cached, self.sin_cached


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    orig_dtype = q.dtype
    q, k = q.to(cos.dtype), k.to(cos.dtype)
    q_embed = (q * cos.unsqueeze(-2)) + (rotate_half(q) * sin.unsqueeze(-2))
    k_embed = (k * cos.unsqueeze(-2)) + (rotate_half(k) * sin.unsqueeze(-2))
    return q_embed.to(orig_dtype), k_embed.to(orig_dtype)


class Attention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.head_dim = hidden_size // num_heads
        self.num_heads = num_heads
        self.output_size = self.head_dim * num_heads
        self.qkv_proj = CastedLinear(hidden_size, 3 * self.output_size, bias=False)
        self.o_proj = CastedLinear(self.output_size, hidden_size, bias=False)

    def forward(self, cos_sin: tuple[torch.Tensor, torch.Tensor] | None, hidden_states: torch.Tensor) -> torch.Tensor:
        batch_size, seq_len, _ = hidden_states.shape
        qkv = self.qkv_proj(hidden_states).view(batch_size, seq_len, 3 * self.num_heads, self.head_dim)
        query = qkv[:, :, : self.num_heads]
        key = qkv[:, :, self.num_heads: 2 * self.num_heads]
        value = qkv[:, :, 2 * self.num_heads:]
        if cos_sin is not None:
            query, key = apply_rotary_pos_emb(query, key, *cos_sin)
        # B S H D -> B H S D (the reference uses einops.rearrange, i.e. the same permute)
        query, key, value = (t.permute(0, 2, 1, 3) for t in (query, key, value))
        out = F.scaled_dot_product_attention(query, key, value, is_causal=False)
        out = out.permute(0, 2, 1, 3).reshape(batch_size, seq_len, self.output_size)
        return self.o_proj(out)


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, expansion: float) -> None:
        super().__init__()
        inter = find_multiple(round(expansion * hidden_size * 2 / 3), 256)
        self.gate_up_proj = CastedLinear(hidden_size, inter * 2, bias=False)
        self.down_proj = CastedLinear(inter, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


# ---------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------


def ceil_div(a: int, b: int) -> int:
    return -(a // -b)


def trm_puzzle_emb_len(config: RefConfig) -> int:
    """Prefix positions of ``trm`` / ``trm_singlez``: the field, or ``ceil(ndim / D)`` when it is 0.

    Deviation: without a puzzle embedding there is no prefix (the reference still reserves ``puzzle_emb_len``
    positions and crashes, ``trm.md`` §1.2 pitfall, so no reference checkpoint has that shape).
    """
    if config.puzzle_emb_ndim == 0:
        return 0
    return config.puzzle_emb_len if config.puzzle_emb_len != 0 else ceil_div(config.puzzle_emb_ndim, config.hidden_size)


def hrm_puzzle_emb_len(config: RefConfig) -> int:
    """HRM has no ``puzzle_emb_len`` field: always ``ceil(ndim / D)`` positions (``trm.md`` §1.9)."""
    return ceil_div(config.puzzle_emb_ndim, config.hidden_size)


class Block(nn.Module):
    def __init__(self, config: RefConfig, puzzle_emb_len: int) -> None:
        super().__init__()
        self.config = config
        if config.mlp_t:
            self.mlp_t = SwiGLU(config.seq_len + puzzle_emb_len, config.expansion)
        else:
            self.self_attn = Attention(config.hidden_size, config.num_heads)
        self.mlp = SwiGLU(config.hidden_size, config.expansion)
        self.norm_eps = config.rms_norm_eps

    def forward(self, cos_sin: tuple[torch.Tensor, torch.Tensor] | None, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.config.mlp_t:
            hidden_states = hidden_states.transpose(1, 2)  # B, D, L: mix tokens, normalise over tokens
            out = self.mlp_t(hidden_states)
            hidden_states = rms_norm(hidden_states + out, variance_epsilon=self.norm_eps)
            hidden_states = hidden_states.transpose(1, 2)
        else:
            hidden_states = rms_norm(hidden_states + self.self_attn(cos_sin=cos_sin, hidden_states=hidden_states),
                                     variance_epsilon=self.norm_eps)
        out = self.mlp(hidden_states)
        return rms_norm(hidden_states + out, variance_epsilon=self.norm_eps)


class ReasoningModule(nn.Module):
    def __init__(self, layers: list[Block]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, hidden_states: torch.Tensor, input_injection: torch.Tensor,
                cos_sin: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        hidden_states = hidden_states + input_injection
        for layer in self.layers:
            hidden_states = layer(cos_sin=cos_sin, hidden_states=hidden_states)
        return hidden_states


@dataclass
class InnerCarry:
    z_H: torch.Tensor
    z_L: torch.Tensor


@dataclass
class SingleZInnerCarry:
    z_L: torch.Tensor


@dataclass
class Carry:
    inner_carry: InnerCarry | SingleZInnerCarry
    steps: torch.Tensor
    halted: torch.Tensor
    current_data: dict[str, torch.Tensor]


class Inner(nn.Module):
    """One ACT step: embeddings, the T x (n + 1) recursion, lm and q heads."""

    def __init__(self, config: RefConfig) -> None:
        super().__init__()
        self.config = config
        self.forward_dtype = config.forward_dtype
        self.embed_scale = math.sqrt(config.hidden_size)
        embed_init_std = 1.0 / self.embed_scale
        self.puzzle_emb_len = self.prefix_len(config)

        self.embed_tokens = CastedEmbedding(config.vocab_size, config.hidden_size, embed_init_std,
                                            self.forward_dtype)
        self.lm_head = CastedLinear(config.hidden_size, config.vocab_size, bias=False)
        self.q_head = CastedLinear(config.hidden_size, 2, bias=True)
        if config.puzzle_emb_ndim > 0:
            self.puzzle_emb = PuzzleEmbedding(config.num_puzzle_identifiers, config.puzzle_emb_ndim,
                                              self.forward_dtype)
        total_len = config.seq_len + self.puzzle_emb_len
        if config.pos_encodings == "rope":
            self.rotary_emb = RotaryEmbedding(config.hidden_size // config.num_heads, total_len, config.rope_theta)
        elif config.pos_encodings == "learned":
            self.embed_pos = CastedEmbedding(total_len, config.hidden_size, embed_init_std, self.forward_dtype)

        self.build_reasoning(config)
        with torch.no_grad():
            self.q_head.weight.zero_()
            assert self.q_head.bias is not None
            self.q_head.bias.fill_(-5)

    @staticmethod
    def prefix_len(config: RefConfig) -> int:
        return trm_puzzle_emb_len(config)

    def build_reasoning(self, config: RefConfig) -> None:
        """The shared network ``L_level`` and the fixed initial latents (the forward dtype, as the reference)."""
        self.L_level = ReasoningModule([Block(config, self.puzzle_emb_len) for _ in range(config.L_layers)])
        self.register_buffer("H_init", trunc_normal_init_(torch.empty(config.hidden_size, dtype=self.forward_dtype)))
        self.register_buffer("L_init", trunc_normal_init_(torch.empty(config.hidden_size, dtype=self.forward_dtype)))

    def input_embeddings(self, inputs: torch.Tensor, puzzle_identifiers: torch.Tensor) -> torch.Tensor:
        embedding = self.embed_tokens(inputs.to(torch.int32))
        if self.config.puzzle_emb_ndim > 0:
            puzzle_embedding = self.puzzle_emb(puzzle_identifiers)
            pad_count = self.puzzle_emb_len * self.config.hidden_size - puzzle_embedding.shape[-1]
            if pad_count > 0:
                puzzle_embedding = F.pad(puzzle_embedding, (0, pad_count))
            embedding = torch.cat(
                (puzzle_embedding.view(-1, self.puzzle_emb_len, self.config.hidden_size), embedding), dim=-2
            )
        if self.config.pos_encodings == "learned":
            embedding = 0.707106781 * (embedding + self.embed_pos.embedding_weight.to(self.forward_dtype))
        return self.embed_scale * embedding

    def empty_carry(self, batch_size: int) -> InnerCarry:
        shape = (batch_size, self.config.seq_len + self.puzzle_emb_len, self.config.hidden_size)
        return InnerCarry(z_H=torch.empty(shape, dtype=self.forward_dtype, device=self.H_init.device),
                          z_L=torch.empty(shape, dtype=self.forward_dtype, device=self.H_init.device))

    def reset_carry(self, reset_flag: torch.Tensor, carry: InnerCarry) -> InnerCarry:
        return InnerCarry(z_H=torch.where(reset_flag.view(-1, 1, 1), self.H_init, carry.z_H),
                          z_L=torch.where(reset_flag.view(-1, 1, 1), self.L_init, carry.z_L))

    def forward(self, carry: InnerCarry, batch: dict[str, torch.Tensor]
                ) -> tuple[InnerCarry, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        cos_sin = self.rotary_emb() if self.config.pos_encodings == "rope" else None
        input_embeddings = self.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
        z_H, z_L = carry.z_H, carry.z_L
        with torch.no_grad():
            for _h in range(self.config.H_cycles - 1):
                for _l in range(self.config.L_cycles):
                    z_L = self.L_level(z_L, z_H + input_embeddings, cos_sin=cos_sin)
                z_H = self.L_level(z_H, z_L, cos_sin=cos_sin)
        for _l in range(self.config.L_cycles):
            z_L = self.L_level(z_L, z_H + input_embeddings, cos_sin=cos_sin)
        z_H = self.L_level(z_H, z_L, cos_sin=cos_sin)

        new_carry = InnerCarry(z_H=z_H.detach(), z_L=z_L.detach())
        output = self.lm_head(z_H)[:, self.puzzle_emb_len:]  # head over all positions, then slice
        q_logits = self.q_head(z_H[:, 0]).to(torch.float32)
        return new_carry, output, (q_logits[..., 0], q_logits[..., 1])


class HRMInner(Inner):
    """The reference ``hrm.py`` inner step (``trm.md`` §1.9): two networks and the 1-step gradient.

    ``H_level`` (``H_layers`` blocks) and ``L_level`` (``L_layers`` blocks) are separate; the prefix is always
    ``ceil(puzzle_emb_ndim / hidden_size)`` positions. ``H_cycles`` x (``L_cycles`` L-updates, then one H-update)
    with everything under ``no_grad`` except the very last ``z_L = L(z_L, z_H + x); z_H = H(z_H, z_L)``.
    """

    @staticmethod
    def prefix_len(config: RefConfig) -> int:
        return hrm_puzzle_emb_len(config)

    def build_reasoning(self, config: RefConfig) -> None:
        self.H_level = ReasoningModule([Block(config, self.puzzle_emb_len) for _ in range(config.H_layers)])
        self.L_level = ReasoningModule([Block(config, self.puzzle_emb_len) for _ in range(config.L_layers)])
        self.register_buffer("H_init", trunc_normal_init_(torch.empty(config.hidden_size, dtype=self.forward_dtype)))
        self.register_buffer("L_init", trunc_normal_init_(torch.empty(config.hidden_size, dtype=self.forward_dtype)))

    def forward(self, carry: InnerCarry, batch: dict[str, torch.Tensor]
                ) -> tuple[InnerCarry, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        cos_sin = self.rotary_emb() if self.config.pos_encodings == "rope" else None
        input_embeddings = self.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
        last_h, last_l = self.config.H_cycles - 1, self.config.L_cycles - 1
        with torch.no_grad():
            z_H, z_L = carry.z_H, carry.z_L
            for h_step in range(self.config.H_cycles):
                for l_step in range(self.config.L_cycles):
                    if not (h_step == last_h and l_step == last_l):  # the last L-update is the graded one
                        z_L = self.L_level(z_L, z_H + input_embeddings, cos_sin=cos_sin)
                if h_step != last_h:
                    z_H = self.H_level(z_H, z_L, cos_sin=cos_sin)
        z_L = self.L_level(z_L, z_H + input_embeddings, cos_sin=cos_sin)  # 1-step gradient
        z_H = self.H_level(z_H, z_L, cos_sin=cos_sin)

        new_carry = InnerCarry(z_H=z_H.detach(), z_L=z_L.detach())
        output = self.lm_head(z_H)[:, self.puzzle_emb_len:]
        q_logits = self.q_head(z_H[:, 0]).to(torch.float32)
        return new_carry, output, (q_logits[..., 0], q_logits[..., 1])


class SingleZReasoningModule(nn.Module):
    """``trm_singlez``'s network: the blocks only; the caller adds the input (``z + x``) itself."""

    def __init__(self, layers: list[Block]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, hidden_states: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        for layer in self.layers:
            hidden_states = layer(cos_sin=cos_sin, hidden_states=hidden_states)
        return hidden_states


class SingleZInner(Inner):
    """The reference ``trm_singlez.py`` inner step (``trm.md`` §1.9): one latent ``z_L``, no answer state.

    Per recursion ``z_L = f(z_L + x)`` ``L_cycles`` times, then ``z_L = f(z_L)``; ``H_cycles - 1`` recursions
    under ``no_grad``, then one with gradient. The heads read ``z_L``. Only ``L_init`` exists (no ``H_init``).
    """

    def build_reasoning(self, config: RefConfig) -> None:
        self.L_level = SingleZReasoningModule([Block(config, self.puzzle_emb_len) for _ in range(config.L_layers)])
        self.register_buffer("L_init", trunc_normal_init_(torch.empty(config.hidden_size, dtype=self.forward_dtype)))

    def empty_carry(self, batch_size: int) -> SingleZInnerCarry:  # type: ignore[override]
        shape = (batch_size, self.config.seq_len + self.puzzle_emb_len, self.config.hidden_size)
        return SingleZInnerCarry(z_L=torch.empty(shape, dtype=self.forward_dtype, device=self.L_init.device))

    def reset_carry(self, reset_flag: torch.Tensor, carry: SingleZInnerCarry  # type: ignore[override]
                    ) -> SingleZInnerCarry:
        return SingleZInnerCarry(z_L=torch.where(reset_flag.view(-1, 1, 1), self.L_init, carry.z_L))

    def forward(self, carry: SingleZInnerCarry, batch: dict[str, torch.Tensor]  # type: ignore[override]
                ) -> tuple[SingleZInnerCarry, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        cos_sin = self.rotary_emb() if self.config.pos_encodings == "rope" else None
        input_embeddings = self.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
        z_L = carry.z_L
        with torch.no_grad():
            for _h in range(self.config.H_cycles - 1):
                for _l in range(self.config.L_cycles):
                    z_L = self.L_level(z_L + input_embeddings, cos_sin=cos_sin)
                z_L = self.L_level(z_L, cos_sin=cos_sin)
        for _l in range(self.config.L_cycles):
            z_L = self.L_level(z_L + input_embeddings, cos_sin=cos_sin)
        z_L = self.L_level(z_L, cos_sin=cos_sin)

        new_carry = SingleZInnerCarry(z_L=z_L.detach())
        output = self.lm_head(z_L)[:, self.puzzle_emb_len:]
        q_logits = self.q_head(z_L[:, 0]).to(torch.float32)
        return new_carry, output, (q_logits[..., 0], q_logits[..., 1])


# The reference arch names (``all_config.yaml``'s ``arch.name``) and their inner step.
ARCH_CLASS_PATHS = {
    "trm": "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1",
    "hrm": "recursive_reasoning.hrm@HierarchicalReasoningModel_ACTV1",
    "trm_singlez": "recursive_reasoning.trm_singlez@TinyRecursiveReasoningModel_ACTV1",
}
INNER_CLASSES: dict[str, type[Inner]] = {"trm": Inner, "hrm": HRMInner, "trm_singlez": SingleZInner}


class ACTModel(nn.Module):
    """The ACT / deep-supervision wrapper of ``arch`` (``trm``, ``hrm`` or ``trm_singlez``).

    Training halts on ``q_halt > 0`` (TRM / single-z with ``no_ACT_continue=True``, the reference default) or,
    for HRM always, on ``q_halt > q_continue`` with the Q-learning target from a second inner forward. Eval
    ignores halting: every slot runs ``halt_max_steps`` steps.
    """

    def __init__(self, config: RefConfig, arch: str = "trm") -> None:
        super().__init__()
        self.config = config
        self.arch = arch
        self.inner = INNER_CLASSES[arch](config)

    def initial_carry(self, batch: dict[str, torch.Tensor]) -> Carry:
        batch_size = batch["inputs"].shape[0]
        device = batch["inputs"].device
        return Carry(
            inner_carry=self.inner.empty_carry(batch_size),
            steps=torch.zeros(batch_size, dtype=torch.int32, device=device),
            halted=torch.ones(batch_size, dtype=torch.bool, device=device),
            current_data={k: torch.empty_like(v) for k, v in batch.items()},
        )

    def forward(self, carry: Carry, batch: dict[str, torch.Tensor]) -> tuple[Carry, dict[str, torch.Tensor]]:
        new_inner_carry = self.inner.reset_carry(carry.halted, carry.inner_carry)
        new_steps = torch.where(carry.halted, 0, carry.steps)
        new_current_data = {
            k: torch.where(carry.halted.view((-1,) + (1,) * (batch[k].ndim - 1)), batch[k], v)
            for k, v in carry.current_data.items()
        }
        new_inner_carry, logits, (q_halt_logits, q_continue_logits) = self.inner(new_inner_carry, new_current_data)
        outputs = {"logits": logits, "q_halt_logits": q_halt_logits, "q_continue_logits": q_continue_logits}
        with torch.no_grad():
            new_steps = new_steps + 1
            is_last_step = new_steps >= self.config.halt_max_steps
            halted = is_last_step
            if self.training and self.config.halt_max_steps > 1:
                q_learning = self.arch == "hrm" or not self.config.no_ACT_continue
                if q_learning and self.arch != "hrm":
                    # trm.md §1.5.4: the reference TRM unpacks 5 values from the inner's 3-tuple here.
                    raise ValueError("the reference TRM crashes with no_ACT_continue=False (trm.md §1.5)")
                halted = halted | (q_halt_logits > q_continue_logits if q_learning else q_halt_logits > 0)
                min_halt_steps = (torch.rand_like(q_halt_logits) < self.config.halt_exploration_prob) * \
                    torch.randint_like(new_steps, low=2, high=self.config.halt_max_steps + 1)
                halted = halted & (new_steps >= min_halt_steps)
                if q_learning:
                    next_q_halt, next_q_continue = self.inner(new_inner_carry, new_current_data)[-1]
                    outputs["target_q_continue"] = torch.sigmoid(
                        torch.where(is_last_step, next_q_halt, torch.maximum(next_q_halt, next_q_continue)))
        return Carry(new_inner_carry, new_steps, halted, new_current_data), outputs


# ---------------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------------


def s(x: torch.Tensor, epsilon: float = 1e-30) -> torch.Tensor:
    return torch.where(x < 0, 1 / (1 - x + epsilon), x + 1)


def log_stablemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    s_x = s(x)
    return torch.log(s_x / torch.sum(s_x, dim=dim, keepdim=True))


def stablemax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, valid_mask: torch.Tensor) -> torch.Tensor:
    logprobs = log_stablemax(logits.to(torch.float64), dim=-1)
    transformed_labels = torch.where(valid_mask, labels, 0)
    prediction_logprobs = torch.gather(logprobs, index=transformed_labels.to(torch.long).unsqueeze(-1),
                                       dim=-1).squeeze(-1)
    return -torch.where(valid_mask, prediction_logprobs, 0)


class ACTLossHead(nn.Module):
    def __init__(self, model: ACTModel) -> None:
        super().__init__()
        self.model = model

    def initial_carry(self, batch: dict[str, torch.Tensor]) -> Carry:
        return self.model.initial_carry(batch)

    def forward(self, carry: Carry, batch: dict[str, torch.Tensor]
                ) -> tuple[Carry, torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        new_carry, outputs = self.model(carry, batch)
        labels = new_carry.current_data["labels"]
        with torch.no_grad():
            outputs["preds"] = torch.argmax(outputs["logits"], dim=-1)
            mask = labels != IGNORE_LABEL_ID
            loss_counts = mask.sum(-1)
            loss_divisor = loss_counts.clamp_min(1).unsqueeze(-1)
            is_correct = mask & (outputs["preds"] == labels)
            seq_is_correct = is_correct.sum(-1) == loss_counts
            valid_metrics = new_carry.halted & (loss_counts > 0)
            metrics = {
                "count": valid_metrics.sum(),
                "accuracy": torch.where(valid_metrics, (is_correct.to(torch.float32) / loss_divisor).sum(-1), 0).sum(),
                "exact_accuracy": (valid_metrics & seq_is_correct).sum(),
                "q_halt_accuracy": (valid_metrics & ((outputs["q_halt_logits"] >= 0) == seq_is_correct)).sum(),
                "steps": torch.where(valid_metrics, new_carry.steps, 0).sum(),
            }
        lm_loss = (stablemax_cross_entropy(outputs["logits"], labels, valid_mask=mask) / loss_divisor).sum()
        q_halt_loss = F.binary_cross_entropy_with_logits(outputs["q_halt_logits"],
                                                         seq_is_correct.to(outputs["q_halt_logits"].dtype),
                                                         reduction="sum")
        metrics.update(lm_loss=lm_loss.detach(), q_halt_loss=q_halt_loss.detach())
        q_continue_loss: torch.Tensor | int = 0
        if "target_q_continue" in outputs:  # HRM: the continue head learns the Q-learning target
            q_continue_loss = F.binary_cross_entropy_with_logits(outputs["q_continue_logits"],
                                                                 outputs["target_q_continue"], reduction="sum")
            metrics["q_continue_loss"] = q_continue_loss.detach()
        return new_carry, lm_loss + 0.5 * (q_halt_loss + q_continue_loss), metrics, new_carry.halted.all()


# ---------------------------------------------------------------------------------------------------
# Optimizer and the training step
# ---------------------------------------------------------------------------------------------------


class AdamATan2:
    """The reference CUDA kernel's per-element update, one parameter at a time (fp32)::

        p = p * (1 - lr*wd); m = lerp(m, g, 1-b1); v = lerp(v, g*g, 1-b2)
        p -= lr / (1 - b1^t) * atan2(m, sqrt(v) / sqrt(1 - b2^t))
    """

    def __init__(self, params: list[nn.Parameter], lr: float, betas: tuple[float, float], weight_decay: float) -> None:
        self.params = params
        self.lr, self.betas, self.weight_decay = lr, betas, weight_decay
        self.state: dict[int, dict[str, torch.Tensor | int]] = {}

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        for p in self.params:
            if p.grad is None:
                continue
            st = self.state.setdefault(id(p), {"step": 0, "exp_avg": torch.zeros_like(p),
                                               "exp_avg_sq": torch.zeros_like(p)})
            st["step"] = t = int(st["step"]) + 1
            m, v = st["exp_avg"], st["exp_avg_sq"]
            assert isinstance(m, torch.Tensor) and isinstance(v, torch.Tensor)
            grad = p.grad
            p.mul_(1 - self.lr * self.weight_decay)
            m.lerp_(grad, 1 - beta1)
            v.lerp_(grad.square(), 1 - beta2)
            bias_correction1 = 1 - beta1**t
            bias_correction2_sqrt = math.sqrt(1 - beta2**t)
            p.add_(torch.atan2(m, v.sqrt() / bias_correction2_sqrt), alpha=-self.lr / bias_correction1)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None


class Trainer:
    """Model + loss head + optimizers; ``step()`` is one training step as ``pretrain.py::train_batch``."""

    def __init__(self, config: RefConfig, device: torch.device | str = "cpu", lr: float = 1e-4,
                 weight_decay: float = 0.1, puzzle_emb_lr: float = 1e-4, puzzle_emb_weight_decay: float = 0.1,
                 arch: str = "trm") -> None:
        self.config = config
        self.head = ACTLossHead(ACTModel(config, arch)).to(device)
        self.head.train()
        self.optimizer = AdamATan2(list(self.head.parameters()), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
        self.puzzle_emb_lr, self.puzzle_emb_weight_decay = puzzle_emb_lr, puzzle_emb_weight_decay
        self.carry: Carry | None = None

    def step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.carry is None:
            self.carry = self.head.initial_carry(batch)  # created once, kept across steps
        self.carry, loss, _metrics, _all_finish = self.head(self.carry, batch)
        ((1 / self.config.batch_size) * loss).backward()
        self.optimizer.step()
        if self.config.puzzle_emb_ndim > 0:
            self.head.model.inner.puzzle_emb.sign_sgd_step(self.puzzle_emb_lr, self.puzzle_emb_weight_decay)
        self.optimizer.zero_grad()
        return loss.detach()


# ---------------------------------------------------------------------------------------------------
# The checkpoint files (trm.md §5.3)
# ---------------------------------------------------------------------------------------------------


def reference_all_config(config: RefConfig, arch: str = "trm") -> dict[str, object]:
    """The resolved config the reference writes beside its checkpoints (``all_config.yaml``).

    ``arch`` holds the arch group's keys: HRM's has no ``puzzle_emb_len`` / ``no_ACT_continue`` (its config class
    has neither) and no ``mlp_t`` unless set. ``data_paths`` names a folder on the reference machine.
    """
    arch_section: dict[str, object] = {
        "name": ARCH_CLASS_PATHS[arch],
        "loss": {"name": "losses@ACTLossHead", "loss_type": "stablemax_cross_entropy"},
        "halt_exploration_prob": config.halt_exploration_prob, "halt_max_steps": config.halt_max_steps,
        "H_cycles": config.H_cycles, "L_cycles": config.L_cycles, "H_layers": config.H_layers,
        "L_layers": config.L_layers, "hidden_size": config.hidden_size, "num_heads": config.num_heads,
        "expansion": config.expansion, "puzzle_emb_ndim": config.puzzle_emb_ndim,
        "pos_encodings": config.pos_encodings, "forward_dtype": str(config.forward_dtype).removeprefix("torch."),
    }
    if arch != "hrm" or config.mlp_t:
        arch_section["mlp_t"] = config.mlp_t
    if arch != "hrm":
        arch_section.update(puzzle_emb_len=config.puzzle_emb_len, no_ACT_continue=config.no_ACT_continue)
    return {
        "arch": arch_section,
        "data_paths": ["data/sudoku-extreme-1k-aug-1000"], "data_paths_test": [], "evaluators": [],
        "global_batch_size": config.batch_size, "epochs": 50000, "eval_interval": 5000,
        "checkpoint_every_eval": True, "lr": 1e-4, "lr_min_ratio": 1.0, "lr_warmup_steps": 2000, "beta1": 0.9,
        "beta2": 0.95, "weight_decay": 1.0, "puzzle_emb_weight_decay": 1.0, "puzzle_emb_lr": 1e-4,
        "project_name": "Sudoku-extreme-1k-aug-1000-ACT-torch", "run_name": f"{arch} port",
        "checkpoint_path": "checkpoints/Sudoku-extreme-1k-aug-1000-ACT-torch/port", "load_checkpoint": None,
        "seed": 0, "min_eval_interval": 0, "eval_save_outputs": [], "ema": False, "ema_rate": 0.999,
        "freeze_weights": False,
    }


def save_reference_checkpoint(head: ACTLossHead, folder: str | Path, step: int, *, compiled: bool = False,
                              all_config: dict[str, object] | None = None) -> Path:
    """Write ``folder/step_{step}`` as ``pretrain.py::save_train_state`` does, and ``all_config.yaml`` beside it.

    The file is ``torch.save(model.state_dict())`` of the loss-head-wrapped model (keys ``model.inner.*``),
    ``_orig_mod.``-prefixed when the reference ran ``torch.compile`` (its default). Returns the file.
    """
    import yaml  # only the checkpoint writer needs it

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {("_orig_mod." if compiled else "") + key: value for key, value in head.state_dict().items()}
    path = folder / f"step_{step}"
    torch.save(state, path)
    config = all_config if all_config is not None else reference_all_config(head.model.config, head.model.arch)
    (folder / "all_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def random_batch(config: RefConfig, device: torch.device | str = "cpu", seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tokens in the puzzle vocabulary (ids >= 1; 0 is PAD) and all-zero puzzle ids."""
    g = torch.Generator().manual_seed(seed)
    shape = (config.batch_size, config.seq_len)
    return {
        "inputs": torch.randint(1, config.vocab_size, shape, generator=g, dtype=torch.int32).to(device),
        "labels": torch.randint(1, config.vocab_size, shape, generator=g, dtype=torch.int32).to(device),
        "puzzle_identifiers": torch.zeros(config.batch_size, dtype=torch.int32).to(device),
    }


def sudoku_hrm_config(batch_size: int = 8, forward_dtype: torch.dtype = torch.float32) -> RefConfig:
    """The reference ``arch/hrm.yaml`` on Sudoku-Extreme (27,275,266 parameters, ``trm.md`` §1.10)."""
    return RefConfig(
        batch_size=batch_size, seq_len=81, vocab_size=11, num_puzzle_identifiers=1, H_cycles=2, L_cycles=2,
        H_layers=4, L_layers=4, hidden_size=512, expansion=4, num_heads=8, pos_encodings="rope", halt_max_steps=16,
        halt_exploration_prob=0.1, puzzle_emb_ndim=512, forward_dtype=forward_dtype,
    )


def count_parameters(config: RefConfig, arch: str = "trm") -> int:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = ACTModel(config, arch)
    return sum(p.numel() for p in model.parameters())


def check() -> None:
    """Parameter counts of ``trm.md`` §1.10 / ``tiny_trm_cpu.md`` §1, and two tiny finite training steps."""
    for name, config, arch, expected in [("Sudoku TRM-MLP (D 512)", sudoku_mlp_config(), "trm", 5_028_866),
                                         ("6x6 TRM-MLP (D 64)", sudoku6_config(), "trm", 154_754),
                                         ("Sudoku HRM (4+4 layers)", sudoku_hrm_config(), "hrm", 27_275_266)]:
        got = count_parameters(config, arch)
        assert got == expected, f"{name}: {got:,} parameters, expected {expected:,}"
        print(f"{name}: {got:,} parameters (expected {expected:,}) OK")
    torch.manual_seed(0)
    tiny_rope = RefConfig(batch_size=2, seq_len=6, vocab_size=5, num_puzzle_identifiers=1, H_cycles=2, L_cycles=1,
                          L_layers=1, H_layers=1, hidden_size=16, expansion=2, num_heads=2, pos_encodings="rope",
                          halt_max_steps=3, halt_exploration_prob=0.1, puzzle_emb_ndim=16, puzzle_emb_len=2,
                          forward_dtype=torch.float32)
    for config, arch in ((sudoku6_config(batch_size=4), "trm"), (tiny_rope, "trm"), (tiny_rope, "hrm"),
                         (tiny_rope, "trm_singlez")):
        trainer = Trainer(config, arch=arch)
        batch = random_batch(config)
        losses = [float(trainer.step(batch)) for _ in range(2)]
        assert all(math.isfinite(v) for v in losses), losses
        print(f"2 training steps ({arch}, {'mlp_t' if config.mlp_t else config.pos_encodings}): losses "
              f"{', '.join(f'{v:.4f}' for v in losses)} OK")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="assert parameter counts and run two tiny steps")
    if parser.parse_args().check:
        check()
    else:
        parser.print_help()
