"""Activation checkpointing (``activation_checkpointing=true``): the memory it saves and the time it costs.

    python bench/activation_checkpointing.py [--threads 1] [--rounds R] [--steps N] [--device cpu|cuda]
                                             [--cases lm,trm] [--smoke] [--json OUT]

Cases, each run with checkpointing off and on from the same seed:

* ``lm``: the ``minimind2-26m`` decoder (25.83M, the ``lm-pretrain`` recipe's shape); every decoder layer is
  checkpointed. Memory at the recipe's micro-batch, 32 rows x 340 tokens (``global_batch_size`` 256 /
  ``grad_accum_steps`` 8); time at 8 x 256 on the CPU (``lm_throughput.py``'s CPU shape: 32 x 340 takes a
  minute a step on one thread) and at the recipe's 32 x 340 on CUDA.
* ``trm``: the ``trm`` arch (TRM-Att, hidden 512, T=3, n=6, two blocks) on Sudoku's 81 cells + 16 prefix positions,
  one ACT step through ``ACTLossHead``; the network call of every recursion step with gradient is checkpointed.
  Memory and time at 8 rows on the CPU, 96 (``trm-sudoku``'s 768 / 8 GPUs) on CUDA.

Memory is the activations autograd keeps between forward and backward: the bytes of every distinct tensor storage
saved for backward (``torch.autograd.graph.saved_tensors_hooks``; parameters excluded), counted exactly and the
same on any device. A checkpointed region saves through its own hooks (the inner ones win), so what it keeps, its
inputs, is what gets counted. The peak of a step is higher by what is alive besides (parameters, gradients,
optimizer state, one layer's recomputed activations during backward); on CUDA ``torch.cuda.max_memory_allocated``
over a whole step is reported as well. One timed step = forward, backward, fused AdamW step, ``zero_grad``. Every
round runs both settings back to back, alternating which goes first, each with one untimed step first; reported are
the medians of wall-clock and process-CPU seconds per step and the median over rounds of the on/off ratio (steps
run back to back see about the same load: the steadier number on a shared machine). ``--smoke`` runs tiny shapes
once, to check the script.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from smoltrain.families import load_config
from smoltrain.models.lm import LMForCausalLM
from smoltrain.models.trm import TRM
from smoltrain.models.trm_loss import ACTLossHead
from smoltrain.optim import build_adamw


@dataclass
class Case:
    name: str
    title: str
    # checkpointing on? -> (model, the loss of one step), at the memory shape and at the timing shape
    build_memory: Callable[[bool], tuple[nn.Module, Callable[[], torch.Tensor]]]
    build_time: Callable[[bool], tuple[nn.Module, Callable[[], torch.Tensor]]]
    memory_shape: tuple[int, int]  # rows x tokens
    time_shape: tuple[int, int]
    results: dict[str, Any] = field(default_factory=dict)


def lm_case(device: torch.device, smoke: bool) -> Case:
    arch_name, vocab = ("lm-tiny-cpu", 256) if smoke else ("minimind2-26m", 6400)
    config = load_config(None, [f"arch={arch_name}", f"arch.vocab_size={vocab}"]).arch.to_model_config()  # type: ignore[attr-defined]
    seq = 32 if smoke else 340
    memory_rows = 2 if smoke else 32
    time_rows, time_seq = (2, 32) if smoke else ((8, 256) if device.type == "cpu" else (32, 340))

    def build(enabled: bool, rows: int, length: int) -> tuple[nn.Module, Callable[[], torch.Tensor]]:
        torch.manual_seed(0)
        model = LMForCausalLM(config).to(device).train()
        model.set_activation_checkpointing(enabled)
        ids = torch.randint(0, vocab, (rows, length + 1), generator=torch.Generator().manual_seed(1)).to(device)

        def loss() -> torch.Tensor:
            with autocast(device):
                return model(ids[:, :-1], targets=ids[:, 1:]).loss
        return model, loss

    return Case("lm", f"{arch_name} decoder, {config.num_hidden_layers} layers",
                lambda enabled: build(enabled, memory_rows, seq), lambda enabled: build(enabled, time_rows, time_seq),
                (memory_rows, seq), (time_rows, time_seq))


def trm_case(device: torch.device, smoke: bool) -> Case:
    rows = 2 if smoke else (8 if device.type == "cpu" else 96)
    overrides = ["arch=trm", "arch.seq_len=81", "arch.vocab_size=11", "arch.num_puzzle_identifiers=1"]
    if smoke:
        overrides += ["arch.hidden_size=32", "arch.num_heads=2", "arch.H_cycles=2", "arch.L_cycles=2",
                      "arch.L_layers=1", "arch.expansion=2"]
    arch = load_config(None, overrides).arch
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    config = arch.to_model_config(batch_size=rows, forward_dtype=dtype)  # type: ignore[attr-defined]

    def build(enabled: bool) -> tuple[nn.Module, Callable[[], torch.Tensor]]:
        torch.manual_seed(0)
        model = TRM(config)
        model.set_activation_checkpointing(enabled)
        head = ACTLossHead(model, loss_type="stablemax_cross_entropy").to(device).train()
        g = torch.Generator().manual_seed(1)
        batch = {"inputs": torch.randint(1, 11, (rows, 81), generator=g).to(device),
                 "labels": torch.randint(1, 11, (rows, 81), generator=g).to(device),
                 "puzzle_identifiers": torch.zeros(rows, dtype=torch.int32, device=device)}

        def loss() -> torch.Tensor:
            return head(head.initial_carry(batch), batch).loss
        return head, loss

    title = (f"TRM-Att, hidden {config.hidden_size}, T={config.H_cycles}, n={config.L_cycles}, "
             f"{config.L_layers} blocks")
    shape = (rows, config.total_seq_len)
    return Case("trm", title, build, build, shape, shape)


def autocast(device: torch.device) -> Any:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def saved_activation_bytes(model: nn.Module, loss_fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of the distinct storages autograd saves for backward in one forward (parameters excluded)."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn()
    del loss  # frees the graph; nothing is backpropagated
    return sum(saved.values())


def timed_steps(model: nn.Module, loss_fn: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer,
                steps: int, device: torch.device) -> tuple[float, float]:
    """(wall-clock, process-CPU) seconds per step over ``steps`` steps, after one untimed step."""
    def step() -> None:
        loss_fn().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cuda_peak_bytes(case: Case, enabled: bool, device: torch.device) -> int:
    model, loss_fn = case.build_time(enabled)
    optimizer = build_adamw([p for p in model.parameters() if p.requires_grad], 5e-4, (0.9, 0.95), 0.01)
    loss_fn().backward()
    optimizer.step()  # optimizer state allocated before the measured step
    optimizer.zero_grad(set_to_none=True)
    torch.cuda.reset_peak_memory_stats(device)
    loss_fn().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return torch.cuda.max_memory_allocated(device)


def run_case(case: Case, device: torch.device, rounds: int, steps: int) -> None:
    memory = {}
    for enabled in (False, True):
        model, loss_fn = case.build_memory(enabled)
        memory["on" if enabled else "off"] = saved_activation_bytes(model, loss_fn)
        del model, loss_fn
    case.results["saved_activation_bytes"] = memory
    case.results["saved_ratio_on_over_off"] = memory["on"] / memory["off"]
    if device.type == "cuda":
        case.results["cuda_peak_bytes"] = {key: cuda_peak_bytes(case, key == "on", device) for key in ("off", "on")}

    built = {}
    for key in ("off", "on"):
        model, loss_fn = case.build_time(key == "on")
        optimizer = build_adamw([p for p in model.parameters() if p.requires_grad], 5e-4, (0.9, 0.95), 0.01)
        built[key] = (model, loss_fn, optimizer)
    per_round: list[dict[str, tuple[float, float]]] = []
    for r in range(rounds):
        order = ("off", "on") if r % 2 == 0 else ("on", "off")
        times = {key: timed_steps(*built[key], steps, device) for key in order}
        per_round.append(times)
        print(f"  {case.name} round {r + 1}/{rounds} ({order[0]} first): "
              f"off {times['off'][0]:.3f} s/step, on {times['on'][0]:.3f} s/step", flush=True)
    case.results["wall_s_per_step"] = {k: statistics.median(t[k][0] for t in per_round) for k in ("off", "on")}
    case.results["cpu_s_per_step"] = {k: statistics.median(t[k][1] for t in per_round) for k in ("off", "on")}
    case.results["wall_ratio_on_over_off"] = statistics.median(t["on"][0] / t["off"][0] for t in per_round)
    case.results["cpu_ratio_on_over_off"] = statistics.median(t["on"][1] / t["off"][1] for t in per_round)


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def table(cases: list[Case], device: torch.device) -> str:
    lines = ["| case | saved activations off -> on (rows x tokens) | ratio | time off -> on, s/step (rows x tokens) "
             "| slowdown wall / CPU |", "|---|---|---|---|---|"]
    for case in cases:
        r = case.results
        mem, wall = r["saved_activation_bytes"], r["wall_s_per_step"]
        ms, ts = case.memory_shape, case.time_shape
        lines.append(f"| {case.title} | {mib(mem['off'])} -> {mib(mem['on'])} ({ms[0]} x {ms[1]}) "
                     f"| {r['saved_ratio_on_over_off']:.3f} | {wall['off']:.3f} -> {wall['on']:.3f} "
                     f"({ts[0]} x {ts[1]}) | {r['wall_ratio_on_over_off']:.2f}x / {r['cpu_ratio_on_over_off']:.2f}x |")
        if device.type == "cuda":
            peak = r["cuda_peak_bytes"]
            lines.append(f"| ... CUDA peak of a step | {mib(peak['off'])} -> {mib(peak['on'])} | "
                         f"{peak['on'] / peak['off']:.3f} | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=None, help="default 4 (1 with --smoke)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round and setting (default 2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", default="lm,trm")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, one round: checks the script")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rounds = args.rounds or (1 if args.smoke else 4)
    steps = args.steps or (1 if args.smoke else 2)
    builders = {"lm": lm_case, "trm": trm_case}
    cases = [builders[name](device, args.smoke) for name in args.cases.split(",")]
    load_before = os.getloadavg()
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}; "
          f"torch {torch.__version__}, {args.threads} thread(s), {device}", flush=True)
    for case in cases:
        run_case(case, device, rounds, steps)
    load_after = os.getloadavg()
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    print(table(cases, device))
    if args.json:
        report = {"device": str(device), "threads": args.threads, "rounds": rounds, "steps": steps,
                  "smoke": args.smoke, "torch": torch.__version__, "load_before": list(load_before),
                  "load_after": list(load_after),
                  "cases": {case.name: {"title": case.title, "memory_shape": case.memory_shape,
                                        "time_shape": case.time_shape, **case.results} for case in cases}}
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
