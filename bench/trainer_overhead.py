"""Steps/s of the toy model through the Trainer against a bare PyTorch loop doing the same arithmetic.

    python bench/trainer_overhead.py [--steps 300] [--rounds 3] [--threads 2]

Both sides run the same model, batches and AdamATan2 optimizer on the CPU in fp32. The bare loop is
forward, loss, backward, step, zero_grad; the trainer adds what it always does (schedule, gradient norm
and non-finite check, metric sums, logging every 50 steps). Rounds alternate between the two so that
machine noise hits both; the median of each is reported.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from smoltrain.families import load_config
from smoltrain.families.toy import ToyModel, ToyStream, sequence_scores
from smoltrain.optim import AdamATan2
from smoltrain.train.trainer import Trainer, seed_everything

OVERRIDES = ["arch.seq_len=16", "arch.hidden_size=64", "arch.task=sort", "global_batch_size=64", "lr=1e-3",
             "log_every=50", "device=cpu", "resume=none", "eval_every=1000000"]


def trainer_steps_per_s(steps: int, warmup: int) -> float:
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = load_config("toy", [*OVERRIDES, f"run_dir={run_dir}", f"max_steps={steps + warmup}"])
        marks: dict[int, float] = {}
        trainer = Trainer(cfg, callbacks=[lambda t: marks.__setitem__(t.step, time.perf_counter())])
        trainer.fit()
    return steps / (marks[steps + warmup] - marks[warmup])


def bare_steps_per_s(steps: int, warmup: int) -> float:
    cfg = load_config("toy", [*OVERRIDES, "run_dir=/nonexistent"])
    seed_everything(cfg.seed)
    model = ToyModel(cfg.arch)  # type: ignore[arg-type]
    opt = AdamATan2(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    stream = ToyStream(cfg.arch, cfg.seed, cfg.global_batch_size, 0, cfg.global_batch_size)  # type: ignore[arg-type]
    for i in range(steps + warmup):
        if i == warmup:
            start = time.perf_counter()
        batch = next(stream)
        ce, _, _ = sequence_scores(model(batch["inputs"]), batch["labels"])
        (ce.sum() / cfg.global_batch_size).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bare, trainer = [], []
    for _ in range(args.rounds):
        bare.append(bare_steps_per_s(args.steps, args.warmup))
        trainer.append(trainer_steps_per_s(args.steps, args.warmup))
    b, t = statistics.median(bare), statistics.median(trainer)
    print(f"bare loop: {b:.1f} steps/s  (rounds: {', '.join(f'{x:.1f}' for x in bare)})")
    print(f"trainer:   {t:.1f} steps/s  (rounds: {', '.join(f'{x:.1f}' for x in trainer)})")
    print(f"trainer overhead: {100 * (b / t - 1):+.1f}% time per step")


if __name__ == "__main__":
    main()
