"""Decoder-only causal language model: the Qwen3 / Llama architecture as used by MiniMind (``llm.md`` §1).

Read top to bottom: config -> RMSNorm -> RoPE -> attention (GQA, optional QK-norm, KV cache) -> MLP
(SwiGLU or mixture of experts) -> decoder layer -> backbone (``LMModel``) -> causal-LM head with loss and
generation (``LMForCausalLM``).

Module names are those of Hugging Face, so a state dict maps 1:1 by name onto ``Qwen3ForCausalLM``
(``qk_norm=True``) or ``LlamaForCausalLM`` (``qk_norm=False``; also MiniMind-2 shapes):
``model.embed_tokens``, ``model.layers.N.self_attn.{q,k,v,o}_proj``, ``...self_attn.{q,k}_norm``,
``model.layers.N.{input,post_attention}_layernorm``, ``model.layers.N.mlp.{gate,up,down}_proj``,
``model.norm``, ``lm_head``. MoE layers use ``mlp.gate`` (router), ``mlp.experts.E.{gate,up,down}_proj``
and ``mlp.shared_experts.S.{gate,up,down}_proj`` (MiniMind naming; HF Qwen3-MoE uses the same names
for the router and, before transformers 5, the experts). The residual options (DeepNorm, LayerScale, DropPath,
parallel residual; ``LMDecoderLayer``) are off by default and change the block, and some of these names, away
from what transformers computes; activation checkpointing (``set_activation_checkpointing``) changes nothing but
memory and time.

Conventions:

* ``labels`` are *not* pre-shifted: the model shifts (``logits[:, :-1]`` vs ``labels[:, 1:]``), as MiniMind
  and HF do; ``targets`` are (the packed training windows' convention). ``-100`` is ignored.
* KV cache: a list with one ``(k, v)`` per layer, each ``[batch, kv_heads, seq, head_dim]``, stored after
  RoPE and before the GQA head expansion; new tokens are concatenated on the sequence dimension and their
  RoPE positions start at the cached length. With ``sliding_window`` the decoding loops keep only the newest
  ``sliding_window - 1`` columns (``keep_window``; older keys are never attended again) and pass ``position_ids``,
  since the cached length then no longer is the position.
* Padding: training rows are right-padded, and the causal mask alone keeps real tokens from seeing pads
  (MiniMind's convention). Batched generation and serving left-pad the prompts and pass ``attention_mask``
  ``[B, S]`` (1 = real token, 0 = pad; optionally ``position_ids`` ``[B, T]``): pads are masked as keys and each
  row's RoPE positions count its real tokens only, so a row's tokens get the same positions and attend to the
  same keys as when it runs alone.

Shapes: ``B`` batch, ``T`` new tokens, ``S`` cached + new tokens, ``D`` hidden size, ``H`` query heads,
``K`` key/value heads, ``d`` head dim, ``E`` experts.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "KVCache",
    "LMAttention",
    "LMConfig",
    "LMDecoderLayer",
    "LMForCausalLM",
    "LMMLP",
    "LMModel",
    "LMMoE",
    "LMOutput",
    "RMSNorm",
    "RopeScaling",
    "apply_repetition_penalty",
    "keep_window",
    "drop_path",
    "minimind_intermediate_size",
    "rope_cos_sin",
    "rope_frequencies",
    "sample_next_token",
    "sample_per_row",
    "xpos_scale",
]

INIT_STD = 0.02  # HF `initializer_range` default for Llama/Qwen3
XPOS_GAMMA = 0.4  # XPos's zeta_i = (2i / d + gamma) / (1 + gamma) (Sun et al. 2022, as torchscale)
XPOS_ZETA_MIN = XPOS_GAMMA / (1 + XPOS_GAMMA)  # zeta of the fastest-rotating pair, the strongest decay
XPOS_MAX_EXPONENT = 80.0  # e^80 ~ 5.5e34: leaves 4 orders of magnitude below fp32's largest value for q and k

KVCache = list[tuple[torch.Tensor, torch.Tensor]]


# ---------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------


def minimind_intermediate_size(hidden_size: int) -> int:
    """MiniMind-3's SwiGLU width rule ``ceil(hidden * pi / 64) * 64`` (2432 @768, 1664 @512, 448 @128)."""
    return math.ceil(hidden_size * math.pi / 64) * 64


class RopeScaling(BaseModel):
    """RoPE for contexts longer than trained: Hugging Face's ``rope_scaling`` dict, with its keys and formulas
    (``transformers.modeling_rope_utils``), so it maps both ways onto a Qwen3 / Llama ``config.json``.

    * ``linear`` (position interpolation): every frequency divided by ``factor``; positions up to ``factor`` times
      the trained length fall on angles the model saw. Needs fine-tuning at the longer length to work well.
    * ``dynamic`` (dynamic NTK-aware): nothing changes while a sequence fits in ``max_position_embeddings`` (the
      trained length, as in HF); past it the base grows to ``theta * (factor * L / max_pos - (factor - 1)) **
      (d / (d - 2))``, ``L`` the sequence's largest position + 1, so the lowest frequency interpolates and the
      highest keep their angles. Works without fine-tuning.
    * ``yarn`` (Peng et al. 2023): frequencies with wavelengths longer than ``original_max_position_embeddings /
      beta_slow`` rotations interpolate (``/ factor``), those above ``beta_fast`` rotations keep their value, a linear
      ramp between; cos and sin are multiplied by ``attention_factor`` (default ``0.1 ln(factor) + 1``: a temperature
      on the scores). ``truncate`` rounds the ramp's ends to whole dimensions (HF's default).
    """

    model_config = ConfigDict(extra="forbid")

    rope_type: Literal["linear", "dynamic", "yarn"]
    factor: float = Field(ge=1.0)
    # yarn: the trained context (None: max_position_embeddings)
    original_max_position_embeddings: int | None = Field(None, ge=1)
    beta_fast: float = Field(32.0, gt=0)
    beta_slow: float = Field(1.0, gt=0)
    attention_factor: float | None = Field(None, gt=0, description="yarn: None means 0.1 * ln(factor) + 1")
    truncate: bool = True

    @model_validator(mode="after")
    def _check(self) -> RopeScaling:
        yarn_only = ("original_max_position_embeddings", "beta_fast", "beta_slow", "attention_factor", "truncate")
        # Compared with the defaults rather than asked whether set: a config written back (model_dump) sets them all.
        given = [key for key in yarn_only if getattr(self, key) != type(self).model_fields[key].default]
        if self.rope_type != "yarn" and given:
            # HF ignores them for linear and dynamic (dynamic grows from max_position_embeddings): refuse, not ignore.
            raise ValueError(f"rope_scaling.{given[0]} applies to rope_type yarn only, not {self.rope_type}")
        return self


