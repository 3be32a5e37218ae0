"""The run a server serves: an LM run (chat and completions) or a TRM-family run (puzzle solving).

:func:`load_served_run` loads it once; the endpoints and the playground page ask the :class:`ServedRun`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from smoltrain.apps.generate import LMRun, load_lm, read_adapter
from smoltrain.apps.solve import read_test_examples, run_kind
from smoltrain.data.puzzles import PuzzleKind
from smoltrain.errors import ConfigError, SmoltrainError
from smoltrain.families import family_class
from smoltrain.families.trm import TRMFamily
from smoltrain.models.lm import LMForCausalLM
from smoltrain.models.lora import LoRALinear, adapter_state_dict
from smoltrain.models.trm import TRMConfig
from smoltrain.runs.loading import Adapter, LoadedRun, load
from smoltrain.runs.run_dir import RunDir

Family = Literal["lm", "trm"]


def _jsonable(value: Any) -> Any:
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)


@dataclass
class ServedRun:
    """A loaded run and what the server needs to know about it."""

    run_dir: Path
    family: Family
    name: str  # the model id of the OpenAI API: the run directory's name
    loaded: LoadedRun
    lm: LMRun | None = None  # LM runs: model and tokenizer
    puzzle_kind: PuzzleKind | None = None  # TRM runs
    adapters: dict[str, Adapter] = field(default_factory=dict)  # LM runs: served adapters by model id
    own_adapter: Adapter | None = None  # a LoRA run's own adapters: what the base model id serves

    @property
    def model_ids(self) -> list[str]:
        """The ids /v1/models lists: the run's, then each adapter's."""
        return [self.name, *self.adapters]

    def use_model(self, model_id: str | None) -> None:
        """Put the adapter of ``model_id`` on the loaded model (None or the run's own id: the run as loaded).
        Called by the engine between batches."""
        assert self.lm is not None
        self.lm.use_adapter(self.adapters[model_id] if model_id is not None and model_id != self.name
                            else self.own_adapter)

    @property
    def kind(self) -> str | None:
        """The puzzle kind of a TRM run (sudoku, maze, arc); None for an LM run."""
        return self.puzzle_kind.name if self.puzzle_kind is not None else None

    @property
    def context(self) -> int | None:
        """The most tokens (prompt + completion) an LM request may use: the context the run trained on."""
        if self.family != "lm":
            return None
        return int(self.loaded.config.arch.seq_len)  # type: ignore[attr-defined]

    @property
    def trm_config(self) -> TRMConfig | None:
        config = getattr(getattr(self.loaded.model, "model", self.loaded.model), "config", None)
        return config if isinstance(config, TRMConfig) else None

    @property
    def metrics_path(self) -> Path:
        return RunDir(self.run_dir).metrics

    def info(self) -> dict[str, Any]:
        """What the page shows about the run: architecture, size, checkpoint, the family's facts."""
        model = self.loaded.model
        facts: dict[str, Any] = {
            "name": self.name,
            "family": self.family,
            "arch": self.loaded.config.arch.name,
            "parameters": sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()),
            "checkpoint": str(self.loaded.checkpoint),
            "run_dir": str(self.run_dir),
        }
        facts["facts"] = _jsonable(self.loaded.family.describe(model))
        if self.family == "lm":
            facts["context"] = self.context
            if self.lm is not None and self.lm.quantized:  # parameters then counts the fp32 ones alone
                facts["quantize"] = self.lm.quantized
        trm = self.trm_config
        if trm is not None:
            facts.update(kind=self.kind, seq_len=trm.seq_len, vocab_size=trm.vocab_size,
                         halt_max_steps=trm.halt_max_steps)
        return facts

    def test_examples(self, count: int = 8) -> list[dict[str, Any]]:
        """The first ``count`` test puzzles of a TRM run's dataset (none without one on this machine):
        ``{"index", "puzzle" (the kind's text), "grid" (as /v1/solve's steps)}``."""
        kind = self.puzzle_kind
        paths = self.loaded.config.data_paths_test or self.loaded.config.data_paths
        if kind is None or not paths or not Path(paths[0]).is_dir():
            return []
        inputs, _, _, indices, _ = read_test_examples(self.loaded, list(range(count)), clip=True)
        return [{"index": i, "puzzle": kind.format(row), "grid": grid_values(kind, row)}
                for i, row in zip(indices, inputs, strict=True)]


