"""A straightforward eager port of MiniMind's model, its pretraining and SFT step and its LoRA (the baseline of
``lm_throughput.py`` and ``lm_finetune_throughput.py``).

    python bench/reference_minimind.py --check     # parameter counts + one tiny training step

Written from the description of MiniMind's code in ``llm.md`` §1 and §4 (``model/model_minimind.py``,
``trainer/train_pretrain.py``, jingyaogong/minimind @ d65ef2c; the minimind2 shape as in @ c090b69). It
imports nothing from smoltrain, so the benchmark measures smoltrain against an independent implementation.
It computes what MiniMind computes, *the way* MiniMind computes it:

* module structure ``MiniMindForCausalLM`` -> ``model`` (``MiniMindModel``: ``embed_tokens``, ``dropout``,
  ``layers``, ``norm``, non-persistent ``freqs_cos``/``freqs_sin`` buffers of ``[max_pos, head_dim]``) ->
  ``lm_head`` tied to ``embed_tokens``;
* ``RMSNorm``: ``weight * (x.float() * rsqrt(mean(x²) + eps)).type_as(x)`` (composite ops);
* RoPE: the precomputed tables sliced per call, ``apply_rotary_pos_emb`` on ``[B, T, heads, d]`` with
  ``rotate_half`` by ``torch.cat``; QK-norm (MiniMind-3) before RoPE when ``qk_norm``;
* attention: ``repeat_kv`` *materialises* the key/value heads (expand + reshape) before the transposes;
  ``F.scaled_dot_product_attention(is_causal=True)`` when ``flash_attn`` and ``seq_len > 1`` and there is no
  past KV and no (or an all-ones) attention mask; otherwise the explicit fp32 softmax with a ``triu(-inf)``
  mask (kept for completeness; the benchmark's training step always takes the SDPA path, as MiniMind's);
* SwiGLU ``dropout(down(silu(gate(x)) * up(x)))``;
* loss inside the model: ``logits[..., :-1, :].contiguous()`` against ``labels[..., 1:].contiguous()``,
  ``F.cross_entropy(ignore_index=-100)`` (the pretrain dataset turns padding into -100: the loss mask),
  plus the (zero for dense models) ``aux_loss``;
* training step (``train_pretrain.py``): ``loss = (res.loss + res.aux_loss) / accumulation_steps``,
  ``scaler.scale(loss).backward()`` (the GradScaler is disabled outside fp16, i.e. a pass-through),
  ``scaler.unscale_``, ``clip_grad_norm_(model.parameters(), 1.0)`` (torch's default: no ``foreach`` on the
  CPU), ``scaler.step(optimizer)`` with ``optim.AdamW(model.parameters(), lr)`` (torch defaults: no param
  groups, weight decay 0.01, single-tensor loop on the CPU), ``zero_grad(set_to_none=True)``; on CUDA the
  forward runs under ``torch.cuda.amp.autocast(bfloat16)``, on the CPU in fp32 without autocast.

Fine-tuning, from ``llm.md`` §2.1, §3 and §4 (``trainer/train_full_sft.py``, ``model/model_lora.py``,
``trainer/train_lora.py``):

* full SFT is the pretraining loop unchanged (same model-side shift and ``ignore_index=-100`` loss, the same
  AdamW over every parameter, clip 1.0) on ``SFTDataset`` rows: one conversation per row padded to
  ``max_length``, labels -100 except the assistant spans (:func:`sft_labels`); MiniMind's defaults lr 1e-5,
  batch 16, no accumulation, max_seq_len 768;
* ``LoRA(in, out, rank)``: ``A = Linear(in, rank, bias=False)`` drawn from N(0, 0.02), ``B = Linear(rank, out,
  bias=False)`` zero, output ``B(A(x))``: no ``alpha / rank`` scaling, no dropout (no biases: llm.md's 16.4K
  LoRA parameters of the tiny 128/2L model are 4 square layers x 2 x 128 x 16 exactly);
* :func:`apply_lora` gives every *square* ``nn.Linear`` (``in_features == out_features``) a ``lora`` child and
  monkey-patches its ``forward`` to ``original(x) + lora(x)``; on these models that is ``q_proj`` and ``o_proj``
  (k/v are narrower with GQA, the MLP and the head are not square); default rank 16, hard-coded in
  ``train_lora.py``;
* ``train_lora.py``: the same loop with every parameter but the ``lora`` ones frozen, ``AdamW`` over the LoRA
  parameters only and ``clip_grad_norm_`` over them only (:func:`lora_parameters`, ``make_train_step(params=)``);
  lr 1e-4, batch 32, max_seq_len 340.

Deviations (none changes the arithmetic of a step): no ``PretrainedConfig``/``PreTrainedModel``/
``GenerationMixin`` base classes, no HF output dataclass (a small tuple-like one), no YaRN scaling (off in
training), no MoE (the benchmarked shapes are dense), no KV-cache return during training (as MiniMind with
``use_cache=False``).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class MiniMindConfig:
    hidden_size: int = 512
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int = 2
    intermediate_size: int = 1408
    vocab_size: int = 6400
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-5
    rope_theta: float = 1e6
    dropout: float = 0.0
    flash_attn: bool = True
    qk_norm: bool = False  # MiniMind-3 (HEAD) has it, minimind2 has not

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * self._norm(x.float()).type_as(x)


def precompute_freqs_cis(dim: int, end: int, rope_base: float) -> tuple[torch.Tensor, torch.Tensor]:
    freqs = 1.0 / (rope_base ** (torch.arange(0, dim, 2)[: (dim // 2)].float() / dim))
    t = torch.arange(end, device=freqs.device)
    freqs = torch.outer(t, freqs).float()
    freqs_cos = torch.cat([torch.cos(freqs), torch.cos(freqs)], dim=-1)
    freqs_sin = torch.cat([torch.sin(freqs), torch.sin(freqs)], dim=-1)
    return freqs_cos, freqs_sin


def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         unsqueeze_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    def rotate_half(x: torch.Tensor) -> torch.Tensor:
        return torch.cat((-x[..., x.shape[-1] // 2:], x[..., : x.shape[-1] // 2]), dim=-1)

    q_embed = (q * cos.unsqueeze(unsqueeze_dim)) + (rotate_half(q) * sin.unsqueeze(unsqueeze_dim))
    k_embed = (k * cos.unsqueeze(unsqueeze_dim)) + (rotate_half(k) * sin.unsqueeze(unsqueeze_dim))
    return q_embed, k_embed


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    bs, slen, num_key_value_heads, head_dim = x.shape
    if n_rep == 1:
        return x
    return (x[:, :, :, None, :].expand(bs, slen, num_key_value_heads, n_rep, head_dim)
            .reshape(bs, slen, num_key_value_heads * n_rep, head_dim))


class Attention(nn.Module):
    def __init__(self, args: MiniMindConfig) -> None:
        super().__init__()
        self.num_key_value_heads = args.num_key_value_heads
        self.n_local_heads = args.num_attention_heads
        self.n_local_kv_heads = self.num_key_value_heads
        self.n_rep = self.n_local_heads // self.n_local_kv_heads
        self.head_dim = args.head_dim
        self.q_proj = nn.Linear(args.hidden_size, args.num_attention_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(args.hidden_size, self.num_key_value_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(args.hidden_size, self.num_key_value_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(args.num_attention_heads * self.head_dim, args.hidden_size, bias=False)
        self.qk_norm = args.qk_norm
        if args.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, eps=args.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, eps=args.rms_norm_eps)
        self.attn_dropout = nn.Dropout(args.dropout)
        self.resid_dropout = nn.Dropout(args.dropout)
        self.dropout = args.dropout
        self.flash = hasattr(torch.nn.functional, "scaled_dot_product_attention") and args.flash_attn

    def forward(self, x: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                past_key_value: tuple[torch.Tensor, torch.Tensor] | None = None, use_cache: bool = False,
                attention_mask: torch.Tensor | None = None):  # type: ignore[no-untyped-def]
        bsz, seq_len, _ = x.shape
        xq, xk, xv = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        xq = xq.view(bsz, seq_len, self.n_local_heads, self.head_dim)
        xk = xk.view(bsz, seq_len, self.n_local_kv_heads, self.head_dim)
        xv = xv.view(bsz, seq_len, self.n_local_kv_heads, self.head_dim)
        if self.qk_norm:
            xq, xk = self.q_norm(xq), self.k_norm(xk)
        cos, sin = position_embeddings
        xq, xk = apply_rotary_pos_emb(xq, xk, cos, sin)
        if past_key_value is not None:
            xk = torch.cat([past_key_value[0], xk], dim=1)
            xv = torch.cat([past_key_value[1], xv], dim=1)
        past_kv = (xk, xv) if use_cache else None
        xq, xk, xv = (xq.transpose(1, 2), repeat_kv(xk, self.n_rep).transpose(1, 2),
                      repeat_kv(xv, self.n_rep).transpose(1, 2))
        if (self.flash and seq_len > 1 and past_key_value is None
                and (attention_mask is None or torch.all(attention_mask == 1))):
            output = F.scaled_dot_product_attention(xq, xk, xv, dropout_p=self.dropout if self.training else 0.0,
                                                    is_causal=True)
        else:
            scores = (xq @ xk.transpose(-2, -1)) / math.sqrt(self.head_dim)
            scores[:, :, :, -seq_len:] += torch.triu(
                torch.full((seq_len, seq_len), float("-inf"), device=scores.device), diagonal=1)
            if attention_mask is not None:
                extended = attention_mask.unsqueeze(1).unsqueeze(2)
                scores = scores + (1.0 - extended) * -1e9
            scores = F.softmax(scores.float(), dim=-1).type_as(xq)
            scores = self.attn_dropout(scores)
            output = scores @ xv
        output = output.transpose(1, 2).reshape(bsz, seq_len, -1)
        output = self.resid_dropout(self.o_proj(output))
        return output, past_kv


class FeedForward(nn.Module):
    def __init__(self, config: MiniMindConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.dropout = nn.Dropout(config.dropout)
        self.act_fn = F.silu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x)))


class MiniMindBlock(nn.Module):
    def __init__(self, layer_id: int, config: MiniMindConfig) -> None:
        super().__init__()
        self.self_attn = Attention(config)
        self.layer_id = layer_id
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = FeedForward(config)

    def forward(self, hidden_states, position_embeddings, past_key_value=None, use_cache=False,  # type: ignore[no-untyped-def]
                attention_mask=None):
        residual = hidden_states
        hidden_states, present_key_value = self.self_attn(
            self.input_layernorm(hidden_states), position_embeddings, past_key_value, use_cache, attention_mask)
        hidden_states += residual
        hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states, present_key_value


class MiniMindModel(nn.Module):
    def __init__(self, config: MiniMindConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList([MiniMindBlock(i, config) for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        freqs_cos, freqs_sin = precompute_freqs_cis(config.head_dim, config.max_position_embeddings,
                                                    config.rope_theta)
        self.register_buffer("freqs_cos", freqs_cos, persistent=False)
        self.register_buffer("freqs_sin", freqs_sin, persistent=False)

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False):  # type: ignore[no-untyped-def]
        _, seq_length = input_ids.shape
        past_key_values = past_key_values or [None] * len(self.layers)
        start_pos = past_key_values[0][0].shape[1] if past_key_values[0] is not None else 0
        hidden_states = self.dropout(self.embed_tokens(input_ids))
        position_embeddings = (self.freqs_cos[start_pos:start_pos + seq_length],
                               self.freqs_sin[start_pos:start_pos + seq_length])
        presents = []
        for layer, past_key_value in zip(self.layers, past_key_values, strict=True):
            hidden_states, present = layer(hidden_states, position_embeddings, past_key_value=past_key_value,
                                           use_cache=use_cache, attention_mask=attention_mask)
            presents.append(present)
        hidden_states = self.norm(hidden_states)
        aux_loss = hidden_states.new_zeros(1).squeeze()  # sum of the MoE layers' aux losses: none here
        return hidden_states, presents, aux_loss


@dataclass
class CausalLMOutput:
    loss: torch.Tensor | None
    aux_loss: torch.Tensor
    logits: torch.Tensor


class MiniMindForCausalLM(nn.Module):
    def __init__(self, config: MiniMindConfig) -> None:
        super().__init__()
        self.config = config
        self.model = MiniMindModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.model.embed_tokens.weight = self.lm_head.weight

    def forward(self, input_ids, attention_mask=None, labels=None, past_key_values=None, use_cache=False,  # type: ignore[no-untyped-def]
                logits_to_keep=0) -> CausalLMOutput:
        hidden_states, _, aux_loss = self.model(input_ids, attention_mask, past_key_values, use_cache)
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])
        loss = None
        if labels is not None:
            shift_logits = logits[..., :-1, :].contiguous()
            shift_labels = labels[..., 1:].contiguous()
            loss = F.cross_entropy(shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1),
                                   ignore_index=-100)
        return CausalLMOutput(loss=loss, aux_loss=aux_loss, logits=logits)


def get_lr(current_step: int, total_steps: int, lr: float) -> float:
    """``trainer_utils.get_lr``: a cosine from ``lr`` down to ``0.1 * lr`` at ``total_steps`` micro-steps, no
    warmup."""
    return lr * (0.1 + 0.45 * (1 + math.cos(math.pi * current_step / total_steps)))


def make_train_step(model: MiniMindForCausalLM, lr: float = 5e-4, grad_clip: float = 1.0,
                    accumulation_steps: int = 1, device_type: str = "cpu",
                    params: list[nn.Parameter] | None = None, total_steps: int | None = None,
                    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``train_pretrain.py``'s inner loop (``train_full_sft.py``'s too) at ``accumulation_steps`` micro-steps per
    optimizer step; returns ``step(input_ids, labels) -> loss`` doing one micro-step (+ the optimizer step when it
    is due). ``params``: what the optimizer steps and the clipping sees (``train_lora.py``: the LoRA parameters,
    :func:`lora_parameters`); default every parameter of ``model``. With ``total_steps`` (the schedule's length in
    micro-steps, MiniMind's ``epochs * iters``) every micro-step first sets the LR from :func:`get_lr`, as the
    script does; past the end it stays at ``0.1 * lr`` (the script never goes past it). Without, the LR stays
    ``lr`` (what the throughput benchmarks time)."""
    params = list(model.parameters()) if params is None else params
    optimizer = torch.optim.AdamW(params, lr=lr)
    scaler = torch.amp.GradScaler(device_type, enabled=False)  # enabled only for float16
    autocast: Callable[[], AbstractContextManager] = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device_type == "cuda" else nullcontext)
    counter = [0]

    def step(input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if total_steps is not None:
            for group in optimizer.param_groups:
                group["lr"] = get_lr(min(counter[0], total_steps), total_steps, lr)
        with autocast():
            res = model(input_ids, labels=labels)
            loss = res.loss + res.aux_loss
            loss = loss / accumulation_steps
        scaler.scale(loss).backward()
        counter[0] += 1
        if counter[0] % accumulation_steps == 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


# ---------------------------------------------------------------------------------------------------
# Fine-tuning: SFT labels (dataset/lm_dataset.py SFTDataset) and LoRA (model/model_lora.py, train_lora.py)

SFT_LR, SFT_BATCH, SFT_MAX_SEQ_LEN = 1e-5, 16, 768  # train_full_sft.py's defaults
LORA_LR, LORA_BATCH, LORA_MAX_SEQ_LEN, LORA_RANK = 1e-4, 32, 340, 16  # train_lora.py's (rank hard-coded there)


def sft_labels(input_ids: torch.Tensor, supervised: torch.Tensor) -> torch.Tensor:
    """``SFTDataset``'s labels: the token where it lies in an assistant span (``supervised``, a bool mask of the
    same shape: the tokens after each ``<|im_start|>assistant\\n`` up to and including ``<|im_end|>\\n``), else
    -100; padding is never supervised. Unshifted: the model shifts."""
    return torch.where(supervised, input_ids, torch.full_like(input_ids, -100))


class LoRA(nn.Module):
    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        self.rank = rank
        self.A = nn.Linear(in_features, rank, bias=False)
        self.B = nn.Linear(rank, out_features, bias=False)
        self.A.weight.data.normal_(mean=0.0, std=0.02)
        self.B.weight.data.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.B(self.A(x))


def apply_lora(model: nn.Module, rank: int = LORA_RANK) -> list[str]:
    """Give every square linear layer a ``lora`` child added to its output (its ``forward`` replaced on the
    instance); returns their names. Freezing is ``train_lora.py``'s job (:func:`lora_parameters`)."""
    adapted = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and module.in_features == module.out_features:
            lora = LoRA(module.in_features, module.out_features, rank).to(module.weight.device)
            module.lora = lora

            def forward_with_lora(x: torch.Tensor, original: Callable = module.forward, adapter: LoRA = lora
                                  ) -> torch.Tensor:
                return original(x) + adapter(x)

            module.forward = forward_with_lora
            adapted.append(name)
    return adapted


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """``train_lora.py``'s split: parameters named ``lora`` train, every other one is frozen."""
    trained = []
    for name, param in model.named_parameters():
        if "lora" in name:
            trained.append(param)
        else:
            param.requires_grad = False
    return trained


def _check() -> None:
    for name, cfg in {"minimind2-26m": MiniMindConfig(),
                      "tiny qk-norm": MiniMindConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                                     num_key_value_heads=2, intermediate_size=448, qk_norm=True,
                                                     rms_norm_eps=1e-6)}.items():
        model = MiniMindForCausalLM(cfg)
        params = sum(p.numel() for p in model.parameters())
        print(f"{name}: {params:,} parameters")
    ids = torch.randint(0, cfg.vocab_size, (2, 16))
    step = make_train_step(model)
    print("losses:", [round(float(step(ids, ids)), 4) for _ in range(3)])
    adapted = apply_lora(model)
    trained = lora_parameters(model)
    print(f"LoRA on {', '.join(adapted)}: {sum(p.numel() for p in trained):,} parameters")
    step = make_train_step(model, lr=LORA_LR, params=trained)
    print("LoRA losses:", [round(float(step(ids, ids)), 4) for _ in range(3)])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="print parameter counts and run a tiny step")
    if parser.parse_args().check:
        _check()
