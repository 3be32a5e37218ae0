"""Evaluators that score a model's predictions beyond token accuracy (ARC voting pass@k, ...)."""

from smoltrain.eval.arc import ARCEvaluator

__all__ = ["ARCEvaluator"]
