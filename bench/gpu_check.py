"""The GPU check: one run that measures what a lent GPU should tell us, written as one JSON + one markdown table.

    python bench/gpu_check.py --out DIR [--dry-run] [--train-minutes 5]

Sections (each reuses the bench script that owns the measurement; nothing is re-implemented here):

1. ``trm``: ``bench/trm_throughput.py --shapes paper --compile`` on CUDA in bf16: samples/s of the eager
   reference port (a), smoltrain at (a)'s shapes (b), the recipe's arch (c) and (b) under ``torch.compile``
   (d); CUDA graphs are section 4's.
2. ``lm``: ``bench/lm_throughput.py --shapes minimind2-26m --compile`` on CUDA: tokens/s and MFU of the 26M LM
   against the eager MiniMind port.
3. ``train``: ``trm-sudoku`` for ``--train-minutes`` of wall time on a freshly generated hard 9x9 set
   (``smoltrain data sudoku --source generate``), evaluated every ``--eval-every`` steps; the accuracy
   against wall time comes from ``trm_throughput.demo_curve`` over the run's ``metrics.jsonl``.
4. ``cudagraphs``: ``trm-sudoku-cpu``'s small network on a generated 6x6 set for 400 steps, compiled in the
   default mode and with CUDA graphs (``compile_mode=reduce-overhead``): steps/s of each and their last losses.

Each section records its peak memory: CUDA ``max_memory_allocated`` since the section began, or on the CPU
the process's peak RSS so far (monotonic, so an upper bound for the later sections). A section that fails is
recorded with its error and the others still run.

``--dry-run`` runs every section on the CPU at tiny shapes in seconds (the CPU 6x6 shape, the lm-tiny-cpu
decoder, the ``trm-sudoku-cpu`` network on a few generated 9x9 puzzles for a few steps): it checks the
plumbing, not the figures, so the test suite knows the script works before a GPU is lent.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import lm_throughput  # bench/ is on sys.path when this file runs as a script
import trm_throughput
from smoltrain.data.sudoku import build_sudoku_dataset
from smoltrain.families import load_config
from smoltrain.fileio import atomic_write_text
from smoltrain.train.trainer import Trainer

SECTIONS = ("trm", "lm", "train", "cudagraphs")


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def run_script_main(main: Callable[[], None], argv: list[str]) -> tuple[str, dict[str, Any]]:
    """Run a bench script's ``main`` with ``argv``; returns its printed markdown and the JSON it wrote."""
    json_path = Path(argv[argv.index("--json") + 1])
    saved, sys.argv = sys.argv, argv
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            main()
    finally:
        sys.argv = saved
    return printed.getvalue(), json.loads(json_path.read_text())


def trm_section(args: argparse.Namespace, out: Path) -> tuple[str, dict[str, Any]]:
    argv = ["trm_throughput.py", "--json", str(out / "trm_throughput.json")]
    if args.dry_run:
        argv += ["--shapes", "cpu", "--device", "cpu", "--threads", "1", "--batch", "4", "--steps", "1",
                 "--warmup", "0", "--rounds", "1", "--no-verify"]
    else:
        argv += ["--shapes", "paper", "--device", "cuda", "--compile"]
    return run_script_main(trm_throughput.main, argv)


def lm_section(args: argparse.Namespace, out: Path) -> tuple[str, dict[str, Any]]:
    argv = ["lm_throughput.py", "--json", str(out / "lm_throughput.json")]
    if args.dry_run:
        argv += ["--shapes", "lm-tiny-cpu", "--device", "cpu", "--threads", "1", "--batch", "2", "--seq-len", "16",
                 "--steps", "1", "--warmup", "0", "--rounds", "1", "--no-verify"]
    else:
        argv += ["--shapes", "minimind2-26m", "--device", "cuda", "--compile"]
    return run_script_main(lm_throughput.main, argv)


def train_section(args: argparse.Namespace, out: Path) -> tuple[str, dict[str, Any]]:
    data, run = out / "sudoku9-hard", out / "run-trm-sudoku"
    started = time.perf_counter()
    if args.dry_run:
        info = build_sudoku_dataset(data, "generate", size=9, num_train=16, num_test=8, seed=0)
        recipe = "trm-sudoku-cpu"  # the paper's network takes ~10 s a step on a CPU: the plumbing is the point
        overrides = ["max_steps=4", "global_batch_size=4", "eval_every=2", "eval_max_examples=8", "log_every=1",
                     "num_threads=1"]
    else:
        info = build_sudoku_dataset(data, "generate", size=9, num_train=args.num_train, num_test=args.num_test,
                                    num_aug=args.num_aug, min_difficulty=args.min_difficulty, seed=0,
                                    workers=os.cpu_count())
        recipe = "trm-sudoku"
        overrides = [f"max_minutes={args.train_minutes}", "epochs=100000", f"eval_every={args.eval_every}",
                     f"eval_max_examples={args.num_test}", "device=cuda", "log_every=50"]
    build_s = time.perf_counter() - started
    cfg = load_config(recipe, [f"data_paths=[{data}]", f"run_dir={run}", "resume=none", *overrides])
    summary = Trainer(cfg).fit()
    curve = trm_throughput.demo_curve(str(run))
    result = {"recipe": recipe, "overrides": overrides, "build_s": round(build_s, 1), "data": info.get("counts"),
              "steps": summary["step"], "seconds": summary.get("seconds"), "final_eval": summary.get("eval")}
    text = (f"`{recipe}` {' '.join(overrides)}; data built in {build_s:.0f} s ({info.get('counts')}); "
            f"{summary['step']} steps; final eval {summary.get('eval')}\n\n{curve}\n")
    return text, result


