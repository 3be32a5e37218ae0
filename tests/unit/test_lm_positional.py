"""The decoder's positional and attention options (issue 17): RoPE scaling (linear, dynamic NTK, yarn) on
hand-checked cases and against transformers' own formulas, XPos, sliding-window attention (its training mask and
the cache that keeps only the window), and ``attention=math`` against SDPA. Every option is off by default."""

from __future__ import annotations

import math
from typing import Any

import pydantic
import pytest
import torch

from smoltrain.models.lm import (
    LMConfig,
    LMForCausalLM,
    RopeScaling,
    keep_window,
    rope_cos_sin,
    rope_frequencies,
    xpos_scale,
)
from tests.unit.test_lm_model import greedy_by_recomputation, tiny

pytestmark = pytest.mark.usefixtures("single_thread")


def peaked(config: LMConfig, seed: int = 0) -> LMForCausalLM:
    """A seeded model in eval mode with larger weights: peaked logits, so greedy argmax gaps dwarf fp32 rounding."""
    torch.manual_seed(seed)
    model = LMForCausalLM(config)
    for p in model.parameters():
        p.data.mul_(5.0)
    return model.eval()


# ---------------------------------------------------------------------------------------------------
# Defaults and validation
# ---------------------------------------------------------------------------------------------------


def test_every_option_is_off_by_default_and_old_configs_load_unchanged() -> None:
    cfg = LMConfig()
    assert (cfg.rope_scaling, cfg.xpos, cfg.sliding_window, cfg.attention) == (None, False, None, "sdpa")
    old = tiny().model_dump(exclude={"rope_scaling", "xpos", "xpos_scale_base", "sliding_window", "attention"})
    torch.manual_seed(0)
    before = LMForCausalLM(old)
    torch.manual_seed(0)
    after = LMForCausalLM(tiny(rope_scaling={"rope_type": "yarn", "factor": 2.0}, xpos=True, sliding_window=4,
                               attention="math"))
    # No option adds a weight: checkpoints of either kind load into the other.
    assert {k: v.shape for k, v in before.state_dict().items()} == {k: v.shape for k, v in after.state_dict().items()}


@pytest.mark.parametrize(("overrides", "message"), [
    ({"sliding_window": 0}, "sliding_window must be >= 1"),
    ({"attention": "flash"}, "'sdpa' or 'math'"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 2.0}}, "'linear', 'dynamic' or 'yarn'"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 0.5}}, "greater than or equal to 1"),
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 64}},
     "applies to rope_type yarn only"),
    ({"xpos": True, "max_position_embeddings": 1_000_000}, "too large for fp32"),
])
def test_out_of_domain_options_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        tiny(**overrides)


# ---------------------------------------------------------------------------------------------------
# RoPE scaling: formulas on hand-checked cases, and transformers' numbers
# ---------------------------------------------------------------------------------------------------


def test_linear_scaling_divides_every_frequency() -> None:
    inv_freq, attention_factor = rope_frequencies(4, 100.0, RopeScaling(rope_type="linear", factor=4.0))
    # theta^(-2i/d) = [1, 1/10], over factor 4.
    torch.testing.assert_close(inv_freq, torch.tensor([0.25, 0.025]))
    assert attention_factor == 1.0


def test_dynamic_scaling_grows_the_base_past_the_trained_length_only() -> None:
    scaling = RopeScaling(rope_type="dynamic", factor=2.0)
    for length in (1, 8):  # within max_position_embeddings = 8: plain RoPE
        inv_freq, _ = rope_frequencies(4, 100.0, scaling, max_position_embeddings=8, seq_len=torch.tensor(length))
        torch.testing.assert_close(inv_freq, torch.tensor([1.0, 0.1]))
    # L = 16: base = 100 * (2 * 16 / 8 - 1) ^ (4 / 2) = 900, so theta^(-2/4) becomes 1/30.
    inv_freq, _ = rope_frequencies(4, 100.0, scaling, max_position_embeddings=8, seq_len=torch.tensor(16))
    torch.testing.assert_close(inv_freq, torch.tensor([1.0, 1 / 30]))
    # Per-row lengths give per-row frequencies: a row of a batch computes as it would alone.
    rows, _ = rope_frequencies(4, 100.0, scaling, max_position_embeddings=8, seq_len=torch.tensor([8, 16]))
    torch.testing.assert_close(rows, torch.tensor([[1.0, 0.1], [1.0, 1 / 30]]))


