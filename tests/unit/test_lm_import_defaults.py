"""Imported LM runs (`import hf`, `import minimind`) train as LMs do, and an export/import round trip keeps the
evaluation numbers."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from smoltrain.config import config_to_yaml
from smoltrain.data.text import build_text_dataset
from smoltrain.data.tokenizer import train_tokenizer
from smoltrain.families import load_config, resolve
from smoltrain.interop.hf import export_hf, import_hf
from smoltrain.interop.minimind import import_minimind
from smoltrain.models.lm import LMConfig, LMForCausalLM
from smoltrain.runs.checkpoint import save_checkpoint
from smoltrain.runs.loading import evaluate
from smoltrain.runs.run_dir import RunDir

TINY = ["arch.hidden_size=32", "arch.num_attention_heads=2", "arch.num_key_value_heads=1", "arch.seq_len=16",
        "arch.num_hidden_layers=1", "global_batch_size=4", "eval_max_examples=32"]


def _assert_lm_training_defaults(run: Path) -> None:
    cfg = RunDir(run).load_config()
    assert cfg.optimizer == "adamw" and cfg.lr_warmup_steps > 0 and cfg.lr_min_ratio < 1  # warmup, then cosine
    assert cfg.grad_clip == 1.0 and cfg.beta2 == 0.95


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> tuple[Path, Path]:
    """A run (seeded weights, no training) on a tiny text dataset: (run directory, dataset)."""
    root = tmp_path_factory.mktemp("roundtrip")
    rng = random.Random(0)
    words = ["the", "cat", "sees", "a", "dog", "red", "ball", "runs", "far"]
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(30)) for _ in range(60)) + "\n")
    train_tokenizer([corpus], 280, root / "tok")
    build_text_dataset([str(corpus)], root / "tok", root / "text", val_fraction=0.2)
    cfg = resolve(load_config("lm-pretrain-cpu", [*TINY, f"data_paths=[{root / 'text'}]", f"run_dir={root / 'run'}"]))
    (root / "run").mkdir()
    (root / "run" / "config.yaml").write_text(config_to_yaml(cfg))
    torch.manual_seed(0)
    model = LMForCausalLM(cfg.arch.to_model_config())
    save_checkpoint(root / "run" / "checkpoints", 3, model.state_dict(), None, {"step": 3}, keep=1)
    return root / "run", root / "text"


def test_export_then_import_evaluates_to_the_same_numbers(text_run, tmp_path) -> None:
    run, data = text_run
    before = evaluate(run, device="cpu")
    export_hf(run, tmp_path / "hf")
    imported = import_hf(tmp_path / "hf", tmp_path / "imported")
    # The evaluation's own keys (the data, how many rows) are the caller's; the rows' shape comes with the model.
    after = evaluate(imported, device="cpu", overrides=[f"data_paths=[{data}]", "global_batch_size=4",
                                                         "eval_max_examples=32"])
    # Same weights, same windows (seq_len kept through config.json), same ops on one CPU: equal to the last bit.
    assert after == before and before["tokens"] > 0
    assert RunDir(imported).load_config().arch.seq_len == 16
    _assert_lm_training_defaults(imported)


def test_import_hf_without_smoltrain_keys_trains_at_the_models_context(text_run, tmp_path) -> None:
    import json

    export_hf(text_run[0], tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    del config["smoltrain"]  # what a transformers save_pretrained folder looks like
    config["max_position_embeddings"] = 48
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    imported = import_hf(tmp_path / "hf", tmp_path / "imported")
    assert RunDir(imported).load_config().arch.seq_len == 48


def test_import_minimind_carries_lm_training_defaults(tmp_path) -> None:
    torch.manual_seed(0)
    model = LMForCausalLM(LMConfig(vocab_size=6400, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=128, qk_norm=False, rms_norm_eps=1e-5))
    torch.save(model.state_dict(), tmp_path / "w.pth")
    out = import_minimind(tmp_path / "w.pth", "minimind2-26m", tmp_path / "run",
                          ["arch.hidden_size=64", "arch.num_hidden_layers=1", "arch.num_attention_heads=4",
                           "arch.num_key_value_heads=2", "arch.intermediate_size=128"])
    _assert_lm_training_defaults(out)
    assert RunDir(out).load_config().arch.seq_len == 340  # the preset's: MiniMind's own max_seq_len
