"""Pose normalization: known similarity transforms are recovered."""
from __future__ import annotations

import numpy as np
import pytest

from lipsync.pose import (apply_similarity, euler_to_rotation, fit_similarity, invert_similarity, normalize_poses,
                          rotation_to_euler)

ROT_TOL_DEG = 0.05      # rotation error of an exact fit (degrees)
SCALE_TOL = 1e-4        # relative scale error of an exact fit
TRANS_TOL_PX = 1e-2     # translation error of an exact fit (pixels)
NOISY_ROT_TOL_DEG = 0.5  # rotation error with 0.5 px landmark noise and moving lips


def random_poses(rng, n):
    yaw = rng.uniform(-35, 35, n)
    pitch = rng.uniform(-20, 20, n)
    roll = rng.uniform(-15, 15, n)
    rot = euler_to_rotation(yaw, pitch, roll)
    scale = rng.uniform(80, 400, n).astype(np.float32)
    trans = np.stack([rng.uniform(100, 500, n), rng.uniform(100, 400, n), rng.uniform(-50, 50, n)], -1)
    return scale, rot.astype(np.float32), trans.astype(np.float32), np.stack([yaw, pitch, roll], -1)


def rotation_angle_deg(a, b):
    cos = (np.trace(np.swapaxes(a, -1, -2) @ b, axis1=-2, axis2=-1) - 1) / 2
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def test_euler_round_trip():
    rng = np.random.default_rng(1)
    _, rot, _, ypr = random_poses(rng, 200)
    assert np.allclose(rotation_to_euler(rot), ypr, atol=1e-3)
    assert np.allclose(rot @ np.swapaxes(rot, -1, -2), np.eye(3), atol=1e-5)
    assert np.allclose(np.linalg.det(rot), 1, atol=1e-5)


def test_fit_similarity_recovers_a_random_transform(face_model):
    rng = np.random.default_rng(0)
    src = face_model["vertices"]
    scale, rot, trans, _ = random_poses(rng, 50)
    dst = apply_similarity(np.broadcast_to(src, (50, *src.shape)), scale, rot, trans)
    s, r, t = fit_similarity(np.broadcast_to(src, dst.shape), dst)
    assert np.all(np.abs(s / scale - 1) < SCALE_TOL)
    assert np.all(rotation_angle_deg(r, rot) < ROT_TOL_DEG)
    assert np.all(np.abs(t - trans) < TRANS_TOL_PX * scale[:, None] / 100 + TRANS_TOL_PX)
    back = invert_similarity(dst, s, r, t)
    assert np.abs(back - src).max() < 1e-3


def test_fit_similarity_ignores_zero_weight_points(face_model):
    rng = np.random.default_rng(3)
    src = face_model["vertices"]
    scale, rot, trans, _ = random_poses(rng, 1)
    dst = apply_similarity(src[None], scale, rot, trans)[0]
    w = np.ones(len(src))
    outliers = rng.choice(len(src), 60, replace=False)
    dst[outliers] += rng.normal(0, 40, (60, 3)).astype(np.float32)
    w[outliers] = 0
    s, r, t = fit_similarity(src, dst, w)
    assert abs(s / scale[0] - 1) < SCALE_TOL
    assert rotation_angle_deg(r, rot[0]) < ROT_TOL_DEG


def test_fit_similarity_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        fit_similarity(np.zeros((10, 3)), np.zeros((11, 3)))


def test_normalize_poses_uses_stable_vertices_only(face_model):
    """Moving lips and jaw (as in speech) must not tilt the recovered head pose."""
    rng = np.random.default_rng(7)
    topo = face_model["topo"]
    ref = face_model["vertices"]
    n = 40
    scale, rot, trans, _ = random_poses(rng, n)
    shapes = np.repeat(ref[None], n, 0).copy()
    # open the jaw: everything below the mouth moves down by up to 15% of the face height
    height = np.ptp(ref[:, 1])
    below = ref[:, 1] > ref[13, 1]
    shapes[:, below, 1] += rng.uniform(0, 0.15, (n, 1)) * height
    landmarks = apply_similarity(shapes, scale, rot, trans)
    landmarks += rng.normal(0, 0.5, landmarks.shape).astype(np.float32)  # tracker noise, pixels
    pose = normalize_poses(landmarks, ref, topo.regions["stable"])
    assert np.all(rotation_angle_deg(pose.rotation, rot) < NOISY_ROT_TOL_DEG)
    assert np.all(np.abs(pose.scale / scale - 1) < 0.01)
    # the normalized shape keeps the jaw motion (it is not absorbed into the pose)
    verts = pose.invert(landmarks)
    jaw = verts[:, 152, 1] - ref[152, 1]
    assert np.corrcoef(jaw, shapes[:, 152, 1] - ref[152, 1])[0, 1] > 0.99


def test_stable_vertices_exclude_lips_and_jaw(face_model):
    topo = face_model["topo"]
    stable = set(topo.regions["stable"].tolist())
    assert not stable & set(topo.regions["lips_outer"].tolist())
    assert not stable & set(topo.regions["lips_inner"].tolist())
    assert 152 not in stable  # chin
    assert len(stable) >= 30
