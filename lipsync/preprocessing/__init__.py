"""Preprocessing: one talking-head video -> a prepared clip (``lipsync.prepared``).

``preprocess(video, out, options=PreprocessOptions())`` runs the stages listed in ``pipeline``;
each stage lives in its own module here (``track``, ``reference``, ``unwrap``, ``lighting``,
``audio``, ``manifest``) and hands the next a typed result.
"""
from .options import PreprocessOptions
from .pipeline import preprocess

__all__ = ["PreprocessOptions", "preprocess"]
