"""bench/time_to_accuracy.py's report: the time to a target, the medians and the ratio (or its bound)."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from tests.helpers import REPO


def _bench_module(name: str) -> ModuleType:
    """A bench script as a module (bench/ is no package; the script imports ``reference_trm`` and
    ``side_by_side`` by name)."""
    for needed in ("reference_trm", "side_by_side", name):
        if needed not in sys.modules:
            spec = importlib.util.spec_from_file_location(needed, REPO / "bench" / f"{needed}.py")
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[needed] = module  # its dataclasses look their module up while being made
            spec.loader.exec_module(module)
    return sys.modules[name]


def _side(points: list[tuple[float, float]], budget: float = 60.0) -> dict:
    return {"curve": [{"train_s": s, "step": 1, "exact": e} for s, e in points], "budget_s": budget, "steps": 1,
            "load_before": [0.0, 0.0, 0.0], "load_after": [0.0, 0.0, 0.0]}


def test_time_to_target_is_the_first_checkpoint_at_or_above_it() -> None:
    tta = _bench_module("time_to_accuracy")
    curve = _side([(30, 0.5), (60, 0.97), (90, 0.99)])["curve"]
    assert tta.time_to(curve, 0.97) == 60
    assert tta.time_to(curve, 0.995) is None


def test_summary_medians_and_ratio() -> None:
    tta = _bench_module("time_to_accuracy")
    pairs = [{"order": ["reference", "smoltrain"], "reference": _side([(30, 0.5), (60, 0.98)]),
              "smoltrain": _side([(30, 0.98)])},
             {"order": ["smoltrain", "reference"], "reference": _side([(30, 0.5), (60, 0.6), (90, 0.99)], 90),
              "smoltrain": _side([(30, 0.9), (60, 0.99)])}]
    summary = tta.summarize(pairs, 0.97)
    assert summary["reference"]["median_s"] == 75 and summary["smoltrain"]["median_s"] == 45
    assert summary["ratio_smoltrain_over_reference"] == 45 / 75 and summary["ratio_upper_bound"] is None


def test_reference_never_reaching_the_target_gives_an_upper_bound() -> None:
    tta = _bench_module("time_to_accuracy")
    pairs = [{"order": ["reference", "smoltrain"], "reference": _side([(30, 0.5), (60, 0.6)]),
              "smoltrain": _side([(30, 0.98)])}] * 2
    summary = tta.summarize(pairs, 0.97)
    assert summary["ratio_smoltrain_over_reference"] is None and summary["ratio_upper_bound"] == 30 / 60
    assert "< 0.50 (the reference did not reach" in tta.markdown(
        {"task": "sudoku6", "target": 0.97, "eval_examples": 500, "budget_s": 60, "threads": 1, "load_start": [],
         "checkpoints_s": [30, 60], "pairs": pairs, "summary": summary})


def _voted_side(points: list[tuple[float, float, float]]) -> dict:
    side = _side([(s, e) for s, e, _ in points])
    for point, (_, _, voted) in zip(side["curve"], points, strict=True):
        point["exact_voted"] = voted
    return side


def test_single_side_runs_merge_into_pairs_and_votes_get_their_own_time_and_ratio() -> None:
    tta = _bench_module("time_to_accuracy")
    common = {"task": "sudoku6", "target": 0.97, "eval_examples": 500, "threads": 1, "load_start": [],
              "clock": "cpu"}
    reference = {**common, "budget_s": 120, "checkpoints_s": [30, 60, 90, 120],
                 "pairs": [{"order": ["reference"], "reference": _side([(30, 0.2), (60, 0.5), (90, 0.9), (120, 0.97)],
                                                                       120)}]}
    ours = {**common, "budget_s": 120, "checkpoints_s": [30, 60, 90, 120],  # stopped at the target
            "pairs": [{"order": ["smoltrain"], "smoltrain": _voted_side([(30, 0.6, 0.8), (60, 0.9, 0.97)])}]}
    merged = tta.merge_results([reference, ours])
    assert merged["pairs"][0]["order"] == ["reference", "smoltrain"]
    summary = tta.summarize(merged["pairs"], 0.97)
    assert summary["reference"]["median_s"] == 120
    assert summary["smoltrain"]["median_s"] is None  # the puzzle's own answer never reached 97%
    assert summary["smoltrain_voted"]["median_s"] == 60
    assert summary["ratio_smoltrain_voted_over_reference"] == 0.5
    table = tta.markdown({**merged, "summary": summary})
    assert "smoltrain voted 60 s" in table and "voted 0.50" in table
    assert "| 90 | 90.0% | - | - |" in table  # the stopped side shows no point after its last one


def test_report_files_that_are_missing_malformed_or_of_another_bench_are_named(tmp_path) -> None:
    import re

    import pytest

    shared = _bench_module("side_by_side")
    good = tmp_path / "good.json"
    good.write_text('{"task": "sudoku6", "pairs": []}')
    assert shared.read_results([str(good)], ("task", "pairs")) == [{"task": "sudoku6", "pairs": []}]
    (tmp_path / "bad.json").write_text("{bad")
    (tmp_path / "list.json").write_text("[1]")
    for name, says in (("missing.json", "cannot read"), ("bad.json", "is not JSON"),
                       ("list.json", "not a result of this bench (no task, pairs)")):
        with pytest.raises(ValueError, match=re.escape(says)) as raised:
            shared.read_results([str(good), str(tmp_path / name)], ("task", "pairs"))
        assert str(tmp_path / name) in str(raised.value)
