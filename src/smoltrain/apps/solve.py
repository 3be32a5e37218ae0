"""Solve one puzzle with a trained or imported TRM run: parse, run ACT inference, check, pretty-print.

Sudoku boards are flat arrays of ``n*n`` digits (0 = blank), row-major, as in ``smoltrain.data.sudoku``; the
model sees tokens ``digit + 1`` (0 PAD, 1 blank, 2..n+1 digits) and the blank puzzle identifier 0, as in
the Sudoku datasets, and predicts the whole solved grid at every ACT step.

Mazes typed by the user are ``n`` lines of ``# SG`` (``.`` also means free), tokens as in
``smoltrain.data.maze``. Any kind, ARC included, can also come from the run's own test split
(:func:`solve_puzzle` with ``example=N``), with its puzzle identifier and its target. The kind of a run's
puzzles is :func:`smoltrain.data.puzzles.puzzle_kind` of its dataset (or of its model's shapes without one).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from smoltrain.apps.render import MAZE_CHARS, PuzzleTrace, side_of
from smoltrain.data.arc import crop_grid
from smoltrain.data.puzzles import puzzle_kind
from smoltrain.data.sudoku import box_shape
from smoltrain.errors import ConfigError, DataError, SmoltrainError
from smoltrain.families import load_run_config
from smoltrain.models.trm import TRMConfig, act_inference
from smoltrain.runs.loading import LoadedRun, load

__all__ = [
    "PuzzleSolution",
    "SolveResult",
    "format_grid",
    "is_valid_solution",
    "parse_maze",
    "parse_sudoku",
    "read_puzzle_file",
    "run_kind",
    "solution_problems",
    "solve_puzzle",
    "solve_with_run",
    "trace_test_examples",
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


def _load(run_dir: Path, device: str, keep_data: bool = False) -> LoadedRun:
    from smoltrain.families.trm import DATA_SHAPE

    cfg = load_run_config(run_dir)
    # A run that declares its data shape (an imported one) builds without its dataset, which solving a
    # typed puzzle does not need: drop the data paths so a dataset absent on this machine does not stop it.
    declared = all(getattr(cfg.arch, key, None) is not None for key in DATA_SHAPE)
    overrides = ["data_paths=[]", "data_paths_test=[]"] if declared and not keep_data else []
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


# ------------------------------------------------------------------------------------------------
# Any kind: mazes, ARC, and examples from the run's own dataset


def parse_maze(text: str) -> np.ndarray:
    """The ``n*n`` tokens of a maze written as ``n`` lines of ``n`` characters, or as one ``n*n``-character line.

    ``#`` is a wall, space or ``.`` a free cell, ``S`` the start and ``G`` the goal (exactly one each). Lines
    shorter than ``n`` are padded with free cells, since editors strip trailing spaces.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if len(lines) > 1 and lines[-1] == "":
        lines.pop()  # the file's final newline
    # Rows of spaces are free cells, so blank lines at the ends are dropped only while there are more lines
    # than the widest row has characters (extra newlines, not rows).
    width = max(len(line) for line in lines)
    while len(lines) > max(width, 1) and not lines[-1].strip():
        lines.pop()
    while len(lines) > max(width, 1) and not lines[0].strip():
        lines.pop(0)
    if not "".join(lines).strip():
        raise DataError("the maze is empty; write n lines of '#' (wall), ' ' or '.' (free), 'S' and 'G'")
    if len(lines) == 1:
        n = math.isqrt(len(lines[0]))
        if n * n != len(lines[0]):
            raise DataError(f"the maze is one line of {len(lines[0])} characters, which is not n*n; write n lines "
                            "of n characters, or one line of n*n")
        rows = [lines[0][i:i + n] for i in range(0, n * n, n)]
    else:
        n = len(lines)
        for r, line in enumerate(lines, start=1):
            if len(line) > n:
                raise DataError(f"maze row {r} has {len(line)} characters, but a maze of {n} rows needs {n} per row")
        rows = [line.ljust(n) for line in lines]
    tokens = np.empty((n, n), dtype=np.int64)
    codes = {"#": 1, " ": 2, ".": 2, "S": 3, "G": 4}
    for r, row in enumerate(rows):
        for c, char in enumerate(row):
            if char not in codes:
                raise DataError(f"the maze has {char!r} at row {r + 1}, column {c + 1}; write '#' (wall), ' ' or '.' "
                                "(free), 'S' and 'G' -- the model draws the path")
            tokens[r, c] = codes[char]
    for token, name in ((3, "S (start)"), (4, "G (goal)")):
        count = int((tokens == token).sum())
        if count != 1:
            raise DataError(f"the maze has {count} {name} cells; it needs exactly one")
    return tokens.reshape(-1)


