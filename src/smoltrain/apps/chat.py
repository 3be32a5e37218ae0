"""A chat session with an LM run (``smoltrain chat``): the tokenizer's own template, a history kept within the
model's context, one random stream for the whole session.

* Template: the tokenizer's ``chat_template`` (``tokenizer_config.json``) rendered with Jinja2 when both are
  there (MiniMind-3's inserts ``<think>`` blocks); otherwise smoltrain's ChatML.
* Context: the run's training context ``arch.seq_len``. Before each reply the oldest turns are dropped (the
  system message stays) until the prompt and ``max_new_tokens`` fit; each drop leaves a note.
* Seeding: one generator seeded once, so two questions draw different random numbers (a fresh seed per reply
  would give every reply the same draws: the same answer wherever the model is unsure).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from smoltrain.apps.generate import LMRun, stream_text
from smoltrain.data.chat_template import jinja_available, read_chat_template, render_chat_template
from smoltrain.data.tokenizer import apply_chat_template, encode

CHAT_FORMAT = "smoltrain-chat-v1"  # the chat (SFT / DPO) dataset format; metadata.json carries its `kind`
CHAT_KINDS = ("sft", "dpo")


def chat_training_note(lm: LMRun) -> str | None:
    """A warning when the run's config names no chat dataset (SFT or DPO) among its data paths, else None."""
    # The saved config's: a run loaded for generation has its data paths dropped (``load(need_data=False)``).
    paths = list(lm.run.run_dir.load_config().data_paths)
    if not paths:
        return (f"{lm.run.run_dir.root} names no training data (an imported run?): unless its weights were "
                "tuned on chat data, the replies will continue the text rather than answer")
    kinds = []
    for path in paths:
        meta_path = Path(path) / "metadata.json"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            meta = None
        if not isinstance(meta, dict):
            kinds.append("unknown")
            continue
        if meta.get("format") == CHAT_FORMAT and meta.get("kind") in CHAT_KINDS:
            return None
        kinds.append(str(meta.get("kind") or meta.get("format") or "unknown"))
    return (f"{lm.run.run_dir.root} was trained on {', '.join(sorted(set(kinds)))} data, not on chat data (sft/dpo): "
            "its replies will continue the text rather than answer; fine-tune it on a chat dataset first")


@dataclass
class ChatSession:
    lm: LMRun
    sampling: dict[str, Any]  # max_new_tokens, temperature, top_k, top_p, repetition_penalty
    seed: int = 0
    system: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # for the user, taken with take_notes()

    def __post_init__(self) -> None:
        self.generator = torch.Generator(device=self.lm.run.device).manual_seed(self.seed)
        template, self.special_tokens = (read_chat_template(self.lm.tokenizer_dir) if self.lm.tokenizer_dir
                                         else (None, {}))
        self.template = template if template and jinja_available() else None
        if template and self.template is None:
            self.notes.append("the tokenizer has its own chat template but jinja2 is not installed: using ChatML "
                              "(pip install jinja2 to use the tokenizer's)")
        self.context = int(self.lm.run.config.arch.seq_len)  # type: ignore[attr-defined]
        max_new = int(self.sampling.get("max_new_tokens", 100))
        # Room kept for the reply: all of it when the context allows, else half the context.
        self.prompt_budget = self.context - min(max_new, self.context // 2)
        if self.system:
            self.messages.append({"role": "system", "content": self.system})

    @property
    def template_name(self) -> str:
        return "the tokenizer's chat template" if self.template else "ChatML"

    def render(self, messages: list[dict[str, str]]) -> str:
        if self.template is None:
            return apply_chat_template(messages, add_generation_prompt=True)
        return render_chat_template(self.template, messages, add_generation_prompt=True,
                                    special_tokens=self.special_tokens)

    def take_notes(self) -> list[str]:
        notes, self.notes = self.notes, []
        return notes

    def _fits(self, messages: list[dict[str, str]]) -> bool:
        return len(encode(self.lm.tokenizer, self.render(messages))) <= self.prompt_budget

    def _fit(self, messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], int] | None:
        """The newest messages that fit the prompt budget, oldest turns dropped first and the system message
        last, and how many were dropped; None when even the last message alone does not fit."""
        system = messages[:1] if messages and messages[0]["role"] == "system" else []
        turns = messages[len(system):]
        for start in range(len(turns)):
            if self._fits(system + turns[start:]):
                return system + turns[start:], start
        if system and self._fits(turns[-1:]):
            return turns[-1:], len(messages) - 1
        return None

    def reply(self, text: str) -> Iterator[str]:
        """Stream the reply to the user's ``text``; the exchange joins the history."""
        candidate = [*self.messages, {"role": "user", "content": text}]
        fitted = self._fit(candidate)
        if fitted is None:
            self.notes.append(f"that message does not fit the model's {self.context}-token context with room for "
                              f"the reply: say it shorter (or lower --max-new-tokens)")
            return
        kept, dropped = fitted
        if dropped:
            self.notes.append(f"dropped the {dropped} oldest message{'s' if dropped > 1 else ''} of the history to "
                              f"stay within the model's {self.context}-token context")
        self.messages = kept
        reply = ""
        for piece in stream_text(self.lm, self.render(kept), generator=self.generator, **self.sampling):
            reply += piece
            yield piece
        self.messages.append({"role": "assistant", "content": reply})
