"""Byte-level BPE tokenizer in the MiniMind layout, trained with the HF `tokenizers` library.

The output directory holds ``tokenizer.json``, ``tokenizer_config.json`` and
``special_tokens_map.json`` -- the files ``transformers.AutoTokenizer.from_pretrained(DIR)`` reads to
build a ``PreTrainedTokenizerFast``. There is no normalizer and the pre-tokenizer/decoder are
ByteLevel, so ``decode(encode(text)) == text`` for every string (every byte has a token).

Special tokens follow MiniMind: id 0 ``<|endoftext|>`` (pad and unk), 1 ``<|im_start|>`` (bos),
2 ``<|im_end|>`` (eos, and the end-of-document token appended by the text dataset builder).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from smoltrain.data.documents import iter_documents
from smoltrain.errors import ConfigError, DataError
from smoltrain.fileio import atomic_write_text, check_output_path

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS: tuple[str, ...] = (ENDOFTEXT, IM_START, IM_END)

BOS_TOKEN = IM_START
EOS_TOKEN = IM_END
PAD_TOKEN = ENDOFTEXT
UNK_TOKEN = ENDOFTEXT

DEFAULT_MODEL_MAX_LENGTH = 131072
# The files of a tokenizer directory (what `train_tokenizer` writes, a run keeps and an HF folder holds).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

# Plain ChatML, no system prompt injected and no <think> handling: the same string that
# `apply_chat_template` below builds, so Python and transformers render identical prompts.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- endif -%}"
)

_MIN_VOCAB = 256 + len(SPECIAL_TOKENS)  # the byte alphabet plus the special tokens


def _iter_training_texts(inputs: list[Path], skip_bad_lines: bool) -> Iterator[str]:
    # chat jsonl (SFT/DPO) gives the contents of every turn, as MiniMind trains its tokenizer on its SFT file
    yield from iter_documents([str(p) for p in inputs], skip_bad_lines=skip_bad_lines, chat=True)


def train_tokenizer(
    inputs: list[Path],
    vocab_size: int,
    output: Path,
    min_frequency: int = 2,
    model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
    skip_bad_lines: bool = False,
    overwrite: bool = False,
) -> Path:
    """Train a byte-level BPE on `inputs` (.txt, .jsonl with `text`, .parquet, or directories of those).

    Documents are read as by `smoltrain.data.text.iter_documents` (a .txt paragraph or a jsonl line
    each); a malformed jsonl line stops with file:line unless `skip_bad_lines`.
    Chat jsonl lines (MiniMind SFT ``conversations`` or DPO ``chosen``/``rejected``) give the contents of
    every turn. Writes the three tokenizer files into the directory `output` (each file atomically) and
    returns `output`; an existing non-empty `output` is refused unless `overwrite` (a dataset or run built
    with the old tokenizer keeps its own copy, and refuses to train if that copy changes).
    """
    if vocab_size < _MIN_VOCAB:
        raise ConfigError(
            f"tokenizer vocab_size={vocab_size} is too small: byte-level BPE needs at least {_MIN_VOCAB} "
            "(256 bytes + 3 special tokens); use e.g. 6400"
        )
    if min_frequency < 1:
        raise ConfigError(f"tokenizer min_frequency={min_frequency} must be >= 1")
    if not inputs:
        raise DataError("no tokenizer training inputs given: pass at least one .txt/.jsonl file or directory")
    output = Path(output)
    check_output_path(output)  # before minutes of training
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not overwrite:
        raise DataError(f"{output} already exists: choose another --output, or pass --overwrite (overwrite=True) "
                        "to replace the tokenizer in it")

    tokenizer = Tokenizer(models.BPE())
    # No normalizer: any normalization would break the exact byte round trip.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),  # ids 0, 1, 2 in this order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    count = 0

    def counted() -> Iterator[str]:
        nonlocal count
        for text in _iter_training_texts([Path(p) for p in inputs], skip_bad_lines):
            count += 1
            yield text

    tokenizer.train_from_iterator(counted(), trainer=trainer)
    if count == 0:
        raise DataError(f"no text found in tokenizer inputs {[str(p) for p in inputs]}: check the paths")
    for i, tok in enumerate(SPECIAL_TOKENS):
        if tokenizer.token_to_id(tok) != i:  # pragma: no cover - guards a library behaviour change
            raise RuntimeError(f"special token {tok} got id {tokenizer.token_to_id(tok)}, expected {i}")

    _write_files(output, {
        "tokenizer_config.json": json.dumps(_tokenizer_config(model_max_length), indent=2),
        "special_tokens_map.json": json.dumps(_special_tokens_map(), indent=2),
        # Written last: load_tokenizer keys on tokenizer.json, so an interrupted run is not mistaken for a complete one.
        "tokenizer.json": tokenizer.to_str(pretty=False),
    })
    return output


def _write_files(output: Path, files: dict[str, str]) -> None:
    """Write ``files`` into ``output`` in their order, each atomically; when one cannot be written, those this
    call created (and ``output``, if it made it) are removed again, so no half tokenizer is left behind."""
    made_output = not output.exists()
    created: list[Path] = []
    try:
        for name, text in files.items():
            if not (output / name).exists():
                created.append(output / name)
            atomic_write_text(output / name, text)
    except OSError:
        for path in created:
            path.unlink(missing_ok=True)
        if made_output:
            with contextlib.suppress(OSError):
                output.rmdir()
        raise


def _special_tokens_map() -> dict[str, str]:
    return {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN, "unk_token": UNK_TOKEN}


def _tokenizer_config(model_max_length: int) -> dict[str, object]:
    added = {
        str(i): {
            "content": tok,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, tok in enumerate(SPECIAL_TOKENS)
    }
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": [],
        **_special_tokens_map(),
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "chat_template": CHAT_TEMPLATE,
    }


def tokenizer_file(path: str | Path) -> Path:
    """The tokenizer.json for a tokenizer directory (or the file itself)."""
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() or path.suffix != ".json" else path
    if not file.is_file():
        raise DataError(
            f"no tokenizer found at {file}: train one first (smoltrain.data.tokenizer.train_tokenizer) "
            "or pass the directory that holds tokenizer.json"
        )
    return file


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load the tokenizer from a directory written by `train_tokenizer` (or a tokenizer.json path)."""
    file = tokenizer_file(path)
    try:
        return Tokenizer.from_file(str(file))
    except Exception as exc:  # the Rust error text is useful but multi-line; keep one line
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot read tokenizer {file}: {first}; re-train or re-copy the tokenizer") from exc


