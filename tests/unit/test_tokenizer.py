"""Byte-level BPE tokenizer: exact round trips, MiniMind special tokens, HF-loadable files."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from smoltrain.data.tokenizer import (
    CHAT_TEMPLATE,
    apply_chat_template,
    decode,
    encode,
    load_tokenizer,
    train_tokenizer,
)
from smoltrain.errors import ConfigError, DataError, OutputError
from tests.helpers import make_sentences


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tok")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(make_sentences(300)) + "\n")
    jsonl = root / "more.jsonl"
    jsonl.write_text("".join(json.dumps({"text": s}) + "\n" for s in make_sentences(50, seed=1)))
    return train_tokenizer([corpus, jsonl], vocab_size=400, output=root / "tokenizer")


ROUND_TRIP = [
    "Hello, world!",
    "Crème brûlée à la façon de Zoë — naïve café",
    "中文分词测试，你好世界。",
    "emoji 😀🚀👍🏽 and flags 🇫🇷",
    "  leading and   multiple   spaces\t\ttabs  ",
    "line one\nline two\r\n\n\nline five\n",
    "",
    " ",
    "<|im_start|>user\nhi<|im_end|>\n",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip_exact(tok_dir: Path, text: str) -> None:
    tok = load_tokenizer(tok_dir)
    assert decode(tok, encode(tok, text)) == text


def test_special_token_ids_and_vocab(tok_dir: Path) -> None:
    tok = load_tokenizer(tok_dir)
    assert [tok.token_to_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [0, 1, 2]
    assert tok.get_vocab_size() <= 400
    # Trained merges compress the training language.
    assert len(encode(tok, "the quick brown fox")) < len("the quick brown fox")
    # Special tokens in text are single tokens.
    assert encode(tok, "<|im_end|>") == [2]


def test_files_written(tok_dir: Path) -> None:
    assert {p.name for p in tok_dir.iterdir()} == {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (config["bos_token"], config["eos_token"], config["pad_token"], config["unk_token"]) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
        "<|endoftext|>",
    )
    assert config["chat_template"] == CHAT_TEMPLATE
    assert config["model_max_length"] > 0
    assert config["added_tokens_decoder"]["2"]["content"] == "<|im_end|>"
    special = json.loads((tok_dir / "special_tokens_map.json").read_text())
    assert special["eos_token"] == "<|im_end|>"
    tokenizer_json = json.loads((tok_dir / "tokenizer.json").read_text())
    assert tokenizer_json["normalizer"] is None
    assert tokenizer_json["pre_tokenizer"]["type"] == "ByteLevel"
    assert tokenizer_json["decoder"]["type"] == "ByteLevel"
    assert not list(tok_dir.glob(".*"))  # no temp files left


def test_chat_template() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    expected = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    assert apply_chat_template(messages) == expected
    assert apply_chat_template(messages, add_generation_prompt=True) == expected + "<|im_start|>assistant\n"
    jinja2 = pytest.importorskip("jinja2")
    rendered = jinja2.Environment().from_string(CHAT_TEMPLATE).render(messages=messages, add_generation_prompt=True)
    assert rendered == expected + "<|im_start|>assistant\n"
    with pytest.raises(DataError, match="role"):
        apply_chat_template([{"role": "user"}])


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no tokenizer found"):
        load_tokenizer(tmp_path)
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world")
    with pytest.raises(ConfigError, match="too small"):
        train_tokenizer([corpus], vocab_size=100, output=tmp_path / "t")
    with pytest.raises(DataError, match="does not exist"):
        train_tokenizer([tmp_path / "missing.txt"], vocab_size=300, output=tmp_path / "t")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):
        train_tokenizer([bad], vocab_size=300, output=tmp_path / "t")
    assert not (tmp_path / "t" / "tokenizer.json").exists()


def test_loads_with_transformers_when_installed(tok_dir: Path) -> None:
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(tok_dir))
    tok = load_tokenizer(tok_dir)
    text = "Crème brûlée 中文 😀\n  x"
    assert hf.encode(text, add_special_tokens=False) == encode(tok, text)
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (1, 2, 0)
    messages = [{"role": "user", "content": "Hi"}]
    assert hf.apply_chat_template(messages, tokenize=False) == apply_chat_template(messages)


def test_a_failed_write_leaves_no_half_tokenizer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(make_sentences(50)) + "\n")
    real_replace = os.replace

    def full_on_the_last_file(source: str, target: str) -> None:
        if str(target).endswith("tokenizer.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", full_on_the_last_file)
    with pytest.raises(OutputError, match=rf"cannot write {tmp_path / 't'}/tokenizer\.json: No space left on device"):
        train_tokenizer([corpus], vocab_size=300, output=tmp_path / "t")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]  # the two files written before are gone too


def test_reads_chat_jsonl_turn_contents(tmp_path: Path) -> None:
    # MiniMind trains its tokenizer on its SFT file: every turn's content counts, the JSON keys do not.
    words = ["zyqxa", "vomplu"]
    sft = tmp_path / "sft.jsonl"
    sft.write_text("".join(json.dumps({"conversations": [{"role": "user", "content": f"{words[0]} {i}"},
                                                          {"role": "assistant", "content": f"{words[1]} {i}"}]}) + "\n"
                           for i in range(50)))
    dpo = tmp_path / "dpo.jsonl"
    dpo.write_text(20 * (json.dumps({"chosen": [{"role": "assistant", "content": "qqwwrt"}],
                                     "rejected": [{"role": "assistant", "content": "qqwwrt"}]}) + "\n"))
    out = train_tokenizer([sft, dpo], vocab_size=300, output=tmp_path / "tok", min_frequency=1)
    vocab = load_tokenizer(out).get_vocab()
    assert {"zyqxa", "vomplu", "qqwwrt"} <= set(vocab)  # each learnt as one token from the turns' contents
    assert "conversations" not in vocab and "assistant" not in vocab


def test_refuses_to_overwrite_without_the_flag(tmp_path: Path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(make_sentences(50)) + "\n")
    out = train_tokenizer([corpus], vocab_size=300, output=tmp_path / "t")
    before = (out / "tokenizer.json").read_bytes()
    with pytest.raises(DataError, match="already exists: choose another --output, or pass --overwrite"):
        train_tokenizer([corpus], vocab_size=280, output=out)
    assert (out / "tokenizer.json").read_bytes() == before
    train_tokenizer([corpus], vocab_size=280, output=out, overwrite=True)
    assert load_tokenizer(out).get_vocab_size() == 280
    (tmp_path / "empty").mkdir()  # an empty directory is no tokenizer to lose
    train_tokenizer([corpus], vocab_size=300, output=tmp_path / "empty")