class LMConfig(BaseModel):
    """Architecture of the decoder. Field names are HF's (``Qwen3Config``), defaults MiniMind-3's (64M).

    ``head_dim=None`` means ``hidden_size // num_attention_heads``; ``intermediate_size=None`` means
    MiniMind-3's rule (``minimind_intermediate_size``). Use ``resolved_head_dim`` /
    ``resolved_intermediate_size`` for the values in effect. MiniMind-2 shapes: ``qk_norm=False``,
    ``rms_norm_eps=1e-5`` and ``intermediate_size=64 * ceil(int(hidden * 8 / 3) / 64)`` given explicitly.
    """

    model_config = ConfigDict(extra="forbid")

    vocab_size: int = 6400
    hidden_size: int = 768
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    head_dim: int | None = None
    intermediate_size: int | None = None
    max_position_embeddings: int = 32768
    rope_theta: float = 1e6
    rms_norm_eps: float = 1e-6
    qk_norm: bool = True  # Qwen3 / MiniMind-3; False = Llama / MiniMind-2
    tie_word_embeddings: bool = True
    dropout: float = 0.0
    hidden_act: Literal["silu"] = "silu"

    # Mixture of experts (replaces every layer's MLP when use_moe). Each expert has intermediate_size.
    use_moe: bool = False
    num_experts: int = 4
    num_experts_per_tok: int = 1
    n_shared_experts: int = 0  # experts applied to every token (MiniMind-2 uses 1)
    aux_loss_alpha: float = 5e-4  # MiniMind-3's router_aux_loss_coef; MiniMind-2 used 0.01
    norm_topk_prob: bool = True  # renormalise the top-k router probabilities to sum to 1 (as HF Qwen3-MoE)

    # Positional encoding and attention options (issue 17). All off by default: RoPE as trained, full causal
    # attention through SDPA.
    rope_scaling: RopeScaling | None = None  # longer contexts than trained: linear / dynamic (NTK) / yarn, as HF
    xpos: bool = False  # XPos (Sun et al. 2022): RoPE times a per-dimension decay of q.k with distance
    xpos_scale_base: float = 512.0  # XPos's B: the decay of pair i over distance m - n is zeta_i^((m - n) / B)
    sliding_window: int | None = None  # attend to the newest `sliding_window` tokens (itself included) only
    attention: Literal["sdpa", "math"] = "sdpa"  # sdpa: torch's fused kernels (flash on GPU); math: spelled out
    # Residual and normalisation options (issue 17). All off by default (the Qwen3/Llama pre-norm block); see
    # LMDecoderLayer for the formulas. Export to HF/GGUF refuses deepnorm, layer_scale_init and parallel_residual
    # (transformers' Qwen3/Llama compute none of them); drop_path_rate is training-only, so it exports.
    deepnorm: bool = False  # DeepNet's post-norm x = norm(alpha * x + f(x)), alpha = (2N)^(1/4), init * (8N)^(-1/4)
    layer_scale_init: float | None = None  # LayerScale: per-channel learnable scale of each branch, starting here
    drop_path_rate: float = 0.0  # stochastic depth of the last layer; layer i drops at rate * i / (N - 1)
    parallel_residual: bool = False  # GPT-J: x + attn(norm(x)) + mlp(norm(x)), one norm per layer

    @model_validator(mode="after")
    def _check_residual(self) -> LMConfig:
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError("drop_path_rate must be in [0, 1)")
        if self.layer_scale_init is not None and not self.layer_scale_init > 0:
            raise ValueError("layer_scale_init must be > 0 (or null for no LayerScale)")
        if self.deepnorm and self.parallel_residual:
            raise ValueError("deepnorm (post-norm) and parallel_residual (pre-norm) are two different blocks: "
                             "choose one")
        return self

    @property
    def deepnorm_alpha(self) -> float:
        """DeepNet's residual scale for an N-layer decoder-only model, ``(2N)^(1/4)`` (1 without deepnorm)."""
        return (2 * self.num_hidden_layers) ** 0.25 if self.deepnorm else 1.0

    @property
    def deepnorm_beta(self) -> float:
        """DeepNet's init scale of v_proj, o_proj and the MLP for N decoder layers, ``(8N)^(-1/4)`` (1 without)."""
        return (8 * self.num_hidden_layers) ** -0.25 if self.deepnorm else 1.0

    def drop_path_rate_of(self, layer: int) -> float:
        """Layer ``layer``'s stochastic-depth rate: linear in depth, 0 at the first layer, ``drop_path_rate`` at
        the last (a one-layer model never drops)."""
        return self.drop_path_rate * layer / max(self.num_hidden_layers - 1, 1)

    def residual_options_in_use(self) -> list[str]:
        """``key=value`` of each option above that changes the network transformers' Qwen3/Llama compute (for
        export refusals); drop_path_rate is identity at inference and not listed."""
        used = [("deepnorm", self.deepnorm), ("layer_scale_init", self.layer_scale_init),
                ("parallel_residual", self.parallel_residual)]
        return [f"{key}={value}" for key, value in used if value not in (False, None)]

    @model_validator(mode="after")
    def _check(self) -> LMConfig:
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads when head_dim is None")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads (GQA)")
        if self.resolved_head_dim % 2:
            raise ValueError("RoPE needs an even head_dim")
        if self.use_moe and not 1 <= self.num_experts_per_tok <= self.num_experts:
            raise ValueError("num_experts_per_tok must be in [1, num_experts]")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError("sliding_window must be >= 1 (or None for full attention)")
        if self.rope_scaling is not None and self.rope_scaling.rope_type == "dynamic" and self.resolved_head_dim <= 2:
            raise ValueError("dynamic RoPE scaling needs head_dim > 2 (its base grows as L^(d / (d - 2)))")
        if self.xpos:
            if self.xpos_scale_base <= 0:
                raise ValueError("xpos_scale_base must be > 0")
            # One forward scales q and k by zeta^(+-t/B) for t up to half its length (see LMAttention): over
            # max_position_embeddings tokens that must stay well inside fp32/bf16's range (e^88).
            exponent = self.max_position_embeddings / 2 / self.xpos_scale_base * math.log(1 / XPOS_ZETA_MIN)
            if exponent > XPOS_MAX_EXPONENT:
                raise ValueError(f"xpos: max_position_embeddings / xpos_scale_base is too large for fp32 "
                                 f"(zeta^(t/B) reaches e^{exponent:.0f}); raise xpos_scale_base or lower "
                                 "max_position_embeddings")
        return self

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_attention_heads

    @property
    def resolved_intermediate_size(self) -> int:
        if self.intermediate_size is not None:
            return self.intermediate_size
        return minimind_intermediate_size(self.hidden_size)


