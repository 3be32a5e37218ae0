"""Text generation with a trained LM run: streamed text for `smoltrain generate` and `smoltrain chat`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from smoltrain.data.tokenizer import (
    BOS_TOKEN,
    PAD_TOKEN,
    apply_chat_template,
    decode,
    encode,
    eos_id,
    load_tokenizer,
    special_token_id,
)
from smoltrain.errors import ConfigError, SmoltrainError
from smoltrain.interop.hf import PEFT_CONFIG, read_peft_adapter
from smoltrain.models.lm import LMForCausalLM
from smoltrain.models.lora import adapter_state_dict, apply_lora, remove_lora
from smoltrain.models.quantize import QUANTIZE_CHOICES, quantize_device, quantize_int8
from smoltrain.runs import checkpoint as ckpt
from smoltrain.runs.loading import Adapter, LoadedRun, load, load_adapter


@dataclass
class LMRun:
    """A loaded LM run, its tokenizer, and the adapter on it (:meth:`use_adapter`; None: the run as trained)."""

    run: LoadedRun
    tokenizer: Tokenizer
    tokenizer_dir: Path | None = None  # where the tokenizer came from (its tokenizer_config.json: chat template)
    adapter: Path | None = None
    quantized: str | None = None  # "int8" once :meth:`quantize` ran (its adapters, if any, merged in)
    prompt_bos: int | None = None  # BOS id when the run trained on documents that begin with it (prompt_ids)

    @property
    def model(self) -> LMForCausalLM:
        return self.run.model  # type: ignore[return-value]

    def use_adapter(self, adapter: str | Path | Adapter | None) -> None:
        """Put the LoRA adapters of ``adapter`` (a LoRA run directory or a PEFT adapter directory, or an
        :class:`Adapter` already read from one: a server switching often reads each once) on the loaded
        model in place of any it has, without reading the base again; ``None`` takes them off (the base model:
        for a LoRA run loaded here, the model it adapts).

        A LoRA run's adapters must have been trained on the checkpoint loaded here (their sha256 pointer says
        which); a PEFT adapter must fit the model's layers and shapes. Either mismatch is one line."""
        if self.quantized:
            raise SmoltrainError(f"the model is quantized to {self.quantized}, with its adapters merged in before: "
                                 "adapters cannot be switched on it; load it again (--adapter DIR puts them on "
                                 "before quantizing), or drop --quantize")
        model = self.model
        remove_lora(model)
        self.adapter = None
        if adapter is None:
            return
        found = adapter if isinstance(adapter, Adapter) else read_adapter(adapter)
        if found.base_files is not None:
            loaded = ckpt.base_files(self.run.checkpoint)
            if loaded != found.base_files:
                raise SmoltrainError(f"the adapters of {found.source} were trained on another base than "
                                     f"{self.run.checkpoint}: load the run they adapt (its init_from), or generate "
                                     f"with {found.source} itself")
        try:
            apply_lora(model, found.rank, found.alpha, 0.0, found.targets)
        except ConfigError as err:
            raise SmoltrainError(f"{found.source} adapts layers this model lacks ({err})") from None
        expected = adapter_state_dict(model)
        shapes = {k: tuple(v.shape) for k, v in found.weights.items()}
        if shapes != {k: tuple(v.shape) for k, v in expected.items()}:
            remove_lora(model)
            missing = sorted(expected.keys() - shapes.keys())
            what = f"no weights for {missing[0]}" if missing else "other shapes or layers"
            raise SmoltrainError(f"the adapters of {found.source} do not fit the model of {self.run.run_dir.root} "
                                 f"({what}): use adapters trained on this model")
        model.load_state_dict(found.weights, strict=False)
        model.to(self.run.device).eval()
        self.adapter = found.source

    def quantize(self, scheme: str) -> None:
        """Quantize the model for CPU inference (``int8``: ``models.quantize.quantize_int8``), the adapters on it
        merged in first; after this, adapters cannot be switched."""
        if scheme not in QUANTIZE_CHOICES:
            raise SmoltrainError(f"--quantize {scheme}: choose one of {', '.join(QUANTIZE_CHOICES)}")
        quantize_int8(self.model)
        self.quantized = scheme


def read_adapter(path: str | Path) -> Adapter:
    """The adapters in ``path``: a PEFT adapter directory (``adapter_config.json``) or a LoRA run directory."""
    path = Path(path)
    if (path / PEFT_CONFIG).is_file():
        return read_peft_adapter(path)
    if (path / "config.yaml").is_file():
        return load_adapter(path)
    raise SmoltrainError(f"--adapter {path}: neither a LoRA run directory (config.yaml) nor a PEFT adapter "
                         f"directory ({PEFT_CONFIG}); give one of those")


def load_lm(run_dir: str | Path, device: str = "auto", adapter: str | Path | None = None,
            tokenizer: str | Path | None = None, quantize: str | None = None) -> LMRun:
    """A trained `arch=lm` run and the tokenizer saved with it (or the one in the directory ``tokenizer``); with
    ``adapter``, those LoRA adapters on it (:meth:`LMRun.use_adapter`); with ``quantize`` (``int8``), quantized for
    the CPU after the adapters are merged in (:meth:`LMRun.quantize`; ``device`` auto is then the CPU)."""
    run = load(run_dir, device=quantize_device(device, quantize), need_data=False)
    if not isinstance(run.model, LMForCausalLM):
        raise SmoltrainError(f"generation needs an LM run (arch=lm); {run_dir} is arch {run.config.arch.name}")
    tokenizer_dir = Path(tokenizer) if tokenizer is not None else run.run_dir.tokenizer
    loaded = load_tokenizer(tokenizer_dir)
    model_vocab = run.model.config.vocab_size
    if loaded.get_vocab_size() > model_vocab:  # ids past the embedding table would fail inside the model
        raise SmoltrainError(f"{tokenizer_dir} has {loaded.get_vocab_size()} tokens but the model of "
                             f"{run_dir} embeds {model_vocab}: use the tokenizer the run was trained with")
    starts_with_bos = getattr(run.config.arch, "documents_start_with_bos", False)
    lm = LMRun(run, loaded, tokenizer_dir, prompt_bos=special_token_id(loaded, BOS_TOKEN) if starts_with_bos else None)
    if adapter is not None:
        lm.use_adapter(adapter)
    if quantize is not None:
        lm.quantize(quantize)
    return lm


def prompt_ids(lm: LMRun, text: str) -> list[int]:
    """The tokens of a prompt as the model saw documents in training: BOS first when they began with it (a chat
    template's rendering already does: its first token, ``<|im_start|>``, is the BOS), else the text alone.
    Empty text gives []."""
    ids = encode(lm.tokenizer, text)
    if ids and lm.prompt_bos is not None and ids[0] != lm.prompt_bos:
        ids.insert(0, lm.prompt_bos)
    return ids


def _prompt_ids(lm: LMRun, prompt: str) -> list[int]:
    ids = prompt_ids(lm, prompt)
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
