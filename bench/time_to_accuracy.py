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

Each side in its own process, side by side on a 2-core machine (one thread each, the clock the process's CPU
time), then one report over both files::

    python bench/time_to_accuracy.py --sides reference --threads 1 --clock cpu --json /tmp/ref.json &
    python bench/time_to_accuracy.py --sides smoltrain --threads 1 --clock cpu --json /tmp/ours.json &
    wait; python bench/time_to_accuracy.py --report /tmp/ref.json /tmp/ours.json

``--smoltrain-set eval_augmentations=8`` also scores smoltrain with test-time voting over 8 views of each puzzle
(evaluation off the clock as always): the curves then show the answer of the puzzle itself and the vote, and
the report times both. ``--stop-at-target`` ends a side at its first checkpoint at or above the target.
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
from side_by_side import join_pairs, read_results
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

    def __init__(self, recipe: str, data: Path, run_dir: Path, eval_examples: int, seed: int,
                 overrides: list[str]) -> None:
        cfg = load_config(recipe, [f"data_paths=[{data}]", f"run_dir={run_dir}", "resume=none", "epochs=100000",
                                   "eval_interval=100000", f"eval_max_examples={eval_examples}", f"seed={seed}",
                                   f"num_threads={torch.get_num_threads()}", *overrides])
        self.trainer = Trainer(cfg)
        self.views = cfg.eval_augmentations

    def step(self) -> None:
        trainer = self.trainer
        trainer.train_step(next(trainer.stream))
        trainer.step += 1

    def evaluate(self) -> float | tuple[float, float]:
        """Exact accuracy; with test-time views, (the puzzle itself, the vote over all views)."""
        metrics = self.trainer.evaluate()
        if self.views == 1:
            return float(metrics["exact_accuracy"])
        return float(metrics["exact_accuracy@1"]), float(metrics[f"exact_accuracy@{self.views}"])

    def close(self) -> None:
        self.trainer.release_run_dir()


# The training clock: wall time, or this process's CPU time (with one thread, the time it actually ran: the
# steadier measure when the two sides run side by side or the machine is shared).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def train_on_the_clock(side: Any, budget_s: float, checkpoints: list[float],
                       clock: Callable[[], float] = time.perf_counter, stop_at: float | None = None) -> dict[str, Any]:
    """Train until ``budget_s`` seconds of training time (or, with ``stop_at``, until an evaluation reaches that
    exact accuracy), evaluating with the clock paused at each checkpoint."""
    load_before = load_average()
    curve: list[dict[str, float]] = []
    trained_s, steps, pending = 0.0, 0, list(checkpoints)
    while pending:
        started = clock()
        side.step()
        trained_s += clock() - started
        steps += 1
        if trained_s >= pending[0]:
            while pending and trained_s >= pending[0]:
                pending.pop(0)
            scored = side.evaluate()
            point = {"train_s": round(trained_s, 1), "step": steps}
            if isinstance(scored, tuple):  # (the puzzle itself, the vote over its views)
                point.update(exact=scored[0], exact_voted=scored[1])
            else:
                point["exact"] = scored
            curve.append(point)
            voted = f"  voted {100 * point['exact_voted']:5.1f}%" if "exact_voted" in point else ""
            print(f"    {side.name:9s} {trained_s:7.1f} s  step {steps:6d}  exact {100 * point['exact']:5.1f}%{voted}",
                  flush=True)
            if stop_at is not None and max(point["exact"], point.get("exact_voted", 0.0)) >= stop_at:
                break
    return {"side": side.name, "budget_s": budget_s, "steps": steps, "curve": curve,
            "load_before": load_before, "load_after": load_average()}


def time_to(curve: list[dict[str, float]], target: float, metric: str = "exact") -> float | None:
    """Training seconds at the first checkpoint whose ``metric`` is at or above ``target`` (None if never)."""
    return next((point["train_s"] for point in curve if point.get(metric, -1.0) >= target), None)


# ---------------------------------------------------------------------------------------------------
# Report


def _fmt_s(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.0f} s"


SIDES = ("reference", "smoltrain")


def _has_votes(pairs: list[dict[str, Any]]) -> bool:
    return any("exact_voted" in point for pair in pairs for point in pair.get("smoltrain", {}).get("curve", []))


