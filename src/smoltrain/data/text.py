"""Plain text -> token shards (``train.bin``/``val.bin``) and a packed, resumable window stream.

Inputs (`smoltrain.data.documents.iter_documents`):

* ``*.jsonl``: one JSON object per line with a string ``text`` field (MiniMind pretrain format);
  blank lines and empty texts are ignored. A malformed line stops the build with file and line
  number, or is skipped and counted with ``skip_bad_lines=True``.
* ``*.txt``: one document per paragraph; paragraphs are separated by one or more blank lines
  (whitespace-only lines). Paragraphs rather than whole files because public-domain corpora (KJV,
  Shakespeare) come as a few huge files, and per-paragraph EOS gives the model document boundaries
  and the val split many documents to sample from. The text inside a paragraph is kept exactly.
* ``*.parquet``: the ``text`` column (needs pyarrow).
* ``hf:NAME`` or ``hf:NAME:SPLIT``: a Hugging Face dataset's ``text`` column (needs `datasets`
  and network or a local cache).
* a directory: every .txt/.jsonl/.parquet file under it, in sorted order.

Layout written by `build_text_dataset` (one directory, replaced atomically)::

    train.bin, val.bin   flat token ids, EOS after every document; uint16 when ids fit, else uint32
    train.idx, val.idx   int64 document start offsets, n + 1 entries, the last = the split's tokens
    tokenizer/           a copy of the tokenizer (the dataset is self-contained, see data/shards.py)
    metadata.json        format smoltrain-text-v2, vocab_size, dtype, eos_id, bos_id, pad_id, tokenizer
                         {path: "tokenizer", sha256}, per-split tokens, documents and UTF-8 bytes (for bits
                         per byte), skipped lines, seed

Training rows (one ``[B, T + 1]`` token block gives ``input_ids`` = its first T columns and ``targets`` =
its last T, the next token of each position, ``-100`` where nothing is to be predicted):

* `TokenWindows` (``packing=True``, the default): fixed-length windows cut from the concatenated
  documents, no padding waste; attention crosses document boundaries (EOS separates them).
* `DocumentRows` (``packing=False``): MiniMind's pretraining rows, one document per row,
  ``[BOS] + document[: T - 1] + [EOS]`` right-padded with PAD; pad targets are -100. Document
  boundaries come from the ``.idx`` files (EOS also ends chat turns inside a pretraining document).

Documents are assigned to train/val by a seeded random choice of exactly
``max(1, round(n * val_fraction))`` documents, so the whole text is held in memory while it is
tokenized (fine for the tens-of-MB corpora this project trains on CPU). A single document (one .txt
without blank lines, nanoGPT's input.txt habit) is split instead: its last `val_fraction`, from a line
start, is the val split.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from smoltrain.data.documents import Skips, iter_documents
from smoltrain.data.shards import (
    ResumableRows,
    atomic_dataset_dir,
    check_dataset_tokenizer,
    check_output_dir,
    copy_tokenizer,
    dataset_tokenizer_dir,
    document_index,
    open_array,
    open_index,
    token_dtype,
)
from smoltrain.data.tokenizer import BOS_TOKEN, PAD_TOKEN, eos_id, load_tokenizer, special_token_id, tokenizer_file
from smoltrain.errors import ConfigError, DataError
from smoltrain.fileio import read_json, write_json_synced

__all__ = ["FORMAT", "build_text_dataset", "iter_documents", "read_metadata", "open_tokens", "open_documents",
           "TokenWindows", "DocumentRows", "check_dataset_tokenizer", "dataset_tokenizer_dir", "token_dtype",
           "unigram_entropy", "bits_per_byte"]

FORMAT = "smoltrain-text-v2"
OLD_FORMATS = ("smoltrain-text-v1",)  # no document index, tokenizer by absolute path
SPLITS = ("train", "val")
_ENCODE_CHUNK = 2048  # documents per encode_batch call: big enough to keep every core busy


def _split_single_document(text: str, val_fraction: float) -> tuple[str, str] | None:
    """(train, val) parts of one document, as nanoGPT's prepare script splits its one input.txt: the last
    `val_fraction` of it, cut at the line start nearest that point (at a character when it is one line).
    None when the text is too short to give both parts some text."""
    target = round(len(text) * (1 - val_fraction))
    before, after = text.rfind("\n", 0, target), text.find("\n", target)  # the nearest line starts, either side
    starts = [i + 1 for i in (before, after) if i >= 0]
    starts = [i for i in starts if text[:i].strip() and text[i:].strip()]
    cut = min(starts, key=lambda i: abs(i - target)) if starts else min(max(target, 1), len(text) - 1)
    train, val = text[:cut], text[cut:]
    return (train, val) if train.strip() and val.strip() else None


def build_text_dataset(
    inputs: list[str],
    tokenizer_dir: Path,
    output_dir: Path,
    val_fraction: float = 0.01,
    seed: int = 0,
    skip_bad_lines: bool = False,
    workers: int | None = None,
) -> dict[str, Any]:
    """Tokenize `inputs` into `output_dir`/{train,val}.bin + metadata.json; returns the metadata.

    `workers`: 1 encodes serially; otherwise `encode_batch` runs on the tokenizers thread pool,
    whose size is taken from RAYON_NUM_THREADS (set here when `workers` is given and the variable
    is not set yet; it has no effect once the pool has started in this process).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction={val_fraction} must be in [0, 1); e.g. 0.01")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers={workers} must be >= 1 (or None for all cores)")
    if seed < 0:
        raise ConfigError(f"seed={seed} must be >= 0")
    if not inputs:
        raise DataError("no text inputs given: pass .jsonl/.txt/.parquet files, directories or hf:NAME")
    out = check_output_dir(Path(output_dir))  # fail before minutes of tokenizing
    tok_file = tokenizer_file(tokenizer_dir)
    tokenizer = load_tokenizer(tok_file)
    eos = eos_id(tokenizer)
    bos, pad = special_token_id(tokenizer, BOS_TOKEN), special_token_id(tokenizer, PAD_TOKEN)
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(vocab_size)
    if workers is not None and workers > 1:
        os.environ.setdefault("RAYON_NUM_THREADS", str(workers))

    skips = Skips()
    docs = list(iter_documents([str(i) for i in inputs], skip_bad_lines=skip_bad_lines, skips=skips))
    n = len(docs)
    if n == 0:
        raise DataError(f"no documents found in {[str(i) for i in inputs]}: check the files are not empty")
    single_split = False
    if val_fraction > 0 and n == 1:  # one file, one document (nanoGPT's input.txt): hold out its tail
        parts = _split_single_document(docs[0], val_fraction)
        if parts is None:
            raise DataError("the only document in the inputs is too short to split off a val part: add text or "
                            "use val_fraction=0")
        docs, n, single_split = list(parts), 2, True
    is_val = np.zeros(n, dtype=bool)
    if single_split:
        is_val[1] = True
    elif val_fraction > 0:
        n_val = min(n - 1, max(1, round(n * val_fraction)))
        is_val[np.random.default_rng(seed).choice(n, size=n_val, replace=False)] = True

    counts = {s: {"tokens": 0, "documents": 0, "bytes": 0} for s in SPLITS}
    lengths: dict[str, list[int]] = {s: [] for s in SPLITS}
    with atomic_dataset_dir(out) as tmp:
        tokenizer_entry = copy_tokenizer(tok_file.parent, tmp)
        handles: dict[str, BinaryIO] = {s: open(tmp / f"{s}.bin", "wb") for s in SPLITS}
        try:
            for start in range(0, n, _ENCODE_CHUNK):
                chunk = docs[start : start + _ENCODE_CHUNK]
                if workers == 1:
                    encodings = [tokenizer.encode(t, add_special_tokens=False) for t in chunk]
                else:
                    encodings = tokenizer.encode_batch(chunk, add_special_tokens=False)
                parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
                for offset, (text, enc) in enumerate(zip(chunk, encodings, strict=True)):
                    split = "val" if is_val[start + offset] else "train"
                    ids = np.empty(len(enc.ids) + 1, dtype=dtype)
                    ids[:-1] = enc.ids
                    ids[-1] = eos
                    parts[split].append(ids)
                    counts[split]["tokens"] += len(ids)
                    lengths[split].append(len(ids))
                    counts[split]["documents"] += 1
                    counts[split]["bytes"] += len(text.encode("utf-8"))
                for split in SPLITS:
                    if parts[split]:
                        handles[split].write(np.concatenate(parts[split]).tobytes())
            for handle in handles.values():
                handle.flush()
                os.fsync(handle.fileno())
        finally:
            for handle in handles.values():
                handle.close()
        for split in SPLITS:  # the document boundaries: EOS also ends chat turns inside a document
            (tmp / f"{split}.idx").write_bytes(document_index(lengths[split]).tobytes())
        metadata: dict[str, Any] = {
            "format": FORMAT,
            "vocab_size": vocab_size,
            "dtype": dtype.name,
            "eos_id": eos,
            "bos_id": bos,
            "pad_id": pad,
            "tokenizer": tokenizer_entry,
            "splits": {
                s: {**c, "bytes_per_token": (c["bytes"] / c["tokens"]) if c["tokens"] else None}
                for s, c in counts.items()
            },
            "documents": n,
            "val_fraction": val_fraction,
            "val_split": "tail of the single document" if single_split else "documents",
            "seed": seed,
            "skipped_lines": skips.count,
            "first_skipped": skips.first,
            "inputs": [str(i) for i in inputs],
        }
        write_json_synced(tmp / "metadata.json", metadata, indent=2)
    return metadata


