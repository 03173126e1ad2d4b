"""Fine skin detail for the reference atlas, from one real training frame.

The reference atlas is a per-texel median of many frames: robust, but the median of slightly
misaligned frames loses the skin's fine grain (pores, stubble, small blemishes), and the network
predicts only a smooth change over it, so the synthesized lower face looks softer than the real
one. This module takes a real, ordinary training frame (``medoid_frame``: of the frames at
least as detailed as the typical one, the one whose lower face is nearest to the median at low
frequencies) and gives the median that frame's high frequencies (an image minus a Gaussian blur
of it, ``sigma`` texels) inside the animated region, the lips and mouth left out (those come
from the mouth bank or the network): the colours and shading stay the median's, the grain is a
real frame's. In the atlas's UV space the detail is attached to the skin, so it moves with the
mesh as the mouth opens.

Plain numpy and OpenCV; shapes: S the atlas size, (t, b, l, r) the animated crop in texels.
"""
from __future__ import annotations

import numpy as np

CANDIDATES = 400      # training frames (evenly spaced) searched for the medoid
COVERAGE = 0.98       # share of the region a candidate's atlas must cover
SIGMA = 1 / 40        # the high-pass's Gaussian, as a fraction of the atlas size (6.4 texels at 256)


def masked_blur(image: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of ``image`` (H, W, C) that only averages texels where ``weight`` (H, W) > 0."""
    import cv2

    w = weight.astype(np.float32)
    num = cv2.GaussianBlur(image.astype(np.float32) * w[..., None], (0, 0), sigma)
    den = cv2.GaussianBlur(w, (0, 0), sigma)
    return num / np.maximum(den, 1e-3)[..., None]


def medoid_frame(atlas, atlas_mask, frames: np.ndarray, reference: np.ndarray, region: np.ndarray,
                 crop, *, sigma: float, candidates: int = CANDIDATES) -> int | None:
    """The frame among ``frames`` whose atlas (T, S, S, 3) covers ``region`` (S, S) bool and is
    nearest to ``reference`` (S, S, 3) there, both blurred by ``sigma`` texels (mean absolute
    difference); None when none covers it."""
    t, b, l, r = crop
    reg = region[t:b, l:r]
    need = COVERAGE * reg.sum()
    frames = np.asarray(frames, np.int64)
    if not len(frames) or not reg.any():
        return None
    import cv2

    pick = frames[np.unique(np.linspace(0, len(frames) - 1, min(candidates, len(frames))).round().astype(np.int64))]
    ref = cv2.GaussianBlur(reference[t:b, l:r].astype(np.float32), (0, 0), sigma)
    found = []  # (frame, distance at low frequencies, energy of the high frequencies)
    for f in pick:
        seen = np.asarray(atlas_mask[f, t:b, l:r]) & reg
        if seen.sum() < need:
            continue
        a = np.asarray(atlas[f, t:b, l:r], np.float32)
        low = cv2.GaussianBlur(a, (0, 0), sigma)
        found.append((int(f), float(np.abs(low - ref)[seen].mean()), float(((a - low)[seen] ** 2).mean())))
    if not found:
        return None
    # Frames differ a lot in grain (focus, motion blur, compression), and the smoothest ones are
    # nearest to a median: so only frames at least as detailed as the typical one compete, and
    # they are compared at low frequencies (expression and shading).
    typical = np.median([e for _, _, e in found])
    return min((d, f) for f, d, e in found if e >= typical)[1]


def add_frame_detail(reference: np.ndarray, frame_atlas: np.ndarray, frame_mask: np.ndarray, weight: np.ndarray,
                     sigma: float) -> np.ndarray:
    """uint8 (S, S, 3): ``reference`` with its high frequencies replaced by those of
    ``frame_atlas`` (S, S, 3) where ``weight`` (S, S) is 1 (blended where it is between 0 and 1),
    on the texels ``frame_mask`` (S, S) marks as seen by the frame."""
    seen = np.asarray(frame_mask, bool) & (reference.max(-1) > 0)
    a, ref = np.asarray(frame_atlas, np.float32), reference.astype(np.float32)
    detail = (a - masked_blur(a, seen, sigma)) - (ref - masked_blur(ref, seen, sigma))
    return np.clip(ref + detail * (seen * weight)[..., None] + 0.5, 0, 255).astype(np.uint8)


def detailed_reference(reference: np.ndarray, atlas, atlas_mask, frames: np.ndarray, animated: np.ndarray,
                       mouth_weight: np.ndarray, crop) -> tuple[np.ndarray, int | None]:
    """The reference atlas with the medoid frame's skin detail added (see the module's text), and
    that frame's number (None, and the reference unchanged, when no frame covers the region).

    ``animated`` (S, S) bool: where synthesis draws the face; ``mouth_weight`` (S, S) in [0, 1]:
    1 on the lips and mouth, where no detail is added (fading to 0 in the skin around them)."""
    size = reference.shape[0]
    t, b, l, r = crop
    region = np.zeros((size, size), bool)
    region[t:b, l:r] = animated[t:b, l:r]
    region &= reference.max(-1) > 0
    sigma = SIGMA * size
    frame = medoid_frame(atlas, atlas_mask, frames, reference, region & (mouth_weight < 1), crop, sigma=sigma)
    if frame is None:
        return reference, None
    weight = region * (1.0 - np.clip(mouth_weight, 0, 1))
    return add_frame_detail(reference, atlas[frame], atlas_mask[frame], weight, sigma), frame
