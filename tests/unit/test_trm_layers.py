"""Unit tests of the TRM building blocks (smoltrain.models.trm_layers)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from smoltrain.models.trm import TRMBlock, TRMConfig
from smoltrain.models.trm_layers import (
    Attention,
    CastedEmbedding,
    CastedLinear,
    RotaryEmbedding,
    SwiGLU,
    apply_rotary_pos_emb,
    rms_norm,
    round_up_to_multiple,
    swiglu_intermediate_size,
    trunc_normal_init_,
)


def test_trunc_normal_actual_std_and_bounds() -> None:
    torch.manual_seed(0)
    std = 0.5
    t = trunc_normal_init_(torch.empty(400_000), std=std)
    assert abs(t.std().item() - std) < 0.005  # the *actual* std, not the pre-truncation one
    assert abs(t.mean().item()) < 0.005
    comp = 1.1373  # ±2σ compensation factor
    assert t.abs().max().item() <= 2 * std * comp + 1e-6
    assert t.abs().max().item() > 2 * std  # the bound is 2 * compensated std, not 2 * std
    assert torch.equal(trunc_normal_init_(torch.ones(5), std=0.0), torch.zeros(5))


def test_trunc_normal_asymmetric_bounds() -> None:
    torch.manual_seed(1)
    t = trunc_normal_init_(torch.empty(100_000), std=1.0, lower=-1.0, upper=3.0)
    assert abs(t.std().item() - 1.0) < 0.01
    assert t.min().item() >= -1.0 * 2  # within lower * comp_std (comp_std < 2 here)


def test_rms_norm_value_and_dtype() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
    torch.testing.assert_close(rms_norm(x, 1e-5), expected)
    # over another axis
    expected_seq = x / torch.sqrt(x.pow(2).mean(1, keepdim=True) + 1e-5)
    torch.testing.assert_close(rms_norm(x, 1e-5, dim=1), expected_seq)
    torch.testing.assert_close(rms_norm(x, 1e-5, dim=-2), expected_seq)
    # bf16 in, bf16 out, computed in fp32
    xb = x.to(torch.bfloat16)
    out = rms_norm(xb, 1e-5)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, rms_norm(xb.float(), 1e-5).to(torch.bfloat16))


def test_swiglu_widths() -> None:
    assert swiglu_intermediate_size(512, 4) == 1536
    assert swiglu_intermediate_size(97, 4) == 512  # token mix over 16 + 81 positions
    assert swiglu_intermediate_size(916, 4) == 2560  # token mix over 16 + 900 positions
    assert swiglu_intermediate_size(64, 4) == 256
    assert swiglu_intermediate_size(64, 4, multiple=32) == 192  # round(170.67) = 171 -> 192
    assert round_up_to_multiple(256, 256) == 256
    m = SwiGLU(512, 4)
    assert m.gate_up_proj.weight.shape == (2 * 1536, 512)
    assert m.down_proj.weight.shape == (512, 1536)


def test_swiglu_value_gate_first() -> None:
    torch.manual_seed(0)
    m = SwiGLU(16, 2, multiple=8)
    x = torch.randn(2, 3, 16)
    inter = m.intermediate_size
    w = m.gate_up_proj.weight
    gate, up = x @ w[:inter].T, x @ w[inter:].T
    expected = (F.silu(gate) * up) @ m.down_proj.weight.T
    torch.testing.assert_close(m(x), expected)


def test_casted_linear_init_and_cast() -> None:
    torch.manual_seed(0)
    lin = CastedLinear(400, 300, bias=True)
    assert lin.weight.dtype == torch.float32
    assert abs(lin.weight.std().item() - 1 / math.sqrt(400)) < 0.002
    assert lin.bias is not None and torch.equal(lin.bias, torch.zeros(300))
    x = torch.randn(2, 400, dtype=torch.bfloat16)
    y = lin(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, F.linear(x, lin.weight.to(torch.bfloat16), lin.bias.to(torch.bfloat16)))
    assert CastedLinear(4, 3, bias=False).bias is None
    assert set(dict(lin.named_parameters())) == {"weight", "bias"}


def test_casted_embedding() -> None:
    torch.manual_seed(0)
    emb = CastedEmbedding(1000, 64, init_std=0.125, cast_to=torch.bfloat16)
    assert set(dict(emb.named_parameters())) == {"embedding_weight"}
    assert abs(emb.embedding_weight.std().item() - 0.125) < 0.003
    ids = torch.tensor([[3, 7]], dtype=torch.int32)
    out = emb(ids)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out[0, 1], emb.embedding_weight[7].to(torch.bfloat16))


def test_rope_tables_and_rotation_property() -> None:
    head_dim, n_pos = 8, 12
    rope = RotaryEmbedding(head_dim, n_pos, base=10000.0)
    cos, sin = rope()
    assert cos.shape == (n_pos, head_dim) and cos.dtype == torch.float32
    # NeoX layout: both halves share frequencies; position 0 is the identity.
    torch.testing.assert_close(cos[:, : head_dim // 2], cos[:, head_dim // 2 :])
    assert torch.equal(cos[0], torch.ones(head_dim)) and torch.equal(sin[0], torch.zeros(head_dim))
    assert len(dict(rope.state_dict())) == 0  # non-persistent, not in checkpoints

    torch.manual_seed(0)
    q = torch.randn(1, 1, 1, head_dim).expand(1, n_pos, 1, head_dim)
    k = torch.randn(1, 1, 1, head_dim).expand(1, n_pos, 1, head_dim)
    rq, rk = apply_rotary_pos_emb(q, k, cos, sin)
    # A rotation keeps norms ...
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1))
    # ... and <R_m q, R_n k> depends only on m - n.
    scores = torch.einsum("d,nd->n", rq[0, 5, 0], rk[0, :, 0])
    shifted = torch.einsum("d,nd->n", rq[0, 8, 0], rk[0, :, 0])
    torch.testing.assert_close(scores[2:5], shifted[5:8])
    # Explicit NeoX formula on one pair (i, i + d/2) at position 3 with frequency theta_i.
    i, m = 1, 3
    theta = m * 10000.0 ** (-2 * i / head_dim)
    a, b = q[0, m, 0, i], q[0, m, 0, i + head_dim // 2]
    torch.testing.assert_close(rq[0, m, 0, i], a * math.cos(theta) - b * math.sin(theta))
    torch.testing.assert_close(rq[0, m, 0, i + head_dim // 2], b * math.cos(theta) + a * math.sin(theta))


@pytest.mark.parametrize("use_rope", [False, True])
def test_attention_matches_manual(use_rope: bool) -> None:
    torch.manual_seed(0)
    batch, seq, hidden, heads = 2, 5, 16, 4
    head_dim = hidden // heads
    attn = Attention(hidden, head_dim, heads)
    assert attn.qkv_proj.weight.shape == (3 * hidden, hidden) and attn.qkv_proj.bias is None
    assert attn.o_proj.weight.shape == (hidden, hidden)
    x = torch.randn(batch, seq, hidden)
    cos_sin = RotaryEmbedding(head_dim, seq, 10000.0)() if use_rope else None

    q, k, v = (x @ attn.qkv_proj.weight.T).view(batch, seq, 3, heads, head_dim).unbind(2)
    if cos_sin is not None:
        q, k = apply_rotary_pos_emb(q, k, *cos_sin)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)  # non-causal: full matrix
    out = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(batch, seq, hidden)
    expected = out @ attn.o_proj.weight.T
    torch.testing.assert_close(attn(cos_sin, x), expected, rtol=1e-5, atol=1e-5)


def test_mlp_t_block_normalises_over_sequence_axis() -> None:
    torch.manual_seed(0)
    cfg = TRMConfig(
        batch_size=2, seq_len=6, vocab_size=5, num_puzzle_identifiers=1, H_cycles=1, L_cycles=1,
        L_layers=1, hidden_size=8, expansion=2, num_heads=2, pos_encodings="none", halt_max_steps=1,
        halt_exploration_prob=0.0, forward_dtype="float32", mlp_t=True, swiglu_multiple=8,
    )
    block = TRMBlock(cfg)
    assert block.mlp_t.gate_up_proj.weight.shape[1] == 6  # mixes the 6 positions (no prefix)
    h = torch.randn(2, 6, 8)

    def rms(x: torch.Tensor, dim: int) -> torch.Tensor:
        return x / torch.sqrt(x.pow(2).mean(dim, keepdim=True) + 1e-5)

    w_gu, w_d = block.mlp_t.gate_up_proj.weight, block.mlp_t.down_proj.weight
    gate, up = torch.einsum("is,bsd->bid", w_gu, h).chunk(2, dim=1)
    mixed = torch.einsum("si,bid->bsd", w_d, F.silu(gate) * up)
    h1 = rms(h + mixed, dim=1)  # over the sequence axis
    h2 = rms(h1 + block.mlp(h1), dim=2)
    torch.testing.assert_close(block(h), h2, rtol=1e-5, atol=1e-5)