def maze_text(tokens: np.ndarray) -> str:
    """A maze's tokens as lines of ``# SGo`` (``?`` for PAD or stray tokens)."""
    grid = np.asarray(tokens).reshape(-1)
    n = side_of("maze", grid.size)
    chars = "?" + MAZE_CHARS
    return "\n".join("".join(chars[t] if 0 <= t < len(chars) else "?" for t in grid[r * n:(r + 1) * n])
                     for r in range(n))


def arc_text(tokens: np.ndarray) -> str:
    """The cropped ARC grid as rows of colour digits."""
    grid = crop_grid(tokens)
    if grid.size == 0:
        return "(no grid: the canvas starts with EOS or PAD)"
    return "\n".join("".join(str(int(v)) for v in row) for row in grid)


def _trm_config(run: LoadedRun) -> TRMConfig:
    config = getattr(getattr(run.model, "model", run.model), "config", None)
    if not isinstance(config, TRMConfig):
        raise SmoltrainError(f"solving and drawing puzzles need a TRM-family run (arch trm, hrm or trm_singlez); "
                             f"this run is arch {run.config.arch.name}")
    return config


def _dataset_root(run: LoadedRun) -> Path | None:
    """The dataset whose test split the run evaluates on (the first of ``data_paths_test``, else ``data_paths``)."""
    paths = run.config.data_paths_test or run.config.data_paths
    return Path(paths[0]) if paths else None


def run_kind(run: LoadedRun, root: Path | None = None) -> str:
    """``"sudoku"``, ``"maze"`` or ``"arc"``: what the run's puzzles are (from ``root``'s build_info.json, by
    default the run's dataset's, else from the model's shapes)."""
    config = _trm_config(run)
    return puzzle_kind(config.vocab_size, config.seq_len, root or _dataset_root(run))


def predict_steps(run: LoadedRun, inputs: np.ndarray, identifiers: np.ndarray) -> list[np.ndarray]:
    """The predicted tokens ``[B, seq_len]`` after each of the run's ACT steps, for a batch of inputs."""
    batch = {
        "inputs": torch.from_numpy(np.asarray(inputs, dtype=np.int32)).to(run.device),
        "puzzle_identifiers": torch.from_numpy(np.asarray(identifiers, dtype=np.int32)).to(run.device),
    }
    with torch.inference_mode():
        return [logits.argmax(dim=-1).cpu().numpy().astype(np.int64) for logits in act_inference(run.model, batch)]


def _test_examples(run: LoadedRun, indices: list[int], clip: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                            list[int], list[str]]:
    """(inputs, labels, identifiers, indices, identifier names) of test examples ``indices`` of the run's data.

    Labels the loss ignores come back as 0 (PAD). With ``clip``, indices past the end are dropped instead of
    being an error (rendering "the first 8" of a smaller test set).
    """
    from smoltrain.data.puzzles import PuzzleDataset, load_identifiers

    root = _dataset_root(run)
    if root is None:
        raise ConfigError("this run has no dataset (data_paths is empty): pass data_paths=[DIR] or solve a typed "
                          "puzzle with --puzzle")
    dataset = PuzzleDataset(root, "test", global_batch_size=1, test_mode=True)  # validates the split
    total = dataset.num_examples
    bad = [i for i in indices if not 0 <= i < total]
    if bad and not clip:
        raise DataError(f"--example {bad[0]} is out of range: the test split of {root} has {total} examples "
                        f"(0..{total - 1})")
    indices = [i for i in indices if 0 <= i < total]
    if not indices:
        raise DataError(f"the test split of {root} has no examples to draw")
    split_dir = root / "test"
    rows = np.array(indices, dtype=np.int64)
    inputs = np.load(split_dir / "all__inputs.npy", mmap_mode="r")[rows].astype(np.int64)
    labels = np.load(split_dir / "all__labels.npy", mmap_mode="r")[rows].astype(np.int64)
    ignore = dataset.metadata.ignore_label_id
    if ignore is not None:
        labels[labels == ignore] = 0
    puzzles = np.searchsorted(dataset.puzzle_indices, rows, side="right") - 1
    identifiers = dataset.puzzle_identifiers[puzzles]
    names = load_identifiers(root) or []
    named = [names[i] if 0 <= i < len(names) else str(i) for i in identifiers.tolist()]
    return inputs, labels, identifiers, indices, named


