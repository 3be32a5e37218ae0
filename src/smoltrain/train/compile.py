"""When and how the trainer compiles its training step (``compile``, ``compile_mode``).

``compile=auto`` turns ``torch.compile`` on where it was measured to pay (bench/RESULTS.md): on CUDA, and on a CPU
for models of at least ``COMPILE_AUTO_MIN_PARAMETERS`` parameters trained for at least ``COMPILE_AUTO_MIN_STEPS``
steps. The CPU figures are +17–22% steps/s for TRM's CPU shapes (~100k parameters) and the LM's (1.3M and 26M),
and the first call costs tens of seconds of compilation, which a short run or a tiny model (the test suite's)
never earns back.

When training compiles, evaluation runs compiled too (``compile_for_eval``): the same module, so the same weights
(the EMA ones swapped in place when EMA is on), wrapped a second time with ``dynamic=False``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

COMPILE_AUTO_MIN_PARAMETERS = 80_000  # trm-sudoku-cpu's model is ~103k; the tests' tiny ones ~30k
COMPILE_AUTO_MIN_STEPS = 500


def resolve_compile(setting: bool | Literal["auto"], device: torch.device, parameters: int, total_steps: int) -> bool:
    """Whether to compile the training step: ``setting`` itself when it is a bool, else the ``auto`` rule above."""
    if setting != "auto":
        return bool(setting)
    if device.type == "cuda":
        return True
    return device.type == "cpu" and parameters >= COMPILE_AUTO_MIN_PARAMETERS and total_steps >= COMPILE_AUTO_MIN_STEPS


def resolve_compile_mode(mode: str, device: torch.device) -> tuple[str | None, str | None]:
    """The mode to pass to ``torch.compile`` (None: its default) and a note for the log when the asked one cannot
    run here: CUDA graphs (``reduce-overhead``) need CUDA, so elsewhere it falls back to the default mode."""
    if mode == "default":
        return None, None
    if mode == "reduce-overhead" and device.type != "cuda":
        return None, f"compile_mode=reduce-overhead (CUDA graphs) needs CUDA; on {device.type} the default mode runs"
    return mode, None


def compile_for_eval(model: nn.Module, mode: str | None) -> nn.Module:
    """``model`` compiled for evaluation: a second wrapper of the same module, whose forward is compiled for eval
    mode under inference mode (dynamo guards on both, so these graphs never replace the training step's).

    ``dynamic=False`` because an evaluation's shapes are few and fixed: full batches and the split's short last
    one (the same subset at every evaluation), each compiled once and reused at every later evaluation, where
    dynamo would otherwise turn the batch dimension dynamic at the second shape it meets (a slower graph for every
    batch). What is not the forward stays eager: methods the wrapper hands through to the module (TRM's
    ``initial_carry``, the LM's ``generate``, whose growing KV cache would otherwise compile a graph per length)
    call the module itself. TRM's ACT loop calls the forward once per step with carries of one shape, so its steps
    share one graph."""
    return torch.compile(model, mode=mode, dynamic=False)
