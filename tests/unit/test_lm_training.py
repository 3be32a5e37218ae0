"""The LM family through the trainer: tokenizer -> shards -> training -> validation loss, and exact resume."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from smoltrain.data.text import build_text_dataset, open_tokens
from smoltrain.data.tokenizer import train_tokenizer
from smoltrain.families import load_config
from smoltrain.families.lm import LMFamily
from smoltrain.runtime.distributed import DistEnv

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


def test_family_scores_each_position_on_the_next_token(text_data) -> None:
    # The rows' targets are pre-shifted; the family must not shift them again.
    cfg = load_config("lm-pretrain-cpu", [*TINY, "arch.document_bos=false", f"data_paths=[{text_data}]"])
    family = LMFamily(LMFamily.resolve(cfg), DistEnv(), torch.device("cpu"))
    torch.manual_seed(0)
    model = family.build_model()
    batch = next(family.train_stream())
    out = family.train_step(model, batch, None)
    tokens = torch.from_numpy(open_tokens(text_data, "train").astype("int64"))
    # Each row's window in the shard; the token after input position t is the shard's next token.
    starts = [next(s for s in range(0, len(tokens) - 32, 32) if torch.equal(tokens[s : s + 32], row))
              for row in batch["input_ids"]]
    next_tokens = torch.stack([tokens[s + 1 : s + 33] for s in starts])
    logits = model(batch["input_ids"]).logits
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), next_tokens.reshape(-1))
    torch.testing.assert_close(out.loss, want * batch["input_ids"].shape[0] / cfg.global_batch_size)


def test_family_uses_the_datasets_tokenizer_copy_and_refuses_a_changed_one(text_data, tmp_path) -> None:
    import shutil

    from smoltrain.errors import DataError

    data = tmp_path / "text"
    shutil.copytree(text_data, data)
    cfg = LMFamily.resolve(load_config("lm-pretrain-cpu", [*TINY, f"data_paths=[{data}]"]))
    family = LMFamily(cfg, DistEnv(), torch.device("cpu"))
    assert family.tokenizer_dir() == data / "tokenizer"  # the copy, not the directory it was built from
    next(family.train_stream())
    # Retrain "the" tokenizer in place: the dataset's ids no longer mean what the tokenizer says.
    retrained = train_tokenizer([text_data.parent / "corpus.txt"], 280, tmp_path / "tok2")
    shutil.copyfile(retrained / "tokenizer.json", data / "tokenizer" / "tokenizer.json")
    with pytest.raises(DataError, match="is not the tokenizer .* was built with"):
        family.train_stream()
