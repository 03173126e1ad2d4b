"""The 2D baselines: aligned face crops (face2d), the no_pose_norm crop clip, personalized_2d."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from eval.core import RunContext, TestClip, read_video
from lipsync.common import LipsyncError
from lipsync.media import probe

from conftest import ffmpeg

FIT_TOL = 1e-3        # canvas pixels: a fitted similarity maps exact landmarks onto the template
ROUNDTRIP_TOL = 2.0   # grey levels: warp then paste back, two bilinear resamplings (measured 1.0 on the fixture)
POSE_TOL = 1e-3       # pixels: the crop clip's pose arrays reproduce the landmarks
REF_TOL = 6.0         # grey levels: the reference frame's crop vs the median reference crop (inside the face)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Train on one thread. lipsync's train() asks for os.cpu_count() threads; on a machine whose
    cores other jobs share, two spinning torch threads ran 20x slower (tiny training: 89 s instead of 4 s)."""
    import torch

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("lipsync.training.os.cpu_count", lambda: 1)
        torch.set_num_threads(1)
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def grid_test_clip(prepared_grid, grid_clip) -> TestClip:
    m = prepared_grid.manifest
    return TestClip(name="grid", video=grid_clip, audio=prepared_grid.path / "audio.wav", prepared=prepared_grid.path,
                    fps=m["fps"], frames=m["frames"], width=m["width"], height=m["height"])


def _context(tmp: Path, prepared_grid, grid_clip, **kw) -> RunContext:
    return RunContext(out=tmp / "out", cache=tmp / "cache", train_video=grid_clip, train_prepared=prepared_grid.path,
                      preset="tiny", **kw)


def _check_video(path: Path, clip: TestClip, frames: int) -> None:
    info = probe(path)
    assert (info.width, info.height, info.frames) == (clip.width, clip.height, frames)
    assert info.has_audio and abs(info.fps - clip.fps) < 1e-6


# ---------------------------------------------------------------------------------------------
# face2d

def test_crop_transforms_recover_a_known_similarity():
    from eval.methods.face2d import CropTemplate, crop_transforms, transform_points

    rng = np.random.default_rng(1)
    template = CropTemplate(points=rng.uniform(40, 200, (468, 2)).astype(np.float32), size=256)
    s, a, t = 0.7, np.radians(12.0), np.array([31.0, -7.5])
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    frame_pts = (template.points - t) @ rot / s  # template = s R p + t  <=>  p = R^T (template - t) / s
    lm = np.stack([np.concatenate([frame_pts, rng.normal(size=(468, 1))], 1)] * 3).astype(np.float32)
    lm[2, 10] = np.nan  # an untracked point (vertex 10 is a stable one)
    m = crop_transforms(lm, np.array([True, False, True]), template)
    assert m.shape == (3, 2, 3)
    np.testing.assert_allclose(m[0, :, :2], s * rot, atol=1e-5)
    np.testing.assert_allclose(transform_points(lm[0], m[0]), template.points, atol=FIT_TOL)
    assert np.isnan(m[1]).all() and np.isnan(m[2]).all()


def test_warp_and_paste_are_exact_for_a_pixel_shift():
    from eval.methods.face2d import paste_back, warp_crop

    frame = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    m = np.array([[1, 0, -10], [0, 1, -20]], np.float32)  # canvas = frame shifted by (-10, -20)
    crop, cov = warp_crop(frame, m, 64, with_coverage=True)
    np.testing.assert_array_equal(crop, frame[20:84, 10:74])
    assert cov.all()
    back = paste_back(np.zeros_like(frame), crop, m, np.ones((64, 64), np.float32))
    np.testing.assert_array_equal(back[20:84, 10:74], frame[20:84, 10:74])
    assert back[:20].max() == 0 and back[84:].max() == 0
    assert (paste_back(frame, crop, np.full((2, 3), np.nan), np.ones((64, 64), np.float32)) == frame).all()


