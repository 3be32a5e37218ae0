"""The batching engine: its text rules (what of a stream may be sent while a stop string could still complete) and
its batched decoding (each row as alone, with or without a sliding window)."""

from __future__ import annotations

import pytest

from smoltrain.serve.engine import _held_back


@pytest.mark.parametrize(("text", "stops", "held"), [
    ("hello\nUs", ("\nUser:",), 3),  # "\nUs" may become "\nUser:"
    ("hello\n", ("\nUser:", "\n\n"), 1),  # the longest start of any stop counts
    ("hello", ("\nUser:",), 0),
    ("aaa", ("aab",), 2),  # a stop that starts inside a run of its own first character
    ("", ("x",), 0),
    ("ab", (), 0),
])
def test_held_back_is_the_longest_tail_that_starts_a_stop(text: str, stops: tuple[str, ...], held: int) -> None:
    assert _held_back(text, stops) == held


@pytest.mark.parametrize("window", [None, 3])
def test_engine_decodes_a_batch_as_each_prompt_alone_with_or_without_a_sliding_window(tmp_path, window) -> None:
    """Prompts of different lengths decoded together give generate_stream's tokens for each alone; with a sliding
    window the engine's cache keeps window - 1 columns, so positions are tracked apart from its width."""
    import threading

    import torch
    from tokenizers import Tokenizer

    from smoltrain.models.lm import LMConfig, LMForCausalLM
    from smoltrain.serve.engine import Engine, Finished, Sampling
    from tests.helpers import write_tokenizer

    write_tokenizer(tmp_path / "tok")
    tokenizer = Tokenizer.from_file(str(tmp_path / "tok" / "tokenizer.json"))
    torch.manual_seed(0)
    model = LMForCausalLM(LMConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=48, sliding_window=window))
    for p in model.parameters():  # peaked logits: greedy argmax gaps far above fp32 rounding of padded rows
        p.data.mul_(5.0)
    model.eval()
    prompts = [[5, 6, 7], [9], [10, 11, 12, 13, 14, 15, 16], [20, 21]]
    alone = [[int(t[0]) for t in model.generate_stream(torch.tensor([p]), 12, temperature=0.0)] for p in prompts]
    engine = Engine(model, tokenizer, None, torch.device("cpu"))
    try:
        done = [threading.Event() for _ in prompts]
        sequences = [engine.submit(p, Sampling(max_tokens=12, temperature=0.0),
                                   lambda event, i=i: isinstance(event, Finished) and done[i].set())
                     for i, p in enumerate(prompts)]
        assert all(d.wait(60) for d in done)
    finally:
        engine.close()
    assert [seq.tokens for seq in sequences] == alone
    assert engine.largest_batch > 1  # decoded together, not one after another
