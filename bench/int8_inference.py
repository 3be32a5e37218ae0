"""int8 inference on the CPU (``--quantize int8``): greedy decoding speed fp32 against int8, and what it costs in
validation loss.

* Speed, per shape (``lm-tiny-cpu`` and ``minimind2-26m``, random-init weights at MiniMind's vocabulary of 6400:
  speed does not depend on what the weights learnt): greedy decoding of ``--new-tokens`` tokens after a
  ``--prompt-tokens`` prompt, batch 1, with the KV cache (``LMForCausalLM.generate``), fp32 and the same model
  after ``models.quantize.quantize_int8``. Rounds alternate the order of the two sides; reported are the median
  tokens/s over rounds, by wall clock and per second of process CPU time (the steadier one on a shared machine
  with one thread), and their ratio int8 / fp32.
* Loss: a short ``lm-pretrain-cpu`` run (the ``lm-tiny-cpu`` decoder) trained here on a seeded synthetic corpus,
  then its validation loss (the family's evaluation, every val window) in fp32 and quantized, and how many of
  ``--prompts`` greedy continuations of val text come out identical.

Usage::

    python bench/int8_inference.py --json /tmp/int8.json --markdown /tmp/int8.md
    python bench/int8_inference.py --smoke          # seconds: tiny shapes and steps, checks the script works
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from smoltrain.config import group_file
from smoltrain.data.text import build_text_dataset
from smoltrain.data.tokenizer import train_tokenizer
from smoltrain.families import load_config
from smoltrain.families.lm import LMArchConfig
from smoltrain.fileio import atomic_write_text
from smoltrain.models.lm import LMForCausalLM
from smoltrain.models.quantize import quantize_int8
from smoltrain.runs.loading import load
from smoltrain.train.trainer import Trainer

VOCAB = 6400  # MiniMind's tokenizer, for the speed shapes


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def random_model(shape: str, smoke: bool) -> LMForCausalLM:
    fields = {**group_file("arch", shape), "vocab_size": VOCAB}
    if smoke:  # the shape's kind at a size that runs in a blink
        fields.update(hidden_size=32, num_hidden_layers=1, intermediate_size=64)
    torch.manual_seed(0)
    return LMForCausalLM(LMArchConfig.model_validate(fields).to_model_config()).eval()


def decode_rate(model: LMForCausalLM, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """(tokens/s by wall clock, tokens/s per CPU second) of one greedy decode."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = model.generate(prompt, new_tokens, temperature=0.0)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    made = out.shape[1] - prompt.shape[1]
    return made / max(wall, 1e-9), made / max(cpu, 1e-9)


def speed(shape: str, args: argparse.Namespace) -> dict[str, Any]:
    fp32 = random_model(shape, args.smoke)
    int8 = quantize_int8(copy.deepcopy(fp32))
    prompt = torch.randint(0, VOCAB, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0))
    sides = {"fp32": fp32, "int8": int8}
    for model in sides.values():  # warm-up: first-call allocations and kernel selection, untimed
        model.generate(prompt, 2, temperature=0.0)
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    before = load_average()
    for round_index in range(args.rounds):
        order = list(sides) if round_index % 2 == 0 else list(sides)[::-1]
        for name in order:
            rates[name].append(decode_rate(sides[name], prompt, args.new_tokens))
    result: dict[str, Any] = {"shape": shape, "parameters": fp32.num_parameters(), "load_before": before,
                              "load_after": load_average()}
    for name in sides:
        result[name] = {"wall_tokens_per_s": statistics.median(r[0] for r in rates[name]),
                        "cpu_tokens_per_s": statistics.median(r[1] for r in rates[name])}
    result["ratio_wall"] = result["int8"]["wall_tokens_per_s"] / result["fp32"]["wall_tokens_per_s"]
    result["ratio_cpu"] = result["int8"]["cpu_tokens_per_s"] / result["fp32"]["cpu_tokens_per_s"]
    print(f"{shape}: fp32 {result['fp32']['cpu_tokens_per_s']:.1f} tok/CPU-s, int8 "
          f"{result['int8']['cpu_tokens_per_s']:.1f} ({result['ratio_cpu']:.2f}x)", flush=True)
    return result


def synthetic_corpus(path: Path, documents: int) -> None:
    """Seeded sentences with structure a small model learns (subject, verb, object, a clause)."""
    rng = random.Random(0)
    subjects = ["the cat", "a dog", "my friend", "the old man", "a small bird", "the teacher", "her brother",
                "the farmer", "a young girl", "our neighbour"]
    verbs = ["sees", "likes", "finds", "watches", "follows", "helps", "paints", "carries", "calls", "remembers"]
    objects = ["the ball", "a red apple", "the river", "a green hat", "the garden", "a big tree", "the old boat",
               "a warm coat", "the letter", "a quiet song"]
    clauses = ["in the morning", "after the rain", "near the house", "every day", "before dinner", "at night"]
    docs = [" ".join(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} {rng.choice(clauses)}."
                     for _ in range(rng.randint(4, 10))) for _ in range(documents)]
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")


