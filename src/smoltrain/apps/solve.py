"""Solve puzzles with a trained or imported TRM run: parse, run ACT inference, check, print, trace.

:func:`solve_puzzle` takes one puzzle, typed by the user in the form its kind reads (a Sudoku as digits with
``.`` for blanks, a maze as lines of ``# SG``) or test example ``N`` of the run's own dataset (any kind, ARC
included, with its puzzle identifier and its target), and returns a :class:`PuzzleSolution`: the ACT trace
(the predicted tokens after every step, for pictures) and the kind's verdict. What a run's puzzles are is
:func:`smoltrain.data.puzzles.detect_kind` of its dataset (or of its model's shapes without one); everything
specific to a kind -- parsing, checking, printing -- is that kind object's. A typed puzzle gets the blank
puzzle identifier 0, as every Sudoku and maze dataset gives its puzzles.

:func:`render_examples` draws the traces of a run's first test examples (``smoltrain eval --render``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from smoltrain.apps.render import PuzzleTrace, render_traces
from smoltrain.data.puzzles import (
    PuzzleDataset,
    PuzzleKind,
    Verdict,
    detect_kind,
    has_test_solutions,
    load_identifiers,
)
from smoltrain.errors import ConfigError, DataError, SmoltrainError
from smoltrain.models.trm import TRMConfig, act_trace
from smoltrain.runs.loading import LoadedRun, load
from smoltrain.runs.run_dir import RunDir

__all__ = [
    "PuzzleSolution",
    "read_puzzle_file",
    "render_examples",
    "run_kind",
    "solve_puzzle",
    "trace_test_examples",
]

BLANK_ID = 0  # the blank puzzle identifier: Sudoku and maze datasets give every puzzle this one


@dataclass
class PuzzleSolution:
    """One puzzle through the model: its trace (tokens, for pictures) and its kind's verdict (for the terminal)."""

    kind: PuzzleKind
    trace: PuzzleTrace
    verdict: Verdict
    q_halt: list[float] = field(default_factory=list)  # halting probability after each ACT step

    @property
    def correct(self) -> bool | None:
        """Sudoku: a valid solution; maze: a valid shortest path; ARC: equals the target (None without one)."""
        return self.verdict.correct

    @property
    def answer(self) -> np.ndarray:
        """The predicted tokens after the last ACT step."""
        return self.trace.steps[-1]

    def report(self) -> str:
        """What `smoltrain solve` prints: the puzzle, the answer after the last ACT step, the verdict."""
        trace = self.trace
        heading = f"{trace.title}:" if trace.title else "puzzle:"
        lines = self.kind.report(trace.inputs, trace.target, self.answer, len(trace.steps))
        return "\n".join([heading, *lines, self.verdict.line])


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


def run_kind(run: LoadedRun, root: Path | None = None) -> PuzzleKind:
    """What the run's puzzles are: from ``root``'s build_info.json (by default the run's dataset's), else from
    the model's shapes."""
    config = _trm_config(run)
    return detect_kind(root or _dataset_root(run), vocab_size=config.vocab_size, seq_len=config.seq_len)


def predict_steps(run: LoadedRun, inputs: np.ndarray, identifiers: np.ndarray) -> list[np.ndarray]:
    """The predicted tokens ``[B, seq_len]`` after each of the run's ACT steps, for a batch of inputs."""
    return predict_trace(run, inputs, identifiers)[0]


