"""ARC evaluator: crop, de-augmentation, voting with known winners, submission, pooling, distributed gather."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from smoltrain.data.augment import (
    apply_colour_permutation,
    arc_augmented_name,
    dihedral_transform,
    inverse_colour_permutation,
    inverse_dihedral_transform,
)
from smoltrain.data.puzzles import PuzzleDatasetMetadata, write_identifiers, write_split
from smoltrain.errors import DataError
from smoltrain.eval.arc import ARCEvaluator, crop_grid, crop_sizes, deaugment_grid, grid_key

PASS_KS = (1, 2, 5, 10, 100, 1000)


def encode(grid: np.ndarray, n: int = 30) -> np.ndarray:
    """`grid` on an n x n canvas (30x30: the reference; smaller: `smoltrain data arc --canvas-size n`)."""
    grid = np.asarray(grid)
    h, w = grid.shape
    canvas = np.zeros((n, n), dtype=np.uint8)
    canvas[:h, :w] = grid + 2
    if h < n:
        canvas[h, :w] = 1
    if w < n:
        canvas[:h, w] = 1
    return canvas.reshape(-1)


def augment(grid: np.ndarray, dihedral: int, mapping: np.ndarray) -> np.ndarray:
    return apply_colour_permutation(dihedral_transform(np.asarray(grid, dtype=np.uint8), dihedral), mapping)


def random_mapping(rng: np.random.Generator) -> np.ndarray:
    mapping = np.arange(10)
    mapping[1:] = rng.permutation(np.arange(1, 10))
    return mapping


def brute_force_crop(canvas: np.ndarray) -> tuple[int, int]:
    """Largest-area top-left rectangle of colour tokens, shortest one on ties: the obvious O(n^4) search."""
    n = int(round(np.sqrt(np.asarray(canvas).size)))
    board = np.asarray(canvas).reshape(n, n)
    best_area, best = 0, (0, 0)
    for h in range(1, n + 1):
        for w in range(1, n + 1):
            block = board[:h, :w]
            if ((block >= 2) & (block <= 11)).all() and h * w > best_area:
                best_area, best = h * w, (h, w)
    return best


def g(rows: list[list[int]]) -> np.ndarray:
    return np.array(rows, dtype=np.uint8)


# Task -> list of (test input, label). Non-square, asymmetric grids so every dihedral id is visible.
TASKS = {
    "count": [(g([[1, 2, 0], [0, 3, 0]]), g([[4, 4], [5, 0], [0, 6]]))],
    "tie": [(g([[2, 0], [7, 1], [0, 0]]), g([[8, 1, 2]]))],
    "second": [(g([[3]]), g([[1, 0], [0, 2]]))],
    "two": [(g([[1, 1, 2]]), g([[9, 8], [7, 6]])), (g([[5], [6]]), g([[2, 3, 3]]))],
    "silent": [(g([[4, 0, 4, 0], [0, 4, 0, 0]]), g([[1]]))],
}


WRONG = {  # a wrong answer per task, different from the label
    "count": g([[4, 4], [5, 0], [0, 7]]),
    "tie": g([[8, 2, 1]]),
    "second": g([[1, 0, 0], [0, 2, 0]]),
    "two": g([[3, 3, 2]]),
}


def invalid(n: int = 30) -> np.ndarray:
    canvas = np.zeros(n * n, dtype=np.uint8)
    canvas[0] = 1  # EOS at the top-left: no valid crop
    return canvas


class Rows:
    """Builds evaluator rows on an n x n canvas: every row is its own augmentation (identifier) of a task."""

    def __init__(self, seed: int = 0, canvas: int = 30) -> None:
        self.canvas = canvas
        self.rng = np.random.default_rng(seed)
        self.names = ["<blank>"]
        self.inputs, self.ids, self.preds, self.q, self.labels = [], [], [], [], []

    def add(self, task: str, pair: int, answer: np.ndarray | None, q: float, test_input: np.ndarray | None = None):
        dihedral = int(self.rng.integers(8))
        mapping = random_mapping(self.rng) if self.rng.random() < 0.8 else np.arange(10)
        self.names.append(arc_augmented_name(task, dihedral, mapping))
        source, label = TASKS[task][pair]
        n = self.canvas
        self.inputs.append(encode(augment(source if test_input is None else test_input, dihedral, mapping), n))
        self.labels.append(encode(augment(label, dihedral, mapping), n))
        self.preds.append(invalid(n) if answer is None else encode(augment(answer, dihedral, mapping), n))
        self.ids.append(len(self.names) - 1)
        self.q.append(q)

    def arrays(self, order: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        order = np.arange(len(self.ids)) if order is None else order
        return (np.stack(self.inputs)[order], np.array(self.ids, dtype=np.int32)[order],
                np.stack(self.preds)[order], np.array(self.q, dtype=np.float32)[order])


def write_dataset(root: Path, rows: Rows, extra_names: int = 0) -> Path:
    """identifiers.json, test_puzzles.json and a matching test split (as the builder writes them)."""
    names = rows.names + [arc_augmented_name("count", 0, np.arange(10))] * extra_names
    write_identifiers(root, names)
    puzzles = {task: {"train": [], "test": [{"input": i.tolist(), "output": o.tolist()} for i, o in pairs]}
               for task, pairs in TASKS.items()}
    (root / "test_puzzles.json").write_text(json.dumps(puzzles))
    n = len(rows.ids)
    metadata = PuzzleDatasetMetadata(
        pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=12, seq_len=rows.canvas ** 2,
        num_puzzle_identifiers=len(names), total_groups=n, mean_puzzle_examples=1.0, total_puzzles=n, sets=["all"],
    )
    write_split(root, "test", np.stack(rows.inputs), np.stack(rows.labels), np.array(rows.ids, dtype=np.int32),
                np.arange(n + 1, dtype=np.int32), np.arange(n + 1, dtype=np.int32), metadata)
    return root


def known_winners_rows(canvas: int = 30) -> Rows:
    rows = Rows(canvas=canvas)
    label = {task: pairs[0][1] for task, pairs in TASKS.items()}
    # count: the label wins 3 votes to 2, although the wrong answer is more confident.
    for q in (-2.0, -1.0, -3.0):
        rows.add("count", 0, label["count"], q)
    for q in (4.0, 5.0):
        rows.add("count", 0, WRONG["count"], q)
    # tie: 2 votes each; the label's mean sigmoid(q) is higher (0.5 vs ~0.27).
    for q in (0.5, -0.5):
        rows.add("tie", 0, label["tie"], q)
    for q in (-1.0, -1.0):
        rows.add("tie", 0, WRONG["tie"], q)
    # second: the label has 2 votes, a wrong answer 3 -> only second.
    for q in (3.0, 3.0):
        rows.add("second", 0, label["second"], q)
    for q in (-3.0, -3.0, -3.0):
        rows.add("second", 0, WRONG["second"], q)
    # two: test input 0 solved (label only); test input 1: 3 invalid predictions outvote a wrong answer.
    rows.add("two", 0, label["two"], 0.0)
    rows.add("two", 1, WRONG["two"], 0.0)
    for _ in range(3):
        rows.add("two", 1, None, 1.0)
    # silent: no predictions at all. One row of "count" whose input is not a test input: unmatched.
    rows.add("count", 0, label["count"], 9.0, test_input=g([[6, 6], [6, 6]]))
    return rows


# Hand-computed: task scores (count, tie, second, two, silent) at k=1: 1, 1, 0, .5, 0; at k>=2: 1, 1, 1, .5, 0.
EXPECTED = {"ARC/pass@1": 2.5 / 5, **{f"ARC/pass@{k}": 3.5 / 5 for k in PASS_KS[1:]}}


def padded_batch(rows: Rows, pad: int = 3) -> tuple[np.ndarray, ...]:
    """The rows plus `pad` blank rows (identifier 0) holding a confident copy of a wrong answer."""
    inputs, ids, preds, q = rows.arrays()
    junk_input = np.repeat(inputs[:1], pad, axis=0)
    junk_pred = np.repeat(encode(augment(WRONG["second"], 0, np.arange(10)), rows.canvas)[None], pad, axis=0)
    return (np.concatenate([inputs, junk_input]), np.concatenate([ids, np.zeros(pad, dtype=np.int32)]),
            np.concatenate([preds, junk_pred]), np.concatenate([q, np.full(pad, 10.0, dtype=np.float32)]))


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, Rows]:
    rows = known_winners_rows()
    return write_dataset(tmp_path / "arc", rows), rows


def test_crop_hand_made_canvases():
    full = np.full((30, 30), 7, dtype=np.uint8)  # 30x30 grid: no room for an EOS anywhere
    one = encode(np.array([[5]]))
    rect = encode(np.arange(12).reshape(3, 4) % 10)
    eos_first = np.zeros(900, dtype=np.uint8)
    eos_first[0] = 1
    eos_first[1:5] = 3  # colours after a leading EOS do not count
    wide = np.zeros((30, 30), dtype=np.uint8)
    wide[0, :] = 4  # one full row, then EOS below
    wide[1, :] = 1
    # A ragged prediction, EOS missing in some rows: row runs 5, 5, 2, 2, 2, 2 then an EOS row.
    ragged = np.zeros((30, 30), dtype=np.uint8)
    ragged[:2, :7] = 3  # rows 0-1: five colours then ... (set below)
    ragged[:2, 5] = 1
    ragged[2:6, :2] = 9
    ragged[6, :] = 1
    # areas by height: 5, 10, 6, 8, 10, 12 -> height 6, width 2
    tie = np.zeros((30, 30), dtype=np.uint8)
    tie[:2, :4] = 2
    tie[2:4, :2] = 2  # areas 4, 8, 6, 8 -> the first maximum: height 2, width 4
    out_of_vocab = encode(np.ones((2, 2), dtype=np.uint8))
    out_of_vocab[1] = 12  # token 12 is no colour
    cases = [(full, (30, 30)), (one, (1, 1)), (rect, (3, 4)), (eos_first, (0, 0)), (wide, (1, 30)),
             (ragged, (6, 2)), (tie, (2, 4)), (out_of_vocab, (2, 1)), (np.zeros(900, dtype=np.uint8), (0, 0))]
    heights, widths = crop_sizes(np.stack([np.asarray(c).reshape(-1) for c, _ in cases]))
    assert list(zip(heights.tolist(), widths.tolist(), strict=True)) == [size for _, size in cases]
    assert crop_grid(one).tolist() == [[5]]
    assert (crop_grid(rect) == np.arange(12).reshape(3, 4) % 10).all()
    assert crop_grid(full).shape == (30, 30) and (crop_grid(full) == 5).all()
    assert crop_grid(eos_first).shape == (0, 0)


@pytest.mark.parametrize("n", [30, 10, 1])  # the side comes from the rows' length
def test_crop_matches_brute_force_on_random_canvases(n):
    rng = np.random.default_rng(0)
    canvases = []
    for _ in range(40):
        canvas = rng.integers(2, 12, size=(n, n))
        # Sprinkle non-colour tokens (PAD, EOS, out of vocabulary) with a density that makes ragged shapes.
        # (Denser on small canvases, so that they are ragged too; n = 1 gives both outcomes.)
        mask = rng.random((n, n)) < min(0.5, rng.choice([0.002, 0.02, 0.1]) * 30 / n)
        canvas[mask] = rng.choice([0, 1, 12], size=mask.sum())
        canvases.append(canvas.reshape(-1))
    heights, widths = crop_sizes(np.stack(canvases))
    assert list(zip(heights.tolist(), widths.tolist(), strict=True)) == [brute_force_crop(c) for c in canvases]


@pytest.mark.parametrize("dihedral", range(8))
def test_deaugment_undoes_every_dihedral_and_colour_map(dihedral):
    rng = np.random.default_rng(dihedral)
    for _ in range(5):
        grid = rng.integers(0, 10, size=(rng.integers(1, 8), rng.integers(1, 8))).astype(np.uint8)
        mapping = random_mapping(rng)
        canvas = encode(augment(grid, dihedral, mapping))
        inverse = np.empty(10, dtype=np.int64)
        inverse[mapping] = np.arange(10)
        restored = deaugment_grid(crop_grid(canvas), dihedral, inverse)
        assert restored.shape == grid.shape and (restored == grid).all()
        assert grid_key(restored) == grid_key(grid)


def test_deaugment_equals_the_augment_module_inverses():
    rng = np.random.default_rng(7)
    grid = rng.integers(0, 10, size=(3, 5)).astype(np.uint8)
    mapping = random_mapping(rng)
    inverse = inverse_colour_permutation(mapping)
    for dihedral in range(8):
        expected = apply_colour_permutation(inverse_dihedral_transform(grid, dihedral), inverse)
        assert (deaugment_grid(grid, dihedral, inverse) == expected).all()
        assert deaugment_grid(grid, dihedral, inverse).shape == expected.shape


def test_grid_key_distinguishes_shapes():
    cells = np.arange(6, dtype=np.uint8)
    assert grid_key(cells.reshape(2, 3)) != grid_key(cells.reshape(3, 2))
    assert grid_key(np.zeros((0, 0))) != grid_key(np.zeros((1, 1)))


@pytest.mark.parametrize("canvas", [30, 10, 3])  # the reference canvas and `data arc --canvas-size` ones
def test_voting_known_winners(canvas, tmp_path):
    rows = known_winners_rows(canvas)
    root = write_dataset(tmp_path / "arc", rows)
    assert np.stack(rows.inputs).shape[1] == canvas * canvas
    evaluator = ARCEvaluator(root)
    evaluator.begin()
    inputs, ids, preds, q = padded_batch(rows)
    # Two batches, rows shuffled: the result must not depend on the row order.
    order = np.random.default_rng(1).permutation(len(ids))
    half = len(order) // 2
    for part in (order[:half], order[half:]):
        evaluator.update(inputs[part], ids[part], preds[part], q[part])
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="1 rows have an input"):
        metrics = evaluator.result(out)
    assert metrics == pytest.approx(EXPECTED)
    assert list(metrics) == [f"ARC/pass@{k}" for k in PASS_KS]

    scores = json.loads((out / "arc_scores.json").read_text())
    assert scores["unmatched_rows"] == 1 and scores["unmatched_rows_by_task"] == {"count": 1}
    tasks = scores["tasks"]
    assert set(tasks) == set(TASKS)
    assert tasks["two"]["pass@1"] == 0.5 and tasks["second"]["pass@1"] == 0 and tasks["second"]["pass@2"] == 1
    assert tasks["silent"]["pass@1000"] == 0 and tasks["silent"]["test_pairs"][0]["votes_cast"] == 0
    count_top = tasks["count"]["test_pairs"][0]["top_candidates"]
    assert [(c["votes"], c["correct"]) for c in count_top] == [(3, True), (2, False)]
    tie_top = tasks["tie"]["test_pairs"][0]["top_candidates"]
    sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    assert tie_top[0]["mean_q_halt"] == pytest.approx((sigmoid(0.5) + sigmoid(-0.5)) / 2)
    assert tie_top[1]["mean_q_halt"] == pytest.approx(sigmoid(-1.0))
    invalid_top = tasks["two"]["test_pairs"][1]["top_candidates"]
    assert [(c["votes"], c["shape"]) for c in invalid_top] == [(3, [0, 0]), (1, [1, 3])]

    submission = json.loads((out / "submission.json").read_text())
    assert set(submission) == set(TASKS)
    label = {task: pairs[0][1].tolist() for task, pairs in TASKS.items()}
    assert submission["count"] == [{"attempt_1": label["count"], "attempt_2": WRONG["count"].tolist()}]
    assert submission["second"] == [{"attempt_1": WRONG["second"].tolist(), "attempt_2": label["second"]}]
    # two: input 0 has a single candidate (padded with it); input 1 skips the invalid (empty) winner.
    assert submission["two"] == [{"attempt_1": label["two"], "attempt_2": label["two"]},
                                 {"attempt_1": WRONG["two"].tolist(), "attempt_2": WRONG["two"].tolist()}]
    zeros = np.zeros_like(TASKS["silent"][0][0]).tolist()
    assert submission["silent"] == [{"attempt_1": zeros, "attempt_2": zeros}]


def test_tie_break_follows_q_halt(dataset):
    root, rows = dataset
    inputs, ids, preds, q = rows.arrays()
    tie_rows = np.array([n.startswith("tie|||") for n in rows.names[1:]])
    flipped = np.where(tie_rows, -q, q)  # now the wrong answer is the more confident one
    evaluator = ARCEvaluator(root, pass_ks=(1, 2))
    evaluator.update(inputs, ids, preds, flipped)
    with pytest.warns(UserWarning):
        assert evaluator.result() == pytest.approx({"ARC/pass@1": 1.5 / 5, "ARC/pass@2": 3.5 / 5})


def test_pool_evaluations(dataset):
    root, rows = dataset
    inputs, ids, preds, q = rows.arrays()
    names = rows.names
    # Round 1: only the wrong votes of "count" (2 of them); round 2: only one label vote of "count".
    wrong = np.array([n.startswith("count|||") for n in names[1:]]) & (q > 3) & (q < 6)
    right = np.flatnonzero(np.array([n.startswith("count|||") for n in names[1:]]) & (q < 0))[:1]
    for pool, expected_first in ((False, 1.0), (True, 0.0)):
        evaluator = ARCEvaluator(root, pass_ks=(1, 2), pool_evaluations=pool)
        evaluator.begin()
        evaluator.update(inputs[wrong], ids[wrong], preds[wrong], q[wrong])
        assert evaluator.result() == {"ARC/pass@1": 0.0, "ARC/pass@2": 0.0}
        evaluator.begin()
        evaluator.update(inputs[right], ids[right], preds[right], q[right])
        second = evaluator.result()
        # Alone, the label wins; pooled with round 1 it is second (1 vote vs 2).
        assert second == {"ARC/pass@1": expected_first / 5, "ARC/pass@2": 1 / 5}


def test_blank_rows_are_ignored(dataset):
    root, rows = dataset
    evaluator = ARCEvaluator(root, pass_ks=(1,))
    inputs, ids, preds, q = padded_batch(rows, pad=5)
    blank = ids == 0
    evaluator.update(inputs[blank], ids[blank], preds[blank], q[blank])
    assert evaluator.result() == {"ARC/pass@1": 0.0}
    assert evaluator._rows == 0


def test_missing_files_raise_data_error(tmp_path):
    with pytest.raises(DataError, match="is not an ARC dataset built by `smoltrain data arc`"):
        ARCEvaluator(tmp_path)
    (tmp_path / "test_puzzles.json").write_text(json.dumps({"t": {"test": [{"input": [[1]], "output": [[2]]}]}}))
    with pytest.raises(DataError, match="identifiers.json"):
        ARCEvaluator(tmp_path)
    write_identifiers(tmp_path, ["<blank>", "t"])
    evaluator = ARCEvaluator(tmp_path)
    with pytest.raises(DataError, match="puzzle identifier 5"):
        evaluator.update(np.zeros((1, 900)), np.array([5]), np.zeros((1, 900)), np.zeros(1))
    with pytest.raises(ValueError, match=r"expects \[B, n\*n\] inputs and preds"):
        evaluator.update(np.zeros((1, 99)), np.array([1]), np.zeros((1, 99)), np.zeros(1))  # not a square canvas
    with pytest.raises(ValueError, match=r"expects \[B, n\*n\] inputs and preds"):
        evaluator.update(np.zeros((1, 100)), np.array([1]), np.zeros((1, 900)), np.zeros(1))  # two canvases


@pytest.mark.parametrize("canvas", [30, 10])
def test_labels_as_predictions_score_full_marks(canvas, tmp_path):
    """Feeding the test split's labels back as predictions solves every task: the crop, the inverse
    augmentation (every dihedral and colour map the builder drew) and the submission work on any canvas."""
    from smoltrain.data.arc import build_arc_dataset
    from tests.unit.test_arc_data import SMALL_CANVAS_SKIPPED, small_canvas_tasks, write_kaggle

    tasks = small_canvas_tasks()
    prefix = write_kaggle(tmp_path / "src", tasks)
    root = tmp_path / "ds"
    build_arc_dataset(root, input_file_prefix=prefix, subsets=["training", "evaluation"], num_aug=12, seed=3,
                      canvas_size=canvas)
    test = {name: np.load(root / "test" / f"all__{name}.npy") for name in ("inputs", "labels", "puzzle_identifiers",
                                                                          "puzzle_indices")}
    assert test["inputs"].shape[1] == canvas * canvas
    ids = np.repeat(test["puzzle_identifiers"], np.diff(test["puzzle_indices"]))
    evaluator = ARCEvaluator(root)
    evaluator.begin()
    # Two batches, as the trainer feeds them.
    half = len(ids) // 2
    for part in (slice(0, half), slice(half, None)):
        evaluator.update(test["inputs"][part], ids[part], test["labels"][part], np.zeros(len(ids[part])))
    metrics = evaluator.result(tmp_path / "out")
    assert metrics == {f"ARC/pass@{k}": 1.0 for k in PASS_KS}
    assert evaluator.unmatched_rows == 0
    expected_tasks = {tid for tid in tasks["evaluation"] if canvas == 30 or tid not in SMALL_CANVAS_SKIPPED}
    submission = json.loads((tmp_path / "out" / "submission.json").read_text())
    assert set(submission) == expected_tasks
    for tid in expected_tasks:
        outputs = [pair["output"] for pair in tasks["evaluation"][tid]["test"]]
        assert [attempts["attempt_1"] for attempts in submission[tid]] == outputs
    scores = json.loads((tmp_path / "out" / "arc_scores.json").read_text())
    assert all(pair["label_rank"] == 1 for task in scores["tasks"].values() for pair in task["test_pairs"])


def test_test_pairs_without_outputs_are_not_scored(tmp_path):
    """A test pair without an output (built without solutions) gets attempts but no score: never a 0% (or any
    pass@k) measured against an answer nobody knows."""
    grid = g([[1, 2], [3, 4]])
    (tmp_path / "test_puzzles.json").write_text(json.dumps({"t": {"train": [], "test": [{"input": grid.tolist()}]}}))
    write_identifiers(tmp_path, ["<blank>", "t"])
    evaluator = ARCEvaluator(tmp_path, pass_ks=(1,))
    evaluator.update(encode(grid)[None], np.array([1]), encode(grid)[None], np.zeros(1))
    with pytest.warns(UserWarning, match="nothing to score"):
        assert evaluator.result(tmp_path / "out") == {"ARC/unscored_tasks": 1.0}
    submission = json.loads((tmp_path / "out" / "submission.json").read_text())
    assert submission == {"t": [{"attempt_1": grid.tolist(), "attempt_2": grid.tolist()}]}
    report = json.loads((tmp_path / "out" / "arc_scores.json").read_text())
    assert report["scored_tasks"] == 0 and report["unscored_tasks"] == ["t"]
    assert report["tasks"]["t"]["pass@1"] is None and report["tasks"]["t"]["scored"] is False


def test_pass_at_k_is_over_the_tasks_with_outputs(tmp_path):
    solved, unknown = g([[1, 2], [3, 4]]), g([[5]])
    (tmp_path / "test_puzzles.json").write_text(json.dumps({
        "s": {"train": [], "test": [{"input": solved.tolist(), "output": solved.tolist()}]},
        "u": {"train": [], "test": [{"input": unknown.tolist()}]},
    }))
    write_identifiers(tmp_path, ["<blank>", "s", "u"])
    evaluator = ARCEvaluator(tmp_path, pass_ks=(1,))
    inputs = np.stack([encode(solved), encode(unknown)])
    evaluator.update(inputs, np.array([1, 2]), inputs, np.zeros(2))  # the identity: right on "s"
    with pytest.warns(UserWarning, match="1 of 2 test tasks have no solutions"):
        assert evaluator.result() == {"ARC/pass@1": 1.0, "ARC/unscored_tasks": 1.0}  # 1 of 1 scored, not 1 of 2
