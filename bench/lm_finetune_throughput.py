"""LM fine-tuning throughput: smoltrain's SFT and LoRA trainer steps against an eager port of MiniMind's, tokens/s.

    python bench/lm_finetune_throughput.py [--stages sft,lora] [--shapes lm-tiny-cpu,minimind2-26m] [--threads 1,2]
                                           [--steps N] [--warmup W] [--rounds R] [--smoke] [--json OUT]

The data is built the way a user builds it: ``smoltrain data instructions`` (2,000 SFT conversations),
``smoltrain tokenizer train`` (byte-level BPE, vocab 6,400 as MiniMind's, on those conversations plus the
``smoltrain demo lm`` Shakespeare corpus, since 2,000 short conversations alone hold only ~1,100 merges' worth
of text) and ``smoltrain data sft`` (token + assistant-mask shards), in a temporary directory. Every
implementation trains on the same fixed batch of that dataset's rows: B conversations, each right-padded to T
tokens (as MiniMind's ``SFTDataset`` pads to ``max_length``), supervised on the assistant tokens only.

Implementations, per stage and shape:

* ``sft``: (a) ``bench/reference_minimind.py``'s port of ``train_full_sft.py`` (its loop is the pretraining one:
  model-side shift, ``clip_grad_norm_`` and torch-default ``AdamW`` over every parameter, lr 1e-5) on
  ``SFTDataset``-style labels made from the same rows; (b) smoltrain's real trainer: a ``Trainer`` built from
  the ``lm-sft-cpu`` recipe at the shape (``arch=SHAPE``, the batch and ``arch.seq_len``, fp32, no compile),
  each timed step one ``Trainer.train_step`` (the family's step, backward, the clipped gradient norm, the one
  host sync, the schedule, the fused AdamW step and ``zero_grad``);
* ``lora``: (a) the port's LoRA (rank 16 on the square layers, i.e. ``q_proj`` and ``o_proj``, no scaling,
  AdamW and clipping over the adapters only, lr 1e-4) on the same base weights; (b) smoltrain's trainer on
  the ``lm-lora-cpu`` recipe with ``lora.targets=[q_proj,o_proj]``: the same adapters, rank 16 and alpha 16
  (scaling 1, so the same function as (a)); (c) the ``lm-lora-cpu`` recipe as it is (``all-linear``: rank-16
  adapters on all seven projections of every layer, so more adapter work per step than (a) and (b)). The
  LoRA trainers start from a base run made by one ``Trainer.fit`` step of (b)'s SFT config (``init_from``
  needs a run), and (a) loads that base's weights and (b)'s adapters.

Before timing, the step-0 loss (and every trained parameter's gradient) of (a) and (b) on the same batch and
weights must agree (``lm_throughput.LOSS_RTOL`` / ``GRAD_RTOL``: both fp32 on this CPU, differing only in the
order of float sums). Both sides then see a batch whose last target column is -100: MiniMind's labels, shifted
inside its model, cannot score the position after the last input token, which smoltrain's pre-shifted targets
do. For LoRA the check first sets both sides' ``B`` to the same random values (``B = 0`` would make the
adapters invisible) and reports how far the adapters move the loss, against the two sides' difference.

Timing as ``lm_throughput.py``: every implementation runs untimed warm-up steps, then rounds alternate between
the implementations (rotating their order), each round re-running ``warmup`` untimed steps before its timed
ones; reported are medians of the rounds' tokens/s (B x T positions per step, padding included: both sides
compute on it) per wall-clock and per CPU second, their ratios to (a), the median of per-round CPU-time
ratios, and the supervised tokens/s (tokens/s x the batch's share of supervised targets). Thread counts run one
after the other on the same models.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import lm_throughput as lmt  # bench/ is on sys.path when this file runs as a script
import reference_minimind as ref
from smoltrain.families import load_config
from smoltrain.models.lora import LoRALinear
from smoltrain.train.trainer import Trainer

IGNORE = -100
INSTRUCTIONS = 2000  # conversations written by `smoltrain data instructions`
RECIPES = {"sft": "lm-sft-cpu", "lora": "lm-lora-cpu"}
SQUARE_TARGETS = "[q_proj,o_proj]"  # MiniMind's square layers on both shapes (GQA makes k/v narrower)


@dataclass
class FinetuneShape:
    name: str  # an arch preset, as in lm_throughput.SHAPES
    batch: int
    seq_len: int
    steps: int
    warmup: int
    rounds: int


# lm-tiny-cpu at its SFT / LoRA recipes' batch (16) and seq_len (128); minimind2-26m at lm_throughput's CPU shape
# (8 x 256: MiniMind's own 16 x 768 SFT and 32 x 340 LoRA batches take minutes per step on this CPU).
SHAPES = {
    "lm-tiny-cpu": FinetuneShape("lm-tiny-cpu", batch=16, seq_len=128, steps=5, warmup=1, rounds=6),
    "minimind2-26m": FinetuneShape("minimind2-26m", batch=8, seq_len=256, steps=1, warmup=0, rounds=5),
}
SMOKE_SHAPE = FinetuneShape("lm-tiny-cpu", batch=4, seq_len=32, steps=1, warmup=0, rounds=2)


# ---------------------------------------------------------------------------------------------------
# The data, built with smoltrain's own CLI


def smoltrain_cli(*args: str | Path) -> None:
    cmd = [sys.executable, "-m", "smoltrain", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{shlex.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def build_sft_dataset(work: Path, smoke: bool) -> Path:
    """``data instructions`` -> ``tokenizer train`` -> ``data sft`` under ``work``; returns the dataset directory.
    The smoke run trains its tokenizer on the conversations alone (a small vocabulary, no corpus to fetch)."""
    instructions = work / "instructions.jsonl"
    smoltrain_cli("data", "instructions", "--output", instructions, "--count", 200 if smoke else INSTRUCTIONS)
    texts: list[str | Path] = [instructions]
    if not smoke:
        from smoltrain.apps.demo import shakespeare_corpus

        texts.append(shakespeare_corpus())
    smoltrain_cli("tokenizer", "train", "--input", *texts, "--vocab-size", 6400, "--output", work / "tokenizer")
    smoltrain_cli("data", "sft", "--input", instructions, "--tokenizer", work / "tokenizer", "--output-dir",
                  work / "sft", "--val-fraction", 0.05)
    return work / "sft"


# ---------------------------------------------------------------------------------------------------
# The implementations


def trainer_for(shape: FinetuneShape, stage: str, data: Path, run_dir: Path, extra: list[str] | None = None,
                max_steps: int = 10**9) -> Trainer:
    """A real ``Trainer`` on the stage's CPU recipe at ``shape``: fp32, eager, no evaluation while timing (only
    ``train_step`` is called), never a logging step (``log_every`` beyond ``max_steps``)."""
    overrides = [f"arch={shape.name}", f"data_paths=[{data}]", f"global_batch_size={shape.batch}",
                 f"arch.seq_len={shape.seq_len}", "device=cpu", "precision=fp32", "compile=false",
                 f"run_dir={run_dir}", f"max_steps={max_steps}", f"log_every={max_steps + 1}",
                 "eval_answer_examples=0", "eval_max_examples=8", *(extra or [])]
    return Trainer(load_config(RECIPES[stage], overrides))


def fixed_batch(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in next(trainer.stream).items()}


def minimind_rows(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """MiniMind's (input_ids, labels) of the same rows: input position t is supervised when smoltrain's target
    at t - 1 (the next token after t - 1, i.e. token t) is; position 0 (the row's first token) never is."""
    ids, targets = batch["input_ids"], batch["targets"]
    supervised = torch.zeros_like(ids, dtype=torch.bool)
    supervised[:, 1:] = targets[:, :-1] != IGNORE
    return ids, ref.sft_labels(ids, supervised)


def reference_model(ours: torch.nn.Module) -> ref.MiniMindForCausalLM:
    """The port with ``ours``'s base weights (adapters excluded: the port adds its own)."""
    config = lmt.reference_config(ours.config)
    model = ref.MiniMindForCausalLM(config)
    base = {k: v for k, v in ours.state_dict().items() if not k.endswith((".lora_A", ".lora_B"))}
    model.load_state_dict(base, strict=True)
    model.train()
    return model


def copy_adapters(ours: torch.nn.Module, reference: torch.nn.Module) -> list[tuple[str, str]]:
    """Give the port's adapters (``X.lora.A`` / ``X.lora.B``) ours' values (``X.lora_A`` / ``X.lora_B``, the same
    [rank, in] / [out, rank] matrices); the two must adapt the same layers. Returns (ours, port) parameter names."""
    ours_layers = {name for name, m in ours.named_modules() if isinstance(m, LoRALinear)}
    port_layers = {name for name, m in reference.named_modules() if isinstance(m, ref.LoRA)}
    if {f"{name}.lora" for name in ours_layers} != port_layers:
        raise AssertionError(f"different adapted layers: ours {sorted(ours_layers)}, the port's {sorted(port_layers)}")
    pairs = []
    with torch.no_grad():
        for name in sorted(ours_layers):
            for ours_key, port_key in (("lora_A", "lora.A.weight"), ("lora_B", "lora.B.weight")):
                reference.get_parameter(f"{name}.{port_key}").copy_(ours.get_parameter(f"{name}.{ours_key}"))
                pairs.append((f"{name}.{ours_key}", f"{name}.{port_key}"))
    return pairs


@dataclass
class Side:
    impl: lmt.Impl
    trainable: int
    supervised: int  # supervised target tokens per step


def smoltrain_side(key: str, label: str, trainer: Trainer, batch: dict[str, torch.Tensor]) -> Side:
    def step(_batch: Any) -> float:
        trainer.train_step(batch)  # returns the logged values on logging steps only, which never come here
        return 0.0 if trainer.nonfinite_run == 0 else float("nan")  # the trainer counts non-finite steps

    trainable = sum(p.numel() for p in trainer.trainable)
    return Side(lmt.Impl(key, label, step, trainer.model), trainable, int((batch["targets"] != IGNORE).sum()))


def reference_side(key: str, label: str, model: ref.MiniMindForCausalLM, batch: dict[str, torch.Tensor],
                   lr: float, params: list[torch.nn.Parameter] | None = None) -> Side:
    ids, labels = minimind_rows(batch)
    step = ref.make_train_step(model, lr=lr, grad_clip=1.0, params=params)
    trained = params if params is not None else list(model.parameters())
    return Side(lmt.Impl(key, label, lambda _batch: step(ids, labels), model), sum(p.numel() for p in trained),
                int((labels[:, 1:] != IGNORE).sum()))


def check_step0(trainer: Trainer, reference: ref.MiniMindForCausalLM, batch: dict[str, torch.Tensor],
                pairs: list[tuple[str, str]]) -> str:
    """The step-0 loss and the gradients of the ``pairs`` (ours, port) parameters of one forward/backward of the
    real trainer (``Trainer.compute_gradients``) and of the port, on the same batch and weights; gradients are
    cleared afterwards. The batch's last target column is -100 on our side (the port cannot score it)."""
    check = {**batch, "targets": batch["targets"].clone()}
    check["targets"][:, -1] = IGNORE
    loss_b, _ = trainer.compute_gradients(check)
    ids, labels = minimind_rows(batch)
    out = reference(ids, labels=labels)
    loss_a = out.loss + out.aux_loss
    loss_a.backward()
    grads = [(reference.get_parameter(port).grad, trainer.model.get_parameter(ours).grad) for ours, port in pairs]
    d_loss, d_grad = lmt.same_math_differences(loss_a, loss_b, grads)
    for spec in trainer.optimizers:
        spec.optimizer.zero_grad(set_to_none=True)
    reference.zero_grad(set_to_none=True)
    if d_loss > lmt.LOSS_RTOL or d_grad > lmt.GRAD_RTOL:
        raise AssertionError(f"(b) does not compute what (a) computes at step 0: relative loss / gradient "
                             f"differences {d_loss:.1e} / {d_grad:.1e} (bounds {lmt.LOSS_RTOL:g} / {lmt.GRAD_RTOL:g})")
    return (f"step-0 loss (a) {loss_a.item():.6f}, (b) {loss_b.item():.6f}: relative difference {d_loss:.1e}, "
            f"largest gradient difference {d_grad:.1e} of the largest gradient ({len(pairs)} tensors)")


def sft_sides(shape: FinetuneShape, data: Path, work: Path) -> tuple[list[Side], str]:
    torch.manual_seed(0)
    trainer = trainer_for(shape, "sft", data, work / f"sft-{shape.name}")
    batch = fixed_batch(trainer)
    reference = reference_model(trainer.model)
    pairs = [(name, name) for name, _ in trainer.model.named_parameters()]
    check = check_step0(trainer, reference, batch, pairs)
    sides = [reference_side("a", "MiniMind train_full_sft (eager port)", reference, batch, ref.SFT_LR),
             smoltrain_side("b", "smoltrain Trainer, stage=sft (lm-sft-cpu)", trainer, batch)]
    trainer.release_run_dir()
    return sides, check


def lora_sides(shape: FinetuneShape, data: Path, work: Path) -> tuple[list[Side], str]:
    base_dir = work / f"base-{shape.name}"
    torch.manual_seed(0)
    with contextlib.redirect_stdout(sys.stderr):  # its log lines are not the report
        trainer_for(shape, "sft", data, base_dir, max_steps=1).fit()  # a run for init_from: one SFT step
    square = trainer_for(shape, "lora", data, work / f"lora-square-{shape.name}",
                         [f"init_from={base_dir}", f"lora.targets={SQUARE_TARGETS}"])
    recipe = trainer_for(shape, "lora", data, work / f"lora-recipe-{shape.name}", [f"init_from={base_dir}"])
    batch = fixed_batch(square)
    reference = reference_model(square.model)
    ref.apply_lora(reference, ref.LORA_RANK)
    trained = ref.lora_parameters(reference)
    with torch.no_grad():  # adapters that change the output, the same on both sides (see the module docstring)
        g = torch.Generator().manual_seed(1)
        for module in square.model.modules():
            if isinstance(module, LoRALinear):
                module.lora_B.copy_(torch.randn(module.lora_B.shape, generator=g) * 0.2)
    pairs = copy_adapters(square.model, reference)
    if square.cfg.lora.alpha != square.cfg.lora.rank:
        raise AssertionError("(b) must scale its adapters by 1 (alpha = rank), as MiniMind's LoRA does")
    check = check_step0(square, reference, batch, pairs)
    check += f"; the adapters move the loss by {adapter_effect(square.model, batch):.1e} (relative)"
    sides = [reference_side("a", "MiniMind train_lora (eager port): rank 16, square layers", reference, batch,
                            ref.LORA_LR, trained),
             smoltrain_side("b", "smoltrain Trainer, lm-lora-cpu with lora.targets=[q_proj,o_proj]", square, batch),
             smoltrain_side("c", "smoltrain Trainer, lm-lora-cpu as it is (all-linear)", recipe, fixed_batch(recipe))]
    for trainer in (square, recipe):
        trainer.release_run_dir()
    return sides, check


@torch.no_grad()
def adapter_effect(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """How far the adapters move the loss, relative: the scale a real difference between the sides would have."""
    adapters = [(m, m.lora_B.clone()) for m in model.modules() if isinstance(m, LoRALinear)]
    with_adapters = float(model(batch["input_ids"], targets=batch["targets"]).loss)
    for m, _ in adapters:
        m.lora_B.zero_()
    without = float(model(batch["input_ids"], targets=batch["targets"]).loss)
    for m, b in adapters:
        m.lora_B.copy_(b)
    return abs(with_adapters - without) / without


# ---------------------------------------------------------------------------------------------------
# Timing and the report


def run_case(stage: str, shape: FinetuneShape, data: Path, work: Path, threads: list[int],
             args: argparse.Namespace) -> dict[str, Any]:
    steps, rounds = args.steps or shape.steps, args.rounds or shape.rounds
    warmup = shape.warmup if args.warmup is None else args.warmup
    torch.set_num_threads(threads[0])
    sides, check = (sft_sides if stage == "sft" else lora_sides)(shape, data, work)
    tag = f"{stage} {shape.name}"
    print(f"[{tag}] batch {shape.batch} x seq {shape.seq_len}: {check}", file=sys.stderr, flush=True)
    tokens = shape.batch * shape.seq_len
    # The network's own parameters (no adapters): the same on every side
    params = sum(p.numel() for name, p in sides[-1].impl.module.named_parameters() if "lora" not in name)
    runs = []
    for n in threads:
        torch.set_num_threads(n)
        impls = [lmt.Impl(s.impl.key, s.impl.label, s.impl.step, s.impl.module) for s in sides]
        loads = lmt.alternate_rounds(impls, None, steps, warmup, rounds, torch.device("cpu"), f"{tag} {n}t", tokens)
        paired = lmt.paired_cpu_ratios(impls)
        runs.append({
            "threads": n, "loadavg_1min_min": min(loads), "loadavg_1min_max": max(loads),
            "impls": [{"key": i.key, "label": i.label, "trainable": s.trainable,
                       "supervised_per_step": s.supervised, "tokens_per_s": i.rounds, "median": i.median,
                       "tokens_per_cpu_s": i.cpu_rounds, "cpu_median": i.cpu_median,
                       "paired_cpu_ratio": paired[i.key],
                       "supervised_per_s": i.median * s.supervised / tokens}
                      for i, s in zip(impls, sides, strict=True)],
        })
    return {"stage": stage, "shape": shape.name, "batch": shape.batch, "seq_len": shape.seq_len, "params": params,
            "steps": steps, "warmup": warmup, "rounds": rounds, "check": check, "runs": runs}


def markdown(results: list[dict[str, Any]], header: dict[str, Any]) -> str:
    lines = [f"### SFT and LoRA throughput ({header['date']})", "", f"`{header['command']}`", "",
             f"- torch {header['torch']}, {header['cpu']}, fp32",
             f"- load average (1/5/15 min) at start {header['load_start']}, at end {header['load_end']} "
             f"({header['cores']} cores)",
             "- one step = one optimizer step on a fixed batch of padded SFT rows; tokens = B x T positions "
             "(padding included), supervised = assistant target tokens; median of alternating rounds"]
    for res in results:
        lines += ["", f"#### {res['stage']}, `{res['shape']}`", "",
                  f"{res['params']:,} parameters (adapters not counted), batch {res['batch']} x {res['seq_len']} "
                  f"tokens; {res['rounds']} rounds x {res['steps']} timed steps (+{res['warmup']} warm-up); "
                  f"{res['check']}.", ""]
        for run in res["runs"]:
            base = run["impls"][0]
            lines += [f"{run['threads']} thread(s), 1-min load during rounds {run['loadavg_1min_min']:.2f}-"
                      f"{run['loadavg_1min_max']:.2f}:", "",
                      "| implementation | trained params | tokens/s (median) | ms/step | rounds (tokens/s) | vs (a) "
                      "| tokens per CPU s (median) | vs (a), CPU time | vs (a), per-round CPU ratios | supervised "
                      "tokens/step | supervised tokens/s |",
                      "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
            for i in run["impls"]:
                ms = 1000 * res["batch"] * res["seq_len"] / i["median"]
                rounds = ", ".join(f"{x:,.0f}" for x in i["tokens_per_s"])
                lines.append(f"| ({i['key']}) {i['label']} | {i['trainable']:,} | {i['median']:,.0f} | {ms:,.1f} | "
                             f"{rounds} | {i['median'] / base['median']:.2f}x | {i['cpu_median']:,.0f} | "
                             f"{i['cpu_median'] / base['cpu_median']:.2f}x | {i['paired_cpu_ratio']:.2f}x | "
                             f"{i['supervised_per_step']} | {i['supervised_per_s']:,.1f} |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return "CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default="sft,lora", help="comma-separated: sft, lora")
    parser.add_argument("--shapes", default="lm-tiny-cpu,minimind2-26m", help=f"comma-separated: {', '.join(SHAPES)}")
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts, timed one after another")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps before each round")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per implementation")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny run that only shows the script works: lm-tiny-cpu at 4 x 32, 2 rounds, 1 thread")
    parser.add_argument("--json", default=None, help="also write the raw results here")
    args = parser.parse_args()

    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if not stages or set(stages) - set(RECIPES):
        parser.error(f"--stages takes {', '.join(RECIPES)}")
    names = [s.strip() for s in args.shapes.split(",") if s.strip()]
    if set(names) - set(SHAPES):
        parser.error(f"unknown shapes {sorted(set(names) - set(SHAPES))}; choose from {sorted(SHAPES)}")
    try:
        threads = [int(n) for n in args.threads.split(",")]
    except ValueError:
        parser.error("--threads takes comma-separated integers, e.g. 1,2")
    shapes = [SMOKE_SHAPE] if args.smoke else [SHAPES[name] for name in names]
    if args.smoke:
        threads = threads[:1]
    header: dict[str, Any] = {
        "command": "python " + shlex.join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "torch": torch.__version__, "cpu": cpu_name(), "threads": threads,
        "load_start": " ".join(f"{x:.2f}" for x in os.getloadavg()), "cores": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory(prefix="finetune-bench-") as tmp:
        work = Path(tmp)
        data = build_sft_dataset(work, args.smoke)
        vocab = json.loads((data / "metadata.json").read_text())["vocab_size"]
        print(f"SFT dataset {data}: vocab {vocab}", file=sys.stderr, flush=True)
        results = [run_case(stage, shape, data, work, threads, args) for shape in shapes for stage in stages]
    header["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    header["vocab_size"] = vocab
    print(markdown(results, header))
    if args.json:
        Path(args.json).write_text(json.dumps({"header": header, "results": results}, indent=2))


if __name__ == "__main__":
    main()
