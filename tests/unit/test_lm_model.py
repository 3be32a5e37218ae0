"""Tests of the Qwen3/Llama-style decoder (``smoltrain.models.lm``): math against naive formulas, MiniMind
parameter counts (``llm.md`` §1.3), HF state-dict names, loss, KV-cache generation and the MoE layer."""

from __future__ import annotations

import math
from typing import Any

import pydantic
import pytest
import torch
import torch.nn.functional as F

from smoltrain.models.lm import (
    LMAttention,
    LMConfig,
    LMForCausalLM,
    LMMoE,
    apply_rope,
    minimind_intermediate_size,
    rope_cos_sin,
    sample_next_token,
    sample_per_row,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny(**overrides: Any) -> LMConfig:
    cfg: dict[str, Any] = dict(
        vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=48, rope_theta=10000.0, max_position_embeddings=128,
    )
    cfg.update(overrides)
    return LMConfig(**cfg)


def naive_attention(attn: LMAttention, x: torch.Tensor, theta: float) -> torch.Tensor:
    """softmax(QK^T / sqrt(d) + causal mask) V with kv heads repeated, all spelled out."""
    batch, seq, _ = x.shape
    h, kv, d = attn.num_heads, attn.num_kv_heads, attn.head_dim
    q = (x @ attn.q_proj.weight.T).view(batch, seq, h, d)
    k = (x @ attn.k_proj.weight.T).view(batch, seq, kv, d)
    v = (x @ attn.v_proj.weight.T).view(batch, seq, kv, d)
    if attn.q_norm is not None and attn.k_norm is not None:
        q = q / q.pow(2).mean(-1, keepdim=True).add(attn.q_norm.eps).sqrt() * attn.q_norm.weight
        k = k / k.pow(2).mean(-1, keepdim=True).add(attn.k_norm.eps).sqrt() * attn.k_norm.weight
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    cos, sin = rope_cos_sin(torch.arange(seq), d, theta)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    rep = h // kv
    k = k.repeat_interleave(rep, dim=1)  # query head j uses kv head j // rep (HF repeat_kv)
    v = v.repeat_interleave(rep, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    causal = torch.triu(torch.full((seq, seq), float("-inf")), diagonal=1)
    out = torch.softmax(scores + causal, dim=-1) @ v
    out = out.transpose(1, 2).reshape(batch, seq, h * d)
    return out @ attn.o_proj.weight.T


V2 = dict(qk_norm=False, rms_norm_eps=1e-5)  # MiniMind-2: no QK-norm, intermediate 64*ceil(int(8h/3)/64)


def hf_keys(num_layers: int, qk_norm: bool) -> set[str]:
    keys = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(num_layers):
        p = f"model.layers.{i}."
        keys |= {p + f"self_attn.{n}.weight" for n in ("q_proj", "k_proj", "v_proj", "o_proj")}
        keys |= {p + f"mlp.{n}.weight" for n in ("gate_proj", "up_proj", "down_proj")}
        keys |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
        if qk_norm:
            keys |= {p + "self_attn.q_norm.weight", p + "self_attn.k_norm.weight"}
    return keys


def greedy_by_recomputation(model: LMForCausalLM, ids: torch.Tensor, n: int) -> torch.Tensor:
    with torch.no_grad():
        for _ in range(n):
            nxt = model(ids).logits[:, -1].argmax(-1)
            ids = torch.cat((ids, nxt[:, None]), dim=1)
    return ids


def test_config_defaults_and_validation() -> None:
    cfg = LMConfig()
    assert (cfg.resolved_head_dim, cfg.resolved_intermediate_size) == (96, 2432)
    assert [minimind_intermediate_size(h) for h in (768, 512, 128)] == [2432, 1664, 448]
    assert tiny(head_dim=16).resolved_head_dim == 16
    with pytest.raises(pydantic.ValidationError):
        LMConfig(not_a_field=1)  # type: ignore[call-arg]
    with pytest.raises(pydantic.ValidationError):
        LMConfig(num_attention_heads=8, num_key_value_heads=3)
    # A plain mapping is accepted (recipes pass dicts).
    assert LMForCausalLM(tiny().model_dump()).config == tiny()


def test_rope_matches_direct_formula() -> None:
    torch.manual_seed(0)
    d, theta, positions = 8, 500.0, [0, 1, 5, 37]
    x = torch.randn(1, 1, len(positions), d, dtype=torch.float64)
    cos, sin = rope_cos_sin(torch.tensor(positions), d, theta, dtype=torch.float64)
    got = apply_rope(x, cos, sin)
    want = torch.empty_like(x)
    for t, pos in enumerate(positions):
        for i in range(d // 2):
            # Pair (i, i + d/2) rotated by pos * theta^(-2i/d) (rotate-half layout, not interleaved).
            angle = pos * theta ** (-2 * i / d)
            a, b = x[0, 0, t, i].item(), x[0, 0, t, i + d // 2].item()
            want[0, 0, t, i] = a * math.cos(angle) - b * math.sin(angle)
            want[0, 0, t, i + d // 2] = b * math.cos(angle) + a * math.sin(angle)
    # fp32 angles (as HF) limit the agreement at large pos * freq.
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_rope_scores_depend_on_relative_position_only() -> None:
    torch.manual_seed(0)
    d = 16
    q, k = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)

    def rotated(v: torch.Tensor, pos: int) -> torch.Tensor:
        cos, sin = rope_cos_sin(torch.tensor([pos]), d, 1e4, dtype=torch.float64)
        return apply_rope(v.view(1, 1, 1, d), cos, sin).flatten()

    s1 = rotated(q, 7) @ rotated(k, 3)
    s2 = rotated(q, 24) @ rotated(k, 20)
    assert abs(s1.item() - s2.item()) < 1e-5


@pytest.mark.parametrize("qk_norm", [True, False])
@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_attention_matches_naive(qk_norm: bool, kv_heads: int) -> None:
    torch.manual_seed(0)
    cfg = tiny(qk_norm=qk_norm, num_key_value_heads=kv_heads)
    attn = LMAttention(cfg)
    for p in attn.parameters():  # non-trivial norm weights too
        torch.nn.init.normal_(p, std=0.3 if p.dim() == 2 else 1.0)
    x = torch.randn(2, 9, cfg.hidden_size)
    cos_sin = rope_cos_sin(torch.arange(9), cfg.resolved_head_dim, cfg.rope_theta)
    got, (k, v) = attn(x, cos_sin)
    assert k.shape == v.shape == (2, kv_heads, 9, cfg.resolved_head_dim)
    torch.testing.assert_close(got, naive_attention(attn, x, cfg.rope_theta), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("overrides", "total", "active", "millions"),
    [
        ({}, 63_912_192, None, "63.91"),  # minimind-3 (64M)
        ({"use_moe": True}, 198_416_640, 63_936_768, "198.42"),  # minimind-3-moe, 4 experts top-1
        ({**V2, "hidden_size": 512, "num_key_value_heads": 2, "intermediate_size": 1408}, 25_829_888, None, "25.83"),
        ({**V2, "num_hidden_layers": 16, "num_key_value_heads": 2, "intermediate_size": 2048}, 104_030_976, None,
         "104.03"),
        ({**V2, "hidden_size": 640, "num_key_value_heads": 2, "intermediate_size": 1728, "use_moe": True,
          "num_experts_per_tok": 2, "n_shared_experts": 1}, 145_029_760, 91_945_600, "145.03"),
        ({"hidden_size": 512}, 30_025_216, None, "30.03"),  # "26M" shape on HEAD code, kv4
        ({"hidden_size": 512, "num_key_value_heads": 2}, 28_976_640, None, "28.98"),
        ({"hidden_size": 128, "num_hidden_layers": 2}, 1_262_272, None, "1.26"),  # tiny
    ],
)
def test_parameter_counts_match_minimind(
    overrides: dict[str, Any], total: int, active: int | None, millions: str
) -> None:
    with torch.device("meta"):  # no memory, no init cost
        model = LMForCausalLM(LMConfig(**overrides))
    assert model.num_parameters() == total
    assert f"{total / 1e6:.2f}" == millions  # the figure printed in llm.md
    if active is not None:
        assert model.num_parameters(active=True) == active


@pytest.mark.parametrize("qk_norm", [True, False])
@pytest.mark.parametrize("tie", [True, False])
def test_state_dict_names_are_hf(qk_norm: bool, tie: bool) -> None:
    model = LMForCausalLM(tiny(qk_norm=qk_norm, tie_word_embeddings=tie))
    assert set(model.state_dict()) == hf_keys(2, qk_norm)
    # Round trip by name into a fresh model (strict), as an HF export/import would do.
    LMForCausalLM(tiny(qk_norm=qk_norm, tie_word_embeddings=tie)).load_state_dict(model.state_dict(), strict=True)


def test_moe_state_dict_names() -> None:
    model = LMForCausalLM(tiny(use_moe=True, num_experts=3, n_shared_experts=1))
    keys = set(model.state_dict())
    assert "model.layers.1.mlp.gate.weight" in keys
    assert "model.layers.0.mlp.experts.2.down_proj.weight" in keys
    assert "model.layers.0.mlp.shared_experts.0.gate_proj.weight" in keys
    assert not any(k.startswith("model.layers.0.mlp.gate_proj") for k in keys)


def test_tied_embeddings_share_storage_and_init() -> None:
    tied = LMForCausalLM(tiny())
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    sd = tied.state_dict()
    assert sd["lm_head.weight"].data_ptr() == sd["model.embed_tokens.weight"].data_ptr()
    untied = LMForCausalLM(tiny(tie_word_embeddings=False))
    assert untied.lm_head.weight.data_ptr() != untied.model.embed_tokens.weight.data_ptr()
    assert untied.num_parameters() - tied.num_parameters() == 61 * 32
    # HF init: N(0, 0.02) matrices, unit norm weights, no biases anywhere.
    assert abs(tied.model.layers[0].mlp.up_proj.weight.std().item() - 0.02) < 0.003
    assert torch.equal(tied.model.norm.weight, torch.ones(32))
    assert not any(name.endswith("bias") for name, _ in tied.named_parameters())


def test_loss_is_shifted_cross_entropy() -> None:
    torch.manual_seed(0)
    model = LMForCausalLM(tiny())
    ids = torch.randint(0, 61, (3, 10))
    labels = ids.clone()
    labels[0, :4] = -100
    labels[2, 7:] = -100
    out = model(ids, labels=labels)
    want = F.cross_entropy(out.logits[:, :-1].reshape(-1, 61), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, want)
    assert out.aux_loss is None and out.past_key_values is None
    out.loss.backward()
    assert model.model.embed_tokens.weight.grad is not None
    # A batch with nothing to predict gives 0, not NaN.
    assert model(ids, labels=torch.full_like(ids, -100)).loss.item() == 0.0


def test_shifted_targets_score_every_position() -> None:
    torch.manual_seed(0)
    model = LMForCausalLM(tiny())
    ids = torch.randint(0, 61, (3, 10))
    targets = torch.randint(0, 61, (3, 10))
    targets[1, 6:] = -100  # padding
    out = model(ids, targets=targets)
    # targets[:, t] scores position t itself (no shift): the packed windows' and padded rows' convention.
    logp = out.logits.log_softmax(-1)
    keep = targets != -100
    want = -logp[keep].gather(-1, targets[keep][:, None]).mean()
    torch.testing.assert_close(out.loss, want)
    # Unshifted labels are the same loss as targets shifted by one with the last position ignored.
    labels = torch.randint(0, 61, (3, 10))
    shifted = torch.cat([labels[:, 1:], torch.full((3, 1), -100)], dim=1)
    torch.testing.assert_close(model(ids, labels=labels).loss, model(ids, targets=shifted).loss)
    with pytest.raises(ValueError, match="not both"):
        model(ids, labels=labels, targets=shifted)
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(ids, targets=shifted, logits_to_keep=1)


def test_family_data_keys_stay_in_the_family() -> None:
    # seq_len / packing describe the training rows: the LM family's arch config has them, the network's does not.
    with pytest.raises(pydantic.ValidationError):
        LMConfig.model_validate({**tiny().model_dump(), "seq_len": 64})
    with pytest.raises(pydantic.ValidationError):
        LMConfig.model_validate({**tiny().model_dump(), "seq_length": 64})
    # A run's arch config (family name, seq_len, packing) gives the network's config.
    from smoltrain.families import load_config

    arch = load_config(None, ["arch=lm-tiny-cpu", "arch.vocab_size=300", "arch.packing=false"]).arch
    data_keys = {"name", "seq_len", "packing", "document_bos"}
    assert arch.to_model_config() == LMConfig.model_validate(arch.model_dump(exclude=data_keys))


def test_a_few_steps_reduce_loss() -> None:
    torch.manual_seed(0)
    model = LMForCausalLM(tiny())
    ids = torch.randint(0, 61, (2, 12))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_cached_forward_matches_full_forward() -> None:
    torch.manual_seed(0)
    model = LMForCausalLM(tiny()).eval()
    ids = torch.randint(0, 61, (2, 11))
    full = model(ids).logits
    # Prefill 4, then a chunk of 5 (offset causal mask), then 2 single tokens.
    out = model(ids[:, :4], use_cache=True)
    pieces = [out.logits]
    for a, b in [(4, 9), (9, 10), (10, 11)]:
        out = model(ids[:, a:b], past_key_values=out.past_key_values, use_cache=True)
        pieces.append(out.logits)
    assert out.past_key_values is not None and out.past_key_values[0][0].shape == (2, 2, 11, 8)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_left_padded_rows_with_positions_and_mask_compute_as_if_alone() -> None:
    """What the server's batched decoding relies on: a row left-padded by p, given its own positions and a mask
    that hides the pads, gets the logits it gets unpadded (prefill on the padded batch, then one cached step)."""
    torch.manual_seed(0)
    model = LMForCausalLM(tiny()).eval()
    short, long = torch.randint(0, 61, (1, 4)), torch.randint(0, 61, (1, 7))
    pad = long.shape[1] - short.shape[1]
    ids = torch.cat((torch.cat((torch.zeros(1, pad, dtype=torch.long), short), dim=1), long))
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, :pad] = False
    positions = torch.stack((torch.arange(7) - pad, torch.arange(7)))
    out = model(ids, use_cache=True, position_ids=positions, attention_mask=mask)
    nxt = torch.tensor([[5], [9]])
    step = model(nxt, past_key_values=out.past_key_values, use_cache=True, position_ids=positions[:, -1:] + 1,
                 attention_mask=torch.cat((mask, torch.ones(2, 1, dtype=torch.bool)), dim=1))
    for row, (alone, token) in enumerate(((short, 5), (long, 9))):
        full = model(torch.cat((alone, torch.tensor([[token]])), dim=1)).logits[0]
        # Same ops on the same values; only the padded reduction lengths differ: fp32 rounding, far below 1e-5.
        torch.testing.assert_close(out.logits[row, -alone.shape[1]:], full[:-1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(step.logits[row, -1], full[-1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("qk_norm", [True, False])
def test_greedy_generation_with_cache_equals_recomputation(qk_norm: bool) -> None:
    torch.manual_seed(0)
    model = LMForCausalLM(tiny(qk_norm=qk_norm))
    for p in model.parameters():  # larger weights: peaked logits, so argmax ties cannot flip
        p.data.mul_(5.0)
    model.eval()
    prompt = torch.randint(0, 61, (2, 5))
    got = model.generate(prompt, max_new_tokens=10, temperature=0.0)
    assert got.shape == (2, 15) and torch.equal(got[:, :5], prompt)
    assert torch.equal(got, greedy_by_recomputation(model, prompt, 10))


def test_generate_eos_sampling_and_mode() -> None:
    torch.manual_seed(0)
    model = LMForCausalLM(tiny(dropout=0.1))
    model.train()
    prompt = torch.randint(0, 61, (2, 4))
    greedy = model.generate(prompt, max_new_tokens=6, temperature=0.0)
    assert model.training  # mode restored; decoding itself ran without dropout
    assert torch.equal(greedy, model.generate(prompt, max_new_tokens=6, temperature=0.0))
    # top_k=1 and a tiny top_p are greedy whatever the temperature.
    gen = torch.Generator().manual_seed(1)
    assert torch.equal(model.generate(prompt, 6, temperature=2.0, top_k=1, generator=gen), greedy)
    assert torch.equal(model.generate(prompt, 6, temperature=2.0, top_p=1e-6, generator=gen), greedy)
    # Same generator seed, same sample.
    a = model.generate(prompt, 6, top_k=10, top_p=0.9, generator=torch.Generator().manual_seed(3))
    b = model.generate(prompt, 6, top_k=10, top_p=0.9, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    # EOS = the first greedy token of row 0: row 0 stops at once and pads with EOS.
    eos = int(greedy[0, 4])
    out = model.generate(prompt, 6, temperature=0.0, eos_token_id=eos)
    assert (out[0, 4:] == eos).all()
    assert torch.equal(model.generate(prompt[:1], 6, temperature=0.0, eos_token_id=eos), out[:1, :5])


def test_sample_per_row_draws_each_rows_distribution() -> None:
    """Row settings apply per row: greedy rows are argmax, sampled rows follow softmax(logits / T) and a row's
    nucleus keeps exactly the tokens sample_next_token keeps."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]])
    n = 20000
    rows = logits.expand(n, -1)
    generator = torch.Generator().manual_seed(0)
    uniform = torch.rand(n, generator=generator)
    drawn = sample_per_row(rows, torch.full((n,), 0.7), torch.ones(n), uniform)
    counts = torch.bincount(drawn, minlength=5).float() / n
    want = (logits[0] / 0.7).softmax(-1)
    # Binomial standard error at n = 20000 is <= 0.0036; 5 of them leave no room for a wrong distribution.
    assert torch.all((counts - want).abs() < 5 * (want * (1 - want) / n).sqrt() + 1e-9), (counts, want)
    nucleus = sample_per_row(rows, torch.ones(n), torch.full((n,), 0.8), uniform)
    kept = {int(sample_next_token(logits, 1.0, top_p=0.8, generator=generator)) for _ in range(2000)}
    assert set(nucleus.tolist()) == kept
    greedy_logits = torch.randn(3, 7)
    out = sample_per_row(greedy_logits, torch.tensor([0.0, 1.0, 0.0]), torch.ones(3), torch.rand(3))
    assert out[0] == greedy_logits[0].argmax() and out[2] == greedy_logits[2].argmax()


def test_sample_next_token_filters() -> None:
    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0]])
    gen = torch.Generator().manual_seed(0)
    draws = {int(sample_next_token(logits, 1.0, top_k=2, generator=gen)) for _ in range(200)}
    assert draws == {1, 2}
    # p(1) ~ 0.50, p(2) ~ 0.45: top_p=0.6 keeps exactly these two.
    draws = {int(sample_next_token(logits, 1.0, top_p=0.6, generator=gen)) for _ in range(200)}
    assert draws == {1, 2}
    assert int(sample_next_token(logits, 0.0)) == 1


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("n_shared", [0, 1])
def test_moe_routes_top_k_and_matches_naive(top_k: int, n_shared: int) -> None:
    torch.manual_seed(0)
    cfg = tiny(use_moe=True, num_experts=4, num_experts_per_tok=top_k, n_shared_experts=n_shared,
               aux_loss_alpha=0.01)
    moe = LMMoE(cfg)
    torch.nn.init.normal_(moe.gate.weight, std=0.5)
    x = torch.randn(2, 6, 32)
    probs, weights, indices = moe.route(x.reshape(-1, 32))
    torch.testing.assert_close(probs, torch.softmax(x.reshape(-1, 32) @ moe.gate.weight.T, dim=-1))
    assert torch.equal(indices, probs.topk(top_k, dim=-1).indices)
    torch.testing.assert_close(weights.sum(-1), torch.ones(12))

    out, aux = moe(x)
    flat = x.reshape(-1, 32)
    want = torch.zeros_like(flat)
    for t in range(flat.shape[0]):
        for s in range(top_k):
            want[t] += weights[t, s] * moe.experts[int(indices[t, s])](flat[t])
        for shared in moe.shared_experts:
            want[t] += shared(flat[t])
    torch.testing.assert_close(out, want.view_as(x), atol=1e-6, rtol=1e-5)

    # Switch loss: alpha * E * sum_i f_i P_i, positive, differentiable through the router.
    f = torch.zeros(4)
    for e in indices.flatten().tolist():
        f[e] += 1.0 / indices.numel()
    torch.testing.assert_close(aux, 0.01 * 4 * (f * probs.mean(0)).sum())
    assert aux.item() > 0
    aux.backward()
    assert moe.gate.weight.grad is not None and moe.gate.weight.grad.abs().sum() > 0


def test_moe_model_loss_includes_aux_and_every_expert_gets_grad() -> None:
    torch.manual_seed(0)
    model = LMForCausalLM(tiny(use_moe=True, num_experts=4, num_experts_per_tok=1))
    ids = torch.randint(0, 61, (2, 3))  # 6 tokens: some experts may go unused
    out = model(ids, labels=ids)
    assert out.aux_loss is not None and out.aux_loss.item() > 0
    ce = F.cross_entropy(out.logits[:, :-1].reshape(-1, 61), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, ce + out.aux_loss)
    out.loss.backward()
    # Idle experts still get a (zero) gradient in training, so DDP does not complain.
    assert all(p.grad is not None for p in model.parameters())
    # Generation works with MoE layers too.
    model.eval()
    assert torch.equal(model.generate(ids, 4, temperature=0.0), greedy_by_recomputation(model, ids, 4))
