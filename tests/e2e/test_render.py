"""Puzzle pictures: grids of each kind read back pixel by pixel, ACT traces, the stepping page, and
`smoltrain solve` / `smoltrain eval --render` on tiny Maze and ARC runs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smoltrain.apps.render import (
    draw_trace,
    write_html,
)
from smoltrain.apps.solve import solve_puzzle
from smoltrain.cli import main
from smoltrain.data.arc import crop_grid
from smoltrain.data.puzzles import PuzzleDatasetMetadata, write_identifiers, write_split
from smoltrain.families import load_config
from smoltrain.train.trainer import Trainer
from tests.helpers import run_python
from tests.unit.test_render import MAZE_N, arc_canvas  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")


def write_maze_dataset(root: Path, n_train: int = 8, n_test: int = 5) -> Path:
    """7x7 mazes with a wall row under a free row r: S and G at the ends of row r, the path along it."""
    for split, count in (("train", n_train), ("test", n_test)):
        inputs, labels = [], []
        for i in range(count):
            grid = np.full((MAZE_N, MAZE_N), 2)
            r = i % (MAZE_N - 1)
            grid[r + 1, :] = 1  # walls below the row: the straight line is the only shortest path
            grid[r, 0], grid[r, -1] = 3, 4
            label = grid.copy()
            label[r, 1:-1] = 5
            inputs.append(grid.reshape(-1))
            labels.append(label.reshape(-1))
        meta = PuzzleDatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=6,
                                     seq_len=MAZE_N ** 2, num_puzzle_identifiers=1, total_groups=count,
                                     mean_puzzle_examples=1.0, total_puzzles=count, sets=["all"])
        write_split(root, split, np.array(inputs), np.array(labels), np.zeros(count, dtype=np.int32),
                    np.arange(count + 1), np.arange(count + 1), meta)
    write_identifiers(root, ["<blank>"])
    (root / "build_info.json").write_text(json.dumps({"builder": "maze"}))
    return root


def write_arc_dataset(root: Path) -> Path:
    """Two ARC "tasks": fill a grid with colour 3 (task-a) or turn it upside down (task-b)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("test", 3)):
        inputs, labels, ids = [], [], []
        for i in range(count):
            grid = rng.integers(0, 10, size=(2 + i % 3, 3 + i % 2))
            answer = np.full_like(grid, 3) if i % 2 == 0 else grid[::-1]
            inputs.append(arc_canvas(grid))
            labels.append(arc_canvas(answer))
            ids.append(1 + i % 2)
        meta = PuzzleDatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=12, seq_len=900,
                                     num_puzzle_identifiers=3, total_groups=count, mean_puzzle_examples=1.0,
                                     total_puzzles=count, sets=["all"])
        write_split(root, split, np.array(inputs), np.array(labels), np.array(ids, dtype=np.int32),
                    np.arange(count + 1), np.arange(count + 1), meta)
    write_identifiers(root, ["<blank>", "task-a", "task-b"])
    (root / "build_info.json").write_text(json.dumps({"builder": "arc"}))
    return root


TINY = ["arch=trm", "arch.hidden_size=16", "arch.num_heads=2", "arch.L_layers=1", "arch.H_cycles=1",
        "arch.L_cycles=1", "arch.halt_max_steps=3", "arch.puzzle_emb_ndim=16", "global_batch_size=4", "max_steps=1",
        "eval_max_examples=4", "log_every=1", "device=cpu", "lr_warmup_steps=1"]


def tiny_run(data: Path, run_dir: Path) -> Path:
    Trainer(load_config(None, [*TINY, f"data_paths=[{data}]", f"run_dir={run_dir}"])).fit()
    return run_dir


@pytest.fixture(scope="module")
def maze_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("maze")
    return tiny_run(write_maze_dataset(root / "data"), root / "run")


@pytest.fixture(scope="module")
def arc_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("arc")
    return tiny_run(write_arc_dataset(root / "data"), root / "run")