def _title(kind: str, index: int, name: str) -> str:
    return f"test example {index}" + (f" ({name})" if kind == "arc" and name else "")


def trace_test_examples(run: LoadedRun, indices: Iterable[int], clip: bool = False,
                        batch_size: int = 64) -> tuple[list[PuzzleTrace], list[int]]:
    """The ACT traces of test examples ``indices`` of the run's dataset, and the indices drawn."""
    kind = run_kind(run)
    inputs, labels, identifiers, kept, names = _test_examples(run, list(indices), clip)
    traces = []
    for start in range(0, len(kept), batch_size):
        stop = start + batch_size
        steps = predict_steps(run, inputs[start:stop], identifiers[start:stop])
        for row in range(min(batch_size, len(kept) - start)):
            i = start + row
            step_tokens = [step[row] for step in steps]
            verdict = _verdict(kind, inputs[i], labels[i], step_tokens[-1])[1]
            traces.append(PuzzleTrace(kind, inputs[i], labels[i], step_tokens, _title(kind, kept[i], names[i]),
                                      verdict))
    return traces, kept


def _sudoku_digits(tokens: np.ndarray, n: int) -> np.ndarray:
    digits = np.asarray(tokens).reshape(-1) - 1
    return np.where((digits >= 1) & (digits <= n), digits, 0)


def _maze_check(inputs: np.ndarray, answer: np.ndarray) -> tuple[bool, str]:
    """(valid and optimal, why) for one maze answer."""
    try:
        from smoltrain.eval.maze import valid_optimal_paths
    except ImportError:  # written alongside; the builder's checker says the same thing
        from smoltrain.data.maze import check_maze_paths

        def valid_optimal_paths(inputs: np.ndarray, preds: np.ndarray) -> np.ndarray:
            return check_maze_paths(inputs, preds) == 0
    valid = bool(np.asarray(valid_optimal_paths(inputs[None], answer[None])).reshape(-1)[0])
    if valid:
        return True, "a valid shortest path"
    try:
        from smoltrain.data.maze import PATH_CHECK_REASONS, check_maze_paths

        return False, "not a valid shortest path: " + PATH_CHECK_REASONS[int(check_maze_paths(inputs, answer)[0])]
    except ImportError:
        return False, "not a valid shortest path"


def _verdict(kind: str, inputs: np.ndarray, target: np.ndarray | None, answer: np.ndarray) -> tuple[bool | None, str]:
    """(correct, a one-line verdict) of one answer: Sudoku rules, a maze's shortest path, ARC's exact grid."""
    matches = None if target is None else (
        np.array_equal(crop_grid(answer), crop_grid(target)) if kind == "arc"
        else bool(np.all((target <= 0) | (answer == target)))
    )
    if kind == "sudoku":
        n = side_of(kind, answer.size)
        problems = solution_problems(_sudoku_digits(inputs, n), _sudoku_digits(answer, n), n)
        verdict = "valid solution" if not problems else "not a valid solution: " + "; ".join(problems)
        return not problems, verdict + ("" if matches is None else f" ({'equals' if matches else 'differs from'} "
                                        "the dataset's answer)")
    if kind == "maze":
        valid, verdict = _maze_check(inputs, answer)
        return valid, verdict + ("" if matches is None else f" ({'equals' if matches else 'differs from'} the "
                                 "dataset's path)")
    if target is None:
        return None, "no target to compare with"
    got, want = crop_grid(answer), crop_grid(target)
    if matches:
        return True, "equals the target"
    if got.shape != want.shape:
        return False, (f"differs from the target: {got.shape[0]}x{got.shape[1]} instead of "
                       f"{want.shape[0]}x{want.shape[1]}")
    return False, f"differs from the target in {int((got != want).sum())} of {want.size} cells"


