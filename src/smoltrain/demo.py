"""`smoltrain demo`: a training run that works on a laptop CPU in minutes and shows what it learned."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from smoltrain.api import load
from smoltrain.config import load_config
from smoltrain.train.trainer import Trainer


def run_demo(run_dir: str = "runs/demo", minutes: float | None = None) -> int:
    """Train the toy sorter on the CPU, then show held-out sequences and the model's answers."""
    path = Path(run_dir)
    if path.exists():
        shutil.rmtree(path)
    overrides = [f"run_dir={path}", "resume=none"]
    if minutes:
        overrides.append(f"max_minutes={minutes}")
    cfg = load_config("toy", overrides)
    print(f"Training a {cfg.arch.task}er of {cfg.arch.seq_len} digits on the CPU ...")  # type: ignore[attr-defined]
    summary = Trainer(cfg).fit()
    run = load(path, device="cpu")
    inputs, labels = run.family.eval_examples()  # type: ignore[attr-defined]
    with torch.inference_mode():
        predictions = run.model(inputs[:5]).argmax(-1)
    print(f"\nHeld-out exact accuracy: {100 * summary['eval']['exact_accuracy']:.1f}% "
          f"after {summary['step']} steps ({summary['seconds_this_session']:.0f} s)")
    for x, y, p in zip(inputs[:5].tolist(), labels[:5].tolist(), predictions.tolist(), strict=True):
        mark = "ok" if p == y else "WRONG"
        print(f"  input {x}  ->  model {p}  [{mark}]")
    print(f"\nRun directory: {path} (config, checkpoints, metrics.jsonl)")
    return 0
