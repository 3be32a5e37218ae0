"""Tests of TRM, its ACT wrapper, the variants (HRM, single-z) and reference-checkpoint compatibility."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pydantic
import pytest
import torch

from smoltrain.models.hrm import HRM, HRMConfig, TRMSingleZ
from smoltrain.models.trm import (
    TRM,
    CastedSparseEmbedding,
    TRMConfig,
    act_inference,
    carry_from_state,
    carry_to_state,
)
from smoltrain.models.trm_loss import ACTLossHead

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_config(**overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = dict(
        batch_size=4, seq_len=6, vocab_size=5, num_puzzle_identifiers=3, puzzle_emb_ndim=8, puzzle_emb_len=1,
        H_cycles=2, L_cycles=2, L_layers=1, hidden_size=8, expansion=2, num_heads=2, pos_encodings="rope",
        halt_max_steps=3, halt_exploration_prob=0.0, forward_dtype="float32", swiglu_multiple=8,
    )
    cfg.update(overrides)
    return cfg


def make_batch(seed: int, batch_size: int = 4, seq_len: int = 6, vocab: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "inputs": torch.randint(0, vocab, (batch_size, seq_len), generator=g),
        "labels": torch.randint(0, vocab, (batch_size, seq_len), generator=g),
        "puzzle_identifiers": torch.randint(0, 3, (batch_size,), generator=g, dtype=torch.int32),
    }


def set_q_bias(model: TRM, q_halt: float, q_continue: float) -> None:
    with torch.no_grad():
        model.inner.q_head.bias.copy_(torch.tensor([q_halt, q_continue]))


SUDOKU = dict(
    batch_size=8, seq_len=81, vocab_size=11, num_puzzle_identifiers=1, puzzle_emb_ndim=512, H_cycles=3,
    L_cycles=6, L_layers=2, hidden_size=512, expansion=4, num_heads=8, halt_max_steps=16,
    halt_exploration_prob=0.1,
)


def count_params(cls: type[TRM], cfg: dict[str, Any]) -> int:
    with torch.device("meta"):  # no memory, no init cost
        model = cls(cfg)
    return sum(p.numel() for p in model.parameters())


# From the reference's checkpoints (hidden 64, seq 81, vocab 11, ndim 64, len 16, 3 ids, L_layers 2).
REFERENCE_KEYS = {
    "mlp_t": """
model.inner.H_init (64,) float32
model.inner.L_init (64,) float32
model.inner.embed_tokens.embedding_weight (11, 64) float32
model.inner.lm_head.weight (11, 64) float32
model.inner.q_head.weight (2, 64) float32
model.inner.q_head.bias (2,) float32
model.inner.puzzle_emb.weights (3, 64) float32
model.inner.L_level.layers.0.mlp_t.gate_up_proj.weight (1024, 97) float32
model.inner.L_level.layers.0.mlp_t.down_proj.weight (97, 512) float32
model.inner.L_level.layers.0.mlp.gate_up_proj.weight (512, 64) float32
model.inner.L_level.layers.0.mlp.down_proj.weight (64, 256) float32
model.inner.L_level.layers.1.mlp_t.gate_up_proj.weight (1024, 97) float32
model.inner.L_level.layers.1.mlp_t.down_proj.weight (97, 512) float32
model.inner.L_level.layers.1.mlp.gate_up_proj.weight (512, 64) float32
model.inner.L_level.layers.1.mlp.down_proj.weight (64, 256) float32
""",
    "rope": """
model.inner.H_init (64,) float32
model.inner.L_init (64,) float32
model.inner.embed_tokens.embedding_weight (11, 64) float32
model.inner.lm_head.weight (11, 64) float32
model.inner.q_head.weight (2, 64) float32
model.inner.q_head.bias (2,) float32
model.inner.puzzle_emb.weights (3, 64) float32
model.inner.L_level.layers.0.self_attn.qkv_proj.weight (192, 64) float32
model.inner.L_level.layers.0.self_attn.o_proj.weight (64, 64) float32
model.inner.L_level.layers.0.mlp.gate_up_proj.weight (512, 64) float32
model.inner.L_level.layers.0.mlp.down_proj.weight (64, 256) float32
model.inner.L_level.layers.1.self_attn.qkv_proj.weight (192, 64) float32
model.inner.L_level.layers.1.self_attn.o_proj.weight (64, 64) float32
model.inner.L_level.layers.1.mlp.gate_up_proj.weight (512, 64) float32
model.inner.L_level.layers.1.mlp.down_proj.weight (64, 256) float32
""",
    "learned": """
