"""Run directories: their layout (:class:`RunDir`), checkpoint format and loading a trained run."""

from smoltrain.runs.run_dir import RunDir

__all__ = ["RunDir"]
