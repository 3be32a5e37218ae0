"""Reading documents from text inputs: jsonl, txt, parquet, ``hf:NAME`` and directories of them.

Both the tokenizer trainer and the text-dataset builder read their inputs here (the formats are described
in ``smoltrain.data.text``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from smoltrain.errors import DataError

_SUFFIXES = (".txt", ".jsonl", ".parquet")
_PARAGRAPH_BREAK = re.compile(r"\r?\n(?:[ \t]*\r?\n)+")
# The kinds of MiniMind jsonl line, and the verb that builds a dataset of each.
KIND_VERBS = {"text": "data text", "sft": "data sft", "dpo": "data dpo"}


def line_kind(obj: Any) -> str | None:
    """Which MiniMind file a parsed jsonl line belongs to: "text" (pretraining), "sft" (conversations), "dpo"
    (chosen/rejected), or None (none of them)."""
    if not isinstance(obj, dict):
        return None
    if "conversations" in obj:
        return "sft"
    if "chosen" in obj or "rejected" in obj:
        return "dpo"
    if "text" in obj:
        return "text"
    return None


def chat_turn_texts(obj: dict[str, Any]) -> Iterator[str]:
    """The contents of every turn of an SFT or DPO line (what a tokenizer trains on), skipping non-strings."""
    for key in ("conversations", "chosen", "rejected"):
        messages = obj.get(key)
        if not isinstance(messages, list):
            continue
        for message in messages:
            if isinstance(message, dict):
                for field in ("content", "reasoning_content", "tools", "tool_calls"):
                    value = message.get(field)
                    if isinstance(value, str) and value:
                        yield value


class Skips:
    """Counts malformed lines that were skipped, with the first one for the report."""

    def __init__(self) -> None:
        self.count = 0
        self.first: str | None = None

    def add(self, where: str) -> None:
        self.count += 1
        if self.first is None:
            self.first = where


def _expand(inputs: list[str]) -> list[str]:
    files: list[str] = []
    for item in inputs:
        item = str(item)
        if item.startswith("hf:"):
            files.append(item)
            continue
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _SUFFIXES)
            if not found:
                raise DataError(f"directory {path} holds no .txt/.jsonl/.parquet files: point at the text files")
            files.extend(str(p) for p in found)
        elif path.is_file():
            if path.suffix not in _SUFFIXES:
                raise DataError(
                    f"unsupported text input {path}: use .txt, .jsonl (with a 'text' field), .parquet or hf:NAME"
                )
            files.append(str(path))
        else:
            raise DataError(f"text input {path} does not exist: check the path")
    return files


def _iter_jsonl(path: Path, skip_bad_lines: bool, skips: Skips, chat: bool = False) -> Iterator[str]:
    first = True
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            problem: str | None = None
            texts: list[str] = []
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                problem = "is not valid UTF-8"
            except json.JSONDecodeError as exc:
                problem = f"is not valid JSON ({exc.msg})"
            else:
                kind = line_kind(obj)
                if kind in ("sft", "dpo") and chat:
                    texts = list(chat_turn_texts(obj))
                elif kind in ("sft", "dpo"):
                    problem = (f"holds {kind.upper()} chat data, not pretraining text: "
                               f"use `smoltrain {KIND_VERBS[kind]}`")
                    if first:  # a whole file of the wrong kind: one line, whatever skip_bad_lines says
                        raise DataError(f"{path} {problem}")
                elif kind is None:
                    problem = "has no 'text' field"
                elif not isinstance(obj["text"], str):
                    problem = f"has a non-string 'text' ({type(obj['text']).__name__})"
                else:
                    texts = [obj["text"]]
            first = False
            if problem is not None:
                where = f"{path}:{lineno}"
                if skip_bad_lines:
                    skips.add(where)
                    continue
                raise DataError(
                    f"{where}: line {problem}; each line must be a JSON object with a string 'text' field "
                    "(fix the line or pass skip_bad_lines / --skip-bad-lines)"
                )
            yield from (text for text in texts if text)


def _iter_txt(path: Path) -> Iterator[str]:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8; convert the file to UTF-8 (e.g. iconv)") from exc
    for paragraph in _PARAGRAPH_BREAK.split(text):
        paragraph = paragraph.strip("\r\n")
        if paragraph.strip():
            yield paragraph


def _iter_parquet(path: Path, skip_bad_lines: bool, skips: Skips) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise DataError(f"reading {path} needs pyarrow: pip install pyarrow (or convert it to .jsonl)") from exc
    file = pq.ParquetFile(path)
    if "text" not in file.schema_arrow.names:
        raise DataError(f"{path} has no 'text' column (columns: {file.schema_arrow.names}): rename the text column")
    texts = (text for batch in file.iter_batches(columns=["text"]) for text in batch.column(0).to_pylist())
    yield from _string_texts(texts, str(path), "fix it", skip_bad_lines, skips)


def _iter_hf(spec: str, skip_bad_lines: bool, skips: Skips) -> Iterator[str]:
    try:
        import datasets
    except ImportError as exc:
        raise DataError(f"{spec} needs the `datasets` package: pip install datasets (or export to .jsonl)") from exc
    name, _, split = spec[3:].partition(":")
    data = datasets.load_dataset(name, split=split or "train", streaming=True)
    texts = (item.get("text") if isinstance(item, dict) else None for item in data)
    yield from _string_texts(texts, spec, "pick a text dataset", skip_bad_lines, skips)


def _string_texts(texts: Iterator[Any], source: str, fix: str, skip_bad_lines: bool, skips: Skips) -> Iterator[str]:
    """The non-empty string texts of a table's rows; a row without one stops the build or is skipped and counted."""
    for row, text in enumerate(texts, 1):
        if not isinstance(text, str):
            if skip_bad_lines:
                skips.add(f"{source} row {row}")
                continue
            raise DataError(f"{source} row {row}: 'text' is {text!r}, not a string; {fix} or pass skip_bad_lines")
        if text:
            yield text


def iter_documents(inputs: list[str], skip_bad_lines: bool = False, skips: Skips | None = None,
                   chat: bool = False) -> Iterator[str]:
    """Yield the documents of `inputs` in order (see the module docstring for the formats). With `chat`, SFT and
    DPO jsonl lines give the contents of every turn (for the tokenizer); without, they are refused with the verb
    that builds them."""
    skips = skips if skips is not None else Skips()
    for item in _expand(inputs):
        if item.startswith("hf:"):
            yield from _iter_hf(item, skip_bad_lines, skips)
            continue
        path = Path(item)
        if path.suffix == ".jsonl":
            yield from _iter_jsonl(path, skip_bad_lines, skips, chat)
        elif path.suffix == ".txt":
            yield from _iter_txt(path)
        else:
            yield from _iter_parquet(path, skip_bad_lines, skips)
