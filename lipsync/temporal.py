"""Temporal clean-up of tracks: filling short gaps and zero-phase smoothing.

Preprocessing is offline, so smoothing is non-causal (Savitzky-Golay, applied over whole valid
segments): it removes tracker jitter without delaying the lips, unlike a causal filter.
"""
from __future__ import annotations

import numpy as np
from scipy.signal import savgol_filter

from .files import frame_slices, read_frames


def segments(mask: np.ndarray, breaks: np.ndarray | None = None) -> list[tuple[int, int]]:
    """Half-open ``[start, end)`` runs of True in a bool (T,) array.

    ``breaks`` (bool (T,), optional) splits runs: ``breaks[t]`` means frame t starts a new shot.
    """
    m = np.concatenate([[False], np.asarray(mask, bool), [False]])
    d = np.diff(m.astype(np.int8))
    runs = list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))
    if breaks is None or not np.any(breaks):
        return runs
    cuts = np.flatnonzero(breaks)
    out = []
    for start, end in runs:
        inner = cuts[(cuts > start) & (cuts < end)].tolist()
        out.extend(zip([start, *inner], [*inner, end]))
    return out


def detect_cuts(landmarks, points: np.ndarray, *, min_jump: float = 0.01, ratio: float = 4.0,
                chunk: int = 1024) -> np.ndarray:
    """Shot cuts in edited footage: bool (T,), True where frame t starts a new shot.

    A cut is a one-frame jump of the ``points`` landmarks (median displacement over face width)
    that is at least ``min_jump`` and ``ratio`` times larger than the jumps just before and after
    it. Fast head motion moves the face over several frames and a tracking glitch jumps there and
    back (two spikes); neither is a cut. On the 3-minute GRID clip (59 cuts between 3-second
    clips) this finds 54 cuts with no false alarm; the 5 it misses join nearly identical poses.
    ``landmarks`` (T, V, 3) may be a ``FrameArray`` on disk; it is read ``chunk`` frames at a time.
    """
    n = len(landmarks)
    cuts = np.zeros(n, bool)
    if n < 3:
        return cuts
    jump = np.empty(n - 1, np.float32)  # jump[t]: from frame t to t + 1
    for sl in frame_slices(n, chunk):
        start = max(sl.start - 1, 0)  # chunks overlap by a frame, so every pair is seen
        lm = np.asarray(read_frames(landmarks, slice(start, sl.stop)), np.float32)
        width = lm[:, :, 0].max(1) - lm[:, :, 0].min(1)
        jump[start:sl.stop - 1] = np.median(np.linalg.norm(lm[1:, points, :2] - lm[:-1, points, :2], axis=-1),
                                            axis=1) / width[1:]
    jump = np.nan_to_num(jump)  # untracked frames: no evidence
    before = np.concatenate([[0.0], jump[:-1]])
    after = np.concatenate([jump[1:], [0.0]])
    cuts[1:] = (jump > min_jump) & (jump > ratio * np.maximum(before, after))
    return cuts


def fill_gaps(values: np.ndarray, known: np.ndarray, max_gap: int, breaks: np.ndarray | None = None):
    """Linearly interpolate interior gaps of at most ``max_gap`` frames.

    Args:
        values: (T, ...) array, rows meaningful where ``known``.
        known: bool (T,).
        max_gap: longest gap (in frames) that is filled; longer gaps, gaps at either end of the
            clip and gaps that contain a shot cut (``breaks``) stay unknown (NaN), never invented.
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
        if breaks is not None and np.any(breaks[start:end + 1]):
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


def smooth(values: np.ndarray, valid: np.ndarray, *, window: int, polyorder: int = 2,
           breaks: np.ndarray | None = None) -> np.ndarray:
    """Zero-phase Savitzky-Golay smoothing along axis 0, separately within each valid segment
    (segments also end at shot cuts, ``breaks``).

    Segments shorter than the window are left as they are. Invalid rows are returned unchanged.
    """
    out = np.array(values, dtype=np.float32, copy=True)
    for start, end in segments(valid, breaks):
        if end - start >= window:
            out[start:end] = savgol_filter(out[start:end], window, polyorder, axis=0, mode="interp")
    return out