def read_metadata(path_or_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """(dataset directory, metadata) for a dataset directory or one of its .bin files."""
    path = Path(path_or_dir)
    root = path.parent if path.suffix == ".bin" else path
    meta_path = root / "metadata.json"
    if not meta_path.is_file():
        raise DataError(f"{meta_path} not found: build the text dataset first (build_text_dataset)")
    meta = read_json(meta_path, dict, "rebuild the dataset")
    if meta.get("format") in OLD_FORMATS:
        raise DataError(f"{root} is a text dataset of an older smoltrain ({meta['format']}: no document index, no "
                        "tokenizer copy): rebuild with smoltrain data text")
    if meta.get("format") != FORMAT:
        hint = " (a chat dataset: train it with an SFT/DPO recipe)" \
            if str(meta.get("format", "")).startswith("smoltrain-chat") else ""
        raise DataError(f"{meta_path} is not a {FORMAT} dataset (format={meta.get('format')!r}){hint}; rebuild it")
    return root, meta


def open_tokens(path_or_dir: str | Path, split: str) -> np.ndarray:
    """The tokens of `split` as a read-only memmap (an empty array for an empty split)."""
    if split not in SPLITS:
        raise ConfigError(f"split={split!r} must be one of {SPLITS}")
    root, meta = read_metadata(path_or_dir)
    return open_array(root / f"{split}.bin", meta["dtype"])


def open_documents(path_or_dir: str | Path, split: str) -> np.ndarray:
    """The document start offsets of `split` (n + 1 entries, the last = its number of tokens)."""
    root, _ = read_metadata(path_or_dir)
    return open_index(root / f"{split}.idx", len(open_tokens(root, split)))


class TokenWindows(ResumableRows):
    """Packed fixed-length training windows over a token shard, resumable by (epoch, batch).

    Window i covers tokens ``[i * seq_len, i * seq_len + seq_len + 1)``: consecutive windows share
    one token, so every token after the first is a label exactly once per epoch. Windows are shuffled,
    batched, sliced per rank and resumed as `smoltrain.data.shards.ResumableRows` describes.

    ``document_bos=True`` cuts the windows from the stream with BOS before every document (``BOS doc EOS BOS
    doc EOS ...``, the split's ``.idx`` giving the starts), so the model sees how documents begin as MiniMind's
    one-document rows show it, without their padding. The BOS positions are computed, not stored: the shard
    stays as built. A target that is a BOS is -100 (after an EOS it is given, not learnt), so the loss and the
    token counts cover the text's own tokens and EOS, as without it.
    """

    def __init__(
        self,
        path_or_dir: str | Path,
        split: str = "train",
        seq_len: int = 256,
        global_batch_size: int = 32,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        document_bos: bool = False,
    ) -> None:
        self.tokens = open_tokens(path_or_dir, split)
        self.root, self.metadata = read_metadata(path_or_dir)
        self.document_bos = document_bos
        if document_bos:
            self.bos = int(self.metadata["bos_id"])
            starts = open_index(self.root / f"{split}.idx", len(self.tokens))[:-1]
            # Document k's BOS sits at stream position starts[k] + k: the k BOS tokens before it shift it right.
            self.bos_positions = starts + np.arange(len(starts), dtype=starts.dtype)
        super().__init__(split, seq_len, global_batch_size, rank, world_size, seed)

    def _count_rows(self) -> int:
        length = len(self.tokens) + (len(self.bos_positions) if self.document_bos else 0)
        return max(0, (length - 1) // self.seq_len)

    def _windows(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        if not self.document_bos:
            rows = np.stack([self.tokens[i * self.seq_len : i * self.seq_len + self.seq_len + 1] for i in indices])
            rows = torch.from_numpy(rows.astype(np.int64))
            return {"input_ids": rows[:, :-1].contiguous(), "targets": rows[:, 1:].contiguous()}
        positions = indices[:, None] * self.seq_len + np.arange(self.seq_len + 1)[None, :]
        before = np.searchsorted(self.bos_positions, positions, side="right")  # BOS tokens at or before each one
        is_bos = self.bos_positions[before - 1] == positions
        token_at = np.where(is_bos, 0, positions - before)  # the shard index of each non-BOS position
        rows = torch.from_numpy(np.where(is_bos, self.bos, self.tokens[token_at]).astype(np.int64))
        targets = rows[:, 1:].clone()
        targets[torch.from_numpy(is_bos[:, 1:])] = -100
        return {"input_ids": rows[:, :-1].contiguous(), "targets": targets}

    def _too_small(self) -> str:
        need = self.global_batch_size * self.seq_len + 1
        return (f"{self.split} split has {len(self.tokens)} tokens, fewer than one global batch needs ({need}): "
                "add text, or lower seq_len / global_batch_size")


class DocumentRows(TokenWindows):
    """MiniMind's pretraining rows: one document per row, padded, in the same resumable order as `TokenWindows`.

    Row i is document i of the split (its bounds from the split's ``.idx``, not from EOS tokens: EOS also ends
    every chat turn inside a document, as in MiniMind's pretrain_hq.jsonl), laid out as MiniMind's
    ``PretrainDataset`` does: ``[BOS] + document[: seq_len - 1] + [EOS]`` (a longer document is truncated,
    its EOS kept), right-padded with PAD to ``seq_len + 1`` tokens. ``input_ids`` are the first ``seq_len``
    tokens, ``targets`` the last ``seq_len`` with -100 at padding, so the loss and the token counts of
    evaluation (bits per byte) cover the document's tokens and its EOS only. Right padding and the causal
    mask mean real tokens never attend to pads. Rows are shuffled, batched, sliced per rank and resumed
    exactly as `TokenWindows` windows are (``state_dict`` = (epoch, batch)).
    """

    def _count_rows(self) -> int:
        self.bos, self.pad = int(self.metadata["bos_id"]), int(self.metadata["pad_id"])
        idx = open_index(self.root / f"{self.split}.idx", len(self.tokens))
        self.starts = idx[:-1]
        self.ends = idx[1:] - 1  # index of each document's final token, the EOS the builder appended
        return len(self.starts)

    def _windows(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        rows = np.full((len(indices), self.seq_len + 1), self.pad, dtype=np.int64)
        rows[:, 0] = self.bos
        lengths = np.empty(len(indices), dtype=np.int64)
        for r, i in enumerate(indices):
            start, end = int(self.starts[i]), int(self.ends[i])
            body = self.tokens[start : min(end, start + self.seq_len - 1)]  # the text, without its EOS
            rows[r, 1 : 1 + len(body)] = body
            rows[r, 1 + len(body)] = self.tokens[end]
            lengths[r] = len(body) + 2
        targets = torch.from_numpy(rows[:, 1:].copy())
        # Position j of targets holds row token j + 1: real up to and including the EOS at lengths - 1.
        targets[torch.arange(self.seq_len)[None, :] >= torch.from_numpy(lengths - 1)[:, None]] = -100
        return {"input_ids": torch.from_numpy(rows[:, :-1].copy()), "targets": targets}

    def _too_small(self) -> str:
        return (f"{self.split} split has {self.num_windows} documents, fewer than one global batch of rows "
                f"({self.global_batch_size}): add text, lower global_batch_size, or use packing=true")


def unigram_entropy(path_or_dir: str | Path, split: str = "val", alpha: float = 1.0) -> float:
    """Cross-entropy (nats/token) of `split` under the train unigram distribution.

    The loss of a model that ignores context entirely: an LM must beat it. Counts get add-`alpha`
    smoothing over the vocabulary so a token absent from train does not give an infinite value;
    with ``alpha=0`` such a token gives ``inf``.
    """
    _, meta = read_metadata(path_or_dir)
    vocab_size = int(meta["vocab_size"])
    counts = np.full(vocab_size, float(alpha))
    train = open_tokens(path_or_dir, "train")
    block = 1 << 24  # bincount in blocks so a GB-sized shard is never copied whole to int64
    for start in range(0, len(train), block):
        counts += np.bincount(np.asarray(train[start : start + block]), minlength=vocab_size)[:vocab_size]
    total = counts.sum()
    if total == 0:
        raise DataError("the train split is empty: cannot estimate unigram entropy; add text")
    target = open_tokens(path_or_dir, split)
    if len(target) == 0:
        raise DataError(f"the {split} split is empty: build with val_fraction > 0")
    hist = np.zeros(vocab_size)
    for start in range(0, len(target), block):
        hist += np.bincount(np.asarray(target[start : start + block]), minlength=vocab_size)[:vocab_size]
    seen = hist > 0
    with np.errstate(divide="ignore"):
        logp = np.log(counts[seen] / total)
    return float(-(hist[seen] * logp).sum() / hist.sum())


def bits_per_byte(loss_nats_per_token: float, tokens: int, num_bytes: int) -> float:
    """Tokenizer-independent loss: total nats over `tokens`, in bits, divided by the text's UTF-8 bytes."""
    if num_bytes <= 0:
        raise DataError(f"bits_per_byte needs a positive byte count, got {num_bytes}")
    return loss_nats_per_token * tokens / (num_bytes * math.log(2))