def test_yarn_ramps_from_kept_to_interpolated_frequencies() -> None:
    # d = 8, theta = 1e4, trained on 64 positions, factor 4. The pair making r rotations over 64 positions is
    # 8 ln(64 / 2 pi r) / (2 ln 1e4): -0.50 for r = 32 (floor -> 0), 1.01 for r = 1 (ceil -> 2). So the ramp over
    # pairs 0..3 is [0, 1/2, 1, 1]: pair 0 keeps its frequency, pair 1 mixes half and half, pairs 2 and 3 divide by 4.
    scaling = RopeScaling(rope_type="yarn", factor=4.0, original_max_position_embeddings=64)
    inv_freq, attention_factor = rope_frequencies(8, 1e4, scaling)
    torch.testing.assert_close(inv_freq, torch.tensor([1.0, 0.5 * 0.1 + 0.5 * 0.1 / 4, 0.01 / 4, 0.001 / 4]))
    assert attention_factor == pytest.approx(0.1 * math.log(4) + 1)  # 1.1386
    cos, sin = rope_cos_sin(torch.arange(5), 8, 1e4, scaling=scaling)
    # cos and sin both carry the factor (HF's "mscale"): q.k scales by its square.
    torch.testing.assert_close(cos ** 2 + sin ** 2, torch.full((5, 8), attention_factor ** 2))


ROPE_CASES = [
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "dynamic", "factor": 4.0},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 32, "beta_fast": 16.0, "beta_slow": 2.0,
     "attention_factor": 1.3, "truncate": False},
]


@pytest.mark.parametrize("case", ROPE_CASES, ids=lambda c: c["rope_type"])
def test_rope_scaling_matches_transformers(case: dict[str, Any]) -> None:
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = transformers.Qwen3Config(hidden_size=64, num_attention_heads=4, head_dim=16, max_position_embeddings=256,
                                      rope_parameters={"rope_theta": 1e4, **case})
    for seq_len in (None, 100, 1000):  # dynamic only changes past 256
        want, want_factor = ROPE_INIT_FUNCTIONS[case["rope_type"]](config, None, seq_len=seq_len)
        length = None if seq_len is None else torch.tensor(seq_len)
        got, got_factor = rope_frequencies(16, 1e4, RopeScaling(**case), 256, length)
        # The same fp32 operations but for dynamic's base (a Python float there, an fp32 tensor here): 1 ulp.
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
        assert got_factor == pytest.approx(want_factor, rel=1e-12)


def test_dynamic_rope_in_a_padded_batch_computes_each_row_as_alone() -> None:
    scaling = RopeScaling(rope_type="dynamic", factor=2.0)
    short, long = torch.arange(10), torch.arange(20)  # past max_position_embeddings = 8: both grow the base
    batch = torch.stack((torch.cat((torch.zeros(10, dtype=torch.long), short)), long))
    cos, sin = rope_cos_sin(batch, 8, 100.0, scaling=scaling, max_position_embeddings=8)
    for row, alone in enumerate((short, long)):
        cos1, sin1 = rope_cos_sin(alone, 8, 100.0, scaling=scaling, max_position_embeddings=8)
        torch.testing.assert_close(cos[row, -len(alone):], cos1, atol=0, rtol=0)  # the same fp32 ops on each row
        torch.testing.assert_close(sin[row, -len(alone):], sin1, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------------
# XPos
# ---------------------------------------------------------------------------------------------------


def test_xpos_scale_is_zeta_to_the_distance_over_the_base() -> None:
    # d = 4: zeta = [(0 + 0.4) / 1.4, (0.5 + 0.4) / 1.4] = [2/7, 9/14], shared by pairs (0, 2) and (1, 3).
    got = xpos_scale(torch.tensor([0.0, 512.0, -1024.0]), 4, 512.0)
    zeta = torch.tensor([2 / 7, 9 / 14, 2 / 7, 9 / 14])
    torch.testing.assert_close(got, torch.stack((torch.ones(4), zeta, zeta ** -2)))


def test_xpos_attention_decays_scores_by_zeta_to_the_distance() -> None:
    """Attention with XPos against the formula spelled out: score(m, n) = sum_i rope(q_m)_i rope(k_n)_i
    zeta_i^((m - n) / B) / sqrt(d), softmax over causal keys."""
    cfg = tiny(xpos=True, xpos_scale_base=4.0, num_key_value_heads=4, qk_norm=False)  # small B: a strong decay
    torch.manual_seed(0)
    model = LMForCausalLM(cfg).eval()
    attn = model.model.layers[0].self_attn
    x = torch.randn(1, 7, cfg.hidden_size)
    cos_sin = rope_cos_sin(torch.arange(7), 8, cfg.rope_theta)
    got, (k_cached, _) = attn(x, cos_sin)

    from smoltrain.models.lm import apply_rope

    q = apply_rope(attn.q_proj(x).view(1, 7, 4, 8).transpose(1, 2), *cos_sin)
    k = apply_rope(attn.k_proj(x).view(1, 7, 4, 8).transpose(1, 2), *cos_sin)
    v = attn.v_proj(x).view(1, 7, 4, 8).transpose(1, 2)
    torch.testing.assert_close(k_cached, k)  # the cache keeps keys without the decay
    zeta = (torch.arange(4) / 4 + 0.4) / 1.4
    zeta = torch.cat((zeta, zeta))
    scores = torch.full((1, 4, 7, 7), float("-inf"))
    for m in range(7):
        for n in range(m + 1):
            scores[0, :, m, n] = (q[0, :, m] * k[0, :, n] * zeta ** ((m - n) / 4.0)).sum(-1) / math.sqrt(8)
    want = attn.o_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(1, 7, 32))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)  # fp32, different summation orders


