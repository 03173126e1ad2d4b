"""Lighting normalization: known gain fields are recovered and removed."""
from __future__ import annotations

import numpy as np
import pytest

from lipsync.atlas import build_sampler, region_masks
from lipsync.lighting import (apply_log_gain, estimate_gains, estimate_spatial, log_field, mirror_sample, poly_terms,
                              robust_fit, to_log)
from lipsync.preprocessing.lighting import mirror_texels

SIZE = 256
SPATIAL_TOL = 0.005    # log units (0.5% brightness): max error of the recovered left/right field
TEMPORAL_TOL = 0.01    # log units (1%): max error of a recovered per-frame gain field over skin (uint8 rounding of dark texels)
ALBEDO_TOL = 2.0       # grey levels: median error of the recovered albedo


@pytest.fixture(scope="module")
def scene(face_model, prepared_grid):
    """A perfectly symmetric skin albedo built from the real reference atlas, and its masks."""
    topo, uv = face_model["topo"], face_model["uv"]
    sampler = build_sampler(uv, face_model["vertices"], topo, SIZE)
    covered = sampler.covered_mask()
    skin = region_masks(uv, topo, SIZE, covered)["skin"]
    mirror_xy = mirror_texels(sampler, uv, topo.mirror)
    log_ref = to_log(np.array(prepared_grid.array("reference_atlas")))
    log_albedo = 0.5 * (log_ref + mirror_sample(log_ref, mirror_xy))
    return {"covered": covered, "skin": skin, "mirror_xy": mirror_xy, "log_albedo": log_albedo,
            "albedo": np.exp(log_albedo) * 255.0}


def test_left_right_lighting_gradient_is_recovered(scene):
    terms = poly_terms(3, odd_in_u=True)
    true = np.zeros((3, len(terms)), np.float32)
    true[:, 0] = [0.25, 0.2, 0.15]   # light from one side, a bit warmer
    true[:, 1] = [0.05, 0.04, 0.03]
    field = log_field(true, terms, SIZE)
    lit = scene["albedo"] * np.exp(field)
    est_terms, est = estimate_spatial(lit, scene["covered"], scene["skin"], scene["mirror_xy"], degree=3)
    err = np.abs(log_field(est, est_terms, SIZE) - field)[scene["skin"]]
    assert err.max() < SPATIAL_TOL
    restored = apply_log_gain(lit, log_field(est, est_terms, SIZE), scene["covered"])
    assert np.median(np.abs(restored.astype(np.float64) - scene["albedo"])[scene["skin"]]) < ALBEDO_TOL


def make_frames(scene, rng, count):
    terms = poly_terms(2)
    gains = rng.normal(0, 0.1, (count, 3, len(terms))).astype(np.float32)
    gains[:, :, 0] += rng.uniform(-0.4, 0.1, (count, 3))  # overall brightness and colour changes (little clipping)
    frames = np.stack([np.clip(scene["albedo"] * np.exp(log_field(g, terms, SIZE)), 0, 255) for g in gains])
    return terms, gains, np.round(frames).astype(np.uint8)


def test_temporal_gain_fields_are_recovered(scene):
    terms, gains, frames = make_frames(scene, np.random.default_rng(0), 6)
    masks = np.repeat(scene["covered"][None], len(frames), 0)
    est_terms, est = estimate_gains(frames, masks, scene["log_albedo"], scene["skin"], degree=2)
    assert est_terms == terms
    for g, e, frame in zip(gains, est, frames):
        err = np.abs(log_field(e, terms, SIZE) - log_field(g, terms, SIZE))[scene["skin"]]
        assert err.max() < TEMPORAL_TOL
        normalized = apply_log_gain(frame, log_field(e, terms, SIZE), scene["covered"])
        assert np.median(np.abs(normalized.astype(np.float64) - scene["albedo"])[scene["skin"]]) < ALBEDO_TOL


def test_temporal_fit_ignores_an_occluder(scene):
    """A dark patch over 9% of the skin (a hand, a shadow) must not bend the fitted field."""
    terms, gains, frames = make_frames(scene, np.random.default_rng(1), 4)
    frames[:, 150:190, 60:110] = 30
    blob = np.zeros((SIZE, SIZE), bool)
    blob[150:190, 60:110] = True
    assert 0.05 < (blob & scene["skin"]).sum() / scene["skin"].sum() < 0.15
    masks = np.repeat(scene["covered"][None], len(frames), 0)
    _, est = estimate_gains(frames, masks, scene["log_albedo"], scene["skin"], degree=2)
    for g, e in zip(gains, est):
        err = np.abs(log_field(e, terms, SIZE) - log_field(g, terms, SIZE))[scene["skin"]]
        assert err.max() < TEMPORAL_TOL


def test_frames_without_skin_get_no_gain(scene):
    terms, _, frames = make_frames(scene, np.random.default_rng(2), 2)
    masks = np.zeros((2, SIZE, SIZE), bool)
    masks[0] = scene["covered"]
    _, est = estimate_gains(frames, masks, scene["log_albedo"], scene["skin"], degree=2)
    assert np.isfinite(est[0]).all() and np.isnan(est[1]).all()


def test_robust_fit_is_exact_on_clean_data():
    rng = np.random.default_rng(4)
    basis = rng.normal(size=(500, 4)).astype(np.float32)
    coef = rng.normal(size=(3, 2, 4)).astype(np.float32)
    target = np.einsum("nk,bck->bnc", basis, coef)
    est = robust_fit(basis, target, np.ones((3, 500)))
    assert np.abs(est - coef).max() < 1e-3


def test_gain_put_back_restores_the_frame(scene):
    """Synthesis puts the target's lighting back: removing then re-applying a field is lossless."""
    terms, gains, frames = make_frames(scene, np.random.default_rng(3), 1)
    field = log_field(gains[0], terms, SIZE)
    there_and_back = apply_log_gain(apply_log_gain(frames[0], field), field, sign=+1.0)
    ok = scene["skin"] & (frames[0].max(-1) < 200)  # away from clipping
    assert np.abs(there_and_back.astype(int) - frames[0].astype(int))[ok].max() <= 2