model.inner.H_init (64,) float32
model.inner.L_init (64,) float32
model.inner.embed_tokens.embedding_weight (11, 64) float32
model.inner.lm_head.weight (11, 64) float32
model.inner.q_head.weight (2, 64) float32
model.inner.q_head.bias (2,) float32
model.inner.puzzle_emb.weights (3, 64) float32
model.inner.embed_pos.embedding_weight (97, 64) float32
model.inner.L_level.layers.0.self_attn.qkv_proj.weight (192, 64) float32
model.inner.L_level.layers.0.self_attn.o_proj.weight (64, 64) float32
model.inner.L_level.layers.0.mlp.gate_up_proj.weight (512, 64) float32
model.inner.L_level.layers.0.mlp.down_proj.weight (64, 256) float32
model.inner.L_level.layers.1.self_attn.qkv_proj.weight (192, 64) float32
model.inner.L_level.layers.1.self_attn.o_proj.weight (64, 64) float32
model.inner.L_level.layers.1.mlp.gate_up_proj.weight (512, 64) float32
model.inner.L_level.layers.1.mlp.down_proj.weight (64, 256) float32
""",
}


def record_grad_modes(module: torch.nn.Module) -> list[bool]:
    modes: list[bool] = []
    module.register_forward_hook(lambda *_: modes.append(torch.is_grad_enabled()))
    return modes


# These numbers were produced once by this implementation, in float64, from weights drawn with numpy's PCG64
# (bit-identical on every machine, unlike torch's vectorised init). They pin its behaviour against accidental
# change (recursion order, norms, RoPE, prefix layout, ACT carry ...). If a change is intentional, recompute
# them and say why in the commit.
#
# Tolerances. float64 rounding differs between BLAS kernels by ~1e-16 relative; the recursion amplifies it by
# at most ~10x per ACT step, so over 3 steps the spread stays below 1e-12: GOLDEN_ATOL = 1e-6 leaves six orders
# of margin and covers the 8 decimals stored. A change of semantics moves these values by far more: one more
# L cycle moves every step's outputs by >= 2e-4 (test_golden_outputs_catch_a_change_of_semantics), 200x the
# tolerance. The float32 path must agree with float64 to FP32_ATOL: float32's 6e-8 relative rounding on values
# of size ~2, amplified as above (~1e3 over 3 steps), is ~1e-4 at worst (measured: <= 1e-5).
GOLDEN_ATOL = 1e-6


FP32_ATOL = 2e-4


GOLDEN = {
    False: [  # attention + RoPE
        dict(
            logits0=[[0.72746651, 0.30237894, -1.96549565, -0.39751052, -0.76336993],
                     [0.81543698, 0.32897633, -1.89617206, -0.42083084, -0.68779944]],
            logits_last=[0.70051503, 0.13880525, -2.07522779, -0.56648913, -0.67445223],
            q_halt=[2.35890007, 2.15999818], q_continue=[-0.16052957, -0.33052498],
        ),
        dict(
            logits0=[[0.69034501, 0.26525778, -2.02072745, -0.42840781, -0.80656519],
                     [0.77672766, 0.30144845, -1.95649279, -0.42992565, -0.73893515]],
            logits_last=[0.63478717, 0.05033897, -2.15599873, -0.60681908, -0.69924419],
            q_halt=[2.38179064, 2.14144135], q_continue=[-0.16229132, -0.33568966],
        ),
        dict(
            logits0=[[0.69142647, 0.26023595, -2.02218034, -0.43286373, -0.80268377],
                     [0.77857256, 0.29609965, -1.95757995, -0.43609829, -0.73411224]],
            logits_last=[0.63451030, 0.03919351, -2.16050377, -0.61028986, -0.69541751],
            q_halt=[2.38835311, 2.14811158], q_continue=[-0.15532717, -0.32775658],
        ),
    ],
    True: [  # mlp_t, no positional encoding
        dict(
            logits0=[[1.17499407, -0.43355873, 0.21014785, -0.48269160, -0.70499730],
                     [-0.27890513, 1.10351966, 0.02363314, 1.00908166, 0.50495447]],
            logits_last=[-0.73325215, 0.67117882, 0.64841728, -0.81165972, 1.02392425],
            q_halt=[0.79925704, 0.23922834], q_continue=[2.56396604, 1.61365569],
        ),
        dict(
            logits0=[[1.52546533, -0.18098028, 0.52978285, -1.20072979, -0.36360940],
                     [0.19896194, 0.64145139, -1.24026005, 0.62111389, -0.51665515]],
            logits_last=[0.61084860, 1.37575838, 1.40007181, 0.15495598, 0.06310592],
            q_halt=[-0.24456957, -1.07170999], q_continue=[1.29819846, 1.98956561],
        ),
        dict(
            logits0=[[1.06742752, -0.46942561, -1.36837073, -0.87755903, 1.34496756],
                     [-0.71659062, 1.08627808, -1.00935809, 1.70502225, 0.07060251]],
            logits_last=[-0.24448214, 0.58966153, 0.43043686, 0.99307038, -1.01450422],
            q_halt=[-1.41500151, 1.19871044], q_continue=[1.83615339, 2.31012607],
        ),
    ],
}


def golden_model(mlp_t: bool, forward_dtype: str = "float64", **changes: object) -> TRM:
    config = dict(
        batch_size=2, seq_len=6, vocab_size=5, num_puzzle_identifiers=3, puzzle_emb_ndim=12, puzzle_emb_len=2,
        H_cycles=2, L_cycles=2, L_layers=2, hidden_size=8, expansion=2, num_heads=2,
        pos_encodings="none" if mlp_t else "rope", halt_max_steps=3, halt_exploration_prob=0.0,
        forward_dtype=forward_dtype, mlp_t=mlp_t, swiglu_multiple=8,
    )
    model = TRM({**config, **changes})
    rng = np.random.default_rng(1234)
    with torch.no_grad():  # float32 weights (the model's master dtype), exactly representable in float64
        for _, param in model.named_parameters():
            fan_in = param.shape[-1] if param.dim() > 1 else 1
            param.copy_(torch.from_numpy((rng.standard_normal(param.shape) / np.sqrt(fan_in)).astype(np.float32)))
        model.inner.H_init.copy_(torch.from_numpy(rng.standard_normal(8).astype(np.float32)))
        model.inner.L_init.copy_(torch.from_numpy(rng.standard_normal(8).astype(np.float32)))
        model.inner.puzzle_emb.weights.copy_(torch.from_numpy(rng.standard_normal((3, 12)).astype(np.float32) * 0.5))
    return model.eval()


def golden_steps(model: TRM) -> list[dict[str, torch.Tensor]]:
    """The pinned slices of every ACT step's outputs, in float64."""
    batch = {
        "inputs": torch.tensor([[1, 2, 3, 4, 0, 1], [4, 3, 2, 1, 1, 0]]),
        "puzzle_identifiers": torch.tensor([2, 1], dtype=torch.int32),
    }
    carry = model.initial_carry(batch)
    steps = []
    with torch.no_grad():
        for _ in range(3):
            carry, out = model(carry, batch)
            steps.append({"logits0": out["logits"][0, :2].double(), "logits_last": out["logits"][1, -1].double(),
                          "q_halt": out["q_halt_logits"].double(), "q_continue": out["q_continue_logits"].double()})
    return steps