def test_warp_then_paste_back_reproduces_the_frames(prepared_grid, grid_clip):
    import cv2

    from eval.methods.face2d import _cv_matrix, blend_mask, crop_transforms, make_template, paste_back, warp_crops

    lm = np.array(prepared_grid.array("landmarks"))
    valid = np.array(prepared_grid.array("valid"))
    template = make_template(lm[prepared_grid.manifest["reference_frame"]])
    mats = crop_transforms(lm, valid, template)
    frames = read_video(grid_clip)[: len(mats)]
    crops = warp_crops(frames, mats, template.size)
    mask = blend_mask(template)
    errors = []
    for frame, crop, m in zip(frames, crops, mats):
        out = paste_back(frame, crop, m, mask)
        alpha = cv2.warpAffine(mask, _cv_matrix(m), frame.shape[1::-1], flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        assert (out[alpha == 0] == frame[alpha == 0]).all()  # nothing changes outside the mask
        inside = alpha > 0.99
        assert inside.sum() > 1000
        errors.append(np.abs(out.astype(np.float32) - frame)[inside].mean())
    assert np.mean(errors) < ROUNDTRIP_TOL, errors


def test_blend_mask_is_the_lower_face_and_zero_at_the_border(prepared_grid):
    from eval.methods.face2d import NOSE_TIP, blend_mask, make_template

    template = make_template(np.array(prepared_grid.array("landmarks"))[prepared_grid.manifest["reference_frame"]])
    mask = blend_mask(template)
    assert mask.shape == (256, 256) and mask.dtype == np.float32
    assert mask[0].max() == 0 and mask[-1].max() == 0 and mask[:, 0].max() == 0 and mask[:, -1].max() == 0
    lips = np.round(template.points[[13, 14]].mean(0) - 0.5).astype(int)  # between the inner lips
    assert mask[lips[1], lips[0]] > 0.99
    feather = 256 / 40  # blend_mask's default: the mask fades over about two feathers around the region's edge
    assert mask[: int(template.points[NOSE_TIP, 1] - 2 * feather)].max() < 0.01  # nothing above the nose tip


# ---------------------------------------------------------------------------------------------
# no_pose_norm: the crop clip

@pytest.fixture(scope="module")
def crop_clip(prepared_grid, grid_clip, tmp_path_factory):
    from eval.methods.crop2d_prepared import prepare_crop2d

    return prepare_crop2d(prepared_grid.path, grid_clip, tmp_path_factory.mktemp("crop2d") / "clip")


def test_crop_clip_has_the_prepared_format(crop_clip, prepared_grid):
    from lipsync.pose import apply_similarity
    from lipsync.prepared import ARRAYS, open_prepared

    clip = open_prepared(crop_clip)
    n = prepared_grid.num_frames
    assert set(ARRAYS) <= set(clip.manifest["arrays"])
    for name, (dtype, dims, _) in ARRAYS.items():
        arr = clip.array(name)
        assert str(arr.dtype) == dtype, name
        assert len(arr.shape) == len(dims.split(",")), name
    assert clip.array("atlas").shape == (n, 256, 256, 3) and clip.manifest["lighting"]["normalized"] is False
    valid = np.array(clip.array("valid"))
    assert valid.sum() >= 0.9 * n
    # the stored pose is the exact inverse of the crop: it maps the 2D-aligned vertices back onto the landmarks
    back = apply_similarity(np.array(clip.array("vertices"))[valid], *(np.array(clip.array(k))[valid]
                            for k in ("pose_scale", "pose_rotation", "pose_translation")))
    np.testing.assert_allclose(back, np.array(clip.array("landmarks"))[valid], atol=POSE_TOL)
    # the reference crop looks like the reference frame's crop inside the face
    ref = clip.manifest["reference_frame"]
    skin = clip.regions()["skin"]
    diff = np.abs(np.array(clip.array("atlas")[ref], np.float32) - np.array(clip.array("reference_atlas")))[skin]
    assert diff.mean() < REF_TOL
    assert np.array(clip.array("atlas_mask"))[valid].all()  # the GRID face is well inside the picture
    assert (np.array(clip.array("region_masks")).sum(axis=(1, 2)) > 100).all()
    np.testing.assert_allclose(np.array(clip.array("uv")) * 256, np.array(clip.array("vertices"))[ref, :, :2] * 256,
                               atol=0.05)
    assert (crop_clip / "audio.wav").is_file()


def test_crop_clip_trains_and_renders(crop_clip, grid_test_clip, tmp_path):
    from eval.methods.crop2d_prepared import render_crop2d
    from lipsync.training import TrainOptions, train

    model_dir = train(crop_clip, tmp_path / "model", options=TrainOptions(steps=20, batch=8, val_every=10))
    assert model_dir.state() == "finished"
    out = tmp_path / "no_pose_norm.mp4"
    summary = render_crop2d(model_dir.path, grid_test_clip, grid_test_clip.audio, out)
    assert summary["frames"] == grid_test_clip.frames
    _check_video(out, grid_test_clip, grid_test_clip.frames)
    # only the lower face changes: the top third of the picture (hair, forehead, backdrop) is untouched
    got, want = read_video(out), read_video(grid_test_clip.video)
    top = slice(0, grid_test_clip.height // 3)
    assert np.abs(got[:, top].astype(np.float32) - want[:, top]).mean() < 2.0  # H.264 re-encoding only


def test_fit_no_pose_norm_trains_once_and_reuses(prepared_grid, grid_clip, tmp_path):
    from eval.methods.crop2d_prepared import fit_no_pose_norm, no_pose_norm_folder

    ctx = _context(tmp_path, prepared_grid, grid_clip)
    model_dir = fit_no_pose_norm(ctx)
    weights = model_dir / "model.safetensors"
    assert weights.is_file()
    summary = json.loads((model_dir / "training.json").read_text())
    assert summary["steps"] == 40 and summary["options"]["seed"] == 0
    stamp = weights.stat().st_mtime_ns
    assert fit_no_pose_norm(ctx) == model_dir and weights.stat().st_mtime_ns == stamp
    assert model_dir.parent == no_pose_norm_folder(ctx)
    assert no_pose_norm_folder(dataclasses.replace(ctx, seed=1)) != model_dir.parent  # another seed, another model
    assert no_pose_norm_folder(dataclasses.replace(ctx, preset="quick")) != model_dir.parent


def test_crop_clip_refuses_the_wrong_video(prepared_grid, tmp_path):
    from eval.methods.crop2d_prepared import prepare_crop2d, train_options

    other = tmp_path / "other.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=25:duration=1", "-pix_fmt", "yuv420p", str(other))
    with pytest.raises(LipsyncError, match="not the video"):
        prepare_crop2d(prepared_grid.path, other, tmp_path / "clip")
    assert not (tmp_path / "clip").exists()
    with pytest.raises(LipsyncError, match="unknown preset"):
        train_options("huge")


# ---------------------------------------------------------------------------------------------
# personalized_2d

@pytest.fixture(scope="module")
def fitted_2d(prepared_grid, grid_clip, tmp_path_factory):
    from eval.methods import get_method

    ctx = _context(tmp_path_factory.mktemp("p2d"), prepared_grid, grid_clip)
    method = get_method("personalized_2d")(ctx)
    method.check()
    return method, method.fit()


def test_personalized_2d_trains_and_loss_decreases(fitted_2d):
    method, facts = fitted_2d
    assert facts["cached"] is False and facts["steps"] == 40
    log = method._model.config["training"]["log"]
    assert len(log) == 8
    assert log[-1]["train_l1"] < 0.85 * log[0]["train_l1"], log
    assert np.isfinite(facts["val_l1"])


def test_personalized_2d_reuses_its_cache(fitted_2d):
    from eval.methods import get_method

    method, facts = fitted_2d
    again = get_method("personalized_2d")(method.ctx)
    facts2 = again.fit()
    assert facts2["cached"] is True and facts2["model"] == facts["model"]


def test_personalized_2d_renders_the_clip(fitted_2d, grid_test_clip, tmp_path):
    method, _ = fitted_2d
    out = tmp_path / "p2d.mp4"
    summary = method.render(grid_test_clip, grid_test_clip.audio, out)
    assert summary["frames"] == grid_test_clip.frames
    _check_video(out, grid_test_clip, grid_test_clip.frames)


def test_personalized_2d_longer_audio_plays_the_clip_back_and_forth(fitted_2d, grid_test_clip, tmp_path):
    import soundfile as sf

    method, _ = fitted_2d
    audio, rate = sf.read(str(grid_test_clip.audio), dtype="float32")
    longer = tmp_path / "longer.wav"
    sf.write(str(longer), np.concatenate([audio, audio[: rate]]), rate)  # 4 s: 100 frames over a 75-frame clip
    out = tmp_path / "long.mp4"
    assert method.render(grid_test_clip, longer, out)["frames"] == 100
    _check_video(out, grid_test_clip, 100)


def test_personalized_2d_network_is_deterministic(fitted_2d):
    import torch

    from eval.methods.personalized_2d import PRESETS, build_net

    options = PRESETS["tiny"]
    rng = np.random.default_rng(0)
    r = options.size
    inputs = [torch.from_numpy(rng.random((2, 3, r, r), np.float32)), torch.from_numpy(rng.random((2, 3, r, r), np.float32)),
              torch.from_numpy(rng.standard_normal((2, 1, 80, 24)).astype(np.float32))]
    torch.manual_seed(3)
    a = build_net(options).eval()
    torch.manual_seed(3)
    b = build_net(options).eval()
    with torch.no_grad():
        ya, ya2, yb = a(*inputs), a(*inputs), b(*inputs)
    assert ya.shape == (2, 3, r - a.split, r)
    assert torch.equal(ya, ya2) and torch.equal(ya, yb)
    trained = fitted_2d[0]._model.net
    with torch.no_grad():
        assert torch.equal(trained(*inputs), trained(*inputs))


def test_personalized_2d_training_is_seeded(prepared_grid, grid_clip, tmp_path):
    from safetensors.numpy import load_file

    from eval.methods.personalized_2d import PRESETS, train_2d

    options = dataclasses.replace(PRESETS["tiny"], steps=10)
    runs = [train_2d(prepared_grid.path, grid_clip, tmp_path / f"m{i}", options=options, seed=5) for i in range(2)]
    assert runs[0]["val_l1"] == runs[1]["val_l1"]
    w0, w1 = load_file(str(tmp_path / "m0" / "model.safetensors")), load_file(str(tmp_path / "m1" / "model.safetensors"))
    assert all(np.array_equal(w0[k], w1[k]) for k in w0)


def test_personalized_2d_refuses_bad_settings(prepared_grid, grid_clip, tmp_path):
    from eval.core import Unavailable
    from eval.methods import get_method

    ctx = _context(tmp_path, prepared_grid, grid_clip)
    method = get_method("personalized_2d")
    with pytest.raises(LipsyncError, match="unknown preset"):
        method(dataclasses.replace(ctx, preset="huge")).check()
    with pytest.raises(Unavailable, match="does not exist"):
        method(dataclasses.replace(ctx, train_video=tmp_path / "missing.mp4")).check()
