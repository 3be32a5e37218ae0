"""The decoder's residual and normalisation options (issue 17): DeepNorm, LayerScale, DropPath and the parallel
residual, each checked against its formula on a tiny layer, and the defaults left as they were."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from smoltrain.errors import ConfigError
from smoltrain.families.lm import LMArchConfig
from smoltrain.models.lm import LMConfig, LMDecoderLayer, LMForCausalLM, drop_path, rope_cos_sin

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny(**overrides: Any) -> LMConfig:
    values: dict[str, Any] = dict(vocab_size=32, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, intermediate_size=24)
    return LMConfig(**{**values, **overrides})


def layer_inputs(config: LMConfig, seed: int = 0) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    x = torch.randn(2, 5, config.hidden_size, generator=torch.Generator().manual_seed(seed))
    return x, rope_cos_sin(torch.arange(5), config.resolved_head_dim, config.rope_theta)


def test_defaults_keep_the_qwen3_block_and_its_state_dict_names() -> None:
    model = LMForCausalLM(tiny())
    layer_keys = {k.split("layers.0.", 1)[1] for k in model.state_dict() if ".layers.0." in k}
    assert layer_keys == {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                          "self_attn.o_proj.weight", "self_attn.q_norm.weight", "self_attn.k_norm.weight",
                          "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
                          "input_layernorm.weight", "post_attention_layernorm.weight"}
    assert "model.norm.weight" in model.state_dict()
    assert tiny().residual_options_in_use() == []
    # The pre-norm formula, composed from the layer's own parts (the same ops, so equal to the bit).
    layer = model.model.layers[0]
    x, cos_sin = layer_inputs(tiny())
    h = x + layer.self_attn(layer.input_layernorm(x), cos_sin)[0]
    torch.testing.assert_close(layer(x, cos_sin)[0], h + layer.mlp(layer.post_attention_layernorm(h)), rtol=0, atol=0)


def test_deepnorm_constants_for_eight_layers_are_the_papers() -> None:
    config = tiny(num_hidden_layers=8, deepnorm=True)
    # Hand-computed: alpha = (2 * 8)^(1/4) = 16^(1/4) = 2; beta = (8 * 8)^(-1/4) = 64^(-1/4) = 1 / (2 sqrt 2).
    assert config.deepnorm_alpha == 2.0
    assert config.deepnorm_beta == pytest.approx(1 / (2 * math.sqrt(2)), rel=1e-12)
    assert tiny().deepnorm_alpha == 1.0 and tiny().deepnorm_beta == 1.0


def test_deepnorm_layer_is_post_norm_with_alpha() -> None:
    config = tiny(num_hidden_layers=8, deepnorm=True)
    layer = LMDecoderLayer(config)
    assert not hasattr(layer, "input_layernorm")
    with torch.no_grad():  # norm weights away from 1, so a swapped or missing norm shows
        layer.post_attention_layernorm.weight.uniform_(0.5, 1.5)
        layer.post_feedforward_layernorm.weight.uniform_(0.5, 1.5)
    x, cos_sin = layer_inputs(config)
    attn = layer.self_attn(x, cos_sin)[0]  # the branches see the un-normalised residual stream
    h = layer.post_attention_layernorm(2.0 * x + attn)
    want = layer.post_feedforward_layernorm(2.0 * h + layer.mlp(h))
    torch.testing.assert_close(layer(x, cos_sin)[0], want, rtol=0, atol=0)  # the same ops in the same order


def test_deepnorm_scales_the_init_of_values_outputs_and_mlp_by_beta_and_drops_the_final_norm() -> None:
    torch.manual_seed(3)
    plain = LMForCausalLM(tiny(num_hidden_layers=8))
    torch.manual_seed(3)
    deep = LMForCausalLM(tiny(num_hidden_layers=8, deepnorm=True))
    beta = deep.config.deepnorm_beta
    params = dict(plain.named_parameters())
    for name, param in deep.named_parameters():
        if not name.endswith("proj.weight"):
            continue
        scaled = any(part in name for part in ("v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
        # The same normal draws (the linears are built in the same order), times beta by the same fp32 multiply.
        assert torch.equal(param, params[name] * beta if scaled else params[name]), name
    assert isinstance(deep.model.norm, torch.nn.Identity) and "model.norm.weight" not in deep.state_dict()


def test_layer_scale_multiplies_each_branch_per_channel() -> None:
    config = tiny(layer_scale_init=1e-4)
    layer = LMDecoderLayer(config)
    assert layer.self_attn_scale is not None and layer.mlp_scale is not None
    assert torch.equal(layer.self_attn_scale.data, torch.full((16,), 1e-4))
    names = {name for name, _ in LMForCausalLM(config).named_parameters()}
    assert {"model.layers.1.self_attn_scale", "model.layers.1.mlp_scale"} <= names
    with torch.no_grad():  # distinct per-channel values: a scalar or a swapped scale would not match
        layer.self_attn_scale.copy_(torch.linspace(-1, 1, 16))
        layer.mlp_scale.copy_(torch.linspace(2, 0, 16))
    x, cos_sin = layer_inputs(config)
    h = x + layer.self_attn(layer.input_layernorm(x), cos_sin)[0] * torch.linspace(-1, 1, 16)
    want = h + layer.mlp(layer.post_attention_layernorm(h)) * torch.linspace(2, 0, 16)
    torch.testing.assert_close(layer(x, cos_sin)[0], want, rtol=0, atol=0)
    with torch.no_grad():
        layer.self_attn_scale.zero_()
        layer.mlp_scale.zero_()
    assert torch.equal(layer(x, cos_sin)[0], x)  # both branches scaled to 0: the layer is the identity
    layer(x, cos_sin)[0].sum().backward()
    assert layer.self_attn_scale.grad is not None and layer.self_attn_scale.grad.abs().sum() > 0


def test_parallel_residual_feeds_one_norm_to_both_branches() -> None:
    config = tiny(parallel_residual=True)
    layer = LMDecoderLayer(config)
    assert not hasattr(layer, "post_attention_layernorm")
    x, cos_sin = layer_inputs(config)
    normed = layer.input_layernorm(x)
    want = x + layer.self_attn(normed, cos_sin)[0] + layer.mlp(normed)
    torch.testing.assert_close(layer(x, cos_sin)[0], want, rtol=0, atol=0)


def test_drop_path_rate_rises_linearly_with_depth() -> None:
    config = tiny(num_hidden_layers=5, drop_path_rate=0.4)
    rates = [layer.drop_path_rate for layer in LMForCausalLM(config).model.layers]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4], abs=1e-12)
    assert tiny(num_hidden_layers=1, drop_path_rate=0.4).drop_path_rate_of(0) == 0.0


def test_drop_path_drops_whole_rows_keeps_the_expectation_and_is_identity_in_eval() -> None:
    torch.manual_seed(0)
    x = torch.ones(20000, 3, 4)
    out = drop_path(x, 0.25, training=True)
    per_row = out.flatten(1)
    # Each row is all 0 or all 1 / (1 - 0.25): one draw per sample, not per element.
    assert torch.equal(per_row.min(1).values, per_row.max(1).values)
    assert torch.equal(per_row[:, 0].unique(), torch.tensor([0.0, 1 / 0.75]))  # 1 / 0.75 rounded to fp32 once
    # Mean of 20000 draws of Bernoulli(0.75) * 4/3: std sqrt(0.75 * 0.25) * 4/3 / sqrt(20000) ~ 0.0041; 5 sigma.
    assert abs(per_row[:, 0].mean().item() - 1.0) < 0.021
    assert drop_path(x, 0.25, training=False) is x and drop_path(x, 0.0, training=True) is x


def test_drop_path_model_in_eval_matches_the_model_without_it() -> None:
    torch.manual_seed(1)
    plain = LMForCausalLM(tiny(num_hidden_layers=3)).eval()
    dropping = LMForCausalLM(tiny(num_hidden_layers=3, drop_path_rate=0.5))
    dropping.load_state_dict(plain.state_dict())  # the same names: DropPath has no parameters
    ids = torch.randint(0, 32, (2, 7), generator=torch.Generator().manual_seed(2))
    assert torch.equal(dropping.eval()(ids).logits, plain(ids).logits)
    torch.manual_seed(4)
    assert not torch.equal(dropping.train()(ids).logits, plain(ids).logits)  # and in training it does drop


def test_bad_values_and_the_deepnorm_parallel_mix_are_refused_with_one_line() -> None:
    with pytest.raises(ValueError, match="choose one"):
        tiny(deepnorm=True, parallel_residual=True)
    with pytest.raises(ValueError, match="drop_path_rate"):
        tiny(drop_path_rate=1.0)
    with pytest.raises(ValueError, match="layer_scale_init"):
        tiny(layer_scale_init=0.0)
    arch = LMArchConfig(vocab_size=32, hidden_size=16, num_attention_heads=4, deepnorm=True, parallel_residual=True)
    with pytest.raises(ConfigError, match="choose one"):
        arch.to_model_config()


def test_options_in_use_name_what_transformers_cannot_compute() -> None:
    used = tiny(deepnorm=True, layer_scale_init=0.1, drop_path_rate=0.2).residual_options_in_use()
    assert used == ["deepnorm=True", "layer_scale_init=0.1"]  # DropPath is the identity at inference
    assert tiny(parallel_residual=True).residual_options_in_use() == ["parallel_residual=True"]
