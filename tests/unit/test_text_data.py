"""Text -> token shards, packed resumable windows, padded document rows, unigram baseline and bits per byte."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from smoltrain.data.text import (
    DocumentRows,
    TokenWindows,
    bits_per_byte,
    build_text_dataset,
    check_dataset_tokenizer,
    dataset_tokenizer_dir,
    iter_documents,
    open_documents,
    open_tokens,
    unigram_entropy,
)
from smoltrain.data.tokenizer import decode, encode, load_tokenizer, train_tokenizer
from smoltrain.errors import ConfigError, DataError
from tests.helpers import make_sentences

PAD, BOS, EOS = 0, 1, 2  # the MiniMind special-token layout of smoltrain's tokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("text")
    sentences = make_sentences(400, seed=3)
    jsonl = root / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": " ".join(sentences[i : i + 4])}) + "\n" for i in range(0, 300, 4)))
    txt = root / "paras.txt"
    txt.write_text("\n\n".join(sentences[300:]) + "\n")
    tok = train_tokenizer([jsonl, txt], vocab_size=350, output=root / "tok")
    return {"root": root, "jsonl": jsonl, "txt": txt, "tok": tok}


@pytest.fixture(scope="module")
def dataset(corpus: dict[str, Path]) -> Path:
    out = corpus["root"] / "ds"
    build_text_dataset([str(corpus["jsonl"]), str(corpus["txt"])], corpus["tok"], out, val_fraction=0.1, seed=0)
    return out


def _documents(dataset: Path, split: str) -> list[list[int]]:
    """The split's documents (text tokens, EOS dropped), split at EOS with a plain loop."""
    docs, current = [], []
    for token in np.asarray(open_tokens(dataset, split)).tolist():
        if token == EOS:
            docs.append(current)
            current = []
        else:
            current.append(token)
    assert not current  # every document ends with EOS
    return docs


def test_txt_paragraphs_and_jsonl(tmp_path: Path) -> None:
    txt = tmp_path / "a.txt"
    txt.write_text("first para\nstill first\n\n \n\nsecond  para\n\n\n")
    assert list(iter_documents([str(txt)])) == ["first para\nstill first", "second  para"]
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text('{"text": "x y"}\n\n{"text": ""}\n{"text": "z"}\n')
    assert list(iter_documents([str(tmp_path)])) == ["first para\nstill first", "second  para", "x y", "z"]


def test_metadata_consistent_with_shards(dataset: Path, corpus: dict[str, Path]) -> None:
    meta = json.loads((dataset / "metadata.json").read_text())
    assert meta["dtype"] == "uint16" and meta["eos_id"] == EOS
    assert (meta["bos_id"], meta["pad_id"]) == (BOS, PAD)
    assert meta["documents"] == 75 + 100
    assert meta["splits"]["val"]["documents"] == round(175 * 0.1)
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 175
    total_bytes = 0
    for split in ("train", "val"):
        tokens = open_tokens(dataset, split)
        info = meta["splits"][split]
        assert (dataset / f"{split}.bin").stat().st_size == 2 * info["tokens"] == 2 * len(tokens)
        # One EOS per document, and the last token of the shard is an EOS.
        assert int((tokens == EOS).sum()) == info["documents"] and tokens[-1] == EOS
        total_bytes += info["bytes"]
    docs = list(iter_documents([str(corpus["jsonl"]), str(corpus["txt"])]))
    assert total_bytes == sum(len(d.encode()) for d in docs)
    assert not [p for p in dataset.parent.iterdir() if p.name.startswith(".ds.")]


def test_shard_decodes_to_documents(dataset: Path, corpus: dict[str, Path]) -> None:
    tok = load_tokenizer(corpus["tok"])
    tokens = np.asarray(open_tokens(dataset, "train")).tolist()
    texts = decode(tok, tokens).split("<|im_end|>")[:-1]
    docs = list(iter_documents([str(corpus["jsonl"]), str(corpus["txt"])]))
    assert set(texts) <= set(docs) and len(texts) == len(docs) - round(175 * 0.1)
    assert encode(tok, texts[0]) + [EOS] == tokens[: len(encode(tok, texts[0])) + 1]


