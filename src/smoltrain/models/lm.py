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
for the router and, before transformers 5, the experts).

Conventions:

* ``labels`` are *not* pre-shifted: the model shifts (``logits[:, :-1]`` vs ``labels[:, 1:]``), as MiniMind
  and HF do; ``targets`` are (the packed training windows' convention). ``-100`` is ignored.
* KV cache: a list with one ``(k, v)`` per layer, each ``[batch, kv_heads, seq, head_dim]``, stored after
  RoPE and before the GQA head expansion; new tokens are concatenated on the sequence dimension and their
  RoPE positions start at the cached length.
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
from pydantic import BaseModel, ConfigDict, model_validator
from torch import nn

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
    "apply_repetition_penalty",
    "minimind_intermediate_size",
    "rope_cos_sin",
    "sample_next_token",
    "sample_per_row",
]

INIT_STD = 0.02  # HF `initializer_range` default for Llama/Qwen3

KVCache = list[tuple[torch.Tensor, torch.Tensor]]


# ---------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------


def minimind_intermediate_size(hidden_size: int) -> int:
    """MiniMind-3's SwiGLU width rule ``ceil(hidden * pi / 64) * 64`` (2432 @768, 1664 @512, 448 @128)."""
    return math.ceil(hidden_size * math.pi / 64) * 64


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


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` of shape ``[*positions.shape, head_dim]`` in rotate-half layout (``positions`` ``[T]``, or
    ``[B, T]`` for per-row positions of a left-padded batch).

    Dimension pair ``(i, i + d/2)`` rotates by ``pos * theta^(-2i/d)``. Computed on the fly in fp32 rather
    than kept as buffers: it is tiny (``S x d``), never lost by meta-device init or cast to bf16 by
    ``model.to(dtype)``, and has no maximum length.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    freqs = positions.float()[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)  # both halves of a head share the frequencies
    return emb.cos().to(dtype), emb.sin().to(dtype)


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
        if _SDPA_HAS_GQA:
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


class LMDecoderLayer(nn.Module):
    """Pre-norm block: ``h = x + attn(norm(x))``; ``out = h + mlp(norm(h))``."""

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.self_attn = LMAttention(config)
        self.mlp: LMMLP | LMMoE = (
            LMMoE(config) if config.use_moe
            else LMMLP(config.hidden_size, config.resolved_intermediate_size, config.dropout)
        )
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        past_key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
        key_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor | None]:
        attn_out, present = self.self_attn(self.input_layernorm(x), cos_sin, past_key_value, key_mask)
        h = x + attn_out
        aux_loss: torch.Tensor | None = None
        if isinstance(self.mlp, LMMoE):
            mlp_out, aux_loss = self.mlp(self.post_attention_layernorm(h))
        else:
            mlp_out = self.mlp(self.post_attention_layernorm(h))
        return h + mlp_out, present, aux_loss


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
        self.layers = nn.ModuleList(LMDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

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
        cos_sin = rope_cos_sin(positions, self.config.resolved_head_dim, self.config.rope_theta)

        h = self.dropout(self.embed_tokens(input_ids))
        presents: KVCache = []
        aux_loss: torch.Tensor | None = None
        for i, layer in enumerate(self.layers):
            h, present, layer_aux = layer(h, cos_sin, past_key_values[i] if past_key_values else None, key_mask)
            if use_cache:
                presents.append(present)
            if layer_aux is not None:
                aux_loss = layer_aux if aux_loss is None else aux_loss + layer_aux
        return self.norm(h), (presents if use_cache else None), aux_loss


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
        try:
            mask = attention_mask
            out = self(input_ids, use_cache=True, logits_to_keep=1, attention_mask=mask)
            finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            # The tokens each row holds (pads not counted): added up, as a pad may share an id with a real token.
            real = mask.long() if mask is not None else torch.ones_like(input_ids)
            counts = torch.zeros(input_ids.shape[0], self.config.vocab_size, dtype=torch.long, device=input_ids.device)
            seen = counts.scatter_add_(1, input_ids, real) > 0
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
                if mask is not None:
                    mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                out = self(next_token[:, None], past_key_values=out.past_key_values, use_cache=True,
                           attention_mask=mask)
        finally:
            self.train(was_training)

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, **sampling: Any) -> torch.Tensor:
        """The prompt followed by ``n <= max_new_tokens`` new tokens, ``[B, T + n]``; ``sampling`` takes the
        keywords of ``generate_stream`` (temperature, top_k, top_p, eos_token_id, generator)."""
        new = self.generate_stream(input_ids, max_new_tokens, **sampling)
        return torch.cat([input_ids, *(token[:, None] for token in new)], dim=1)
