"""Mouth metrics against the ground truth: how much of the teeth the output shows (teeth,
teeth_corr) and how much its mouth moves (articulation, opening).

Both videos are re-tracked with MediaPipe (the cached tracking of ``lipsync.py``), so each is
judged from its own lip contour.

Teeth. A pixel inside a frame's inner-lip contour is a tooth when it is at least as light as the
speaker's lips and no redder nor more saturated than the speaker's skin (CIELAB L*, a*, chroma).
Lips are darker and redder than skin; the mouth's cavity and the tongue are dark or red; teeth are
light and pale. The lip and skin colours are medians over the real frames of the clip (the lip
ring between the outer and inner contours; patches on both cheeks), and the same thresholds judge
the output, so its teeth are measured by the speaker's own standard. A frame's teeth area is
its tooth pixels over the squared mouth width (corner to corner) of the same face, so the figure
does not depend on the video's size. On the GRID test fixture this finds no teeth in any frame
with closed lips and 5-8% of the squared mouth width when the teeth show fully.

Articulation. The mouth opening of each frame (inner-lip gap over mouth width, pose-normalized;
``lipsync.py``'s ``mouth_series``) of the output and of the real video: the ratio of their
standard deviations over the clip (1 = the output's mouth moves as much as the speaker's; below 1
it under-articulates) and of their means (1 = it opens as wide on average).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lipsync.model.mouth_bank import is_tooth, lab
from lipsync.topology import MOUTH_CORNERS

from ..core import MetricValue, Sample
from . import Metric, register
from .lipsync import MIN_CORR_FRAMES, _needs_reference, _topology, _tracked_pair, _tracking_extra, mouth_series, pearson

TEETH_MIN_AREA = 0.005     # teeth area (of the squared mouth width) from which a real frame "shows teeth"
MIN_TEETH_FRAMES = 3       # real frames with teeth needed for the teeth ratio
SKIN_VERTICES = (50, 280, 205, 425)   # cheeks: under each eye and beside each mouth corner
SKIN_PATCH = 0.08          # half-size of each skin patch, of the mouth width
COLOUR_FRAMES = 50         # real frames (evenly spaced) the speaker's colours are taken from


def polygon_mask(shape: tuple[int, int], points: np.ndarray, origin=(0, 0)) -> np.ndarray:
    """bool (H, W) mask of the polygon ``points`` (N, 2) in pixels, given relative to ``origin``
    (x, y) of the mask; drawn at 1/16 pixel precision."""
    import cv2

    mask = np.zeros(shape, np.uint8)
    pts = np.round((np.asarray(points, np.float64)[:, :2] - origin) * 16).astype(np.int32)
    cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def _mouth_window(points: np.ndarray, height: int, width: int, margin: float = 0.3):
    """Integer x0, y0, x1, y1 around the points with ``margin`` of their size, inside the image."""
    lo, hi = points[:, :2].min(0), points[:, :2].max(0)
    pad = margin * (hi - lo).max()
    x0, y0 = np.floor(lo - pad).astype(int)
    x1, y1 = np.ceil(hi + pad).astype(int) + 1
    return max(0, x0), max(0, y0), min(width, x1), min(height, y1)


def mouth_width(landmarks_frame: np.ndarray) -> float:
    a, b = MOUTH_CORNERS
    return float(np.linalg.norm(landmarks_frame[a, :2] - landmarks_frame[b, :2]))


@dataclass(frozen=True)
class SpeakerColours:
    """Median CIELAB colour of the speaker's lips and skin, and the tooth thresholds they give."""
    lip_l: float
    lip_a: float
    skin_l: float
    skin_a: float
    skin_chroma: float

    def is_tooth(self, L: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Pixels as light as the lips and no redder nor more saturated than the skin (the rule the
        mouth bank counts teeth by in the atlas)."""
        return is_tooth(L, a, b, self.lip_l, self.skin_a, self.skin_chroma)


def speaker_colours(frames: np.ndarray, landmarks: np.ndarray) -> SpeakerColours | None:
    """The speaker's lip and skin colours from real frames (T, H, W, 3) and their landmarks
    (T, 468, 3); None when no frame is tracked."""
    topo = _topology()
    inner, outer = topo.regions["lips_inner"], topo.regions["lips_outer"]
    h, w = frames.shape[1:3]
    ok = np.flatnonzero(np.isfinite(landmarks).all(axis=(1, 2)))
    if len(ok) == 0:
        return None
    lips, skin = [], []
    for t in ok[np.unique(np.linspace(0, len(ok) - 1, min(COLOUR_FRAMES, len(ok))).round().astype(int))]:
        p = landmarks[t]
        x0, y0, x1, y1 = _mouth_window(p[outer], h, w)
        L, a, b = lab(frames[t, y0:y1, x0:x1])
        ring = polygon_mask(L.shape, p[outer], (x0, y0)) & ~polygon_mask(L.shape, p[inner], (x0, y0))
        if ring.any():
            lips.append((np.median(L[ring]), np.median(a[ring])))
        r = max(1, int(round(SKIN_PATCH * mouth_width(p))))
        for v in SKIN_VERTICES:
            cx, cy = np.round(p[v, :2]).astype(int)
            if r <= cx < w - r and r <= cy < h - r:
                L, a, b = lab(frames[t, cy - r:cy + r + 1, cx - r:cx + r + 1])
                skin.append((np.median(L), np.median(a), np.median(np.hypot(a, b))))
    if not lips or not skin:
        return None
    lip_l, lip_a = np.median(np.array(lips), axis=0)
    skin_l, skin_a, skin_c = np.median(np.array(skin), axis=0)
    return SpeakerColours(float(lip_l), float(lip_a), float(skin_l), float(skin_a), float(skin_c))


def teeth_areas(frames: np.ndarray, landmarks: np.ndarray, colours: SpeakerColours) -> np.ndarray:
    """Per-frame teeth area: tooth pixels inside the inner-lip contour over the squared mouth
    width, float64 (T,); NaN where the face is untracked."""
    inner = _topology().regions["lips_inner"]
    n = min(len(frames), len(landmarks))
    h, w = frames.shape[1:3]
    out = np.full(n, np.nan)
    for t in range(n):
        p = landmarks[t]
        if not np.isfinite(p).all():
            continue
        width = mouth_width(p)
        if width < 1:
            continue
        x0, y0, x1, y1 = _mouth_window(p[inner], h, w)
        if x1 <= x0 or y1 <= y0:
            out[t] = 0.0
            continue
        L, a, b = lab(frames[t, y0:y1, x0:x1])
        mask = polygon_mask(L.shape, p[inner], (x0, y0)) & colours.is_tooth(L, a, b)
        out[t] = mask.sum() / width ** 2
    return out


def teeth_pair(sample: Sample, settings: dict):
    """(output teeth areas, real teeth areas, tracking facts) of a sample, or a reason string in
    place of the areas when the speaker's colours cannot be measured."""
    reference = _needs_reference(sample)
    out_lm, ref_lm = _tracked_pair(sample, settings)
    extra = _tracking_extra(out_lm, ref_lm)
    colours = speaker_colours(reference[:len(ref_lm)], ref_lm)
    if colours is None:
        return None, None, {**extra, "reason": "no real frame with a tracked face to take the speaker's colours from"}
    n = len(ref_lm)
    extra["colours"] = {k: round(v, 2) for k, v in colours.__dict__.items()}
    return teeth_areas(sample.frames[:n], out_lm, colours), teeth_areas(reference[:n], ref_lm, colours), extra


def teeth_ratio(output: np.ndarray, real: np.ndarray) -> tuple[float, int]:
    """Mean teeth area of the output over that of the real video, over the frames where the real
    one shows teeth (and both are tracked); (NaN, frames) with fewer than ``MIN_TEETH_FRAMES``."""
    use = np.isfinite(output) & np.isfinite(real) & (real >= TEETH_MIN_AREA)
    n = int(use.sum())
    if n < MIN_TEETH_FRAMES:
        return float("nan"), n
    return float(output[use].mean() / real[use].mean()), n


def compute_teeth(sample: Sample, settings: dict) -> MetricValue:
    out, real, extra = teeth_pair(sample, settings)
    if out is None:
        return MetricValue(float("nan"), None, extra)
    ratio, n = teeth_ratio(out, real)
    extra.update(teeth_frames=n, output_mean_area=round(float(np.nanmean(out)), 5) if np.isfinite(out).any() else None,
                 real_mean_area=round(float(np.nanmean(real)), 5) if np.isfinite(real).any() else None)
    if not np.isfinite(ratio):
        extra["reason"] = f"the real video shows teeth in only {n} frames (need {MIN_TEETH_FRAMES})"
    return MetricValue(ratio, None, extra)


def compute_teeth_corr(sample: Sample, settings: dict) -> MetricValue:
    out, real, extra = teeth_pair(sample, settings)
    if out is None:
        return MetricValue(float("nan"), None, extra)
    ok = np.isfinite(out) & np.isfinite(real)
    if ok.sum() < MIN_CORR_FRAMES:
        return MetricValue(float("nan"), None, {**extra, "reason": f"only {int(ok.sum())} frames where both faces are tracked"})
    if (real[ok] >= TEETH_MIN_AREA).sum() < MIN_TEETH_FRAMES:
        return MetricValue(float("nan"), None, {**extra, "reason": "the real video shows (almost) no teeth"})
    r = pearson(out[ok], real[ok])
    if not np.isfinite(r):
        return MetricValue(float("nan"), None, {**extra, "reason": "the output shows no teeth"} if not out[ok].any() else extra)
    return MetricValue(r, None, extra)


# ---------------------------------------------------------------------------------------------
# articulation

def opening_ratios(output: np.ndarray, real: np.ndarray) -> dict:
    """Standard deviation and mean of the output's mouth opening over the real one's, over the
    frames where both are tracked: ``{"articulation", "opening", "frames"}`` (NaN when fewer than
    ``MIN_CORR_FRAMES`` frames or the real mouth does not move)."""
    output, real = np.asarray(output, np.float64), np.asarray(real, np.float64)
    n = min(len(output), len(real))
    ok = np.isfinite(output[:n]) & np.isfinite(real[:n])
    a, b = output[:n][ok], real[:n][ok]
    res = {"articulation": float("nan"), "opening": float("nan"), "frames": int(ok.sum())}
    if ok.sum() < MIN_CORR_FRAMES:
        return res
    if b.std() > 1e-9:
        res["articulation"] = float(a.std() / b.std())
    if b.mean() > 1e-9:
        res["opening"] = float(a.mean() / b.mean())
    return res


def _openings(sample: Sample, settings: dict):
    out_lm, ref_lm = _tracked_pair(sample, settings)
    r = opening_ratios(mouth_series(out_lm, sample.canonical), mouth_series(ref_lm, sample.canonical))
    return r, _tracking_extra(out_lm, ref_lm)


def compute_articulation(sample: Sample, settings: dict) -> MetricValue:
    r, extra = _openings(sample, settings)
    extra["opening"] = r["opening"]
    if not np.isfinite(r["articulation"]):
        extra["reason"] = (f"only {r['frames']} frames where both faces are tracked" if r["frames"] < MIN_CORR_FRAMES
                           else "the real mouth does not move")
    return MetricValue(r["articulation"], None, extra)


def compute_opening(sample: Sample, settings: dict) -> MetricValue:
    r, extra = _openings(sample, settings)
    extra["articulation"] = r["articulation"]
    if not np.isfinite(r["opening"]):
        extra["reason"] = f"only {r['frames']} frames where both faces are tracked"
    return MetricValue(r["opening"], None, extra)


register(Metric(
    name="teeth", better="target", target=1.0, needs_reference=True, unit="ratio to real",
    description="Visible teeth area of the output (light, pale pixels inside the re-tracked inner-lip contour, by the speaker's own lip and skin colours) over that of the real video, over the frames where the real one shows teeth; 1 = as much teeth as the speaker.",
    requires="mediapipe", compute=compute_teeth))
register(Metric(
    name="teeth_corr", better="higher", needs_reference=True, unit="",
    description="Pearson correlation between the per-frame teeth area of the output and of the real video (clips where the real one shows teeth).",
    requires="mediapipe", compute=compute_teeth_corr))
register(Metric(
    name="articulation", better="target", target=1.0, needs_reference=True, unit="ratio to real",
    description="Standard deviation of the output's mouth opening over that of the real video; 1 = moves as much as the speaker, below 1 = under-articulated.",
    requires="mediapipe", compute=compute_articulation))
register(Metric(
    name="opening", better="target", target=1.0, needs_reference=True, unit="ratio to real",
    description="Mean mouth opening of the output over that of the real video; 1 = opens as wide on average.",
    requires="mediapipe", compute=compute_opening))
