"""Maze generator, CSV reader, dataset builder, CLI and the valid-optimal-path metric."""

from __future__ import annotations

import csv
import json
import sys
import types
from collections import deque
from pathlib import Path

import numpy as np
import pytest

from smoltrain.data.maze import (
    CHARSET,
    MazeSplit,
    build_maze_dataset,
    decode_maze,
    default_min_path_length,
    encode_maze,
    generate_mazes,
    write_maze_csv,
)
from smoltrain.data.puzzles import PuzzleDataset, load_metadata
from smoltrain.errors import DataError
from smoltrain.eval.maze import maze_metrics, valid_optimal_paths


def bfs_distances(text: str, n: int, allowed: set[int] | None = None) -> dict[int, int]:
    """Moves from S to every reachable non-wall cell (only through `allowed` cells if given)."""
    start = text.index("S")
    dist = {start: 0}
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        r, c = divmod(cell, n)
        for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            nb = rr * n + cc
            if 0 <= rr < n and 0 <= cc < n and text[nb] != "#" and nb not in dist:
                if allowed is None or nb in allowed:
                    dist[nb] = dist[cell] + 1
                    queue.append(nb)
    return dist


def bfs_distance(text: str, n: int, allowed: set[int] | None = None) -> int:
    """Moves from S to G over non-wall cells (restricted to `allowed` cells if given); -1 if unreachable."""
    return bfs_distances(text, n, allowed).get(text.index("G"), -1)


def py_valid_optimal(question: str, answer: str, n: int) -> bool:
    """The path cells P (o, S, G) are exactly one shortest path iff the S-G distance inside P equals the
    distance in the whole maze d and P has d + 1 cells; everything else must be unchanged."""
    if question.count("S") != 1 or question.count("G") != 1 or len(answer) != len(question):
        return False
    for q, a in zip(question, answer, strict=True):
        if a == "o":
            if q != " ":
                return False
        elif a != q:
            return False
    path = {i for i, ch in enumerate(answer) if ch in "oSG"}
    best = bfs_distance(question, n)
    return best > 0 and bfs_distance(answer, n, allowed=path) == best and len(path) == best + 1


def grid(rows: list[str]) -> str:
    return "".join(rows)


def tokens(*texts: str) -> np.ndarray:
    return np.stack([encode_maze(t) for t in texts])


OPEN = grid(["S   ", "    ", "    ", "   G"])


LABEL = grid(["Sooo", "   o", "   o", "   G"])


WALLED = grid(["S # ", "  # ", "    ", "#  G"])


WALLED_LABEL = grid(["S # ", "o # ", "ooo ", "# oG"])


TOP = grid(["S  G", "    ", "    ", "    "])


REJECTED = {
    "too long": (TOP, grid(["S  G", "o  o", "oooo", "    "])),  # a simple path, 7 moves where 3 will do
    "too long, touching itself": (OPEN, grid(["Sooo", "  oo", "  o ", "  oG"])),
    "broken": (OPEN, grid(["Soo ", "   o", "   o", "   G"])),
    "through a wall": (WALLED, grid(["Soo ", "  oo", "   o", "#  G"])),
    "modified wall": (WALLED, grid(["S   ", "o # ", "ooo ", "# oG"])),
    "wall removed elsewhere": (WALLED, grid(["S # ", "o   ", "ooo ", "# oG"])),
    "stray o": (WALLED, grid(["S #o", "o # ", "ooo ", "# oG"])),
    "missing path": (WALLED, WALLED),
    "S moved": (OPEN, grid([" ooo", "S  o", "   o", "   G"])),
    "branch": (OPEN, grid(["Sooo", "o  o", "   o", "   G"])),
}


def alternative_shortest_path(question: str, n: int) -> str:
    """A shortest path traced with the opposite neighbour order (right, left, down, up) to the generator's."""
    dist = bfs_distances(question, n)
    answer = list(question)
    cell = question.index("G")
    while dist[cell] > 1:
        r, c = divmod(cell, n)
        for rr, cc in ((r, c + 1), (r, c - 1), (r + 1, c), (r - 1, c)):
            if 0 <= rr < n and 0 <= cc < n and dist.get(rr * n + cc) == dist[cell] - 1:
                cell = rr * n + cc
                break
        answer[cell] = "o"
    return "".join(answer)