def _side_summary(pairs: list[dict[str, Any]], name: str, target: float, metric: str) -> dict[str, Any]:
    times = [time_to(pair[name]["curve"], target, metric) for pair in pairs]
    reached = [t for t in times if t is not None]
    return {"time_to_target_s": times, "median_s": statistics.median(reached) if len(reached) == len(times) else None,
            "steps": [pair[name]["steps"] for pair in pairs]}


def _ratio(ours: dict[str, Any], reference: dict[str, Any], pairs: list[dict[str, Any]]) -> tuple[float | None,
                                                                                                 float | None]:
    """(median ratio, upper bound): when only smoltrain reached the target, the reference needed more than its
    whole budget, so the ratio is below ours / budget."""
    ref_median, ours_median = reference["median_s"], ours["median_s"]
    if ref_median and ours_median:
        return ours_median / ref_median, None
    if ours_median is not None and not any(t is not None for t in reference["time_to_target_s"]):
        return None, ours_median / min(pair["reference"]["budget_s"] for pair in pairs)
    return None, None


def summarize(pairs: list[dict[str, Any]], target: float) -> dict[str, Any]:
    sides = [name for name in SIDES if all(name in pair for pair in pairs)]
    summary: dict[str, Any] = {"target": target, **{name: _side_summary(pairs, name, target, "exact")
                                                    for name in sides}}
    if _has_votes(pairs):
        summary["smoltrain_voted"] = _side_summary(pairs, "smoltrain", target, "exact_voted")
    if len(sides) == 2:
        for key, ours in (("", "smoltrain"), ("_voted", "smoltrain_voted")):
            if ours in summary:
                ratio, bound = _ratio(summary[ours], summary["reference"], pairs)
                summary[f"ratio_smoltrain{key}_over_reference"] = ratio
                summary[f"ratio{key}_upper_bound"] = bound
    return summary


def _ratio_text(ratio: float | None, bound: float | None) -> str:
    if ratio is not None:
        return f"{ratio:.2f}"
    if bound is not None:
        return f"< {bound:.2f} (the reference did not reach the target within the budget)"
    return "n/a (a side did not reach the target in every pair)"


