"""MiniMind's chat files -> token + assistant-mask shards, and the padded, resumable SFT / preference rows.

Inputs (jsonl, one JSON object per line, read unchanged from MiniMind's ``sft_*.jsonl`` / ``dpo.jsonl``):

* SFT: ``{"conversations": [message, ...]}``
* DPO: ``{"chosen": [message, ...], "rejected": [message, ...]}`` (the prompt turns repeated in both)

A message is ``{"role": "system" | "user" | "assistant" | "tool", "content": str}`` with optional
``reasoning_content`` (str, assistant), ``tools`` (a JSON string holding a list of tool schemas, on the
first message, a system turn) and ``tool_calls`` (a JSON string holding a list of ``{"name", "arguments"}``
calls, on an assistant turn). A conversation needs at least one assistant turn.

Rendering follows MiniMind-3's (Qwen3-style) ChatML template, see `render_segments`: for plain
system/user/assistant messages it is exactly `smoltrain.data.tokenizer.apply_chat_template`. Tools go into
the system turn inside ``<tools></tools>``; an assistant turn is ``<think>\\n{reasoning}\\n</think>\\n\\n``
(only when it has reasoning: MiniMind drops the empty think block from most samples, and smoltrain's
generation prompt has none) + content + one ``<tool_call>`` JSON block per call; consecutive ``tool``
messages become one user turn of ``<tool_response>`` blocks.

Mask: only assistant spans are supervised, i.e. the tokens after each ``<|im_start|>assistant\\n`` up to
and including its ``<|im_end|>`` and the newline after it. Each span and each stretch of prompt between
spans is tokenized on its own, so the prompt (ending in ``<|im_start|>assistant\\n``) has exactly the tokens
that generation sees, and no token straddles a mask boundary. A conversation longer than ``max_length``
tokens is truncated (its last span then runs to the end); one whose first supervised token lies past
``max_length`` teaches nothing and is dropped and counted.

On-disk layout (``metadata.json`` format ``smoltrain-chat-v1``), one directory written atomically::

    metadata.json   kind sft|dpo, vocab_size, dtype, eos/bos/pad ids, max_length, tokenizer {path, sha256},
                    splits {train, val: documents, tokens, supervised_tokens}, skipped_lines, ...
    tokenizer/      the tokenizer copy (see data/shards.py)
    sft:  {split}.bin, {split}.mask.bin (uint8, 1 = supervised target), {split}.idx (n + 1 int64 offsets)
    dpo:  {split}.chosen.{bin,mask.bin,idx} and {split}.rejected.{bin,mask.bin,idx}; pair i = document i of each
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from smoltrain.data.documents import KIND_VERBS, Skips, line_kind
from smoltrain.data.shards import (
    ResumableRows,
    atomic_dataset_dir,
    check_output_dir,
    copy_tokenizer,
    dataset_tokenizer_dir,
    document_index,
    open_array,
    open_index,
    token_dtype,
)
from smoltrain.data.tokenizer import (
    BOS_TOKEN,
    IM_END,
    IM_START,
    PAD_TOKEN,
    eos_id,
    load_tokenizer,
    special_token_id,
    tokenizer_file,
)
from smoltrain.errors import ConfigError, DataError
from smoltrain.fileio import read_json, write_json_synced

__all__ = ["FORMAT", "KINDS", "ROLES", "SFTRows", "PreferenceRows", "build_sft_dataset", "build_dpo_dataset",
           "read_chat_metadata", "dataset_tokenizer_dir", "render_segments", "render_conversation",
           "tokenize_conversation", "validate_messages"]

FORMAT = "smoltrain-chat-v1"
KINDS = ("sft", "dpo")
ROLES = ("system", "user", "assistant", "tool")
SPLITS = ("train", "val")
DEFAULT_MAX_LENGTH = 1024  # MiniMind's SFTDataset default
IGNORE = -100
_ENCODE_CHUNK = 1024  # conversations per encode_batch call

_TOOLS_HEADER = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_TOOLS_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\n</tool_call>"
)


class BadLine(ValueError):
    """What is wrong with one input line (turned into a DataError naming file and line, or skipped)."""


# ----------------------------------------------------------------------------------------------------------------
# Validation and rendering


def _json_list(value: Any, key: str, i: int) -> list[Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise BadLine(f"message {i} has a '{key}' string that is not valid JSON ({exc.msg})") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise BadLine(f"message {i} has a '{key}' that is not a JSON list of objects")
    return value


def validate_messages(messages: Any, key: str = "conversations") -> list[dict[str, Any]]:
    """The messages of one conversation, checked and normalised (tools / tool_calls parsed from their JSON
    strings); raises `BadLine` naming what is wrong."""
    if not isinstance(messages, list) or not messages:
        raise BadLine(f"'{key}' must be a non-empty list of messages")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadLine(f"message {i} of '{key}' is not an object")
        role = message.get("role")
        if role not in ROLES:
            raise BadLine(f"message {i} of '{key}' has role {role!r}; roles are {', '.join(ROLES)}")
        content = message.get("content")
        if content is None and role == "assistant" and message.get("tool_calls"):
            content = ""
        if not isinstance(content, str):
            raise BadLine(f"message {i} of '{key}' ({role}) has no string 'content'")
        clean: dict[str, Any] = {"role": role, "content": content}
        reasoning = message.get("reasoning_content")
        if reasoning is not None:
            if not isinstance(reasoning, str):
                raise BadLine(f"message {i} of '{key}' has a non-string 'reasoning_content'")
            if role != "assistant" and reasoning:
                raise BadLine(f"message {i} of '{key}' ({role}) has 'reasoning_content': only assistant turns reason")
            clean["reasoning_content"] = reasoning
        if message.get("tools"):
            if i != 0 or role != "system":
                raise BadLine(f"message {i} of '{key}' has 'tools': tools belong on the first message, a system turn")
            clean["tools"] = _json_list(message["tools"], "tools", i)
        if message.get("tool_calls"):
            if role != "assistant":
                raise BadLine(f"message {i} of '{key}' ({role}) has 'tool_calls': only assistant turns call tools")
            calls = _json_list(message["tool_calls"], "tool_calls", i)
            for call in calls:
                call = call.get("function", call)
                if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                    raise BadLine(f"message {i} of '{key}' has a tool call without a string 'name'")
            clean["tool_calls"] = [c.get("function", c) for c in calls]
        out.append(clean)
    if not any(m["role"] == "assistant" for m in out):
        raise BadLine(f"'{key}' has no assistant turn: nothing to learn from")
    return out


def _assistant_body(message: dict[str, Any]) -> str:
    content = message["content"]
    reasoning = message.get("reasoning_content") or ""
    if not reasoning and "</think>" in content:  # reasoning written inline, as some MiniMind samples do
        head, _, content = content.partition("</think>")
        reasoning = head.split("<think>")[-1]
    body = ""
    if reasoning.strip("\n"):
        body = f"<think>\n{reasoning.strip(chr(10))}\n</think>\n\n"
        content = content.lstrip("\n")
    body += content
    for n, call in enumerate(message.get("tool_calls", [])):
        if n or content:
            body += "\n"
        args = call.get("arguments", {})
        args_text = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        body += f"<tool_call>\n{{\"name\": {json.dumps(call['name'], ensure_ascii=False)}, " \
                f"\"arguments\": {args_text}}}\n</tool_call>"
    return body


def render_segments(messages: list[dict[str, Any]]) -> list[tuple[str, bool]]:
    """The conversation as ``(text, supervised)`` pieces, alternating prompt and assistant span, in order.

    `messages` as returned by `validate_messages`. Each supervised piece is one assistant turn's body plus
    ``<|im_end|>\\n``; the prompt piece before it ends with ``<|im_start|>assistant\\n``."""
    pieces: list[tuple[str, bool]] = []
    prompt = ""
    i = 0
    while i < len(messages):
        message = messages[i]
        role = message["role"]
        if role == "system":
            text = message["content"]
            if message.get("tools"):
                tools = "".join("\n" + json.dumps(t, ensure_ascii=False) for t in message["tools"])
                text = (text + "\n\n" if text else "") + _TOOLS_HEADER + tools + _TOOLS_FOOTER
            prompt += f"{IM_START}system\n{text}{IM_END}\n"
        elif role == "user":
            prompt += f"{IM_START}user\n{message['content']}{IM_END}\n"
        elif role == "tool":  # consecutive tool results are one user turn, as MiniMind's template renders them
            prompt += f"{IM_START}user"
            while i < len(messages) and messages[i]["role"] == "tool":
                prompt += f"\n<tool_response>\n{messages[i]['content']}\n</tool_response>"
                i += 1
            prompt += f"{IM_END}\n"
            continue
        else:
            pieces.append((prompt + f"{IM_START}assistant\n", False))
            pieces.append((_assistant_body(message) + f"{IM_END}\n", True))
            prompt = ""
        i += 1
    if prompt:
        pieces.append((prompt, False))
    return pieces


def render_conversation(messages: list[dict[str, Any]]) -> str:
    """The whole rendered conversation text."""
    return "".join(text for text, _ in render_segments(messages))


@dataclass
class Tokenized:
    ids: np.ndarray  # int64 token ids
    mask: np.ndarray  # uint8, 1 = supervised target


def _assemble(encodings: list[list[int]], flags: list[bool], max_length: int) -> Tokenized:
    ids = np.concatenate([np.asarray(e, dtype=np.int64) for e in encodings]) if encodings else np.zeros(0, np.int64)
    mask = np.concatenate([np.full(len(e), int(f), dtype=np.uint8) for e, f in zip(encodings, flags, strict=True)])
    return Tokenized(ids[:max_length], mask[:max_length])


def tokenize_conversation(tokenizer: Any, messages: list[dict[str, Any]],
                          max_length: int = DEFAULT_MAX_LENGTH) -> Tokenized:
    """Token ids and assistant mask of one validated conversation (truncated to `max_length`)."""
    pieces = render_segments(messages)
    encodings = [tokenizer.encode(text, add_special_tokens=False).ids for text, _ in pieces]
    return _assemble(encodings, [flag for _, flag in pieces], max_length)


# ----------------------------------------------------------------------------------------------------------------
# Reading input files


def _wrong_kind(found: str, kind: str) -> str:
    what = {"text": "pretraining text (a 'text' field)", "sft": "SFT conversations ('conversations')",
            "dpo": "DPO pairs ('chosen'/'rejected')"}[found]
    return f"holds {what}, not {kind.upper()} data: use `smoltrain {KIND_VERBS[found]}`"


def _parse_record(obj: Any, kind: str) -> list[list[dict[str, Any]]]:
    """The conversation(s) of one line: [conversation] for sft, [chosen, rejected] for dpo."""
    found = line_kind(obj)
    if found is None:
        keys = "'conversations'" if kind == "sft" else "'chosen' and 'rejected'"
        raise BadLine(f"is not a JSON object with {keys}")
    if found != kind:
        raise BadLine(_wrong_kind(found, kind))
    if kind == "sft":
        return [validate_messages(obj["conversations"])]
    if "chosen" not in obj or "rejected" not in obj:
        raise BadLine("needs both 'chosen' and 'rejected'")
    return [validate_messages(obj["chosen"], "chosen"), validate_messages(obj["rejected"], "rejected")]


def iter_chat_records(inputs: list[str], kind: str, skip_bad_lines: bool = False,
                      skips: Skips | None = None) -> Iterator[list[list[dict[str, Any]]]]:
    """The validated records of the jsonl `inputs`: ``[conversation]`` (sft) or ``[chosen, rejected]`` (dpo)."""
    skips = skips if skips is not None else Skips()
    for item in inputs:
        path = Path(item)
        if not path.is_file():
            raise DataError(f"chat input {path} does not exist or is not a file: check the path")
        if path.suffix != ".jsonl":
            raise DataError(f"{path} is not a .jsonl file: {kind.upper()} data is MiniMind's jsonl; for plain text "
                            "use `smoltrain data text`")
        first = True
        with open(path, "rb") as handle:
            for lineno, raw in enumerate(handle, 1):
                if not raw.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    try:
                        obj = json.loads(raw.decode("utf-8"))
                    except UnicodeDecodeError:
                        raise BadLine("is not valid UTF-8") from None
                    except json.JSONDecodeError as exc:
                        raise BadLine(f"is not valid JSON ({exc.msg})") from None
                    found = line_kind(obj)
                    if first and found is not None and found != kind:  # a whole file of the wrong kind: no skipping
                        raise DataError(f"{path} {_wrong_kind(found, kind)}")
                    record = _parse_record(obj, kind)
                except BadLine as bad:
                    if skip_bad_lines:
                        skips.add(where)
                        continue
                    raise DataError(f"{where}: line {bad}; fix the line or pass --skip-bad-lines") from None
                finally:
                    first = False
                yield record


# ----------------------------------------------------------------------------------------------------------------
# Building


def _build(kind: str, inputs: list[str], tokenizer_dir: Path, output_dir: Path, max_length: int,
           val_fraction: float, seed: int, skip_bad_lines: bool) -> dict[str, Any]:
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction={val_fraction} must be in [0, 1); e.g. 0.01")
    if max_length < 2:
        raise ConfigError(f"max_length={max_length} must be >= 2 tokens; e.g. {DEFAULT_MAX_LENGTH}")
    if seed < 0:
        raise ConfigError(f"seed={seed} must be >= 0")
    if not inputs:
        raise DataError(f"no {kind.upper()} inputs given: pass MiniMind-style .jsonl files")
    out = check_output_dir(Path(output_dir))  # fail before tokenizing
    tokenizer = load_tokenizer(tokenizer_file(tokenizer_dir))
    eos = eos_id(tokenizer)
    bos, pad = special_token_id(tokenizer, BOS_TOKEN), special_token_id(tokenizer, PAD_TOKEN)
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(vocab_size)
    sides = ("",) if kind == "sft" else (".chosen", ".rejected")

    skips = Skips()
    records: list[list[Tokenized]] = []
    dropped = 0
    chunk: list[list[list[dict[str, Any]]]] = []

    def flush() -> None:
        nonlocal dropped
        pieces = [render_segments(conv) for record in chunk for conv in record]
        flat = [text for p in pieces for text, _ in p]
        encoded = [e.ids for e in tokenizer.encode_batch(flat, add_special_tokens=False)] if flat else []
        at, convs = 0, []
        for p in pieces:
            convs.append(_assemble(encoded[at : at + len(p)], [flag for _, flag in p], max_length))
            at += len(p)
        for r in range(len(chunk)):
            record = convs[r * len(sides) : (r + 1) * len(sides)]
            if any(not t.mask.any() for t in record):
                dropped += 1
            else:
                records.append(record)
        chunk.clear()

    for record in iter_chat_records([str(i) for i in inputs], kind, skip_bad_lines, skips):
        chunk.append(record)
        if len(chunk) >= _ENCODE_CHUNK:
            flush()
    flush()
    n = len(records)
    if n == 0:
        why = f" ({dropped} had no assistant token within max_length={max_length})" if dropped else ""
        raise DataError(f"no usable {kind.upper()} records in {[str(i) for i in inputs]}{why}: check the files")
    is_val = np.zeros(n, dtype=bool)
    if val_fraction > 0:
        if n < 2:
            raise DataError(f"only {n} record in the inputs: a val split needs >= 2; add data or use --val-fraction 0")
        n_val = min(n - 1, max(1, round(n * val_fraction)))
        is_val[np.random.default_rng(seed).choice(n, size=n_val, replace=False)] = True

    counts = {s: {"documents": 0, "tokens": 0, "supervised_tokens": 0} for s in SPLITS}
    with atomic_dataset_dir(out) as tmp:
        tokenizer_entry = copy_tokenizer(tokenizer_dir, tmp)
        for split in SPLITS:
            chosen = [rec for rec, v in zip(records, is_val, strict=True) if v == (split == "val")]
            counts[split]["documents"] = len(chosen)
            for s, side in enumerate(sides):
                docs = [rec[s] for rec in chosen]
                _write_arrays(tmp, f"{split}{side}", docs, dtype)
                counts[split]["tokens"] += sum(len(d.ids) for d in docs)
                counts[split]["supervised_tokens"] += sum(int(d.mask.sum()) for d in docs)
        metadata: dict[str, Any] = {
            "format": FORMAT,
            "kind": kind,
            "vocab_size": vocab_size,
            "dtype": dtype.name,
            "eos_id": eos,
            "bos_id": bos,
            "pad_id": pad,
            "max_length": max_length,
            "tokenizer": tokenizer_entry,
            "splits": counts,
            "dropped_no_target": dropped,
            "skipped_lines": skips.count,
            "first_skipped": skips.first,
            "inputs": [str(i) for i in inputs],
            "seed": seed,
            "val_fraction": val_fraction,
        }
        write_json_synced(tmp / "metadata.json", metadata, indent=2)
    return metadata


def _write_arrays(tmp: Path, prefix: str, docs: list[Tokenized], dtype: np.dtype) -> None:
    def write(name: str, data: np.ndarray) -> None:
        handle: BinaryIO
        with open(tmp / name, "wb") as handle:
            handle.write(data.tobytes())

    ids = np.concatenate([d.ids for d in docs]).astype(dtype) if docs else np.zeros(0, dtype)
    mask = np.concatenate([d.mask for d in docs]) if docs else np.zeros(0, np.uint8)
    write(f"{prefix}.bin", ids)
    write(f"{prefix}.mask.bin", mask)
    write(f"{prefix}.idx", document_index([len(d.ids) for d in docs]))


def build_sft_dataset(inputs: list[str], tokenizer_dir: Path, output_dir: Path,
                      max_length: int = DEFAULT_MAX_LENGTH, val_fraction: float = 0.01, seed: int = 0,
                      skip_bad_lines: bool = False) -> dict[str, Any]:
    """Tokenize MiniMind SFT jsonl `inputs` into `output_dir` (layout in the module docstring); the metadata."""
    return _build("sft", inputs, Path(tokenizer_dir), Path(output_dir), max_length, val_fraction, seed,
                  skip_bad_lines)


def build_dpo_dataset(inputs: list[str], tokenizer_dir: Path, output_dir: Path,
                      max_length: int = DEFAULT_MAX_LENGTH, val_fraction: float = 0.01, seed: int = 0,
                      skip_bad_lines: bool = False) -> dict[str, Any]:
    """Tokenize MiniMind DPO jsonl `inputs` (chosen/rejected pairs) into `output_dir`; the metadata."""
    return _build("dpo", inputs, Path(tokenizer_dir), Path(output_dir), max_length, val_fraction, seed,
                  skip_bad_lines)


# ----------------------------------------------------------------------------------------------------------------
# Reading


def read_chat_metadata(path: str | Path, kind: str | None = None) -> tuple[Path, dict[str, Any]]:
    """(dataset directory, metadata) of a chat dataset directory; `kind` ("sft"/"dpo") checks its kind."""
    root = Path(path)
    meta_path = root / "metadata.json"
    if not meta_path.is_file():
        raise DataError(f"{meta_path} not found: build the dataset first (smoltrain data sft|dpo)")
    meta = read_json(meta_path, dict, "rebuild the dataset")
    if meta.get("format") != FORMAT:
        hint = " (a text dataset: build chat data with `smoltrain data sft|dpo`)" \
            if str(meta.get("format", "")).startswith("smoltrain-text") else ""
        raise DataError(f"{meta_path} is not a {FORMAT} dataset (format={meta.get('format')!r}){hint}; rebuild it")
    if kind is not None and meta.get("kind") != kind:
        raise DataError(f"{root} is a {meta.get('kind')} dataset, this needs {kind}: build it with "
                        f"`smoltrain data {kind}`")
    return root, meta


class _ChatSide:
    """The token, mask and index arrays of one ``{prefix}`` of a split."""

    def __init__(self, root: Path, prefix: str, dtype: str) -> None:
        self.tokens = open_array(root / f"{prefix}.bin", dtype)
        self.mask = open_array(root / f"{prefix}.mask.bin", np.uint8)
        if len(self.mask) != len(self.tokens):
            raise DataError(f"{root / (prefix + '.mask.bin')} does not match its tokens: rebuild the dataset")
        self.idx = open_index(root / f"{prefix}.idx", len(self.tokens))

    def __len__(self) -> int:
        return len(self.idx) - 1

    def rows(self, indices: np.ndarray, seq_len: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids and targets [B, seq_len] of documents `indices` (truncated to seq_len + 1, right-padded)."""
        ids = np.full((len(indices), seq_len + 1), pad, dtype=np.int64)
        sup = np.zeros((len(indices), seq_len + 1), dtype=bool)
        for r, i in enumerate(indices):
            start = int(self.idx[i])
            end = min(int(self.idx[i + 1]), start + seq_len + 1)
            ids[r, : end - start] = self.tokens[start:end]
            sup[r, : end - start] = self.mask[start:end] != 0
        targets = np.where(sup[:, 1:], ids[:, 1:], IGNORE)
        return torch.from_numpy(ids[:, :-1].copy()), torch.from_numpy(targets)


