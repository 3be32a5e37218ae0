"""Helpers the tests share: paths, tiny configs, a way to run the CLI in a real subprocess, small datasets.

Tests import these from here (``from tests.helpers import ...``); ``conftest.py`` holds only pytest fixtures.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from smoltrain.data.puzzles import PuzzleDatasetMetadata, write_identifiers, write_split
from smoltrain.train.logging import read_metrics

if TYPE_CHECKING:
    from smoltrain.models.lm import LMForCausalLM

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
RUNNER = str(REPO / "tests" / "e2e" / "train_runner.py")  # a training in a subprocess, for the crash tests


def toy_overrides(run_dir: Path, **extra: object) -> list[str]:
    base = {
        "run_dir": str(run_dir),
        "global_batch_size": 16,
        "max_steps": 20,
        "log_every": 1,
        "lr": 3e-3,
        "lr_warmup_steps": 3,
        "device": "cpu",
        "arch.hidden_size": 16,
        "arch.eval_examples": 64,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def run_python(args: list[str], timeout: float = 300, env: dict[str, str] | None = None,
               cwd_override: Path | None = None) -> subprocess.CompletedProcess:
    """`python ARGS` in a subprocess (one OpenMP thread: tests run side by side on 2 cores)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          env=full_env, cwd=cwd_override or REPO)


def read_metrics_safe(run: Path) -> list[dict]:
    """The metrics rows of a training still running (none while a row is half written)."""
    try:
        return read_metrics(run / "metrics.jsonl")
    except json.JSONDecodeError:
        return []


def write_sorting_puzzles(root: Path, n_train: int = 256, n_test: int = 64, seq_len: int = 6, digits: int = 4,
                          num_ids: int = 1, seed: int = 0) -> Path:
    """A puzzle dataset whose answer is the sorted input (tokens 0 PAD, 1..digits values).

    Each example is its own group and puzzle; puzzle identifiers cycle through 1..num_ids-1 when
    num_ids > 1 (0 is the blank identifier), else are all 0.
    """
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        inputs = rng.integers(1, digits + 1, size=(n, seq_len)).astype(np.uint8)
        labels = np.sort(inputs, axis=1)
        ids = (np.arange(n) % (num_ids - 1) + 1) if num_ids > 1 else np.zeros(n)
        metadata = PuzzleDatasetMetadata(
            pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=digits + 1, seq_len=seq_len,
            num_puzzle_identifiers=num_ids, total_groups=n, mean_puzzle_examples=1.0, total_puzzles=n, sets=["all"],
        )
        write_split(root, split, inputs, labels, ids.astype(np.int32), np.arange(n + 1, dtype=np.int32),
                    np.arange(n + 1, dtype=np.int32), metadata)
    write_identifiers(root, ["<blank>"] + [f"p{i}" for i in range(1, num_ids)])
    return root


WORDS = (
    "the quick brown fox jumps over lazy dog a cat sat on mat and then ran far away into green "
    "forest where old trees grow tall under bright sun while birds sing softly in morning light"
).split()


def make_sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))).capitalize() + "." for _ in range(n)]


def write_tokenizer(target: Path) -> None:
    """A 64-token word-level tokenizer with the MiniMind special tokens at ids 0, 1, 2."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {tok: i for i, tok in enumerate(specials + [f"w{i}" for i in range(61)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(specials)
    target.mkdir(parents=True)
    tok.save(str(target / "tokenizer.json"))
    names = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
             "unk_token": "<|endoftext|>"}
    (target / "special_tokens_map.json").write_text(json.dumps(names))
    (target / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", **names}))


def make_lm_run(run_dir: Path, *extra: str, seed: int = 0, weight_scale: float = 1.0, perturb_norms: bool = False,
                tokenizer: bool = True, step: int = 1) -> LMForCausalLM:
    """An untrained LM run written by hand (config.yaml, one seeded checkpoint at ``step``, and with ``tokenizer``
    the 64-token tokenizer of `write_tokenizer`): enough for everything but quality. Returns the model (eval
    mode). ``weight_scale`` > 1 makes the logits peaked, so greedy decoding has no near-ties that fp32 rounding
    could flip. ``perturb_norms`` moves the norm weights off 1, so a dropped or swapped norm weight shows."""
    import torch

    from smoltrain.config import config_to_yaml
    from smoltrain.families import load_config
    from smoltrain.models.lm import LMForCausalLM
    from smoltrain.runs.checkpoint import save_checkpoint

    cfg = load_config(None, [
        "arch=lm", "arch.vocab_size=64", "arch.hidden_size=32", "arch.num_hidden_layers=2",
        "arch.num_attention_heads=4", "arch.num_key_value_heads=2", "data_paths=[]", f"run_dir={run_dir}", *extra,
    ])
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(config_to_yaml(cfg))
    torch.manual_seed(seed)
    model = LMForCausalLM(cfg.arch.to_model_config())
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.mul_(weight_scale)
            if perturb_norms and name.endswith("norm.weight"):
                param.add_(0.1 * torch.randn_like(param))
    save_checkpoint(run_dir / "checkpoints", step, model.state_dict(), None, {"step": step}, keep=1)
    if tokenizer:
        write_tokenizer(run_dir / "tokenizer")
    return model.eval()
