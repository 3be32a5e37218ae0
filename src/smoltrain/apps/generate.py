"""Text generation with a trained LM run: streamed text for `smoltrain generate` and `smoltrain chat`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from smoltrain.data.tokenizer import PAD_TOKEN, apply_chat_template, decode, encode, eos_id, load_tokenizer
from smoltrain.errors import SmoltrainError
from smoltrain.models.lm import LMForCausalLM
from smoltrain.runs.loading import LoadedRun, load


@dataclass
class LMRun:
    run: LoadedRun
    tokenizer: Tokenizer
    tokenizer_dir: Path | None = None  # where the tokenizer came from (its tokenizer_config.json: chat template)

    @property
    def model(self) -> LMForCausalLM:
        return self.run.model  # type: ignore[return-value]


def load_lm(run_dir: str | Path, device: str = "auto", tokenizer: str | Path | None = None) -> LMRun:
    """A trained `arch=lm` run and the tokenizer saved with it (or the one in the directory ``tokenizer``)."""
    run = load(run_dir, device=device, need_data=False)
    if not isinstance(run.model, LMForCausalLM):
        raise SmoltrainError(f"generation needs an LM run (arch=lm); {run_dir} is arch {run.config.arch.name}")
    tokenizer_dir = Path(tokenizer) if tokenizer is not None else run.run_dir.tokenizer
    loaded = load_tokenizer(tokenizer_dir)
    model_vocab = run.model.config.vocab_size
    if loaded.get_vocab_size() > model_vocab:  # ids past the embedding table would fail inside the model
        raise SmoltrainError(f"{tokenizer_dir} has {loaded.get_vocab_size()} tokens but the model of "
                             f"{run_dir} embeds {model_vocab}: use the tokenizer the run was trained with")
    return LMRun(run, loaded, tokenizer_dir)


def _prompt_ids(lm: LMRun, prompt: str) -> list[int]:
    ids = encode(lm.tokenizer, prompt)
    if not ids:
        raise SmoltrainError("the prompt is empty: give some text to continue")
    return ids


def stream_text(lm: LMRun, prompt: str, max_new_tokens: int = 100, temperature: float = 0.8,
                top_k: int | None = None, top_p: float | None = None, seed: int = 0,
                stop_at_eos: bool = True, repetition_penalty: float = 1.0,
                generator: torch.Generator | None = None) -> Iterator[str]:
    """Yield the continuation of ``prompt`` piece by piece as the model decodes it (one sample). ``generator``
    (when given) is used instead of a fresh one seeded with ``seed``: a chat session draws from one stream."""
    ids = _prompt_ids(lm, prompt)
    if generator is None:
        generator = torch.Generator(device=lm.run.device).manual_seed(seed)
    eos = eos_id(lm.tokenizer) if stop_at_eos else None
    input_ids = torch.tensor([ids], device=lm.run.device)
    new: list[int] = []
    shown = ""
    for token in lm.model.generate_stream(input_ids, max_new_tokens, temperature, top_k, top_p, eos, generator,
                                          repetition_penalty=repetition_penalty):
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


def generate_batch(lm: LMRun, prompts: list[str], max_new_tokens: int = 100, temperature: float = 0.8,
                   top_k: int | None = None, top_p: float | None = None, seed: int = 0, num_samples: int = 1,
                   stop_at_eos: bool = True, repetition_penalty: float = 1.0) -> list[list[str]]:
    """The continuations of several prompts decoded in one left-padded batch: ``result[i][j]`` is sample ``j``
    of ``prompts[i]``. Each row decodes as it would alone (``LMForCausalLM.generate_stream``)."""
    if not prompts:
        raise SmoltrainError("no prompts given: pass --prompt TEXT (repeatable) or --prompts-file FILE")
    rows = [ids for ids in (_prompt_ids(lm, p) for p in prompts) for _ in range(num_samples)]
    width = max(len(ids) for ids in rows)
    pad = lm.tokenizer.token_to_id(PAD_TOKEN) or 0  # its value never matters: pads are masked out
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in rows], device=lm.run.device)
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in rows], device=lm.run.device)
    generator = torch.Generator(device=lm.run.device).manual_seed(seed)
    eos = eos_id(lm.tokenizer) if stop_at_eos else None
    steps = list(lm.model.generate_stream(input_ids, max_new_tokens, temperature, top_k, top_p, eos, generator,
                                          attention_mask=mask, repetition_penalty=repetition_penalty))
    texts = []
    for row in range(len(rows)):
        new = [int(token[row]) for token in steps]
        if eos is not None and eos in new:
            new = new[:new.index(eos)]
        texts.append(decode(lm.tokenizer, new))
    return [texts[i * num_samples:(i + 1) * num_samples] for i in range(len(prompts))]


def chat_reply(lm: LMRun, messages: list[Mapping[str, str]], **sampling: object) -> Iterator[str]:
    """Stream the assistant's reply to a conversation, formatted with the ChatML template."""
    prompt = apply_chat_template(messages, add_generation_prompt=True)
    return stream_text(lm, prompt, **sampling)  # type: ignore[arg-type]
