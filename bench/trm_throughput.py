"""TRM training throughput: smoltrain against an eager port of the reference, and the demo's accuracy curve.

    python bench/trm_throughput.py [--shapes cpu,paper] [--threads 2] [--steps N] [--warmup W] [--rounds R]
                                   [--device cpu|cuda] [--batch B] [--no-verify] [--compile] [--json OUT]
    python bench/trm_throughput.py --demo-curve runs/demo[/metrics.jsonl]

One timed step = what a training step costs in the model: one ACT step (forward of the T x (n+1)
recursion), the loss, ``backward`` of ``loss / batch``, the AdamATan2 step (+ the puzzle-embedding sign-SGD
step when the shape has one) and ``zero_grad``, on a fixed random batch with the ACT carry kept across
steps as in real training. Three implementations per shape:

* (a) ``bench/reference_trm.py``: a straightforward eager port of the reference code (the baseline);
* (b) smoltrain's ``TRM`` + ``ACTLossHead`` + ``AdamATan2`` at exactly (a)'s shapes (``swiglu_multiple=256``):
  same parameters, same math (checked: (b) loads (a)'s weights and must give the same loss and gradients);
* (c) smoltrain with the arch of the shape's recipe (``trm-sudoku-cpu`` / ``trm-sudoku``), i.e. what
  ``smoltrain demo`` / ``smoltrain train`` really run; skipped when it equals (b);
* (d) with ``--compile``: (b) under ``torch.compile``, as ``compile=True`` runs it (compile time untimed).

Shapes: ``cpu`` = the 6x6 CPU config of ``tiny_trm_cpu.md`` (batch 64); ``paper`` = Sudoku-Extreme TRM-MLP
(D 512, T=3, n=6, 16-position puzzle prefix): batch 768 on CUDA, batch 8 on the CPU, where one step takes
~9 s. Activations are fp32 on the CPU and bf16 on CUDA. Rounds alternate between the implementations so
machine noise hits all of them; the median samples/s of each is reported. The numbers exclude the
trainer's own per-step work (LR schedule, grad norm, metric reduction), measured by
``bench/trainer_overhead.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

import reference_trm as ref  # bench/ is on sys.path when this file runs as a script
from smoltrain.families import load_config
from smoltrain.families.trm import TRMArchConfig
from smoltrain.models.trm import TRM, TRMConfig
from smoltrain.models.trm_loss import ACTLossHead, ACTStep
from smoltrain.optim import AdamATan2, SparseSignSGD

LR, WEIGHT_DECAY = 1e-4, 0.1  # values do not change the cost of a step; nonzero so updates really happen


# ---------------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------------


@dataclass
class Shape:
    name: str
    title: str
    recipe: str  # the smoltrain recipe whose arch (c) runs
    seq_len: int
    vocab_size: int
    hidden_size: int
    num_heads: int
    H_cycles: int
    L_cycles: int
    L_layers: int
    halt_max_steps: int
    puzzle_emb_ndim: int
    puzzle_emb_len: int
    batch: dict[str, int]  # per device type
    # (steps, warmup, rounds) per device type when not given on the command line
    schedule: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    def describe(self, batch: int) -> str:
        prefix = f" + {self.puzzle_emb_len} prefix" if self.puzzle_emb_ndim else ""
        return (f"seq {self.seq_len}{prefix}, vocab {self.vocab_size}, D {self.hidden_size}, mlp_t, pos none, "
                f"L_layers {self.L_layers}, H_cycles {self.H_cycles}, L_cycles {self.L_cycles}, "
                f"halt_max_steps {self.halt_max_steps}, puzzle_emb_ndim {self.puzzle_emb_ndim}, batch {batch}")


SHAPES = {
    "cpu": Shape(
        name="cpu", title="6x6 Sudoku, the CPU recipe's shape (tiny_trm_cpu.md best config)",
        recipe="trm-sudoku-cpu", seq_len=36, vocab_size=8, hidden_size=64, num_heads=4, H_cycles=2, L_cycles=2,
        L_layers=2, halt_max_steps=8, puzzle_emb_ndim=0, puzzle_emb_len=0, batch={"cpu": 64, "cuda": 64},
        schedule={"cpu": (20, 3, 5), "cuda": (100, 10, 5)},
    ),
    "paper": Shape(
        name="paper", title="Sudoku-Extreme TRM-MLP, the paper's shape", recipe="trm-sudoku",
        seq_len=81, vocab_size=11, hidden_size=512, num_heads=8, H_cycles=3, L_cycles=6, L_layers=2,
        halt_max_steps=16, puzzle_emb_ndim=512, puzzle_emb_len=16, batch={"cpu": 8, "cuda": 768},
        schedule={"cpu": (2, 1, 2), "cuda": (10, 3, 3)},
    ),
}


def reference_config(shape: Shape, batch: int, dtype: torch.dtype) -> ref.RefConfig:
    return ref.RefConfig(
        batch_size=batch, seq_len=shape.seq_len, vocab_size=shape.vocab_size, num_puzzle_identifiers=1,
        H_cycles=shape.H_cycles, L_cycles=shape.L_cycles, L_layers=shape.L_layers, hidden_size=shape.hidden_size,
        expansion=4, num_heads=shape.num_heads, pos_encodings="none", halt_max_steps=shape.halt_max_steps,
        halt_exploration_prob=0.1, puzzle_emb_ndim=shape.puzzle_emb_ndim, puzzle_emb_len=shape.puzzle_emb_len,
        mlp_t=True, forward_dtype=dtype,
    )


def same_shape_config(shape: Shape, batch: int, dtype: torch.dtype) -> TRMConfig:
    """(b): smoltrain's config for exactly the reference port's model."""
    return TRMConfig(
        batch_size=batch, seq_len=shape.seq_len, vocab_size=shape.vocab_size, num_puzzle_identifiers=1,
        puzzle_emb_ndim=shape.puzzle_emb_ndim, puzzle_emb_len=shape.puzzle_emb_len, H_cycles=shape.H_cycles,
        L_cycles=shape.L_cycles, L_layers=shape.L_layers, hidden_size=shape.hidden_size, expansion=4,
        num_heads=shape.num_heads, pos_encodings="none", halt_max_steps=shape.halt_max_steps,
        halt_exploration_prob=0.1, forward_dtype=str(dtype).removeprefix("torch."), mlp_t=True,
        swiglu_multiple=256,
    )


def recipe_config(shape: Shape, batch: int, dtype: torch.dtype) -> TRMConfig:
    """(c): the arch of the shape's recipe, as the trainer builds it (data shape and batch injected)."""
    arch = load_config(shape.recipe, ["data_paths=[]"]).arch
    assert isinstance(arch, TRMArchConfig)
    shaped = arch.model_copy(update={"seq_len": shape.seq_len, "vocab_size": shape.vocab_size,
                                     "num_puzzle_identifiers": 1})
    return shaped.to_model_config(batch_size=batch, forward_dtype=str(dtype).removeprefix("torch."))


