"""The lm-lora-cpu lr sweep behind `smoltrain demo chat` (bench/RESULTS.md): a base pretrained on Shakespeare alone
or on Shakespeare + the instruction set's training text, then LoRA runs at fixed step counts, each scored on the
demo's 60 held-out prompts (exact answers, greedy) and on its val split.

    python bench/chat_lora_sweep.py base OUT mix 2.5          # tokenizer, data, a base trained 2.5 minutes
    python bench/chat_lora_sweep.py lora OUT 1e-2 600 l10      # LoRA at lr 1e-2 for 600 steps, in OUT/l10

`base OUT shk 2.5` makes the Shakespeare-only base (the `demo lm` model's data). One thread per process.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from smoltrain.apps.demo import CHAT_HELDOUT, CHAT_SEQ_LEN, shakespeare_corpus
from smoltrain.data.chat import build_sft_dataset
from smoltrain.data.instructions import instruction_examples, instruction_line, write_instructions
from smoltrain.data.text import build_text_dataset
from smoltrain.data.tokenizer import eos_id, load_tokenizer, tokenizer_file, train_tokenizer
from smoltrain.eval.answers import conversation_rows, exact_answers
from smoltrain.families import load_config
from smoltrain.runs.loading import load
from smoltrain.train.trainer import Trainer


def held_out(run: Path, tokenizer_dir: Path) -> tuple[float, dict[str, str]]:
    """Exact share on the demo's held-out prompts, and right/total per task."""
    model = load(run, device="cpu", need_data=False).model
    tokenizer = load_tokenizer(tokenizer_file(tokenizer_dir))
    examples = instruction_examples("heldout", CHAT_HELDOUT, 0)
    rows = conversation_rows(tokenizer, [instruction_line(e)["conversations"] for e in examples], CHAT_SEQ_LEN)
    checks = exact_answers(model, [rows], eos_id(tokenizer))
    by_task: dict[str, list[bool]] = {}
    for example, check in zip(examples, checks, strict=True):
        by_task.setdefault(example.task, []).append(check.exact)
    return sum(c.exact for c in checks) / len(checks), {k: f"{sum(v)}/{len(v)}" for k, v in by_task.items()}


def make_base(root: Path, kind: str, minutes: float) -> None:
    root.mkdir(parents=True, exist_ok=True)
    corpus = shakespeare_corpus()
    write_instructions(root / "sft.jsonl", "sft", count=6000, seed=0)
    inputs = [corpus]
    if kind == "mix":
        text = "\n\n".join(f"{e.prompt} {e.answer}" for e in instruction_examples("train", 20000, seed=1))
        (root / "instr.txt").write_text(text + "\n")
        inputs = [corpus, root / "instr.txt"]
    train_tokenizer(inputs, 2048, root / "tok", overwrite=True)
    build_text_dataset([str(p) for p in inputs], root / "tok", root / "text", val_fraction=0.02)
    build_sft_dataset([str(root / "sft.jsonl")], root / "tok", root / "sft", max_length=CHAT_SEQ_LEN + 1,
                      val_fraction=0.05)
    started = time.time()
    summary = Trainer(load_config("lm-pretrain-cpu", [f"data_paths=[{root / 'text'}]", f"run_dir={root / 'base'}",
                                                      "resume=none", f"max_minutes={minutes}", "epochs=1000",
                                                      "num_threads=1"])).fit()
    print("base", kind, summary["step"], summary["eval"]["loss"], round(time.time() - started))
    print("base held-out", held_out(root / "base", root / "tok"))


def lora(root: Path, lr: str, steps: str, name: str, extra: list[str]) -> None:
    started = time.time()
    summary = Trainer(load_config("lm-lora-cpu", [
        f"init_from={root / 'base'}", f"data_paths=[{root / 'sft'}]", f"run_dir={root / name}", "resume=none",
        f"lr={lr}", f"max_steps={steps}", f"arch.seq_len={CHAT_SEQ_LEN}", "num_threads=1", "log_every=100", *extra,
    ])).fit()
    print(json.dumps({"name": name, "lr": lr, "steps": steps, "extra": extra, "time": round(time.time() - started),
                      "val_exact": summary["eval"].get("answer_exact"), "loss": summary["eval"]["loss"],
                      "heldout": held_out(root / name, root / "tok")}))


if __name__ == "__main__":
    torch.set_num_threads(1)
    mode, out = sys.argv[1], Path(sys.argv[2])
    if mode == "base":
        make_base(out, sys.argv[3], float(sys.argv[4]))
    else:
        lora(out, sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6:])
