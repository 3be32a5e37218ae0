"""Text generation with a trained LM run: streamed text for `smoltrain generate` and `smoltrain chat`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from smoltrain.data.tokenizer import apply_chat_template, decode, encode, eos_id, load_tokenizer
from smoltrain.errors import SmoltrainError
from smoltrain.models.lm import LMForCausalLM
from smoltrain.runs.loading import LoadedRun, load


@dataclass
class LMRun:
    run: LoadedRun
    tokenizer: Tokenizer

    @property
    def model(self) -> LMForCausalLM:
        return self.run.model  # type: ignore[return-value]


def load_lm(run_dir: str | Path, device: str = "auto") -> LMRun:
    """A trained `arch=lm` run and the tokenizer saved with it."""
    run = load(run_dir, device=device, need_data=False)
    if not isinstance(run.model, LMForCausalLM):
        raise SmoltrainError(f"generation needs an LM run (arch=lm); {run_dir} is arch {run.config.arch.name}")
    tokenizer = load_tokenizer(run.run_dir.tokenizer)
    model_vocab = run.model.config.vocab_size
    if tokenizer.get_vocab_size() > model_vocab:  # ids past the embedding table would fail inside the model
        raise SmoltrainError(f"{run.run_dir.tokenizer} has {tokenizer.get_vocab_size()} tokens but the model of "
                             f"{run_dir} embeds {model_vocab}: use the tokenizer the run was trained with")
    return LMRun(run, tokenizer)


def stream_text(lm: LMRun, prompt: str, max_new_tokens: int = 100, temperature: float = 0.8,
                top_k: int | None = None, top_p: float | None = None, seed: int = 0,
                stop_at_eos: bool = True) -> Iterator[str]:
    """Yield the continuation of ``prompt`` piece by piece as the model decodes it (one sample)."""
    ids = encode(lm.tokenizer, prompt)
    if not ids:
        raise SmoltrainError("the prompt is empty: give some text to continue")
    generator = torch.Generator(device=lm.run.device).manual_seed(seed)
    eos = eos_id(lm.tokenizer) if stop_at_eos else None
    input_ids = torch.tensor([ids], device=lm.run.device)
    new: list[int] = []
    shown = ""
    for token in lm.model.generate_stream(input_ids, max_new_tokens, temperature, top_k, top_p, eos, generator):
        if eos is not None and int(token[0]) == eos:
            break
        new.append(int(token[0]))
        # Byte-level BPE can split one character over several tokens: decode everything so far and
        # hold back while the text ends in an incomplete character.
        text = decode(lm.tokenizer, new)
        if not text.endswith("\ufffd") and len(text) > len(shown):
            yield text[len(shown):]
            shown = text
    text = decode(lm.tokenizer, new)
    if len(text) > len(shown):
        yield text[len(shown):]


def chat_reply(lm: LMRun, messages: list[Mapping[str, str]], **sampling: object) -> Iterator[str]:
    """Stream the assistant's reply to a conversation, formatted with the ChatML template."""
    prompt = apply_chat_template(messages, add_generation_prompt=True)
    return stream_text(lm, prompt, **sampling)  # type: ignore[arg-type]
