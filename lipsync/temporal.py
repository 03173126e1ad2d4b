"""Temporal clean-up of tracks: filling short gaps and zero-phase smoothing.

Preprocessing is offline, so smoothing is non-causal (Savitzky-Golay, applied over whole valid
segments): it removes tracker jitter without delaying the lips, unlike a causal filter.
"""
from __future__ import annotations

import numpy as np
from scipy.signal import savgol_filter


def segments(mask: np.ndarray) -> list[tuple[int, int]]:
    """Half-open ``[start, end)`` runs of True in a bool (T,) array."""
    m = np.concatenate([[False], np.asarray(mask, bool), [False]])
    d = np.diff(m.astype(np.int8))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


def fill_gaps(values: np.ndarray, known: np.ndarray, max_gap: int):
    """Linearly interpolate interior gaps of at most ``max_gap`` frames.

    Args:
        values: (T, ...) array, rows meaningful where ``known``.
        known: bool (T,).
        max_gap: longest gap (in frames) that is filled; longer gaps and gaps at either end of the
            clip stay unknown (NaN), never invented.
    Returns:
        (filled values with NaN where still unknown, bool (T,) valid, bool (T,) interpolated)
    """
    known = np.asarray(known, bool)
    out = np.array(values, dtype=np.float32, copy=True)
    out[~known] = np.nan
    interpolated = np.zeros_like(known)
    for start, end in segments(~known):
        if start == 0 or end == len(known) or end - start > max_gap:
            continue
        a, b = out[start - 1], out[end]
        w = (np.arange(start, end) - (start - 1)) / (end - (start - 1))
        out[start:end] = a[None] + w.reshape(-1, *([1] * a.ndim)) * (b - a)[None]
        interpolated[start:end] = True
    return out, known | interpolated, interpolated


def savgol_window(fps: float, seconds: float) -> int:
    """An odd Savitzky-Golay window of about ``seconds`` at ``fps`` (at least 5 frames)."""
    n = max(5, int(round(seconds * fps)))
    return n if n % 2 else n + 1


def smooth(values: np.ndarray, valid: np.ndarray, *, window: int, polyorder: int = 2) -> np.ndarray:
    """Zero-phase Savitzky-Golay smoothing along axis 0, separately within each valid segment.

    Segments shorter than the window are left as they are. Invalid rows are returned unchanged.
    """
    out = np.array(values, dtype=np.float32, copy=True)
    for start, end in segments(valid):
        if end - start >= window:
            out[start:end] = savgol_filter(out[start:end], window, polyorder, axis=0, mode="interp")
    return out
