"""MiniMind SFT/DPO jsonl -> token + assistant-mask shards; the mask, the rendering and the padded rows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from smoltrain.cli import main
from smoltrain.data.chat import (
    PreferenceRows,
    SFTRows,
    build_dpo_dataset,
    build_sft_dataset,
    dataset_tokenizer_dir,
    read_chat_metadata,
    render_conversation,
    tokenize_conversation,
    validate_messages,
)
from smoltrain.data.instructions import instruction_examples
from smoltrain.data.shards import check_dataset_tokenizer
from smoltrain.data.tokenizer import apply_chat_template, decode, load_tokenizer, train_tokenizer
from smoltrain.errors import ConfigError, DataError
from tests.helpers import make_sentences

PAD, BOS, EOS = 0, 1, 2

MULTI_TURN = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is two plus two?"},
    {"role": "assistant", "content": "Four."},
    {"role": "user", "content": "And three plus three?"},
    {"role": "assistant", "content": "Six, of course."},
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("chat")
    corpus = root / "c.txt"
    corpus.write_text("\n\n".join(make_sentences(300, seed=5)) + "\n")
    return train_tokenizer([corpus], vocab_size=320, output=root / "tok")


def _expected_mask(tokenizer, ids: list[int], text: str) -> list[int]:  # type: ignore[no-untyped-def]
    """The mask by the definition, on characters: inside [end of each '<|im_start|>assistant\\n', end of the
    '<|im_end|>\\n' after it). Each token is placed by decoding it (ASCII text: one char per byte)."""
    spans = [(m.end(), text.index("<|im_end|>\n", m.end()) + len("<|im_end|>\n"))
             for m in re.finditer(re.escape("<|im_start|>assistant\n"), text)]
    mask, at = [], 0
    for token in ids:
        piece = decode(tokenizer, [token])
        assert text.startswith(piece, at)
        mask.append(int(any(lo <= at < hi for lo, hi in spans)))
        at += len(piece)
    return mask


def test_mask_covers_assistant_spans_token_by_token(tok_dir: Path) -> None:
    tokenizer = load_tokenizer(tok_dir)
    messages = validate_messages(MULTI_TURN)
    text = render_conversation(messages)
    assert text == apply_chat_template(MULTI_TURN)  # plain turns render exactly as the chat template
    out = tokenize_conversation(tokenizer, messages, max_length=10_000)
    ids, mask = out.ids.tolist(), out.mask.tolist()
    assert decode(tokenizer, ids) == text
    assert mask == _expected_mask(tokenizer, ids, text)
    supervised = "".join(decode(tokenizer, [t]) for t, m in zip(ids, mask, strict=True) if m)
    assert supervised == "Four.<|im_end|>\nSix, of course.<|im_end|>\n"
    # Pinned by hand: the BOS-like <|im_start|> opening, the user's <|im_end|> unsupervised, the assistant's
    # <|im_end|> and the newline after it supervised, and the first answer token right after the header.
    assert ids[0] == BOS and mask[0] == 0
    ends = [i for i, t in enumerate(ids) if t == EOS]
    assert [mask[i] for i in ends] == [0, 0, 1, 0, 1]  # system, user, assistant, user, assistant
    assert [decode(tokenizer, [ids[i + 1]]) for i in ends] == ["\n"] * 5
    assert [mask[i + 1] for i in ends] == [0, 0, 1, 0, 1]
    first = mask.index(1)
    assert decode(tokenizer, ids[:first]).endswith("<|im_start|>assistant\n")
    assert decode(tokenizer, [ids[first]]).startswith("F")


def test_truncated_mid_answer_span_runs_to_the_end(tok_dir: Path) -> None:
    tokenizer = load_tokenizer(tok_dir)
    messages = validate_messages(MULTI_TURN)
    full = tokenize_conversation(tokenizer, messages, max_length=10_000)
    last_answer = len(full.ids) - 3  # inside "Six, of course." (before its <|im_end|> and newline)
    cut = tokenize_conversation(tokenizer, messages, max_length=last_answer)
    assert cut.ids.tolist() == full.ids[:last_answer].tolist()
    assert cut.mask.tolist() == full.mask[:last_answer].tolist()
    assert cut.mask[-1] == 1 and EOS not in cut.ids[-3:].tolist()


def test_tools_reasoning_and_tool_results_render_as_minimind(tok_dir: Path) -> None:
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"a": "int"}}}]
    calls = [{"name": "add", "arguments": {"a": 1, "b": 2}}]
    messages = validate_messages([
        {"role": "system", "content": "S", "tools": json.dumps(tools)},
        {"role": "user", "content": "1+2?"},
        {"role": "assistant", "content": "", "reasoning_content": "use the tool", "tool_calls": json.dumps(calls)},
        {"role": "tool", "content": "3"},
        {"role": "tool", "content": "ok"},
        {"role": "assistant", "content": "<think>\nsum\n</think>\n\nIt is 3."},
    ])
    text = render_conversation(messages)
    assert text.startswith("<|im_start|>system\nS\n\n# Tools\n\n")
    assert '<tools>\n{"type": "function", "function": {"name": "add", "parameters": {"a": "int"}}}\n</tools>' in text
    assert ("<|im_start|>assistant\n<think>\nuse the tool\n</think>\n\n<tool_call>\n"
            '{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call><|im_end|>\n') in text
    assert ("<|im_start|>user\n<tool_response>\n3\n</tool_response>\n<tool_response>\nok\n</tool_response>"
            "<|im_end|>\n") in text  # consecutive tool results: one user turn
    assert text.endswith("<|im_start|>assistant\n<think>\nsum\n</think>\n\nIt is 3.<|im_end|>\n")
    out = tokenize_conversation(load_tokenizer(tok_dir), messages)
    supervised = decode(load_tokenizer(tok_dir), out.ids[out.mask == 1].tolist())
    assert "tool_response" not in supervised and supervised.count("<|im_end|>") == 2  # tool-call turns are trained


@pytest.mark.parametrize(("line", "problem"), [
    ("not json", "is not valid JSON"),
    ('{"conversations": []}', "non-empty list"),
    ('{"conversations": [{"role": "bot", "content": "x"}]}', "role 'bot'"),
    ('{"conversations": [{"role": "user", "content": 3}]}', "no string 'content'"),
    ('{"conversations": [{"role": "user", "content": "hi"}]}', "no assistant turn"),
    ('{"conversations": [{"role": "user", "content": "x", "tools": "[]"}, {"role": "assistant", "content": "y"}]}',
     "tools belong on the first message, a system turn"),
    ('{"conversations": [{"role": "assistant", "content": "x", "tool_calls": "[{"}]}', "not valid JSON"),
    ('{"text": "plain"}', "use `smoltrain data text`"),
])
def test_malformed_line_names_file_line_and_problem(tok_dir: Path, tmp_path: Path, line: str, problem: str) -> None:
    good = json.dumps({"conversations": MULTI_TURN})
    src = tmp_path / "sft.jsonl"
    src.write_text(good + "\n" + good + "\n" + line + "\n")
    with pytest.raises(DataError, match=rf"sft\.jsonl:3: line .*{re.escape(problem)}.*--skip-bad-lines"):
        build_sft_dataset([str(src)], tok_dir, tmp_path / "out")
    meta = build_sft_dataset([str(src)], tok_dir, tmp_path / "out", skip_bad_lines=True, val_fraction=0.0)
    assert meta["skipped_lines"] == 1 and meta["first_skipped"] == f"{src}:3"
    assert meta["splits"]["train"]["documents"] == 2


def test_wrong_kind_of_file_names_the_verb(tok_dir: Path, tmp_path: Path) -> None:
    text = tmp_path / "pre.jsonl"
    text.write_text(json.dumps({"text": "hello"}) + "\n")
    sft = tmp_path / "sft.jsonl"
    sft.write_text(json.dumps({"conversations": MULTI_TURN}) + "\n")
    plain = tmp_path / "input.txt"
    plain.write_text("hello\n")
    cases = [(build_sft_dataset, text, "use `smoltrain data text`"),
             (build_dpo_dataset, sft, "use `smoltrain data sft`"),
             (build_sft_dataset, plain, "use `smoltrain data text`"),
             (build_dpo_dataset, text, "smoltrain data text")]
    for build, src, verb in cases:
        with pytest.raises(DataError, match=re.escape(verb)) as err:
            build([str(src)], tok_dir, tmp_path / "out", skip_bad_lines=True)  # a wrong file is not a bad line
        assert "\n" not in str(err.value)
    dpo = tmp_path / "dpo.jsonl"
    dpo.write_text(json.dumps({"chosen": MULTI_TURN, "rejected": MULTI_TURN}) + "\n")
    with pytest.raises(DataError, match=re.escape("use `smoltrain data dpo`")):
        build_sft_dataset([str(dpo)], tok_dir, tmp_path / "out")


def _sft_lines(n: int) -> list[dict]:
    return [{"conversations": [{"role": "user", "content": f"say {i}"},
                               {"role": "assistant", "content": f"{i} " * (1 + i % 5)}]} for i in range(n)]


def test_sft_dataset_layout_and_rows(tok_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "sft.jsonl"
    src.write_text("".join(json.dumps(line) + "\n" for line in _sft_lines(40)))
    out = tmp_path / "ds"
    meta = build_sft_dataset([str(src)], tok_dir, out, max_length=64, val_fraction=0.1, seed=3)
    root, again = read_chat_metadata(out, "sft")
    assert again == meta and meta["format"] == "smoltrain-chat-v1" and meta["kind"] == "sft"
    assert meta["splits"]["train"]["documents"] == 36 and meta["splits"]["val"]["documents"] == 4
    assert meta["tokenizer"]["path"] == "tokenizer" and check_dataset_tokenizer(out) == dataset_tokenizer_dir(out)
    tokenizer = load_tokenizer(dataset_tokenizer_dir(out))
    for split in ("train", "val"):
        ids = np.fromfile(root / f"{split}.bin", dtype=meta["dtype"])
        mask = np.fromfile(root / f"{split}.mask.bin", dtype=np.uint8)
        idx = np.fromfile(root / f"{split}.idx", dtype=np.int64)
        assert len(ids) == len(mask) == idx[-1] == meta["splits"][split]["tokens"]
        assert len(idx) == meta["splits"][split]["documents"] + 1
        assert mask.sum() == meta["splits"][split]["supervised_tokens"]
        for d in range(len(idx) - 1):  # every document is one whole conversation
            text = decode(tokenizer, ids[idx[d] : idx[d + 1]].tolist())
            assert text.startswith("<|im_start|>user\nsay ") and text.endswith("<|im_end|>\n")
    rows = SFTRows(out, "train", seq_len=12, global_batch_size=4, seed=1)
    batch = next(rows)
    assert batch["input_ids"].shape == batch["targets"].shape == (4, 12)
    assert batch["input_ids"].dtype == batch["targets"].dtype == torch.int64
    train_ids = np.fromfile(root / "train.bin", dtype=meta["dtype"]).astype(np.int64)
    train_mask = np.fromfile(root / "train.mask.bin", dtype=np.uint8)
    idx = np.fromfile(root / "train.idx", dtype=np.int64)
    for r, d in enumerate(rows._permutation(0)[:4]):
        doc, dmask = train_ids[idx[d] : idx[d + 1]][:13], train_mask[idx[d] : idx[d + 1]][:13]
        want_ids = np.full(13, PAD)
        want_ids[: len(doc)] = doc
        want_targets = np.full(12, -100)
        for j in range(12):
            if j + 1 < len(doc) and dmask[j + 1]:
                want_targets[j] = doc[j + 1]
        assert batch["input_ids"][r].tolist() == want_ids[:12].tolist()
        assert batch["targets"][r].tolist() == want_targets.tolist()
    state = rows.state_dict()
    following = next(rows)
    resumed = SFTRows(out, "train", seq_len=12, global_batch_size=4, seed=1)
    resumed.load_state_dict(state)
    assert torch.equal(next(resumed)["targets"], following["targets"])
    assert sum(len(b["targets"]) for b in SFTRows(out, "val", 12, 4).iter_eval(3)) == 4
    with pytest.raises(DataError, match="this needs dpo: build it with `smoltrain data dpo`"):
        PreferenceRows(out, "train", 12, 4)


def test_dpo_pairs(tok_dir: Path, tmp_path: Path) -> None:
    lines = [{"chosen": [{"role": "user", "content": f"{i} plus one?"}, {"role": "assistant", "content": f"{i + 1}"}],
              "rejected": [{"role": "user", "content": f"{i} plus one?"}, {"role": "assistant", "content": "no idea"}]}
             for i in range(10)]
    src = tmp_path / "dpo.jsonl"
    src.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "dpo"
    meta = build_dpo_dataset([str(src)], tok_dir, out, val_fraction=0.2)
    assert meta["kind"] == "dpo" and meta["splits"]["train"]["documents"] == 8
    for side in ("chosen", "rejected"):
        assert (out / f"train.{side}.bin").is_file() and (out / f"val.{side}.mask.bin").is_file()
    rows = PreferenceRows(out, "train", seq_len=48, global_batch_size=8)
    batch = next(rows)
    assert set(batch) == {"chosen_input_ids", "chosen_targets", "rejected_input_ids", "rejected_targets"}
    tokenizer = load_tokenizer(out / "tokenizer")
    for r in range(8):
        chosen = decode(tokenizer, [t for t in batch["chosen_targets"][r].tolist() if t != -100])
        rejected = decode(tokenizer, [t for t in batch["rejected_targets"][r].tolist() if t != -100])
        assert rejected == "no idea<|im_end|>\n" and chosen.endswith("<|im_end|>\n")
        prompt_c = decode(tokenizer, batch["chosen_input_ids"][r].tolist()).split("<|im_start|>assistant")[0]
        prompt_r = decode(tokenizer, batch["rejected_input_ids"][r].tolist()).split("<|im_start|>assistant")[0]
        assert prompt_c == prompt_r  # row r of both sides is the same pair
        assert int(chosen.split("<")[0]) == int(prompt_c.split("user\n")[1].split(" ")[0]) + 1
    with pytest.raises(DataError, match="needs both 'chosen' and 'rejected'"):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps(lines[0]) + "\n" + json.dumps({"chosen": lines[0]["chosen"]}) + "\n")
        build_dpo_dataset([str(bad)], tok_dir, tmp_path / "x")


def test_instruction_set_held_out_prompts_are_never_in_train() -> None:
    train = instruction_examples("train", 3000, seed=1)
    heldout = instruction_examples("heldout", 60, seed=2)
    assert {e.task for e in train} == {e.task for e in heldout} == {"add", "reverse", "capital"}
    assert not {e.prompt for e in train} & {e.prompt for e in heldout}
    assert len({e.prompt for e in heldout}) == 60  # distinct held-out items
    for e in heldout:  # exact answers, and a DPO rejection that is really wrong
        if e.task == "add":
            a, b = (int(x) for x in re.findall(r"\d+", e.prompt))
            assert e.answer == str(a + b)
        elif e.task == "reverse":
            assert e.answer == e.prompt.split()[-1].rstrip(".")[::-1] or e.answer[::-1] in e.prompt
        assert e.wrong != e.answer
    train_countries = {e.prompt.split()[-1].strip("?.") for e in train if e.task == "capital"}
    # a held-out capital's country is seen in train under another phrasing
    assert {e.prompt.split()[-1].strip("?.") for e in heldout if e.task == "capital"} <= train_countries
    assert instruction_examples("train", 50, seed=1) == train[:50]  # seeded
    with pytest.raises(ConfigError, match="distinct items"):
        instruction_examples("heldout", 100_000)


def test_cli_instructions_then_sft_and_dpo(tok_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sft, dpo, held = tmp_path / "sft.jsonl", tmp_path / "dpo.jsonl", tmp_path / "held.jsonl"
    assert main(["data", "instructions", "--output", str(sft), "--count", "40"]) == 0
    assert main(["data", "instructions", "--output", str(dpo), "--kind", "dpo", "--count", "20"]) == 0
    assert main(["data", "instructions", "--output", str(held), "--split", "heldout", "--count", "9"]) == 0
    assert len(held.read_text().splitlines()) == 9
    assert main(["data", "sft", "--input", str(sft), "--tokenizer", str(tok_dir), "--output-dir",
                 str(tmp_path / "s"), "--max-length", "64", "--val-fraction", "0.1"]) == 0
    assert "36 train / 4 val conversations" in capsys.readouterr().out
    assert main(["data", "dpo", "--input", str(dpo), "--tokenizer", str(tok_dir), "--output-dir",
                 str(tmp_path / "d")]) == 0
    assert read_chat_metadata(tmp_path / "d", "dpo")[1]["splits"]["train"]["documents"] == 19
    capsys.readouterr()
    assert main(["data", "sft", "--input", str(dpo), "--tokenizer", str(tok_dir), "--output-dir",
                 str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "use `smoltrain data dpo`" in err and "\n" not in err
    assert main(["data", "text", "--input", str(sft), "--tokenizer", str(tok_dir), "--output-dir",
                 str(tmp_path / "x")]) == 2
    assert "use `smoltrain data sft`" in capsys.readouterr().err
