"""Audio/video sync: find how far the sound is shifted against the lips, per shot, and undo it.

Footage is often out of sync: an export that shifted the audio, or clips joined with audio a
little longer than their video, so the offset grows from shot to shot (the 3-minute GRID training
video drifts from 0 to over 1 s late). A model trained on such data learns nothing about lips.

For each shot we correlate the speech envelope (log energy in 40 ms windows, 10 ms steps) with the
mouth opening of the tracked face, over offsets of +-1.5 s; the offsets of all shots are then
fitted together (see ``estimate_sync``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SR = 16000
STEP = 160      # 10 ms
WIN = 640       # 40 ms


@dataclass(frozen=True)
class ShotSync:
    start: int          # first frame of the shot
    end: int            # one past the last frame
    measured: float     # best offset of this shot alone, seconds (NaN: too short); informative only
    correlation: float  # its correlation (NaN: not measurable)
    offset: float       # offset applied, seconds: the audio at t + offset belongs to frame time t


BLOCK = 1 << 20  # samples squared and summed at once by ``envelope`` (bounded memory on long audio)


def envelope(audio: np.ndarray) -> np.ndarray:
    """Log RMS energy at 100 Hz: float32 (C,), column k centred on sample k * STEP.

    Window energies are differences of the running sum of squares (float64), accumulated a
    block at a time with the running total carried over, so the sums are those of one pass."""
    x = np.asarray(audio, np.float32)
    half = WIN // 2
    padded = len(x) + 2 * half  # the signal with half a window of silence at either end
    n = 1 + max(0, (padded - WIN)) // STEP
    starts = np.arange(n) * STEP
    want = np.concatenate([starts, starts + WIN])  # running-sum positions needed, c[j] = sum of j squares
    order = np.argsort(want, kind="stable")
    ws = want[order]
    at = np.empty(len(want))
    total = 0.0
    for b0 in range(0, padded, BLOCK):
        b1 = min(padded, b0 + BLOCK)
        seg = np.zeros(b1 - b0 + 1)
        seg[0] = total
        lo, hi = max(b0, half), min(b1, half + len(x))
        if hi > lo:
            seg[1 + lo - b0:1 + hi - b0] = x[lo - half:hi - half].astype(np.float64) ** 2
        c = np.cumsum(seg)  # c[k] = running sum at position b0 + k
        i0, i1 = np.searchsorted(ws, b0, "left"), np.searchsorted(ws, b1, "right")
        at[order[i0:i1]] = c[ws[i0:i1] - b0]
        total = c[-1]
    if padded == 0:
        at[:] = 0.0
    energy = (at[n:] - at[:n]) / WIN
    return np.log(energy + 1e-8).astype(np.float32)


def _sample(env: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Envelope at ``times`` seconds (linear interpolation; silence outside)."""
    pos = times * SR / STEP
    floor = float(env.min()) if len(env) else 0.0
    return np.interp(pos, np.arange(len(env)), env, left=floor, right=floor)


OFFSETS = np.round(np.arange(-150, 151) * 0.01, 2)  # candidate offsets, seconds


def correlation_curve(env: np.ndarray, mouth: np.ndarray, frames: np.ndarray, fps: float) -> np.ndarray:
    """Correlation (len(OFFSETS),) between the envelope shifted by each offset and ``mouth`` at ``frames``."""
    t = (frames + 0.5) / fps
    m = mouth - mouth.mean()
    if m.std() < 1e-6 or len(frames) < 10:
        return np.full(len(OFFSETS), np.nan)
    a = np.stack([_sample(env, t + o) for o in OFFSETS])  # (O, N)
    a = a - a.mean(1, keepdims=True)
    return (a @ m) / (np.linalg.norm(a, axis=1) * np.linalg.norm(m) + 1e-12)