@pytest.mark.parametrize(
    ("cls", "cfg", "expected"),
    [
        (TRM, dict(SUDOKU, mlp_t=True, pos_encodings="none"), 5_028_866),
        (TRM, dict(SUDOKU, pos_encodings="rope"), 6_828_034),
        (TRM, dict(SUDOKU, mlp_t=True, pos_encodings="none", hidden_size=128, puzzle_emb_ndim=128), 694_274),
        (HRM, dict(SUDOKU, H_layers=4, L_layers=4, H_cycles=2, L_cycles=2, pos_encodings="rope"), 27_275_266),
    ],
    ids=["trm-mlp-sudoku", "trm-att-sudoku", "trm-mlp-d128", "hrm-sudoku"],
)
def test_parameter_counts(cls: type[TRM], cfg: dict[str, Any], expected: int) -> None:
    assert count_params(cls, cfg) == expected


@pytest.mark.parametrize("variant", ["mlp_t", "rope", "learned"])
def test_state_dict_keys_match_reference(variant: str) -> None:
    arch = {"mlp_t": dict(mlp_t=True, pos_encodings="none"), "rope": dict(pos_encodings="rope"),
            "learned": dict(pos_encodings="learned")}[variant]
    cfg = dict(
        batch_size=4, seq_len=81, vocab_size=11, num_puzzle_identifiers=3, puzzle_emb_ndim=64,
        puzzle_emb_len=16, H_cycles=3, L_cycles=6, L_layers=2, hidden_size=64, expansion=4, num_heads=4,
        halt_max_steps=16, halt_exploration_prob=0.1, forward_dtype="bfloat16", **arch,
    )
    head = ACTLossHead(TRM(cfg))
    got = [
        f"{k} {tuple(v.shape)} {str(v.dtype).removeprefix('torch.')}" for k, v in head.state_dict().items()
    ]
    assert got == REFERENCE_KEYS[variant].strip().splitlines()  # same keys, shapes, dtypes and order
    # A reference checkpoint loads by name (strict).
    head.load_state_dict({k: torch.zeros_like(v) for k, v in head.state_dict().items()}, strict=True)


