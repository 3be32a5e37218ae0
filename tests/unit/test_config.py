from __future__ import annotations

from pathlib import Path

import pytest

from smoltrain.config import compose
from smoltrain.errors import ConfigError
from smoltrain.families import load_config


def test_nested_list_bool_and_plus_overrides():
    # The shell turns data_paths="[a,b]" into data_paths=[a,b].
    cfg = load_config("toy", ["arch.hidden_size=128", "data_paths=[a,b]", "ema=True", "+run_name=my_run",
                              "lr=1e-4", "grad_clip=null"])
    assert cfg.arch.hidden_size == 128
    assert cfg.data_paths == ["a", "b"]
    assert cfg.ema is True and cfg.run_name == "my_run"
    assert cfg.lr == pytest.approx(1e-4) and cfg.grad_clip is None


def test_recipe_values_and_defaults():
    cfg = load_config("toy")
    assert cfg.arch.task == "sort"  # recipe refines the arch group
    assert cfg.arch.seq_len == 8  # from the arch group file
    assert cfg.keep_checkpoints == 3  # schema default


def test_group_selection_replaces_arch_and_applies_before_overrides():
    raw = compose("toy", ["arch.hidden_size=32", "arch=toy"])
    assert raw["arch"]["hidden_size"] == 32  # the later group selection did not undo the override
    assert raw["arch"]["task"] == "reverse"  # group file's value, the recipe's `sort` is replaced


def test_interpolation_is_resolved(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("arch: {name: toy, hidden_size: 24, seq_len: '${.hidden_size}'}\n")
    assert load_config(str(recipe)).arch.seq_len == 24


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("arch.hiden_size=3", "unknown config key 'arch.hiden_size'; did you mean arch.hidden_size"),
        ("global_batch_sise=3", "unknown config key 'global_batch_sise'; did you mean global_batch_size"),
        ("wandb.mod=offline", "unknown config key 'wandb.mod'; did you mean wandb.mode"),
        ("lr=abc", "config key 'lr'"),
        ("ema=maybe", "config key 'ema'"),
        ("global_batch_size=0", "config key 'global_batch_size'"),
        ("arch=tyo", "unknown arch 'tyo'; choose one of: "),
        ("lr", "must look like key=value"),
        ("data_paths=[a,", "cannot parse the value of 'data_paths'"),
        ("run_name=${nope}", "cannot resolve the config: Interpolation key 'nope' not found (in run_name)"),
    ],
)
def test_bad_overrides_give_one_line(override, message):
    with pytest.raises(ConfigError) as err:
        load_config("toy", [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_recipe_suggests():
    with pytest.raises(ConfigError, match="did you mean toy"):
        load_config("toi")


def test_the_default_run_dir_names_the_arch_and_the_dataset():
    # `arch=trm` on sudoku4 and then on maze6 used to share runs/trm: the second resumed the first.
    sudoku, maze = (load_config(None, ["arch=trm", f"data_paths=[data/{name}]"]) for name in ("sudoku4", "maze6"))
    assert sudoku.resolved_run_dir() == Path("runs/trm-sudoku4") and maze.resolved_run_dir() == Path("runs/trm-maze6")
    assert load_config(None, ["arch=trm", "data_paths=[data/sudoku4/]"]).resolved_run_dir() == Path("runs/trm-sudoku4")
    assert load_config("toy").resolved_run_dir() == Path("runs/toy")  # no data: the arch alone
    # run_name, run_dir and the reference's checkpoint_path name it as before.
    assert load_config("toy", ["data_paths=[d]", "run_name=mine"]).resolved_run_dir() == Path("runs/mine")
    assert load_config("toy", ["data_paths=[d]", "run_dir=x/y"]).resolved_run_dir() == Path("x/y")
    assert load_config("toy", ["data_paths=[d]", "checkpoint_path=c/z"]).resolved_run_dir() == Path("c/z")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("beta1=5", "config key 'beta1': input should be less than 1 (valid: 0 <= beta1 < 1), got 5"),
        ("beta2=-0.5", "(valid: 0 <= beta2 < 1), got -0.5"),
        ("seed=-1", "config key 'seed': input should be greater than or equal to 0 (valid: seed >= 0), got -1"),
        ("eval_max_examples=0", "(valid: eval_max_examples >= 1, or null), got 0"),
        ("max_steps=0", "(valid: max_steps > 0, or null)"),
        ("arch.hidden_size=0", "config key 'arch.hidden_size': input should be greater than or equal to 1 "
                               "(valid: arch.hidden_size >= 1), got 0"),
        ("arch.dropout=1", "(valid: 0 <= arch.dropout < 1)"),
    ],
)
def test_numbers_outside_their_domain_name_the_range(override, message):
    with pytest.raises(ConfigError) as err:
        load_config("toy", [override])
    assert message in str(err.value)


def test_yaml_errors_are_one_line(tmp_path):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("lr: 1\n  max_steps: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(recipe))
    assert str(err.value) == f"{recipe} is not valid YAML: mapping values are not allowed here at line 2, column 12"