def test_solve_maze_from_text_and_example(maze_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    maze = "\n".join(["S     G", *["#######"], *(["       "] * 5)])
    solution = solve_puzzle(maze_run, puzzle_text=maze, device="cpu")
    assert solution.kind.name == "maze" and len(solution.trace.steps) == 3 and solution.trace.target is None
    assert solution.correct in (True, False)
    report = solution.report().splitlines()
    assert report[0] == "puzzle:" and report[1] == "S     G" and report[2] == "#######"

    puzzle_file = tmp_path / "maze.txt"
    puzzle_file.write_text(maze + "\n")
    assert main(["solve", str(maze_run), "--puzzle-file", str(puzzle_file), "--device", "cpu",
                 "--render", str(tmp_path / "typed")]) == 0
    out = capsys.readouterr().out
    assert "answer after 3 ACT steps (o = path):" in out and "shortest path" in out
    assert (tmp_path / "typed" / "puzzle.png").is_file() and (tmp_path / "typed" / "index.html").is_file()
    assert len(list((tmp_path / "typed" / "frames").glob("*.png"))) == 3
    assert Image.open(tmp_path / "typed" / "puzzle.png").size == draw_trace(solution.trace).image.size

    assert main(["solve", str(maze_run), "--example", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("test example 2:\n") and "dataset's path" in out

    for bad in (["--example", "5"], ["--puzzle", "S#G"], ["--puzzle", "S  \n # \n  G"]):
        assert main(["solve", str(maze_run), *bad, "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
    with pytest.raises(SystemExit) as exit_info:  # refused by the parser, before the run is loaded
        main(["solve", str(maze_run), "--example", "-1"])
    assert exit_info.value.code == 2 and "--example: must be >= 0, got -1" in capsys.readouterr().err
    assert main(["solve", str(maze_run), "--example", "100000"]) == 2
    assert "--example 100000 is out of range: the test split of" in capsys.readouterr().err


def test_solve_arc_example(arc_run: Path, capsys: pytest.CaptureFixture) -> None:
    solution = solve_puzzle(arc_run, example=1, device="cpu")
    assert solution.kind.name == "arc" and solution.trace.title == "test example 1 (task-b)"
    target = crop_grid(solution.trace.target)
    assert target.shape == (3, 4)
    answer = crop_grid(solution.trace.steps[-1])
    assert solution.correct == np.array_equal(answer, target)
    assert main(["solve", str(arc_run), "--example", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "target (3x4):\n" + "\n".join("".join(map(str, row)) for row in target) in out
    assert ("equals the target" in out) == solution.correct
    assert main(["solve", str(arc_run), "--puzzle", "123"]) == 2
    assert "typed ARC puzzles are not supported" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["maze", "arc"])
def test_eval_render_through_the_cli(kind: str, maze_run: Path, arc_run: Path, tmp_path: Path) -> None:
    run = maze_run if kind == "maze" else arc_run
    out = tmp_path / "pictures"
    proc = run_python(["-m", "smoltrain", "eval", str(run), "--device", "cpu", "--render", str(out),
                       "--render-count", "4"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '"exact_accuracy"' in proc.stdout and "index.html" in proc.stdout
    available = 5 if kind == "maze" else 3  # fewer test examples than asked for: all of them
    traces = sorted(p.name for p in out.glob("*.png"))
    assert traces == [f"example-{i:04d}.png" for i in range(min(4, available))]
    page = (out / "index.html").read_text()
    for png in [*traces, *(p.relative_to(out).as_posix() for p in (out / "frames").glob("*.png"))]:
        assert f'"{png}"' in page
    assert len(list((out / "frames").glob("*.png"))) == 3 * len(traces)  # halt_max_steps frames each


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's script")
def test_page_steps_through_puzzles_and_steps(tmp_path: Path) -> None:
    """The page's own script, run in node with a stand-in document: buttons and arrow keys move the frame."""
    from smoltrain.apps.render import RenderedPuzzle

    items = [RenderedPuzzle("one", "ok", "a.png", ["a1.png", "a2.png", "a3.png"]),
             RenderedPuzzle("two", "bad", "b.png", ["b1.png", "b2.png"])]
    script = re.search(r"<script>(.*)</script>", write_html(tmp_path, items).read_text(), re.S).group(1)
    driver = """
const els = {};
const document = {getElementById: (id) => (els[id] = els[id] || {}), addEventListener: (e, f) => { els.key = f; }};
""" + script + """
const seen = () => els.frame.src + " " + els.trace.src + " " + els.summary.textContent;
const key = (k) => els.key({key: k, preventDefault() {}});
const out = [seen()];
els.nextStep.onclick(); out.push(seen());
els.nextStep.onclick(); els.nextStep.onclick(); out.push(seen());  // stops at the last step
key("ArrowDown"); out.push(seen());  // next puzzle starts at its first step
key("ArrowRight"); out.push(seen());
els.nextPuzzle.onclick(); out.push(seen());  // wraps around
els.prevStep.onclick(); out.push(seen());  // stops at the first step
console.log(JSON.stringify(out));
"""
    (tmp_path / "driver.js").write_text(driver)
    proc = subprocess.run(["node", str(tmp_path / "driver.js")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == ["a1.png a.png ok", "a2.png a.png ok", "a3.png a.png ok", "b1.png b.png bad",
                                       "b2.png b.png bad", "a1.png a.png ok", "a1.png a.png ok"]