def test_config_validation() -> None:
    with pytest.raises(pydantic.ValidationError):
        TRMConfig(**tiny_config(causal=False))  # extra="forbid"
    with pytest.raises(pydantic.ValidationError):
        TRMConfig(**tiny_config(puzzle_emb_ndim=20, puzzle_emb_len=2))  # 20 > 2 * 8
    with pytest.raises(pydantic.ValidationError):
        TRMConfig(**tiny_config(hidden_size=9))  # not divisible by num_heads
    cfg = TRMConfig(**tiny_config(puzzle_emb_ndim=20, puzzle_emb_len=0))
    assert cfg.effective_puzzle_emb_len == 3  # ceil(20 / 8)
    dropped = ("puzzle_emb_len", "puzzle_emb_ndim", "swiglu_multiple", "forward_dtype")
    defaults = TRMConfig(**{k: v for k, v in tiny_config().items() if k not in dropped})
    assert (defaults.puzzle_emb_ndim, defaults.puzzle_emb_len) == (0, 16)
    assert defaults.effective_puzzle_emb_len == 0
    assert defaults.H_layers == 0 and defaults.no_ACT_continue and not defaults.mlp_t
    assert defaults.rms_norm_eps == 1e-5 and defaults.rope_theta == 10000.0
    assert defaults.swiglu_multiple == 256 and defaults.forward_dtype == "bfloat16"


@pytest.mark.parametrize("mlp_t", [False, True])
def test_puzzle_emb_ndim_zero_with_default_len(mlp_t: bool) -> None:
    cfg = tiny_config(puzzle_emb_ndim=0, mlp_t=mlp_t, pos_encodings="none" if mlp_t else "learned")
    del cfg["puzzle_emb_len"]  # default 16: the reference crashes here
    model = TRM(cfg)
    assert model.puzzle_emb is None
    assert not any("puzzle_emb" in k for k in model.state_dict())
    batch = make_batch(0)
    carry, out = model(model.initial_carry(batch), batch)
    assert carry.inner_carry.z_H.shape == (4, 6, 8)  # no prefix at all
    assert out["logits"].shape == (4, 6, 5)


def test_ceil_puzzle_emb_len() -> None:
    model = TRM(tiny_config(puzzle_emb_ndim=20, puzzle_emb_len=0, pos_encodings="learned"))
    batch = make_batch(0)
    carry, out = model(model.initial_carry(batch), batch)
    assert carry.inner_carry.z_H.shape == (4, 6 + 3, 8)
    assert out["logits"].shape == (4, 6, 5)
    out["logits"].sum().backward()
    assert model.puzzle_emb is not None and model.puzzle_emb.local_weights.grad is not None


def test_trm_recursion_gradient_structure() -> None:
    model = TRM(tiny_config(H_cycles=3, L_cycles=2))
    modes = record_grad_modes(model.inner.L_level)
    batch = make_batch(0)
    model(model.initial_carry(batch), batch)
    # T * (n + 1) calls of the shared network; only the last recursion (n + 1 calls) has gradient.
    assert modes == [False] * 6 + [True] * 3