def _steps_per_s(run: Path, skip: int) -> tuple[float, float]:
    """Steps/s over the train rows of ``run``'s metrics.jsonl past step ``skip`` (compilation and warm-up are
    before it), and the last logged training loss."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in rows if r.get("split", "train") == "train" and "elapsed_s" in r]
    timed = [r for r in train if r["step"] >= skip] or train[-2:]
    first, last = timed[0], timed[-1]
    rate = (last["step"] - first["step"]) / max(last["elapsed_s"] - first["elapsed_s"], 1e-9)
    return rate, float(train[-1]["loss"])


def cudagraphs_section(args: argparse.Namespace, out: Path) -> tuple[str, dict[str, Any]]:
    """``trm-sudoku-cpu``'s small network (~100k parameters) on the GPU under ``torch.compile`` in its default
    mode and with CUDA graphs (``compile_mode=reduce-overhead``), same seed and data: a model this small is
    bound by kernel launches, which is where graphs pay. It also shows that training with graphs runs at all
    with TRM's carry crossing steps (the trainer copies it out of the graphs' memory)."""
    data = out / "sudoku6"
    if args.dry_run:  # compiling on the CPU takes longer than the whole dry run: the plumbing runs eagerly
        build_sudoku_dataset(data, "generate", size=6, num_train=64, num_test=16, seed=0)
        steps, common = 6, ["compile=false", "num_threads=1", "global_batch_size=8", "log_every=1"]
    else:
        build_sudoku_dataset(data, "generate", size=6, num_train=2000, num_test=200, seed=0)
        steps, common = 400, ["compile=true", "device=cuda", "log_every=10"]
    result: dict[str, Any] = {}
    for mode in ("default", "reduce-overhead"):
        run = out / f"run-compile-{mode}"
        cfg = load_config("trm-sudoku-cpu", [f"data_paths=[{data}]", f"run_dir={run}", "resume=none",
                                             f"max_steps={steps}", "epochs=100000", f"compile_mode={mode}",
                                             "eval_max_examples=16", *common])
        summary = Trainer(cfg).fit()
        rate, loss = _steps_per_s(run, skip=steps // 4)
        result[mode] = {"steps": summary["step"], "steps_per_s": round(rate, 2), "final_train_loss": round(loss, 4)}
    ratio = result["reduce-overhead"]["steps_per_s"] / max(result["default"]["steps_per_s"], 1e-9)
    result["speedup"] = round(ratio, 3)
    text = "\n".join(["| compile_mode | steps | steps/s (past the first quarter) | last train loss |",
                      "|---|---:|---:|---:|",
                      *(f"| {m} | {r['steps']} | {r['steps_per_s']} | {r['final_train_loss']} |"
                        for m, r in result.items() if isinstance(r, dict)),
                      "", f"CUDA graphs / default: {ratio:.2f}x steps/s", ""])
    return text, result


RUNNERS = {"trm": trm_section, "lm": lm_section, "train": train_section, "cudagraphs": cudagraphs_section}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for gpu_check.json, gpu_check.md and the runs")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU: checks the script only")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    parser.add_argument("--train-minutes", type=float, default=5.0)
    parser.add_argument("--eval-every", type=int, default=500, help="training steps between evaluations")
    parser.add_argument("--num-train", type=int, default=1000)
    parser.add_argument("--num-test", type=int, default=1000)
    parser.add_argument("--num-aug", type=int, default=100)
    parser.add_argument("--min-difficulty", type=int, default=22,
                        help="hard puzzles: our solver's guesses >= this (22: ~0.3 CPU-s a puzzle, bench/RESULTS.md)")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if unknown := [s for s in sections if s not in RUNNERS]:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --dry-run on a CPU")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "dry_run": args.dry_run, "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else trm_throughput.cpu_name(),
        "torch": torch.__version__, "load_start": [round(x, 2) for x in os.getloadavg()], "sections": {},
    }
    lines = [f"# GPU check ({'dry run on the CPU: plumbing only, figures mean nothing' if args.dry_run else 'GPU'})",
             "", f"{report['date']}, {report['device_name']}, torch {report['torch']}", "",
             "| section | status | seconds | peak memory MiB |", "|---|---|---:|---:|"]
    bodies = []
    for name in sections:
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        try:
            text, result = RUNNERS[name](args, out)
            status = "ok"
        except Exception as err:  # one failing section must not cost the others' figures
            text, result, status = f"failed: {err!r}\n", {"error": traceback.format_exc()}, "failed"
        seconds, peak = time.perf_counter() - started, peak_memory_mb(device)
        report["sections"][name] = {"status": status, "seconds": round(seconds, 1), "peak_memory_mb": round(peak, 1),
                                    "result": result}
        lines.append(f"| {name} | {status} | {seconds:.0f} | {peak:.0f} |")
        bodies.append(f"## {name}\n\n{text}")
        print(f"{name}: {status} in {seconds:.0f} s, peak memory {peak:.0f} MiB", flush=True)
    report["load_end"] = [round(x, 2) for x in os.getloadavg()]
    atomic_write_text(out / "gpu_check.json", json.dumps(report, indent=2, default=str) + "\n")
    atomic_write_text(out / "gpu_check.md", "\n".join(lines) + "\n\n" + "\n".join(bodies))
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    return 0 if all(s["status"] == "ok" for s in report["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