def read_arrays(root: Path) -> dict[str, np.ndarray]:
    return {f"{s}/{p.name}": np.load(p) for s in ("train", "test") for p in sorted((root / s).glob("*.npy"))}


def maze_rows(n: int = 6, count: int = 4, seed: int = 0) -> list[tuple[str, str, str, str]]:
    q, a, lengths = generate_mazes(count, n, seed=seed, workers=1)
    return [("gen", decode_maze(x), decode_maze(y), str(k)) for x, y, k in zip(q, a, lengths, strict=True)]


def write_csv(path: Path, rows: list[tuple[str, ...]], header: str = "source,question,answer,rating") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        f.write(header + "\n")
        csv.writer(f).writerows(rows)
    return path


def corrupt(rows: list[tuple[str, str, str, str]], case: str) -> list[tuple[str, ...]]:
    """Break row 3 (file line 4) in the way `case` names."""
    src, q, a, r = rows[2]
    free = q.index(" ")
    wall = q.index("#")
    path_cell = a.index("o")
    edits = {
        "short question": (src, q[:-1], a, r),
        "bad character": (src, q[:free] + "x" + q[free + 1 :], a, r),
        "two S": (src, q[:free] + "S" + q[free + 1 :], a[:free] + "S" + a[free + 1 :], r),
        "no G": (src, q.replace("G", " "), a.replace("G", " "), r),
        "o in question": (src, q[:path_cell] + "o" + q[path_cell + 1 :], a, r),
        "answer changes a wall": (src, q, a[:wall] + " " + a[wall + 1 :], r),
        "path not shortest": (src, q, a[:path_cell] + " " + a[path_cell + 1 :], r),
        "rating": (src, q, a, "hard"),
        "field count": (src, q, a),
    }
    out: list[tuple[str, ...]] = list(rows)
    out[2] = edits[case]
    return out


CSV_CASES = {
    "short question": "question has 35 characters",
    "bad character": "bad character 'x'",
    "two S": "2 'S' cells",
    "no G": "0 'G' cells",
    "o in question": "bad character 'o'",
    "answer changes a wall": "answer has ' ' at row",
    "path not shortest": "not a shortest S-G path",
    "rating": "rating 'hard' is not an integer",
    "field count": "expected 4 fields",
}


def test_generated_mazes_are_valid_hard_and_labelled_with_a_shortest_path() -> None:
    n, min_len = 10, 15
    questions, answers, lengths = generate_mazes(40, n, seed=3, min_path_length=min_len, workers=1)
    for q_tok, a_tok, length in zip(questions, answers, lengths, strict=True):
        q, a = decode_maze(q_tok), decode_maze(a_tok)
        assert q.count("S") == 1 and q.count("G") == 1 and "o" not in q
        assert py_valid_optimal(q, a, n)
        assert length == bfs_distance(q, n) + 1 == a.count("o") + 2
        assert length >= min_len
    assert len({q.tobytes() for q in questions}) == 40  # distinct
    # Maze-Hard defaults: 30x30 with shortest paths > 110 moves... counted as >= 111 cells.
    assert default_min_path_length(30) == 111 and default_min_path_length(15) == 27
    q30, a30, len30 = generate_mazes(2, 30, seed=0, workers=1)
    assert (len30 >= 111).all()
    assert all(bfs_distance(decode_maze(q), 30) + 1 == k for q, k in zip(q30, len30, strict=True))
    assert valid_optimal_paths(q30, a30).all()


