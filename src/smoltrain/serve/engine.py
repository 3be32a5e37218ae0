"""Batched decoding for the server: requests that arrive together are decoded together.

One background thread owns the model. Each choice of a request (``n`` choices = ``n`` sequences) takes a
slot of the batch: it is prefilled alone (its prompt, no padding, exactly as ``generate_stream`` does),
and its KV cache is then joined to the batch, left-padded to the longest row. Every decoding step runs the
model once on one new token per slot, with each row's own RoPE position and a mask that hides its pads,
so a row computes what it would compute alone (greedy output equals single-request output). With a sliding
window (``arch.sliding_window``) the cache keeps only the newest ``window - 1`` columns (``keep_window``), so each
row's position is counted apart from the cache's width. Each sequence
has its own sampling settings, random generator (one uniform draw per token, for ``sample_per_row``) and stop
conditions; a finished or cancelled sequence
leaves the batch at the next step and the columns every remaining row pads are dropped.

With LoRA adapters served (``smoltrain serve --adapter``), each sequence names the adapter it decodes with
(None: the base). A batch decodes with one adapter: waiting sequences join it in arrival order while they ask
for the batch's adapter; the first that asks for another one stops the joining, the batch drains, and the
engine switches adapters (``use_adapter``) before that sequence's batch starts. So no request waits behind
later ones, and every row runs exactly the model `smoltrain generate --adapter` runs.

Events go back through the callback each sequence was submitted with, from the engine thread: the server
turns them into asyncio queue items. A callback must not block.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from smoltrain.data.tokenizer import decode
from smoltrain.models.lm import KVCache, LMForCausalLM, keep_window, sample_per_row

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Sampling:
    """How one sequence is decoded. ``temperature == 0`` is greedy; ``seed`` None draws a random one."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Delta:
    """New text of a sequence (never an incomplete character, never part of a stop string)."""

    text: str


@dataclass(frozen=True)
class Finished:
    """The sequence ended: ``stop`` (end-of-sequence token or a stop string) or ``length`` (max_tokens)."""

    reason: FinishReason
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    """The engine could not decode the sequence (a bug or the device running out of memory)."""

    message: str


Event = Delta | Finished | Failed


@dataclass(eq=False)
class Sequence:
    """One choice in flight: its prompt, settings, what it has decoded and where its events go."""

    prompt_ids: list[int]
    sampling: Sampling
    emit: Callable[[Event], None]
    tokens: list[int] = field(default_factory=list)
    sent: str = ""  # text already emitted
    cancelled: bool = False
    generator: torch.Generator | None = None
    adapter: str | None = None  # the adapter's model id; None: the base

    def cancel(self) -> None:
        """Free the slot at the next step (a client that went away); no more events are sent."""
        self.cancelled = True


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of ``text`` may be the start of a stop string (not sent yet)."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest


