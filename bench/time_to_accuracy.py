"""Time to accuracy: the eager reference port against smoltrain's recipe, side by side on one machine.

Both sides train on the same dataset, one after the other (the order alternates from pair to pair, so a load
that drifts over the run hurts both alike), for the same training-time budget. Each side is evaluated on the
same held-out puzzles at fixed training-time checkpoints with its clock paused, so evaluations cost neither
side any training time. The report gives, per pair and as medians over the pairs, the training time each side
needed to reach ``--target`` exact accuracy (the first checkpoint at or above it) and their ratio, the
accuracy-against-time table, and the load average before and after each side (this machine may be shared:
figures taken under load are noisy, and say so).

* reference: ``bench/reference_trm.py`` (the eager port of the reference code) in the reference's small CPU
  configuration: hidden 64, TRM-MLP (mlp_t), H_cycles 2 / L_cycles 2, 2 layers, 8 ACT steps, batch 64,
  AdamATan2 lr 1e-3 (betas 0.9 / 0.95, weight decay 0.1), no puzzle embedding, SwiGLU widths rounded to 256,
  fp32. Its batches come from smoltrain's loader, which draws the reference's batches row for row.
* smoltrain: the task's recipe (``trm-sudoku-cpu`` / ``trm-maze-cpu``) through ``smoltrain.train.Trainer``.

Usage::

    python bench/time_to_accuracy.py --task sudoku6 --pairs 2 --budget-s 180 --json /tmp/tta.json
    python bench/time_to_accuracy.py --smoke          # seconds: tiny data and budget, checks the script works
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

import reference_trm as ref  # bench/ is on sys.path when this file runs as a script
from smoltrain.data.maze import build_maze_dataset
from smoltrain.data.puzzles import PuzzleDataset, load_metadata
from smoltrain.data.sudoku import build_sudoku_dataset
from smoltrain.families import load_config
from smoltrain.families.trm import PuzzleStream
from smoltrain.fileio import atomic_write_text
from smoltrain.train.trainer import Trainer

REFERENCE_LR, REFERENCE_WEIGHT_DECAY = 1e-3, 0.1
BATCH = 64


@dataclass(frozen=True)
class Task:
    name: str
    recipe: str
    target: float  # the accuracy target for this task
    build: Callable[[Path, bool], None]  # (output dir, smoke) -> dataset written there
    eval_examples: int


def _sudoku6(out: Path, smoke: bool) -> None:
    build_sudoku_dataset(out, "generate", size=6, num_train=200 if smoke else 5000, num_test=64 if smoke else 500,
                         num_aug=0 if smoke else 8, seed=0)


def _sudoku9_easy(out: Path, smoke: bool) -> None:
    build_sudoku_dataset(out, "generate", size=9, num_train=200 if smoke else 5000, num_test=64 if smoke else 500,
                         target_clues=45, seed=0)


def _maze8(out: Path, smoke: bool) -> None:
    build_maze_dataset(out, "generate", size=8, num_train=200 if smoke else 20000, num_test=64 if smoke else 500,
                       seed=0)


TASKS = {
    "sudoku6": Task("sudoku6", "trm-sudoku-cpu", 0.97, _sudoku6, 500),
    "sudoku9-easy": Task("sudoku9-easy", "trm-sudoku-cpu", 0.90, _sudoku9_easy, 500),
    "maze8": Task("maze8", "trm-maze-cpu", 0.50, _maze8, 500),
}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ---------------------------------------------------------------------------------------------------
# The two sides: each is a step function and an evaluation function over the same data


class ReferenceSide:
    name = "reference"

    def __init__(self, data: Path, eval_examples: int, seed: int) -> None:
        meta = load_metadata(data, "train")
        torch.manual_seed(seed)
        config = replace(ref.sudoku6_config(BATCH), seq_len=meta.seq_len, vocab_size=meta.vocab_size,
                         num_puzzle_identifiers=meta.num_puzzle_identifiers)
        self.trainer = ref.Trainer(config, lr=REFERENCE_LR, weight_decay=REFERENCE_WEIGHT_DECAY)
        self.stream = PuzzleStream(PuzzleDataset(data, "train", BATCH, seed=seed))
        self.test = PuzzleDataset(data, "test", BATCH, test_mode=True)
        self.eval_examples = eval_examples

    def step(self) -> None:
        self.trainer.step(next(self.stream))

    @torch.no_grad()
    def evaluate(self) -> float:
        """Exact accuracy (every cell right) after all ACT steps, over the first ``eval_examples`` test rows."""
        head = self.trainer.head
        head.eval()
        correct = count = 0
        try:
            for item in self.test.iter_test():
                if count >= self.eval_examples:
                    break
                batch = item.batch
                keep = self.eval_examples - count
                if keep < item.num_real:
                    batch = {**batch, "labels": batch["labels"].clone()}
                    batch["labels"][keep:] = ref.IGNORE_LABEL_ID
                carry = head.initial_carry(batch)
                for _ in range(head.model.config.halt_max_steps):
                    carry, _loss, metrics, _all_halted = head(carry, batch)
                correct += int(metrics["exact_accuracy"])
                count += int(metrics["count"])
        finally:
            head.train()
        return correct / max(count, 1)


class SmoltrainSide:
    name = "smoltrain"

    def __init__(self, recipe: str, data: Path, run_dir: Path, eval_examples: int, seed: int) -> None:
        cfg = load_config(recipe, [f"data_paths=[{data}]", f"run_dir={run_dir}", "resume=none", "epochs=100000",
                                   "eval_interval=100000", f"eval_max_examples={eval_examples}", f"seed={seed}",
                                   f"num_threads={torch.get_num_threads()}"])
        self.trainer = Trainer(cfg)

    def step(self) -> None:
        trainer = self.trainer
        trainer.train_step(next(trainer.stream))
        trainer.step += 1

    def evaluate(self) -> float:
        return float(self.trainer.evaluate()["exact_accuracy"])

    def close(self) -> None:
        self.trainer.release_run_dir()


def train_on_the_clock(side: Any, budget_s: float, checkpoints: list[float]) -> dict[str, Any]:
    """Train until ``budget_s`` seconds of training time, evaluating (clock paused) at each checkpoint."""
    load_before = load_average()
    curve: list[dict[str, float]] = []
    trained_s, steps, pending = 0.0, 0, list(checkpoints)
    while pending:
        started = time.perf_counter()
        side.step()
        trained_s += time.perf_counter() - started
        steps += 1
        if trained_s >= pending[0]:
            while pending and trained_s >= pending[0]:
                pending.pop(0)
            curve.append({"train_s": round(trained_s, 1), "step": steps, "exact": side.evaluate()})
            print(f"    {side.name:9s} {trained_s:7.1f} s  step {steps:6d}  exact {100 * curve[-1]['exact']:5.1f}%",
                  flush=True)
    return {"side": side.name, "budget_s": budget_s, "steps": steps, "curve": curve,
            "load_before": load_before, "load_after": load_average()}


def time_to(curve: list[dict[str, float]], target: float) -> float | None:
    """Training seconds at the first checkpoint at or above ``target`` (None if never reached)."""
    return next((point["train_s"] for point in curve if point["exact"] >= target), None)


# ---------------------------------------------------------------------------------------------------
# Report


def _fmt_s(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.0f} s"


def summarize(pairs: list[dict[str, Any]], target: float) -> dict[str, Any]:
    per_side: dict[str, Any] = {}
    for name in ("reference", "smoltrain"):
        times = [time_to(pair[name]["curve"], target) for pair in pairs]
        reached = [t for t in times if t is not None]
        per_side[name] = {"time_to_target_s": times,
                          "median_s": statistics.median(reached) if len(reached) == len(times) else None,
                          "steps": [pair[name]["steps"] for pair in pairs]}
    ref_median, ours_median = per_side["reference"]["median_s"], per_side["smoltrain"]["median_s"]
    ratio = ours_median / ref_median if ref_median and ours_median else None
    # When only smoltrain reached the target, the reference needed more than the whole budget: an upper bound.
    bound = None
    if ours_median is not None and not any(t is not None for t in per_side["reference"]["time_to_target_s"]):
        bound = ours_median / min(pair["reference"]["budget_s"] for pair in pairs)
    return {"target": target, **per_side, "ratio_smoltrain_over_reference": ratio, "ratio_upper_bound": bound}


def markdown(result: dict[str, Any]) -> str:
    summary, pairs, target = result["summary"], result["pairs"], result["target"]
    lines = [f"Task {result['task']}, target {100 * target:g}% exact on {result['eval_examples']} held-out puzzles, "
             f"{len(pairs)} pair(s) x {result['budget_s']:g} s training per side, {result['threads']} thread(s); "
             f"load average at start {result['load_start']}.", "",
             "| pair | side | order | steps | time to target | load before -> after |", "|---|---|---:|---:|---:|---|"]
    for i, pair in enumerate(pairs, start=1):
        for name in pair["order"]:
            side = pair[name]
            lines.append(f"| {i} | {name} | {pair['order'].index(name) + 1} | {side['steps']:,} | "
                         f"{_fmt_s(time_to(side['curve'], target))} | {side['load_before']} -> {side['load_after']} |")
    ratio, bound = summary["ratio_smoltrain_over_reference"], summary.get("ratio_upper_bound")
    if ratio is not None:
        ratio_text = f"{ratio:.2f}"
    elif bound is not None:
        ratio_text = f"< {bound:.2f} (the reference did not reach the target within the budget)"
    else:
        ratio_text = "n/a (a side did not reach the target in every pair)"
    lines += ["", f"Median time to {100 * target:g}%: reference {_fmt_s(summary['reference']['median_s'])}, "
              f"smoltrain {_fmt_s(summary['smoltrain']['median_s'])}; ratio smoltrain / reference {ratio_text}.", ""]
    checkpoints = result["checkpoints_s"]
    header = "| training s | " + " | ".join(f"ref {i} | ours {i}" for i in range(1, len(pairs) + 1)) + " |"
    lines += ["Exact accuracy against training time (evaluations off the clock; the time is the first step past "
              "each checkpoint):", "", header, "|---:|" + "---:|" * (2 * len(pairs))]
    for k, checkpoint in enumerate(checkpoints):
        cells = []
        for pair in pairs:
            for name in ("reference", "smoltrain"):
                curve = pair[name]["curve"]
                cells.append(f"{100 * curve[k]['exact']:.1f}%" if k < len(curve) else "-")
        lines.append(f"| {checkpoint:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict[str, Any]:
    task = TASKS[args.task]
    target = args.target if args.target is not None else task.target
    budget = args.budget_s if args.budget_s is not None else (3.0 if args.smoke else 180.0)
    pairs_wanted = args.pairs if args.pairs is not None else 2
    eval_examples = 64 if args.smoke else task.eval_examples
    every = args.eval_every_s if args.eval_every_s is not None else (1.0 if args.smoke else 15.0)
    checkpoints = [round(every * k, 3) for k in range(1, int(budget / every) + 1)]
    if not checkpoints or checkpoints[-1] < budget:
        checkpoints.append(budget)
    torch.set_num_threads(args.threads)

    result: dict[str, Any] = {"task": task.name, "recipe": task.recipe, "target": target, "budget_s": budget,
                              "eval_examples": eval_examples, "checkpoints_s": checkpoints, "threads": args.threads,
                              "smoke": args.smoke, "load_start": load_average(), "cpu_count": os.cpu_count(),
                              "torch": torch.__version__, "pairs": []}
    with tempfile.TemporaryDirectory(prefix="tta-") as tmp:
        data = Path(tmp) / "data"
        started = time.perf_counter()
        task.build(data, args.smoke)
        print(f"built {task.name} in {time.perf_counter() - started:.1f} s; load average {load_average()}",
              flush=True)
        for pair_index in range(pairs_wanted):
            order = ["reference", "smoltrain"] if pair_index % 2 == 0 else ["smoltrain", "reference"]
            pair: dict[str, Any] = {"order": order}
            for name in order:
                seed = pair_index
                print(f"pair {pair_index + 1}/{pairs_wanted}: {name}", flush=True)
                if name == "reference":
                    pair[name] = train_on_the_clock(ReferenceSide(data, eval_examples, seed), budget, checkpoints)
                else:
                    side = SmoltrainSide(task.recipe, data, Path(tmp) / f"run{pair_index}", eval_examples, seed)
                    try:
                        pair[name] = train_on_the_clock(side, budget, checkpoints)
                    finally:
                        side.close()
            result["pairs"].append(pair)
    result["summary"] = summarize(result["pairs"], target)
    result["load_end"] = load_average()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="sudoku6")
    parser.add_argument("--budget-s", type=float, default=None, help="training seconds per side (default 180)")
    parser.add_argument("--pairs", type=int, default=None, help="reference/smoltrain pairs, alternating (default 2)")
    parser.add_argument("--target", type=float, default=None, help="exact accuracy to time (default: the task's)")
    parser.add_argument("--eval-every-s", type=float, default=None, help="training seconds between evaluations")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", default=None, help="write the full result here")
    parser.add_argument("--markdown", default=None, help="write the tables here")
    parser.add_argument("--smoke", action="store_true", help="tiny data and a seconds budget: checks the script")
    parser.add_argument("--report", metavar="JSON", default=None, help="re-print the tables of an earlier --json")
    args = parser.parse_args(argv)
    if args.report:
        earlier = json.loads(Path(args.report).read_text())
        earlier["summary"] = summarize(earlier["pairs"], earlier["target"])
        print(markdown(earlier))
        return 0
    if args.pairs is not None and args.pairs < 1 or args.budget_s is not None and args.budget_s <= 0:
        parser.error("--pairs must be >= 1 and --budget-s > 0")
    result = run(args)
    table = markdown(result)
    print("\n" + table)
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(result, indent=2) + "\n")
    if args.markdown:
        atomic_write_text(Path(args.markdown), table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
