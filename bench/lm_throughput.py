"""LM training throughput: smoltrain's decoder and step against an eager port of MiniMind's, tokens/s.

    python bench/lm_throughput.py [--shapes minimind2-26m,lm-tiny-cpu] [--threads 1] [--batch B] [--seq-len T]
                                  [--steps N] [--warmup W] [--rounds R] [--compile] [--device cpu|cuda]
                                  [--no-verify] [--profile] [--json OUT]

One timed step = one training step on a fixed random batch: forward, loss, backward, gradient clipping at
1.0 and an AdamW step, then ``zero_grad``. Implementations per shape:

* (a) ``bench/reference_minimind.py``: an eager port of MiniMind's model and ``train_pretrain.py`` step (the
  baseline): ``repeat_kv`` copies, the shifted-logits copy, ``clip_grad_norm_`` and ``AdamW`` with torch's
  defaults (per-parameter loops on the CPU);
* (b) smoltrain's ``LMForCausalLM`` with the shape's arch preset, stepped as ``LMFamily.train_step`` and the
  trainer do it: ``targets`` (the packed windows' pre-shifted labels), ``clip_grad_norm_(foreach=True)``,
  the optimizer from ``build_lm_optimizer`` (fused AdamW), ``zero_grad(set_to_none=True)``, and the
  trainer's one host sync per step (loss and gradient norm);
* (c) with ``--compile``: (b) under ``torch.compile`` as ``compile=True`` runs it (compile time untimed).

(a) and (b) hold the same parameters (checked unless ``--no-verify``: (b) loads (a)'s weights and must give
the same loss and gradients). Shapes: ``minimind2-26m`` (25.83M, MiniMind2-small; batch 8 x 256 tokens on the
CPU as in llm.md §9, 32 x 340 on CUDA as MiniMind's recipe) and ``lm-tiny-cpu`` (the CPU recipe's arch, vocab
6400 as MiniMind's tokenizer, batch 32 x 128). fp32 on the CPU; bf16 autocast on CUDA, where an MFU estimate
is printed too: ``(6 N + 12 L H d T) * tokens/s`` over the H100's 989 TFLOP/s dense bf16 peak (N = parameters
that multiply activations, i.e. all of them with the tied head counted once; the second term is attention's
score and value matmuls, forward and backward, without discounting the causal half, as PaLM's appendix B).
Every implementation runs ``max(1, warmup)`` untimed steps first; then rounds alternate between the
implementations (rotating their order) so machine noise hits all of them, each round re-running ``warmup``
untimed steps before its timed ones. Reported: the median tokens/s (wall clock and per second of process CPU
time, the steadier one on a shared machine with one thread) and their ratios to (a), plus the median over
rounds of the per-round CPU-time ratio (steps run back to back, so under the same load). Tokens = B x T
input positions per step.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import reference_minimind as ref  # bench/ is on sys.path when this file runs as a script
from smoltrain.families import load_config
from smoltrain.families.lm import LMArchConfig, build_lm_optimizer
from smoltrain.models.lm import LMConfig, LMForCausalLM

LR, WEIGHT_DECAY, GRAD_CLIP = 5e-4, 0.01, 1.0  # MiniMind's pretraining values (torch AdamW's default decay)
H100_BF16_DENSE_FLOPS = 989e12


@dataclass
class Shape:
    name: str  # an arch preset (recipes/arch/NAME.yaml)
    title: str
    vocab_size: int
    batch: dict[str, int]  # per device type
    seq_len: dict[str, int]
    schedule: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # (steps, warmup, rounds)


SHAPES = {
    "minimind2-26m": Shape("minimind2-26m", "MiniMind2-small (26M), its pretraining shape", 6400,
                           batch={"cpu": 8, "cuda": 32}, seq_len={"cpu": 256, "cuda": 340},
                           schedule={"cpu": (1, 0, 8), "cuda": (20, 5, 5)}),
    "lm-tiny-cpu": Shape("lm-tiny-cpu", "the CPU recipe's decoder (lm-pretrain-cpu)", 6400,
                         batch={"cpu": 32, "cuda": 32}, seq_len={"cpu": 128, "cuda": 128},
                         schedule={"cpu": (5, 1, 8), "cuda": (50, 10, 5)}),
}


def lm_config(shape: Shape) -> LMConfig:
    arch = load_config(None, [f"arch={shape.name}", f"arch.vocab_size={shape.vocab_size}"]).arch
    assert isinstance(arch, LMArchConfig)
    return arch.to_model_config()


def reference_config(config: LMConfig) -> ref.MiniMindConfig:
    if config.use_moe or not config.tie_word_embeddings or config.head_dim not in (None, config.hidden_size
                                                                                    // config.num_attention_heads):
        raise ValueError("the MiniMind port covers dense, tied models with head_dim = hidden / heads")
    return ref.MiniMindConfig(
        hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_key_value_heads,
        intermediate_size=config.resolved_intermediate_size, vocab_size=config.vocab_size,
        rms_norm_eps=config.rms_norm_eps, rope_theta=config.rope_theta, dropout=config.dropout,
        qk_norm=config.qk_norm,
    )


# ---------------------------------------------------------------------------------------------------
# The implementations under test
# ---------------------------------------------------------------------------------------------------


@dataclass
class Impl:
    key: str
    label: str
    step: Callable[[torch.Tensor], float | torch.Tensor]  # one training step on a [B, T + 1] token batch
    module: torch.nn.Module
    rounds: list[float] = field(default_factory=list)  # tokens per wall-clock second
    cpu_rounds: list[float] = field(default_factory=list)  # tokens per second of this process's CPU time

    @property
    def median(self) -> float:
        return statistics.median(self.rounds)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_rounds)


def autocast(device: torch.device) -> Any:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def reference_impl(config: LMConfig, device: torch.device) -> Impl:
    model = ref.MiniMindForCausalLM(reference_config(config)).to(device)
    model.train()
    step = ref.make_train_step(model, lr=LR, grad_clip=GRAD_CLIP, device_type=device.type)
    # MiniMind's pretrain batches are (input_ids, labels = input_ids with pads at -100); the model shifts.
    return Impl("a", "MiniMind (eager port)", lambda rows: step(rows[:, :-1], rows[:, :-1]), model)


def smoltrain_impl(config: LMConfig, device: torch.device, compile: bool = False) -> Impl:
    model = LMForCausalLM(config).to(device)
    model.train()
    run = torch.compile(model) if compile else model
    optimizer = build_lm_optimizer(model, "adamw", LR, (0.9, 0.999), WEIGHT_DECAY)
    params = list(model.parameters())

    def step(rows: torch.Tensor) -> float:
        # TokenWindows rows: T + 1 tokens give T inputs and T shifted targets (every position scored).
        with autocast(device):
            loss = run(rows[:, :-1], targets=rows[:, 1:]).loss
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP, foreach=True)
        loss_value, _ = torch.stack([loss.detach(), norm.float()]).tolist()  # the trainer's one host sync
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss_value

    key, label = ("c", "smoltrain, torch.compile") if compile else ("b", "smoltrain (eager)")
    return Impl(key, label, step, model)


# Same math, fp32, same CPU: the two sides order some float sums differently (composite vs fused RMSNorm,
# materialised vs broadcast K/V heads, the shifted-logits copy), so they agree to rounding only: measured ~1e-7
# relative on the loss and ~1e-6 of the largest gradient. The bounds leave two orders of magnitude for other CPUs
# and BLAS builds, yet any real difference (a shifted mask, a missing layer, another scale) is far above them.
LOSS_RTOL, GRAD_RTOL = 1e-5, 1e-3


def same_math_differences(loss_a: torch.Tensor, loss_b: torch.Tensor,
                          grads: list[tuple[torch.Tensor | None, torch.Tensor | None]]) -> tuple[float, float]:
    """(relative loss difference, largest gradient difference relative to that tensor's largest (a) gradient)."""
    d_loss = float((loss_a - loss_b).detach().abs() / loss_a.detach().abs())
    d_grad = 0.0
    for g_a, g_b in grads:
        assert g_a is not None and g_b is not None
        d_grad = max(d_grad, float((g_a - g_b).abs().max() / g_a.abs().max().clamp_min(1e-12)))
    return d_loss, d_grad


def verify_same_math(config: LMConfig, device: torch.device) -> str:
    """(b) loads (a)'s weights: the loss and every gradient of one fp32 forward/backward must agree.

    Both score the same T - 1 positions here (HF-style unshifted labels on both sides), so the only
    differences are rounding: the reference's composite RMSNorm and materialised K/V heads against ours.
    """
    torch.manual_seed(0)
    reference = ref.MiniMindForCausalLM(reference_config(config)).to(device)
    ours = LMForCausalLM(config).to(device)
    ours.load_state_dict(reference.state_dict(), strict=True)
    ids = torch.randint(0, config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(1)).to(device)
    ids_labels = ids.clone()
    ids_labels[1, 40:] = -100  # a padded tail, as MiniMind's pretrain rows have
    loss_a = reference(ids, labels=ids_labels).loss
    loss_a.backward()
    loss_b = ours(ids, labels=ids_labels).loss
    loss_b.backward()
    grads_a = dict(reference.named_parameters())
    d_loss, d_grad = same_math_differences(loss_a, loss_b, [(grads_a[name].grad, p.grad)
                                                             for name, p in ours.named_parameters()])
    if d_loss > LOSS_RTOL or d_grad > GRAD_RTOL:
        raise AssertionError(f"(b) does not compute what (a) computes: relative loss / gradient differences "
                             f"{d_loss:.1e} / {d_grad:.1e}")
    return f"same-math check (fp32, (b) loaded (a)'s weights): relative loss / max gradient difference " \
           f"{d_loss:.1e} / {d_grad:.1e}"


# ---------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_round(impl: Impl, rows: Any, steps: int, warmup: int, device: torch.device,
               tokens_per_step: int | None = None) -> tuple[float, float]:
    """Training tokens/s over ``steps`` steps after ``warmup`` untimed ones, per wall-clock second and per second
    of this process's CPU time. Tokens per step: ``tokens_per_step``, else B x T input positions of a
    ``[B, T + 1]`` token batch ``rows`` (whatever ``impl.step`` takes: the fine-tuning bench passes a batch dict).

    On a shared CPU the second is the steadier one: time the scheduler gives to other processes is not
    counted (cache and memory-bandwidth contention still is). With one torch thread it is the step's own
    compute; with more it adds the threads' times, so compare implementations at the same thread count.
    """
    for _ in range(warmup):
        impl.step(rows)
    sync(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        loss = impl.step(rows)
    sync(device)
    elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    if device.type == "cuda":
        elapsed_cpu = elapsed  # the host's CPU time says nothing about GPU work: report wall clock in both
    if not math.isfinite(float(loss)):
        raise RuntimeError(f"{impl.label}: non-finite loss")
    if tokens_per_step is None:
        tokens_per_step = rows.shape[0] * (rows.shape[1] - 1)
    tokens = steps * tokens_per_step
    return tokens / elapsed, tokens / elapsed_cpu


def alternate_rounds(impls: list[Impl], batch: Any, steps: int, warmup: int, rounds: int, device: torch.device,
                     tag: str, tokens_per_step: int | None = None) -> list[float]:
    """Time ``rounds`` rounds of every implementation on ``batch``, rotating their order each round so machine
    noise hits all of them; appends to each ``Impl.rounds`` / ``cpu_rounds`` and returns the 1-min load average
    read before each timed window. Every implementation first runs ``max(1, warmup)`` untimed steps."""
    for impl in impls:  # first steps (allocator growth, compilation) are never timed
        for _ in range(max(1, warmup)):
            impl.step(batch)
    loads = []
    for r in range(rounds):
        order = impls[r % len(impls):] + impls[: r % len(impls)]
        for impl in order:
            loads.append(os.getloadavg()[0])
            wall, cpu = time_round(impl, batch, steps, warmup, device, tokens_per_step)
            impl.rounds.append(wall)
            impl.cpu_rounds.append(cpu)
            print(f"[{tag}] round {r + 1}/{rounds} ({impl.key}) {impl.label}: {wall:,.0f} tokens/s, "
                  f"{cpu:,.0f} per CPU second (load {loads[-1]:.2f})", file=sys.stderr, flush=True)
    return loads


def paired_cpu_ratios(impls: list[Impl]) -> dict[str, float]:
    """Per implementation, the median over rounds of its CPU-time rate over the first implementation's in the same
    round: rounds run the implementations back to back, so a round's ratio compares steps under the same load."""
    return {i.key: statistics.median(x / y for x, y in zip(i.cpu_rounds, impls[0].cpu_rounds, strict=True))
            for i in impls}


def flops_per_token(config: LMConfig, params: int, seq_len: int) -> float:
    attention = 12 * config.num_hidden_layers * config.num_attention_heads * config.resolved_head_dim * seq_len
    return 6 * params + attention


def profile(impl: Impl, rows: torch.Tensor, device: torch.device, top: int = 15) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    impl.step(rows)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        impl.step(rows)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return f"--- profile of one step: {impl.label}\n" + prof.key_averages().table(sort_by=sort, row_limit=top)


def run_shape(shape: Shape, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    config = lm_config(shape)
    batch = args.batch or shape.batch[device.type]
    seq_len = args.seq_len or shape.seq_len[device.type]
    steps, warmup, rounds = shape.schedule[device.type]
    steps, rounds = args.steps or steps, args.rounds or rounds
    warmup = warmup if args.warmup is None else args.warmup
    check = "same-math check skipped (--no-verify)" if args.no_verify else verify_same_math(config, device)
    print(f"[{shape.name}] batch {batch} x seq {seq_len}: {rounds} rounds x ({warmup} warm-up + {steps} timed) "
          f"steps per implementation; {check}", file=sys.stderr, flush=True)

    torch.manual_seed(0)
    impls = [reference_impl(config, device), smoltrain_impl(config, device)]
    if args.compile:
        impls.append(smoltrain_impl(config, device, compile=True))
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(0, config.vocab_size, (batch, seq_len + 1), generator=g).to(device)
    if args.profile:
        for impl in impls:
            print(profile(impl, rows, device), file=sys.stderr, flush=True)
    loads = alternate_rounds(impls, rows, steps, warmup, rounds, device, shape.name)
    params = sum(p.numel() for p in impls[1].module.parameters())
    paired = paired_cpu_ratios(impls)
    result: dict[str, Any] = {
        "shape": shape.name, "title": shape.title, "batch": batch, "seq_len": seq_len, "params": params,
        "steps": steps, "warmup": warmup, "rounds": rounds, "check": check,
        "loadavg_1min_min": min(loads), "loadavg_1min_max": max(loads),
        "impls": [{"key": i.key, "label": i.label, "tokens_per_s": i.rounds, "median": i.median,
                   "tokens_per_cpu_s": i.cpu_rounds, "cpu_median": i.cpu_median, "paired_cpu_ratio": paired[i.key]}
                  for i in impls],
    }
    if device.type == "cuda":
        per_token = flops_per_token(config, params, seq_len)
        for entry in result["impls"]:
            entry["mfu"] = entry["median"] * per_token / H100_BF16_DENSE_FLOPS
        result["flops_per_token"] = per_token
    return result


def markdown(results: list[dict[str, Any]], header: dict[str, Any]) -> str:
    lines = [
        f"### LM training throughput ({header['date']})", "", f"`{header['command']}`", "",
        f"- torch {header['torch']}, {header['device_name']}, torch threads {header['threads']}, {header['dtype']}",
        f"- load average (1/5/15 min) at start {header['load_start']}, at end {header['load_end']} "
        f"({header['cores']} cores)",
        "- one step = forward + loss + backward + clip 1.0 + AdamW step + zero_grad on a fixed random batch; "
        "median of alternating rounds",
    ]
    for res in results:
        base = next(i for i in res["impls"] if i["key"] == "a")
        mfu = "mfu" in res["impls"][0]
        lines += ["", f"#### `{res['shape']}`: {res['title']}", "",
                  f"{res['params']:,} parameters, batch {res['batch']} x {res['seq_len']} tokens; {res['rounds']} "
                  f"rounds x {res['steps']} timed steps (+{res['warmup']} warm-up); 1-min load during rounds "
                  f"{res['loadavg_1min_min']:.2f}-{res['loadavg_1min_max']:.2f}; {res['check']}.", "",
                  "| implementation | tokens/s (median) | ms/step | rounds (tokens/s) | vs (a) | tokens per CPU s "
                  "(median) | vs (a), CPU time | vs (a), CPU time, median of per-round ratios |"
                  + (" MFU |" if mfu else ""),
                  "|---|---:|---:|---|---:|---:|---:|---:|" + ("---:|" if mfu else "")]
        for impl in res["impls"]:
            ms = 1000 * res["batch"] * res["seq_len"] / impl["median"]
            rounds = ", ".join(f"{x:,.0f}" for x in impl["tokens_per_s"])
            row = (f"| ({impl['key']}) {impl['label']} | {impl['median']:,.0f} | {ms:,.1f} | {rounds} | "
                   f"{impl['median'] / base['median']:.2f}x | {impl['cpu_median']:,.0f} | "
                   f"{impl['cpu_median'] / base['cpu_median']:.2f}x | {impl['paired_cpu_ratio']:.2f}x |")
            lines.append(row + (f" {100 * impl['mfu']:.1f}% |" if mfu else ""))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="minimind2-26m,lm-tiny-cpu", help=f"comma-separated: {', '.join(SHAPES)}")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (both implementations)")
    parser.add_argument("--batch", type=int, default=None, help="rows per step (default: per shape and device)")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per row (default: per shape and device)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps before each round")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per implementation")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--compile", action="store_true", help="also time (c): smoltrain under torch.compile")
    parser.add_argument("--no-verify", action="store_true", help="skip the (a) == (b) same-math check")
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table of one step of each")
    parser.add_argument("--json", default=None, help="also write the raw results here")
    args = parser.parse_args()

    names = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in names if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shapes {unknown}; choose from {sorted(SHAPES)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    torch.set_num_threads(args.threads)
    header: dict[str, Any] = {
        "command": "python " + shlex.join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "threads": torch.get_num_threads(),
        "dtype": "bf16 autocast" if device.type == "cuda" else "fp32",
        "load_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "cores": os.cpu_count(),
    }
    results = [run_shape(SHAPES[name], args, device) for name in names]
    header["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(markdown(results, header))
    if args.json:
        Path(args.json).write_text(json.dumps({"header": header, "results": results}, indent=2))


if __name__ == "__main__":
    main()