@dataclass
class PuzzleSolution:
    """One puzzle of any kind through the model: its trace (for pictures) and a verdict (for the terminal)."""

    trace: PuzzleTrace
    correct: bool | None  # Sudoku: a valid solution; maze: a valid shortest path; ARC: equals the target
    verdict: str

    @property
    def kind(self) -> str:
        return self.trace.kind

    def report(self) -> str:
        """What `smoltrain solve` prints: the puzzle, the answer after the last ACT step, the verdict."""
        trace = self.trace
        steps = len(trace.steps)
        answer = trace.steps[-1]
        lines = [f"{trace.title}:" if trace.title else "puzzle:"]
        if self.kind == "sudoku":
            n = side_of("sudoku", answer.size)
            givens, digits = _sudoku_digits(trace.inputs, n), _sudoku_digits(answer, n)
            lines += [format_grid(givens, n), "", f"answer after {steps} ACT steps ([d] = filled in by the model):",
                      format_grid(digits, n, changed_mask=digits != givens)]
        elif self.kind == "maze":
            lines += [maze_text(trace.inputs), "", f"answer after {steps} ACT steps (o = path):", maze_text(answer)]
        else:
            rows, cols = crop_grid(trace.inputs).shape
            lines += [f"input ({rows}x{cols}):", arc_text(trace.inputs)]
            if trace.target is not None:
                rows, cols = crop_grid(trace.target).shape
                lines += ["", f"target ({rows}x{cols}):", arc_text(trace.target)]
            rows, cols = crop_grid(answer).shape
            lines += ["", f"answer after {steps} ACT steps ({rows}x{cols}):", arc_text(answer)]
        lines.append(self.verdict)
        return "\n".join(lines)


def _solve_text(run: LoadedRun, kind: str, text: str) -> PuzzleSolution:
    config = _trm_config(run)
    if kind == "arc":
        raise DataError("typed ARC puzzles are not supported (the model needs the task's puzzle identifier); "
                        "use --example N to solve test example N of the run's dataset")
    if kind == "sudoku":
        result = solve_with_run(run, text)
        inputs = result.givens + 1
        steps = [step + 1 for step in result.steps]
        verdict = "valid solution" if result.valid else "not a valid solution: " + "; ".join(result.problems)
        return PuzzleSolution(PuzzleTrace(kind, inputs, None, steps, "", verdict), result.valid, verdict)
    inputs = parse_maze(text)
    if inputs.size != config.seq_len:
        side = math.isqrt(config.seq_len)
        raise DataError(f"the maze is {math.isqrt(inputs.size)}x{math.isqrt(inputs.size)}, but this run was "
                        f"trained on {side}x{side} mazes")
    steps = [step[0] for step in predict_steps(run, inputs[None], np.array([BLANK_ID]))]
    correct, verdict = _verdict(kind, inputs, None, steps[-1])
    return PuzzleSolution(PuzzleTrace(kind, inputs, None, steps, "", verdict), correct, verdict)


def solve_puzzle(run_dir_or_loaded: str | Path | LoadedRun, puzzle_text: str | None = None, example: int | None = None,
                 device: str = "auto") -> PuzzleSolution:
    """One puzzle through a TRM-family run for its ``halt_max_steps`` ACT steps, checked.

    Either ``puzzle_text`` (a Sudoku as for :func:`parse_sudoku`, a maze as for :func:`parse_maze`, whichever
    the run was trained on) or ``example``, the index of a test example of the run's own dataset (any kind).
    """
    if (puzzle_text is None) == (example is None):
        raise ConfigError("give either a puzzle (--puzzle / --puzzle-file) or --example N, not both or neither")
    if isinstance(run_dir_or_loaded, LoadedRun):
        run = run_dir_or_loaded
        root = _dataset_root(run)
    else:
        run_dir = Path(run_dir_or_loaded)
        cfg = load_run_config(run_dir)
        paths = cfg.data_paths_test or cfg.data_paths
        root = Path(paths[0]) if paths else None  # its build_info.json names the kind even when not loaded
        missing = [p for p in paths if not Path(p).is_dir()]
        if example is not None and missing:
            raise DataError(f"--example needs the run's dataset, and {missing[0]} is not here: build or copy "
                            "it there, or solve a typed puzzle with --puzzle")
        run = _load(run_dir, device, keep_data=example is not None)
    kind = run_kind(run, root)
    if puzzle_text is not None:
        return _solve_text(run, kind, puzzle_text)
    assert example is not None
    (trace,), _ = trace_test_examples(run, [example])
    correct, verdict = _verdict(kind, trace.inputs, trace.target, trace.steps[-1])
    return PuzzleSolution(trace, correct, verdict)


def read_puzzle_file(path: str | Path) -> str:
    """The text of a puzzle file (``--puzzle-file``), with one clear error when it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read the puzzle file {path} ({err.__class__.__name__}): check the path") from None