def test_build_is_deterministic_and_replaces(dataset: Path, corpus: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "again"
    args = ([str(corpus["jsonl"]), str(corpus["txt"])], corpus["tok"])
    build_text_dataset(*args, out, val_fraction=0.1, seed=0, workers=1)
    assert (out / "val.bin").read_bytes() == (dataset / "val.bin").read_bytes()
    build_text_dataset(*args, out, val_fraction=0.1, seed=1)  # replaces the previous dataset
    assert (out / "val.bin").read_bytes() != (dataset / "val.bin").read_bytes()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(DataError, match="not a dataset"):
        build_text_dataset(*args, tmp_path / "other")


@pytest.mark.parametrize(
    ("line", "problem"),
    [("not json", "not valid JSON"), ('{"txt": "a"}', "no 'text' field"), ('{"text": 3}', "non-string")],
)
def test_malformed_line(corpus: dict[str, Path], tmp_path: Path, line: str, problem: str) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "good one"}\n{"text": "good two"}\n' + line + '\n{"text": "good three"}\n')
    out = tmp_path / "out"
    with pytest.raises(DataError, match=rf"bad\.jsonl:3: line (is|has) .*{problem}") as info:
        build_text_dataset([str(bad)], corpus["tok"], out)
    assert "\n" not in str(info.value)
    assert not out.exists() and list(tmp_path.iterdir()) == [bad]
    meta = build_text_dataset([str(bad)], corpus["tok"], out, skip_bad_lines=True, val_fraction=0.0)
    assert meta["skipped_lines"] == 1 and meta["documents"] == 3 and meta["first_skipped"].endswith("bad.jsonl:3")


def test_input_errors(corpus: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        build_text_dataset([str(tmp_path / "nope.jsonl")], corpus["tok"], tmp_path / "o")
    with pytest.raises(DataError, match="no tokenizer found"):
        build_text_dataset([str(corpus["txt"])], tmp_path, tmp_path / "o")
    parquet = tmp_path / "x.parquet"
    parquet.write_bytes(b"")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match="pip install pyarrow"):
            build_text_dataset([str(parquet)], corpus["tok"], tmp_path / "o")
    with pytest.raises(ConfigError):
        build_text_dataset([str(corpus["txt"])], corpus["tok"], tmp_path / "o", val_fraction=1.0)
    assert not (tmp_path / "o").exists()


def test_windows_shapes_and_shift(dataset: Path) -> None:
    windows = TokenWindows(dataset, "train", seq_len=16, global_batch_size=4, seed=0)
    tokens = np.asarray(open_tokens(dataset, "train"))
    assert windows.num_windows == (len(tokens) - 1) // 16
    batch = next(windows)
    assert batch["input_ids"].shape == batch["targets"].shape == (4, 16)
    assert batch["input_ids"].dtype == batch["targets"].dtype == torch.int64
    assert torch.equal(batch["input_ids"][:, 1:], batch["targets"][:, :-1])
    # Every row is a window of the shard starting at a multiple of seq_len.
    for row_in, row_lab in zip(batch["input_ids"], batch["targets"], strict=True):
        full = np.concatenate([row_in.numpy(), row_lab.numpy()[-1:]])
        starts = [s for s in range(0, len(tokens) - 16, 16) if np.array_equal(tokens[s : s + 17], full)]
        assert starts


def test_rank_slices_partition_global_batch(dataset: Path) -> None:
    full = TokenWindows(dataset, seq_len=8, global_batch_size=6, seed=5)
    ranks = [TokenWindows(dataset, seq_len=8, global_batch_size=6, rank=r, world_size=3, seed=5) for r in range(3)]
    for _ in range(3):
        whole = next(full)["input_ids"]
        parts = torch.cat([next(r)["input_ids"] for r in ranks])
        assert torch.equal(whole, parts)
    with pytest.raises(ConfigError, match="divisible"):
        TokenWindows(dataset, seq_len=8, global_batch_size=5, world_size=2)


def test_epochs_resume_and_determinism(dataset: Path) -> None:
    make = lambda seed: TokenWindows(dataset, seq_len=32, global_batch_size=8, seed=seed)
    a = make(1)
    epoch_len = a.batches_per_epoch
    assert epoch_len >= 2
    first_epoch = [next(a)["input_ids"] for _ in range(epoch_len)]
    # One epoch visits distinct windows.
    rows = torch.cat(first_epoch)
    assert len({tuple(r.tolist()) for r in rows}) == len(rows)
    state = a.state_dict()
    expected = [next(a)["targets"] for _ in range(epoch_len + 2)]  # crosses into epoch 2
    assert a.state_dict()["epoch"] == 2
    b = make(1)
    b.load_state_dict(state)
    assert all(torch.equal(x, next(b)["targets"]) for x in expected)
    assert torch.equal(make(1).__next__()["input_ids"], first_epoch[0])
    assert not torch.equal(make(2).__next__()["input_ids"], first_epoch[0])
    # Epoch 1 is a different order from epoch 0.
    assert not torch.equal(expected[0], first_epoch[0])