def test_hrm_one_step_gradient_structure() -> None:
    model = HRM(tiny_config(H_layers=1, H_cycles=2, L_cycles=3, puzzle_emb_len=0))
    l_modes = record_grad_modes(model.inner.L_level)
    h_modes = record_grad_modes(model.inner.H_level)
    batch = make_batch(0)
    model.eval()
    model(model.initial_carry(batch), batch)
    assert l_modes == [False] * 5 + [True]
    assert h_modes == [False, True]


def test_act_carry_rules() -> None:
    torch.manual_seed(0)
    model = TRM(tiny_config(halt_max_steps=3))  # q_halt = -5 at init: halts only at the last step
    model.train()
    b1, b2, b3, b4 = (make_batch(s) for s in range(1, 5))

    carry, _ = model(model.initial_carry(b1), b1)  # all slots start halted -> take b1
    for k in b1:
        assert torch.equal(carry.current_data[k], b1[k])
    assert carry.steps.tolist() == [1, 1, 1, 1] and carry.steps.dtype == torch.int32
    assert carry.halted.tolist() == [False] * 4

    carry.halted = torch.tensor([True, False, True, False])
    chain_carry = carry
    carry, out = model(carry, b2)
    reset, kept = torch.tensor([0, 2]), torch.tensor([1, 3])
    for k in b1:  # halted slots take the new sample, the others keep theirs (b2's entry is dropped)
        assert torch.equal(carry.current_data[k][reset], b2[k][reset])
        assert torch.equal(carry.current_data[k][kept], b1[k][kept])
    assert carry.steps.tolist() == [1, 2, 1, 2]
    assert carry.halted.tolist() == [False] * 4
    # Reset slots restart from H_init/L_init: same logits as a fresh first step on b2 ...
    _, fresh = model(model.initial_carry(b2), b2)
    torch.testing.assert_close(out["logits"][reset], fresh["logits"][reset])
    # ... and kept slots continue their own latents: same as a second step with no reset at all.
    chain_carry.halted = torch.zeros(4, dtype=torch.bool)
    _, cont = model(chain_carry, b1)
    torch.testing.assert_close(out["logits"][kept], cont["logits"][kept])

    carry, _ = model(carry, b3)
    assert carry.steps.tolist() == [2, 3, 2, 3]
    assert carry.halted.tolist() == [False, True, False, True]  # steps >= halt_max_steps
    for k in b1:
        assert torch.equal(carry.current_data[k][reset], b2[k][reset])

    carry, _ = model(carry, b4)
    assert carry.steps.tolist() == [3, 1, 3, 1]
    assert carry.halted.tolist() == [True, False, True, False]
    for k in b1:
        assert torch.equal(carry.current_data[k][kept], b4[k][kept])


def test_q_halt_halting_in_training_only() -> None:
    model = TRM(tiny_config(halt_max_steps=4))
    set_q_bias(model, 5.0, -5.0)  # q_halt > 0 everywhere
    batch = make_batch(0)
    model.train()
    carry, _ = model(model.initial_carry(batch), batch)
    assert carry.halted.all()  # halts after one step
    # Eval ignores q: exactly halt_max_steps steps for every sample.
    head = ACTLossHead(model).eval()
    carry = head.initial_carry(batch)
    n_steps = 0
    with torch.no_grad():
        while True:
            step = head(carry, batch)
            carry, all_finish = step.carry, step.all_halted
            n_steps += 1
            if all_finish:
                break
            assert not carry.halted.any()
    assert n_steps == 4 and carry.steps.tolist() == [4] * 4


def test_halt_max_steps_one_always_halts() -> None:
    model = TRM(tiny_config(halt_max_steps=1, halt_exploration_prob=1.0)).train()
    batch = make_batch(0)
    carry, _ = model(model.initial_carry(batch), batch)
    assert carry.halted.all() and carry.steps.tolist() == [1] * 4


