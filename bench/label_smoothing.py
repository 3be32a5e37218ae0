"""Label smoothing on TRM Sudoku: the same recipe and steps with ``label_smoothing`` 0 and another value, paired.

The sic recipe trains TRM with ``label_smoothing=0.2``; this measures whether it helps smoltrain's
``trm-sudoku-cpu`` on 6x6 Sudoku before anyone recommends it. Each seed trains both settings for the same fixed
number of optimizer steps (a fixed step count, not a time budget: the answer then does not depend on how loaded a
shared machine is), in alternating order, and each run is evaluated on the same held-out puzzles every
``--eval-every`` steps. The report gives the exact accuracy against steps per run, the per-seed difference at the
end, and the load average before and after each run.

Usage::

    python bench/label_smoothing.py --steps 900 --seeds 0 1 --json /tmp/ls.json --markdown /tmp/ls.md
    python bench/label_smoothing.py --smoke          # seconds: tiny data and steps, checks the script works
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from smoltrain.data.sudoku import build_sudoku_dataset
from smoltrain.families import load_config
from smoltrain.fileio import atomic_write_text
from smoltrain.train.logging import read_metrics
from smoltrain.train.trainer import Trainer


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def train_once(data: Path, run_dir: Path, smoothing: float, seed: int, steps: int, eval_every: int,
               eval_examples: int, threads: int) -> dict[str, Any]:
    cfg = load_config("trm-sudoku-cpu", [
        f"data_paths=[{data}]", f"run_dir={run_dir}", "resume=none", f"max_steps={steps}", f"eval_every={eval_every}",
        f"eval_max_examples={eval_examples}", f"seed={seed}", f"num_threads={threads}", f"label_smoothing={smoothing}",
        "log_every=1000000",
    ])
    before, started = load_average(), time.perf_counter()
    Trainer(cfg).fit()
    curve = [{"step": row["step"], "exact": row["exact_accuracy"], "loss": row.get("lm_loss")}
             for row in read_metrics(run_dir / "metrics.jsonl") if row.get("split") == "eval"]
    return {"smoothing": smoothing, "seed": seed, "curve": curve, "seconds": round(time.perf_counter() - started, 1),
            "load_before": before, "load_after": load_average()}


def markdown(result: dict[str, Any]) -> str:
    runs, values = result["runs"], result["values"]
    lines = [f"6x6 Sudoku (`trm-sudoku-cpu`), {result['steps']} steps per run, exact accuracy on "
             f"{result['eval_examples']} held-out puzzles every {result['eval_every']} steps, "
             f"{result['threads']} thread(s).", "",
             "| seed | label_smoothing | order | seconds | load before -> after |", "|---:|---:|---:|---:|---|"]
    lines += [f"| {r['seed']} | {r['smoothing']:g} | {r['order']} | {r['seconds']:.0f} | {r['load_before']} -> "
              f"{r['load_after']} |" for r in runs]
    steps = [point["step"] for point in runs[0]["curve"]]
    header = " | ".join(f"ls={r['smoothing']:g} s{r['seed']}" for r in runs)
    lines += ["", f"| step | {header} |", "|---:|" + "---:|" * len(runs)]
    for i, step in enumerate(steps):
        lines.append(f"| {step} | " + " | ".join(f"{100 * r['curve'][i]['exact']:.1f}%" for r in runs) + " |")
    finals = {v: [r["curve"][-1]["exact"] for r in runs if r["smoothing"] == v] for v in values}
    diffs = [b - a for a, b in zip(finals[values[0]], finals[values[1]], strict=True)]
    lines += ["", f"Final exact accuracy, mean over seeds: label_smoothing={values[0]:g}: "
              f"{100 * statistics.mean(finals[values[0]]):.1f}%, label_smoothing={values[1]:g}: "
              f"{100 * statistics.mean(finals[values[1]]):.1f}%; per-seed difference "
              + ", ".join(f"{100 * d:+.1f} points" for d in diffs) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--eval-every", type=int, default=300)
    parser.add_argument("--eval-examples", type=int, default=500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--smoothing", type=float, default=0.2, help="the value compared with 0")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", default=None, help="a 6x6 Sudoku dataset to reuse (default: build one)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--markdown", default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny data and steps: checks the script")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.eval_every, args.eval_examples, args.seeds = 4, 2, 16, [0]
    torch.set_num_threads(args.threads)
    values = [0.0, args.smoothing]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else Path(tmp) / "sudoku6"
        if not args.data:
            build_sudoku_dataset(data, "generate", size=6, num_train=100 if args.smoke else 5000,
                                 num_test=32 if args.smoke else 500, num_aug=0 if args.smoke else 8, seed=0)
        runs = []
        for i, seed in enumerate(args.seeds):
            order = values if i % 2 == 0 else values[::-1]  # alternate, so a drifting load hurts both alike
            for position, smoothing in enumerate(order, start=1):
                print(f"seed {seed}, label_smoothing={smoothing:g} (load {load_average()})", flush=True)
                run = train_once(data, Path(tmp) / f"run-{seed}-{smoothing:g}", smoothing, seed, args.steps,
                                 args.eval_every, args.eval_examples, args.threads)
                runs.append({**run, "order": position})
                print(f"  exact by step: {[(p['step'], round(p['exact'], 3)) for p in run['curve']]}", flush=True)
    result = {"steps": args.steps, "eval_every": args.eval_every, "eval_examples": args.eval_examples,
              "threads": args.threads, "values": values, "runs": runs}
    table = markdown(result)
    print(table)
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(result, indent=2) + "\n")
    if args.markdown:
        atomic_write_text(Path(args.markdown), table)


if __name__ == "__main__":
    main()