def test_iter_eval_covers_val_once(dataset: Path) -> None:
    w = TokenWindows(dataset, "val", seq_len=8, global_batch_size=2)
    tokens = np.asarray(open_tokens(dataset, "val"))
    batches = list(w.iter_eval(batch_size=3))
    labels = torch.cat([b["targets"] for b in batches]).reshape(-1).numpy()
    assert np.array_equal(labels, tokens[1 : 1 + w.num_windows * 8])
    shards = [
        list(TokenWindows(dataset, "val", seq_len=8, global_batch_size=2, rank=r, world_size=2).iter_eval(3))
        for r in range(2)
    ]
    assert sum(len(b["targets"]) for s in shards for b in s) == w.num_windows


def test_too_small_for_a_batch(dataset: Path) -> None:
    w = TokenWindows(dataset, "val", seq_len=64, global_batch_size=10_000)
    with pytest.raises(DataError, match="fewer than one global batch"):
        next(w)


def test_unigram_entropy_known_distribution(tmp_path: Path) -> None:
    root = tmp_path / "u"
    root.mkdir()
    np.array([0, 0, 1, 1, 1, 1, 2, 2], dtype=np.uint16).tofile(root / "train.bin")
    np.array([0, 1], dtype=np.uint16).tofile(root / "val.bin")
    meta = {"format": "smoltrain-text-v2", "vocab_size": 4, "dtype": "uint16"}
    (root / "metadata.json").write_text(json.dumps(meta))
    # p = (1/4, 1/2, 1/4, 0): val [0, 1] -> (ln 4 + ln 2) / 2.
    assert unigram_entropy(root, "val", alpha=0.0) == pytest.approx((math.log(4) + math.log(2)) / 2)
    assert unigram_entropy(root, "train", alpha=0.0) == pytest.approx(1.5 * math.log(2))
    np.array([3], dtype=np.uint16).tofile(root / "val.bin")
    assert unigram_entropy(root, "val", alpha=0.0) == math.inf
    assert unigram_entropy(root, "val", alpha=1.0) == pytest.approx(math.log(12))


def test_unigram_entropy_real_and_bpb(dataset: Path) -> None:
    h = unigram_entropy(dataset)
    meta = json.loads((dataset / "metadata.json").read_text())
    assert 0 < h < math.log(meta["vocab_size"])
    val = meta["splits"]["val"]
    assert bits_per_byte(h, val["tokens"], val["bytes"]) == pytest.approx(
        h * val["tokens"] / val["bytes"] / math.log(2)
    )
    assert bits_per_byte(math.log(2), 10, 10) == pytest.approx(1.0)


def test_document_bos_windows_cut_the_stream_with_bos_before_every_document(dataset: Path) -> None:
    # The stream written out with a plain loop: BOS, the document, its EOS, for every document in order.
    stream = [t for doc in _documents(dataset, "train") for t in (BOS, *doc, EOS)]
    seq_len = 16
    windows = TokenWindows(dataset, "train", seq_len=seq_len, global_batch_size=4, seed=0, document_bos=True)
    assert windows.num_windows == (len(stream) - 1) // seq_len
    batch = windows._windows(np.arange(windows.num_windows))
    for i, (inputs, targets) in enumerate(zip(batch["input_ids"].tolist(), batch["targets"].tolist(), strict=True)):
        window = stream[i * seq_len : i * seq_len + seq_len + 1]
        assert inputs == window[:-1]
        assert targets == [-100 if t == BOS else t for t in window[1:]]  # a BOS after an EOS is given, not learnt
    # Every text token and EOS of the stream is a target once (the first window's first token is never one).
    learnt = batch["targets"][batch["targets"] != -100]
    assert len(learnt) == sum(1 for t in stream[1 : windows.num_windows * seq_len + 1] if t != BOS)
    plain = TokenWindows(dataset, "train", seq_len=seq_len, global_batch_size=4, seed=0)
    assert windows.num_windows > plain.num_windows  # one BOS more per document


