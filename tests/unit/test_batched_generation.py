"""Batched generation (left padding), several samples and the repetition penalty."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from smoltrain.apps.generate import generate_batch, load_lm, stream_text
from smoltrain.cli import main
from smoltrain.models.lm import LMConfig, LMForCausalLM, apply_repetition_penalty
from tests.unit.test_hf_interop import make_run

PROMPTS = ["w5", "w3 w9 w17 w4 w40 w2", "w8 w8 w11"]  # lengths 1, 6, 3: two rows get left padding


def _run(tmp_path: Path) -> Path:
    make_run(tmp_path / "run", tokenizer=True)
    return tmp_path / "run"


def test_left_padded_greedy_batch_equals_one_by_one(tmp_path: Path) -> None:
    lm = load_lm(_run(tmp_path), device="cpu")
    alone = ["".join(stream_text(lm, p, max_new_tokens=12, temperature=0, stop_at_eos=False)) for p in PROMPTS]
    batched = generate_batch(lm, PROMPTS, max_new_tokens=12, temperature=0, stop_at_eos=False)
    assert [samples[0] for samples in batched] == alone
    assert len({text for text in alone}) > 1  # the prompts lead to different continuations: rows are not mixed


def test_left_padded_logits_match_the_unpadded_row() -> None:
    torch.manual_seed(0)
    model = LMForCausalLM(LMConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2)).eval()
    row = torch.tensor([[7, 3, 9, 1]])
    padded = torch.tensor([[0, 0, 0, 7, 3, 9, 1]])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1]])
    with torch.no_grad():
        alone = model(row).logits
        batched = model(padded, attention_mask=mask).logits[:, 3:]
    # Same positions and keys; the masked softmax adds exact zeros, but the SDPA kernel with a mask sums in
    # another order than the causal one: fp32 rounding (~1e-7 relative), far below any logit gap that matters.
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_num_samples_draw_different_continuations(tmp_path: Path) -> None:
    lm = load_lm(_run(tmp_path), device="cpu")
    out = generate_batch(lm, PROMPTS[:2], max_new_tokens=8, temperature=1.5, num_samples=3, seed=1,
                         stop_at_eos=False)
    assert [len(samples) for samples in out] == [3, 3]
    assert len(set(out[0])) > 1  # one generator over the batch: each row draws its own tokens
    again = generate_batch(lm, PROMPTS[:2], max_new_tokens=8, temperature=1.5, num_samples=3, seed=1,
                           stop_at_eos=False)
    assert again == out  # one seed, one result


def test_repetition_penalty_is_transformers_semantics() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    logits = torch.randn(2, 20) * 3
    ids = torch.tensor([[1, 4, 4, 7], [0, 2, 19, 5]])
    seen = torch.zeros(2, 20, dtype=torch.bool).scatter_(1, ids, True)
    want = transformers.RepetitionPenaltyLogitsProcessor(1.3)(ids, logits.clone())
    torch.testing.assert_close(apply_repetition_penalty(logits, seen, 1.3), want, rtol=0, atol=0)


def test_repetition_penalty_stops_a_greedy_loop(tmp_path: Path) -> None:
    lm = load_lm(_run(tmp_path), device="cpu")
    plain = generate_batch(lm, ["w1"], max_new_tokens=20, temperature=0, stop_at_eos=False)[0][0].split()
    penalised = generate_batch(lm, ["w1"], max_new_tokens=20, temperature=0, stop_at_eos=False,
                               repetition_penalty=100.0)[0][0].split()
    # A random tiny model repeats itself greedily; a huge penalty pushes every seen token below the unseen ones.
    assert len(set(plain)) < len(plain)
    assert len(set(penalised)) == len(penalised) == 20


def test_cli_prompts_file_and_samples(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run(tmp_path)
    (tmp_path / "prompts.txt").write_text("w5\n\nw8 w8 w11\n")
    assert main(["generate", str(run), "--prompts-file", str(tmp_path / "prompts.txt"), "--prompt", "w3",
                 "--num-samples", "2", "--max-new-tokens", "3", "--device", "cpu",
                 "--repetition-penalty", "1.2"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- prompt") == 6 and "w8 w8 w11" in out
    assert main(["generate", str(run), "--prompts-file", str(tmp_path / "missing.txt"), "--device", "cpu"]) == 2
    assert "missing.txt" in capsys.readouterr().err
    assert main(["generate", str(run), "--device", "cpu"]) == 2
    assert "--prompt" in capsys.readouterr().err