class Engine:
    """The decoding loop over a batch of slots. ``submit`` from any thread; ``close`` stops the thread."""

    def __init__(self, model: LMForCausalLM, tokenizer: Tokenizer, eos_id: int | None, device: torch.device,
                 max_batch: int = 32, use_adapter: Callable[[str | None], None] | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.eos_id = eos_id
        self.device = device
        self.max_batch = max_batch
        self._use_adapter = use_adapter  # puts an adapter (by model id; None: the base) on ``model``
        self._adapter: str | None = None  # the adapter on the model now
        self._pending: list[Sequence] = []
        self._active: list[Sequence] = []
        self._cache: KVCache = []
        self._pads = torch.zeros(0, dtype=torch.long, device=device)  # left pads of each row of the cache
        self._positions = torch.zeros(0, dtype=torch.long, device=device)  # each row's next RoPE position
        self._window = model.config.sliding_window
        self._logits = torch.zeros(0, device=device)  # [B, V]: each row's next-token logits
        self._wake = threading.Condition()
        self._closed = False
        self.largest_batch = 0  # the most sequences one decoding step has run (the tests and the benchmark read it)
        self.cancelled = 0  # sequences that left the batch because their client went away
        self._thread = threading.Thread(target=self._loop, name="smoltrain-serve-engine", daemon=True)
        self._thread.start()

    # -- the public face ------------------------------------------------------------------------------

    def submit(self, prompt_ids: list[int], sampling: Sampling, emit: Callable[[Event], None],
               adapter: str | None = None) -> Sequence:
        if adapter is not None and self._use_adapter is None:
            raise ValueError("this engine serves no adapters")
        seq = Sequence(list(prompt_ids), sampling, emit, adapter=adapter)
        seed = sampling.seed if sampling.seed is not None else secrets.randbits(63)
        seq.generator = torch.Generator(device=self.device).manual_seed(seed)
        with self._wake:
            self._pending.append(seq)
            self._wake.notify()
        return seq

    @property
    def busy_slots(self) -> int:
        """Sequences holding a slot or waiting for one."""
        with self._wake:
            return len(self._active) + len(self._pending)

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=10)

    # -- the loop -------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self._pending and not self._active:
                    self._wake.wait()
                if self._closed:
                    return
                joining = self._joining()
            try:
                with torch.inference_mode():
                    if joining and joining[0].adapter != self._adapter:  # only ever with an empty batch
                        assert not self._active and self._use_adapter is not None
                        self._use_adapter(joining[0].adapter)
                        self._adapter = joining[0].adapter
                    for seq in joining:
                        if seq.cancelled:
                            self.cancelled += 1
                        else:
                            self._join(seq)
                    if self._active:
                        self._step()
            except Exception as err:  # noqa: BLE001 - report to every client instead of dying silently
                message = f"decoding failed: {type(err).__name__}: {err}"
                for seq in dict.fromkeys(self._active + joining):
                    if not seq.cancelled:
                        seq.emit(Failed(message))
                with self._wake:
                    self._active = []
                self._cache, self._pads, self._positions = [], self._pads[:0], self._positions[:0]

    def _joining(self) -> list[Sequence]:
        """Take the waiting sequences that join the batch now (the lock held): in arrival order, while they ask
        for the adapter of the batch (of the first waiting one when the batch is empty), up to the free slots."""
        wanted = self._active[0].adapter if self._active else (self._pending[0].adapter if self._pending else None)
        count = 0
        free = self.max_batch - len(self._active)
        while count < min(free, len(self._pending)) and self._pending[count].adapter == wanted:
            count += 1
        joining, self._pending = self._pending[:count], self._pending[count:]
        return joining

    def _join(self, seq: Sequence) -> None:
        """Prefill ``seq`` alone and add its cache and logits to the batch."""
        ids = torch.tensor([seq.prompt_ids], device=self.device)
        out = self.model(ids, use_cache=True, logits_to_keep=1)
        assert out.past_key_values is not None
        logits = out.logits[:, -1]
        cache = keep_window(out.past_key_values, self._window)
        position = torch.tensor([ids.shape[1]], device=self.device)
        if not self._active:
            self._cache, self._pads, self._logits = cache, torch.zeros(1, dtype=torch.long, device=self.device), logits
            self._positions = position
        else:
            width, length = self._cache[0][0].shape[2], cache[0][0].shape[2]
            target = max(width, length)
            grow, pad_new = target - width, target - length
            self._cache = [
                (torch.cat((F.pad(k, (0, 0, grow, 0)), F.pad(nk, (0, 0, pad_new, 0)))),
                 torch.cat((F.pad(v, (0, 0, grow, 0)), F.pad(nv, (0, 0, pad_new, 0)))))
                for (k, v), (nk, nv) in zip(self._cache, cache, strict=True)
            ]
            self._pads = torch.cat((self._pads + grow, torch.tensor([pad_new], device=self.device)))
            self._positions = torch.cat((self._positions, position))
            self._logits = torch.cat((self._logits, logits))
        with self._wake:
            self._active.append(seq)

    def _step(self) -> None:
        """Choose every slot's next token, send the news, drop finished slots, run the model one step."""
        self.largest_batch = max(self.largest_batch, len(self._active))
        keep: list[int] = []
        next_tokens: list[int] = []
        settings = [(seq.sampling.temperature, seq.sampling.top_p or 1.0) for seq in self._active]
        uniform = torch.cat([torch.rand(1, generator=seq.generator, device=self.device) for seq in self._active])
        chosen = sample_per_row(self._logits, torch.tensor([t for t, _ in settings], device=self.device),
                                torch.tensor([p for _, p in settings], device=self.device), uniform).tolist()
        for row, (seq, token) in enumerate(zip(self._active, chosen, strict=True)):
            if seq.cancelled:
                self.cancelled += 1
                continue
            if self._advance(seq, token):
                keep.append(row)
                next_tokens.append(token)
        if len(keep) < len(self._active):
            index = torch.tensor(keep, dtype=torch.long, device=self.device)
            self._cache = [(k.index_select(0, index), v.index_select(0, index)) for k, v in self._cache]
            self._pads = self._pads.index_select(0, index)
            self._positions = self._positions.index_select(0, index)
            with self._wake:
                self._active = [self._active[i] for i in keep]
            if keep:  # drop the columns that are padding in every remaining row
                trim = int(self._pads.min())
                if trim:
                    self._cache = [(k[:, :, trim:], v[:, :, trim:]) for k, v in self._cache]
                    self._pads = self._pads - trim
        if not keep:
            self._cache = []
            return
        width = self._cache[0][0].shape[2]
        columns = torch.arange(width + 1, device=self.device)
        mask = columns[None, :] >= self._pads[:, None]
        ids = torch.tensor(next_tokens, device=self.device)[:, None]
        out = self.model(ids, past_key_values=self._cache, use_cache=True, position_ids=self._positions[:, None],
                         attention_mask=mask)
        assert out.past_key_values is not None
        self._cache, self._logits = keep_window(out.past_key_values, self._window), out.logits[:, -1]
        self._positions = self._positions + 1
        self._pads = (self._pads - (width + 1 - self._cache[0][0].shape[2])).clamp(min=0)  # pads the window let go

    def _advance(self, seq: Sequence, token: int) -> bool:
        """Add ``token`` to ``seq`` and emit what it adds; False when the sequence has finished."""
        s = seq.sampling
        if self.eos_id is not None and token == self.eos_id:
            return self._finish(seq, decode(self.tokenizer, seq.tokens), "stop")
        seq.tokens.append(token)
        text = decode(self.tokenizer, seq.tokens)
        found = [i for i in (text.find(stop, max(0, len(seq.sent) - len(stop))) for stop in s.stop) if i >= 0]
        if found:
            return self._finish(seq, text[:min(found)], "stop")
        if len(seq.tokens) >= s.max_tokens:
            return self._finish(seq, text, "length")
        # Byte-level BPE can split a character over tokens: hold back while the text ends in an incomplete one.
        ready = text if not text.endswith("\ufffd") else text.rstrip("\ufffd")
        ready = ready[:len(ready) - _held_back(ready, s.stop)]
        if len(ready) > len(seq.sent) and ready.startswith(seq.sent):
            seq.emit(Delta(ready[len(seq.sent):]))
            seq.sent = ready
        return True

    def _finish(self, seq: Sequence, text: str, reason: FinishReason) -> bool:
        if len(text) > len(seq.sent) and text.startswith(seq.sent):
            seq.emit(Delta(text[len(seq.sent):]))
            seq.sent = text
        seq.emit(Finished(reason, len(seq.tokens)))
        return False
