"""What the fixed-size puzzle builders (Sudoku, Maze) share: where their puzzles come from and how a split is written.

Both builders hold one question and one answer of n*n cells per puzzle, read the reference CSV layout
(`source,question,answer,rating`, as in Sudoku-Extreme and Maze-Hard), download it from the Hugging Face
Hub, hold out / subsample rows with seeded generators, spread their compiled generators over threads, and
write one puzzle per row with a single identifier. The parts that differ (alphabet, semantic checks,
augmentation, statistics) stay in `sudoku.py` and `maze.py`; the build pipeline that uses these pieces is
`smoltrain.data.build.PuzzleBuilder`. ARC is not built this way: its puzzles have several examples each and
many identifiers, and its split is streamed (see `arc.py`).
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np

from smoltrain.data.puzzles import PuzzleDatasetMetadata, write_identifiers, write_split
from smoltrain.errors import DataError
from smoltrain.fileio import write_json_synced

CSV_COLUMNS = ("source", "question", "answer", "rating")


@dataclass
class PuzzleSplit:
    """Puzzles of one split, with where each came from (for error messages and subsample records).

    The cell encoding is the builder's (Sudoku: raw digits, 0 = blank; Maze: tokens).
    """

    questions: np.ndarray  # [N, n*n] uint8
    answers: np.ndarray  # [N, n*n] uint8
    ratings: np.ndarray  # [N] int64, -1 where the source has no rating
    rows: np.ndarray  # [N] 0-based data-row index in `path` (header excluded), or generation order
    path: str | None = None


Split = TypeVar("Split", bound=PuzzleSplit)


# ------------------------------------------------------------------------------------------------
# CSV files


class CsvPuzzles(NamedTuple):
    """The rows of a puzzle CSV before the builder decodes them: ASCII bytes, ratings and file lines."""

    questions: np.ndarray  # [N, cells] uint8 ASCII codes
    answers: np.ndarray  # [N, cells] uint8 ASCII codes
    ratings: np.ndarray  # [N] int64, -1 where the file has no rating column
    lines: np.ndarray  # [N] 1-based file line of each row (header = line 1), for error messages
    path: Path

    def where(self, row: int) -> str:
        """'FILE, line L' of data row `row`, the prefix of every per-row error message."""
        return f"{self.path}, line {self.lines[row]}"


def read_puzzle_csv(path: str | os.PathLike[str], cells: int, describe_size: Callable[[int], str]) -> CsvPuzzles:
    """Read a `source,question,answer,rating` CSV (header line required, BOM and blank lines tolerated).

    Checks what does not depend on the puzzle kind and stops at the first bad row with a DataError naming
    the file, the line and the problem: header columns, field count, question/answer length (`cells`
    characters; `describe_size(found_length)` completes "expected {cells} ..."), non-ASCII characters,
    a rating that is not an integer, text that is not UTF-8 or not CSV. The rating column is optional.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no CSV file at {path}: give csv:PATH with a file or a directory holding train.csv/test.csv")
    q_buf = bytearray()
    a_buf = bytearray()
    ratings: list[int] = []
    lines: list[int] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: tolerate a BOM
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path} is empty: expected a header line '{','.join(CSV_COLUMNS)}'")
            names = [h.strip().lower() for h in header]
            missing = [c for c in ("question", "answer") if c not in names]
            if missing:
                raise DataError(
                    f"{path}, line 1: the header {header} has no {' / '.join(missing)} column; expected "
                    f"'{','.join(CSV_COLUMNS)}'"
                )
            qi, ai = names.index("question"), names.index("answer")
            ri = names.index("rating") if "rating" in names else None
            for fields in reader:
                line = reader.line_num
                if not fields:
                    continue  # blank line
                if len(fields) != len(names):
                    raise DataError(
                        f"{path}, line {line}: expected {len(names)} fields ({','.join(header)}), got {len(fields)}"
                    )
                for what, text, buf in (("question", fields[qi], q_buf), ("answer", fields[ai], a_buf)):
                    if len(text) != cells:
                        raise DataError(
                            f"{path}, line {line}: {what} has {len(text)} characters, expected {cells} "
                            f"{describe_size(len(text))}"
                        )
                    if not text.isascii():
                        bad = next(ch for ch in text if not ch.isascii())
                        raise DataError(f"{path}, line {line}: {what} has the bad character {bad!r}")
                    buf += text.encode("ascii")
                ratings.append(-1 if ri is None else parse_rating(fields[ri], path, line))
                lines.append(line)
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e}): give a CSV file") from None
    except csv.Error as e:
        raise DataError(f"{path}: malformed CSV ({e})") from None
    num = len(lines)
    return CsvPuzzles(
        questions=np.frombuffer(q_buf, dtype=np.uint8).reshape(num, cells),  # writable: decoded in place
        answers=np.frombuffer(a_buf, dtype=np.uint8).reshape(num, cells),
        ratings=np.asarray(ratings, dtype=np.int64),
        lines=np.asarray(lines, dtype=np.int64),
        path=path,
    )