def markdown(result: dict[str, Any]) -> str:
    summary, pairs, target = result["summary"], result["pairs"], result["target"]
    sides = [name for name in SIDES if name in summary]
    voted = "smoltrain_voted" in summary
    lines = [f"Task {result['task']}, target {100 * target:g}% exact on {result['eval_examples']} held-out puzzles, "
             f"{len(pairs)} pair(s) x {result['budget_s']:g} s training per side ({result.get('clock', 'wall')} "
             f"clock), {result['threads']} thread(s); load average at start {result['load_start']}.", "",
             "| pair | side | order | steps | time to target | load before -> after |", "|---|---|---:|---:|---:|---|"]
    for i, pair in enumerate(pairs, start=1):
        for name in pair["order"]:
            side = pair[name]
            reached = _fmt_s(time_to(side["curve"], target))
            if name == "smoltrain" and voted:
                reached += f" ({_fmt_s(time_to(side['curve'], target, 'exact_voted'))} voted)"
            lines.append(f"| {i} | {name} | {pair['order'].index(name) + 1} | {side['steps']:,} | "
                         f"{reached} | {side['load_before']} -> {side['load_after']} |")
    medians = ", ".join(f"{name} {_fmt_s(summary[name]['median_s'])}" for name in sides)
    if voted:
        medians += f", smoltrain voted {_fmt_s(summary['smoltrain_voted']['median_s'])}"
    lines += ["", f"Median time to {100 * target:g}%: {medians}."]
    if len(sides) == 2:
        lines[-1] += (" Ratio smoltrain / reference " +
                      _ratio_text(summary["ratio_smoltrain_over_reference"], summary["ratio_upper_bound"]))
        if voted:
            lines[-1] += ("; voted " + _ratio_text(summary["ratio_smoltrain_voted_over_reference"],
                                                    summary["ratio_voted_upper_bound"]))
        lines[-1] += "."
    lines.append("")
    columns = [(pair_index, name, metric) for pair_index, pair in enumerate(pairs) for name in sides
               for metric in (("exact", "exact_voted") if name == "smoltrain" and voted else ("exact",))]
    label = {"reference": "ref", "smoltrain": "ours"}
    header = "| training s | " + " | ".join(f"{label[name]}{' voted' if metric == 'exact_voted' else ''} {i + 1}"
                                           for i, name, metric in columns) + " |"
    lines += ["Exact accuracy against training time (evaluations off the clock; the time is the first step past "
              "each checkpoint):", "", header, "|---:|" + "---:|" * len(columns)]
    for k, checkpoint in enumerate(result["checkpoints_s"]):
        cells = []
        for i, name, metric in columns:
            curve = pairs[i][name]["curve"]
            cells.append(f"{100 * curve[k][metric]:.1f}%" if k < len(curve) else "-")
        lines.append(f"| {checkpoint:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def merge_results(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from the runs of single sides (``--sides``) taken side by side: pair i of each, joined."""
    merged = dict(results[0])
    merged["pairs"] = join_pairs(results)
    merged["checkpoints_s"] = max((r["checkpoints_s"] for r in results), key=len)
    merged["budget_s"] = max(r["budget_s"] for r in results)
    return merged


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
    sides = [name.strip() for name in args.sides.split(",") if name.strip()]
    clock = CLOCKS[args.clock]
    stop_at = target if args.stop_at_target else None

    result: dict[str, Any] = {"task": task.name, "recipe": task.recipe, "target": target, "budget_s": budget,
                              "eval_examples": eval_examples, "checkpoints_s": checkpoints, "threads": args.threads,
                              "clock": args.clock, "sides": sides, "smoltrain_overrides": args.smoltrain_set,
                              "smoke": args.smoke, "load_start": load_average(), "cpu_count": os.cpu_count(),
                              "torch": torch.__version__, "pairs": []}
    with tempfile.TemporaryDirectory(prefix="tta-") as tmp:
        data = Path(tmp) / "data"
        started = time.perf_counter()
        task.build(data, args.smoke)
        print(f"built {task.name} in {time.perf_counter() - started:.1f} s; load average {load_average()}",
              flush=True)
        for pair_index in range(pairs_wanted):
            order = sides if pair_index % 2 == 0 else sides[::-1]
            pair: dict[str, Any] = {"order": order}
            for name in order:
                seed = pair_index
                print(f"pair {pair_index + 1}/{pairs_wanted}: {name}", flush=True)
                if name == "reference":
                    pair[name] = train_on_the_clock(ReferenceSide(data, eval_examples, seed), budget, checkpoints,
                                                    clock, stop_at)
                else:
                    side = SmoltrainSide(task.recipe, data, Path(tmp) / f"run{pair_index}", eval_examples, seed,
                                         args.smoltrain_set)
                    try:
                        pair[name] = train_on_the_clock(side, budget, checkpoints, clock, stop_at)
                    finally:
                        side.close()
            result["pairs"].append(pair)
            if args.json:  # after every pair, so a run stopped early keeps the pairs it finished
                result["summary"] = summarize(result["pairs"], target)
                atomic_write_text(Path(args.json), json.dumps(result, indent=2) + "\n")
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
    parser.add_argument("--sides", default="reference,smoltrain",
                        help="comma-separated, from reference, smoltrain (one side per process: see --report)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="training time as wall time or as process CPU time (steadier side by side)")
    parser.add_argument("--smoltrain-set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override of smoltrain's recipe (repeatable), e.g. eval_augmentations=8")
    parser.add_argument("--stop-at-target", action="store_true",
                        help="end a side at its first evaluation at or above the target")
    parser.add_argument("--json", default=None, help="write the full result here")
    parser.add_argument("--markdown", default=None, help="write the tables here")
    parser.add_argument("--smoke", action="store_true", help="tiny data and a seconds budget: checks the script")
    parser.add_argument("--report", metavar="JSON", nargs="+", default=None,
                        help="re-print the tables of earlier --json files (several: single sides run side by side)")
    args = parser.parse_args(argv)
    if args.report:
        try:
            earlier = merge_results(read_results(args.report, ("task", "target", "pairs", "checkpoints_s")))
        except ValueError as error:
            parser.error(f"--report: {error}")
        earlier["summary"] = summarize(earlier["pairs"], earlier["target"])
        table = markdown(earlier)
        print(table)
        if args.markdown:
            atomic_write_text(Path(args.markdown), table)
        return 0
    if args.pairs is not None and args.pairs < 1 or args.budget_s is not None and args.budget_s <= 0:
        parser.error("--pairs must be >= 1 and --budget-s > 0")
    unknown = sorted({name.strip() for name in args.sides.split(",") if name.strip()} - set(SIDES))
    if unknown or not args.sides.strip(",").strip():
        parser.error(f"--sides: choose from {', '.join(SIDES)} (got {args.sides!r})")
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