def predict_trace(run: LoadedRun, inputs: np.ndarray, identifiers: np.ndarray,
                  max_steps: int | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The predicted tokens ``[B, seq_len]`` and the halting probability ``[B]`` (sigmoid of the q-halt
    logit) after each ACT step (all ``halt_max_steps`` of them, or the first ``max_steps``)."""
    batch = {
        "inputs": torch.from_numpy(np.asarray(inputs, dtype=np.int32)).to(run.device),
        "puzzle_identifiers": torch.from_numpy(np.asarray(identifiers, dtype=np.int32)).to(run.device),
    }
    with torch.inference_mode():
        outputs = act_trace(run.model, batch, max_steps)
        tokens = [out["logits"].argmax(dim=-1).cpu().numpy().astype(np.int64) for out in outputs]
        halting = [torch.sigmoid(out["q_halt_logits"].float()).cpu().numpy() for out in outputs]
    return tokens, halting


def read_test_examples(run: LoadedRun, indices: list[int], clip: bool) -> tuple[np.ndarray, np.ndarray | None,
                                                                            np.ndarray, list[int], list[str]]:
    """(inputs, labels, identifiers, indices, identifier names) of test examples ``indices`` of the run's data.

    Labels the loss ignores come back as 0 (PAD). Labels are None when the test split was built without its
    solutions (an ARC hidden test set): its labels are placeholders, not targets to show or compare with.
    With ``clip``, indices past the end are dropped instead of being an error (rendering "the first 8" of a
    smaller test set).
    """
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
    return inputs, (labels if has_test_solutions(root) else None), identifiers, indices, named


def trace_test_examples(run: LoadedRun, indices: Iterable[int], clip: bool = False,
                        batch_size: int = 64) -> tuple[list[PuzzleTrace], list[int]]:
    """The ACT traces of test examples ``indices`` of the run's dataset, and the indices drawn."""
    kind = run_kind(run)
    inputs, labels, identifiers, kept, names = read_test_examples(run, list(indices), clip)
    traces = []
    for start in range(0, len(kept), batch_size):
        stop = start + batch_size
        steps = predict_steps(run, inputs[start:stop], identifiers[start:stop])
        for row in range(min(batch_size, len(kept) - start)):
            i = start + row
            step_tokens = [step[row] for step in steps]
            target = labels[i] if labels is not None else None
            verdict = kind.verdict(inputs[i], target, step_tokens[-1])
            traces.append(PuzzleTrace(kind.name, inputs[i], target, step_tokens, kind.title(kept[i], names[i]),
                                      verdict.line))
    return traces, kept


def solve_puzzle(run_dir_or_loaded: str | Path | LoadedRun, puzzle_text: str | None = None, example: int | None = None,
                 device: str = "auto", max_steps: int | None = None) -> PuzzleSolution:
    """One puzzle through a TRM-family run for its ``halt_max_steps`` ACT steps (or the first ``max_steps``),
    checked.

    Either ``puzzle_text`` (a puzzle of the kind the run was trained on, in the form that kind's ``parse``
    reads) or ``example``, the index of a test example of the run's own dataset (any kind).
    """
    if max_steps is not None and max_steps < 1:
        raise ConfigError(f"max_steps must be at least 1, got {max_steps}")
    if (puzzle_text is None) == (example is None):
        raise ConfigError("give either a puzzle (--puzzle / --puzzle-file) or --example N, not both or neither")
    if isinstance(run_dir_or_loaded, LoadedRun):
        run = run_dir_or_loaded
        root = _dataset_root(run)
    else:
        run_dir = Path(run_dir_or_loaded)
        cfg = RunDir(run_dir).load_config()
        paths = cfg.data_paths_test or cfg.data_paths
        root = Path(paths[0]) if paths else None  # its build_info.json names the kind even when not loaded
        missing = [p for p in paths if not Path(p).is_dir()]
        if example is not None and missing:
            raise DataError(f"--example needs the run's dataset, and {missing[0]} is not here: build or copy "
                            "it there, or solve a typed puzzle with --puzzle")
        run = load(run_dir, device=device, need_data=example is not None)  # a typed puzzle needs no dataset
    kind = run_kind(run, root)
    if puzzle_text is not None:
        config = _trm_config(run)
        inputs = kind.parse(puzzle_text)
        kind.check_typed(inputs, config.seq_len, config.vocab_size)
        target, identifiers, title = None, np.array([BLANK_ID]), ""
    else:
        assert example is not None
        all_inputs, labels, identifiers, _, names = read_test_examples(run, [example], clip=False)
        target = labels[0] if labels is not None else None
        inputs, title = all_inputs[0], kind.title(example, names[0])
    tokens, halting = predict_trace(run, inputs[None], identifiers, max_steps)
    trace = PuzzleTrace(kind.name, inputs, target, [step[0] for step in tokens], title)
    verdict = kind.verdict(trace.inputs, trace.target, trace.steps[-1])
    trace.summary = verdict.line
    return PuzzleSolution(kind, trace, verdict, [float(h[0]) for h in halting])


def render_examples(run: LoadedRun | str | Path, out_dir: str | Path, count: int = 8, device: str = "auto",
                    checkpoint: str | Path | None = None, overrides: list[str] | None = None) -> Path:
    """Run the first ``count`` test examples of a TRM-family run's dataset through every ACT step and render
    them into ``out_dir`` (``example-NNNN.png``, ``frames/``, ``index.html``); returns the page's path."""
    if count < 1:
        raise ConfigError(f"--render-count must be at least 1, got {count}")
    loaded = run if isinstance(run, LoadedRun) else load(run, checkpoint=checkpoint, device=device, overrides=overrides)
    traces, indices = trace_test_examples(loaded, range(count), clip=True)
    return render_traces(traces, out_dir, [f"example-{i:04d}" for i in indices], title=f"{loaded.checkpoint}")


def read_puzzle_file(path: str | Path) -> str:
    """The text of a puzzle file (``--puzzle-file``), with one clear error when it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read the puzzle file {path} ({err.__class__.__name__}): check the path") from None