def test_document_rows_layout(dataset: Path, corpus: dict[str, Path]) -> None:
    docs = _documents(dataset, "train")
    seq_len = 24  # shorter than some documents, longer than others
    assert min(map(len, docs)) < seq_len - 1 < max(map(len, docs))
    rows = DocumentRows(dataset, "train", seq_len=seq_len, global_batch_size=4, seed=0)
    assert rows.num_windows == len(docs) == json.loads((dataset / "metadata.json").read_text())["splits"]["train"][
        "documents"]
    batch = rows._windows(np.arange(len(docs)))
    assert batch["input_ids"].shape == batch["targets"].shape == (len(docs), seq_len)
    for doc, inputs, targets in zip(docs, batch["input_ids"].tolist(), batch["targets"].tolist(), strict=True):
        row = [BOS, *doc[: seq_len - 1], EOS]  # MiniMind's PretrainDataset: bos + truncated ids + eos, then pad
        row += [PAD] * (seq_len + 1 - len(row))
        assert inputs == row[:-1]
        expected = [t if i + 1 < len(doc[: seq_len - 1]) + 2 else -100 for i, t in enumerate(row[1:])]
        assert targets == expected
        assert targets.count(-100) == seq_len - min(len(doc) + 1, seq_len)
    tok = load_tokenizer(corpus["tok"] / "tokenizer.json")
    short = next(i for i, d in enumerate(docs) if len(d) < seq_len - 1)
    text_ids = [t for t in batch["targets"][short].tolist() if t != -100]
    assert text_ids[-1] == EOS and decode(tok, text_ids[:-1]) == decode(tok, docs[short])


def test_document_rows_resume_and_ranks(dataset: Path) -> None:
    make = lambda **kw: DocumentRows(dataset, seq_len=16, global_batch_size=6, seed=3, **kw)  # noqa: E731
    a = make()
    epoch_len = a.batches_per_epoch
    assert epoch_len >= 2
    first_epoch = torch.cat([next(a)["input_ids"] for _ in range(epoch_len)])
    assert len({tuple(r.tolist()) for r in first_epoch}) == len(first_epoch)  # distinct documents
    for _ in range(epoch_len - 1):
        next(a)
    state = a.state_dict()  # one batch before the end of epoch 1
    expected = [next(a) for _ in range(3)]  # crosses into epoch 2
    b = make()
    b.load_state_dict(state)
    for want in expected:
        got = next(b)
        assert torch.equal(got["input_ids"], want["input_ids"]) and torch.equal(got["targets"], want["targets"])
    ranks = [make(rank=r, world_size=2) for r in range(2)]
    whole = make()
    for _ in range(2):
        assert torch.equal(next(whole)["targets"], torch.cat([next(r)["targets"] for r in ranks]))


def test_document_rows_eval_counts_real_tokens(dataset: Path) -> None:
    meta = json.loads((dataset / "metadata.json").read_text())
    longest = max(map(len, _documents(dataset, "val")))
    rows = DocumentRows(dataset, "val", seq_len=longest + 1, global_batch_size=2)
    batches = list(rows.iter_eval(batch_size=3))
    # No truncation: the scored tokens are exactly the split's tokens (text + EOS), so bits per byte holds.
    assert sum(int((b["targets"] != -100).sum()) for b in batches) == meta["splits"]["val"]["tokens"]
    assert sum(len(b["targets"]) for b in batches) == meta["splits"]["val"]["documents"]
    with pytest.raises(DataError, match="packing=true"):
        next(DocumentRows(dataset, "val", seq_len=8, global_batch_size=10_000))


