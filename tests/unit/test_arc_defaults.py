"""`evaluators=auto` (the default): the reference's default config runs the ARC voting evaluator, pooled across
evaluations, so the reference ARC command line gives pass@k; other kinds get nothing extra; [] turns it off."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from smoltrain.data.arc import build_arc_dataset
from smoltrain.errors import ConfigError, DataError
from smoltrain.eval import ARCEvaluator
from smoltrain.families import build_family, load_config
from smoltrain.runtime.device import pick_device
from smoltrain.runtime.distributed import DistEnv
from tests.helpers import write_sorting_puzzles
from tests.unit.test_arc_data import synthetic_tasks, write_kaggle

TINY = ["arch=trm", "arch.hidden_size=32", "arch.num_heads=2", "arch.H_cycles=1", "arch.L_cycles=1",
        "arch.halt_max_steps=2", "arch.puzzle_emb_len=1", "global_batch_size=8", "device=cpu"]


@pytest.fixture(scope="module")
def arc_data(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("arc")
    build_arc_dataset(base / "ds", input_file_prefix=write_kaggle(base / "kaggle", synthetic_tasks()),
                      subsets=["training", "evaluation"], test_set_name="evaluation", num_aug=1, seed=0)
    return base / "ds"


def family(overrides: list[str], recipe: str | None = None):
    return build_family(load_config(recipe, overrides), DistEnv(), pick_device("cpu"))


def arc_evaluators(fam) -> list[ARCEvaluator]:
    return [e for e in fam._evaluators() if isinstance(e, ARCEvaluator)]


def test_the_default_is_auto_and_runs_the_pooled_arc_evaluator_on_arc_data(arc_data: Path) -> None:
    fam = family([*TINY, f"data_paths=[{arc_data}]"])  # the reference command line: no evaluators key
    assert fam.cfg.evaluators == "auto"
    [arc] = arc_evaluators(fam)
    # The reference's defaults (trm.md §4.2): submission_K=2, pass_Ks=(1,2,5,10,100,1000), aggregated_voting=True.
    assert arc.pool_evaluations is True
    assert arc.submission_k == 2 and arc.pass_ks == (1, 2, 5, 10, 100, 1000)


def test_auto_adds_nothing_on_other_kinds_and_an_empty_list_turns_it_off(arc_data: Path, tmp_path: Path) -> None:
    sorting = write_sorting_puzzles(tmp_path / "sort")
    assert arc_evaluators(family([*TINY, f"data_paths=[{sorting}]"])) == []
    assert arc_evaluators(family([*TINY, f"data_paths=[{arc_data}]", "evaluators=[]"])) == []


def test_explicit_options_and_recipes(arc_data: Path) -> None:
    [arc] = arc_evaluators(family([*TINY, f"data_paths=[{arc_data}]",
                                   "evaluators=[{name: arc@ARC, aggregated_voting: false, pass_Ks: [1, 2]}]"]))
    assert arc.pool_evaluations is False and arc.pass_ks == (1, 2)
    # The ARC recipes (CPU one included) evaluate with the same reference defaults.
    [arc] = arc_evaluators(family([f"data_paths=[{arc_data}]", "global_batch_size=8"], recipe="trm-arc-cpu"))
    assert arc.pool_evaluations is True


def test_a_string_other_than_auto_is_refused(arc_data: Path) -> None:
    with pytest.raises(ConfigError, match="evaluators.*write evaluators=auto"):
        family([*TINY, f"data_paths=[{arc_data}]", "evaluators=arc"])


def test_a_task_in_two_test_datasets_must_have_the_same_test_pairs(arc_data: Path, tmp_path: Path) -> None:
    tasks = synthetic_tasks()
    tasks["evaluation"]["e0000002"]["test"][0]["input"] = [[5, 5], [5, 5]]  # same id, another test input
    build_arc_dataset(tmp_path / "other", input_file_prefix=write_kaggle(tmp_path / "kaggle", tasks),
                      subsets=["training", "evaluation"], test_set_name="evaluation", num_aug=1, seed=0)
    with pytest.raises(DataError, match="task 'e0000002' is in two of the test datasets"):
        ARCEvaluator([arc_data, tmp_path / "other"])
    # The same dataset twice is one set of tasks: its identifiers twice, its tasks once.
    twice = ARCEvaluator([arc_data, arc_data])
    assert sorted(twice.tasks) == ["e0000001", "e0000002"]
    assert len(twice.identifiers) == 2 * len(ARCEvaluator(arc_data).identifiers) - 1


def test_auto_on_arc_grids_without_a_task_list_warns_and_does_not_vote(arc_data: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(arc_data, bare)
    (bare / "test_puzzles.json").unlink()  # ARC-shaped rows from another tool: nothing the voting can read
    with pytest.warns(UserWarning, match="no test_puzzles.json or identifiers.json, so there is no ARC voting"):
        fam = family([*TINY, f"data_paths=[{bare}]"])
    assert arc_evaluators(fam) == []
