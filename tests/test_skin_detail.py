"""Skin detail of the reference atlas: the medoid frame's fine texture, added where the face is
animated and nowhere else (known-truth round trips on synthetic atlases and on the GRID fixture)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from eval.metrics.realism import laplacian_variance
from lipsync.model.skin_detail import add_frame_detail, detailed_reference, medoid_frame

S = 256                   # the default atlas size (the detail's blur is a fixed fraction of it)
CROP = (128, 240, 32, 224)


def synthetic_atlases(frames: int = 12, seed: int = 0):
    """A smooth face colour, a fixed fine skin texture seen by every frame, each frame a little
    brighter or darker (frame 5 the least) and with its own fine noise; the reference is the
    smooth face (what a median of misaligned frames keeps)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    smooth = np.stack([150 + 0.5 * xx, 110 + 0.3 * yy, 90 + 0.2 * (xx + yy) / 2], -1)
    grain = rng.normal(0, 6, (S, S, 1)).astype(np.float32)
    offsets = np.abs(np.arange(frames) - 5.0) * 2.0
    atlas = np.stack([smooth + grain + off + rng.normal(0, 1, (S, S, 3)) for off in offsets])
    mask = np.ones((frames, S, S), bool)
    return np.clip(atlas, 0, 255).astype(np.uint8), mask, np.clip(smooth, 0, 255).astype(np.uint8)


def test_the_medoid_is_the_frame_nearest_to_the_reference_among_those_that_cover_the_region():
    atlas, mask, reference = synthetic_atlases()
    region = np.zeros((S, S), bool)
    region[CROP[0]:CROP[1], CROP[2]:CROP[3]] = True
    assert medoid_frame(atlas, mask, np.arange(12), reference, region, CROP, sigma=2.0) == 5
    mask[5, 160:200, 80:120] = False  # frame 5 no longer covers the region: the next nearest wins
    assert medoid_frame(atlas, mask, np.arange(12), reference, region, CROP, sigma=2.0) in (4, 6)
    assert medoid_frame(atlas, mask, np.arange(12), reference, np.zeros((S, S), bool), CROP, sigma=2.0) is None


def test_detail_is_added_inside_the_animated_region_only_and_not_on_the_mouth():
    atlas, mask, reference = synthetic_atlases()
    animated = np.zeros((S, S), bool)
    animated[112:256, 16:240] = True
    mouth = np.zeros((S, S), np.float32)
    mouth[176:200, 96:160] = 1.0
    out, frame = detailed_reference(reference, atlas, mask, np.arange(12), animated, mouth, CROP)
    assert frame == 5
    t, b, l, r = CROP
    in_crop = np.zeros((S, S), bool)
    in_crop[t:b, l:r] = True
    inside = in_crop & animated & (mouth == 0)
    # outside the crop, and on the mouth, the reference is unchanged
    np.testing.assert_array_equal(out[~in_crop], reference[~in_crop])
    np.testing.assert_array_equal(out[mouth == 1], reference[mouth == 1])
    # inside, the fine texture comes back: the change correlates with the medoid's own grain
    # (its high frequencies), and the reference's sharpness rises to near the real frame's
    change = out.astype(np.float32) - reference
    grain = atlas[5].astype(np.float32) - reference
    corr = np.corrcoef(change[inside][:, 0], grain[inside][:, 0])[0, 1]
    assert corr > 0.8, corr
    box = (slice(t + 8, b - 8), slice(l + 8, l + 56))  # skin away from the mouth and the crop's edge
    real, before, after = (laplacian_variance(a[box]) for a in (atlas[5], reference, out))
    assert before < 0.05 * real and after > 0.6 * real, (before, after, real)
    # the detail has no low frequencies: the mean colour of the region stays the reference's
    assert np.abs(change[inside].mean(0)).max() < 1.0


def test_texels_the_medoid_does_not_see_get_no_detail():
    atlas, mask, reference = synthetic_atlases()
    seen = np.ones((S, S), bool)
    seen[:, :80] = False
    out = add_frame_detail(reference, atlas[5], seen, np.ones((S, S), np.float32), sigma=2.0)
    np.testing.assert_array_equal(out[:, :80], reference[:, :80])
    assert np.abs(out[:, 96:].astype(int) - reference[:, 96:]).mean() > 2


def test_training_gives_the_model_a_reference_as_sharp_as_a_real_frame(prepared_grid, tmp_path):
    """On the GRID fixture: the model's reference atlas has the skin detail of a real training
    frame in its lower face (its median alone is much softer), and the option turns it off."""
    from lipsync.model_io import load_model
    from lipsync.training import TrainOptions, train

    opts = TrainOptions(steps=6, batch=4, val_every=3, tex_channels=8, pca_components=4, calibrate_articulation=False,
                        mouth_bank=False)
    with_detail = load_model(train(prepared_grid.path, tmp_path / "a", options=opts).path).speaker
    without = load_model(train(prepared_grid.path, tmp_path / "b", options=replace(opts, skin_detail=False)).path).speaker
    median = np.array(prepared_grid.array("reference_atlas"))
    np.testing.assert_array_equal(without.reference_atlas, median)
    crop = load_model(tmp_path / "a").net.config.crop
    t, b, l, r = crop
    skin = (with_detail.region("lower_face") & ~with_detail.region("mouth"))[t:b, l:r]
    changed = (with_detail.reference_atlas[t:b, l:r] != median[t:b, l:r]).any(-1)
    assert changed[skin].mean() > 0.5
    outside = np.ones(median.shape[:2], bool)
    outside[t:b, l:r] = False
    np.testing.assert_array_equal(with_detail.reference_atlas[outside], median[outside])
    # sharpness on the skin well inside the region (the face's edge and the mouth left out)
    import cv2

    inner = np.zeros(median.shape[:2], np.uint8)
    inner[t:b, l:r] = skin & (median[t:b, l:r].max(-1) > 0)
    inner = cv2.erode(inner, np.ones((9, 9), np.uint8)).astype(bool)
    valid = np.flatnonzero(np.array(prepared_grid.array("valid")))
    frame = np.asarray(prepared_grid.array("atlas")[valid[len(valid) // 2]])

    def skin_sharpness(atlas):
        grey = cv2.cvtColor(np.ascontiguousarray(atlas), cv2.COLOR_RGB2GRAY)
        return float(cv2.Laplacian(grey, cv2.CV_64F, ksize=3)[inner].var())

    real, before, after = (skin_sharpness(a) for a in (frame, median, with_detail.reference_atlas))
    # as sharp as a real frame: no more (the median's own high frequencies are replaced, not added to)
    assert inner.sum() > 500 and after > before * 1.3 and 0.7 * real < after < 1.5 * real, (inner.sum(), before, after, real)
