"""Issue 16's levers: the optimizer a config names (adam_atan2, adamw, muon and its parameter split), the seeded
eval subset, the best checkpoint kept through pruning, and compile=auto's rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smoltrain.errors import ConfigError
from smoltrain.families import build_family, load_config
from smoltrain.families.base import eval_subset
from smoltrain.optim import AdamATan2, SparseSignSGD
from smoltrain.runs import checkpoint as ckpt
from smoltrain.runtime.distributed import DistEnv
from smoltrain.train.compile import COMPILE_AUTO_MIN_PARAMETERS, resolve_compile, resolve_compile_mode
from smoltrain.train.trainer import best_rule

TRM = ["arch=trm", "arch.seq_len=16", "arch.vocab_size=6", "arch.num_puzzle_identifiers=3", "arch.hidden_size=32",
       "arch.num_heads=2", "arch.L_layers=1", "device=cpu"]
LM = ["arch=lm", "arch.vocab_size=64", "arch.hidden_size=32", "arch.num_hidden_layers=1",
      "arch.num_attention_heads=4", "arch.num_key_value_heads=2"]


def optimizers(overrides: list[str]):
    family = build_family(load_config(None, overrides), DistEnv(), torch.device("cpu"))
    model = family.build_model()
    return model, family.build_optimizers(model)


def names_of(model: torch.nn.Module, params: list[torch.Tensor]) -> set[str]:
    ids = {id(p) for p in params}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def test_trm_builds_the_optimizer_the_config_names() -> None:
    _, specs = optimizers(TRM)  # default: the reference's AdamATan2, plus the puzzle embedding's sign-SGD
    assert [type(s.optimizer) for s in specs] == [AdamATan2, SparseSignSGD]
    model, specs = optimizers([*TRM, "optimizer=adamw", "lr=3e-4"])
    assert [type(s.optimizer) for s in specs] == [torch.optim.AdamW, SparseSignSGD]
    assert specs[0].base_lr == 3e-4
    assert names_of(model, specs[0].optimizer.param_groups[0]["params"]) == {n for n, _ in model.named_parameters()}


def test_an_unknown_optimizer_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [*TRM, "optimizer=sgd"])
    message = str(err.value)
    assert "optimizer" in message and "adamw" in message and "muon" in message and "\n" not in message


def test_muon_takes_the_hidden_matrices_of_trm_and_adamw_the_rest() -> None:
    model, specs = optimizers([*TRM, "optimizer=muon", "muon_lr=0.03", "muon_weight_decay=0.01"])
    muon, adamw, sparse = (s.optimizer for s in specs)
    assert (type(muon), type(adamw), type(sparse)) == (torch.optim.Muon, torch.optim.AdamW, SparseSignSGD)
    assert specs[0].base_lr == 0.03 and muon.param_groups[0]["weight_decay"] == 0.01
    hidden = names_of(model, muon.param_groups[0]["params"])
    assert hidden == {f"model.inner.L_level.layers.0.{n}.weight" for n in
                      ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")}
    assert names_of(model, adamw.param_groups[0]["params"]) == {
        "model.inner.embed_tokens.embedding_weight", "model.inner.lm_head.weight", "model.inner.q_head.weight",
        "model.inner.q_head.bias"}


def test_muon_takes_the_hidden_matrices_of_the_lm() -> None:
    model, specs = optimizers([*LM, "optimizer=muon"])
    muon, adamw = (s.optimizer for s in specs)
    assert specs[0].base_lr == 0.02 and muon.param_groups[0]["weight_decay"] == 0.005  # the sic recipe's defaults
    hidden = names_of(model, muon.param_groups[0]["params"])
    assert hidden == {f"model.layers.0.{n}.weight" for n in ("self_attn.q_proj", "self_attn.k_proj",
                      "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    rest = names_of(model, adamw.param_groups[0]["params"])
    assert "model.embed_tokens.weight" in rest and all("norm" in n for n in rest - {"model.embed_tokens.weight"})
    assert len(hidden) + len(rest) == len(list(model.parameters()))  # every parameter in exactly one


def test_a_muon_step_updates_every_parameter() -> None:
    model, specs = optimizers([*LM, "optimizer=muon"])
    before = [p.detach().clone() for p in model.parameters()]
    ids = torch.randint(0, 64, (2, 8))
    model(ids, targets=ids).loss.backward()
    for spec in specs:
        for group in spec.optimizer.param_groups:
            group["lr"] = spec.base_lr
        spec.optimizer.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_eval_subset_is_seeded_stable_and_not_the_first_rows() -> None:
    a, b = eval_subset(1000, 50, seed=3), eval_subset(1000, 50, seed=3)
    assert a is not None and np.array_equal(a, b)  # the same examples at every evaluation of a run
    assert len(np.unique(a)) == 50 and np.all(np.diff(a) > 0) and a.max() < 1000
    assert not np.array_equal(a, np.arange(50))
    assert not np.array_equal(a, eval_subset(1000, 50, seed=4))
    assert eval_subset(1000, None, seed=3) is None and eval_subset(40, 50, seed=3) is None  # all of them


def test_pruning_keeps_the_protected_best(tmp_path) -> None:
    weights = {"w": torch.zeros(2)}
    for step in range(1, 6):
        protect = tmp_path / ckpt.step_dir_name(2) if step > 2 else None
        ckpt.save_checkpoint(tmp_path, step, weights, None, {"step": step}, keep=2, protect=protect)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [ckpt.step_dir_name(s) for s in (2, 4, 5)]
    ckpt.save_checkpoint(tmp_path, 6, weights, None, {"step": 6}, keep=2)  # no longer the best: pruned
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [ckpt.step_dir_name(s) for s in (5, 6)]


@pytest.mark.parametrize("spec, rule", [
    ("exact_accuracy", ("exact_accuracy", True)), ("loss", ("loss", False)), ("-loss", ("loss", False)),
    ("bits_per_byte", ("bits_per_byte", False)), ("-accuracy", ("accuracy", False)), ("+loss", ("loss", True)),
])
def test_keep_best_direction(spec, rule) -> None:
    assert best_rule(spec) == rule


def test_keep_best_without_a_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="names no metric"):
        best_rule("-")


def test_compile_auto_rule() -> None:
    cpu, cuda, big = torch.device("cpu"), torch.device("cuda"), COMPILE_AUTO_MIN_PARAMETERS
    assert resolve_compile("auto", cuda, 10, 10)
    assert resolve_compile("auto", cpu, big, 1000) and not resolve_compile("auto", cpu, big - 1, 1000)
    assert not resolve_compile("auto", cpu, big, 20)  # a short run does not earn its compile time back
    assert not resolve_compile("auto", torch.device("mps"), big, 1000)
    assert resolve_compile(True, cpu, 1, 1) and not resolve_compile(False, cuda, big, 1000)
    assert resolve_compile_mode("reduce-overhead", cuda) == ("reduce-overhead", None)
    mode, note = resolve_compile_mode("reduce-overhead", cpu)
    assert mode is None and "CUDA" in note
    assert resolve_compile_mode("default", cpu) == (None, None)


def test_compile_auto_is_a_valid_setting() -> None:
    assert load_config(None, [*LM, "compile=auto"]).compile == "auto"
    with pytest.raises(ConfigError):
        load_config(None, [*LM, "compile_mode=graphs"])


def test_cuda_graph_steps_copy_the_carry_out_of_the_graphs_memory() -> None:
    """Under compile_mode=reduce-overhead the carry that crosses optimizer steps must not live in CUDA-graph output
    memory, which the next replay overwrites: the trainer keeps a copy with storage of its own (checked here on the
    CPU, where the copy is the same code; the graphs themselves need a GPU, bench/gpu_check.py runs them)."""
    from types import SimpleNamespace

    from smoltrain.train.trainer import Trainer

    family = build_family(load_config(None, [*TRM, "global_batch_size=2"]), DistEnv(), torch.device("cpu"))
    head = family.build_model()
    batch = {"inputs": torch.randint(1, 6, (2, 16), dtype=torch.int32),
             "labels": torch.randint(1, 6, (2, 16), dtype=torch.int32),
             "puzzle_identifiers": torch.tensor([1, 2], dtype=torch.int32)}
    carry = head(head.initial_carry(batch), batch).carry
    copy = Trainer._own_carry(SimpleNamespace(family=family), carry)  # type: ignore[arg-type]
    before, after = family.carry_state(carry), family.carry_state(copy)
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]) and before[key].data_ptr() != after[key].data_ptr(), key
    assert Trainer._own_carry(SimpleNamespace(family=family), None) is None  # type: ignore[arg-type]
