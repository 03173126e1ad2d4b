"""Pose normalization: per-frame similarity transforms between image landmarks and a canonical face.

Convention (as pytorch3d states its own): for frame t and vertex v, with column vectors,

    landmarks[t, v] = scale[t] * rotation[t] @ vertices[t, v] + translation[t]

``landmarks`` are MediaPipe's image-space points (x right and y down in pixels, z in pixels away
from the camera; an orthographic camera), ``vertices`` the pose-normalized face in canonical
units (see docs/COORDINATES.md). ``rotation`` is a proper rotation (det +1).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .common import check_shape


@dataclass(frozen=True)
class HeadPose:
    """Members:
        scale: float32 (T,) canonical units -> pixels.
        rotation: float32 (T, 3, 3) canonical -> camera rotation.
        translation: float32 (T, 3) in pixels.
    NaN rows mark frames without a pose (excluded frames).
    """
    scale: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray

    def __len__(self) -> int:
        return len(self.scale)

    def apply(self, vertices: np.ndarray) -> np.ndarray:
        """Canonical (T, V, 3) -> image (T, V, 3)."""
        return apply_similarity(vertices, self.scale, self.rotation, self.translation)

    def invert(self, landmarks: np.ndarray) -> np.ndarray:
        """Image (T, V, 3) -> canonical (T, V, 3)."""
        return invert_similarity(landmarks, self.scale, self.rotation, self.translation)

    def euler_degrees(self) -> np.ndarray:
        """float32 (T, 3): yaw, pitch, roll in degrees relative to the canonical frame (the reference shape,
        frontalized by its left/right symmetry)."""
        return rotation_to_euler(self.rotation)


def fit_similarity(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None):
    """Least-squares similarity (Umeyama 1991) with ``dst ~= s * R @ src + t``.

    Args:
        src: (..., N, 3) source points.
        dst: (..., N, 3) target points, same leading shape.
        weights: optional (..., N) or (N,) non-negative point weights.
    Returns:
        scale (...,), rotation (..., 3, 3) with det +1, translation (..., 3).
    Precondition: at least 3 non-collinear points with positive weight.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.shape[-1] != 3:
        raise ValueError(f"fit_similarity: shapes {src.shape} and {dst.shape} must match (..., N, 3)")
    w = np.ones(src.shape[:-1]) if weights is None else np.broadcast_to(np.asarray(weights, np.float64), src.shape[:-1])
    w = w / w.sum(axis=-1, keepdims=True)
    mu_s = (w[..., None] * src).sum(-2)
    mu_d = (w[..., None] * dst).sum(-2)
    xs = src - mu_s[..., None, :]
    xd = dst - mu_d[..., None, :]
    var_s = (w * (xs ** 2).sum(-1)).sum(-1)
    cov = np.einsum("...n,...ni,...nj->...ij", w, xd, xs)  # (..., 3, 3) = E[d s^T]
    u, sig, vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(u @ vt))
    d = np.where(d == 0, 1.0, d)
    e = np.ones(sig.shape)
    e[..., -1] = d
    rot = (u * e[..., None, :]) @ vt
    scale = (sig * e).sum(-1) / var_s
    trans = mu_d - scale[..., None] * np.einsum("...ij,...j->...i", rot, mu_s)
    return scale.astype(np.float32), rot.astype(np.float32), trans.astype(np.float32)


def apply_similarity(points, scale, rotation, translation) -> np.ndarray:
    """``s * R @ p + t`` for points (..., N, 3) and per-item (...,), (..., 3, 3), (..., 3)."""
    p = np.einsum("...ij,...nj->...ni", rotation, points)
    return (np.asarray(scale)[..., None, None] * p + np.asarray(translation)[..., None, :]).astype(np.float32)


def invert_similarity(points, scale, rotation, translation) -> np.ndarray:
    """``R^T (p - t) / s``: the inverse of ``apply_similarity``."""
    p = points - np.asarray(translation)[..., None, :]
    p = np.einsum("...ji,...nj->...ni", rotation, p)
    return (p / np.asarray(scale)[..., None, None]).astype(np.float32)


