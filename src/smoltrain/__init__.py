"""smoltrain: train tiny models from scratch."""

__version__ = "0.1.0"

from smoltrain.api import LoadedRun, evaluate, load  # noqa: E402

__all__ = ["LoadedRun", "evaluate", "load", "__version__"]
