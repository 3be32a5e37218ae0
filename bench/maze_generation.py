"""Maze generation rate: Maze-Hard-like 30x30 mazes (shortest path > 110 moves) and small CPU sizes.

    python bench/maze_generation.py                       # 1000 x 30x30 (>= 111 cells), 10000 x 15x15 and 10x10
    python bench/maze_generation.py --sizes 30 --counts 100 --workers 1

Times `smoltrain.data.maze.generate_mazes` (what `smoltrain data maze --source generate` runs) after a
warm-up that compiles (or loads from numba's cache) the kernels, and the valid-optimal-path check on
the generated batch. Prints the command, the machine and a Markdown table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time

import numpy as np

from smoltrain.data.maze import WALL, default_min_path_length, generate_mazes
from smoltrain.eval.maze import valid_optimal_paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[30, 15, 10])
    parser.add_argument("--counts", type=int, nargs="+", default=None,
                        help="mazes per size (default 1000 for 30x30 and larger, 10000 below)")
    parser.add_argument("--min-path-length", type=int, default=None,
                        help="cells incl. S and G (default per size: 111 for 30x30, else ~12%% of n*n)")
    parser.add_argument("--workers", type=int, default=None, help="threads (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    counts = args.counts or [1000 if n >= 30 else 10000 for n in args.sizes]
    if len(counts) != len(args.sizes):
        parser.error("give one --counts entry per --sizes entry")

    workers = args.workers or len(os.sched_getaffinity(0))
    print("command: python " + " ".join(shlex.quote(a) for a in sys.argv))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f} at start, workers {workers}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    started = time.perf_counter()
    generate_mazes(2, 6, seed=0, workers=1)  # compile or load the kernels
    valid_optimal_paths(np.zeros((1, 36), np.uint8), np.zeros((1, 36), np.uint8))
    print(f"warm-up (numba compile or cache load): {time.perf_counter() - started:.1f} s")
    print()
    print("| size | min path (cells) | mazes | seconds | mazes/s | wall maps/maze | path cells min/median/max "
          "| walls | check 1000 rows |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|")
    for n, count in zip(args.sizes, counts, strict=True):
        min_len = args.min_path_length or default_min_path_length(n)
        stats: dict[str, int] = {}
        started = time.perf_counter()
        questions, answers, lengths = generate_mazes(
            count, n, seed=args.seed, min_path_length=min_len, workers=workers, stats=stats
        )
        seconds = time.perf_counter() - started
        rows = np.resize(np.arange(count), 1000)  # the check timed on 1000 rows (repeating if fewer)
        started = time.perf_counter()
        valid = valid_optimal_paths(questions[rows], answers[rows])
        check_ms = 1000 * (time.perf_counter() - started)
        assert valid.all(), "a generated label failed the path check"
        print(f"| {n}x{n} | >= {min_len} | {count:,} | {seconds:.2f} | {count / seconds:,.1f} | "
              f"{stats['wall_maps'] / stats['candidates']:.1f} | {lengths.min()}/{int(np.median(lengths))}/"
              f"{lengths.max()} | {(questions == WALL).mean():.1%} | {check_ms:.0f} ms |")
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
