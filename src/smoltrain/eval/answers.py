"""Held-out exact-answer accuracy of a chat model: greedy decoding of each conversation's last answer.

The one place this is measured: the SFT stages' evaluation (``eval_answer_examples``), the end-to-end SFT test
and the chat demo all read it from here. A row is a training row of ``data.chat.SFTRows`` (``input_ids`` and
shifted ``targets``, -100 where a token is not supervised); its last run of supervised targets is the answer,
everything before it the prompt. The model decodes greedily from the prompt; the answer is right when the
decoded tokens equal the answer's up to and including its end-of-turn token (what follows it, the newline
after ``<|im_end|>``, is the template's, not the answer's). Rows whose answer was cut by the context (no
end-of-turn token in it) cannot be checked and are not counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from smoltrain.data.chat import tokenize_conversation
from smoltrain.models.lm import LMForCausalLM

IGNORE = -100

__all__ = ["AnswerCheck", "conversation_rows", "exact_answers", "last_answer"]


def last_answer(input_ids: torch.Tensor, targets: torch.Tensor, eos_id: int) -> tuple[list[int], list[int]] | None:
    """(prompt ids, answer ids ending with ``eos_id``) of one row ``[T]``; None when it has no complete answer."""
    supervised = (targets != IGNORE).tolist()
    if True not in supervised:
        return None
    end = len(supervised) - 1 - supervised[::-1].index(True)
    start = end
    while start > 0 and supervised[start - 1]:  # back over the last contiguous run of supervised targets
        start -= 1
    answer = targets[start:end + 1].tolist()
    if eos_id not in answer:
        return None  # truncated mid-answer by the context
    return input_ids[:start + 1].tolist(), answer[:answer.index(eos_id) + 1]


@dataclass
class AnswerCheck:
    """One checked answer, token ids (``decoded`` holds as many tokens as the answer, or fewer at an early end)."""

    prompt: list[int]
    answer: list[int]
    decoded: list[int]

    @property
    def exact(self) -> bool:
        return self.decoded == self.answer


@torch.no_grad()
def exact_answers(model: LMForCausalLM, batches: Iterable[Mapping[str, torch.Tensor]], eos_id: int,
                  limit: int | None = None) -> list[AnswerCheck]:
    """Greedy answers to the last question of each row of ``batches`` (at most ``limit`` checked rows), one row
    at a time (prompts differ in length and ``generate`` takes no left padding)."""
    device = next(model.parameters()).device
    checks: list[AnswerCheck] = []
    for batch in batches:
        for ids, targets in zip(batch["input_ids"], batch["targets"], strict=True):
            if limit is not None and len(checks) >= limit:
                return checks
            found = last_answer(ids, targets, eos_id)
            if found is None:
                continue
            prompt, answer = found
            out = model.generate(torch.tensor([prompt], device=device), len(answer), temperature=0,
                                 eos_token_id=eos_id)
            decoded = out[0, len(prompt):].tolist()
            if eos_id in decoded:
                decoded = decoded[:decoded.index(eos_id) + 1]
            checks.append(AnswerCheck(prompt, answer, decoded))
    return checks


def conversation_rows(tokenizer: object, conversations: list[list[dict[str, str]]],
                      seq_len: int) -> dict[str, torch.Tensor]:
    """Conversations (MiniMind messages) as one batch of ``SFTRows``-style rows, tokenized as ``smoltrain data sft``
    tokenizes them, so :func:`exact_answers` can check them in the order given (a demo's chosen questions)."""
    ids = torch.zeros(len(conversations), seq_len, dtype=torch.int64)  # the padding id is never read
    targets = torch.full((len(conversations), seq_len), IGNORE, dtype=torch.int64)
    for row, messages in enumerate(conversations):
        tokens = tokenize_conversation(tokenizer, messages, max_length=seq_len + 1)
        n = len(tokens.ids)
        ids[row, :n - 1] = torch.from_numpy(tokens.ids[:-1])
        supervised = torch.from_numpy(tokens.mask[1:].astype(bool))
        targets[row, :n - 1] = torch.where(supervised, torch.from_numpy(tokens.ids[1:]), IGNORE)
    return {"input_ids": ids, "targets": targets}