def test_xpos_cached_decoding_equals_the_full_forward() -> None:
    """The cache keeps keys without XPos's factor and each call measures distances from its own queries: chunked
    prefill and single steps on top of a cache give the full forward's logits."""
    model = peaked(tiny(xpos=True, xpos_scale_base=8.0))
    ids = torch.randint(0, 61, (2, 14), generator=torch.Generator().manual_seed(1))
    full = model(ids).logits
    out = model(ids[:, :5], use_cache=True)
    pieces = [out.logits]
    for a, b in [(5, 11), (11, 12), (12, 14)]:
        out = model(ids[:, a:b], past_key_values=out.past_key_values, use_cache=True)
        pieces.append(out.logits)
    # fp32; the factors differ between the two ways only by where distances are measured from (rounding).
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-4, rtol=1e-4)


def test_xpos_stays_finite_over_the_longest_context_validation_allows() -> None:
    """B = 1.1 over 128 positions is just inside the bound (zeta^(64 / 1.1) = e^73): measured from the middle of the
    queries the factors stay finite in fp32, where measured from the first token they would reach e^146."""
    model = LMForCausalLM(tiny(xpos=True, xpos_scale_base=1.1, max_position_embeddings=128)).eval()
    with pytest.raises(pydantic.ValidationError, match="too large for fp32"):
        tiny(xpos=True, xpos_scale_base=0.9, max_position_embeddings=128)
    logits = model(torch.randint(0, 61, (1, 128), generator=torch.Generator().manual_seed(5))).logits
    assert torch.isfinite(logits).all()


# ---------------------------------------------------------------------------------------------------
# Sliding-window attention
# ---------------------------------------------------------------------------------------------------


def test_sliding_window_equals_full_attention_on_the_window_alone() -> None:
    """One layer with a window of 4: the logits at position t are the full-attention model's on the 4 tokens ending
    at t (given their true positions), i.e. the mask hides exactly the keys older than the window."""
    windowed = peaked(tiny(num_hidden_layers=1, sliding_window=4))
    full = LMForCausalLM(tiny(num_hidden_layers=1)).eval()
    full.load_state_dict(windowed.state_dict())
    ids = torch.randint(0, 61, (2, 11), generator=torch.Generator().manual_seed(2))
    got = windowed(ids).logits
    for t in range(11):
        start = max(0, t - 3)
        alone = full(ids[:, start:t + 1], position_ids=torch.arange(start, t + 1)[None].expand(2, -1)).logits[:, -1]
        torch.testing.assert_close(got[:, t], alone, atol=1e-4, rtol=1e-4)  # fp32, different reduction lengths
    # A window as long as the sequence changes nothing (and keeps SDPA's is_causal fast path).
    wide = LMForCausalLM(tiny(num_hidden_layers=1, sliding_window=11)).eval()
    wide.load_state_dict(windowed.state_dict())
    torch.testing.assert_close(wide(ids).logits, full(ids).logits, atol=0, rtol=0)


