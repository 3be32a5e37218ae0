"""Sudoku generator rate at Sudoku-Extreme-like difficulty (9x9, rated by our solver's guesses).

    python bench/sudoku_generation.py                                  # 1000 puzzles at --min-difficulty 60 and 80
    python bench/sudoku_generation.py --min-difficulty 60 --per-climb 1 8 16 --count 300

Times `smoltrain.data.sudoku.generate_sudoku_puzzles` (what `smoltrain data sudoku --source generate
--min-difficulty D --per-climb K` runs for one split) after a warm-up that compiles (or loads from
numba's cache) the kernels. Every puzzle is re-solved afterwards: unique solution equal to the
answer, rating equal to a fresh rating. Prints the command, the machine, the rating of two famous
puzzles whose tdoku ratings are known (to translate our scale) and a Markdown table for RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time

import numpy as np

from smoltrain.data.sudoku import generate_sudoku_puzzles, rate_sudoku, solve_sudoku

# Public puzzles with tdoku guess counts (limit 2) from ../shared/reference/data.md section 2.2.
CALIBRATION = {
    "AI Escargot (tdoku 19)": "1....7.9..3..2...8..96..5....53..9...1..8...26....4...3......1..4......7..7...3..",
    "Easter Monster (tdoku 77)": "1.......2.9.4...5...6...7...5.9.3.......7.......85..4.7.....6...3...9.8...2.....1",
}


def board(text: str) -> np.ndarray:
    return np.array([0 if ch == "." else int(ch) for ch in text], dtype=np.int8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--min-difficulty", type=int, nargs="+", default=[60, 80])
    parser.add_argument("--per-climb", type=int, nargs="+", default=[8], help="puzzles per successful climb")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=None, help="threads (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    workers = args.workers or len(os.sched_getaffinity(0))
    print("command: python " + " ".join(shlex.quote(a) for a in sys.argv))
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f} at start, workers {workers}"
    )
    started = time.perf_counter()
    generate_sudoku_puzzles(2, 9, seed=0, min_difficulty=2, harden_steps=20, per_climb=2, workers=1)
    print(f"warm-up (numba compile or cache load): {time.perf_counter() - started:.1f} s")
    for name, text in CALIBRATION.items():
        print(f"our rating of {name}: {rate_sudoku(board(text))}")
    print()
    print(
        "| --min-difficulty | --per-climb | puzzles | seconds | ms/puzzle | rating mean / median / p10 / max "
        "| clues mean | solution grids |"
    )
    print("|---:|---:|---:|---:|---:|---|---:|---:|")
    for min_difficulty in args.min_difficulty:
        for per_climb in args.per_climb:
            started = time.perf_counter()
            questions, answers, ratings = generate_sudoku_puzzles(
                args.count, 9, seed=args.seed, min_difficulty=min_difficulty, per_climb=per_climb, workers=workers
            )
            seconds = time.perf_counter() - started
            for question, answer, rating in zip(questions, answers, ratings, strict=True):
                count, guesses, solution = solve_sudoku(question.astype(np.int8))
                assert count == 1 and (solution == answer).all() and guesses == rating, "a generated puzzle failed"
            grids = len({answer.tobytes() for answer in answers})
            print(
                f"| {min_difficulty} | {per_climb} | {args.count:,} | {seconds:.1f} "
                f"| {1000 * seconds / args.count:.0f} "
                f"| {ratings.mean():.1f} / {np.median(ratings):.0f} / {np.percentile(ratings, 10):.0f} / "
                f"{ratings.max()} | {(questions > 0).sum(1).mean():.1f} | {grids:,} |",
                flush=True,
            )
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
