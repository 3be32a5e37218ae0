"""Exact-answer accuracy (eval/answers.py): which tokens are the answer, and greedy decoding checks them."""

from __future__ import annotations

import torch

from smoltrain.eval.answers import conversation_rows, exact_answers, last_answer
from smoltrain.models.lm import LMForCausalLM

EOS = 2
X = -100


def test_last_answer_is_the_last_supervised_run_up_to_its_end_of_turn() -> None:
    # Two assistant turns; targets[t] is the token after input t where it is supervised. The newline (7) after
    # the last EOS is supervised but belongs to the template, not to the answer.
    ids = torch.tensor([5, 6, 10, 11, EOS, 7, 5, 6, 12, 13, EOS, 7, 0])
    targets = torch.tensor([X, 10, 11, EOS, 7, X, X, 12, 13, EOS, 7, X, X])
    prompt, answer = last_answer(ids, targets, EOS)
    assert answer == [12, 13, EOS]
    assert prompt == [5, 6, 10, 11, EOS, 7, 5, 6]  # everything up to the token the answer's first one follows
    # An answer cut by the context (no EOS in it) and a row with nothing supervised cannot be checked.
    assert last_answer(ids[:9], targets[:9], EOS) is None
    assert last_answer(ids, torch.full_like(targets, X), EOS) is None


def test_exact_answers_greedy_decodes_and_compares() -> None:
    torch.manual_seed(0)
    model = LMForCausalLM({"vocab_size": 16, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                           "num_key_value_heads": 1}).eval()
    with torch.no_grad():  # large weights: greedy decoding then wanders over the vocabulary instead of repeating
        for p in model.parameters():
            p.mul_(40)
    prompt = [3, 4, 5]
    greedy = model.generate(torch.tensor([prompt]), 6, temperature=0)[0, 3:].tolist()
    # Call the first greedy token after the first that is new its end of turn: the model's own answer then
    # has at least 2 tokens, and ends there.
    k = next(i for i in range(1, 6) if greedy[i] not in greedy[:i])
    eos, answer = greedy[k], greedy[:k + 1]
    other = next(t for t in range(16) if t not in (answer[0], eos))

    def row(answer_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = prompt + answer_ids
        ids = torch.tensor(tokens[:-1])
        targets = torch.tensor([X] * (len(prompt) - 1) + answer_ids)
        return ids, targets

    right, wrong = row(answer), row([other, *answer[1:]])
    batch = {"input_ids": torch.stack([right[0], wrong[0]]), "targets": torch.stack([right[1], wrong[1]])}
    checks = exact_answers(model, [batch], eos)
    assert [c.exact for c in checks] == [True, False]
    assert checks[0].decoded == answer and checks[0].prompt == prompt
    assert len(exact_answers(model, [batch], eos, limit=1)) == 1


def test_conversation_rows_are_the_rows_data_sft_writes(tmp_path) -> None:
    import json

    from smoltrain.data.chat import SFTRows, build_sft_dataset
    from smoltrain.data.tokenizer import load_tokenizer, train_tokenizer

    conversations = [[{"role": "user", "content": f"What is {a} plus {a + 1}?"},
                      {"role": "assistant", "content": str(2 * a + 1)}] for a in range(6)]
    source = tmp_path / "sft.jsonl"
    source.write_text("".join(json.dumps({"conversations": c}) + "\n" for c in conversations))
    train_tokenizer([source], 300, tmp_path / "tok")
    build_sft_dataset([str(source)], tmp_path / "tok", tmp_path / "sft", val_fraction=0.0)
    stored = next(SFTRows(tmp_path / "sft", "train", 64, 6).iter_eval(6))
    made = conversation_rows(load_tokenizer(tmp_path / "tok"), conversations, 64)
    # The dataset's order is its own: match rows by their tokens; targets must agree row for row.
    for ids, targets in zip(made["input_ids"], made["targets"], strict=True):
        same = [i for i in range(6) if torch.equal(stored["targets"][i], targets)]
        end = int((targets != X).nonzero().max()) + 1  # every token up to the last supervised one is real
        assert same and torch.equal(stored["input_ids"][same[0]][:end], ids[:end])
