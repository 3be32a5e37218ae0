"""Building blocks of the Tiny Recursive Model (TRM) and its variants.

Everything follows the reference TRM code numerically (see ``trm.md`` §1.3 and §1.6):

* parameters are fp32 "master" weights; ``CastedLinear``/``CastedEmbedding`` cast them to the activation
  dtype at every call (manual mixed precision, no autocast), so bf16 activations on GPU and fp32 on CPU
  use the same module;
* ``rms_norm`` has no learnable gain and computes in fp32;
* RoPE uses the GPT-NeoX ``rotate_half`` layout and fp32 tables;
* attribute names (``weight``, ``embedding_weight``, ``qkv_proj``, ``gate_up_proj`` ...) are those of the
  reference so that reference checkpoints load by name.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Attention",
    "CastedEmbedding",
    "CastedLinear",
    "CosSin",
    "RotaryEmbedding",
    "SwiGLU",
    "apply_rotary_pos_emb",
    "rms_norm",
    "rotate_half",
    "round_up_to_multiple",
    "swiglu_intermediate_size",
    "trunc_normal_init_",
]

CosSin = tuple[torch.Tensor, torch.Tensor]


@torch.no_grad()
def trunc_normal_init_(
    tensor: torch.Tensor, std: float = 1.0, lower: float = -2.0, upper: float = 2.0
) -> torch.Tensor:
    """Fill ``tensor`` in place with a truncated normal whose *actual* standard deviation is ``std``.

    ``torch.nn.init.trunc_normal_`` truncates N(0, std) at ±2 (absolute), which shrinks the std. Like
    JAX's ``truncated_normal`` initialiser, we instead truncate at ``lower``/``upper`` standard deviations
    and scale the sample so that the truncated distribution has standard deviation ``std`` (for ±2σ the
    compensation factor is ≈1.137). Sampling is inverse-CDF: uniform on ``[erf(lower/√2), erf(upper/√2)]``
    then ``erfinv``; the final clip only removes round-off outside the bounds.

    Returns ``tensor`` for chaining.
    """
    if std == 0:
        return tensor.zero_()
    sqrt2 = math.sqrt(2.0)
    a = math.erf(lower / sqrt2)
    b = math.erf(upper / sqrt2)
    z = (b - a) / 2  # probability mass of the standard normal inside [lower, upper]
    c = (2 * math.pi) ** -0.5
    pdf_lower = c * math.exp(-0.5 * lower**2)
    pdf_upper = c * math.exp(-0.5 * upper**2)
    # Variance of the standard normal truncated to [lower, upper].
    truncated_var = 1 - (upper * pdf_upper - lower * pdf_lower) / z - ((pdf_upper - pdf_lower) / z) ** 2
    comp_std = std / math.sqrt(truncated_var)

    tensor.uniform_(a, b)
    tensor.erfinv_()
    tensor.mul_(sqrt2 * comp_std)
    tensor.clip_(lower * comp_std, upper * comp_std)
    return tensor


def rms_norm(x: torch.Tensor, eps: float, dim: int = -1) -> torch.Tensor:
    """Parameter-free RMSNorm over ``dim``: ``x * rsqrt(mean(x²) + eps)``, computed in fp32, cast back.

    TRM's token-mixing block normalises over the *sequence* axis, hence the ``dim`` argument.
    """
    dtype = x.dtype
    x32 = x.to(torch.float32)  # no copy when x is already fp32
    # Inference takes the reference's composite formula, so imported checkpoints evaluate to its exact values
    # (the fused kernel rounds differently on the transposed token-mixing input); training keeps the fast one.
    if dim in (-1, x.ndim - 1) and not torch.is_inference_mode_enabled():
        # Fused kernel: same formula, ~2-3x faster forward and backward on CPU than the composite.
        return F.rms_norm(x32, (x32.shape[-1],), eps=eps).to(dtype)
    variance = x32.square().mean(dim, keepdim=True)
    return (x32 * torch.rsqrt(variance + eps)).to(dtype)


def round_up_to_multiple(n: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``n``."""
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    return -(n // -multiple) * multiple


def swiglu_intermediate_size(hidden_size: int, expansion: float, multiple: int = 256) -> int:
    """SwiGLU inner width: ``round_up(round(expansion * hidden_size * 2/3), multiple)``.

    ``2/3`` keeps the parameter count of a plain ``expansion``-times MLP. The reference always rounds up to
    a multiple of 256 (GPU-friendly GEMM shapes); a CPU recipe with a tiny ``hidden_size`` may pass a
    smaller ``multiple`` (e.g. 32) so the MLP is not dominated by padding. Python's ``round`` (banker's
    rounding) is used on purpose, as in the reference.
    """
    return round_up_to_multiple(round(expansion * hidden_size * 2 / 3), multiple)


class CastedLinear(nn.Module):
    """``nn.Linear`` with an fp32 master weight cast to the input's dtype at every call.

    Init: LeCun truncated normal (std ``1/sqrt(in_features)``), bias zero.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(
            trunc_normal_init_(torch.empty(out_features, in_features), std=1.0 / math.sqrt(in_features))
        )
        self.bias: nn.Parameter | None = None
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ``.to`` is a no-op (no copy) when dtypes already match, i.e. always in fp32 CPU runs.
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.weight.to(x.dtype), bias)


class CastedEmbedding(nn.Module):
    """Embedding table (fp32 parameter ``embedding_weight``) whose output is cast to ``cast_to``."""

    def __init__(
        self, num_embeddings: int, embedding_dim: int, init_std: float, cast_to: torch.dtype
    ) -> None:
        super().__init__()
        self.cast_to = cast_to
        self.embedding_weight = nn.Parameter(
            trunc_normal_init_(torch.empty(num_embeddings, embedding_dim), std=init_std)
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        # Gather first, then cast: same values as casting the table, but only touches the used rows.
        return F.embedding(input, self.embedding_weight).to(self.cast_to)


class RotaryEmbedding(nn.Module):
    """RoPE cos/sin tables for ``max_position_embeddings`` positions, fp32, GPT-NeoX layout.

    The tables are non-persistent buffers (not in checkpoints, as in the reference) and are rebuilt on
    construction; ``forward()`` returns ``(cos, sin)`` of shape ``[positions, dim]``.
    """

    def __init__(self, dim: int, max_position_embeddings: int, base: float) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"RoPE needs an even head dimension, got {dim}")
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        t = torch.arange(max_position_embeddings, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)
        # NeoX layout: the two halves of the head dimension share frequencies.
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cached", emb.cos(), persistent=False)
        self.register_buffer("sin_cached", emb.sin(), persistent=False)

    def forward(self) -> CosSin:
        return self.cos_cached, self.sin_cached


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` over the last dimension (NeoX ``rotate_half``)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate ``q``, ``k`` ``[batch, seq, heads, head_dim]`` by ``cos``/``sin`` ``[seq, head_dim]``.

    The math runs in the tables' dtype (fp32) and the result is cast back, as in the reference.
    """
    orig_dtype = q.dtype
    q = q.to(cos.dtype)
    k = k.to(cos.dtype)
    cos = cos.unsqueeze(-2)  # broadcast over heads
    sin = sin.unsqueeze(-2)
    q_embed = q * cos + rotate_half(q) * sin
    k_embed = k * cos + rotate_half(k) * sin
    return q_embed.to(orig_dtype), k_embed.to(orig_dtype)


class Attention(nn.Module):
    """Non-causal multi-head self-attention with a fused QKV projection and optional RoPE.

    ``qkv_proj`` packs ``[q; k; v]`` (each ``num_heads * head_dim`` wide) along its output dimension;
    no biases; softmax scale ``1/sqrt(head_dim)`` (SDPA default); no dropout.
    """

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, causal: bool = False) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.head_dim = head_dim
        self.num_heads = num_heads
        self.output_size = head_dim * num_heads
        self.causal = causal
        self.qkv_proj = CastedLinear(hidden_size, 3 * self.output_size, bias=False)
        self.o_proj = CastedLinear(self.output_size, hidden_size, bias=False)

    def forward(self, cos_sin: CosSin | None, hidden_states: torch.Tensor) -> torch.Tensor:
        batch_size, seq_len, _ = hidden_states.shape
        qkv = self.qkv_proj(hidden_states).view(batch_size, seq_len, 3 * self.num_heads, self.head_dim)
        query, key, value = qkv.split(self.num_heads, dim=2)
        if cos_sin is not None:
            cos, sin = cos_sin
            query, key = apply_rotary_pos_emb(query, key, cos[:seq_len], sin[:seq_len])
        # SDPA wants [batch, heads, seq, head_dim]; transposes are views.
        out = F.scaled_dot_product_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), is_causal=self.causal
        )
        out = out.transpose(1, 2).reshape(batch_size, seq_len, self.output_size)
        return self.o_proj(out)


