"""Generation and chat refuse what cannot work with one line: a tokenizer the model cannot embed, chat input
that is not UTF-8."""

from __future__ import annotations

import builtins
from pathlib import Path

import pytest

from smoltrain.apps.generate import load_lm
from smoltrain.cli import main
from smoltrain.errors import SmoltrainError
from tests.helpers import make_lm_run, write_tokenizer
from tests.unit.test_hf_interop import make_run


def test_a_tokenizer_larger_than_the_models_vocabulary_is_one_line(tmp_path: Path) -> None:
    make_run(tmp_path / "run", "arch.vocab_size=40", tokenizer=False)
    write_tokenizer(tmp_path / "run" / "tokenizer")  # 64 tokens: ids 40..63 have no embedding row
    with pytest.raises(SmoltrainError, match=r"tokenizer has 64 tokens but the model of .*run embeds 40: use the "
                                             r"tokenizer the run was trained with") as err:
        load_lm(tmp_path / "run", device="cpu")
    assert "\n" not in str(err.value)
    assert load_lm(_fitting_run(tmp_path), device="cpu").tokenizer.get_vocab_size() == 64


def _fitting_run(tmp_path: Path) -> Path:
    make_run(tmp_path / "fits", tokenizer=True)  # 64 tokens, 64 rows
    return tmp_path / "fits"


def test_chat_input_that_is_not_utf8_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    run = _fitting_run(tmp_path)

    def undecodable(_prompt: str = "") -> str:  # what input() raises when stdin holds bytes that are not UTF-8
        raise UnicodeDecodeError("utf-8", b"\xff\xfe", 0, 1, "invalid start byte")

    monkeypatch.setattr(builtins, "input", undecodable)
    assert main(["chat", str(run), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == ("error: the chat input is not UTF-8 text (byte 0 of the line): type or pipe UTF-8, or set "
                       "PYTHONIOENCODING to the input's encoding")


@pytest.mark.parametrize(("rows", "starts_with_bos"), [((), False), (("arch.document_bos=true",), True),
                                                       (("arch.packing=false",), True)])
def test_prompts_begin_with_bos_when_the_training_documents_did(tmp_path: Path, rows: tuple[str, ...],
                                                                starts_with_bos: bool) -> None:
    import torch

    from smoltrain.apps.generate import prompt_ids, stream_text

    make_lm_run(tmp_path / "run", *rows, weight_scale=4.0)  # peaked logits: greedy decoding has no near-ties
    lm = load_lm(tmp_path / "run", device="cpu")
    bos, w1, w2 = 1, lm.tokenizer.token_to_id("w1"), lm.tokenizer.token_to_id("w2")
    expected = [bos, w1, w2] if starts_with_bos else [w1, w2]
    assert prompt_ids(lm, "w1 w2") == expected
    assert prompt_ids(lm, "<|im_start|> w1") == [bos, w1]  # a chat rendering already begins with it: not twice
    assert prompt_ids(lm, "") == []
    # Generation continues exactly those tokens.
    greedy = [int(t[0]) for t in lm.model.generate_stream(torch.tensor([expected]), 6, 0.0, None, None, None,
                                                           torch.Generator().manual_seed(0))]
    text = "".join(stream_text(lm, "w1 w2", max_new_tokens=6, temperature=0.0, stop_at_eos=False))
    assert text.split() == [lm.tokenizer.id_to_token(t) for t in greedy]
