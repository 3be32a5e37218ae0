"""smoltrain: train tiny models from scratch.

The package face is lazy: ``import smoltrain`` (and so ``smoltrain --help``) imports no torch; ``smoltrain.load``
and ``smoltrain.evaluate`` import the run loader on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from smoltrain.version import __version__

if TYPE_CHECKING:
    from smoltrain.runs.loading import LoadedRun, evaluate, load

_LAZY = {"LoadedRun", "evaluate", "load"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from smoltrain.runs import loading

        return getattr(loading, name)
    raise AttributeError(f"module 'smoltrain' has no attribute {name!r}")


__all__ = ["LoadedRun", "evaluate", "load", "__version__"]