def test_old_format_is_refused_with_the_rebuild_verb(dataset: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    meta = json.loads((dataset / "metadata.json").read_text())
    meta["format"] = "smoltrain-text-v1"
    (old / "metadata.json").write_text(json.dumps(meta))
    for split in ("train", "val"):
        (old / f"{split}.bin").write_bytes((dataset / f"{split}.bin").read_bytes())
    for rows in (TokenWindows, DocumentRows):
        with pytest.raises(DataError, match="rebuild with smoltrain data text"):
            rows(old, seq_len=8, global_batch_size=2)


def test_one_document_per_row_on_chat_bearing_pretrain_text(corpus: dict[str, Path], tmp_path: Path) -> None:
    # MiniMind's pretrain_hq.jsonl lines hold several chat segments, each ending in <|im_end|> (= EOS): the rows
    # must follow the lines, not the EOS tokens.
    lines = [f"<|im_start|>user {i} a<|im_end|><|im_start|>assistant {i} b<|im_end|>tail {i}" for i in range(6)]
    src = tmp_path / "hq.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    out = tmp_path / "hq"
    meta = build_text_dataset([str(src)], corpus["tok"], out, val_fraction=0.0)
    assert meta["splits"]["train"]["documents"] == 6
    tok = load_tokenizer(corpus["tok"])
    rows = DocumentRows(out, "train", seq_len=64, global_batch_size=6)
    assert rows.num_windows == 6
    batch = next(rows)
    texts = set()
    for ids, targets in zip(batch["input_ids"].tolist(), batch["targets"].tolist(), strict=True):
        real = [ids[0]] + [t for t in targets if t != -100]
        assert real[0] == BOS and real[-1] == EOS
        texts.add(decode(tok, real[1:-1]))
    assert texts == set(lines)  # each row is one whole line, its inner EOS tokens kept


def test_a_single_document_gets_a_val_split(corpus: dict[str, Path], tmp_path: Path) -> None:
    text = "\n".join(f"line {i} of the only paragraph" for i in range(50))
    src = tmp_path / "input.txt"
    src.write_text(text)  # no blank line: one document, nanoGPT's input.txt habit
    out = tmp_path / "one"
    meta = build_text_dataset([str(src)], corpus["tok"], out, val_fraction=0.1)
    assert meta["val_split"] == "tail of the single document"
    tok = load_tokenizer(corpus["tok"])
    train = decode(tok, [t for t in np.asarray(open_tokens(out, "train")).tolist() if t != EOS])
    val = decode(tok, [t for t in np.asarray(open_tokens(out, "val")).tolist() if t != EOS])
    assert train + val == text  # nothing lost, nothing repeated
    assert val.startswith("line 45 ") and train.endswith("\n")  # the last 10% of the lines, cut at a line start
    one_line = tmp_path / "line.txt"
    one_line.write_text("x")
    with pytest.raises(DataError, match="too short to split"):
        build_text_dataset([str(one_line)], corpus["tok"], tmp_path / "short", val_fraction=0.1)
    assert build_text_dataset([str(one_line)], corpus["tok"], tmp_path / "short", val_fraction=0.0)["documents"] == 1


def test_dataset_is_self_contained_and_refuses_a_changed_tokenizer(dataset: Path, corpus: dict[str, Path],
                                                                    tmp_path: Path) -> None:
    meta = json.loads((dataset / "metadata.json").read_text())
    assert meta["tokenizer"]["path"] == "tokenizer"  # relative: the dataset can move
    assert (dataset / "tokenizer" / "tokenizer.json").read_bytes() == (corpus["tok"] / "tokenizer.json").read_bytes()
    moved = tmp_path / "moved"
    build_text_dataset([str(corpus["jsonl"])], corpus["tok"], tmp_path / "ds", val_fraction=0.1)
    (tmp_path / "ds").rename(moved)
    assert check_dataset_tokenizer(moved) == moved / "tokenizer"
    assert dataset_tokenizer_dir(moved) == moved / "tokenizer"
    other = train_tokenizer([corpus["txt"]], vocab_size=300, output=tmp_path / "tok2")
    (moved / "tokenizer" / "tokenizer.json").write_bytes((other / "tokenizer.json").read_bytes())
    with pytest.raises(DataError, match="is not the tokenizer .* was built with") as err:
        check_dataset_tokenizer(moved)
    assert "\n" not in str(err.value)
    (moved / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(DataError, match="lost its tokenizer copy"):
        check_dataset_tokenizer(moved)


def test_document_index_matches_eos_positions_on_plain_text(dataset: Path) -> None:
    for split in ("train", "val"):
        idx = open_documents(dataset, split)
        tokens = np.asarray(open_tokens(dataset, split))
        assert idx[0] == 0 and idx[-1] == len(tokens)
        assert np.array_equal(idx[1:] - 1, np.flatnonzero(tokens == EOS))  # no EOS inside plain-text documents


def test_chat_lines_given_to_data_text_name_the_verb(corpus: dict[str, Path], tmp_path: Path) -> None:
    for line, verb in (({"conversations": [{"role": "user", "content": "hi"}]}, "data sft"),
                       ({"chosen": [], "rejected": []}, "data dpo")):
        src = tmp_path / "chat.jsonl"
        src.write_text(json.dumps(line) + "\n")
        with pytest.raises(DataError, match=f"use `smoltrain {verb}`"):
            build_text_dataset([str(src)], corpus["tok"], tmp_path / "x", skip_bad_lines=True)
    mixed = tmp_path / "mixed.jsonl"  # a stray chat line among text lines is a bad line like any other
    mixed.write_text(json.dumps({"text": "a b"}) + "\n" + json.dumps({"conversations": []}) + "\n")
    with pytest.raises(DataError, match=r"mixed.jsonl:2: line holds SFT chat data.*smoltrain data sft"):
        build_text_dataset([str(mixed)], corpus["tok"], tmp_path / "x", val_fraction=0.0)
    assert build_text_dataset([str(mixed)], corpus["tok"], tmp_path / "x", val_fraction=0.0,
                              skip_bad_lines=True)["skipped_lines"] == 1
