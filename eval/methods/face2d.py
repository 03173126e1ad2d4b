"""Aligned 2D face crops: no 3D, no lighting normalization (the 2D baselines' view of a face).

Each frame's landmarks are mapped onto a fixed 2D template by a similarity in the image plane
(rotation, uniform scale, translation), fitted on the stable landmarks (forehead, nose, eye
corners, cheekbones: ``lipsync.topology.STABLE_VERTICES``), so lips and jaw move inside the crop
while the head's in-plane motion is removed. Out-of-plane turns are *not* removed: that is the
difference from lipsync's 3D pose normalization that the ``no_pose_norm`` ablation measures.

Conventions (as in docs/COORDINATES.md): points are in pixels with pixel centres at ``i + 0.5``,
in the frame and in the S x S canvas alike. A crop transform ``M`` (2, 3) maps frame points to
canvas points, ``canvas = M[:, :2] @ p + M[:, 2]``; the template point ``v`` is where landmark ``v``
of the reference frame lands, so ``uv = points / S`` is an atlas layout in lipsync's sense.
OpenCV puts pixel centres at integers; ``_cv_matrix`` converts.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lipsync.common import check_shape

TEMPLATE_SIZE = 256   # canvas side S of the no_pose_norm atlas (lipsync's atlas size)
TEMPLATE_MARGIN = 0.1  # free border on each side of the face's landmark box, as a fraction of S
RIGHT_EYE_OUTER, LEFT_EYE_OUTER, NOSE_TIP = 33, 263, 1
ANTIALIAS_BELOW = 1 / 1.6  # crop scale (canvas px per frame px) under which frames are area-reduced first


@dataclass(frozen=True)
class CropTemplate:
    """Members:
        points: float32 (V, 2) canvas position of each landmark of the reference face (pixels,
            centres at i + 0.5; x right, y down), eye line horizontal, face centred.
        size: canvas side S in pixels.
    """
    points: np.ndarray
    size: int

    def resized(self, size: int) -> "CropTemplate":
        """The same layout on a ``size`` x ``size`` canvas."""
        return CropTemplate(points=(self.points * (size / self.size)).astype(np.float32), size=int(size))

    @property
    def uv(self) -> np.ndarray:
        """float32 (V, 2) in [0, 1]: the template as an atlas layout (u = x / S, v = y / S)."""
        return (self.points / self.size).astype(np.float32)


def make_template(reference: np.ndarray, size: int = TEMPLATE_SIZE, *, margin: float = TEMPLATE_MARGIN) -> CropTemplate:
    """The canvas layout from one frame's landmarks (V, 2 or 3): rotated so the outer eye corners
    are level, scaled so the landmarks' bounding box fills ``size * (1 - 2 margin)`` on its longer
    side, and centred."""
    p = np.asarray(reference, np.float64)[:, :2]
    if not np.isfinite(p).all():
        raise ValueError("make_template: the reference landmarks have non-finite values")
    d = p[LEFT_EYE_OUTER] - p[RIGHT_EYE_OUTER]
    a = -np.arctan2(d[1], d[0])
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    q = (p - p.mean(0)) @ rot.T
    lo, hi = q.min(0), q.max(0)
    scale = size * (1 - 2 * margin) / float((hi - lo).max())
    q = (q - (lo + hi) / 2) * scale + size / 2
    return CropTemplate(points=q.astype(np.float32), size=int(size))


def fit_similarity_2d(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares 2D similarity ``dst ~= s R src + t`` (Umeyama in the complex plane).

    Args:
        src: (..., N, 2) points; dst: (N, 2) or (..., N, 2).
    Returns:
        float64 (..., 2, 3) matrices ``[s R | t]``; NaN where ``src`` has a non-finite point.
    """
    src = np.asarray(src, np.float64)
    dst = np.broadcast_to(np.asarray(dst, np.float64), src.shape)
    zs = src[..., 0] + 1j * src[..., 1]
    zd = dst[..., 0] + 1j * dst[..., 1]
    ms, md = zs.mean(-1, keepdims=True), zd.mean(-1, keepdims=True)
    xs, xd = zs - ms, zd - md
    with np.errstate(invalid="ignore", divide="ignore"):
        a = (np.conj(xs) * xd).sum(-1) / (np.abs(xs) ** 2).sum(-1)  # s * exp(i theta)
    t = md[..., 0] - a * ms[..., 0]
    m = np.empty(src.shape[:-2] + (2, 3))
    m[..., 0, 0], m[..., 0, 1], m[..., 0, 2] = a.real, -a.imag, t.real
    m[..., 1, 0], m[..., 1, 1], m[..., 1, 2] = a.imag, a.real, t.imag
    return m


