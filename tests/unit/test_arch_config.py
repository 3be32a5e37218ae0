"""Each family's arch config is one explicit class; resolve is pure; recipes name presets; one alias table."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import smoltrain.config as config_module
from smoltrain.config import REFERENCE_ALIASES
from smoltrain.errors import ConfigError
from smoltrain.families import build_family, family_class, load_config, resolve
from smoltrain.families.lm import DATA_KEYS, LMArchConfig
from smoltrain.families.toy import ToyConfig
from smoltrain.families.trm import (
    DATA_SHAPE,
    HRMArchConfig,
    TRMArchConfig,
    TRMFamily,
    TRMSingleZArchConfig,
)
from smoltrain.models.hrm import HRMConfig, TRMSingleZConfig
from smoltrain.models.lm import LMConfig
from smoltrain.models.trm import TRMConfig
from smoltrain.models.trm_loss import ACTLossHead
from smoltrain.runtime.distributed import DistEnv
from tests.helpers import write_sorting_puzzles

TRM_KEYS = ["name", "loss", "puzzle_emb_ndim", "H_cycles", "L_cycles", "H_layers", "L_layers", "hidden_size",
            "expansion", "num_heads", "pos_encodings", "rms_norm_eps", "rope_theta", "halt_max_steps",
            "halt_exploration_prob", "forward_dtype", "mlp_t", "puzzle_emb_len", "no_ACT_continue", "swiglu_multiple",
            "seq_len", "vocab_size", "num_puzzle_identifiers"]


LM_KEYS = ["name", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
           "intermediate_size", "max_position_embeddings", "rope_theta", "rms_norm_eps", "qk_norm",
           "tie_word_embeddings", "dropout", "hidden_act", "use_moe", "num_experts", "num_experts_per_tok",
           "n_shared_experts", "aux_loss_alpha", "norm_topk_prob",
           "rope_scaling", "xpos", "xpos_scale_base", "sliding_window", "attention",
           "deepnorm", "layer_scale_init", "drop_path_rate", "parallel_residual",  # residual options (issue 17)
           "vocab_size", "seq_len", "packing", "document_bos"]


TOY_KEYS = ["name", "task", "seq_len", "vocab_size", "hidden_size", "num_layers", "dropout", "eval_examples",
            "epoch_batches"]


@pytest.fixture(scope="module")
def puzzles(tmp_path_factory) -> Path:
    return write_sorting_puzzles(tmp_path_factory.mktemp("data") / "sorting", seq_len=6, digits=4, num_ids=3)


@pytest.mark.parametrize(("name", "arch_class", "keys"), [
    ("trm", TRMArchConfig, TRM_KEYS), ("hrm", HRMArchConfig, TRM_KEYS), ("trm_singlez", TRMSingleZArchConfig, TRM_KEYS),
    ("lm", LMArchConfig, LM_KEYS), ("toy", ToyConfig, TOY_KEYS),
])
def test_each_family_has_one_arch_class_listing_its_keys(name, arch_class, keys):
    assert family_class(name).config_class is arch_class
    assert list(arch_class.model_fields) == keys


@pytest.mark.parametrize(("arch_class", "model_class"), [
    (TRMArchConfig, TRMConfig), (HRMArchConfig, HRMConfig), (TRMSingleZArchConfig, TRMSingleZConfig),
])
def test_trm_arch_keys_are_the_networks_with_its_defaults(arch_class, model_class):
    # The arch class restates the network's keys for the user; the two must not drift apart.
    ours = {k: f for k, f in arch_class.model_fields.items() if k not in ("name", "loss")}
    theirs = {k: f for k, f in model_class.model_fields.items() if k != "batch_size"}  # this rank's micro-batch
    assert set(ours) == set(theirs)
    for key, field in theirs.items():
        if key not in (*DATA_SHAPE, "forward_dtype"):  # from the dataset / the run's precision when unset
            assert (ours[key].is_required(), ours[key].default) == (field.is_required(), field.default), key


def test_lm_arch_keys_are_the_networks_with_its_defaults():
    ours = {k: f for k, f in LMArchConfig.model_fields.items() if k not in ("name", *DATA_KEYS)}
    assert set(ours) == set(LMConfig.model_fields)
    for key, field in LMConfig.model_fields.items():
        if key != "vocab_size":  # from the dataset when unset
            assert ours[key].default == field.default, key


def test_trm_resolve_is_pure_and_takes_the_shape_from_the_dataset(puzzles):
    cfg = load_config(None, ["arch=trm", f"data_paths=[{puzzles}]", "global_batch_size=8"])
    before = cfg.model_dump()
    resolved = resolve(cfg)
    assert cfg.model_dump() == before and cfg.arch.seq_len is None  # the input is unchanged
    assert (resolved.arch.seq_len, resolved.arch.vocab_size, resolved.arch.num_puzzle_identifiers) == (6, 5, 3)
    assert resolved.model_dump(exclude={"arch"}) == cfg.model_dump(exclude={"arch"})

    family = build_family(cfg, DistEnv(), torch.device("cpu"))
    assert family.cfg == resolved  # the family holds the resolved config ...
    family.build_model()
    assert family.cfg == resolved and cfg.model_dump() == before  # ... and building changes neither
    with pytest.raises(ValueError, match="resolved config"):
        TRMFamily(cfg, DistEnv(), torch.device("cpu"))


def test_trm_resolve_checks_declared_shapes(puzzles):
    with pytest.raises(ConfigError, match="arch.seq_len=7 but the dataset"):
        resolve(load_config(None, ["arch=trm", f"data_paths=[{puzzles}]", "arch.seq_len=7"]))
    with pytest.raises(ConfigError, match="arch=hrm needs data"):
        resolve(load_config(None, ["arch=hrm", "data_paths=[]"]))
    declared = load_config(None, ["arch=trm", "data_paths=[]", "arch.seq_len=4", "arch.vocab_size=6",
                                  "arch.num_puzzle_identifiers=1"])
    assert resolve(declared) == declared


def test_lm_resolve_without_data_leaves_the_vocabulary_to_the_dataset():
    cfg = load_config("lm-pretrain-cpu", ["data_paths=[]"])
    assert resolve(cfg).arch.vocab_size is None
    family = build_family(cfg, DistEnv(), torch.device("cpu"))
    assert family.describe(family.build_model())["vocab_size"].startswith("6400 (assumed")


def test_a_recipe_naming_a_preset_composes_to_the_preset(tmp_path):
    preset = load_config(None, ["arch=lm-tiny-cpu"]).arch
    assert load_config("lm-pretrain-cpu").arch == preset.model_copy(update={"document_bos": True})
    assert load_config("lm-sft-cpu").arch == preset
    assert load_config("trm-sudoku-cpu").arch == load_config("trm-maze-cpu").arch == \
        load_config(None, ["arch=trm-mlp-cpu"]).arch
    recipe = tmp_path / "r.yaml"
    recipe.write_text("arch: {preset: lm-tiny-cpu, seq_len: 64}\n")
    assert load_config(str(recipe)).arch == preset.model_copy(update={"seq_len": 64})
    recipe.write_text("arch: {preset: lm-tiny-cpu, name: trm}\n")
    with pytest.raises(ConfigError, match="is an arch.name=lm preset"):
        load_config(str(recipe))


def test_the_alias_table_maps_the_reference_keys():
    assert REFERENCE_ALIASES == {"checkpoint_path": "run_dir", "project_name": "wandb.project",
                                 "eval_interval": "eval_every", "load_checkpoint": "init_from"}
    ref = load_config("toy", ["checkpoint_path=ckpt/x", "project_name=proj", "eval_interval=2"])
    assert ref.resolved_run_dir() == Path("ckpt/x") and ref.setting("wandb.project") == "proj"
    assert ref.eval_every_steps(steps_per_epoch=10) == 20  # epochs -> optimizer steps
    ours = load_config("toy", ["checkpoint_path=ckpt/x", "run_dir=runs/y", "project_name=proj", "wandb.project=p2",
                               "eval_interval=2", "eval_every=7"])
    assert ours.resolved_run_dir() == Path("runs/y") and ours.setting("wandb.project") == "p2"
    assert ours.eval_every_steps(steps_per_epoch=10) == 7
    assert load_config("toy", ["eval_interval=null"]).eval_every_steps(10) is None
    assert load_config("toy", ["load_checkpoint=runs/a"]).setting("init_from") == "runs/a"
    assert load_config("toy", ["load_checkpoint=runs/a", "init_from=runs/b"]).setting("init_from") == "runs/b"


def test_loss_name_selects_the_loss_head():
    cfg = load_config(None, ["arch=trm", "data_paths=[]", "arch.seq_len=4", "arch.vocab_size=6",
                             "arch.num_puzzle_identifiers=1", "arch.hidden_size=16", "arch.num_heads=2",
                             "arch.loss.name=losses@ACTLossHead"])
    assert cfg.arch.loss.head() is ACTLossHead
    assert isinstance(build_family(cfg, DistEnv(), torch.device("cpu")).build_model(), ACTLossHead)
    unknown = cfg.model_copy(update={"arch": cfg.arch.model_copy(update={"loss": cfg.arch.loss.model_copy(
        update={"name": "losses@Nope"})})})
    with pytest.raises(ConfigError, match="names no loss head"):
        build_family(unknown, DistEnv(), torch.device("cpu")).build_model()


def test_config_module_imports_no_family():
    tree = ast.parse(Path(config_module.__file__).read_text())
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m and m.startswith("smoltrain.families")]