def parse_rating(text: str, path: Path, line: int) -> int:
    """The integer in a rating field ("3" or "3.0"); a DataError naming file and line otherwise."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value) or value != int(value):
        raise DataError(f"{path}, line {line}: rating {text!r} is not an integer")
    return int(value)


def write_puzzle_csv(path: Path, split: PuzzleSplit, source_name: str, to_text: Callable[[np.ndarray], str]) -> None:
    """Write a split in the reference CSV layout (`to_text` turns one question or answer into its cells' text)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for q, a, r in zip(split.questions, split.answers, split.ratings, strict=True):
            writer.writerow([source_name, to_text(q), to_text(a), int(r)])
        f.flush()
        os.fsync(f.fileno())


# ------------------------------------------------------------------------------------------------
# Sources: sizes asked for, Hugging Face, csv:PATH, and row selection


def check_counts(**counts: int | None) -> None:
    """A DataError for any count given below 1 (None = not given)."""
    for name, value in counts.items():
        if value is not None and value < 1:
            raise DataError(f"{name} must be >= 1, got {value}")


def check_seed(seed: int) -> None:
    """A DataError for a negative seed (NumPy's generators take only seeds >= 0)."""
    if seed < 0:
        raise DataError(f"seed (--seed) must be >= 0, got {seed}")


def train_size(num_train: int | None, subsample_size: int | None, source_kind: str) -> int | None:
    """The number of train puzzles asked for: `num_train` and `subsample_size` are aliases that must agree."""
    if subsample_size is not None and num_train is not None and subsample_size != num_train:
        raise DataError(f"give either num_train or subsample_size for {source_kind}, not both")
    return num_train or subsample_size


def hf_download(repo_id: str, split: str) -> Path:
    """Download `{split}.csv` of a Hugging Face dataset repo (needs huggingface_hub)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise DataError(
            "source 'hf' needs huggingface_hub: pip install huggingface_hub (or pip install 'smoltrain[hf]'); "
            "offline, use --source generate or csv:PATH"
        ) from None
    try:
        return Path(hf_hub_download(repo_id, f"{split}.csv", repo_type="dataset"))
    except Exception as e:  # network, auth and missing-file errors all mean the same to the user
        raise DataError(
            f"could not download {split}.csv from the Hugging Face dataset {repo_id} ({e}): check the network, "
            "or download the CSV files yourself and use csv:PATH"
        ) from None


def select(split: Split, index: np.ndarray) -> Split:
    """The rows `index` of a split (same split type), keeping where each row came from."""
    return dataclasses.replace(
        split,
        questions=split.questions[index],
        answers=split.answers[index],
        ratings=split.ratings[index],
        rows=split.rows[index],
    )


def subsample(split: Split, size: int | None, rng: np.random.Generator) -> tuple[Split, bool]:
    """A seeded random `size` rows (random order, like the reference `np.random.choice(N, size, replace=False)`).

    Returns (split, whether it was subsampled); all rows in file order when `size` is None or not smaller.
    """
    total = split.questions.shape[0]
    if size is None or size >= total:
        return split, False
    return select(split, rng.choice(total, size=size, replace=False)), True


def load_source_splits(
    source: str,
    read: Callable[[Path], Split],
    *,
    source_repo: str,
    num_test: int | None,
    rng: np.random.Generator,
    noun: str,
    example: str,
) -> tuple[Split, Split]:
    """(train, test) of an "hf" or "csv:PATH" source, each read with `read(path)`.

    "hf" downloads train.csv / test.csv of `source_repo`. "csv:PATH" is a directory with train.csv and
    test.csv, or one CSV file of which a seeded random `num_test` rows (default 10%, drawn with `rng`) become
    the test split. `noun` names the puzzles in messages ("puzzles", "mazes"); `example` is a sample PATH.
    """
    if source == "hf":
        return read(hf_download(source_repo, "train")), read(hf_download(source_repo, "test"))
    spec = source[len("csv:") :]
    if not spec:
        raise DataError(f"csv: needs a path, e.g. --source csv:{example}")
    path = Path(spec)
    if path.is_dir():
        files = [path / "train.csv", path / "test.csv"]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise DataError(
                f"csv:{path} is a directory without {' and '.join(missing)}: put train.csv and test.csv "
                "there, or give csv:FILE to split one file"
            )
        return read(files[0]), read(files[1])
    if not path.exists():
        raise DataError(f"no CSV file or directory at {path}: check the csv:PATH source")
    everything = read(path)
    total = everything.questions.shape[0]
    test_size = num_test if num_test is not None else max(1, total // 10)
    if not 0 < test_size < total:
        raise DataError(
            f"{path} has {total} {noun}, too few to hold out {test_size} for the test split: give more rows, "
            "a smaller --num-test, or a directory with train.csv and test.csv"
        )
    order = rng.permutation(total)
    return select(everything, np.sort(order[test_size:])), select(everything, np.sort(order[:test_size]))


# ------------------------------------------------------------------------------------------------
# Generators: seeds and threads


def candidate_seeds(seed: int | np.random.SeedSequence, start: int, count: int) -> np.ndarray:
    """The seeds (0 <= s < 2**32) of generator candidates start .. start+count-1 of a generation seeded with `seed`.

    Candidate i depends only on (seed, i), so the output of a generator that accepts candidates in index order
    does not depend on batch sizes or thread counts.
    """
    seq = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    base = int(seq.generate_state(1, dtype=np.uint32)[0])
    return (base + np.arange(start, start + count, dtype=np.int64)) % (1 << 32)


def default_workers() -> int:
    """CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def run_in_chunks(run: Callable[[int, int], None], total: int, workers: int | None) -> None:
    """Call `run(lo, hi)` over consecutive chunks of range(total) on `workers` threads (default: all cores).

    For compiled kernels that release the GIL and write row slices in place: the result does not depend on
    the number of threads. Small chunks (8 per thread) balance candidates whose cost differs a lot.
    """
    workers = min(workers or default_workers(), max(total, 1))
    if workers <= 1:
        run(0, total)
        return
    step = max(1, total // (8 * workers))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(run, lo, min(lo + step, total)) for lo in range(0, total, step)]:
            future.result()


# ------------------------------------------------------------------------------------------------
# On-disk dataset


def write_puzzle_split(
    root: Path, name: str, inputs: np.ndarray, labels: np.ndarray, group_sizes: np.ndarray, vocab_size: int
) -> None:
    """Write a split of one example per puzzle and one identifier (`<blank>`), `group_sizes[g]` puzzles in group g.

    `inputs` / `labels` are tokens with 0 = PAD; every label cell is supervised (ignore_label_id 0).
    """
    num_rows = inputs.shape[0]
    metadata = PuzzleDatasetMetadata(
        pad_id=0,
        ignore_label_id=0,
        blank_identifier_id=0,
        vocab_size=vocab_size,
        seq_len=inputs.shape[1],
        num_puzzle_identifiers=1,
        total_groups=int(group_sizes.shape[0]),
        mean_puzzle_examples=1,
        total_puzzles=num_rows,
        sets=["all"],
    )
    write_split(
        root,
        name,
        inputs=inputs,
        labels=labels,
        puzzle_identifiers=np.zeros(num_rows, dtype=np.int32),
        puzzle_indices=np.arange(num_rows + 1, dtype=np.int32),
        group_indices=np.concatenate([[0], np.cumsum(group_sizes)]).astype(np.int32),
        metadata=metadata,
    )


def write_puzzle_files(
    root: Path,
    train: tuple[np.ndarray, np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    vocab_size: int,
    subsample_record: dict[str, Any] | None,
) -> None:
    """Both splits, `identifiers.json` (`<blank>` only) and, if given, `subsample_indices.json` under `root`.

    train: (inputs, labels, group sizes); test: (inputs, labels), one puzzle per group (never augmented).
    """
    write_puzzle_split(root, "train", *train, vocab_size)
    test_inputs, test_labels = test
    write_puzzle_split(root, "test", test_inputs, test_labels, np.ones(test_inputs.shape[0], np.int64), vocab_size)
    write_identifiers(root, ["<blank>"])
    if subsample_record is not None:
        write_json_synced(root / "subsample_indices.json", subsample_record, indent=1)


__all__ = [
    "CSV_COLUMNS",
    "CsvPuzzles",
    "PuzzleSplit",
    "candidate_seeds",
    "check_counts",
    "default_workers",
    "hf_download",
    "load_source_splits",
    "parse_rating",
    "read_puzzle_csv",
    "run_in_chunks",
    "select",
    "subsample",
    "train_size",
    "write_puzzle_csv",
    "write_puzzle_files",
    "write_puzzle_split",
]