# ---------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """``weight * x / sqrt(mean(x^2) + eps)``, normalised in fp32 and cast back (HF Qwen3/Llama numerics)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_frequencies(
    head_dim: int, theta: float, scaling: RopeScaling | None = None, max_position_embeddings: int = 32768,
    seq_len: torch.Tensor | None = None, device: torch.device | None = None,
) -> tuple[torch.Tensor, float]:
    """RoPE's inverse frequencies ``[d/2]`` and the factor on cos/sin (1 but for yarn), with ``scaling``'s formula
    (``RopeScaling``; the same numbers as transformers' ``ROPE_INIT_FUNCTIONS``, in fp32 as there).

    ``dynamic`` depends on the sequence: ``seq_len`` (largest position + 1, ``[]`` or ``[B]`` for per-row positions)
    gives ``[d/2]`` or ``[B, d/2]``. HF keeps the largest length seen so far; computing it per call (and per row)
    gives the same numbers for one growing sequence, and rows of a batch that do not depend on each other.
    """
    exponents = torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim
    if scaling is None:
        return 1.0 / (theta ** exponents), 1.0
    factor = scaling.factor
    if scaling.rope_type == "linear":
        return 1.0 / (theta ** exponents) / factor, 1.0
    if scaling.rope_type == "dynamic":
        length = torch.as_tensor(max_position_embeddings if seq_len is None else seq_len, device=device)
        length = length.clamp(min=max_position_embeddings).float()
        base = theta * (factor * length / max_position_embeddings - (factor - 1)) ** (head_dim / (head_dim - 2))
        return 1.0 / (base[..., None] ** exponents), 1.0
    # yarn. Pair i makes original / wavelength_i rotations over the trained context; the ramp runs from the pair
    # making beta_fast rotations (kept: extrapolated) to the one making beta_slow (interpolated: divided by factor).
    original = scaling.original_max_position_embeddings or max_position_embeddings

    def pair_of(rotations: float) -> float:  # the (fractional) pair index making `rotations` turns
        return head_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = pair_of(scaling.beta_fast), pair_of(scaling.beta_slow)
    if scaling.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # HF's guard against a zero-width ramp
    ramp = ((torch.arange(head_dim // 2, device=device, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    wavelengths = theta ** exponents
    inv_freq = (1.0 / (factor * wavelengths)) * ramp + (1.0 / wavelengths) * (1 - ramp)
    attention_factor = scaling.attention_factor
    if attention_factor is None:
        attention_factor = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
    return inv_freq, attention_factor


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype = torch.float32,
    scaling: RopeScaling | None = None, max_position_embeddings: int = 32768,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` of shape ``[*positions.shape, head_dim]`` in rotate-half layout (``positions`` ``[T]``, or
    ``[B, T]`` for per-row positions of a left-padded batch).

    Dimension pair ``(i, i + d/2)`` rotates by ``pos * theta^(-2i/d)`` (the frequencies ``scaling`` changes:
    ``rope_frequencies``; yarn also scales cos and sin). Computed on the fly in fp32 rather
    than kept as buffers: it is tiny (``S x d``), never lost by meta-device init or cast to bf16 by
    ``model.to(dtype)``, and has no maximum length.
    """
    seq_len = positions.amax(-1) + 1 if scaling is not None and scaling.rope_type == "dynamic" else None
    inv_freq, attention_factor = rope_frequencies(head_dim, theta, scaling, max_position_embeddings, seq_len,
                                                  positions.device)
    freqs = positions.float()[..., None] * inv_freq.unsqueeze(-2)  # [T, d/2], or [B, T, d/2] with a per-row inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)  # both halves of a head share the frequencies
    cos, sin = emb.cos(), emb.sin()
    if attention_factor != 1.0:
        cos, sin = cos * attention_factor, sin * attention_factor
    return cos.to(dtype), sin.to(dtype)


def xpos_scale(distance: torch.Tensor, head_dim: int, scale_base: float) -> torch.Tensor:
    """XPos's factor ``zeta_i^(distance / scale_base)``, ``[*distance.shape, head_dim]`` in rotate-half layout (pair
    ``(i, i + d/2)`` shares ``zeta_i = (2i / d + 0.4) / 1.4``, from 0.29 for the fastest pair to ~1 for the slowest).
    q times ``xpos_scale(m)`` dotted with k times ``xpos_scale(-n)`` decays as ``zeta_i^((m - n) / B)``: distant
    keys count less, most in the fast-rotating pairs, whose scores vary most with distance (Sun et al. 2022)."""
    zeta = (torch.arange(0, head_dim, 2, device=distance.device, dtype=torch.float32) / head_dim + XPOS_GAMMA) / (
        1 + XPOS_GAMMA)
    scale = zeta ** (distance.float()[..., None] / scale_base)
    return torch.cat((scale, scale), dim=-1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` over the last dimension: the layout of Qwen3's (and NeoX's) RoPE."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[B, heads, T, d]`` by ``cos``/``sin`` ``[T, d]`` (shared) or ``[B, T, d]`` (per row)."""
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]  # broadcast over the heads
    return x * cos + rotate_half(x) * sin


# SDPA grew `enable_gqa` in torch 2.5; older versions need the kv heads expanded by hand.
_TORCH_VERSION = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
_SDPA_HAS_GQA = _TORCH_VERSION >= (2, 5)


class LMAttention(nn.Module):
    """Causal grouped-query self-attention with RoPE, optional QK-norm and a KV cache. No biases."""

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.resolved_head_dim
        self.dropout = config.dropout
        self.xpos_scale_base = config.xpos_scale_base if config.xpos else None
        self.attention = config.attention
        d = self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * d, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * d, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * d, bias=False)
        self.o_proj = nn.Linear(self.num_heads * d, config.hidden_size, bias=False)
        # Qwen3 QK-norm: RMSNorm over head_dim, per head, before RoPE (weights shared across heads).
        self.q_norm: RMSNorm | None = RMSNorm(d, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm: RMSNorm | None = RMSNorm(d, config.rms_norm_eps) if config.qk_norm else None
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        past_key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
        key_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``x`` ``[B, T, D]``; ``cos_sin`` for the T new positions; ``key_mask`` ``[B, 1, T, S]`` (True = attend),
        the causal and padding mask of a left-padded batch. Returns output and the updated (k, v)."""
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, T, d]
        cos, sin = cos_sin
        q, k = apply_rope(q, cos.to(q.dtype), sin.to(q.dtype)), apply_rope(k, cos.to(k.dtype), sin.to(k.dtype))

        past_len = 0
        if past_key_value is not None:
            past_len = past_key_value[0].shape[2]
            k = torch.cat((past_key_value[0], k), dim=2)
            v = torch.cat((past_key_value[1], v), dim=2)
        present = (k, v)
        if self.xpos_scale_base is not None:
            # XPos decays q.k by zeta^((m - n) / B). Distances are counted in cache columns, which are positions
            # apart for every row (a row's tokens are contiguous, pads before them), from the middle of the new
            # queries: the factors then stay within zeta^(+-T/2B) for T new tokens at any absolute position (keys
            # far behind only shrink), and the cache keeps keys without the factor.
            middle = past_len + (seq - 1) / 2
            columns = torch.arange(past_len + seq, device=x.device, dtype=torch.float32) - middle
            q = q * xpos_scale(columns[past_len:], self.head_dim, self.xpos_scale_base).to(q.dtype)
            k = k * xpos_scale(-columns, self.head_dim, self.xpos_scale_base).to(k.dtype)

        # SDPA's is_causal aligns the mask top-left, which is right only when queries and keys start at
        # the same position (no cache) or there is one query (decoding: it sees everything). Chunked
        # prefill on top of a cache needs the offset mask spelled out.
        mask: torch.Tensor | None = None
        is_causal = past_len == 0 and seq > 1 and key_mask is None
        if key_mask is not None:
            mask = key_mask
        elif past_len > 0 and seq > 1:
            q_pos = torch.arange(seq, device=x.device)[:, None] + past_len
            mask = torch.arange(past_len + seq, device=x.device)[None, :] <= q_pos  # True = attend
        dropout_p = self.dropout if self.training else 0.0
        if self.attention == "math":
            out = math_attention(q, k, v, mask, is_causal, dropout_p)
        elif _SDPA_HAS_GQA:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal,
                enable_gqa=self.num_kv_heads != self.num_heads,
            )
        else:  # pragma: no cover - torch < 2.5
            rep = self.num_heads // self.num_kv_heads
            out = F.scaled_dot_product_attention(
                q, k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1),
                attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal,
            )
        out = out.transpose(1, 2).reshape(batch, seq, self.num_heads * self.head_dim)
        return self.resid_dropout(self.o_proj(out)), present


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, is_causal: bool,
                   dropout_p: float = 0.0) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d) + mask) v`` written out (``attention=math``): what SDPA computes, as a reference
    and for when a fused kernel is not wanted. ``q`` ``[B, H, T, d]``, ``k``/``v`` ``[B, K, S, d]`` (GQA: each kv head
    serves ``H / K`` query heads); ``mask`` True = attend, or ``is_causal`` for the top-left causal mask.
    The softmax runs in fp32 (as HF's eager attention), the products in the inputs' dtype."""
    rep = q.shape[1] // k.shape[1]
    if rep > 1:
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # [B, H, T, S]
    if is_causal:
        mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = F.dropout(scores.float().softmax(dim=-1), p=dropout_p).to(q.dtype)
    return probs @ v


class LMMLP(nn.Module):
    """SwiGLU ``down(silu(gate(x)) * up(x))`` with separate (HF-named) gate/up projections."""

    def __init__(self, hidden_size: int, intermediate_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))


