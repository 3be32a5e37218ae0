"""The skeleton every dataset builder follows (Sudoku, Maze, ARC), and the pipeline of the fixed-size puzzle kinds.

`DatasetBuilder.build(output_dir)`: the options were checked when they were made; the output directory is
checked next, before minutes of generation; `prepare` then does everything that can fail without touching
the disk (read or generate the source, filter, subsample, plan the augmentations), and `write` writes the
files into a temporary sibling that replaces `output_dir` only once it is complete, build_info.json last.
Every build_info.json starts with "builder" (the puzzle kind: solve, eval and render read it), holds the
keys of `BUILD_INFO_KEYS`, and ends with "build_seconds" and "smoltrain_version".

`PuzzleBuilder` is that skeleton for the kinds with one question and one answer of n*n cells per puzzle
(Sudoku, Maze): the source dispatch (generate | hf | csv:PATH), seeded streams, the filter, the subsample and
its record, the train/test overlap count, the augmentation and the reference split files. A subclass supplies
the hooks that differ (reading and generating puzzles, the filter, the augmentation, tokens, statistics).
ARC has several examples per puzzle and streams its rows, so it implements `prepare` / `write` itself.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import numpy as np

from smoltrain.data.puzzle_source import (
    PuzzleSplit,
    default_workers,
    load_source_splits,
    subsample,
    train_size,
    write_puzzle_files,
)
from smoltrain.data.puzzles import atomic_dataset_dir, check_output_dir
from smoltrain.errors import DataError
from smoltrain.fileio import write_json_synced
from smoltrain.version import __version__

# Keys every builder writes to build_info.json besides the "build_seconds" / "smoltrain_version" tail.
BUILD_INFO_KEYS = ("builder", "source", "seed", "counts")

OptionsT = TypeVar("OptionsT")
PreparedT = TypeVar("PreparedT")


class DatasetBuilder(ABC, Generic[OptionsT, PreparedT]):
    """One dataset build from checked options: `build` runs the steps, a subclass supplies `prepare` and `write`."""

    kind: ClassVar[str]  # build_info.json "builder"

    def __init__(self, options: OptionsT) -> None:
        self.options = options

    @abstractmethod
    def prepare(self, info: dict[str, Any], progress: bool) -> PreparedT:
        """Everything before the first file is written; adds the build's settings to `info`."""

    @abstractmethod
    def write(self, root: Path, prepared: PreparedT, info: dict[str, Any], progress: bool) -> None:
        """Write the dataset under `root` (a fresh directory); adds "counts" and statistics to `info`."""

    def build(self, output_dir: str | os.PathLike[str], progress: bool = False) -> dict[str, Any]:
        """Build the dataset at `output_dir` (atomically) and return its build info (also build_info.json)."""
        started = time.perf_counter()
        output_dir = check_output_dir(output_dir)
        info: dict[str, Any] = {"builder": self.kind}
        prepared = self.prepare(info, progress)
        with atomic_dataset_dir(output_dir) as tmp:
            self.write(tmp, prepared, info, progress)
            missing = [key for key in BUILD_INFO_KEYS if key not in info]
            if missing:  # a builder bug: every build_info.json holds the same keys
                raise RuntimeError(f"the {self.kind} builder did not record {missing} in build_info.json")
            info.update(build_seconds=round(time.perf_counter() - started, 3), smoltrain_version=__version__)
            write_json_synced(tmp / "build_info.json", info, indent=1)
        return info


# ------------------------------------------------------------------------------------------------
# Fixed-size puzzles (Sudoku, Maze)

GENERATED_PER_SPLIT = 1000  # puzzles per split the generator makes when no count is given


