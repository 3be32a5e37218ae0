"""Several ARC datasets in `data_paths` are trained on and evaluated as one, as the reference's loader
concatenates them: every path's test tasks are voted on, scored and submitted (not only the first path's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smoltrain.data.arc import build_arc_dataset
from smoltrain.data.puzzles import load_metadata
from smoltrain.families import load_config
from smoltrain.train.trainer import Trainer
from tests.e2e.test_arc_training import mirror_tasks
from tests.unit.test_arc_data import write_kaggle

pytestmark = pytest.mark.usefixtures("single_thread")

# The reference command line with a tiny model: no evaluators key, so `evaluators=auto` votes on ARC data.
TINY_ARC = ["arch=trm", "arch.hidden_size=32", "arch.num_heads=2", "arch.H_cycles=1", "arch.L_cycles=1",
            "arch.halt_max_steps=2", "arch.puzzle_emb_len=1", "global_batch_size=8", "lr=1e-3", "lr_warmup_steps=1",
            "log_every=1", "device=cpu", "max_steps=3"]


def build_part(base: Path, name: str, task_ids: list[str]) -> tuple[Path, list[str]]:
    tasks = {"training": {t: v for t, v in mirror_tasks()["training"].items() if t in task_ids}}
    build_arc_dataset(base / name, input_file_prefix=write_kaggle(base / f"{name}-src", tasks), subsets=["training"],
                      test_set_name="training", num_aug=2, canvas_size=8, seed=0)
    return base / name, task_ids


def test_every_data_path_is_evaluated(tmp_path: Path) -> None:
    first, first_tasks = build_part(tmp_path, "a", ["m0000000", "m0000001", "m0000002"])
    second, second_tasks = build_part(tmp_path, "b", ["m0000003", "m0000004"])
    run = tmp_path / "run"
    trainer = Trainer(load_config(None, [*TINY_ARC, f"data_paths=[{first},{second}]", f"run_dir={run}"]))
    # The model's puzzle-embedding table covers both datasets' identifiers (blank shared), not the first's only.
    ids = [load_metadata(root, "train").num_puzzle_identifiers for root in (first, second)]
    assert trainer.family.arch.num_puzzle_identifiers == ids[0] + ids[1] - 1
    summary = trainer.fit()["eval"]
    test_rows = sum(load_metadata(root, "test").total_puzzles for root in (first, second))  # 1 test input a task
    assert summary["count"] == test_rows  # the exact-accuracy metrics cover both datasets' rows
    report = run / "eval" / "step_00000003"
    scores = json.loads((report / "arc_scores.json").read_text())
    # Every row found its task: the second dataset's identifiers were read after the first's, not as the first's.
    assert scores["unmatched_rows"] == 0 and scores["rows_voted"] == test_rows
    assert sorted(scores["tasks"]) == sorted(first_tasks + second_tasks)
    assert scores["data_paths"] == [str(first), str(second)]
    submission = json.loads((report / "submission.json").read_text())
    assert sorted(submission) == sorted(first_tasks + second_tasks)
    assert all(len(attempts) == 1 and set(attempts[0]) == {"attempt_1", "attempt_2"}
               for attempts in submission.values())
    assert "ARC/pass@2" in summary
