"""What the token datasets (``data/text.py``, ``data/chat.py``) share: the token dtype, the atomic output
directory, the tokenizer copy that makes a dataset self-contained (and the hash check that refuses a
changed one), document index files, and the resumable (epoch, batch) row order of the training streams.

A dataset directory holds ``metadata.json`` with ``"tokenizer": {"path": "tokenizer", "sha256": ...}``:
the path is relative to the dataset (a copy of the tokenizer directory, so the dataset can be moved and
the tokenizer it was built with cannot be retrained under it) and the hash is that of the copy's
``tokenizer.json`` when the dataset was written. :func:`check_dataset_tokenizer` compares the two.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smoltrain.data.tokenizer import TOKENIZER_FILES, tokenizer_file
from smoltrain.errors import ConfigError, DataError
from smoltrain.fileio import atomic_directory, check_output_path, read_json

TOKENIZER_DIR = "tokenizer"  # the tokenizer copy inside a dataset directory
IDX_DTYPE = np.dtype(np.int64)


def token_dtype(vocab_size: int) -> np.dtype:
    # uint16 halves the disk and page-cache footprint; ids up to 65535 fit.
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_output_dir(output_dir: Path) -> Path:
    """`output_dir` (absolute), refused when it exists, is not empty and is no dataset (nothing a user made is
    replaced except an earlier dataset)."""
    out = check_output_path(output_dir)
    if out.exists():
        if any(out.iterdir()) and not (out / "metadata.json").exists():
            raise DataError(
                f"{out} exists and is not a dataset (no metadata.json); refusing to replace it: "
                "choose another output dir or empty it first"
            )
    return out


@contextlib.contextmanager
def atomic_dataset_dir(output_dir: Path) -> Iterator[Path]:
    """A temporary sibling directory renamed onto `output_dir` only when the body succeeds."""
    with atomic_directory(check_output_dir(output_dir)) as tmp:
        yield tmp


def copy_tokenizer(tokenizer_dir: str | Path, dataset_tmp: Path) -> dict[str, str]:
    """Copy the tokenizer files of `tokenizer_dir` into ``dataset_tmp/tokenizer``; the metadata entry for it."""
    source = tokenizer_file(tokenizer_dir).parent
    target = dataset_tmp / TOKENIZER_DIR
    target.mkdir()
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
    return {"path": TOKENIZER_DIR, "sha256": sha256_file(target / "tokenizer.json")}


def dataset_tokenizer_dir(root: str | Path) -> Path:
    """The tokenizer copy inside dataset directory `root` (not checked: see `check_dataset_tokenizer`)."""
    root = Path(root)
    meta = read_json(root / "metadata.json", dict, "rebuild the dataset")
    entry = meta.get("tokenizer")
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        raise DataError(f"{root / 'metadata.json'} names no tokenizer: rebuild the dataset")
    return root / entry["path"]


def check_dataset_tokenizer(root: str | Path) -> Path:
    """The dataset's tokenizer directory, refused with one line when its tokenizer.json is missing or differs
    from the one the dataset was tokenized with (a retrained or replaced tokenizer would make a garbage run)."""
    root = Path(root)
    meta = read_json(root / "metadata.json", dict, "rebuild the dataset")
    directory = dataset_tokenizer_dir(root)
    file = directory / "tokenizer.json"
    if not file.is_file():
        raise DataError(f"{file} is missing: the dataset {root} lost its tokenizer copy; rebuild the dataset")
    expected = meta["tokenizer"].get("sha256")
    if sha256_file(file) != expected:
        raise DataError(f"{file} is not the tokenizer {root} was built with (sha256 differs): restore it, or "
                        "rebuild the dataset with the new tokenizer")
    return directory


def document_index(lengths: list[int] | np.ndarray) -> np.ndarray:
    """The ``{split}.idx`` array: n + 1 int64 start offsets, the last one the total number of tokens."""
    idx = np.zeros(len(lengths) + 1, dtype=IDX_DTYPE)
    np.cumsum(np.asarray(lengths, dtype=IDX_DTYPE), out=idx[1:])
    return idx


def open_array(path: Path, dtype: np.dtype | str) -> np.ndarray:
    """A read-only memmap of `path` (an empty array for an empty file, which np.memmap refuses)."""
    if not path.is_file():
        raise DataError(f"{path} not found: the dataset is incomplete; rebuild it")
    dtype = np.dtype(dtype)
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def open_index(path: Path, total_tokens: int) -> np.ndarray:
    """The document start offsets of ``path`` (a ``.idx`` file), checked against the token file they index."""
    idx = np.asarray(open_array(path, IDX_DTYPE))
    if len(idx) < 1 or idx[0] != 0 or idx[-1] != total_tokens or np.any(np.diff(idx) < 0):
        raise DataError(f"{path} does not index its {total_tokens} tokens (damaged or from another build): "
                        "rebuild the dataset")
    return idx


class ResumableRows:
    """Rows of a split in a seeded order resumable by (epoch, batch); subclasses say how many rows there are
    (`_count_rows`) and build a batch from row indices (`_windows`).

    Epoch e visits the rows in the order ``default_rng([seed, e]).permutation(num_rows)``, cut into global
    batches of `global_batch_size` rows (the last incomplete one is dropped); rank r gets rows
    ``[r * local, (r + 1) * local)`` of each global batch. The order depends only on (seed, epoch, batch),
    so `load_state_dict` restores the exact next batch.
    """

    def __init__(self, split: str, seq_len: int, global_batch_size: int, rank: int, world_size: int,
                 seed: int) -> None:
        if seq_len < 1 or global_batch_size < 1:
            raise ConfigError(f"seq_len={seq_len} and global_batch_size={global_batch_size} must be >= 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank={rank} must be in [0, world_size={world_size})")
        if global_batch_size % world_size:
            raise ConfigError(
                f"global_batch_size={global_batch_size} is not divisible by world_size={world_size}: "
                "pick a multiple of the number of processes"
            )
        self.split = split
        self.seq_len = seq_len
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // world_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.num_windows = self._count_rows()
        self.batches_per_epoch = self.num_windows // global_batch_size
        self.epoch = 0
        self.batch = 0
        self._perm_epoch = -1
        self._perm = np.zeros(0, dtype=np.int64)

    def _count_rows(self) -> int:
        raise NotImplementedError

    def _windows(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _too_small(self) -> str:
        return (f"{self.split} split has {self.num_windows} rows, fewer than one global batch "
                f"({self.global_batch_size}): add data or lower global_batch_size")

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_windows)
            self._perm_epoch = epoch
        return self._perm

    def __iter__(self) -> ResumableRows:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.batches_per_epoch == 0:
            raise DataError(self._too_small())
        if self.batch >= self.batches_per_epoch:
            self.epoch += 1
            self.batch = 0
        start = self.batch * self.global_batch_size + self.rank * self.local_batch_size
        indices = self._permutation(self.epoch)[start : start + self.local_batch_size]
        self.batch += 1
        return self._windows(indices)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch, batch = int(state["epoch"]), int(state["batch"])
        if epoch < 0 or not 0 <= batch <= self.batches_per_epoch:
            raise DataError(
                f"data state {state} does not fit this dataset ({self.batches_per_epoch} batches per epoch): "
                "resume with the same dataset, seq_len and global_batch_size"
            )
        self.epoch, self.batch = epoch, batch

    def iter_eval(self, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """Every row of this split once, in order; rank r takes rows [r*bs, (r+1)*bs) of each
        chunk of ``batch_size * world_size`` rows (the last chunk may be short or empty)."""
        if batch_size < 1:
            raise ConfigError(f"eval batch_size={batch_size} must be >= 1")
        chunk = batch_size * self.world_size
        for start in range(0, self.num_windows, chunk):
            lo = start + self.rank * batch_size
            hi = min(lo + batch_size, self.num_windows)
            if lo < hi:
                yield self._windows(np.arange(lo, hi))