def crop_transforms(landmarks: np.ndarray, valid: np.ndarray, template: CropTemplate) -> np.ndarray:
    """Per-frame crop transforms: float32 (T, 2, 3) mapping each frame onto ``template``.

    Args:
        landmarks: (T, V, 3) or (T, V, 2) image-space landmarks (pixels); NaN where untracked.
        valid: bool (T,); invalid frames (and frames whose stable landmarks are not finite) get
            NaN matrices, which ``warp_crop`` and ``paste_back`` treat as "no face".
    """
    from lipsync.topology import load_topology

    check_shape("landmarks", landmarks, ["T", template.points.shape[0], None])
    stable = load_topology().regions["stable"]
    pts = np.asarray(landmarks, np.float64)[:, stable, :2]
    m = fit_similarity_2d(pts, template.points[stable])
    bad = ~np.asarray(valid, bool) | ~np.isfinite(m).all(axis=(1, 2))
    m[bad] = np.nan
    return m.astype(np.float32)


def transform_points(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Apply a crop transform (2, 3) to points (..., 2) -> (..., 2)."""
    return np.asarray(points, np.float64)[..., :2] @ np.asarray(m, np.float64)[:, :2].T + np.asarray(m, np.float64)[:, 2]


def crop_scale(m: np.ndarray) -> float:
    """Canvas pixels per frame pixel of a crop transform."""
    m = np.asarray(m, np.float64)
    return float(np.sqrt(abs(np.linalg.det(m[:, :2]))))


def _cv_matrix(m: np.ndarray) -> np.ndarray:
    """Our convention (pixel centres at i + 0.5) -> OpenCV's (centres at integers)."""
    m = np.asarray(m, np.float64)
    out = m.copy()
    out[:, 2] = m[:, :2] @ np.array([0.5, 0.5]) + m[:, 2] - 0.5
    return out


def warp_crop(frame: np.ndarray, m: np.ndarray, size: int, *, with_coverage: bool = False):
    """One frame (H, W, 3) uint8 -> its crop (S, S, 3) uint8 (bilinear; black outside the frame).

    A face that the crop shrinks by more than 1.6x is area-reduced first (integer factor), as
    lipsync's atlas extraction does, so bilinear sampling does not alias. With ``with_coverage``
    also returns bool (S, S): canvas pixels that fall inside the frame. NaN ``m``: all zeros.
    """
    import cv2

    h, w = frame.shape[:2]
    if not np.isfinite(m).all():
        crop = np.zeros((size, size, frame.shape[2]), frame.dtype)
        return (crop, np.zeros((size, size), bool)) if with_coverage else crop
    m = np.asarray(m, np.float64)
    s = crop_scale(m)
    src = frame
    if s < ANTIALIAS_BELOW:
        f = 1.0 / np.floor(1.0 / s)
        src = cv2.resize(frame, (max(1, int(round(w * f))), max(1, int(round(h * f)))), interpolation=cv2.INTER_AREA)
        m = m.copy()
        m[:, :2] *= np.array([w / src.shape[1], h / src.shape[0]])  # small-image point -> frame point -> canvas
    crop = cv2.warpAffine(np.ascontiguousarray(src), _cv_matrix(m), (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if not with_coverage:
        return crop
    ones = np.ones(src.shape[:2], np.float32)
    cov = cv2.warpAffine(ones, _cv_matrix(m), (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=0) > 0.999
    return crop, cov


def warp_crops(frames: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 and transforms (T, 2, 3) -> crops (T, S, S, 3) uint8."""
    check_shape("frames", frames, ["T", None, None, 3])
    check_shape("m", m, ["T", 2, 3])
    if len(frames) != len(m):
        raise ValueError(f"warp_crops: {len(frames)} frames but {len(m)} transforms")
    out = np.zeros((len(frames), size, size, 3), np.uint8)
    for i in range(len(frames)):
        out[i] = warp_crop(frames[i], m[i], size)
    return out


def paste_back(frame: np.ndarray, crop: np.ndarray, m: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Lay ``crop`` (S, S, 3) back into ``frame`` (H, W, 3) through the feathered ``mask`` (S, S)
    in [0, 1]: the inverse of ``warp_crop`` (bilinear). Returns a new uint8 frame; NaN ``m``
    returns the frame unchanged."""
    import cv2

    if not np.isfinite(m).all():
        return np.array(frame, np.uint8)
    h, w = frame.shape[:2]
    size = crop.shape[0]
    check_shape("crop", crop, [size, size, 3])
    check_shape("mask", mask, [size, size])
    mc = _cv_matrix(m)
    # warp only the frame's box that the masked canvas covers (faces are small in big frames)
    ys, xs = np.nonzero(mask > 0)
    if len(ys) == 0:
        return np.array(frame, np.uint8)
    inv = cv2.invertAffineTransform(mc)
    corners = np.array([[xs.min() - 1, ys.min() - 1], [xs.max() + 1, ys.min() - 1], [xs.min() - 1, ys.max() + 1],
                        [xs.max() + 1, ys.max() + 1]], np.float64) @ inv[:, :2].T + inv[:, 2]
    x0, y0 = np.clip(np.floor(corners.min(0)).astype(int) - 1, 0, [w, h])
    x1, y1 = np.clip(np.ceil(corners.max(0)).astype(int) + 2, 0, [w, h])
    out = np.array(frame, np.uint8)
    if x1 <= x0 or y1 <= y0:
        return out
    shift = mc.copy()
    shift[:, 2] += mc[:, :2] @ np.array([x0, y0], np.float64)  # box pixel (x, y) = frame pixel (x + x0, y + y0)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    rgb = cv2.warpAffine(np.ascontiguousarray(crop, np.float32), shift, (x1 - x0, y1 - y0), flags=flags,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    alpha = cv2.warpAffine(np.ascontiguousarray(mask, np.float32), shift, (x1 - x0, y1 - y0), flags=flags,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)[..., None]
    box = out[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = np.clip(box * (1 - alpha) + rgb * alpha + 0.5, 0, 255).astype(np.uint8)
    return out


def face_area(template: CropTemplate) -> np.ndarray:
    """bool (S, S): inside the face oval of the template."""
    import cv2

    from lipsync.topology import load_topology

    oval = template.points[load_topology().regions["face_oval"]] - 0.5  # cv2 pixel centres at integers
    m = np.zeros((template.size, template.size), np.uint8)
    cv2.fillPoly(m, [np.round(oval * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return m.astype(bool)


def template_regions(template: CropTemplate) -> dict[str, np.ndarray]:
    """bool (S, S) canvas masks ``skin``, ``mouth``, ``lower_face``, ``eyes``, drawn from the
    template exactly as lipsync draws its atlas regions from a UV layout (``lipsync.atlas.region_masks``),
    with the face oval as the covered area."""
    from lipsync.atlas import region_masks
    from lipsync.topology import load_topology

    return region_masks(template.uv, load_topology(), template.size, face_area(template))


def blend_mask(template: CropTemplate, *, feather: float | None = None) -> np.ndarray:
    """float32 (S, S) in [0, 1]: the face oval below the nose plus the lips, eroded then blurred (as
    ``lipsync.synthesis.blend_mask`` does in the atlas) so it fades out inside the face; exactly 0
    on the canvas border."""
    from lipsync.synthesis import feather_mask

    regions = template_regions(template)
    soft = feather_mask(regions["lower_face"] | regions["mouth"], feather or template.size / 40.0)
    soft[[0, -1], :] = 0.0
    soft[:, [0, -1]] = 0.0
    return np.clip(soft, 0, 1).astype(np.float32)
