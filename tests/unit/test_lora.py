"""LoRA on the decoder LM: an adapted model starts equal to its base, merging keeps its logits, only the adapters
train, unknown targets are one line, and an adapter can be dropped to get the base back exactly."""

from __future__ import annotations

import pytest
import torch

from smoltrain.config import LoRAConfig
from smoltrain.errors import ConfigError
from smoltrain.models.lm import LMConfig, LMForCausalLM
from smoltrain.models.lora import LoRALinear, adapter_state_dict, apply_lora, merge_lora, remove_lora

TINY = LMConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=48)


def _model(seed: int = 0) -> LMForCausalLM:
    torch.manual_seed(seed)
    return LMForCausalLM(TINY).eval()


def _ids() -> torch.Tensor:
    return torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))


def _randomise_adapters(model: torch.nn.Module) -> None:
    # B starts at zero (the adapted model equals its base); a trained adapter has B != 0.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoRALinear):
                module.lora_B.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))


def test_an_adapted_model_starts_equal_to_its_base() -> None:
    model, ids = _model(), _ids()
    base = model(ids).logits
    apply_lora(model, rank=4, alpha=8, targets=["q_proj", "v_proj"])
    # B = 0: the update is an exact zero added to the base output, so the logits are identical bit for bit.
    assert torch.equal(model(ids).logits, base)


def test_merged_logits_equal_the_adapted_ones() -> None:
    model, ids = _model(), _ids()
    adapted = apply_lora(model, rank=4, alpha=8, targets="all-linear")
    assert len(adapted) == 2 * 7 and not any("lm_head" in name for name in adapted)  # all-linear spares the head
    _randomise_adapters(model)
    unmerged = model(ids).logits
    base_keys = set(_model().state_dict())
    merge_lora(model)
    assert set(model.state_dict()) == base_keys  # plain nn.Linear again: the base's keys
    # W + s*B@A folded once vs x@W + s*(x@A)@B: the same sum rounded in another order; fp32 on logits ~O(1)
    # differs by ~1e-6, the export bound of the issue is 1e-5.
    torch.testing.assert_close(model(ids).logits, unmerged, atol=1e-5, rtol=0)


def test_only_adapter_parameters_get_gradients() -> None:
    model, ids = _model(), _ids()
    apply_lora(model, rank=2, alpha=4, targets=["q_proj", "v_proj"])
    _randomise_adapters(model)  # with B = 0, A's gradient would be zero and prove nothing
    model.train()
    model(ids, labels=ids).loss.backward()
    trained = {name for name, p in model.named_parameters() if p.grad is not None}
    assert trained == set(adapter_state_dict(model))
    assert trained and all(name.endswith(("q_proj.lora_A", "q_proj.lora_B", "v_proj.lora_A", "v_proj.lora_B"))
                           for name in trained)
    assert all(not p.requires_grad for name, p in model.named_parameters() if name not in trained)


def test_adapter_dropout_applies_in_training_only() -> None:
    model, ids = _model(), _ids()
    apply_lora(model, rank=4, alpha=8, dropout=0.5, targets=["q_proj"])
    _randomise_adapters(model)
    model.eval()
    assert torch.equal(model(ids).logits, model(ids).logits)
    model.train()
    torch.manual_seed(0)
    first = model(ids).logits
    assert not torch.equal(first, model(ids).logits)


def test_unknown_targets_are_one_line_naming_the_layers_there_are() -> None:
    with pytest.raises(ConfigError) as err:
        apply_lora(_model(), rank=4, alpha=8, targets=["q_proj", "qkv"])
    message = str(err.value)
    assert "'qkv'" in message and "q_proj" in message and "down_proj" in message and "all-linear" in message
    assert "\n" not in message


def test_removing_the_adapter_gives_the_base_back_exactly() -> None:
    model, ids = _model(), _ids()
    base = model(ids).logits
    apply_lora(model, rank=4, alpha=8, targets="all-linear")
    _randomise_adapters(model)
    assert not torch.allclose(model(ids).logits, base)
    remove_lora(model)
    assert torch.equal(model(ids).logits, base)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())


def test_lora_config_defaults_and_domain() -> None:
    cfg = LoRAConfig()
    assert not cfg.enabled and cfg.targets == ["q_proj", "v_proj"]
    assert LoRAConfig(rank=8, targets="all-linear").enabled
    with pytest.raises(ValueError):
        LoRAConfig(rank=-1)
    with pytest.raises(ValueError):
        LoRAConfig(dropout=1.0)