def estimate_sync(audio: np.ndarray, mouth: np.ndarray, valid: np.ndarray, cuts: np.ndarray, fps: float, *,
                  min_shot_s: float = 1.0, max_drift: float = 0.012, min_gain: float = 0.1,
                  min_correlation: float = 0.3, min_evidence_s: float = 20.0) -> tuple[list[ShotSync], dict]:
    """Per-shot audio offsets; ``mouth`` float (T,) mouth opening.

    The offset is modelled as ``a + b * t`` over the whole clip (a constant shift, plus a drift
    for joined clips whose audio runs a little long), fitted by maximizing the length-weighted sum
    of every shot's correlation curve; one shot alone is too short to be trusted, all together
    are not. The shift is applied only when it clearly beats leaving the audio as it is (mean
    correlation at least ``min_gain`` higher, and at least ``min_correlation``) and rests on at
    least ``min_evidence_s`` of measured shots: speech is rhythmic, so on a few seconds a wrong
    offset can correlate as well as the right one (a 3-second GRID sentence that is in sync peaks
    at +1.1 s). A drift is fitted only across three or more shots. Returns the shots and a summary.
    """
    n = len(mouth)
    env = envelope(audio)
    bounds = [0, *(np.flatnonzero(cuts[1:]) + 1).tolist(), n] if n else [0]
    shots = [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    curves, weights, centres = [], [], []
    for a, b in shots:
        ok = valid[a:b] & np.isfinite(mouth[a:b])
        frames = np.arange(a, b)[ok]
        c = correlation_curve(env, mouth[frames], frames, fps) if len(frames) >= min_shot_s * fps else np.full(len(OFFSETS), np.nan)
        curves.append(c)
        weights.append(np.sqrt(len(frames)) if np.isfinite(c).all() else 0.0)
        centres.append((a + b) / 2 / fps)
    curves, weights, centres = np.array(curves).reshape(len(shots), -1), np.array(weights), np.array(centres)
    summary = {"model": "offset = a + b * t", "a_s": 0.0, "b_s_per_s": 0.0, "correlation_before": None,
               "correlation_after": None, "applied": False}
    use = weights > 0
    if use.any():
        cw, w, tc = np.nan_to_num(curves[use]), weights[use] / weights[use].sum(), centres[use]
        drifts = np.linspace(-max_drift, max_drift, 49) if use.sum() >= 3 else np.zeros(1)
        evidence = float((weights[use] ** 2).sum() / fps)  # seconds of measured frames
        best = (-np.inf, 0.0, 0.0)
        for b in drifts:
            shifted = np.stack([np.interp(OFFSETS + b * t, OFFSETS, c, left=-1, right=-1) for c, t in zip(cw, tc)])
            score = w @ shifted  # (O,)
            k = int(np.argmax(score))
            if score[k] > best[0]:
                best = (float(score[k]), float(OFFSETS[k]), float(b))
        before = float(w @ cw[:, len(OFFSETS) // 2])
        summary.update(correlation_before=round(before, 3), correlation_after=round(best[0], 3),
                       evidence_s=round(evidence, 1), best_a_s=round(best[1], 3), best_b_s_per_s=round(best[2], 6))
        if best[0] >= min_correlation and best[0] - before >= min_gain and evidence >= min_evidence_s:
            summary.update(a_s=round(best[1], 3), b_s_per_s=round(best[2], 6), applied=True)
    out = []
    for (a, b), c, t in zip(shots, curves, centres):
        k = int(np.nanargmax(c)) if np.isfinite(c).any() else None
        off = summary["a_s"] + summary["b_s_per_s"] * t
        out.append(ShotSync(int(a), int(b), float(OFFSETS[k]) if k is not None else float("nan"),
                            float(c[k]) if k is not None else float("nan"), round(float(off), 3)))
    return out, summary


def realign_audio(audio: np.ndarray, shots: list[ShotSync], fps: float, num_frames: int) -> np.ndarray:
    """The audio re-cut so each shot's frames get the sound at their own offset; exactly
    ``num_frames / fps`` seconds, silence where the source has none."""
    total = int(round(num_frames / fps * SR))
    out = np.zeros(total, np.float32)
    x = np.asarray(audio, np.float32)
    for s in shots:
        a = int(round(s.start / fps * SR))
        b = int(round(s.end / fps * SR)) if s.end < num_frames else total
        src = a + int(round(s.offset * SR))
        lo, hi = max(0, src), min(len(x), src + (b - a))
        if hi > lo:
            out[a + (lo - src):a + (hi - src)] = x[lo:hi]
    return out