def test_generator_is_seeded_and_independent_of_workers() -> None:
    one = generate_mazes(24, 8, seed=5, workers=1)
    two = generate_mazes(24, 8, seed=5, workers=2)
    other = generate_mazes(24, 8, seed=6, workers=1)
    for x, y in zip(one, two, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(one[0], other[0])


def test_impossible_min_length_fails_clearly() -> None:
    with pytest.raises(DataError, match="min-path-length"):
        generate_mazes(2, 5, seed=0, min_path_length=24, workers=1)  # 24 cells of 25: no room for walls
    with pytest.raises(DataError, match="min_path_length must be in"):
        generate_mazes(2, 5, seed=0, min_path_length=26)


def test_validator_accepts_label_and_alternative_shortest_paths() -> None:
    alternative = grid(["S   ", "o   ", "o   ", "oooG"])
    staircase = grid(["So  ", " oo ", "  oo", "   G"])
    assert all(py_valid_optimal(OPEN, a, 4) for a in (LABEL, alternative, staircase))
    inputs = tokens(OPEN, OPEN, OPEN)
    preds = tokens(LABEL, alternative, staircase)
    assert valid_optimal_paths(inputs, preds).tolist() == [True, True, True]
    assert valid_optimal_paths(inputs[0], preds[0], size=4).tolist() == [True]  # one row, explicit size
    metrics = maze_metrics(inputs, tokens(LABEL, LABEL, LABEL), preds)
    assert metrics["exact"].tolist() == [True, False, False]
    assert metrics["valid_optimal"].tolist() == [True, True, True]


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_validator_rejects(case: str) -> None:
    question, answer = REJECTED[case]
    assert len(answer) == 16
    assert valid_optimal_paths(tokens(WALLED), tokens(WALLED_LABEL)).tolist() == [True]
    assert not py_valid_optimal(question, answer, 4)  # the reference agrees that it is wrong
    assert valid_optimal_paths(tokens(question), tokens(answer)).tolist() == [False]


def test_validator_handles_padding_rows_and_agrees_with_reference_on_mutations() -> None:
    padding = np.zeros((1, 16), dtype=np.int32)
    assert valid_optimal_paths(padding, padding).tolist() == [False]
    n = 8
    questions, answers, _ = generate_mazes(30, n, seed=11, workers=1)
    rng = np.random.default_rng(0)
    preds = answers.copy()
    for row in preds[1:]:  # row 0 stays the label; the others get one random single-cell change
        cell = rng.integers(n * n)
        row[cell] = rng.choice([t for t in range(1, 6) if t != row[cell]])
    got = valid_optimal_paths(questions, preds)
    want = [py_valid_optimal(decode_maze(q), decode_maze(p), n) for q, p in zip(questions, preds, strict=True)]
    assert got.tolist() == want
    assert got[0]


def test_validator_accepts_other_shortest_paths_of_generated_mazes() -> None:
    n = 12
    questions, answers, _ = generate_mazes(20, n, seed=8, workers=1)
    alternatives = [alternative_shortest_path(decode_maze(q), n) for q in questions]
    assert all(py_valid_optimal(decode_maze(q), alt, n) for q, alt in zip(questions, alternatives, strict=True))
    preds = tokens(*alternatives)
    assert sum(not np.array_equal(p, a) for p, a in zip(preds, answers, strict=True)) >= 10  # really different
    assert valid_optimal_paths(questions, preds).all()
    assert maze_metrics(questions, answers, preds)["exact"].sum() < 10


def test_validator_checks_a_batch_of_1000_hard_mazes() -> None:
    # Its speed is measured in bench/maze_generation.py, not asserted here: a loaded machine is no clock.
    questions, answers, _ = generate_mazes(4, 30, seed=2, workers=1)
    inputs = np.tile(questions, (250, 1)).astype(np.int32)
    preds = np.tile(answers, (250, 1)).astype(np.int64)
    valid_optimal_paths(inputs[:2], preds[:2])  # compiled already (cache); warm the call path
    ok = valid_optimal_paths(inputs, preds)
    assert ok.all() and ok.shape == (1000,)


def test_build_generate_reference_layout_and_loader(tmp_path: Path) -> None:
    info = build_maze_dataset(tmp_path / "ds", "generate", size=10, num_train=12, num_test=6, seed=1, workers=1)
    assert info["builder"] == "maze" and info["size"] == 10
    assert info["counts"] == {"train_mazes": 12, "train_rows": 12, "test_mazes": 6}
    assert info["path_length"]["train"]["min"] >= default_min_path_length(10) and info["build_seconds"] > 0
    assert json.loads((tmp_path / "ds" / "build_info.json").read_text())["builder"] == "maze"
    meta = load_metadata(tmp_path / "ds", "train")
    assert (meta.vocab_size, meta.seq_len, meta.pad_id, meta.num_puzzle_identifiers) == (6, 100, 0, 1)
    assert (meta.total_groups, meta.total_puzzles, meta.sets) == (12, 12, ["all"])
    arrays = read_arrays(tmp_path / "ds")
    assert arrays["train/all__inputs.npy"].dtype == np.uint8
    assert (arrays["train/all__puzzle_identifiers.npy"] == 0).all()
    assert json.loads((tmp_path / "ds" / "identifiers.json").read_text()) == ["<blank>"]
    inputs, labels = arrays["test/all__inputs.npy"], arrays["test/all__labels.npy"]
    assert valid_optimal_paths(inputs, labels).all()
    ds = PuzzleDataset(tmp_path / "ds", "test", global_batch_size=4, test_mode=True)
    batches = list(ds)
    assert sum(b.num_real for b in batches) == 6
    np.testing.assert_array_equal(batches[0].batch["inputs"].numpy(), inputs[:4].astype(np.int32))
    train_batch = next(iter(PuzzleDataset(tmp_path / "ds", "train", global_batch_size=4)))
    assert train_batch["labels"].shape == (4, 100)
    # Train and test never share a maze; the generated CSVs are written for csv: rebuilds.
    assert not {r.tobytes() for r in arrays["train/all__inputs.npy"]} & {r.tobytes() for r in inputs}
    header = (tmp_path / "ds" / "generated" / "train.csv").read_text().splitlines()[0]
    assert header == "source,question,answer,rating"


def test_same_seed_same_bytes_and_csv_round_trip(tmp_path: Path) -> None:
    kwargs = dict(size=8, num_train=10, num_test=5, seed=4)
    build_maze_dataset(tmp_path / "a", "generate", workers=1, **kwargs)
    build_maze_dataset(tmp_path / "b", "generate", workers=2, **kwargs)
    a, b = read_arrays(tmp_path / "a"), read_arrays(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) == 10
    for key in a:
        assert a[key].tobytes() == b[key].tobytes(), key
    for split in ("train", "test"):
        assert (tmp_path / "a" / "generated" / f"{split}.csv").read_bytes() == (
            tmp_path / "b" / "generated" / f"{split}.csv"
        ).read_bytes()
    build_maze_dataset(tmp_path / "c", "generate", workers=1, **{**kwargs, "seed": 5})
    assert read_arrays(tmp_path / "c")["train/all__inputs.npy"].tobytes() != a["train/all__inputs.npy"].tobytes()

    info = build_maze_dataset(tmp_path / "again", f"csv:{tmp_path / 'a' / 'generated'}", size=8)
    again = read_arrays(tmp_path / "again")
    for key in a:
        np.testing.assert_array_equal(again[key], a[key], err_msg=key)
    assert info["path_length"] == json.loads((tmp_path / "a" / "build_info.json").read_text())["path_length"]


def test_aug_gives_eight_distinct_dihedral_versions_with_valid_labels(tmp_path: Path) -> None:
    n = 10
    info = build_maze_dataset(tmp_path / "ds", "generate", size=n, num_train=5, num_test=3, aug=True, seed=2)
    assert info["counts"] == {"train_mazes": 5, "train_rows": 40, "test_mazes": 3}
    arrays = read_arrays(tmp_path / "ds")
    inputs, labels = arrays["train/all__inputs.npy"], arrays["train/all__labels.npy"]
    np.testing.assert_array_equal(arrays["train/all__group_indices.npy"], np.arange(0, 41, 8))
    np.testing.assert_array_equal(arrays["train/all__puzzle_indices.npy"], np.arange(41))
    assert arrays["test/all__inputs.npy"].shape == (3, n * n)  # test is not augmented
    assert valid_optimal_paths(inputs, labels).all()
    with open(tmp_path / "ds" / "generated" / "train.csv", newline="") as f:
        originals = [row[1] for row in list(csv.reader(f))[1:]]
    for g in range(5):
        group = inputs[8 * g : 8 * g + 8]
        assert len({row.tobytes() for row in group}) == 8
        assert decode_maze(group[0]) == originals[g]
        base = group[0].reshape(n, n)
        # Every version is a rotation/reflection of the original (compare as sets of all 8 symmetries).
        turns = [np.rot90(base, k) for k in range(4)]
        symmetries = {np.ascontiguousarray(s).tobytes() for t in turns for s in (t, t.T)}
        assert {row.tobytes() for row in group} == symmetries
    meta = load_metadata(tmp_path / "ds", "train")
    assert (meta.total_groups, meta.total_puzzles) == (5, 40)


@pytest.mark.parametrize("case", sorted(CSV_CASES))
def test_malformed_csv_names_file_and_line_and_leaves_no_output(tmp_path: Path, case: str) -> None:
    rows = maze_rows()
    write_csv(tmp_path / "src" / "train.csv", corrupt(rows, case))
    write_csv(tmp_path / "src" / "test.csv", rows)
    with pytest.raises(DataError) as err:
        build_maze_dataset(tmp_path / "out", f"csv:{tmp_path / 'src'}", size=6)
    message = str(err.value)
    assert f"{tmp_path / 'src' / 'train.csv'}, line 4" in message, message
    assert CSV_CASES[case] in message, message
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name not in ("src",)]  # no temporary leftovers