def test_exploration_min_halt() -> None:
    torch.manual_seed(0)
    model = TRM(tiny_config(batch_size=16, halt_max_steps=2, halt_exploration_prob=1.0)).train()
    set_q_bias(model, 5.0, -5.0)
    batch = make_batch(0, batch_size=16)
    carry, _ = model(model.initial_carry(batch), batch)
    assert not carry.halted.any()  # min_halt = U{2..2} = 2 for every slot
    carry, _ = model(carry, batch)
    assert carry.halted.all()

    model = TRM(tiny_config(batch_size=16, halt_max_steps=5, halt_exploration_prob=1.0)).train()
    set_q_bias(model, 5.0, -5.0)
    carry = model.initial_carry(batch)
    halt_step = torch.zeros(16, dtype=torch.int64)
    for step in range(1, 6):
        carry, _ = model(carry, batch)
        halt_step = torch.where(carry.halted & (halt_step == 0), step, halt_step)
        carry.halted = torch.zeros_like(carry.halted)  # keep every slot running: steps keep counting
    # q_halt > 0 would halt at step 1; exploration (min_halt ~ U{2..5}, redrawn each step) forbids it.
    assert halt_step.min() >= 2 and halt_step.max() <= 5
    assert len(set(halt_step.tolist())) > 1


def test_no_act_continue_false_trains() -> None:
    torch.manual_seed(0)
    model = TRM(tiny_config(no_ACT_continue=False, halt_max_steps=3))
    set_q_bias(model, -5.0, 5.0)  # q_halt < q_continue: keep going
    with torch.no_grad():  # a non-zero q weight, so the continue target differs from q_continue
        model.inner.q_head.weight.normal_()
    head = ACTLossHead(model).train()
    batch = make_batch(0)
    carry = head.initial_carry(batch)
    step = head(carry, batch, return_keys=("target_q_continue", "logits"))
    carry, loss, metrics, outputs = step.carry, step.loss, step.metrics, step.outputs
    assert not carry.halted.any()
    assert "target_q_continue" in outputs
    target = outputs["target_q_continue"]
    assert target.shape == (4,) and ((target > 0) & (target < 1)).all()
    assert "q_continue_loss" in metrics and torch.isfinite(loss)
    loss.backward()
    assert model.inner.q_head.bias.grad is not None and model.inner.q_head.bias.grad[1] != 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    set_q_bias(model, 5.0, -5.0)  # now q_halt > q_continue: halt
    carry = head(carry, batch).carry
    assert carry.halted.all()


def test_softmax_loss_type_trains() -> None:
    head = ACTLossHead(TRM(tiny_config()), loss_type="softmax_cross_entropy").train()
    batch = make_batch(0)
    batch["labels"][0, :3] = -100
    loss = head(head.initial_carry(batch), batch).loss
    assert torch.isfinite(loss)
    loss.backward()


