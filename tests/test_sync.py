"""Audio/video sync: known offsets and drifts between speech and lips are found and undone."""
from __future__ import annotations

import numpy as np

from lipsync.sync import OFFSETS, envelope, estimate_sync, realign_audio

FPS = 25.0
SR = 16000
OFFSET_TOL_S = 0.03  # a bit less than one video frame


def synthetic_talk(seconds: float, seed: int = 0):
    """A mouth-opening track with syllable-like bursts, and speech (noise) whose loudness follows it."""
    rng = np.random.default_rng(seed)
    n = int(seconds * FPS)
    t = np.arange(n) / FPS
    mouth = np.zeros(n)
    for start in np.cumsum(rng.uniform(0.15, 0.45, int(seconds * 5))):
        if start < seconds:
            mouth += np.exp(-0.5 * ((t - start) / 0.06) ** 2) * rng.uniform(0.3, 1.0)
    mouth *= (np.sin(2 * np.pi * t / 7.0) > -0.6)  # pauses between phrases
    ts = np.arange(int(seconds * SR)) / SR
    loud = np.interp(ts, t + 0.5 / FPS, mouth)
    audio = (rng.normal(0, 1, len(ts)) * (0.002 + 0.3 * loud)).astype(np.float32)
    return mouth.astype(np.float32), audio


def delay(audio: np.ndarray, seconds: float) -> np.ndarray:
    k = int(round(seconds * SR))
    return np.concatenate([np.zeros(k, np.float32), audio])[:len(audio)] if k >= 0 else np.concatenate([audio[-k:], np.zeros(-k, np.float32)])


def test_in_sync_audio_is_left_alone():
    mouth, audio = synthetic_talk(40)
    shots, summary = estimate_sync(audio, mouth, np.ones(len(mouth), bool), np.zeros(len(mouth), bool), FPS)
    assert not summary["applied"]
    assert abs(summary["best_a_s"]) <= OFFSET_TOL_S
    assert all(s.offset == 0 for s in shots)


def test_a_constant_offset_is_found_and_undone():
    mouth, audio = synthetic_talk(40)
    late = delay(audio, 0.4)  # the sound comes 0.4 s after the lips
    valid, cuts = np.ones(len(mouth), bool), np.zeros(len(mouth), bool)
    shots, summary = estimate_sync(late, mouth, valid, cuts, FPS)
    assert summary["applied"] and abs(summary["a_s"] - 0.4) <= OFFSET_TOL_S
    fixed = realign_audio(late, shots, FPS, len(mouth))
    assert len(fixed) == round(len(mouth) / FPS * SR)
    _, again = estimate_sync(fixed, mouth, valid, cuts, FPS)
    assert not again["applied"] and abs(again["best_a_s"]) <= OFFSET_TOL_S


def test_a_drift_across_joined_shots_is_found():
    """Twelve 5-second shots whose audio is 30 ms later each time (as when clips are joined)."""
    parts_m, parts_a = [], []
    for k in range(12):
        m, a = synthetic_talk(5, seed=k)
        parts_m.append(m)
        parts_a.append(delay(a, 0.03 * k))
    mouth, audio = np.concatenate(parts_m), np.concatenate(parts_a)
    cuts = np.zeros(len(mouth), bool)
    cuts[np.arange(1, 12) * len(parts_m[0])] = True
    shots, summary = estimate_sync(audio, mouth, np.ones(len(mouth), bool), cuts, FPS)
    assert summary["applied"] and len(shots) == 12
    expected = 0.03 * np.arange(12)
    got = np.array([s.offset for s in shots])
    assert np.abs(got - expected).max() <= 2 * OFFSET_TOL_S


def test_short_clips_are_never_shifted():
    """A few seconds of rhythmic speech can correlate at a wrong offset: no evidence, no change."""
    mouth, audio = synthetic_talk(6)
    _, summary = estimate_sync(delay(audio, 0.5), mouth, np.ones(len(mouth), bool), np.zeros(len(mouth), bool), FPS)
    assert not summary["applied"]


def test_envelope_timing():
    audio = np.zeros(SR, np.float32)
    audio[8000:8160] = 1.0  # a click at 0.5 s
    env = envelope(audio)
    assert abs(int(np.argmax(env)) * 0.01 - 0.5) <= 0.02
    assert OFFSETS[0] == -1.5 and OFFSETS[-1] == 1.5
