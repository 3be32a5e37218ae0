"""Small puzzle datasets in the reference on-disk format, for tests that need one fast."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from smoltrain.data.puzzles import PuzzleDatasetMetadata, write_identifiers, write_split


def write_sorting_puzzles(root: Path, n_train: int = 256, n_test: int = 64, seq_len: int = 6, digits: int = 4,
                          num_ids: int = 1, seed: int = 0) -> Path:
    """A puzzle dataset whose answer is the sorted input (tokens 0 PAD, 1..digits values).

    Each example is its own group and puzzle; puzzle identifiers cycle through 1..num_ids-1 when
    num_ids > 1 (0 is the blank identifier), else are all 0.
    """
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        inputs = rng.integers(1, digits + 1, size=(n, seq_len)).astype(np.uint8)
        labels = np.sort(inputs, axis=1)
        ids = (np.arange(n) % (num_ids - 1) + 1) if num_ids > 1 else np.zeros(n)
        metadata = PuzzleDatasetMetadata(
            pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=digits + 1, seq_len=seq_len,
            num_puzzle_identifiers=num_ids, total_groups=n, mean_puzzle_examples=1.0, total_puzzles=n, sets=["all"],
        )
        write_split(root, split, inputs, labels, ids.astype(np.int32), np.arange(n + 1, dtype=np.int32),
                    np.arange(n + 1, dtype=np.int32), metadata)
    write_identifiers(root, ["<blank>"] + [f"p{i}" for i in range(1, num_ids)])
    return root