class LMMoE(nn.Module):
    """Mixture of SwiGLU experts: softmax router ``gate``, top-k routing, optional always-on shared experts.

    ``forward`` returns ``(output, aux_loss)`` with the Switch-Transformer / MiniMind load-balancing loss
    ``alpha * E * sum_i f_i * P_i``: ``f_i`` = fraction of the (token, slot) assignments routed to expert i
    (no gradient), ``P_i`` = mean router probability of expert i (carries the gradient). It is ``alpha`` for
    perfectly balanced routing and grows to ``alpha * E`` when one expert takes everything.
    """

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        hidden, inter = config.hidden_size, config.resolved_intermediate_size
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob
        self.aux_loss_alpha = config.aux_loss_alpha
        self.gate = nn.Linear(hidden, config.num_experts, bias=False)
        self.experts = nn.ModuleList(LMMLP(hidden, inter, config.dropout) for _ in range(config.num_experts))
        self.shared_experts = nn.ModuleList(
            LMMLP(hidden, inter, config.dropout) for _ in range(config.n_shared_experts)
        )

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x`` ``[N, D]`` -> (router probabilities ``[N, E]`` fp32, top-k weights ``[N, k]``, indices ``[N, k]``)."""
        probs = F.softmax(self.gate(x).float(), dim=-1)  # fp32: the softmax over few experts is cheap
        weights, indices = probs.topk(self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return probs, weights, indices

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        probs, weights, indices = self.route(flat)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            token_idx, slot = torch.where(indices == e)
            if token_idx.numel() == 0:
                if self.training:
                    # Zero-valued use of the idle expert keeps it in the autograd graph, so DDP (which
                    # expects every parameter to get a gradient) does not hang or error.
                    out = out + 0.0 * sum(p.sum() for p in expert.parameters())
                continue
            y = expert(flat[token_idx]) * weights[token_idx, slot, None].to(flat.dtype)
            out = out.index_add(0, token_idx, y)
        for shared in self.shared_experts:
            out = out + shared(flat)

        # Load-balancing loss; `f` counts hard assignments (no gradient), `p` is differentiable.
        f = F.one_hot(indices, self.num_experts).float().sum(dim=1).mean(dim=0) / self.top_k
        p = probs.mean(dim=0)
        aux_loss = self.aux_loss_alpha * self.num_experts * (f * p).sum()
        return out.view(shape), aux_loss


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth (Huang et al. 2016; timm's ``DropPath``): in training each row (sample) of ``x`` is zeroed
    with probability ``rate`` and the kept rows scaled by ``1 / (1 - rate)``, so the expectation is ``x``; identity
    in eval or at rate 0."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


class LMDecoderLayer(nn.Module):
    """Pre-norm block: ``h = x + attn(norm(x))``; ``out = h + mlp(norm(h))``.

    The residual options (issue 17, all off by default) change it so; each branch output ``f`` (attention or MLP)
    enters the residual as ``drop_path(gamma * f)``:

    * LayerScale (``layer_scale_init``): ``gamma`` is a learnt per-channel vector (``self_attn_scale``,
      ``mlp_scale``: names HF does not use) starting at ``layer_scale_init``; without it ``gamma = 1``.
    * DropPath (``drop_path_rate``): :func:`drop_path` at this layer's rate, ``config.drop_path_rate_of(i)``.
    * Parallel residual: ``out = x + attn(n) + mlp(n)`` with ``n = input_layernorm(x)``: one norm, as GPT-J and
      PaLM (GPT-NeoX normalises twice); there is no ``post_attention_layernorm``.
    * DeepNorm (DeepNet, Wang et al. 2022): post-norm, ``h = post_attention_layernorm(alpha * x + attn(x))``,
      ``out = post_feedforward_layernorm(alpha * h + mlp(h))`` (OLMo-2's names for norms after a branch), with
      ``alpha = (2N)^(1/4)``; the init scale ``beta`` is applied by ``LMForCausalLM``. RMSNorm stands in for the
      paper's LayerNorm; ``alpha`` bounds the size of each update to the residual either way.
    """

    def __init__(self, config: LMConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.self_attn = LMAttention(config)
        self.mlp: LMMLP | LMMoE = (
            LMMoE(config) if config.use_moe
            else LMMLP(config.hidden_size, config.resolved_intermediate_size, config.dropout)
        )
        self.deepnorm = config.deepnorm
        self.parallel_residual = config.parallel_residual
        self.alpha = config.deepnorm_alpha
        self.drop_path_rate = config.drop_path_rate_of(layer_idx)
        if config.deepnorm:
            self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
            self.post_feedforward_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        else:
            self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
            if not config.parallel_residual:
                self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn_scale: nn.Parameter | None = None
        self.mlp_scale: nn.Parameter | None = None
        if config.layer_scale_init is not None:
            self.self_attn_scale = nn.Parameter(torch.full((config.hidden_size,), config.layer_scale_init))
            self.mlp_scale = nn.Parameter(torch.full((config.hidden_size,), config.layer_scale_init))

    def _branch(self, out: torch.Tensor, scale: nn.Parameter | None) -> torch.Tensor:
        """A branch's output as the residual adds it: LayerScale, then DropPath (``out`` itself when both are off)."""
        if scale is not None:
            out = out * scale
        return drop_path(out, self.drop_path_rate, self.training)

    def _mlp(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(self.mlp, LMMoE):
            return self.mlp(x)
        return self.mlp(x), None

    def forward(
        self,
        x: torch.Tensor,
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        past_key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
        key_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor | None]:
        if self.deepnorm:
            attn_out, present = self.self_attn(x, cos_sin, past_key_value, key_mask)
            h = self.post_attention_layernorm(self.alpha * x + self._branch(attn_out, self.self_attn_scale))
            mlp_out, aux_loss = self._mlp(h)
            out = self.post_feedforward_layernorm(self.alpha * h + self._branch(mlp_out, self.mlp_scale))
            return out, present, aux_loss
        normed = self.input_layernorm(x)
        attn_out, present = self.self_attn(normed, cos_sin, past_key_value, key_mask)
        if self.parallel_residual:
            mlp_out, aux_loss = self._mlp(normed)
            return x + self._branch(attn_out, self.self_attn_scale) + self._branch(mlp_out, self.mlp_scale), \
                present, aux_loss
        h = x + self._branch(attn_out, self.self_attn_scale)
        mlp_out, aux_loss = self._mlp(self.post_attention_layernorm(h))
        return h + self._branch(mlp_out, self.mlp_scale), present, aux_loss


# ---------------------------------------------------------------------------------------------------
# Backbone and causal-LM head
# ---------------------------------------------------------------------------------------------------


def _as_config(config: LMConfig | Mapping[str, Any]) -> LMConfig:
    return config if isinstance(config, LMConfig) else LMConfig.model_validate(dict(config))


class LMModel(nn.Module):
    """Embedding -> dropout -> decoder layers -> final RMSNorm (HF ``Qwen3Model``)."""

    def __init__(self, config: LMConfig | Mapping[str, Any]) -> None:
        super().__init__()
        self.config = config = _as_config(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(LMDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        # DeepNorm's post-norm layers end normalised: no final norm, as DeepNet's post-LN decoder.
        self.norm: RMSNorm | nn.Identity = (
            nn.Identity() if config.deepnorm else RMSNorm(config.hidden_size, config.rms_norm_eps))
        # Recompute each layer's activations in backward instead of keeping them (`set_activation_checkpointing`).
        self.activation_checkpointing = False

    def forward(
        self, input_ids: torch.Tensor, past_key_values: KVCache | None = None, use_cache: bool = False,
        position_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, KVCache | None, torch.Tensor | None]:
        """Returns (final hidden states ``[B, T, D]``, new cache or None, summed MoE aux loss or None).

        ``attention_mask`` ``[B, S]`` (cached + new tokens; 1 = real, 0 = pad) is for left-padded batches;
        ``position_ids`` ``[B, T]`` gives each row's RoPE positions (default: the cached length onwards, or with
        a mask, the number of real tokens before each token).
        """
        if past_key_values is not None and len(past_key_values) != len(self.layers):
            raise ValueError(f"past_key_values has {len(past_key_values)} layers, model has {len(self.layers)}")
        past_len = past_key_values[0][0].shape[2] if past_key_values else 0
        seq = input_ids.shape[1]
        key_mask: torch.Tensor | None = None
        positions = position_ids
        if attention_mask is None:
            if positions is None:
                positions = torch.arange(past_len, past_len + seq, device=input_ids.device)
        else:
            if attention_mask.shape != (input_ids.shape[0], past_len + seq):
                want = [input_ids.shape[0], past_len + seq]
                raise ValueError(f"attention_mask must be [batch, cached + new tokens] = {want}")
            real = attention_mask.bool()
            if positions is None:
                # A token's position is the number of real tokens before it: a row's first real token sits at 0.
                positions = (real.long().cumsum(-1) - 1).clamp(min=0)[:, past_len:]
            keys = torch.arange(past_len + seq, device=input_ids.device)
            queries = keys[past_len:, None]
            # Causal and not a pad; every query also sees itself, so a pad's own row is never all-masked (NaN).
            key_mask = ((keys[None, :] <= queries) & real[:, None, :]) | (keys[None, :] == queries)
            key_mask = key_mask[:, None]  # [B, 1, T, S]
        window = self.config.sliding_window
        if window is not None and past_len + seq > window:  # otherwise every key is in the window: causal alone
            # Cache columns stand for consecutive positions of each row, so "older than the window" is counted in
            # columns; the same rule as HF's sliding window (key n seen from query m when m - window < n <= m).
            keys = torch.arange(past_len + seq, device=input_ids.device)
            queries = keys[past_len:, None]
            in_window = ((keys[None, :] <= queries) & (keys[None, :] > queries - window))[None, None]
            key_mask = in_window if key_mask is None else key_mask & in_window
        cos_sin = rope_cos_sin(positions, self.config.resolved_head_dim, self.config.rope_theta,
                               scaling=self.config.rope_scaling,
                               max_position_embeddings=self.config.max_position_embeddings)

        h = self.dropout(self.embed_tokens(input_ids))
        presents: KVCache = []
        aux_loss: torch.Tensor | None = None
        checkpointing = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            past = past_key_values[i] if past_key_values else None
            if checkpointing:
                # Non-reentrant: works with inputs that need no grad, kwargs and DDP; it restores the RNG state
                # when recomputing, so dropout and DropPath draw the same masks twice.
                h, present, layer_aux = checkpoint(layer, h, cos_sin, past, key_mask, use_reentrant=False)
            else:
                h, present, layer_aux = layer(h, cos_sin, past, key_mask)
            if use_cache:
                presents.append(present)
            if layer_aux is not None:
                aux_loss = layer_aux if aux_loss is None else aux_loss + layer_aux
        return self.norm(h), (presents if use_cache else None), aux_loss


def keep_window(cache: KVCache, window: int | None) -> KVCache:
    """``cache`` without the columns no later token attends to under a sliding window of ``window`` tokens: the
    newest ``window - 1`` stay (the next token sees them and itself). Unchanged for ``window=None``."""
    if window is None or not cache or cache[0][0].shape[2] < window:
        return cache
    start = cache[0][0].shape[2] - (window - 1)
    return [(k[:, :, start:], v[:, :, start:]) for k, v in cache]


@dataclass
class LMOutput:
    """``logits`` ``[B, T, V]`` (or the last ``logits_to_keep`` positions); ``loss`` = CE (+ aux when MoE)."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None  # summed over MoE layers, already scaled by aux_loss_alpha
    past_key_values: KVCache | None = None


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Hugging Face's (and MiniMind's) repetition penalty: the logit of every token already in the row
    (``seen`` ``[B, V]`` bool) is divided by ``penalty`` when positive and multiplied by it when negative, so
    ``penalty > 1`` makes repeats less likely at any sign. Applied before temperature, as HF does."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row of ``logits`` ``[B, V]``: argmax when ``temperature == 0``, else sample from
    the temperature-scaled distribution restricted to the ``top_k`` most likely tokens and then to the
    smallest set whose probability reaches ``top_p`` (nucleus). Returns ``[B]`` int64."""
    if temperature < 0:
        raise ValueError("temperature must be >= 0")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_idx = logits.sort(dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens strictly more likely already reach top_p; the first always stays.
        drop_sorted = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p
        drop = drop_sorted.scatter(-1, sorted_idx, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def sample_per_row(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
                   uniform: torch.Tensor) -> torch.Tensor:
    """``sample_next_token`` for a batch whose rows each have their own settings, in one pass: row b of
    ``logits`` ``[B, V]`` is argmax when ``temperature[b] == 0``, else a draw from its temperature-scaled
    distribution cut to the nucleus ``top_p[b]`` (same rule as ``sample_next_token``; 1 keeps every token),
    made by inverting the cumulative distribution at ``uniform[b]`` in [0, 1) (so each row's randomness can
    come from its own generator). ``temperature``, ``top_p`` and ``uniform`` are ``[B]``. Returns ``[B]``."""
    greedy = logits.argmax(dim=-1)
    if bool((temperature == 0).all()):
        return greedy
    scaled = logits.float() / temperature.clamp(min=1e-6)[:, None]
    nucleus = bool((top_p < 1.0).any())
    if nucleus:  # the nucleus needs the tokens in order of probability; sorting is the slow part, so only then
        scaled, order = scaled.sort(dim=-1, descending=True)
    probs = scaled.softmax(dim=-1)
    if nucleus:
        probs = probs.masked_fill((probs.cumsum(dim=-1) - probs) >= top_p[:, None], 0.0)
    cumulative = probs.cumsum(dim=-1)
    pick = torch.searchsorted(cumulative, (uniform * cumulative[:, -1])[:, None], right=True)
    pick = pick.clamp(max=logits.shape[-1] - 1)
    drawn = (order.gather(1, pick) if nucleus else pick)[:, 0]
    return torch.where(temperature == 0, greedy, drawn)


class LMForCausalLM(nn.Module):
    """``LMModel`` + ``lm_head`` (tied to ``model.embed_tokens`` when ``tie_word_embeddings``), loss, generate."""

    def __init__(self, config: LMConfig | Mapping[str, Any]) -> None:
        super().__init__()
        self.config = config = _as_config(config)
        self.model = LMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        if config.deepnorm:
            self._scale_deepnorm_init(config.deepnorm_beta)
        if config.tie_word_embeddings:
            # Same Parameter object: one storage, counted once by parameters(); both keys stay in the
            # state dict (as in HF), so a Qwen3/Llama state dict loads with strict=True.
            self.lm_head.weight = self.model.embed_tokens.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # HF Llama/Qwen3 `_init_weights`: N(0, initializer_range) for linears and embeddings; norms keep 1.
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def _scale_deepnorm_init(self, beta: float) -> None:
        # DeepNet: the value and output projections and the MLP start beta times smaller (the queries and keys
        # do not). The paper scales a Xavier init; this scales ours (N(0, INIT_STD)), the same relative change.
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, LMAttention):
                    weights = [module.v_proj.weight, module.o_proj.weight]
                elif isinstance(module, LMMLP):
                    weights = [module.gate_proj.weight, module.up_proj.weight, module.down_proj.weight]
                else:
                    continue
                for weight in weights:
                    weight.mul_(beta)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Activation (gradient) checkpointing per decoder layer: in training with gradients on, each layer keeps
        only its input and recomputes the rest in backward (less memory, one more forward of the layers)."""
        self.model.activation_checkpointing = enabled

    def num_parameters(self, active: bool = False) -> int:
        """Unique parameters (a tied embedding counts once). ``active``: per token, i.e. MoE counts only
        ``num_experts_per_tok`` routed experts (plus shared experts and the router)."""
        total = sum(p.numel() for p in self.parameters())
        if active and self.config.use_moe:
            idle = self.config.num_experts - self.config.num_experts_per_tok
            for layer in self.model.layers:
                assert isinstance(layer.mlp, LMMoE)
                total -= idle * sum(p.numel() for p in layer.mlp.experts[0].parameters())
        return total

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
        targets: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
    ) -> LMOutput:
        """``input_ids`` ``[B, T]``; the loss comes from one of

        * ``labels`` ``[B, T]`` aligned with the inputs, HF style: position t is scored on ``labels[:, t + 1]``
          (the shift happens here), so the last position has no target;
        * ``targets`` ``[B, T]`` already shifted (``targets[:, t]`` is the token after ``input_ids[:, t]``),
          the convention of the packed training windows: every position has a target.

        ``-100`` is ignored in both. ``logits_to_keep > 0`` applies ``lm_head`` to the last positions only
        (generation); it must be 0 when a loss is asked for. ``position_ids`` and ``attention_mask`` serve
        left-padded batches of rows of different lengths (see ``LMModel.forward``). ``label_smoothing`` ``e``
        makes the loss ``(1 - e) * CE + e * mean over the vocabulary of -log p`` (torch's), over the scored tokens.
        """
        if labels is not None and targets is not None:
            raise ValueError("give labels (unshifted) or targets (shifted), not both")
        if labels is not None:
            # Shift the labels instead of the logits: the same loss without copying [B, T-1, V] logits.
            targets = F.pad(labels[:, 1:], (0, 1), value=-100)
        hidden, presents, aux_loss = self.model(input_ids, past_key_values, use_cache, position_ids, attention_mask)
        if logits_to_keep > 0:
            if targets is not None:
                raise ValueError("logits_to_keep must be 0 when labels or targets are given")
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss: torch.Tensor | None = None
        if targets is not None:
            flat_targets = targets.reshape(-1)
            # fp32 CE under autocast (`.float()` is free for fp32 logits). Sum / count instead of
            # reduction="mean": the same value, but 0 (not NaN) for an all-ignored batch.
            total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), flat_targets, ignore_index=-100,
                                    reduction="sum", label_smoothing=label_smoothing)
            loss = total / (flat_targets != -100).sum().clamp(min=1)
            if aux_loss is not None:
                loss = loss + aux_loss
        return LMOutput(logits=logits, loss=loss, aux_loss=aux_loss, past_key_values=presents)

    @torch.no_grad()
    def generate_stream(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | None = None,
        generator: torch.Generator | None = None,
        attention_mask: torch.Tensor | None = None,
        repetition_penalty: float = 1.0,
    ) -> Iterator[torch.Tensor]:
        """Autoregressive decoding with the KV cache, yielding each new token of every row (``[B]``) as soon
        as it is chosen, so a caller can print while the model works.

        Greedy when ``temperature == 0``; see ``sample_next_token`` for top-k / top-p. Rows that emitted
        ``eos_token_id`` keep emitting it (so the batch stays rectangular) and decoding stops once every
        row has. A left-padded batch of prompts gives ``attention_mask`` (1 = real token, 0 = pad): each row
        then decodes as it would alone. ``repetition_penalty`` (HF semantics, see ``apply_repetition_penalty``)
        counts the row's real prompt tokens and its new tokens. Runs in eval mode (no dropout) and restores the
        previous mode when the stream ends or is closed.
        """
        if input_ids.dim() != 2:
            raise ValueError("input_ids must be [batch, seq]")
        if max_new_tokens <= 0:
            return
        if repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")
        was_training = self.training
        self.eval()
        window = self.config.sliding_window
        try:
            mask = attention_mask
            out = self(input_ids, use_cache=True, logits_to_keep=1, attention_mask=mask)
            finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            # The tokens each row holds (pads not counted): added up, as a pad may share an id with a real token.
            real = mask.long() if mask is not None else torch.ones_like(input_ids)
            counts = torch.zeros(input_ids.shape[0], self.config.vocab_size, dtype=torch.long, device=input_ids.device)
            seen = counts.scatter_add_(1, input_ids, real) > 0
            # Each row's next RoPE position (its real tokens so far), given explicitly: a sliding window's cache
            # keeps only its newest columns, so the cached length is not the position.
            next_position = real.sum(dim=1)
            cache = keep_window(out.past_key_values or [], window)
            for step in range(max_new_tokens):
                logits = apply_repetition_penalty(out.logits[:, -1].float(), seen, repetition_penalty)
                next_token = sample_next_token(logits, temperature, top_k, top_p, generator)
                if eos_token_id is not None:
                    next_token = next_token.masked_fill(finished, eos_token_id)
                    finished |= next_token == eos_token_id
                yield next_token
                if step == max_new_tokens - 1 or bool(finished.all()):
                    break
                seen[torch.arange(len(next_token), device=seen.device), next_token] = True
                if mask is not None:  # the columns the cache kept, and the new token's
                    mask = torch.cat([mask[:, mask.shape[1] - cache[0][0].shape[2]:], torch.ones_like(mask[:, :1])],
                                     dim=1)
                out = self(next_token[:, None], past_key_values=cache, use_cache=True, attention_mask=mask,
                           position_ids=next_position[:, None])
                next_position = next_position + 1
                cache = keep_window(out.past_key_values or [], window)
        finally:
            self.train(was_training)

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, **sampling: Any) -> torch.Tensor:
        """The prompt followed by ``n <= max_new_tokens`` new tokens, ``[B, T + n]``; ``sampling`` takes the
        keywords of ``generate_stream`` (temperature, top_k, top_p, eos_token_id, generator)."""
        new = self.generate_stream(input_ids, max_new_tokens, **sampling)
        return torch.cat([input_ids, *(token[:, None] for token in new)], dim=1)
