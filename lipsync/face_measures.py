"""Measures of the face read off landmarks or vertices: mouth opening, eye opening, face width.

Used by preprocessing (reference-frame choice, quality warnings, the prepared clip's
``mouth_opening``) and by evaluation (the mouth opening of re-tracked outputs).
"""
from __future__ import annotations

import numpy as np

from .topology import INNER_LIP_BOTTOM, INNER_LIP_TOP, LEFT_EYE_LIDS, LEFT_EYE_OUTER, MOUTH_CORNERS, RIGHT_EYE_LIDS, \
    RIGHT_EYE_OUTER


def face_measures(landmarks: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame mouth opening, eye opening (both relative to eye distance) and face width in pixels,
    from image-space landmarks (T, V, 3)."""
    eye = np.linalg.norm(landmarks[:, LEFT_EYE_OUTER, :2] - landmarks[:, RIGHT_EYE_OUTER, :2], axis=-1)
    mouth = np.linalg.norm(landmarks[:, INNER_LIP_TOP] - landmarks[:, INNER_LIP_BOTTOM], axis=-1) / eye
    eyes = 0.5 * (np.linalg.norm(landmarks[:, RIGHT_EYE_LIDS[0]] - landmarks[:, RIGHT_EYE_LIDS[1]], axis=-1)
                  + np.linalg.norm(landmarks[:, LEFT_EYE_LIDS[0]] - landmarks[:, LEFT_EYE_LIDS[1]], axis=-1)) / eye
    width = landmarks[:, :, 0].max(1) - landmarks[:, :, 0].min(1)
    return {"mouth": mouth, "eyes": eyes, "face_width": width}


def mouth_opening(vertices: np.ndarray) -> np.ndarray:
    """Inner-lip gap over mouth-corner distance (T,), from pose-normalized vertices (T, V, 3)."""
    gap = np.linalg.norm(vertices[:, INNER_LIP_TOP] - vertices[:, INNER_LIP_BOTTOM], axis=-1)
    width = np.linalg.norm(vertices[:, MOUTH_CORNERS[0]] - vertices[:, MOUTH_CORNERS[1]], axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):  # excluded frames: NaN
        return gap / width


def mouth_series(vertices, valid: np.ndarray) -> np.ndarray:
    """``mouth_opening`` of every frame, NaN in frames that are not ``valid`` (T,); ``vertices``
    may be a ``FrameArray`` on disk (read a chunk at a time)."""
    from .files import map_frames

    return np.where(valid, map_frames(lambda v: mouth_opening(np.nan_to_num(v)), vertices), np.nan)