class SwiGLU(nn.Module):
    """``down(silu(gate) * up)`` over the last dimension, with ``[gate; up]`` fused in ``gate_up_proj``.

    ``multiple`` is the rounding of the inner width (reference: 256); see ``swiglu_intermediate_size``.
    """

    def __init__(self, hidden_size: int, expansion: float, multiple: int = 256) -> None:
        super().__init__()
        self.intermediate_size = swiglu_intermediate_size(hidden_size, expansion, multiple)
        self.gate_up_proj = CastedLinear(hidden_size, 2 * self.intermediate_size, bias=False)
        self.down_proj = CastedLinear(self.intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The reference's `gate, up = gate_up_proj(x).chunk(2)` (gate rows first), done as one GEMM per
        # half of the fused weight: `gate` and `up` come out contiguous, so silu, mul and their backward
        # run on dense memory (about 2x faster on CPU than on the strided chunks) and the backward needs
        # no `cat` of the two gradient halves. The parameter keeps the fused layout of reference checkpoints.
        if torch.compiler.is_compiling() or torch.is_inference_mode_enabled():
            # Inductor fuses the strided elementwise work itself, and on the CPU (torch 2.13) it corrupts
            # memory on the sliced-weight form below, so compiled graphs take the reference form. So does
            # inference: one GEMM on the (transposed) input rounds exactly as the reference, so imported
            # checkpoints evaluate to its values; the split form pays in training.
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        weight = self.gate_up_proj.weight.to(x.dtype)
        x = x.contiguous()  # one copy for both GEMMs (the token-mixing input is a transposed view)
        gate = F.linear(x, weight[: self.intermediate_size])
        up = F.linear(x, weight[self.intermediate_size :])
        return self.down_proj(F.silu(gate) * up)
