"""`smoltrain info`'s step cost: FLOPs from the matrix products (checked against a hand count), memory, the
parameter table."""

from __future__ import annotations

import pytest
import torch

from smoltrain.families import build_family, load_config
from smoltrain.runtime.distributed import DistEnv
from smoltrain.train.profile import count_micro_batch, measure_step, parameter_table


def _toy(tmp_path, *overrides: str):
    return load_config("toy", [f"run_dir={tmp_path}", "arch.seq_len=4", "arch.hidden_size=8", "arch.num_layers=2",
                               "arch.vocab_size=10", "global_batch_size=16", *overrides])


def test_flops_match_a_hand_count(tmp_path) -> None:
    cost = measure_step(_toy(tmp_path, "grad_accum_steps=2"))
    model = build_family(_toy(tmp_path), DistEnv(), torch.device("cpu")).build_model()
    # By hand, for a micro-batch of B=8 sequences of L=4 tokens, width W=L*H=32: each of the 2 residual layers is
    # a W x W matmul (2BW^2 FLOPs forward), the head an H x V one on every token (2BLHV); backward computes the
    # gradients of both inputs and weights, twice the forward. Norms, GELU, embeddings and the loss do no matmul.
    B, L, H, V, W, N = 8, 4, 8, 10, 32, 2
    by_hand = 3 * (N * 2 * B * W * W + 2 * B * L * H * V)
    assert cost.flops_per_micro_batch == by_hand == 113_664
    assert cost.flops_per_step == 2 * by_hand  # two micro-batches in the global batch
    assert cost.flops_per_sample == by_hand / B and cost.flops_per_token == by_hand / B / L
    params = sum(p.numel() for p in model.parameters())
    assert cost.parameter_bytes == cost.gradient_bytes == 4 * params and cost.optimizer_bytes == 8 * params


def test_activation_memory_grows_with_the_batch_and_shrinks_with_bf16(tmp_path) -> None:
    small = measure_step(_toy(tmp_path / "a", "global_batch_size=8"))
    large = measure_step(_toy(tmp_path / "b", "global_batch_size=32"))
    # The saved activations are per sample (the weights are not in them): 4x the batch, about 4x the bytes.
    assert large.activation_bytes == pytest.approx(4 * small.activation_bytes, rel=0.1)
    half = measure_step(_toy(tmp_path / "c", "global_batch_size=32"), precision="bf16")
    assert half.activation_bytes < large.activation_bytes


def test_parameter_table_adds_repeated_blocks_and_sums_to_the_model(tmp_path) -> None:
    model = build_family(_toy(tmp_path, "arch.num_layers=3"), DistEnv(), torch.device("cpu")).build_model()
    table = dict(parameter_table(model))
    assert sum(table.values()) == sum(p.numel() for p in model.parameters())
    assert table["layers"] == 3 * (32 * 32 + 32)  # the three residual layers, one row
    assert list(table)[0] == "embed_positions"  # in the order the model defines them


def test_extrapolating_from_one_and_two_rows_equals_counting_the_batch(tmp_path) -> None:
    cfg = _toy(tmp_path, "global_batch_size=5")
    family = build_family(cfg, DistEnv(), torch.device("cpu"))
    direct_flops, direct_activations = count_micro_batch(family, family.build_model(), "fp32")
    cost = measure_step(cfg)
    assert cost.flops_per_micro_batch == direct_flops
    assert cost.activation_bytes == direct_activations  # the toy saves per-row tensors only: exactly affine
