"""Gap filling and zero-phase smoothing of tracks."""
from __future__ import annotations

import numpy as np

from lipsync.temporal import fill_gaps, savgol_window, segments, smooth


def test_segments():
    assert segments(np.array([0, 1, 1, 0, 1], bool)) == [(1, 3), (4, 5)]
    assert segments(np.zeros(3, bool)) == []


def test_short_gaps_are_interpolated_long_and_edge_gaps_are_not():
    t = np.arange(40, dtype=np.float32)
    values = np.stack([t, 2 * t], -1)
    known = np.ones(40, bool)
    known[[0, 1]] = False          # at the start: never invented
    known[10:13] = False           # 3 frames: filled
    known[20:30] = False           # 10 frames: too long
    known[39] = False              # at the end
    filled, valid, interpolated = fill_gaps(values, known, max_gap=5)
    assert np.allclose(filled[10:13], values[10:13])  # linear data is filled exactly
    assert interpolated[10:13].all() and interpolated.sum() == 3
    assert not valid[[0, 1, 39]].any() and not valid[20:30].any()
    assert np.isnan(filled[20:30]).all() and np.isnan(filled[[0, 1, 39]]).all()


def test_smoothing_removes_jitter_without_lagging_the_lips():
    """The pipeline's setting (0.2 s window, cubic) at 25 fps: less jitter, lips neither late nor damped."""
    fps = 25.0
    window = savgol_window(fps, 0.2)
    valid = np.ones(250, bool)
    rng = np.random.default_rng(0)
    jitter = rng.normal(0, 1.0, (250, 1))
    assert np.std(smooth(jitter, valid, window=window, polyorder=3)[10:-10]) < 0.8 * np.std(jitter[10:-10])
    t = np.arange(250) / fps
    mouth = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t)  # 4 Hz: syllable rate
    out = smooth(mouth[:, None], valid, window=window, polyorder=3)[:, 0]
    assert np.ptp(out[10:-10]) > 0.9 * np.ptp(mouth[10:-10]), "mouth openings keep their amplitude"
    lags = np.arange(-3, 4)
    corr = [np.corrcoef(np.roll(out, k)[10:-10], mouth[10:-10])[0, 1] for k in lags]
    assert lags[int(np.argmax(corr))] == 0, "zero-phase: no frame of delay"


def test_smoothing_stays_inside_valid_segments():
    values = np.arange(30, dtype=np.float32)[:, None] ** 2
    valid = np.ones(30, bool)
    valid[12:15] = False
    values[12:15] = 1e6
    out = smooth(values, valid, window=5, polyorder=2)
    assert np.allclose(out[valid], values[valid], atol=1e-2)  # quadratics are kept exactly, no leak
    assert (out[12:15] == 1e6).all()


def test_cuts_are_found_and_nothing_is_smoothed_across_them():
    from lipsync.temporal import detect_cuts

    rng = np.random.default_rng(0)
    base = rng.uniform(0, 100, (468, 3)).astype(np.float32)
    t = np.arange(60)
    drift = np.stack([20 * np.sin(t / 10.0), 5 * np.cos(t / 7.0), 0 * t], -1)  # smooth head motion
    lm = base[None] + drift[:, None, :].astype(np.float32) + rng.normal(0, 0.1, (60, 468, 3)).astype(np.float32)
    lm[30:, :, 0] += 15.0  # an edit: the next shot starts with the head 15% of the face width away
    points = np.arange(0, 468, 5)
    cuts = detect_cuts(lm, points)
    assert np.flatnonzero(cuts).tolist() == [30]
    glitch = lm.copy()
    glitch[45, :, 0] += 15.0  # one bad frame jumps there and back: not a cut
    assert np.flatnonzero(detect_cuts(glitch, points)).tolist() == [30]
    out = smooth(lm, np.ones(60, bool), window=7, polyorder=2, breaks=cuts)
    assert np.abs(out[27:33, :, 0] - lm[27:33, :, 0]).mean() < 0.5  # no blur of the two shots into each other
    known = np.ones(60, bool)
    known[29:32] = False
    _, valid, _ = fill_gaps(lm, known, max_gap=5, breaks=cuts)
    assert not valid[29:32].any(), "a gap that contains a cut is not interpolated"