def test_csv_size_hint_single_file_split_and_filters(tmp_path: Path) -> None:
    rows = maze_rows(n=6, count=10, seed=1)
    single = write_csv(tmp_path / "all.csv", rows)
    with pytest.raises(DataError, match="pass --size 6"):
        build_maze_dataset(tmp_path / "out", f"csv:{single}")
    info = build_maze_dataset(tmp_path / "out", f"csv:{single}", size=6, num_test=3, seed=0)
    assert info["counts"] == {"train_mazes": 7, "train_rows": 7, "test_mazes": 3}
    record = json.loads((tmp_path / "out" / "subsample_indices.json").read_text())
    assert sorted(record["train"]["rows"] + record["test"]["rows"]) == list(range(10))
    write_csv(tmp_path / "dir" / "train.csv", rows)
    write_csv(tmp_path / "dir" / "test.csv", rows[:5])
    cut = sorted(int(r[3]) for r in rows[:5])[2]
    info = build_maze_dataset(tmp_path / "out2", f"csv:{tmp_path / 'dir'}", size=6, min_path_length=cut)
    assert info["counts"]["train_mazes"] == sum(int(r[3]) >= cut for r in rows)
    assert info["counts"]["test_mazes"] == sum(int(r[3]) >= cut for r in rows[:5])
    assert info["path_length"]["train"]["min"] >= cut and info["path_length"]["test"]["min"] >= cut
    with pytest.raises(DataError, match="unknown maze source"):
        build_maze_dataset(tmp_path / "out3", "kaggle")
    with pytest.raises(DataError, match="no CSV file or directory"):
        build_maze_dataset(tmp_path / "out3", f"csv:{tmp_path / 'missing.csv'}")