def loss_change(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    corpus = tmp / "corpus.txt"
    synthetic_corpus(corpus, 200 if args.smoke else 3000)
    train_tokenizer([corpus], 400, tmp / "tok")
    build_text_dataset([str(corpus)], tmp / "tok", tmp / "text", val_fraction=0.05)
    run_dir = tmp / "run"
    shape = ["arch.hidden_size=32", "arch.num_hidden_layers=1", "arch.seq_len=32"] if args.smoke else []
    cfg = load_config("lm-pretrain-cpu", [f"data_paths=[{tmp / 'text'}]", f"run_dir={run_dir}",
                                          f"max_steps={args.train_steps}", "lr_warmup_steps=20", "log_every=100",
                                          f"num_threads={torch.get_num_threads()}", *shape])
    Trainer(cfg).fit()
    run = load(run_dir, device="cpu")
    with torch.inference_mode():
        fp32_metrics = run.family.evaluate(run.model, whole=True)
    fp32 = copy.deepcopy(run.model)
    quantize_int8(run.model)
    with torch.inference_mode():
        int8_metrics = run.family.evaluate(run.model, whole=True)
    # Greedy continuations of val windows' first tokens: how often int8 decodes exactly what fp32 does.
    windows = next(run.family._windows("val").iter_eval(args.prompts))["input_ids"][:, :8]
    same = sum(bool(torch.equal(fp32.generate(row[None], 24, temperature=0.0),
                                run.model.generate(row[None], 24, temperature=0.0))) for row in windows)
    fp32_loss, int8_loss = fp32_metrics["loss"], int8_metrics["loss"]
    result = {"train_steps": args.train_steps, "parameters": fp32.num_parameters(), "fp32_loss": fp32_loss,
              "int8_loss": int8_loss, "change": int8_loss - fp32_loss,
              "relative_change": (int8_loss - fp32_loss) / fp32_loss, "val_tokens": fp32_metrics["tokens"],
              "identical_continuations": same, "prompts": len(windows)}
    print(f"val loss fp32 {fp32_loss:.4f}, int8 {int8_loss:.4f} ({100 * result['relative_change']:+.2f}%); "
          f"{same}/{len(windows)} greedy continuations identical", flush=True)
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Greedy decoding, batch 1, {result['prompt_tokens']}-token prompt, {result['new_tokens']} new tokens, "
             f"{result['rounds']} alternating rounds, {result['threads']} thread(s); median tokens/s.", "",
             "| shape | parameters | fp32 tok/s (wall) | int8 tok/s (wall) | fp32 tok/CPU-s | int8 tok/CPU-s | "
             "int8 / fp32 (CPU) | load before -> after |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for s in result["speed"]:
        lines.append(f"| {s['shape']} | {s['parameters'] / 1e6:.2f}M | {s['fp32']['wall_tokens_per_s']:.1f} | "
                     f"{s['int8']['wall_tokens_per_s']:.1f} | {s['fp32']['cpu_tokens_per_s']:.1f} | "
                     f"{s['int8']['cpu_tokens_per_s']:.1f} | {s['ratio_cpu']:.2f}x | {s['load_before']} -> "
                     f"{s['load_after']} |")
    loss = result["loss"]
    lines += ["", f"Validation loss of a {loss['parameters'] / 1e6:.2f}M-parameter `lm-pretrain-cpu` run trained "
              f"{loss['train_steps']} steps on the seeded synthetic corpus ({loss['val_tokens']:.0f} val tokens): "
              f"fp32 {loss['fp32_loss']:.4f}, int8 {loss['int8_loss']:.4f}, change {loss['change']:+.4f} "
              f"({100 * loss['relative_change']:+.2f}%); {loss['identical_continuations']}/{loss['prompts']} greedy "
              "24-token continuations identical."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="lm-tiny-cpu,minimind2-26m")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    parser.add_argument("--markdown", default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes and steps: checks the script")
    args = parser.parse_args()
    if args.smoke:
        args.prompt_tokens, args.new_tokens, args.rounds, args.train_steps, args.prompts = 4, 4, 2, 4, 2
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {k: getattr(args, k) for k in ("prompt_tokens", "new_tokens", "rounds", "threads")}
    result["smoke"] = args.smoke
    result["speed"] = [speed(shape, args) for shape in args.shapes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        result["loss"] = loss_change(args, Path(tmp))
    table = markdown(result)
    print(table)
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(result, indent=2) + "\n")
    if args.markdown:
        atomic_write_text(Path(args.markdown), table)


if __name__ == "__main__":
    main()