def test_keep_window_keeps_the_newest_window_minus_one_columns() -> None:
    cache = [(torch.arange(10.0).view(1, 1, 10, 1), -torch.arange(10.0).view(1, 1, 10, 1))]
    (k, v), = keep_window(cache, 4)
    assert k.flatten().tolist() == [7.0, 8.0, 9.0] and v.flatten().tolist() == [-7.0, -8.0, -9.0]
    assert keep_window(cache, None) is cache and keep_window(cache, 11) is cache
    assert keep_window(cache, 1)[0][0].shape[2] == 0  # a window of one: each token sees only itself


@pytest.mark.parametrize("qk_norm", [True, False])
def test_sliding_window_cache_equals_recomputation(qk_norm: bool) -> None:
    """Prefill, a chunk and single steps on a cache cut to the window give the full forward's logits; greedy
    generation (which cuts its cache to window - 1 columns) equals recomputing everything every step."""
    window = 5
    model = peaked(tiny(sliding_window=window, qk_norm=qk_norm))
    ids = torch.randint(0, 61, (2, 16), generator=torch.Generator().manual_seed(3))
    full = model(ids).logits
    out = model(ids[:, :7], use_cache=True)
    pieces, done = [out.logits], 7
    for b in (10, 11, 12, 16):
        cache = keep_window(out.past_key_values or [], window)
        assert cache[0][0].shape[2] == window - 1
        out = model(ids[:, done:b], past_key_values=cache, use_cache=True,
                    position_ids=torch.arange(done, b)[None].expand(2, -1))
        pieces.append(out.logits)
        done = b
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-4, rtol=1e-4)  # fp32, cut reductions

    prompt = ids[:, :3]
    got = model.generate(prompt, max_new_tokens=12, temperature=0.0)
    assert torch.equal(got, greedy_by_recomputation(model, prompt, 12))


def test_sliding_window_generation_of_a_padded_batch_decodes_each_row_as_alone() -> None:
    model = peaked(tiny(sliding_window=4))
    short, long = torch.randint(0, 61, (1, 3)), torch.randint(0, 61, (1, 6))
    batch = torch.cat((torch.cat((torch.zeros(1, 3, dtype=torch.long), short), dim=1), long))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[0, :3] = 0
    together = model.generate(batch, max_new_tokens=9, temperature=0.0, attention_mask=mask)
    for row, alone in enumerate((short, long)):
        assert torch.equal(together[row, -9:], model.generate(alone, max_new_tokens=9, temperature=0.0)[0, -9:])


# ---------------------------------------------------------------------------------------------------
# attention=math
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [{}, {"sliding_window": 3}, {"xpos": True}], ids=["causal", "window", "xpos"])
def test_math_attention_equals_sdpa(extra: dict[str, Any]) -> None:
    """The spelled-out softmax(QK^T / sqrt(d) + mask) V gives SDPA's numbers: causal, offset (chunk on a cache) and
    padded masks, GQA."""
    sdpa = peaked(tiny(**extra))
    math_model = LMForCausalLM(tiny(attention="math", **extra)).eval()
    math_model.load_state_dict(sdpa.state_dict())
    ids = torch.randint(0, 61, (2, 9), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :2] = 0
    # fp32: the two sum in different orders; scaled-up weights give logits of ~1e2, so 1e-4 relative.
    tol = {"atol": 1e-3, "rtol": 1e-4}
    torch.testing.assert_close(math_model(ids).logits, sdpa(ids).logits, **tol)
    torch.testing.assert_close(math_model(ids, attention_mask=mask).logits, sdpa(ids, attention_mask=mask).logits,
                               **tol)
    head = math_model(ids[:, :4], use_cache=True).past_key_values
    head_sdpa = sdpa(ids[:, :4], use_cache=True).past_key_values
    torch.testing.assert_close(math_model(ids[:, 4:], past_key_values=head).logits,
                               sdpa(ids[:, 4:], past_key_values=head_sdpa).logits, **tol)
    # And it trains: gradients flow through the explicit softmax.
    math_model.train()
    math_model(ids, labels=ids).loss.backward()
    assert all(p.grad is not None for p in math_model.parameters())