def rotation_to_euler(rotation: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> (..., 3) yaw (about y), pitch (about x), roll (about z), degrees.

    Decomposition R = Ry(yaw) @ Rx(pitch) @ Rz(roll) in the y-down camera frame.
    """
    r = np.asarray(rotation, np.float64)
    pitch = np.arcsin(np.clip(-r[..., 1, 2], -1.0, 1.0))
    yaw = np.arctan2(r[..., 0, 2], r[..., 2, 2])
    roll = np.arctan2(r[..., 1, 0], r[..., 1, 1])
    return np.degrees(np.stack([yaw, pitch, roll], -1)).astype(np.float32)


def euler_to_rotation(yaw, pitch, roll) -> np.ndarray:
    """Inverse of ``rotation_to_euler`` (degrees) for scalars or arrays -> (..., 3, 3)."""
    y, p, r = (np.radians(np.asarray(a, np.float64)) for a in (yaw, pitch, roll))
    cy, sy, cp, sp, cr, sr = np.cos(y), np.sin(y), np.cos(p), np.sin(p), np.cos(r), np.sin(r)
    one, zero = np.ones_like(y), np.zeros_like(y)
    ry = np.stack([np.stack([cy, zero, sy], -1), np.stack([zero, one, zero], -1), np.stack([-sy, zero, cy], -1)], -2)
    rx = np.stack([np.stack([one, zero, zero], -1), np.stack([zero, cp, -sp], -1), np.stack([zero, sp, cp], -1)], -2)
    rz = np.stack([np.stack([cr, -sr, zero], -1), np.stack([sr, cr, zero], -1), np.stack([zero, zero, one], -1)], -2)
    return (ry @ rx @ rz).astype(np.float32)


def symmetry_frame(points: np.ndarray, mirror: np.ndarray, use: np.ndarray | None = None):
    """Head orientation of each face from its left/right symmetry alone (no reference needed).

    The symmetry plane's normal is the dominant direction of ``p[i] - p[mirror[i]]`` over vertex
    pairs (oriented toward the person's left, i.e. image right on a frontal face). The returned
    rotation's rows are the face axes in camera coordinates: x = plane normal, y = the camera's
    down direction projected into the plane, z = x cross y. So ``rotation @ (p - center)`` is the
    face with yaw and roll removed and its pitch left as it is in the image.

    Args:
        points: (..., V, 3) landmarks.
        mirror: (V,) mirror map.
        use: optional vertex indices whose pairs to use (default: all non-midline vertices).
    Returns:
        rotation (..., 3, 3), center (..., 3) (mean of the used pairs' midpoints).
    """
    idx = np.arange(len(mirror)) if use is None else np.asarray(use)
    idx = idx[mirror[idx] > idx]  # each pair once, midline vertices dropped
    d = points[..., idx, :] - points[..., mirror[idx], :]  # (..., P, 3)
    # orient every pair like the first outer-eye pair so the normal points to the person's left
    ref = points[..., 263, :] - points[..., 33, :]
    sign = np.sign((d * ref[..., None, :]).sum(-1, keepdims=True))
    d = d * np.where(sign == 0, 1.0, sign)
    n = d.sum(-2)
    n = n / np.linalg.norm(n, axis=-1, keepdims=True)
    down = np.zeros_like(n)
    down[..., 1] = 1.0
    y = down - (down * n).sum(-1, keepdims=True) * n
    y = y / np.linalg.norm(y, axis=-1, keepdims=True)
    z = np.cross(n, y)
    rot = np.stack([n, y, z], -2).astype(np.float32)
    mids = 0.5 * (points[..., idx, :] + points[..., mirror[idx], :])
    return rot, mids.mean(-2).astype(np.float32)


def pose_from_rotations(rotation: np.ndarray) -> np.ndarray:
    """Angle (degrees) of each rotation (..., 3, 3) from the identity."""
    tr = np.trace(rotation, axis1=-2, axis2=-1)
    return np.degrees(np.arccos(np.clip((tr - 1) / 2, -1.0, 1.0)))


def normalize_poses(landmarks: np.ndarray, reference: np.ndarray, stable: np.ndarray, *,
                    valid: np.ndarray | None = None, robust_iters: int = 2) -> HeadPose:
    """Fit each frame's similarity to the canonical ``reference`` on the ``stable`` vertices.

    Args:
        landmarks: float32 (T, V, 3) image-space landmarks (NaN rows allowed where not valid).
        reference: float32 (V, 3) canonical shape.
        stable: int (K,) vertex indices to fit on.
        valid: bool (T,) frames to fit; others get NaN poses.
        robust_iters: re-weighting passes that down-weight vertices with large residuals
            (Cauchy weights at 2x the median residual), so one mis-tracked vertex cannot tilt a pose.
    Returns:
        HeadPose with NaN for frames that are not valid.
    """
    n = check_shape("landmarks", landmarks, ["T", "V", 3])
    check_shape("reference", reference, [n["V"], 3])
    t_len = n["T"]
    valid = np.isfinite(landmarks).all(axis=(1, 2)) if valid is None else np.asarray(valid, bool)
    scale = np.full(t_len, np.nan, np.float32)
    rot = np.full((t_len, 3, 3), np.nan, np.float32)
    trans = np.full((t_len, 3), np.nan, np.float32)
    if valid.any():
        dst = landmarks[valid][:, stable]
        src = np.broadcast_to(reference[stable], dst.shape)
        w = np.ones(dst.shape[:2])
        for it in range(robust_iters + 1):
            s, r, tr = fit_similarity(src, dst, w)
            if it == robust_iters:
                break
            res = np.linalg.norm(apply_similarity(src, s, r, tr) - dst, axis=-1)  # (Tv, K)
            c = 2.0 * np.median(res, axis=1, keepdims=True) + 1e-6
            w = 1.0 / (1.0 + (res / c) ** 2)
        scale[valid], rot[valid], trans[valid] = s, r, tr
    return HeadPose(scale=scale, rotation=rot, translation=trans)
