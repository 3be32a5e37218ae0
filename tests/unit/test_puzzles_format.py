"""On-disk puzzle format (reference layout) and the sampling loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from smoltrain.data.puzzles import (
    IGNORE_LABEL_ID,
    PuzzleDataset,
    PuzzleDatasetMetadata,
    atomic_dataset_dir,
    load_metadata,
    write_identifiers,
    write_split,
)
from smoltrain.errors import ConfigError, DataError

SEQ = 4


VOCAB = 200


def make_arrays(group_sizes: list[list[int]]) -> dict[str, np.ndarray]:
    """A dataset whose rows say where they come from: [group, puzzle-in-group, example, 7].

    group_sizes[g][p] = number of examples of puzzle p of group g. Label column 3 is 0, i.e. the
    ignore label, so the -100 mapping is visible.
    """
    inputs, puzzle_indices, group_indices = [], [0], [0]
    for g, puzzles in enumerate(group_sizes):
        for p, examples in enumerate(puzzles):
            for e in range(examples):
                inputs.append([g, p, e, 7])
            puzzle_indices.append(len(inputs))
        group_indices.append(len(puzzle_indices) - 1)
    inputs_arr = np.array(inputs, dtype=np.uint8).reshape(-1, SEQ)
    labels = inputs_arr.copy()
    labels[:, 3] = 0
    num_puzzles = len(puzzle_indices) - 1
    return {
        "inputs": inputs_arr,
        "labels": labels,
        "puzzle_identifiers": np.arange(num_puzzles, dtype=np.int32) % 5,
        "puzzle_indices": np.array(puzzle_indices, dtype=np.int32),
        "group_indices": np.array(group_indices, dtype=np.int32),
    }


def metadata_for(arrays: dict[str, np.ndarray], num_ids: int = 5, **overrides: object) -> PuzzleDatasetMetadata:
    num_puzzles = arrays["puzzle_identifiers"].shape[0]
    fields = dict(
        pad_id=0,
        ignore_label_id=0,
        blank_identifier_id=0,
        vocab_size=VOCAB,
        seq_len=SEQ,
        num_puzzle_identifiers=num_ids,
        total_groups=arrays["group_indices"].shape[0] - 1,
        mean_puzzle_examples=arrays["inputs"].shape[0] / max(num_puzzles, 1),
        total_puzzles=num_puzzles,
        sets=["all"],
    )
    fields.update(overrides)
    return PuzzleDatasetMetadata(**fields)  # type: ignore[arg-type]


def write_dataset(root: Path, group_sizes: list[list[int]], split: str = "train", **overrides: object) -> Path:
    arrays = make_arrays(group_sizes)
    write_split(root, split, **arrays, metadata=metadata_for(arrays, **overrides))
    write_identifiers(root, ["<blank>", "a", "b", "c", "d"])
    return root


def rows_of(batch: dict[str, torch.Tensor]) -> list[tuple[int, int, int]]:
    return [tuple(r[:3]) for r in batch["inputs"].tolist()]


def test_write_read_round_trip(tmp_path: Path) -> None:
    arrays = make_arrays([[1, 2], [3], [1, 1, 1]])
    meta = metadata_for(arrays)
    write_split(tmp_path, "train", **arrays, metadata=meta)
    assert load_metadata(tmp_path, "train") == meta
    # Same JSON keys as the reference PuzzleDatasetMetadata, in the same order.
    on_disk = json.loads((tmp_path / "train" / "dataset.json").read_text())
    assert list(on_disk) == [
        "pad_id",
        "ignore_label_id",
        "blank_identifier_id",
        "vocab_size",
        "seq_len",
        "num_puzzle_identifiers",
        "total_groups",
        "mean_puzzle_examples",
        "total_puzzles",
        "sets",
    ]
    for name, arr in arrays.items():
        loaded = np.load(tmp_path / "train" / f"all__{name}.npy")
        np.testing.assert_array_equal(loaded, arr)
        assert loaded.dtype == (np.uint8 if name in ("inputs", "labels") else np.int32)


def test_write_split_rejects_inconsistent_arrays(tmp_path: Path) -> None:
    arrays = make_arrays([[1, 2], [3]])
    bad = dict(arrays, puzzle_indices=arrays["puzzle_indices"][:-1])
    with pytest.raises(DataError, match="puzzle_indices"):
        write_split(tmp_path, "train", **bad, metadata=metadata_for(arrays))
    with pytest.raises(DataError, match="vocabulary"):
        write_split(tmp_path, "train", **arrays, metadata=metadata_for(arrays, vocab_size=5))


def test_hand_written_reference_layout_loads(tmp_path: Path) -> None:
    """A dataset laid out like the HRM-era reference builder (no total_puzzles, int32 tokens)."""
    arrays = make_arrays([[1], [1], [1], [1]])
    split_dir = tmp_path / "train"
    split_dir.mkdir()
    for name, arr in arrays.items():
        np.save(split_dir / f"all__{name}.npy", arr.astype(np.int32))
    meta = {
        "pad_id": 0,
        "ignore_label_id": 0,
        "blank_identifier_id": 0,
        "vocab_size": VOCAB,
        "seq_len": SEQ,
        "num_puzzle_identifiers": 5,
        "total_groups": 4,
        "mean_puzzle_examples": 1,
        "sets": ["all"],
    }
    (split_dir / "dataset.json").write_text(json.dumps(meta))
    (tmp_path / "identifiers.json").write_text(json.dumps(["<blank>"]))
    ds = PuzzleDataset(tmp_path, "train", global_batch_size=2)
    assert ds.metadata.total_puzzles == 4
    batches = list(ds.iter_train())
    assert len(batches) == 2
    assert batches[0]["inputs"].dtype == torch.int32
    assert (batches[0]["labels"][:, 3] == IGNORE_LABEL_ID).all()  # label 0 = ignore -> -100
    assert ds.identifiers == ["<blank>"]


def test_missing_dataset_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no dataset at .*smoltrain data sudoku --output-dir"):
        load_metadata(tmp_path / "nope", "train")
    for name, builder in (("maze6", "maze"), ("arc-cpu", "arc")):  # the recipes' directory names
        with pytest.raises(DataError, match=f"smoltrain data {builder} --output-dir .*{name}"):
            load_metadata(tmp_path / name, "train")
    write_dataset(tmp_path, [[1]])
    with pytest.raises(DataError, match="no 'test' split"):
        PuzzleDataset(tmp_path, "test", global_batch_size=1)
    (tmp_path / "train" / "all__labels.npy").unlink()
    with pytest.raises(DataError, match="all__labels.npy"):
        PuzzleDataset(tmp_path, "train", global_batch_size=1)
    (tmp_path / "train" / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_metadata(tmp_path, "train")


def test_config_errors(tmp_path: Path) -> None:
    write_dataset(tmp_path, [[1]] * 4)
    with pytest.raises(ConfigError, match="multiple"):
        PuzzleDataset(tmp_path, "train", global_batch_size=3, world_size=2)
    with pytest.raises(ConfigError, match="rank"):
        PuzzleDataset(tmp_path, "train", global_batch_size=4, rank=2, world_size=2)


def test_single_example_puzzles_match_reference_sampling(tmp_path: Path) -> None:
    """With one example per puzzle our batches are the reference's: Philox(seed + pass) drives the
    group permutation, then one rng.integers draw per group picks the augmentation."""
    sizes = [[1] * (1 + g % 3) for g in range(23)]
    write_dataset(tmp_path, sizes)
    seed, gbs = 7, 5
    ds = PuzzleDataset(tmp_path, "train", global_batch_size=gbs, seed=seed)
    for pass_id in (1, 2):
        rng = np.random.Generator(np.random.Philox(seed=seed + pass_id))
        order = rng.permutation(len(sizes))
        expected = [(int(g), int(rng.integers(0, len(sizes[g]))), 0) for g in order]
        got = [row for batch in ds.iter_train() for row in rows_of(batch)]
        assert got == expected[: (len(sizes) // gbs) * gbs]  # last incomplete batch dropped


def test_train_sampling_properties(tmp_path: Path) -> None:
    sizes = [[3, 1], [5], [2, 2, 2], [1], [4, 1]] * 6  # 30 groups, multi-example puzzles
    write_dataset(tmp_path, sizes)
    gbs = 8

    def epoch(seed: int, **kw: int) -> list[dict[str, torch.Tensor]]:
        return list(PuzzleDataset(tmp_path, "train", global_batch_size=gbs, seed=seed, **kw).iter_train())

    a, b, c = epoch(1), epoch(1), epoch(2)
    assert len(a) == len(b) and all(torch.equal(x["inputs"], y["inputs"]) for x, y in zip(a, b, strict=True))
    assert [rows_of(x) for x in a] != [rows_of(x) for x in c]
    for batch in a:
        assert batch["inputs"].shape == (gbs, SEQ)
        rows = rows_of(batch)
        assert len(set(rows)) == len(rows)  # examples of a puzzle are drawn without replacement
    # At most one augmentation (puzzle) of each group per pass.
    chosen: dict[int, set[int]] = {}
    for batch in a:
        for g, p, _ in rows_of(batch):
            chosen.setdefault(g, set()).add(p)
    assert all(len(ps) == 1 for ps in chosen.values())
    # epochs_per_iter=2 walks two permutations of the groups in one pass.
    assert len(epoch(1, epochs_per_iter=2)) > len(a)


def test_rank_slices_union_is_the_global_batch(tmp_path: Path) -> None:
    write_dataset(tmp_path, [[2, 1], [3], [1], [1, 1, 1]] * 5)
    single = list(PuzzleDataset(tmp_path, "train", global_batch_size=6, seed=3).iter_train())
    ranks = [
        list(PuzzleDataset(tmp_path, "train", global_batch_size=6, seed=3, rank=r, world_size=3).iter_train())
        for r in range(3)
    ]
    assert all(len(r) == len(single) for r in ranks)
    for i, batch in enumerate(single):
        for key in batch:
            joined = torch.cat([ranks[r][i][key] for r in range(3)])
            assert torch.equal(joined, batch[key])
        assert ranks[0][i]["inputs"].shape[0] == 2


def test_test_mode_pads_and_covers_every_example_once(tmp_path: Path) -> None:
    write_dataset(tmp_path, [[2, 1], [3], [1, 1, 1], [1]], split="test")  # 10 examples
    seen = []
    for rank in range(2):
        ds = PuzzleDataset(tmp_path, "test", global_batch_size=4, rank=rank, world_size=2, test_mode=True)
        batches = list(ds)
        assert len(batches) == 3
        for eb in batches:
            assert eb.batch["inputs"].shape == (2, SEQ)
            real, pad = slice(0, eb.num_real), slice(eb.num_real, None)
            seen.extend(rows_of({"inputs": eb.batch["inputs"][real]}))
            assert (eb.batch["inputs"][pad] == 0).all()
            assert (eb.batch["labels"][pad] == IGNORE_LABEL_ID).all()
            assert (eb.batch["puzzle_identifiers"][pad] == 0).all()
        assert [eb.global_num_real for eb in batches] == [4, 4, 2]
        assert [eb.num_real for eb in batches] == ([2, 2, 2] if rank == 0 else [2, 2, 0])
    all_rows = [tuple(r[:3]) for r in make_arrays([[2, 1], [3], [1, 1, 1], [1]])["inputs"].tolist()]
    assert sorted(seen) == sorted(all_rows)
    # Puzzle identifiers follow the example -> puzzle mapping.
    ds = PuzzleDataset(tmp_path, "test", global_batch_size=10, test_mode=True)
    (eb,) = list(ds.iter_test())
    assert eb.batch["puzzle_identifiers"].tolist() == [0, 0, 1, 2, 2, 2, 3, 4, 0, 1]


def test_resume_yields_the_same_next_batches(tmp_path: Path) -> None:
    write_dataset(tmp_path, [[1, 2], [3], [1], [2, 2]] * 5)  # 20 groups

    def make() -> PuzzleDataset:
        return PuzzleDataset(tmp_path, "train", global_batch_size=4, seed=11)

    full = make()
    stream = [rows_of(b) for _ in range(3) for b in full.iter_train()]  # three passes
    per_pass = len(stream) // 3
    for k in (0, 2, per_pass - 1, per_pass, per_pass + 3):
        run = make()
        got: list = []
        states = []
        while len(got) < k:  # consume k batches, possibly across passes
            for b in run.iter_train():
                got.append(rows_of(b))
                states.append(run.state_dict())
                if len(got) == k:
                    break
        state = run.state_dict() if k else {"pass": 1, "batch": 0}
        resumed = make()
        resumed.load_state_dict(state)
        rest = [rows_of(b) for b in resumed.iter_train()]
        if state["batch"] == 0 and k:
            assert state["pass"] == k // per_pass + 1  # rolled over when the last batch was yielded
        assert got + rest == stream[: len(got) + len(rest)]
        assert len(rest) > 0
    with pytest.raises(DataError, match="invalid data loader state"):
        make().load_state_dict({"pass": 0, "batch": 1})


def test_steps_helpers(tmp_path: Path) -> None:
    write_dataset(tmp_path, [[1, 1]] * 10, mean_puzzle_examples=1.0)
    ds = PuzzleDataset(tmp_path, "train", global_batch_size=4)
    assert ds.steps_per_epoch == pytest.approx(2.5)
    assert ds.total_steps(3) == int(3 * 10 * 1.0 / 4)


def test_multiple_roots_concatenate(tmp_path: Path) -> None:
    a = write_dataset(tmp_path / "a", [[1], [1], [1]])
    b = write_dataset(tmp_path / "b", [[1, 1], [1]])
    ds = PuzzleDataset([a, b], "train", global_batch_size=5)
    assert ds.metadata.total_groups == 5
    assert ds.metadata.num_puzzle_identifiers == 1 + 4 + 4
    # Identifiers of b are shifted past a's; the blank identifier 0 stays shared.
    assert ds.puzzle_identifiers.tolist() == [0, 1, 2, 0, 5, 6]
    assert ds.identifiers == ["<blank>", "a", "b", "c", "d", "a", "b", "c", "d"]
    (batch,) = list(ds.iter_train())
    assert sorted(r[0] for r in rows_of(batch)) == [0, 0, 1, 1, 2]
    test_rows = [eb.num_real for eb in PuzzleDataset([a, b], "train", 4, test_mode=True)]
    assert sum(test_rows) == 6
    c = write_dataset(tmp_path / "c", [[1]], seq_len=SEQ, vocab_size=VOCAB - 1)
    with pytest.raises(DataError, match="vocab_size"):
        PuzzleDataset([a, c], "train", global_batch_size=1)


def test_atomic_dataset_dir(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    with pytest.raises(RuntimeError):
        with atomic_dataset_dir(out) as tmp:
            write_dataset(tmp, [[1]])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []  # neither the dataset nor a temporary directory is left
    with atomic_dataset_dir(out) as tmp:
        write_dataset(tmp, [[1]])
    assert load_metadata(out, "train").total_groups == 1
    # A failure keeps the previous dataset intact; a success replaces it.
    with pytest.raises(RuntimeError):
        with atomic_dataset_dir(out) as tmp:
            write_dataset(tmp, [[1], [1]])
            raise RuntimeError("boom")
    assert load_metadata(out, "train").total_groups == 1
    with atomic_dataset_dir(out) as tmp:
        write_dataset(tmp, [[1], [1]])
    assert load_metadata(out, "train").total_groups == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    # A directory that is not a dataset is never replaced.
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a dataset directory"):
        with atomic_dataset_dir(other):
            pass
    assert (other / "notes.txt").read_text() == "keep me"
