"""`smoltrain chat`: the tokenizer's own template, a history within the context, one seed per session, a
readable transcript when piped, and a warning for runs never trained on chat data."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from smoltrain.apps.chat import ChatSession, chat_training_note
from smoltrain.apps.generate import load_lm
from smoltrain.cli import main
from smoltrain.data.tokenizer import CHAT_TEMPLATE, apply_chat_template, encode
from tests.unit.test_hf_interop import make_run

pytest.importorskip("jinja2", reason="jinja2 (dev extra) renders tokenizer chat templates")

# A MiniMind-3-like template: assistant turns and the generation prompt carry a <think> block.
THINK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' %}<think>\n\n</think>\n\n{% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n\n</think>\n\n{% endif %}"
)
SAMPLING = {"max_new_tokens": 4, "temperature": 1.5, "top_k": None, "top_p": None, "repetition_penalty": 1.0,
            "stop_at_eos": False}


def _run(tmp_path: Path, *extra: str, template: str | None = None) -> Path:
    make_run(tmp_path / "run", *extra, tokenizer=True)
    if template is not None:
        config_path = tmp_path / "run" / "tokenizer" / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        config_path.write_text(json.dumps({**config, "chat_template": template}))
    return tmp_path / "run"


def test_the_tokenizers_own_template_is_used(tmp_path: Path) -> None:
    session = ChatSession(load_lm(_run(tmp_path, template=THINK_TEMPLATE), device="cpu"), SAMPLING)
    messages = [{"role": "user", "content": "w1"}, {"role": "assistant", "content": "w2"},
                {"role": "user", "content": "w3"}]
    assert session.template_name == "the tokenizer's chat template"
    assert session.render(messages) == ("<|im_start|>user\nw1<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>"
                                        "\n\nw2<|im_end|>\n<|im_start|>user\nw3<|im_end|>\n<|im_start|>assistant\n"
                                        "<think>\n\n</think>\n\n")


def test_smoltrains_template_renders_as_its_chatml(tmp_path: Path) -> None:
    session = ChatSession(load_lm(_run(tmp_path, template=CHAT_TEMPLATE), device="cpu"), SAMPLING,
                          system="w9")
    messages = [*session.messages, {"role": "user", "content": "w1"}]
    assert session.render(messages) == apply_chat_template(messages, add_generation_prompt=True)


def test_history_is_cut_to_the_context_oldest_first(tmp_path: Path) -> None:
    lm = load_lm(_run(tmp_path, "arch.seq_len=40"), device="cpu")
    session = ChatSession(lm, SAMPLING, system="w9 w9")
    for question in ["w1 w2 w3", "w4 w5 w6", "w7 w8 w10", "w11 w12 w13"]:
        "".join(session.reply(question))
    notes = session.take_notes()
    assert any("dropped the" in note and "40-token context" in note for note in notes)
    assert session.messages[0] == {"role": "system", "content": "w9 w9"}  # the system message stays
    assert session.messages[-2]["content"] == "w11 w12 w13"
    prompt = session.render(session.messages[:-1])
    assert len(encode(lm.tokenizer, prompt)) <= 40 - 4  # room for the 4 reply tokens
    "".join(session.reply(" ".join(["w3"] * 60)))  # alone longer than the context: refused with a note
    assert "does not fit" in session.take_notes()[0] and session.messages[-2]["content"] == "w11 w12 w13"


def test_one_seed_per_session(tmp_path: Path) -> None:
    lm = load_lm(_run(tmp_path), device="cpu")
    sampling = {**SAMPLING, "max_new_tokens": 8}

    def transcript(seed: int) -> list[str]:
        session = ChatSession(lm, sampling, seed=seed)
        return ["".join(session.reply(q)) for q in ("w1", "w2", "w3")]

    replies = transcript(0)
    assert len(set(replies)) == 3  # different questions, different draws: no identical sampled answers
    assert transcript(0) == replies  # and one seed gives one session
    # The same prompt twice in one session (history cleared): a seed per reply would repeat the first answer.
    session = ChatSession(lm, sampling)
    first = "".join(session.reply("w1"))
    session.messages.clear()
    assert "".join(session.reply("w1")) != first


def test_piped_chat_prints_a_readable_transcript(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    run = _run(tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO("w1 w2\nw3\n\n"))
    assert main(["chat", str(run), "--device", "cpu", "--max-new-tokens", "3", "--temperature", "0"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == "you> w1 w2" and lines[1].startswith("model> ") and lines[2] == "you> w3"
    assert "names no training data" in captured.err  # make_run's config has data_paths=[]


def test_warning_for_runs_not_trained_on_chat_data(tmp_path: Path) -> None:
    def fake(*paths: Path) -> SimpleNamespace:  # what chat_training_note reads of a loaded run
        saved = SimpleNamespace(data_paths=[str(p) for p in paths])  # the run's config.yaml
        return SimpleNamespace(run=SimpleNamespace(config=SimpleNamespace(data_paths=[]),  # dropped by the loader
                                                   run_dir=SimpleNamespace(root=tmp_path / "run",
                                                                           load_config=lambda: saved)))

    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "metadata.json").write_text(json.dumps({"format": "smoltrain-text-v1"}))
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "metadata.json").write_text(json.dumps({"format": "smoltrain-chat-v1", "kind": "sft"}))
    note = chat_training_note(fake(tmp_path / "text"))  # type: ignore[arg-type]
    assert note is not None and "trained on smoltrain-text-v1 data, not on chat data" in note
    assert "unknown" in chat_training_note(fake(tmp_path / "missing"))  # type: ignore[arg-type,operator]
    assert chat_training_note(fake(tmp_path / "text", tmp_path / "sft")) is None  # type: ignore[arg-type]


def test_tokenizer_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run(tmp_path)
    other = tmp_path / "other_tok"
    other.mkdir()
    for f in (run / "tokenizer").iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    assert main(["generate", str(run), "--prompt", "w1", "--max-new-tokens", "2", "--device", "cpu",
                 "--tokenizer", str(other)]) == 0
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "w1", "--device", "cpu", "--tokenizer",
                 str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no tokenizer found" in err

    # chat and export take it too: the export carries the given tokenizer, not the run's.
    import io
    import sys

    sys_stdin, sys.stdin = sys.stdin, io.StringIO("w1\n")
    try:
        assert main(["chat", str(run), "--device", "cpu", "--max-new-tokens", "2", "--tokenizer", str(other)]) == 0
    finally:
        sys.stdin = sys_stdin
    (other / "tokenizer_config.json").write_text(json.dumps({"marker": "the other tokenizer"}))
    assert main(["export", str(run), "--output", str(tmp_path / "hf"), "--tokenizer", str(other)]) == 0
    assert "the other tokenizer" in (tmp_path / "hf" / "tokenizer_config.json").read_text()
    assert main(["export", str(run), "--output", str(tmp_path / "hf2"), "--tokenizer", str(tmp_path / "nope")]) == 2
    assert not (tmp_path / "hf2").exists()


def test_import_minimind_takes_a_tokenizer(tmp_path: Path) -> None:
    import torch

    from smoltrain.models.lm import LMConfig, LMForCausalLM

    run = _run(tmp_path)
    model = LMForCausalLM(LMConfig(vocab_size=6400, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=128, qk_norm=False, rms_norm_eps=1e-5))
    torch.save(model.state_dict(), tmp_path / "w.pth")
    assert main(["import", "minimind", "--checkpoint", str(tmp_path / "w.pth"), "--preset", "minimind2-26m",
                 "--output", str(tmp_path / "mm"), "--tokenizer", str(run / "tokenizer"), "arch.hidden_size=64",
                 "arch.num_hidden_layers=1", "arch.num_attention_heads=4", "arch.num_key_value_heads=2",
                 "arch.intermediate_size=128"]) == 0
    assert (tmp_path / "mm" / "tokenizer" / "tokenizer.json").read_bytes() == \
        (run / "tokenizer" / "tokenizer.json").read_bytes()