def encode(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of `text`, with no bos/eos added (the tokenizer has no post-processor)."""
    return tokenizer.encode(text, add_special_tokens=False).ids


def decode(tokenizer: Tokenizer, ids: Iterable[int]) -> str:
    """Exact inverse of `encode`: special tokens are kept as text, not skipped."""
    return tokenizer.decode(list(ids), skip_special_tokens=False)


def special_token_id(tokenizer: Tokenizer, token: str) -> int:
    tid = tokenizer.token_to_id(token)
    if tid is None:
        raise DataError(f"tokenizer has no {token} token: use a tokenizer trained by smoltrain (MiniMind layout)")
    return tid


def eos_id(tokenizer: Tokenizer) -> int:
    return special_token_id(tokenizer, EOS_TOKEN)


def apply_chat_template(messages: list[Mapping[str, str]], add_generation_prompt: bool = False) -> str:
    """Render messages ``[{"role": ..., "content": ...}, ...]`` as ChatML (same output as CHAT_TEMPLATE)."""
    parts: list[str] = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, Mapping) else None
        content = message.get("content") if isinstance(message, Mapping) else None
        if not isinstance(role, str) or not isinstance(content, str):
            raise DataError(
                f"chat message {i} must be a mapping with string 'role' and 'content', got {message!r}: fix the data"
            )
        parts.append(f"{IM_START}{role}\n{content}{IM_END}\n")
    if add_generation_prompt:
        parts.append(f"{IM_START}assistant\n")
    return "".join(parts)
