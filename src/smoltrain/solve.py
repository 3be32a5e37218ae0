"""Solve one Sudoku with a trained or imported TRM run: parse, run ACT inference, check, pretty-print.

Boards are flat arrays of ``n*n`` digits (0 = blank), row-major, as in ``smoltrain.data.sudoku``; the
model sees tokens ``digit + 1`` (0 PAD, 1 blank, 2..n+1 digits) and the blank puzzle identifier 0, as in
the Sudoku datasets, and predicts the whole solved grid at every ACT step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from smoltrain.api import LoadedRun, load
from smoltrain.config import load_run_config
from smoltrain.data.sudoku import box_shape
from smoltrain.errors import DataError, SmoltrainError
from smoltrain.models.trm import TRMConfig, act_inference

__all__ = [
    "SolveResult",
    "format_grid",
    "is_valid_solution",
    "parse_sudoku",
    "solution_problems",
    "solve_with_run",
]

SIZES = {16: 4, 36: 6, 81: 9}  # cells -> n
SEPARATORS = frozenset("|-+")  # drawn grids paste as-is; whitespace is skipped too
BLANK_ID = 0  # the blank puzzle identifier: Sudoku datasets give every puzzle this one


def parse_sudoku(text: str) -> np.ndarray:
    """The ``n*n`` digits (0 = blank) of a 4x4, 6x6 or 9x9 puzzle written as 16, 36 or 81 cells.

    Blanks are ``.`` or ``0``; whitespace and the separators ``|``, ``-``, ``+`` are ignored, so both
    ``"53..7...."`` and a drawn grid work.
    """
    cells: list[int] = []
    for position, char in enumerate(text, start=1):
        if char.isspace() or char in SEPARATORS:
            continue
        if char == ".":
            cells.append(0)
        elif char in "0123456789":
            cells.append(int(char))
        else:
            raise DataError(f"the puzzle has {char!r} at character {position}; write digits, '.' or '0' for "
                            "blanks (spaces and | - + are ignored)")
    n = SIZES.get(len(cells))
    if n is None:
        raise DataError(f"the puzzle has {len(cells)} cells; a Sudoku needs 81 (9x9), 36 (6x6) or 16 (4x4), "
                        "with '.' or '0' for blanks")
    grid = np.array(cells, dtype=np.int64)
    if (grid > n).any():
        cell = int(np.argmax(grid > n))
        raise DataError(f"row {cell // n + 1}, column {cell % n + 1} holds {grid[cell]}, but a {n}x{n} Sudoku "
                        f"uses the digits 1..{n}")
    return grid


def _units(n: int) -> list[tuple[str, np.ndarray]]:
    """(name, cell indices) of every row, column and box."""
    cells = np.arange(n * n).reshape(n, n)
    rows, cols = box_shape(n)
    units = [(f"row {r + 1}", cells[r]) for r in range(n)]
    units += [(f"column {c + 1}", cells[:, c]) for c in range(n)]
    units += [
        (f"box {b + 1}", cells[r0:r0 + rows, c0:c0 + cols].reshape(-1))
        for b, (r0, c0) in enumerate((r0, c0) for r0 in range(0, n, rows) for c0 in range(0, n, cols))
    ]
    return units


def _repeats(grid: np.ndarray, n: int) -> list[str]:
    """One line per unit holding a digit more than once (blanks ignored)."""
    problems = []
    for name, idx in _units(n):
        digits = grid[idx]
        counts = np.bincount(digits[(digits >= 1) & (digits <= n)], minlength=n + 1)
        repeated = [str(d) for d in range(1, n + 1) if counts[d] > 1]
        if repeated:
            problems.append(f"{name} repeats {', '.join(repeated)}")
    return problems


def solution_problems(givens: np.ndarray, grid: np.ndarray, n: int) -> list[str]:
    """Why ``grid`` does not solve ``givens`` (empty when it does): missing digits, changed givens, repeats."""
    givens = np.asarray(givens).reshape(-1)
    grid = np.asarray(grid).reshape(-1)
    if grid.size != n * n or givens.size != n * n:
        raise ValueError(f"a {n}x{n} board has {n * n} cells; got {givens.size} givens and {grid.size} cells")
    problems = []
    missing = int(((grid < 1) | (grid > n)).sum())
    if missing:
        problems.append(f"{missing} cell{'s' if missing > 1 else ''} without a digit")
    changed = np.flatnonzero((givens > 0) & (grid != givens))
    if changed.size:
        cell = int(changed[0])
        problems.append(f"{changed.size} given{'s' if changed.size > 1 else ''} changed (first: row {cell // n + 1}, "
                        f"column {cell % n + 1}: {givens[cell]} -> {grid[cell]})")
    return problems + _repeats(grid, n)


def is_valid_solution(givens: np.ndarray, grid: np.ndarray, n: int) -> bool:
    """Whether ``grid`` is a complete, rule-abiding ``n x n`` Sudoku that keeps every given."""
    return not solution_problems(givens, grid, n)


def format_grid(grid: np.ndarray, n: int, changed_mask: np.ndarray | None = None) -> str:
    """The board as plain-ASCII text with box separators; blanks are ``.``, non-digits ``?``.

    With ``changed_mask`` every cell takes three characters and the marked ones are bracketed, ``[7]``.
    """
    cells = np.asarray(grid).reshape(n, n)
    marks = np.zeros((n, n), dtype=bool) if changed_mask is None else np.asarray(changed_mask, dtype=bool).reshape(n, n)
    rows, cols = box_shape(n)
    lines: list[str] = []
    separator = ""
    for r in range(n):
        segments = []
        for c0 in range(0, n, cols):
            texts = []
            for c in range(c0, c0 + cols):
                value = int(cells[r, c])
                char = "." if value == 0 else str(value) if 1 <= value <= n else "?"
                if changed_mask is None:
                    texts.append(char)
                else:
                    texts.append(f"[{char}]" if marks[r, c] else f" {char} ")
            segments.append((" " if changed_mask is None else "").join(texts))
        if changed_mask is None:
            separator = "-+-".join("-" * len(s) for s in segments)
            line = " | ".join(segments)
        else:
            separator = "+".join("-" * len(s) for s in segments)
            line = "|".join(segments)
        if r and r % rows == 0:
            lines.append(separator)
        lines.append(line.rstrip())
    return "\n".join(lines)


@dataclass
class SolveResult:
    """One puzzle through the model. Boards are flat ``n*n`` digit arrays (0 = blank / no digit)."""

    n: int
    givens: np.ndarray
    answer: np.ndarray  # the last ACT step's prediction
    steps: list[np.ndarray]  # every ACT step's prediction (``halt_max_steps`` of them); the last is ``answer``
    valid: bool  # ``answer`` solves ``givens``
    problems: list[str]  # why not, when not valid

    @property
    def filled(self) -> np.ndarray:
        """Cells whose digit differs from the puzzle's (the blanks the model filled, and any given it changed)."""
        return self.answer != self.givens


