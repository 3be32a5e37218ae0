"""ARC builder: loading/validation, token canvas, augmentation, translation, splits, files, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from smoltrain.data.arc import build_arc_dataset, crop_grid, crop_sizes, grid_to_tokens, load_arc_tasks
from smoltrain.data.augment import (
    apply_colour_permutation,
    dihedral_transform,
    inverse_colour_permutation,
    inverse_dihedral_transform,
    parse_arc_name,
)
from smoltrain.data.puzzles import PuzzleDataset, detect_kind, load_identifiers, load_metadata
from smoltrain.errors import ConfigError, DataError


def _grid(seed: int, h: int, w: int) -> list[list[int]]:
    return np.random.default_rng(seed).integers(0, 10, size=(h, w)).tolist()


def pair(seed: int, h: int, w: int, oh: int, ow: int) -> dict:
    """A demonstration pair of random grids: an h x w input, an oh x ow output."""
    return {"input": _grid(seed, h, w), "output": _grid(seed + 1000, oh, ow)}


def synthetic_tasks() -> dict[str, dict[str, dict]]:
    """subset -> task id -> {"train": [...], "test": [...]} with outputs (the per-task layout)."""
    zero = {"input": [[0, 0], [0, 0]], "output": [[0, 0], [0, 0]]}
    return {
        "training": {
            "a0000001": {"train": [pair(1, 3, 4, 2, 5), pair(2, 5, 2, 5, 2)], "test": [pair(3, 4, 4, 1, 3)]},
            # invariant under every colour map (0 is fixed) and every dihedral transform: one version only
            "a0000002": {"train": [zero, zero], "test": [zero]},
        },
        "evaluation": {
            "e0000001": {
                "train": [pair(10 + i, 2 + i, 3, 3, 2 + i) for i in range(6)],
                "test": [pair(20, 6, 7, 7, 6), pair(21, 30, 30, 1, 1)],
            },
            "e0000002": {"train": [pair(30, 1, 1, 2, 2)], "test": [pair(31, 3, 2, 2, 3)]},
        },
    }


SMALL_CANVAS = 10


def small_canvas_tasks() -> dict[str, dict[str, dict]]:
    """`synthetic_tasks` plus tasks at the edge of a 10x10 canvas: one whose grids are exactly 10x10 (fits,
    EOS border nowhere), and two with a single grid one cell too tall or too wide (skipped whole at 10)."""
    tasks = synthetic_tasks()
    # e0000001 (a 30x30 test input) is skipped too.
    tasks["training"]["a0000003"] = {"train": [pair(50, 2, 2, 1, 11)], "test": [pair(51, 3, 3, 3, 3)]}
    tasks["evaluation"]["e0000003"] = {
        "train": [pair(40, 10, 10, 10, 10), pair(41, 4, 10, 10, 4)],
        "test": [pair(42, 10, 10, 10, 10), pair(43, 2, 9, 9, 2)],
    }
    tasks["evaluation"]["e0000004"] = {"train": [pair(60, 3, 3, 3, 3)], "test": [pair(61, 11, 2, 2, 2)]}
    return tasks


SMALL_CANVAS_SKIPPED = ["a0000003", "e0000001", "e0000004"]  # build order: subsets as given, ids sorted


def write_kaggle(root: Path, tasks: dict[str, dict[str, dict]]) -> str:
    """The Kaggle combined layout: challenges without test outputs + solutions; returns the prefix."""
    root.mkdir(parents=True, exist_ok=True)
    for subset, by_id in tasks.items():
        challenges = {
            tid: {"train": t["train"], "test": [{"input": p["input"]} for p in t["test"]]} for tid, t in by_id.items()
        }
        solutions = {tid: [p["output"] for p in t["test"]] for tid, t in by_id.items()}
        (root / f"arc-agi_{subset}_challenges.json").write_text(json.dumps(challenges))
        (root / f"arc-agi_{subset}_solutions.json").write_text(json.dumps(solutions))
    return str(root / "arc-agi")


def write_per_task(root: Path, tasks: dict[str, dict[str, dict]]) -> Path:
    for subset, by_id in tasks.items():
        (root / subset).mkdir(parents=True, exist_ok=True)
        for tid, t in by_id.items():
            (root / subset / f"{tid}.json").write_text(json.dumps(t))
    return root


NUM_AUG = 8


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict, dict]:
    return build_synthetic(tmp_path_factory.mktemp("arc"), synthetic_tasks())


def build_synthetic(base: Path, tasks: dict[str, dict[str, dict]], **options) -> tuple[Path, dict, dict]:
    """Build `tasks` (Kaggle layout, training + evaluation, NUM_AUG, seed 7) under `base`."""
    info = build_arc_dataset(base / "ds", input_file_prefix=write_kaggle(base / "kaggle", tasks),
                             subsets=["training", "evaluation"], test_set_name="evaluation", num_aug=NUM_AUG,
                             seed=7, **options)
    return base / "ds", tasks, info


def load_split(root: Path, split: str) -> dict[str, np.ndarray]:
    return {
        name: np.load(root / split / f"all__{name}.npy")
        for name in ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")
    }


def decode_row(tokens: np.ndarray) -> tuple[tuple[int, int], np.ndarray]:
    """(offset, grid) of one canvas row (n x n, n from its length); checks the row is exactly
    `grid_to_tokens(grid, offset, n)`, so the grid also lies inside the canvas."""
    n = math.isqrt(tokens.size)
    canvas = tokens.reshape(n, n)
    rows, cols = np.nonzero(canvas)
    r0, c0 = int(rows.min()), int(cols.min())
    shifted = np.zeros_like(canvas)
    shifted[: n - r0, : n - c0] = canvas[r0:, c0:]
    grid = crop_grid(shifted.reshape(-1))
    assert grid is not None
    np.testing.assert_array_equal(grid_to_tokens(grid, (r0, c0), n), tokens)
    return (r0, c0), grid


def pairs_of(task: dict, which: str) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.array(p["input"]), np.array(p["output"])) for p in task[which]]


def assert_rows_decode_to_originals(root: Path, tasks: dict[str, dict[str, dict]]) -> None:
    """Every row of both splits, cropped and de-augmented, is its task's original grid (tasks named "e..." are
    the evaluation subset: their test pairs form the test split)."""
    names = load_identifiers(root)
    by_id = {tid: t for subset in tasks.values() for tid, t in subset.items()}
    for split in ("train", "test"):
        data = load_split(root, split)
        pi = data["puzzle_indices"]
        for puzzle, ident in enumerate(data["puzzle_identifiers"]):
            task_id, k, mapping = parse_arc_name(names[ident])
            task = by_id[task_id]
            in_eval = task_id.startswith("e")
            if split == "train":
                expected = pairs_of(task, "train") + ([] if in_eval else pairs_of(task, "test"))
            else:
                expected = pairs_of(task, "test")
            rows = range(pi[puzzle], pi[puzzle + 1])
            assert len(rows) == len(expected)
            for row, (orig_in, orig_out) in zip(rows, expected, strict=True):
                off_in, got_in = decode_row(data["inputs"][row])
                off_out, got_out = decode_row(data["labels"][row])
                assert off_in == off_out  # one offset per example
                np.testing.assert_array_equal(got_in, dihedral_transform(apply_colour_permutation(orig_in, mapping), k))
                np.testing.assert_array_equal(
                    got_out, dihedral_transform(apply_colour_permutation(orig_out, mapping), k)
                )
                # ... and the evaluator's inverse order (inverse dihedral, then inverse colour map) undoes it.
                undone = apply_colour_permutation(
                    inverse_dihedral_transform(got_out, k), inverse_colour_permutation(mapping)
                )
                np.testing.assert_array_equal(undone, orig_out)


@pytest.fixture(scope="module")
def built_small(tmp_path_factory) -> tuple[Path, dict, dict]:
    root, tasks, info = build_synthetic(tmp_path_factory.mktemp("arc10"), small_canvas_tasks(),
                                        canvas_size=SMALL_CANVAS)
    kept = {subset: {tid: t for tid, t in by_id.items() if tid not in SMALL_CANVAS_SKIPPED}
            for subset, by_id in tasks.items()}
    return root, kept, info


def _dataset_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "build_info.json"
    }


def _expect(exc: type[Exception], match: str, **kwargs) -> None:
    with pytest.raises(exc, match=match):
        build_arc_dataset(**kwargs)


def test_grid_to_tokens_eos_border_is_exact() -> None:
    grid = np.arange(12).reshape(3, 4) % 10
    tokens = grid_to_tokens(grid, (2, 5)).reshape(30, 30)
    expected = np.zeros((30, 30), dtype=np.int64)
    for i in range(3):
        for j in range(4):
            expected[2 + i, 5 + j] = grid[i, j] + 2
        expected[2 + i, 9] = 1  # column right of the grid, grid rows only
    for j in range(4):
        expected[5, 5 + j] = 1  # row below the grid, grid columns only
    np.testing.assert_array_equal(tokens, expected)
    assert tokens[5, 9] == 0  # the diagonal corner stays PAD, as in the reference
    assert tokens.dtype == np.uint8

    # A grid touching the canvas edge gets no EOS beyond it.
    full_width = grid_to_tokens(np.ones((2, 30), dtype=int)).reshape(30, 30)
    assert (full_width[:2] == 3).all() and (full_width[2] == 1).all() and (full_width[3:] == 0).all()
    corner = grid_to_tokens(np.ones((4, 3), dtype=int), (26, 27)).reshape(30, 30)
    assert (corner == 1).sum() == 0 and (corner == 3).sum() == 12
    with pytest.raises(ValueError):
        grid_to_tokens(np.ones((4, 3), dtype=int), (27, 0))


def test_crop_grid_crops_at_eos() -> None:
    for shape in [(1, 1), (3, 7), (30, 30), (12, 1)]:
        grid = np.random.default_rng(sum(shape)).integers(0, 10, size=shape)
        np.testing.assert_array_equal(crop_grid(grid_to_tokens(grid)), grid)
    assert crop_grid(np.zeros(900, dtype=np.uint8)).shape == (0, 0)
    # Ragged prediction: row 0 has 5 colours, row 1 has 3 -> the largest top-left rectangle is 2x3.
    canvas = np.zeros((30, 30), dtype=np.uint8)
    canvas[0, :5] = 4
    canvas[1, :3] = 5
    canvas[1, 3] = 1
    np.testing.assert_array_equal(crop_grid(canvas.reshape(-1)), [[2, 2, 2], [3, 3, 3]])


def test_small_canvas_tokens_and_crop() -> None:
    rng = np.random.default_rng(3)
    grids = [rng.integers(0, 10, size=shape) for shape in [(1, 1), (3, 7), (10, 10), (10, 4), (2, 10)]]
    rows = np.stack([grid_to_tokens(g, canvas_size=10) for g in grids])
    assert rows.shape == (5, 100)
    # The canvas side comes from the shape: [B, n*n] and [B, n, n] crop alike, as does one flat canvas.
    heights, widths = crop_sizes(rows)
    assert list(zip(heights.tolist(), widths.tolist(), strict=True)) == [g.shape for g in grids]
    square = crop_sizes(rows.reshape(5, 10, 10))
    assert heights.tolist() == square[0].tolist() and widths.tolist() == square[1].tolist()
    assert [h.item() for h in crop_sizes(rows[1])] == [3, 7]
    for g, row in zip(grids, rows, strict=True):
        np.testing.assert_array_equal(crop_grid(row), g)
        np.testing.assert_array_equal(crop_grid(row.reshape(10, 10)), g)
    # An exactly 10x10 grid fills the canvas: no EOS at all; a 3x7 one gets its border inside it.
    assert (rows[2] >= 2).all() and (rows[1].reshape(10, 10)[3, :7] == 1).all()
    with pytest.raises(ValueError, match="does not fit the 10x10 canvas"):
        grid_to_tokens(np.ones((4, 3), dtype=int), (7, 0), canvas_size=10)
    with pytest.raises(ValueError, match="not a positive square"):
        crop_sizes(np.zeros((2, 99), dtype=np.uint8))
    with pytest.raises(ValueError, match="not a positive square"):
        crop_grid(np.zeros(50, dtype=np.uint8))


def test_augmented_puzzles_are_transforms_of_the_original(built) -> None:
    root, tasks, _ = built
    assert_rows_decode_to_originals(root, tasks)


def test_dedup_and_identifiers(built) -> None:
    root, tasks, info = built
    names = load_identifiers(root)
    train = load_split(root, "train")
    assert names[0] == "<blank>"
    assert len(names) == len(set(names))  # one identifier per version, never shared
    for split in ("train", "test"):
        assert load_metadata(root, split).num_puzzle_identifiers == len(names) == info["counts"]["identifiers"]
    by_id = {tid: task for subset in tasks.values() for tid, task in subset.items()}
    groups = train["group_indices"]
    versions = {}
    for g in range(len(groups) - 1):
        ids = train["puzzle_identifiers"][groups[g] : groups[g + 1]]
        assert (np.diff(ids) == 1).all()  # a group's versions have consecutive identifiers
        task_id = names[ids[0]]
        assert parse_arc_name(task_id)[0] == task_id  # the original comes first, under its bare id
        versions[task_id] = ids
        # No two versions of a task hold the same set of (input, output) pairs (the rows are checked against
        # the names in the test above).
        contents = set()
        for ident in ids:
            _, k, mapping = parse_arc_name(names[ident])
            task = by_id[task_id]
            pairs = []
            for p in task["train"] + task["test"]:
                moved = [
                    dihedral_transform(apply_colour_permutation(np.array(p[x]), mapping), k)
                    for x in ("input", "output")
                ]
                pairs.append(tuple((g.shape, g.tobytes()) for g in moved))
            contents.add(tuple(sorted(pairs)))
        assert len(contents) == len(ids)
    assert len(versions["a0000002"]) == 1  # all-zero task: every augmentation is a duplicate
    for task_id in ("a0000001", "e0000001", "e0000002"):
        assert len(versions[task_id]) == NUM_AUG + 1
    assert info["counts"]["tasks_with_fewer_versions"] == 1
    assert info["counts"]["puzzles"] == 3 * (NUM_AUG + 1) + 1


def test_translation_only_in_train_and_one_untranslated_example_per_puzzle(built) -> None:
    root, _, _ = built
    train = load_split(root, "train")
    pi = train["puzzle_indices"]
    untranslated_total = 0
    offsets = []
    for puzzle in range(len(train["puzzle_identifiers"])):
        at_origin = 0
        for row in range(pi[puzzle], pi[puzzle + 1]):
            offset, _ = decode_row(train["inputs"][row])
            offsets.append(offset)
            at_origin += offset == (0, 0)
        assert at_origin >= 1  # one example per puzzle is always top-left
        untranslated_total += at_origin
    # Translated examples land at (0, 0) only by chance (< 1/4 for the largest grids here).
    puzzles = len(train["puzzle_identifiers"])
    assert untranslated_total <= puzzles + 0.1 * (len(offsets) - puzzles) + 2
    assert len(set(offsets)) > len(offsets) // 2
    test = load_split(root, "test")
    for row in range(test["inputs"].shape[0]):
        assert decode_row(test["inputs"][row])[0] == (0, 0)
        assert decode_row(test["labels"][row])[0] == (0, 0)


def test_split_assignment_and_test_identifiers(built) -> None:
    root, tasks, info = built
    names = load_identifiers(root)
    train, test = load_split(root, "train"), load_split(root, "test")
    train_rows = {}
    for puzzle, ident in enumerate(train["puzzle_identifiers"]):
        task_id = parse_arc_name(names[ident])[0]
        train_rows.setdefault(task_id, set()).add(
            int(train["puzzle_indices"][puzzle + 1] - train["puzzle_indices"][puzzle])
        )
    assert train_rows == {"a0000001": {3}, "a0000002": {3}, "e0000001": {6}, "e0000002": {1}}
    # Test split: only evaluation tasks, every version, with the identifier of the same version in train.
    test_tasks = [parse_arc_name(names[i])[0] for i in test["puzzle_identifiers"]]
    assert set(test_tasks) == {"e0000001", "e0000002"}
    assert set(test["puzzle_identifiers"].tolist()) <= set(train["puzzle_identifiers"].tolist())
    eval_train_ids = [i for i in train["puzzle_identifiers"].tolist() if names[i].split("|")[0].startswith("e")]
    assert test["puzzle_identifiers"].tolist() == eval_train_ids
    assert np.diff(test["puzzle_indices"]).tolist() == [2] * (NUM_AUG + 1) + [1] * (NUM_AUG + 1)
    assert info["counts"]["test_rows"] == test["inputs"].shape[0] == 3 * (NUM_AUG + 1)
    meta = load_metadata(root, "test")
    assert (meta.total_groups, meta.total_puzzles, meta.vocab_size, meta.seq_len) == (2, 2 * (NUM_AUG + 1), 12, 900)
    assert meta.ignore_label_id == 0 and meta.pad_id == 0
    assert train["inputs"].dtype == np.uint8 and train["labels"].dtype == np.uint8


def test_test_puzzles_json_and_build_info(built) -> None:
    root, tasks, info = built
    assert json.loads((root / "test_puzzles.json").read_text()) == tasks["evaluation"]
    saved = json.loads((root / "build_info.json").read_text())
    assert saved["builder"] == "arc" and saved["subsets"] == ["training", "evaluation"]
    assert (saved["test_set_name"], saved["num_aug"], saved["seed"]) == ("evaluation", NUM_AUG, 7)
    assert saved["counts"]["tasks"] == 4 and saved["build_seconds"] > 0
    assert saved["counts"]["train_rows"] == load_split(root, "train")["inputs"].shape[0]


def test_loads_with_puzzle_dataset(built) -> None:
    root, _, _ = built
    ds = PuzzleDataset(root, "train", global_batch_size=8, seed=0)
    batch = next(iter(ds.iter_train()))
    assert batch["inputs"].shape == (8, 900) and int(batch["inputs"].max()) <= 11
    assert (batch["labels"] == -100).any() and (batch["labels"] == 1).any()  # PAD ignored, EOS supervised
    assert int(batch["puzzle_identifiers"].min()) >= 1
    test = PuzzleDataset(root, "test", global_batch_size=8, test_mode=True)
    assert sum(b.num_real for b in test.iter_test()) == 3 * (NUM_AUG + 1)


def test_small_canvas_shapes_and_skipped_tasks(built_small) -> None:
    root, kept, info = built_small
    for split in ("train", "test"):
        meta = load_metadata(root, split)
        assert (meta.seq_len, meta.vocab_size) == (SMALL_CANVAS * SMALL_CANVAS, 12)
        data = load_split(root, split)
        assert data["inputs"].shape[1] == data["labels"].shape[1] == 100
    saved = json.loads((root / "build_info.json").read_text())
    for record in (info, saved):
        assert record["canvas_size"] == SMALL_CANVAS
        assert record["skipped_tasks"] == SMALL_CANVAS_SKIPPED
        counts = record["counts"]
        assert (counts["tasks"], counts["skipped_tasks"]) == (4, 3)
        assert counts["tasks_per_subset"] == {"training": 2, "evaluation": 2} and counts["test_tasks"] == 2
    # Skipped tasks are gone everywhere: identifiers, both splits, the evaluator's test puzzles.
    names = load_identifiers(root)
    assert not {parse_arc_name(n)[0] for n in names[1:]} & set(SMALL_CANVAS_SKIPPED)
    assert json.loads((root / "test_puzzles.json").read_text()) == kept["evaluation"]
    assert set(kept["evaluation"]) == {"e0000002", "e0000003"}
    assert info["counts"]["test_rows"] == (1 + 2) * (NUM_AUG + 1)
    assert detect_kind(root).name == "arc"


def test_small_canvas_rows_decode_to_the_original_grids(built_small) -> None:
    root, kept, _ = built_small
    assert_rows_decode_to_originals(root, kept)  # decode_row checks every grid lies inside the 10x10 canvas
    # Translation still happens in train, inside the small canvas; the test split stays top-left.
    train = load_split(root, "train")
    offsets = {decode_row(row)[0] for row in train["inputs"]}
    assert len(offsets) > 5
    test = load_split(root, "test")
    assert {decode_row(row)[0] for row in np.concatenate([test["inputs"], test["labels"]])} == {(0, 0)}


def test_small_canvas_loads_with_puzzle_dataset(built_small) -> None:
    root, _, _ = built_small
    batch = next(iter(PuzzleDataset(root, "train", global_batch_size=8, seed=0).iter_train()))
    assert batch["inputs"].shape == (8, 100) and int(batch["inputs"].max()) <= 11


def test_small_canvas_keeps_the_augmentations_of_the_default_canvas(built, built_small) -> None:
    """A task's versions depend on the seed and its id only, so the kept tasks get the same identifiers'
    names on any canvas (only the translations differ: offsets are drawn from a smaller range)."""
    full = [n for n in load_identifiers(built[0]) if parse_arc_name(n)[0] in {"a0000001", "e0000002"}]
    small = [n for n in load_identifiers(built_small[0]) if parse_arc_name(n)[0] in {"a0000001", "e0000002"}]
    assert small == full and len(small) == 2 * (NUM_AUG + 1)


def test_canvas_size_errors(tmp_path: Path) -> None:
    prefix = write_kaggle(tmp_path / "src", small_canvas_tasks())
    out = tmp_path / "out"
    common = {"output_dir": out, "input_file_prefix": prefix, "subsets": ["training", "evaluation"]}
    for bad in (0, 31, -5):
        _expect(ConfigError, rf"--canvas-size must be from 1 to 30 .*got {bad}", canvas_size=bad, **common)
    _expect(DataError, r"none of the 7 selected ARC tasks fits a 1x1 canvas.*raise --canvas-size",
            canvas_size=1, **common)
    # Tasks remain, but every test task is skipped: the empty test split names the canvas as the cause.
    _expect(DataError, r"test split would be empty \(1 of its tasks were skipped for grids larger than 10x10: "
            r"raise --canvas-size\)", canvas_size=10, task_ids={"a0000001", "e0000001"}, **common)
    assert not out.exists()
    # A grid of exactly n x n fits: e0000003 (10x10) is kept at 10 and skipped at 9.
    info = build_arc_dataset(canvas_size=9, num_aug=0, **common)
    assert "e0000003" in info["skipped_tasks"] and load_metadata(out, "test").seq_len == 81


def test_layouts_and_seeds(tmp_path: Path) -> None:
    tasks = synthetic_tasks()
    prefix = write_kaggle(tmp_path / "kaggle", tasks)
    folder = write_per_task(tmp_path / "per-task", tasks)
    common = {"subsets": ["training", "evaluation"], "num_aug": 3}
    build_arc_dataset(tmp_path / "k1", input_file_prefix=prefix, seed=1, **common)
    build_arc_dataset(tmp_path / "k2", input_file_prefix=prefix, seed=1, **common)
    build_arc_dataset(tmp_path / "d1", input_dir=folder, seed=1, **common)
    build_arc_dataset(tmp_path / "k3", input_file_prefix=prefix, seed=2, **common)
    k1 = _dataset_bytes(tmp_path / "k1")
    assert k1 == _dataset_bytes(tmp_path / "k2")  # seeded: byte-identical
    assert k1 == _dataset_bytes(tmp_path / "d1")  # both layouts give the same dataset
    k3 = _dataset_bytes(tmp_path / "k3")
    assert k3["train/all__inputs.npy"] != k1["train/all__inputs.npy"]
    assert k3["identifiers.json"] != k1["identifiers.json"]
    # A task's versions depend on the seed and its id only, not on which other tasks are built.
    build_arc_dataset(tmp_path / "only", input_file_prefix=prefix, seed=1, task_ids={"a0000001", "e0000002"}, **common)
    only = load_identifiers(tmp_path / "only")
    full = load_identifiers(tmp_path / "k1")
    assert set(only) <= set(full) and len(only) == 1 + 2 * 4
    # num_aug 0: originals only, still translated in train (except one example per puzzle)
    info = build_arc_dataset(
        tmp_path / "none", input_file_prefix=prefix, seed=1, subsets=["training", "evaluation"], num_aug=0
    )
    assert info["counts"]["puzzles"] == 4 and load_identifiers(tmp_path / "none")[1:] == sorted(
        ["a0000001", "a0000002", "e0000001", "e0000002"]
    )


def test_errors_name_the_problem(tmp_path: Path) -> None:
    tasks = synthetic_tasks()
    prefix = write_kaggle(tmp_path / "ok", tasks)
    out = tmp_path / "out"
    _expect(
        DataError,
        r"arc-agi_concept_challenges\.json not found; drop `concept` from --subsets",
        output_dir=out,
        input_file_prefix=prefix,
        subsets=["training", "evaluation", "concept"],
    )
    (tmp_path / "ok" / "arc-agi_concept_challenges.json").write_text("{}")
    _expect(
        DataError,
        r"arc-agi_concept_solutions\.json not found; drop `concept` from --subsets or add the file",
        output_dir=out,
        input_file_prefix=prefix,
        subsets=["training", "evaluation", "concept"],
    )
    _expect(
        ConfigError,
        "--test-set-name 'evaluation' is not among --subsets",
        output_dir=out,
        input_file_prefix=prefix,
        subsets=["training"],
    )
    _expect(ConfigError, "exactly one ARC source", output_dir=out, subsets=["evaluation"])
    _expect(
        ConfigError,
        "exactly one ARC source",
        output_dir=out,
        input_file_prefix=prefix,
        input_dir=tmp_path,
        subsets=["evaluation"],
    )
    _expect(ConfigError, "num-aug", output_dir=out, input_file_prefix=prefix, subsets=["evaluation"], num_aug=-1)
    _expect(
        DataError,
        r"per-task json files of subset `evaluation`.*drop `evaluation`",
        output_dir=out,
        input_dir=tmp_path / "nowhere",
        subsets=["evaluation"],
    )
    assert not out.exists()  # nothing written on failure

    def broken(name: str, mutate) -> str:
        bad = json.loads(json.dumps(tasks))
        mutate(bad)
        return write_kaggle(tmp_path / name, bad)

    cases = [
        (
            "big",
            lambda t: t["evaluation"]["e0000002"]["train"][0].update(input=[[1] * 31]),
            r"e0000002, train pair 0 input: grid is 1x31, larger than the 30x30",
        ),
        (
            "colour",
            lambda t: t["training"]["a0000001"]["train"][1].update(output=[[1, 10], [2, 3]]),
            r"a0000001, train pair 1 output: grid holds colour values 1..10, outside 0..9",
        ),
        (
            "ragged",
            lambda t: t["evaluation"]["e0000001"]["test"][1].update(input=[[1, 2], [3]]),
            r"e0000001, test pair 1 input: ragged grid",
        ),
        (
            "float",
            lambda t: t["evaluation"]["e0000001"]["train"][0].update(input=[[1.5]]),
            r"train pair 0 input: grid cells must be integers",
        ),
        (
            "nested",
            lambda t: t["evaluation"]["e0000001"]["train"][1].update(output=[[[1]], [[2]]]),
            r"train pair 1 output: grid cells must be single integers 0\.\.9, found nested lists",
        ),
    ]
    for name, mutate, pattern in cases:
        bad_prefix = broken(name, mutate)
        _expect(DataError, pattern, output_dir=out, input_file_prefix=bad_prefix, subsets=["training", "evaluation"])
    # solutions with fewer grids than test inputs
    write_kaggle(tmp_path / "nosol", tasks)
    sol = tmp_path / "nosol" / "arc-agi_evaluation_solutions.json"
    data = json.loads(sol.read_text())
    data["e0000001"] = data["e0000001"][:1]
    sol.write_text(json.dumps(data))
    _expect(
        DataError,
        r"e0000001: the solutions file has 1 output grids for 2 test inputs",
        output_dir=out,
        input_file_prefix=str(tmp_path / "nosol" / "arc-agi"),
        subsets=["evaluation"],
    )
    # malformed JSON names the file and where
    (tmp_path / "ok" / "arc-agi_training_challenges.json").write_text('{"a": [}')
    _expect(
        DataError,
        r"arc-agi_training_challenges\.json is not valid JSON \(line 1",
        output_dir=out,
        input_file_prefix=prefix,
        subsets=["training", "evaluation"],
    )
    # the same task id in two subsets
    folder = write_per_task(tmp_path / "dup", tasks)
    (folder / "training" / "e0000002.json").write_text(json.dumps(tasks["evaluation"]["e0000002"]))
    with pytest.raises(DataError, match="task e0000002 is in both subsets `training` and `evaluation`"):
        load_arc_tasks(input_dir=folder, subsets=["training", "evaluation"])
    # per-task layout without test outputs: only the test subset may lack them (others would train on dummies)
    no_out = write_per_task(tmp_path / "noout", tasks)
    (no_out / "evaluation" / "e0000002.json").write_text(
        json.dumps({"train": tasks["evaluation"]["e0000002"]["train"], "test": [{"input": [[1]]}]})
    )
    _expect(
        DataError, r"e0000002\.json, test pair 0: no 'output'", output_dir=out, input_dir=no_out,
        subsets=["training", "evaluation"], test_set_name="training",
    )
    # ... and all of a task's test outputs or none
    (no_out / "evaluation" / "e0000001.json").write_text(json.dumps(
        {"train": tasks["evaluation"]["e0000001"]["train"], "test": [tasks["evaluation"]["e0000001"]["test"][0],
                                                                     {"input": [[1]]}]}))
    _expect(DataError, r"e0000001\.json: some test pairs have an 'output' and some not", output_dir=out,
            input_dir=no_out, subsets=["evaluation"])


def test_real_arc_files(shared_dir: Path, tmp_path: Path) -> None:
    arc = shared_dir / "data" / "arc"
    if not (arc / "arc-agi_training_challenges.json").is_file():
        pytest.skip(f"no ARC json in {arc}")
    prefix = str(arc / "arc-agi")
    info = build_arc_dataset(
        tmp_path / "ds",
        input_file_prefix=prefix,
        subsets=["training", "evaluation", "concept"],
        test_set_name="evaluation",
        num_aug=4,
        seed=42,
        max_tasks=2,
    )
    assert info["counts"]["tasks"] == 6
    root = tmp_path / "ds"
    names = load_identifiers(root)
    challenges = json.loads((arc / "arc-agi_evaluation_challenges.json").read_text())
    solutions = json.loads((arc / "arc-agi_evaluation_solutions.json").read_text())
    test_puzzles = json.loads((root / "test_puzzles.json").read_text())
    assert set(test_puzzles) == set(sorted(challenges)[:2])
    for tid, task in test_puzzles.items():
        assert task["train"] == challenges[tid]["train"]
        assert [p["input"] for p in task["test"]] == [p["input"] for p in challenges[tid]["test"]]
        assert [p["output"] for p in task["test"]] == solutions[tid]
    # Every test row decodes back to its task's test pair.
    test = load_split(root, "test")
    for puzzle, ident in enumerate(test["puzzle_identifiers"]):
        tid, k, mapping = parse_arc_name(names[ident])
        for n, row in enumerate(range(test["puzzle_indices"][puzzle], test["puzzle_indices"][puzzle + 1])):
            _, got = decode_row(test["labels"][row])
            back = apply_colour_permutation(inverse_dihedral_transform(got, k), inverse_colour_permutation(mapping))
            np.testing.assert_array_equal(back, solutions[tid][n])
    ds = PuzzleDataset(root, "train", global_batch_size=16, seed=1)
    assert next(iter(ds.iter_train()))["inputs"].shape == (16, 900)
