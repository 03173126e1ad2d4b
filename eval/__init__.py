"""Evaluation: ``python -m eval.run`` (metrics, baselines, reports) and ``python -m eval.bench`` (performance)."""