def _load(run_dir: Path, device: str) -> LoadedRun:
    from smoltrain.families.trm import DATA_SHAPE

    cfg = load_run_config(run_dir)
    # A run that declares its data shape (an imported one) builds without its dataset, which solving
    # does not need: drop the data paths so a dataset absent on this machine does not stop it.
    declared = all(getattr(cfg.arch, key, None) is not None for key in DATA_SHAPE)
    overrides = ["data_paths=[]", "data_paths_test=[]"] if declared else []
    return load(run_dir, device=device, overrides=overrides)


def _digits(logits: torch.Tensor, n: int) -> np.ndarray:
    """Predicted digits of one board; tokens that are not digits (PAD, blank) become 0."""
    digits = logits[0].argmax(dim=-1).cpu().numpy().astype(np.int64) - 1
    return np.where((digits >= 1) & (digits <= n), digits, 0)


def solve_with_run(run_dir_or_loaded: str | Path | LoadedRun, puzzle_text: str, device: str = "auto") -> SolveResult:
    """Run a TRM-family run on one Sudoku (``puzzle_text`` as for :func:`parse_sudoku`) for its
    ``halt_max_steps`` ACT steps and check the answer."""
    run = run_dir_or_loaded if isinstance(run_dir_or_loaded, LoadedRun) else _load(Path(run_dir_or_loaded), device)
    config = getattr(getattr(run.model, "model", run.model), "config", None)
    if not isinstance(config, TRMConfig):
        raise SmoltrainError(f"solve needs a TRM-family run (arch trm, hrm or trm_singlez); this run is arch "
                             f"{run.config.arch.name}")
    givens = parse_sudoku(puzzle_text)
    n = SIZES[givens.size]
    if config.seq_len != givens.size:
        trained = SIZES.get(config.seq_len)
        what = f"{trained}x{trained} puzzles ({config.seq_len} cells)" if trained else \
            f"puzzles of {config.seq_len} cells (not a Sudoku size)"
        raise SmoltrainError(f"this run was trained on {what}; got {givens.size} cells")
    if config.vocab_size != n + 2:
        raise SmoltrainError(f"this run's vocabulary has {config.vocab_size} tokens but {n}x{n} Sudoku uses {n + 2} "
                             f"(PAD, blank, digits 1..{n}); was it trained on Sudoku?")
    conflicts = _repeats(givens, n)
    if conflicts:
        raise DataError(f"the puzzle breaks the rules ({'; '.join(conflicts)}); check the givens")

    batch = {
        "inputs": torch.from_numpy(givens + 1).to(torch.int32).unsqueeze(0).to(run.device),
        "puzzle_identifiers": torch.full((1,), BLANK_ID, dtype=torch.int32, device=run.device),
    }
    steps = [_digits(logits, n) for logits in act_inference(run.model, batch)]
    answer = steps[-1]
    problems = solution_problems(givens, answer, n)
    return SolveResult(n=n, givens=givens, answer=answer, steps=steps, valid=not problems, problems=problems)
