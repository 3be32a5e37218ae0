"""`smoltrain demo`: a TRM learns 6x6 Sudoku on a laptop CPU in about five minutes.

1. builds 5,000 training puzzles (x8 augmentations) and 500 held-out ones offline, in seconds;
2. trains the `trm-sudoku-cpu` recipe for `minutes` of training time, with a live progress bar;
3. evaluates on the held-out puzzles (never seen in training) and prints the exact accuracy;
4. shows one held-out puzzle and the model's answer after each ACT step, cells that changed marked.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from smoltrain.config import load_config
from smoltrain.data.puzzles import PuzzleDataset
from smoltrain.data.sudoku import build_sudoku_dataset
from smoltrain.solve import format_grid, is_valid_solution, solve_with_run
from smoltrain.train.trainer import Trainer

SIZE = 6


def run_demo(run_dir: str = "runs/demo", minutes: float | None = None) -> int:
    minutes = minutes or 5.0
    path = Path(run_dir)
    if path.exists():
        shutil.rmtree(path)
    data_dir = path / "data"

    print(f"1/3 Building {SIZE}x{SIZE} Sudoku puzzles offline (5,000 train x 8 augmentations, 500 held out) ...")
    started = time.perf_counter()
    info = build_sudoku_dataset(data_dir, "generate", size=SIZE, num_train=5000, num_test=500, num_aug=8, seed=0)
    print(f"    done in {time.perf_counter() - started:.1f} s; {info['counts']['train_rows']:,} training rows, "
          f"{info['mean_clues']['test']:.1f} givens per held-out puzzle on average")

    print(f"2/3 Training the trm-sudoku-cpu recipe for {minutes:g} minutes on the CPU ...")
    cfg = load_config("trm-sudoku-cpu", [f"data_paths=[{data_dir}]", f"run_dir={path}", "resume=none",
                                         f"max_minutes={minutes}", "epochs=100000", "eval_interval=100000"])
    summary = Trainer(cfg).fit()

    result = summary["eval"]
    print(f"3/3 Held-out exact accuracy: {100 * result['exact_accuracy']:.1f}% of {int(result['count'])} puzzles "
          f"(every cell right) after {summary['step']:,} steps; cell accuracy {100 * result['accuracy']:.1f}%")
    show_one_puzzle(path, data_dir)
    print(f"\nRun directory: {path}  (try `smoltrain solve {path} --puzzle ...` or `smoltrain eval {path}`)")
    return 0


def show_one_puzzle(run_dir: Path, data_dir: Path) -> None:
    """Print the first held-out puzzle and the model's answer after every ACT step."""
    test = PuzzleDataset(data_dir, "test", global_batch_size=1, test_mode=True)
    tokens = next(test.iter_test()).batch["inputs"][0].numpy()
    puzzle = "".join(str(max(int(t) - 1, 0)) for t in tokens)  # tokens: 1 blank, 2.. digits 1..
    result = solve_with_run(run_dir, puzzle, device="cpu")
    print(f"\nA held-out puzzle:\n{format_grid(result.givens, result.n)}")
    previous = result.givens
    for k, grid in enumerate(result.steps, start=1):
        changed = grid != previous
        verdict = "a valid solution" if is_valid_solution(result.givens, grid, result.n) else "not valid yet"
        print(f"\nAfter ACT step {k}: {verdict}; {int(changed.sum())} cells changed [marked]")
        print(format_grid(grid, result.n, changed_mask=changed))
        previous = grid