class PuzzleSourceOptions(Protocol):
    """The options every fixed-size puzzle builder has (the `smoltrain data sudoku|maze` flags of these names)."""

    @property
    def source(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def num_train(self) -> int | None: ...
    @property
    def num_test(self) -> int | None: ...
    @property
    def subsample_size(self) -> int | None: ...
    @property
    def seed(self) -> int: ...
    @property
    def workers(self) -> int | None: ...
    @property
    def source_repo(self) -> str: ...


SourceOptionsT = TypeVar("SourceOptionsT", bound=PuzzleSourceOptions)


@dataclass
class PreparedPuzzles:
    """What a fixed-size puzzle build writes: the splits, the augmented train rows and the records."""

    train: PuzzleSplit
    test: PuzzleSplit
    train_rows: tuple[np.ndarray, np.ndarray, np.ndarray]  # questions, answers (cells) and group sizes
    augment_facts: dict[str, Any]
    overlap: int
    subsample_record: dict[str, Any] | None


def question_keys(questions: np.ndarray) -> set[bytes]:
    """The questions as byte strings, for duplicate and overlap checks between splits."""
    return {row.tobytes() for row in questions.astype(np.uint8)}


class PuzzleBuilder(DatasetBuilder[SourceOptionsT, PreparedPuzzles]):
    """The build of a fixed-size puzzle kind; the class attributes and hooks below are the kind's part.

    Seed streams, spawned from the seed: train generation, test generation, subsample, test split, augmentation.
    """

    noun: ClassVar[str]  # "puzzles", "mazes": messages and the "counts" keys
    title: ClassVar[str]  # "Sudoku", "maze": the kind in messages
    filter_flag: ClassVar[str]  # the CLI flag of the filter, named in messages
    hf_size: ClassVar[int]  # the board side of the puzzles in the Hugging Face source
    csv_example: ClassVar[str]  # a sample csv:PATH for messages

    # -- hooks ----------------------------------------------------------------------------------

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @property
    @abstractmethod
    def filter_threshold(self) -> int | None:
        """The filter's threshold; None = no filter."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """The build_info.json entries after "builder" and "source"."""

    @abstractmethod
    def read_csv(self, path: Path) -> PuzzleSplit: ...

    @abstractmethod
    def generation_settings(self) -> dict[str, Any]:
        """The generator's resolved settings (defaults filled in), recorded and passed to `generate`."""

    @abstractmethod
    def generate(
        self, count: int, seed: np.random.SeedSequence, exclude: set[bytes], settings: dict[str, Any], progress: bool
    ) -> tuple[PuzzleSplit, dict[str, Any]]:
        """`count` new puzzles whose questions are not in `exclude`, and the generator's statistics."""

    def generation_summary(self, stats: list[dict[str, Any]]) -> dict[str, Any]:
        """build_info.json entries from the generator's statistics of both splits (none by default)."""
        return {}

    @abstractmethod
    def filter(self, train: PuzzleSplit, test: PuzzleSplit, info: dict[str, Any]) -> tuple[PuzzleSplit, PuzzleSplit]:
        """Both CSV splits without the puzzles below `filter_threshold` (called only when it is set)."""

    @abstractmethod
    def augment(
        self, train: PuzzleSplit, forbidden: set[bytes], rng: np.random.Generator, progress: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """(questions, answers, group sizes, build_info.json entries) of the train rows, originals first.

        No augmented question may be in `forbidden` (the test questions).
        """

    @abstractmethod
    def to_tokens(self, cells: np.ndarray) -> np.ndarray:
        """Cells as the dataset's tokens (0 = PAD)."""

    @abstractmethod
    def statistics(self, train: PuzzleSplit, test: PuzzleSplit) -> dict[str, Any]:
        """build_info.json entries that describe the puzzles of both splits."""

    @abstractmethod
    def write_csv(self, path: Path, split: PuzzleSplit, source_name: str) -> None:
        """Write a split as a CSV that csv:PATH reads back."""

    # -- the pipeline ---------------------------------------------------------------------------

    def prepare(self, info: dict[str, Any], progress: bool) -> PreparedPuzzles:
        o = self.options
        streams = np.random.SeedSequence(o.seed).spawn(5)
        info.update(source=o.source, **self.settings())
        record: dict[str, Any] | None = None
        if o.source == "generate":
            train, test = self._generate(streams, info, progress)
        elif o.source == "hf" or o.source.startswith("csv:"):
            train, test, record = self._read_source(streams, info)
        else:
            raise DataError(f"unknown {self.title} source {o.source!r}: use 'generate', 'hf' or 'csv:PATH'")
        for name, split in (("train", train), ("test", test)):
            if split.questions.shape[0] == 0:
                hint = f" after the {self.filter_flag} filter" if self.filter_threshold is not None else ""
                raise DataError(f"no {name} {self.noun} left{hint}: lower {self.filter_flag} or use a larger source")
        test_keys = question_keys(test.questions)
        overlap = sum(row.tobytes() in test_keys for row in train.questions.astype(np.uint8))
        questions, answers, group_sizes, facts = self.augment(
            train, test_keys, np.random.default_rng(streams[4]), progress
        )
        return PreparedPuzzles(train, test, (questions, answers, group_sizes), facts, int(overlap), record)

    def _generate(
        self, streams: list[np.random.SeedSequence], info: dict[str, Any], progress: bool
    ) -> tuple[PuzzleSplit, PuzzleSplit]:
        """Train and test puzzles from the generator; no test question occurs among the train questions."""
        o = self.options
        num_train = train_size(o.num_train, o.subsample_size, "the generator") or GENERATED_PER_SPLIT
        num_test = o.num_test if o.num_test is not None else GENERATED_PER_SPLIT
        settings = self.generation_settings()
        info.update(settings)
        started = time.perf_counter()
        train, train_stats = self.generate(num_train, streams[0], set(), settings, progress)
        test, test_stats = self.generate(num_test, streams[1], question_keys(train.questions), settings, progress)
        seconds = time.perf_counter() - started
        info.update(
            generation_seconds=round(seconds, 3),
            **{f"generation_rate_{self.noun}_per_s": round((num_train + num_test) / max(seconds, 1e-9), 2)},
            **self.generation_summary([train_stats, test_stats]),
            workers=o.workers or default_workers(),
        )
        return train, test

    def _read_source(
        self, streams: list[np.random.SeedSequence], info: dict[str, Any]
    ) -> tuple[PuzzleSplit, PuzzleSplit, dict[str, Any] | None]:
        """Train and test puzzles of an "hf" or "csv:PATH" source, filtered and subsampled, and the record of
        the source rows they are (None when both splits are every row of their file, in file order)."""
        o = self.options
        if o.source == "hf":
            if o.size != self.hf_size:
                raise DataError(
                    f"{o.source_repo} holds {self.hf_size}x{self.hf_size} {self.noun}; --size {o.size} needs "
                    "--source generate or csv:PATH"
                )
            info["source_repo"] = o.source_repo
        train, test = load_source_splits(
            o.source, self.read_csv, source_repo=o.source_repo, num_test=o.num_test,
            rng=np.random.default_rng(streams[3]), noun=self.noun, example=self.csv_example,
        )  # fmt: skip
        train_wanted = train_size(o.num_train, o.subsample_size, "a CSV source")
        info["rows_in_source"] = {"train": int(train.questions.shape[0]), "test": int(test.questions.shape[0])}
        filtered = self.filter_threshold is not None
        if filtered:
            train, test = self.filter(train, test, info)
        sub_rng = np.random.default_rng(streams[2])
        train, train_sampled = subsample(train, train_wanted, sub_rng)
        # A single file was split already: its test rows are the held-out ones, all of them.
        single_file = o.source.startswith("csv:") and Path(o.source[4:]).is_file()
        test, test_sampled = subsample(test, None if single_file else o.num_test, sub_rng)
        if not (train_sampled or test_sampled or single_file or filtered):
            return train, test, None
        selected = single_file or filtered  # then both splits are a selection of their file's rows
        record = {
            "note": "0-based data rows (header excluded) of the source files, in dataset order; "
            "null = every row in file order",
            "train": {"file": train.path, "rows": train.rows.tolist() if train_sampled or selected else None},
            "test": {"file": test.path, "rows": test.rows.tolist() if test_sampled or selected else None},
        }
        return train, test, record

    def write(self, root: Path, prepared: PreparedPuzzles, info: dict[str, Any], progress: bool) -> None:
        o = self.options
        train, test = prepared.train, prepared.test
        questions, answers, group_sizes = prepared.train_rows
        train_tokens = (self.to_tokens(questions), self.to_tokens(answers), group_sizes)
        test_tokens = (self.to_tokens(test.questions), self.to_tokens(test.answers))
        write_puzzle_files(root, train_tokens, test_tokens, self.vocab_size, prepared.subsample_record)
        if o.source == "generate":  # so that csv:<dataset>/generated rebuilds the same arrays
            name = f"smoltrain-generate-{o.size}x{o.size}"
            self.write_csv(root / "generated" / "train.csv", train, name)
            self.write_csv(root / "generated" / "test.csv", test, name)
        info.update(
            counts={
                f"train_{self.noun}": int(train.questions.shape[0]),
                "train_rows": int(questions.shape[0]),
                f"test_{self.noun}": int(test.questions.shape[0]),
            },
            **self.statistics(train, test),
            train_test_overlap=prepared.overlap,
            **prepared.augment_facts,
        )


__all__ = [
    "BUILD_INFO_KEYS",
    "GENERATED_PER_SPLIT",
    "DatasetBuilder",
    "PreparedPuzzles",
    "PuzzleBuilder",
    "PuzzleSourceOptions",
    "question_keys",
]