class SFTRows(ResumableRows):
    """One conversation per row: ``input_ids`` [B, T] (truncated to T + 1 tokens, right-padded with PAD) and
    ``targets`` [B, T], the next token where it is a supervised (assistant) token, else -100. Rows are
    shuffled, batched, sliced per rank and resumed as `data.text.TokenWindows` windows are."""

    kind = "sft"
    sides: tuple[str, ...] = ("",)

    def __init__(self, path: str | Path, split: str = "train", seq_len: int = 512, global_batch_size: int = 32,
                 rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        if split not in SPLITS:
            raise ConfigError(f"split={split!r} must be one of {SPLITS}")
        self.root, self.metadata = read_chat_metadata(path, self.kind)
        self.pad = int(self.metadata["pad_id"])
        self.arrays = [_ChatSide(self.root, f"{split}{side}", self.metadata["dtype"]) for side in self.sides]
        super().__init__(split, seq_len, global_batch_size, rank, world_size, seed)

    def _count_rows(self) -> int:
        counts = {len(a) for a in self.arrays}
        if len(counts) != 1:
            raise DataError(f"{self.root}: chosen and rejected hold different numbers of documents; rebuild it")
        return counts.pop()

    def _too_small(self) -> str:
        return (f"{self.split} split has {self.num_windows} {self.kind.upper()} records, fewer than one global "
                f"batch ({self.global_batch_size}): add data or lower global_batch_size")

    def _windows(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        ids, targets = self.arrays[0].rows(indices, self.seq_len, self.pad)
        return {"input_ids": ids, "targets": targets}


class PreferenceRows(SFTRows):
    """DPO pairs: ``chosen_input_ids``, ``chosen_targets``, ``rejected_input_ids``, ``rejected_targets``, each
    [B, T] built as `SFTRows` builds its rows; row b of each is the same pair."""

    kind = "dpo"
    sides = (".chosen", ".rejected")

    def _windows(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        for name, side in zip(("chosen", "rejected"), self.arrays, strict=True):
            batch[f"{name}_input_ids"], batch[f"{name}_targets"] = side.rows(indices, self.seq_len, self.pad)
        return batch
