"""Training stages (``stage=``, ``dpo.*``, ``distill.*``): typed, checked, and refused where they do not apply."""

from __future__ import annotations

import pytest

from smoltrain.errors import ConfigError
from smoltrain.families import load_config, resolve


@pytest.mark.parametrize(("override", "message"), [
    ("stage=rlhf", "config key 'stage': input should be 'pretrain', 'sft', 'dpo' or 'distill'"),
    ("dpo.beta=0", "config key 'dpo.beta': input should be greater than 0"),
    ("distill.alpha=1.5", "config key 'distill.alpha': input should be less than or equal to 1"),
    ("distill.temperature=-1", "config key 'distill.temperature': input should be greater than 0"),
    ("dpo.bta=0.1", "unknown config key 'dpo.bta'; did you mean dpo.beta"),
])
def test_stage_keys_are_typed(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config("toy", [override])
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("recipe", ["toy", "trm-sudoku-cpu"])
def test_families_without_stages_refuse_them_in_one_line(recipe: str) -> None:
    cfg = load_config(recipe, ["stage=sft", "data_paths=[]"])
    with pytest.raises(ConfigError, match=r"^stage=sft is not for arch=\w+, which trains only stage=pretrain; "
                                          r"stage=sft is for arch=lm$"):
        resolve(cfg)


def test_the_stage_recipes_name_their_stage() -> None:
    for recipe, stage in [("lm-sft", "sft"), ("lm-sft-cpu", "sft"), ("lm-dpo", "dpo"), ("lm-dpo-cpu", "dpo"),
                          ("lm-distill", "distill"), ("lm-pretrain", "pretrain")]:
        assert load_config(recipe).stage == stage
    dpo = load_config("lm-dpo")
    assert dpo.dpo.beta == 0.15 and dpo.lr == 4e-8 and dpo.global_batch_size == 4  # MiniMind's train_dpo.py
    distill = load_config("lm-distill")
    assert (distill.distill.alpha, distill.distill.temperature, distill.lr) == (0.5, 1.5, 5e-6)
    sft = load_config("lm-sft")
    assert (sft.lr, sft.global_batch_size, sft.arch.seq_len, sft.epochs) == (1e-5, 16, 768, 2)
