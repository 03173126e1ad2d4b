"""Stage 4 of preprocessing: pose normalization. Choose the reference frame, build the speaker's
canonical (frontal, mouth closed) shape, fit a similarity per frame, and smooth pose and shape
without lag, so that what is left in the vertices is the speech-driven deformation."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..face_measures import face_measures
from ..files import column_groups, frame_array, frame_slices, read_columns, read_frames, write_columns
from ..media import VideoInfo
from ..pose import HeadPose, apply_similarity, fit_similarity, normalize_poses, symmetry_frame
from ..temporal import savgol_window, smooth
from ..topology import CHIN, FOREHEAD_TOP, FaceTopology
from .options import PreprocessOptions
from .track import CleanTrack

REFERENCE_CHUNK = 1024  # frames whose landmarks are in memory at once while fitting poses


def choose_reference(landmarks: np.ndarray, valid: np.ndarray, topo: FaceTopology, count: int):
    """Pick the most frontal frame with the mouth closed and the eyes open.

    Yaw and roll come from the face's own symmetry (absolute); pitch is measured against the
    clip's median (a face has no symmetry to define absolute pitch). Returns the best frame and
    the ``count`` best frames (best first). ``landmarks`` may be on disk (read in chunks).
    """
    idx = np.flatnonzero(valid)
    yaw_roll, pitch, m = [], [], []
    for sl in frame_slices(len(idx), REFERENCE_CHUNK):
        lm = read_frames(landmarks, idx[sl])
        rot, _ = symmetry_frame(lm, topo.mirror, use=topo.regions["stable"])
        yaw_roll.append(np.degrees(np.arccos(np.clip((np.trace(rot, axis1=1, axis2=2) - 1) / 2, -1, 1))))
        # pitch proxy: the direction from forehead to chin in the camera's y-z plane
        d = lm[:, CHIN] - lm[:, FOREHEAD_TOP]
        pitch.append(np.degrees(np.arctan2(d[:, 2], d[:, 1])))
        m.append(face_measures(lm))
    yaw_roll, pitch = np.concatenate(yaw_roll), np.concatenate(pitch)
    m = {k: np.concatenate([part[k] for part in m]) for k in m[0]}
    pitch_dev = pitch - np.median(pitch)
    closed = m["mouth"] <= np.quantile(m["mouth"], 0.2) + 1e-6
    eyes_open = m["eyes"] >= 0.7 * np.median(m["eyes"])
    penalty = np.where(closed & eyes_open, 0.0, 90.0)
    score = np.hypot(yaw_roll, pitch_dev) + penalty
    order = np.argsort(score, kind="stable")
    return int(idx[order[0]]), idx[order[:count]]


def canonical_reference(landmarks: np.ndarray, frames: np.ndarray, topo: FaceTopology) -> np.ndarray:
    """Canonical shape: the chosen frames, frontalized (yaw and roll removed by symmetry), aligned
    on the stable vertices to the best one and averaged; centred on the stable vertices and scaled
    so their RMS radius is 1."""
    stable = topo.regions["stable"]
    rot, center = symmetry_frame(landmarks[frames[0]], topo.mirror, use=stable)
    base = (landmarks[frames[0]] - center) @ rot.T
    shapes = []
    for f in frames:
        s, r, t = fit_similarity(landmarks[f][stable], base[stable])
        shapes.append(apply_similarity(landmarks[f][None], s[None], r[None], t[None])[0])
    ref = np.mean(shapes, axis=0)
    ref -= ref[stable].mean(0)
    ref /= np.sqrt((ref[stable] ** 2).sum(1).mean())
    return ref.astype(np.float32)


def smooth_pose(pose: HeadPose, valid: np.ndarray, window: int, breaks: np.ndarray | None = None) -> HeadPose:
    """Zero-phase smoothing of rotation (as rotation vectors), log scale and translation."""
    from scipy.spatial.transform import Rotation

    rot = pose.rotation.copy()
    if valid.any():
        vec = np.zeros((len(rot), 3), np.float32)
        vec[valid] = Rotation.from_matrix(rot[valid].astype(np.float64)).as_rotvec()
        vec = smooth(vec, valid, window=window, breaks=breaks)
        rot[valid] = Rotation.from_rotvec(vec[valid].astype(np.float64)).as_matrix()
    log_s = smooth(np.log(np.where(valid, pose.scale, 1.0)), valid, window=window, breaks=breaks)
    trans = smooth(pose.translation, valid, window=window, breaks=breaks)
    scale = np.where(valid, np.exp(log_s), np.nan).astype(np.float32)
    return HeadPose(scale=scale, rotation=rot.astype(np.float32), translation=trans)


@dataclass(frozen=True)
class NormalizedPose:
    """Members:
        reference_frame: the most frontal closed-mouth frame.
        candidates: int (C,); the frames averaged into the reference shape (and later the reference atlas).
        reference: float32 (V, 3); the canonical shape (stable vertices centred, RMS radius 1).
        pose: the smoothed per-frame similarity; landmarks = scale * rotation @ vertices + translation.
        vertices: float32 (T, V, 3); pose-normalized, smoothed vertices; NaN in unusable frames.
        landmarks: float32 (T, V, 3); the smoothed landmarks in the image; NaN in unusable frames.
        (``vertices`` and ``landmarks`` are in memory, or ``FrameArray`` files of the output folder.)
    """
    reference_frame: int
    candidates: np.ndarray
    reference: np.ndarray
    pose: HeadPose
    vertices: np.ndarray
    landmarks: np.ndarray


def normalize_pose(clean: CleanTrack, info: VideoInfo, topo: FaceTopology, options: PreprocessOptions,
                   folder: Path | None = None) -> NormalizedPose:
    """4. The reference shape, per-frame poses and pose-normalized vertices (never smoothed across a cut).

    Poses are fitted a chunk of frames at a time and the vertices smoothed a group of vertices at
    a time (the same numbers as all at once); with a ``folder``, ``vertices`` and ``landmarks``
    are its ``vertices.npy`` and ``landmarks.npy``, so memory does not grow with the clip."""
    filled, valid, cuts = clean.landmarks, clean.valid, clean.cuts
    ref_frame, candidates = choose_reference(filled, valid, topo, options.reference_candidates)
    reference = canonical_reference(filled, candidates, topo)
    stable = topo.regions["stable"]
    parts = [normalize_poses(read_frames(filled, sl)[:, stable], reference[stable], np.arange(len(stable)),
                             valid=valid[sl]) for sl in frame_slices(len(valid), REFERENCE_CHUNK)]
    pose = HeadPose(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("scale", "rotation", "translation")))
    pose = smooth_pose(pose, valid, savgol_window(info.fps, options.pose_smooth_s), breaks=cuts)
    verts = frame_array(folder, "vertices.npy", filled.shape, np.float32)
    landmarks = frame_array(folder, "landmarks.npy", filled.shape, np.float32)
    window = savgol_window(info.fps, options.shape_smooth_s)
    for cols in column_groups(filled.shape):
        v = pose.invert(np.nan_to_num(read_columns(filled, cols)))
        v = smooth(v, valid, window=window, polyorder=3, breaks=cuts)
        v[~valid] = np.nan
        lm = pose.apply(np.nan_to_num(v))
        lm[~valid] = np.nan
        write_columns(verts, cols, v)
        write_columns(landmarks, cols, lm)
    return NormalizedPose(reference_frame=ref_frame, candidates=candidates, reference=reference, pose=pose,
                          vertices=verts, landmarks=landmarks)