def test_sparse_embedding_train_and_eval() -> None:
    emb = CastedSparseEmbedding(5, 3, batch_size=2, init_std=0.0, cast_to=torch.float32)
    with torch.no_grad():
        emb.weights.copy_(torch.arange(15.0).view(5, 3))
    ids = torch.tensor([4, 1], dtype=torch.int32)
    out = emb(ids)  # train mode
    assert out is emb.local_weights and torch.equal(out, emb.weights[[4, 1]])
    assert emb.local_ids.tolist() == [4, 1]
    (out * torch.tensor([[1.0], [2.0]])).sum().backward()
    assert torch.equal(emb.local_weights.grad, torch.tensor([[1.0] * 3, [2.0] * 3]))
    emb.eval()
    assert torch.equal(emb(torch.tensor([0, 2])), emb.weights[[0, 2]])
    assert set(emb.state_dict()) == {"weights"}  # local buffers are not saved
    emb.double()  # dtype/device moves keep local_weights a grad-accumulating leaf
    assert emb.local_weights.is_leaf and emb.local_weights.requires_grad
    emb.train()
    with pytest.raises(ValueError, match="batch_size"):
        emb(torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("cls", [TRM, HRM, TRMSingleZ])
def test_carry_state_roundtrip(cls: type[TRM]) -> None:
    torch.manual_seed(0)
    model = cls(tiny_config(H_layers=1)).eval()
    batch = make_batch(0)
    with torch.no_grad():
        carry, _ = model(model.initial_carry(batch), batch)
        buffer = io.BytesIO()
        torch.save(carry_to_state(carry), buffer)
        buffer.seek(0)
        loaded = carry_from_state(torch.load(buffer, weights_only=True))
        assert (loaded.inner_carry.z_L is None) == (cls is TRMSingleZ)
        _, out_a = model(carry, batch)
        _, out_b = model(loaded, batch)
    assert torch.equal(out_a["logits"], out_b["logits"])
    assert torch.equal(loaded.steps, carry.steps) and torch.equal(loaded.halted, carry.halted)
    assert set(loaded.current_data) == {"inputs", "labels", "puzzle_identifiers"}
    with pytest.raises(KeyError):
        carry_from_state({"bogus": torch.zeros(1)})


def test_act_inference() -> None:
    torch.manual_seed(0)
    model = TRM(tiny_config(halt_max_steps=3)).train()
    batch = {k: v for k, v in make_batch(0).items() if k != "labels"}
    logits = act_inference(ACTLossHead(model), batch)
    assert model.training  # restored
    assert len(logits) == 3 and all(x.shape == (4, 6, 5) for x in logits)
    model.eval()
    with torch.no_grad():
        carry = model.initial_carry(batch)
        for expected in logits:
            carry, out = model(carry, batch)
            torch.testing.assert_close(out["logits"], expected)


@pytest.mark.parametrize("cls", [HRM, TRMSingleZ])
def test_variants_train(cls: type[TRM]) -> None:
    torch.manual_seed(0)
    model = cls(tiny_config(H_layers=1))
    head = ACTLossHead(model).train()
    batch = make_batch(0)
    carry = head.initial_carry(batch)
    for _ in range(2):
        step = head(carry, batch)
        carry, loss, metrics = step.carry, step.loss, step.metrics
        loss.backward()
    assert torch.isfinite(loss)
    assert ("q_continue_loss" in metrics) == (cls is HRM)  # HRM learns the continue target
    keys = set(model.state_dict())
    if cls is HRM:
        assert isinstance(model.config, HRMConfig) and not model.config.no_ACT_continue
        assert any(k.startswith("inner.H_level.layers.0.") for k in keys)
    else:
        # The reference's trm_singlez keeps its one latent's start state as L_init (there is no H_init).
        assert "inner.L_init" in keys and "inner.H_init" not in keys


def test_single_z_state_dict_is_the_references_and_old_runs_still_load() -> None:
    model = TRMSingleZ(tiny_config())
    reference_keys = {key for key in TRM(tiny_config()).state_dict() if key != "inner.H_init"}  # trm less H_init
    assert set(model.state_dict()) == reference_keys
    state = model.state_dict()
    old = {("inner.H_init" if key == "inner.L_init" else key): value.clone() + 1 for key, value in state.items()}
    model.load_state_dict(old)  # a run written when smoltrain called it H_init
    torch.testing.assert_close(model.inner.L_init, old["inner.H_init"])


def test_bf16_forward_runs() -> None:
    model = TRM(tiny_config(forward_dtype="bfloat16"))
    batch = make_batch(0)
    carry, out = model(model.initial_carry(batch), batch)
    assert out["logits"].dtype == torch.bfloat16 and out["q_halt_logits"].dtype == torch.float32
    assert carry.inner_carry.z_H.dtype == torch.bfloat16
    assert model.inner.H_init.dtype == torch.float32


@pytest.mark.parametrize("mlp_t", [False, True], ids=["rope", "mlp_t"])
def test_golden_outputs(mlp_t: bool) -> None:
    for got, expected in zip(golden_steps(golden_model(mlp_t)), GOLDEN[mlp_t], strict=True):
        for key, value in expected.items():
            torch.testing.assert_close(got[key], torch.tensor(value, dtype=torch.float64), rtol=0, atol=GOLDEN_ATOL)


@pytest.mark.parametrize("mlp_t", [False, True], ids=["rope", "mlp_t"])
def test_golden_float32_path_agrees_with_float64(mlp_t: bool) -> None:
    for got, expected in zip(golden_steps(golden_model(mlp_t, "float32")), GOLDEN[mlp_t], strict=True):
        for key, value in expected.items():
            torch.testing.assert_close(got[key], torch.tensor(value, dtype=torch.float64), rtol=0, atol=FP32_ATOL)


@pytest.mark.parametrize("mlp_t", [False, True], ids=["rope", "mlp_t"])
def test_golden_outputs_catch_a_change_of_semantics(mlp_t: bool) -> None:
    """The tolerance is far below what a real change does: one more L cycle moves every step by >= 200x it."""
    for got, expected in zip(golden_steps(golden_model(mlp_t, L_cycles=3)), GOLDEN[mlp_t], strict=True):
        moved = max((got[key] - torch.tensor(value, dtype=torch.float64)).abs().max().item()
                    for key, value in expected.items())
        assert moved > 200 * GOLDEN_ATOL