def grid_values(kind: PuzzleKind, tokens: np.ndarray) -> list[list[int]]:
    """A grid as /v1/solve returns it: the kind's decoded values when they are numbers (Sudoku digits, ARC
    colours), else the cell tokens (maze, whose legend the response gives)."""
    cells = np.asarray(kind.cells(tokens))
    values = np.asarray(kind.decode(tokens))
    if values.dtype.kind in "iu" and values.size == cells.size:
        cells = values.reshape(cells.shape)
    return cells.astype(np.int64).tolist()


def _own_adapter(lm: LMRun) -> Adapter | None:
    """The adapters a LoRA run was loaded with (to put back when its own model id is asked for); None if none."""
    layers = [m for m in lm.model.modules() if isinstance(m, LoRALinear)]
    if not layers:
        return None
    weights = {k: v.detach().clone() for k, v in adapter_state_dict(lm.model).items()}
    return Adapter(weights=weights, rank=layers[0].rank, alpha=layers[0].alpha, source=lm.run.run_dir.root)


def _served_adapters(run: ServedRun, paths: Iterable[str | Path]) -> dict[str, Adapter]:
    """Each ``--adapter`` read once and tried on the loaded model (a misfit is one line at startup, not a failed
    request later), by its model id: the directory's name."""
    adapters: dict[str, Adapter] = {}
    for path in paths:
        found = read_adapter(path)
        model_id = Path(path).resolve().name
        if model_id in adapters or model_id == run.name:
            other = adapters[model_id].source if model_id in adapters else run.run_dir
            raise ConfigError(f"--adapter {path}: its model id {model_id!r} (the directory's name) is taken by "
                              f"{other}; serve a copy under another directory name")
        assert run.lm is not None
        run.lm.use_adapter(found)
        adapters[model_id] = found
    return adapters


def load_served_run(run_dir: str | Path, device: str = "auto", adapters: Iterable[str | Path] = (),
                    quantize: str | None = None) -> ServedRun:
    """Load an LM or TRM-family run for serving, with the LoRA ``adapters`` of an LM run; a SmoltrainError for
    anything else. ``quantize`` (``int8``, LM runs): the linear layers in int8 for the CPU, a LoRA run's own
    adapters merged in first; served adapters cannot be switched on such a model, so ``adapters`` are refused
    with it (serve each adapter quantized by its own server: ``--adapter`` runs are their own runs)."""
    root = Path(run_dir)
    cfg = RunDir(root).load_config()
    name = root.resolve().name
    adapters = list(adapters)
    if cfg.arch.name == "lm":
        if quantize and adapters:
            raise ConfigError(f"--quantize {quantize} merges adapters into the weights before quantizing, so one "
                              "server cannot switch between --adapter ones: serve each adapter quantized by its own "
                              "server (`smoltrain serve LORA_RUN --quantize int8`), or drop --quantize")
        lm = load_lm(root, device=device, quantize=quantize)
        assert isinstance(lm.run.model, LMForCausalLM)
        served = ServedRun(root, "lm", name, lm.run, lm=lm, own_adapter=None if quantize else _own_adapter(lm))
        served.adapters = _served_adapters(served, adapters)
        if not quantize:  # a quantized model has its adapters merged in: nothing to switch
            served.use_model(None)
        return served
    if quantize:
        raise ConfigError(f"--quantize {quantize} quantizes an LM run's linear layers; {root} is a {cfg.arch.name} "
                          "run, whose recursive steps stay in their trained precision: serve it without --quantize")
    if adapters:
        raise ConfigError(f"--adapter puts LoRA adapters on a language model; {root} is a {cfg.arch.name} run: "
                          "serve it without --adapter")
    if not issubclass(family_class(cfg.arch.name), TRMFamily):
        raise SmoltrainError(f"smoltrain serve knows LM runs (arch=lm) and TRM-family runs (trm, hrm, trm_singlez); "
                             f"{root} is arch {cfg.arch.name}")
    paths = [*cfg.data_paths, *cfg.data_paths_test]
    have_data = bool(paths) and all(Path(p).is_dir() for p in paths)  # test examples need the dataset
    loaded = load(root, device=device, need_data=have_data)
    served = ServedRun(root, "trm", name, loaded)
    served.puzzle_kind = run_kind(loaded)
    return served