def config_differences(a: TRMConfig, b: TRMConfig) -> list[str]:
    da, db = a.model_dump(), b.model_dump()
    if da["puzzle_emb_ndim"] == db["puzzle_emb_ndim"] == 0:
        da.pop("puzzle_emb_len"), db.pop("puzzle_emb_len")  # no puzzle embedding: the prefix length is unused
    return [f"{k} {db[k]} (vs {da[k]})" for k in da if da[k] != db[k]]


def random_batch(shape: Shape, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    size = (batch, shape.seq_len)
    return {
        "inputs": torch.randint(1, shape.vocab_size, size, generator=g, dtype=torch.int32).to(device),
        "labels": torch.randint(1, shape.vocab_size, size, generator=g, dtype=torch.int32).to(device),
        "puzzle_identifiers": torch.zeros(batch, dtype=torch.int32).to(device),
    }


# ---------------------------------------------------------------------------------------------------
# The implementations under test
# ---------------------------------------------------------------------------------------------------


class SmoltrainStep:
    """One training step of smoltrain's TRM, as ``TRMFamily.train_step`` + the trainer do it."""

    def __init__(self, config: TRMConfig, device: torch.device, compile: bool = False) -> None:
        self.batch_size = config.batch_size
        self.head = ACTLossHead(TRM(config)).to(device)
        self.head.train()
        # `compile=True` in a run does the same: the module is compiled, its state dict keeps its keys.
        self.forward = torch.compile(self.head) if compile else self.head
        self.optimizers: list[torch.optim.Optimizer] = [
            AdamATan2(self.head.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=WEIGHT_DECAY)
        ]
        puzzle_emb = self.head.model.puzzle_emb
        if puzzle_emb is not None:
            self.optimizers.append(SparseSignSGD(list(puzzle_emb.buffers()), lr=LR, weight_decay=WEIGHT_DECAY))
        self.carry: Any = None

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.carry is None:
            self.carry = self.head.initial_carry(batch)
        step = self.forward(self.carry, batch)
        self.carry, loss = step.carry, step.loss
        (loss / self.batch_size).backward()
        for opt in self.optimizers:
            opt.step()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        return loss.detach()


@dataclass
class Impl:
    key: str
    label: str
    widths: str
    params: int
    step: Callable[[dict[str, torch.Tensor]], torch.Tensor]
    rounds: list[float] = field(default_factory=list)  # samples/s per round

    @property
    def median(self) -> float:
        return statistics.median(self.rounds)


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_impls(shape: Shape, batch: int, device: torch.device, dtype: torch.dtype,
                compile: bool = False) -> tuple[list[Impl], str]:
    torch.manual_seed(0)
    reference = ref.Trainer(reference_config(shape, batch, dtype), device=device, lr=LR, weight_decay=WEIGHT_DECAY,
                            puzzle_emb_lr=LR, puzzle_emb_weight_decay=WEIGHT_DECAY)
    same = same_shape_config(shape, batch, dtype)
    ours_same = SmoltrainStep(same, device)
    impls = [
        Impl("a", "(a) reference port (`bench/reference_trm.py`)", "SwiGLU widths rounded to 256",
             num_params(reference.head), reference.step),
        Impl("b", "(b) smoltrain, same shapes as (a)", "swiglu_multiple=256", num_params(ours_same.head), ours_same),
    ]
    if compile:
        ours_compiled = SmoltrainStep(same, device, compile=True)
        impls.append(Impl("d", "(d) smoltrain, same shapes as (a), `compile=True`", "swiglu_multiple=256",
                          num_params(ours_compiled.head), ours_compiled))
    recipe = recipe_config(shape, batch, dtype)
    diffs = config_differences(same, recipe)
    if diffs:
        ours_recipe = SmoltrainStep(recipe, device)
        impls.append(Impl("c", f"(c) smoltrain, `{shape.recipe}` recipe arch", ", ".join(diffs),
                          num_params(ours_recipe.head), ours_recipe))
        note = f"(c) = the `{shape.recipe}` recipe's arch, differing from (b) in: {', '.join(diffs)}."
    else:
        note = f"(c) skipped: the `{shape.recipe}` recipe's arch is identical to (b)."
    return impls, note


def _two_training_steps(head: torch.nn.Module, batch: dict[str, torch.Tensor]
                        ) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Loss and gradients of two ACT training steps (carry kept), exploration draws seeded per step."""
    head.train()
    carry = head.initial_carry(batch)
    results = []
    for step in range(2):
        torch.manual_seed(100 + step)  # the same exploration draws for every implementation
        out = head(carry, batch)
        # The reference head returns a tuple, ours an ACTStep.
        carry, loss = (out.carry, out.loss) if isinstance(out, ACTStep) else (out[0], out[1])
        head.zero_grad(set_to_none=True)
        (loss / batch["inputs"].shape[0]).backward()
        results.append((loss.detach().double(),
                        {k: p.grad.detach().double() for k, p in head.named_parameters() if p.grad is not None}))
    return results


def _max_relative_differences(x: list[tuple[torch.Tensor, dict[str, torch.Tensor]]],
                              y: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> tuple[float, float]:
    d_loss = d_grad = 0.0
    for (loss_x, grads_x), (loss_y, grads_y) in zip(x, y, strict=True):
        if set(grads_x) != set(grads_y):
            raise AssertionError(f"different parameters got gradients: {sorted(set(grads_x) ^ set(grads_y))}")
        d_loss = max(d_loss, float((loss_x - loss_y).abs() / loss_x.abs().clamp_min(1e-12)))
        for k, g in grads_x.items():
            d_grad = max(d_grad, float((g - grads_y[k]).abs().max() / g.abs().max().clamp_min(1e-12)))
    return d_loss, d_grad


def verify_same_math(shape: Shape, device: torch.device) -> str:
    """(b) loads (a)'s weights; two fp32 ACT training steps at batch 2 must give the same loss and gradients.

    (a) and (b) differ in rounding only: the reference's composite ``rms_norm`` (pow, mean, rsqrt, mul)
    against torch's fused kernel in smoltrain, a ~1e-7 difference per norm that the deep recursion amplifies
    (to ~1e-3 relative in the gradients after two ACT steps at the paper shape). So the strict comparison is
    against (a) with its ``rms_norm`` on the fused kernel; the plain (a)-(b) difference is reported too.
    """
    batch_size = 2
    torch.manual_seed(0)
    reference = ref.ACTLossHead(ref.ACTModel(reference_config(shape, batch_size, torch.float32))).to(device)
    ours = ACTLossHead(TRM(same_shape_config(shape, batch_size, torch.float32))).to(device)
    ours.model.load_state_dict(reference.model.state_dict(), strict=True)
    batch = random_batch(shape, batch_size, device)
    result_a = _two_training_steps(reference, batch)
    composite_rms_norm = ref.rms_norm
    ref.rms_norm = lambda x, variance_epsilon: torch.nn.functional.rms_norm(x, (x.shape[-1],), eps=variance_epsilon)
    try:
        result_a_fused = _two_training_steps(reference, batch)
    finally:
        ref.rms_norm = composite_rms_norm
    result_b = _two_training_steps(ours, batch)
    loss_strict, grad_strict = _max_relative_differences(result_a_fused, result_b)
    loss_plain, grad_plain = _max_relative_differences(result_a, result_b)
    # A wrong width, norm axis or recursion order gives O(1) differences; rounding gives ~1e-7 (strict).
    if loss_strict > 1e-6 or grad_strict > 1e-4 or loss_plain > 1e-3 or grad_plain > 0.1:
        raise AssertionError(
            f"(b) does not compute what (a) computes: max relative loss / gradient differences "
            f"{loss_strict:.1e} / {grad_strict:.1e} against (a) with the fused rms_norm, "
            f"{loss_plain:.1e} / {grad_plain:.1e} against (a)")
    return (f"Same-math check (fp32, batch 2, two ACT steps, (b) loaded (a)'s weights): max relative "
            f"loss / gradient difference {loss_strict:.1e} / {grad_strict:.1e} against (a) with its rms_norm on "
            f"torch's fused kernel, {loss_plain:.1e} / {grad_plain:.1e} against (a) as is (the composite "
            f"rms_norm's rounding, amplified by the recursion)")


# ---------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_round(impl: Impl, batch: dict[str, torch.Tensor], steps: int, warmup: int, device: torch.device) -> float:
    """samples/s over ``steps`` steps after ``warmup`` untimed ones (re-warms caches after the other impls)."""
    for _ in range(warmup):
        impl.step(batch)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss = impl.step(batch)
    sync(device)
    elapsed = time.perf_counter() - start
    if not math.isfinite(float(loss)):
        raise RuntimeError(f"{impl.label}: non-finite loss")
    return steps * batch["inputs"].shape[0] / elapsed


def run_shape(shape: Shape, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    batch_size = args.batch or shape.batch[device.type]
    steps, warmup, rounds = shape.schedule[device.type]
    steps = args.steps or steps
    warmup = warmup if args.warmup is None else args.warmup
    rounds = args.rounds or rounds
    print(f"[{shape.name}] {shape.describe(batch_size)}: {rounds} rounds x ({warmup} warm-up + {steps} timed "
          f"steps) per implementation", file=sys.stderr, flush=True)

    check = "same-math check skipped (--no-verify)" if args.no_verify else verify_same_math(shape, device)
    impls, note = build_impls(shape, batch_size, device, dtype, compile=args.compile)
    batch = random_batch(shape, batch_size, device)
    loads = []
    for r in range(rounds):
        # Rotate the order too, so no implementation always runs first (or right after the same one).
        order = impls[r % len(impls):] + impls[: r % len(impls)]
        for impl in order:
            loads.append(os.getloadavg()[0])
            impl.rounds.append(time_round(impl, batch, steps, warmup, device))
            print(f"[{shape.name}] round {r + 1}/{rounds} {impl.key}: {impl.rounds[-1]:.2f} samples/s "
                  f"(load {loads[-1]:.2f})", file=sys.stderr, flush=True)
    return {
        "shape": shape.name, "title": shape.title, "description": shape.describe(batch_size), "batch": batch_size,
        "steps": steps, "warmup": warmup, "rounds": rounds, "note": note, "check": check,
        "loadavg_1min_min": min(loads), "loadavg_1min_max": max(loads),
        "impls": [{"key": i.key, "label": i.label, "widths": i.widths, "params": i.params,
                   "samples_per_s": i.rounds, "median": i.median} for i in impls],
    }


# ---------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def markdown(results: list[dict[str, Any]], header: dict[str, Any]) -> str:
    lines = [
        f"### TRM training throughput ({header['date']})",
        "",
        f"`{header['command']}`",
        "",
        f"- torch {header['torch']}, device {header['device_name']}, torch threads: {header['threads']}, "
        f"activations {header['dtype']}",
        f"- load average (1/5/15 min) at start {header['load_start']}, at end {header['load_end']} "
        f"({header['cores']} cores)",
        "- one step = one ACT step forward + loss + backward + AdamATan2 (+ sign-SGD) + zero_grad, fixed random "
        "batch, carry kept across steps; median of alternating rounds",
    ]
    if "warning" in header:
        lines.append(f"- **WARNING: {header['warning']}**")
    for res in results:
        base = next(i for i in res["impls"] if i["key"] == "a")["median"]
        lines += [
            "",
            f"#### `{res['shape']}`: {res['title']}",
            "",
            f"{res['description']}; {res['rounds']} rounds x {res['steps']} timed steps (+{res['warmup']} warm-up); "
            f"1-min load during rounds {res['loadavg_1min_min']:.2f}-{res['loadavg_1min_max']:.2f}.",
        ]
        if res["shape"] == "paper" and header["device"] == "cpu":
            lines.append(f"On the CPU the paper shape runs at batch {res['batch']} (not 768) with few steps: one "
                         "step takes several seconds here. The paper trains it at batch 768 on a GPU.")
        lines += [
            "",
            "| implementation | widths | params | samples/s (median) | ms/step | rounds (samples/s) | vs (a) |",
            "|---|---|---:|---:|---:|---|---:|",
        ]
        for impl in res["impls"]:
            ms = 1000 * res["batch"] / impl["median"]
            rounds = ", ".join(f"{x:.1f}" for x in impl["samples_per_s"])
            lines.append(f"| {impl['label']} | {impl['widths']} | {impl['params']:,} | {impl['median']:.2f} | "
                         f"{ms:.0f} | {rounds} | {impl['median'] / base:.2f}x |")
        lines += ["", f"{res['note']} {res['check']}."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Demo accuracy against wall time
# ---------------------------------------------------------------------------------------------------


def demo_curve(path_arg: str) -> str:
    """(elapsed, exact accuracy) of every eval row of a run's ``metrics.jsonl``.

    Eval rows carry no clock, so the elapsed time at an eval's step is interpolated from the train rows'
    ``elapsed_s`` (extrapolated with the last window's rate past the last train row). ``elapsed_s`` is the
    trainer's wall clock since ``fit`` started, so it includes earlier evaluations and checkpoints; the
    train-only column subtracts the excess duration of the log windows that contained one (estimated
    against the median seconds per step), to compare with ``tiny_trm_cpu.md``, whose clock was paused
    during evaluations.
    """
    path = Path(path_arg)
    if path.is_dir():
        path = path / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    train = [r for r in rows if r.get("split", "train") == "train" and "elapsed_s" in r]
    evals = [r for r in rows if r.get("split") == "eval"]
    if not train or not evals:
        raise SystemExit(f"{path}: needs train rows with elapsed_s and eval rows ({len(train)} / {len(evals)} found)")
    points = [(0, 0.0)] + [(r["step"], r["elapsed_s"]) for r in train]

    def elapsed_at(step: int) -> float:
        for (s0, t0), (s1, t1) in zip(points, points[1:], strict=False):
            if s0 <= step <= s1:
                return t0 + (t1 - t0) * (step - s0) / max(s1 - s0, 1)
        (s0, t0), (s1, t1) = points[-2], points[-1]
        return t1 + (t1 - t0) / max(s1 - s0, 1) * (step - s1)

    windows = [(s0, s1, (t1 - t0) / max(s1 - s0, 1)) for (s0, t0), (s1, t1) in zip(points, points[1:], strict=False)]
    eval_steps = [r["step"] for r in evals]
    clean = [rate for s0, s1, rate in windows if not any(s0 <= e < s1 for e in eval_steps)]
    per_step = statistics.median(clean) if clean else statistics.median(rate for _, _, rate in windows)
    # Non-training time inside each window that holds an eval (the eval runs after its step's logging).
    overhead = {s1: max(0.0, (rate - per_step) * (s1 - s0)) for s0, s1, rate in windows
                if any(s0 <= e < s1 for e in eval_steps)}

    lines = [
        f"### Demo accuracy against time (`{path}`)",
        "",
        "| step | wall s since start | train-only s (est.) | exact accuracy | token accuracy | puzzles |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in evals:
        wall = elapsed_at(r["step"])
        train_only = wall - sum(v for s1, v in overhead.items() if s1 <= r["step"])
        exact, token = 100 * r.get("exact_accuracy", math.nan), 100 * r.get("accuracy", math.nan)
        lines.append(f"| {r['step']} | {wall:.1f} | {train_only:.1f} | {exact:.1f}% | {token:.1f}% "
                     f"| {int(r.get('count', 0))} |")
    lines += ["", "Reference bar (tiny_trm_cpu.md, 6x6, 2 threads, idle machine, clock paused during evals): "
              "14.8% at 150 s (510 steps), 75.2% at 300 s (1027 steps), 97.2% at 600 s (2022 steps)."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="cpu,paper", help="comma-separated: cpu, paper")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round (default: per shape)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps before each round")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per implementation")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch", type=int, default=None, help="override every shape's batch size")
    parser.add_argument("--no-verify", action="store_true", help="skip the (a) == (b) same-math check")
    parser.add_argument("--compile", action="store_true",
                        help="also time (d): smoltrain at (a)'s shapes under torch.compile (compile time not timed)")
    parser.add_argument("--json", default=None, help="also write the raw results here")
    parser.add_argument("--demo-curve", metavar="RUN_OR_METRICS", default=None,
                        help="print a run's (elapsed, exact accuracy) eval rows and exit")
    args = parser.parse_args()

    if args.demo_curve:
        print(demo_curve(args.demo_curve))
        return

    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shapes {unknown}; choose from {sorted(SHAPES)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # bf16 GEMMs are ~100x slower on AVX2

    header: dict[str, Any] = {
        "command": "python " + shlex.join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "torch": torch.__version__,
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(),
        "dtype": str(dtype).removeprefix("torch."),
        "load_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "cores": os.cpu_count(),
    }
    if device.type == "cpu" and os.getloadavg()[0] > 0.5 + (header["cores"] or 1) - args.threads:
        # Other processes hold cores our OpenMP threads need: threads then wait on each other, and a
        # 2-thread step was measured ~10x slower than on an idle machine. Say so next to the numbers.
        header["warning"] = (f"1-min load {os.getloadavg()[0]:.2f} on {header['cores']} cores leaves fewer than "
                             f"{args.threads} idle cores: OpenMP threads are oversubscribed, numbers are not "
                             "representative")
        print(f"WARNING: {header['warning']}", file=sys.stderr, flush=True)
    results = [run_shape(SHAPES[name], args, device, dtype) for name in shapes]
    header["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(markdown(results, header))
    if args.json:
        Path(args.json).write_text(json.dumps({"header": header, "results": results,
                                               "shapes": {n: asdict(SHAPES[n]) for n in shapes}}, indent=2))


if __name__ == "__main__":
    main()
