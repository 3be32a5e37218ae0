"""Activation checkpointing (issue 17): the LM's decoder layers and TRM's recursion steps, recomputed in backward,
give the same loss and gradients as without, keep fewer activations, and the families apply the flag."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from smoltrain.errors import ConfigError
from smoltrain.families import build_family, load_config
from smoltrain.models.hrm import HRM
from smoltrain.models.lm import LMConfig, LMForCausalLM
from smoltrain.models.trm import TRM, TRMReasoningModule
from smoltrain.runtime.distributed import DistEnv
from tests.unit.test_trm_model import make_batch, tiny_config

pytestmark = pytest.mark.usefixtures("single_thread")


def saved_bytes_and_grads(model: nn.Module, step: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, int,
                                                                                      dict[str, torch.Tensor]]:
    """(loss, bytes of the activation storages autograd keeps for backward, gradients) of one step. A checkpointed
    region saves through its own hooks (inner ones win), so only what it keeps (its inputs) is counted here."""
    saved: dict[int, int] = {}
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.untyped_storage().data_ptr() not in weights:
            saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = step()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), sum(saved.values()), grads


def assert_same(plain: tuple[torch.Tensor, int, dict[str, torch.Tensor]],
                checkpointed: tuple[torch.Tensor, int, dict[str, torch.Tensor]]) -> None:
    # Bit-equal: the recomputation runs the same ops on the same inputs (with the RNG state restored, so the same
    # dropout masks), and backward then runs the same kernels in the same order as without checkpointing.
    assert torch.equal(plain[0], checkpointed[0])
    assert plain[2].keys() == checkpointed[2].keys() and plain[2]
    for name, grad in plain[2].items():
        assert torch.equal(grad, checkpointed[2][name]), name
    assert checkpointed[1] < plain[1] / 3  # and it did keep less: only each layer's input, not its insides


LM_VARIANTS = {
    "dropout-and-drop-path": dict(dropout=0.2, drop_path_rate=0.3),
    "moe-layer-scale": dict(use_moe=True, num_experts=3, num_experts_per_tok=2, layer_scale_init=0.5),
    "deepnorm": dict(deepnorm=True),
}


@pytest.mark.parametrize("variant", list(LM_VARIANTS))
def test_lm_checkpointing_gives_the_same_gradients(variant: str) -> None:
    config = LMConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=48, **LM_VARIANTS[variant])
    ids = torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(1))
    results = []
    for enabled in (False, True):
        torch.manual_seed(0)
        model = LMForCausalLM(config).train()
        model.set_activation_checkpointing(enabled)
        torch.manual_seed(7)  # the same dropout / DropPath draws on both sides
        results.append(saved_bytes_and_grads(model, lambda m=model: m(ids, targets=ids).loss))
    assert_same(*results)


def test_lm_checkpointing_leaves_eval_and_generation_alone() -> None:
    config = LMConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2)
    torch.manual_seed(0)
    model = LMForCausalLM(config)
    prompt = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(2))
    before = model.generate(prompt, 6, temperature=0)
    model.set_activation_checkpointing(True)
    assert torch.equal(model.generate(prompt, 6, temperature=0), before)


def trm_step(model: TRM, batch: dict[str, torch.Tensor]) -> Callable[[], torch.Tensor]:
    def step() -> torch.Tensor:
        carry = model.initial_carry(batch)
        _, outputs = model(carry, batch)
        return outputs["logits"].float().pow(2).mean() + outputs["q_halt_logits"].sum()
    return step


@pytest.mark.parametrize("model_class", [TRM, HRM])
def test_trm_checkpointing_gives_the_same_gradients(model_class: type[TRM]) -> None:
    extra: dict[str, Any] = {"H_layers": 1} if model_class is HRM else {}
    config = tiny_config(H_cycles=3, L_cycles=3, L_layers=2, **extra)
    batch = make_batch(0)
    results = []
    for enabled in (False, True):
        torch.manual_seed(0)
        model = model_class(config).train()
        model.set_activation_checkpointing(enabled)
        modules = [m for m in model.modules() if isinstance(m, TRMReasoningModule)]
        assert modules and all(m.activation_checkpointing is enabled for m in modules)
        loss, saved, grads = saved_bytes_and_grads(model, trm_step(model, batch))
        # The puzzle embedding's rows of this batch are a buffer leaf: their gradient must come through as well.
        assert model.puzzle_emb is not None and model.puzzle_emb.local_weights.grad is not None
        grads["puzzle_emb.local_weights"] = model.puzzle_emb.local_weights.grad.clone()
        model.puzzle_emb.local_weights.grad = None
        results.append((loss, saved, grads))
    assert_same(*results)


LM_RUN = ["arch=lm", "arch.vocab_size=64", "arch.hidden_size=32", "arch.num_hidden_layers=1",
          "arch.num_attention_heads=4", "arch.num_key_value_heads=2"]
TRM_RUN = ["arch=trm", "arch.seq_len=16", "arch.vocab_size=6", "arch.num_puzzle_identifiers=3",
           "arch.hidden_size=32", "arch.num_heads=2", "arch.L_layers=1", "device=cpu"]


def test_families_apply_the_flag_and_the_toy_family_refuses_it() -> None:
    cpu = torch.device("cpu")
    for overrides in (LM_RUN, TRM_RUN):
        on = build_family(load_config(None, [*overrides, "activation_checkpointing=true"]), DistEnv(), cpu)
        off = build_family(load_config(None, overrides), DistEnv(), cpu)
        for family, enabled in ((on, True), (off, False)):
            flags = [m.activation_checkpointing for m in family.build_model().modules()
                     if hasattr(m, "activation_checkpointing")]
            assert flags and all(flag is enabled for flag in flags)
    toy = load_config("toy", ["arch.seq_len=4", "arch.hidden_size=8", "activation_checkpointing=true"])
    with pytest.raises(ConfigError, match="activation_checkpointing=true is for LM and TRM-family runs"):
        build_family(toy, DistEnv(), cpu)