def test_hf_source_downloads_with_reference_arguments(tmp_path: Path, monkeypatch) -> None:
    q, a, lengths = generate_mazes(6, 30, seed=7, workers=1)
    files = {}
    for name, index in (("train.csv", slice(0, 4)), ("test.csv", slice(4, 6))):
        split = MazeSplit(q[index], a[index], lengths[index], np.arange(q[index].shape[0]))
        write_maze_csv(tmp_path / "hf" / name, split, "hf")
        files[name] = tmp_path / "hf" / name
    calls = []

    def fake_download(repo_id: str, filename: str, repo_type: str | None = None) -> str:
        calls.append((repo_id, filename, repo_type))
        return str(files[filename])

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(hf_hub_download=fake_download))
    info = build_maze_dataset(tmp_path / "out", "hf", subsample_size=3, aug=True, seed=2)
    assert calls == [
        ("sapientinc/maze-30x30-hard-1k", "train.csv", "dataset"),
        ("sapientinc/maze-30x30-hard-1k", "test.csv", "dataset"),
    ]
    assert info["counts"] == {"train_mazes": 3, "train_rows": 24, "test_mazes": 2}
    with pytest.raises(DataError, match="30x30"):
        build_maze_dataset(tmp_path / "out1", "hf", size=10)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed
    with pytest.raises(DataError, match="pip install huggingface_hub"):
        build_maze_dataset(tmp_path / "out2", "hf")
    assert not (tmp_path / "out2").exists()


def test_charset_and_encoding_match_the_reference() -> None:
    assert CHARSET == "# SGo"
    np.testing.assert_array_equal(encode_maze("# SGo"), [1, 2, 3, 4, 5])
    assert decode_maze(np.array([1, 2, 3, 4, 5])) == "# SGo"
    with pytest.raises(ValueError):
        encode_maze("#x")
