"""The evaluation metrics (eval/metrics) and their bootstrap intervals (eval/stats.py).

Known-truth checks: PSNR and SSIM against scikit-image; LMD on synthetic faces with a known lip
displacement (exact) and on real GRID frames whose lower lip is warped down by k pixels
(monotonic); FID's closed form against scipy's matrix square root; bootstrap coverage of a known mean.
Networks whose weights cannot be had here (AlexNet for LPIPS, SyncNet, Inception) are tested on
their "unavailable" paths, and their loading code with random weights made by the test (only the
plumbing: such numbers are not the metric).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eval.core import MetricValue, Sample, Unavailable
from lipsync.common import LipsyncError

FPS = 25.0


# ---------------------------------------------------------------------------------------------
# helpers

def boxes_from_landmarks(lm: np.ndarray, idx=None, pad: float = 0.1) -> np.ndarray:
    """int (T, 4) boxes around the landmarks ``idx`` (all: the face), padded by ``pad`` of the size."""
    pts = lm if idx is None else lm[:, idx]
    lo, hi = np.nanmin(pts[..., :2], axis=1), np.nanmax(pts[..., :2], axis=1)
    size = hi - lo
    box = np.concatenate([lo - pad * size, hi + pad * size], axis=1)
    return np.nan_to_num(box, nan=0).round().astype(int)


def make_sample(frames, target, *, reference="target", landmarks=None, canonical=None, audio=None,
                workdir: Path, face_box=None, mouth_box=None, valid=None) -> Sample:
    t = len(target)
    h, w = target.shape[1:3]
    if face_box is None:
        face_box = np.tile([w // 4, h // 4, 3 * w // 4, 3 * h // 4], (t, 1))
    if mouth_box is None:
        mouth_box = np.tile([w // 3, h // 2, 2 * w // 3, 3 * h // 4], (t, 1))
    return Sample(method="test", clip="clip", fps=FPS, frames=frames, target=target,
                  reference=target if isinstance(reference, str) else reference,
                  canonical=np.zeros((468, 3), np.float32) if canonical is None else canonical,
                  audio=np.zeros(int(t / FPS * 16000), np.float32) if audio is None else audio,
                  face_box=face_box, mouth_box=mouth_box,
                  landmarks=np.zeros((t, 468, 3), np.float32) if landmarks is None else landmarks,
                  valid=np.ones(t, bool) if valid is None else valid, video=workdir / "out.mp4", workdir=workdir)


def textured_frames(t=6, h=96, w=112, seed=0) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3)).astype(np.uint8), (5, 5), 1.2)
    return np.stack([np.roll(base, i, axis=1) for i in range(t)])


# ---------------------------------------------------------------------------------------------
# registry

def test_registry_lists_every_metric_with_valid_fields():
    from eval.metrics import METRICS, available_metrics, get_metrics

    names = ["psnr", "ssim", "lpips", "lmd", "mouth_corr", "sync_offset", "sync_conf", "lse_d", "lse_c",
             "teeth", "teeth_corr", "articulation", "opening", "sharpness", "flicker", "fid"]
    assert sorted(available_metrics()) == sorted(names)
    assert available_metrics()[:4] == ["psnr", "ssim", "lpips", "lmd"]  # report order, whatever was imported first
    for m in get_metrics(None):
        assert m.better in ("higher", "lower", "target") and m.description.endswith(".") and m.requires
        assert (m.target is not None) == (m.better == "target")
    assert {m.name for m in get_metrics(None) if m.needs_reference} == {
        "psnr", "ssim", "lpips", "lmd", "mouth_corr", "teeth", "teeth_corr", "articulation", "opening"}
    assert METRICS["fid"].aggregate is not None
    assert [m.name for m in get_metrics(["ssim", "psnr", "ssim"])] == ["ssim", "psnr"]
    with pytest.raises(LipsyncError, match="unknown metric 'nope'.*psnr"):
        get_metrics(["psnr", "nope"])


def test_importing_the_registry_loads_no_heavy_package():
    import subprocess
    import sys

    heavy = ("torch", "mediapipe", "lpips", "syncnet_python")
    code = f"import sys, eval.metrics; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# image fidelity

def test_psnr_and_ssim_match_scikit_image():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from eval.metrics.image import PSNR_CAP_DB, psnr, ssim

    rng = np.random.default_rng(1)
    a = textured_frames(1, 70, 90)[0]
    for noise in (2, 10, 40):
        b = np.clip(a.astype(int) + rng.integers(-noise, noise + 1, a.shape), 0, 255).astype(np.uint8)
        assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), abs=1e-9)
        ref = structural_similarity(a, b, channel_axis=-1, data_range=255, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False)
        assert ssim(a, b) == pytest.approx(ref, abs=1e-9)
    assert psnr(a, a) == PSNR_CAP_DB
    assert ssim(a, a) == pytest.approx(1.0)


def test_image_metrics_on_a_sample_use_the_face_box_and_skip_untracked_frames(tmp_path):
    from skimage.metrics import peak_signal_noise_ratio

    from eval.metrics import METRICS

    target = textured_frames(5)
    rng = np.random.default_rng(2)
    out = np.clip(target.astype(int) + rng.integers(-8, 9, target.shape), 0, 255).astype(np.uint8)
    out[:, :5] = 0  # damage outside the face box: must not count
    box = np.array([20, 10, 90, 80])
    valid = np.array([True, True, False, True, True])
    s = make_sample(out, target, workdir=tmp_path, face_box=np.tile(box, (5, 1)), valid=valid)
    v = METRICS["psnr"].compute(s, {})
    want = [peak_signal_noise_ratio(target[i, 10:80, 20:90], out[i, 10:80, 20:90], data_range=255) for i in (0, 1, 3, 4)]
    assert np.isnan(v.per_frame[2]) and v.extra["frames_used"] == 4
    assert v.value == pytest.approx(np.mean(want))
    same = METRICS["ssim"].compute(make_sample(target, target, workdir=tmp_path), {})
    assert same.value == pytest.approx(1.0)
    with pytest.raises(Unavailable, match="ground-truth"):
        METRICS["psnr"].compute(make_sample(out, target, reference=None, workdir=tmp_path), {})


def test_lpips_is_unavailable_without_alexnet_weights(tmp_path, monkeypatch):
    from eval.metrics import METRICS

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    reason = METRICS["lpips"].unavailable({})
    assert reason and "alexnet-owt-7be5be79.pth" in reason and str(tmp_path) in reason
    assert "not found" in METRICS["lpips"].unavailable({"lpips_weights": str(tmp_path / "missing.pth")})
    s = make_sample(textured_frames(2), textured_frames(2), workdir=tmp_path)
    with pytest.raises(Unavailable, match="AlexNet"):
        METRICS["lpips"].compute(s, {})


def test_lpips_loads_alexnet_weights_from_a_file(tmp_path, monkeypatch):
    """Plumbing only: the AlexNet weights here are RANDOM (made by the test), so the numbers are
    not LPIPS; what is tested is that the file is loaded strictly into the backbone without any
    download and the metric runs end to end (identical -> 0, different -> > 0)."""
    import torch
    from torchvision.models import alexnet

    from eval.metrics import METRICS
    from eval.metrics.image import load_lpips

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # nothing there: nothing to fall back on
    torch.manual_seed(0)
    net = alexnet(weights=None)
    path = tmp_path / "alexnet-random.pth"
    torch.save(net.state_dict(), path)
    model = load_lpips(str(path), "cpu")
    assert torch.equal(model.net.slice1._modules["0"].weight, net.features[0].weight)
    assert torch.equal(model.net.slice5._modules["10"].bias, net.features[10].bias)
    settings = {"lpips_weights": str(path)}
    assert METRICS["lpips"].unavailable(settings) is None
    target = textured_frames(3)
    same = METRICS["lpips"].compute(make_sample(target, target, workdir=tmp_path), settings)
    assert same.value == pytest.approx(0.0, abs=1e-7)
    other = METRICS["lpips"].compute(make_sample(255 - target, target, workdir=tmp_path), settings)
    assert other.value > 0 and np.isfinite(other.per_frame).all()
    bad = tmp_path / "not-alexnet.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, bad)
    assert "not a torchvision AlexNet" in METRICS["lpips"].unavailable({"lpips_weights": str(bad)})


# ---------------------------------------------------------------------------------------------
# landmark metrics

def _synthetic_faces(canonical: np.ndarray, t: int, seed: int = 0):
    """The canonical face under random similarities: landmarks in pixels (T, 468, 3) and the poses."""
    from lipsync.pose import apply_similarity, euler_to_rotation

    rng = np.random.default_rng(seed)
    rot = euler_to_rotation(rng.uniform(-20, 20, t), rng.uniform(-10, 10, t), rng.uniform(-15, 15, t))
    scale = rng.uniform(40, 80, t).astype(np.float32)
    trans = np.c_[rng.uniform(100, 200, (t, 2)), np.zeros(t)].astype(np.float32)
    return apply_similarity(np.broadcast_to(canonical, (t, *canonical.shape)), scale, rot, trans), (scale, rot, trans)


def test_landmark_distance_of_a_known_lip_displacement_is_exact(grid):
    from eval.metrics.lipsync import eye_distance, landmark_distance, mouth_indices

    can = grid["canonical"]
    t = 6
    ref, _ = _synthetic_faces(can, t, seed=1)
    assert np.abs(landmark_distance(ref, ref, can)).max() < 1e-4
    # move the lower lip (the inner and outer rings' points below the mouth's centre) down by d
    # canonical units, then pose the face as the reference frames are posed
    idx = mouth_indices()
    lower = idx[can[idx, 1] > can[idx, 1].mean()]
    d = 0.05 * eye_distance(can)
    moved = can.copy()
    moved[lower, 1] += d
    out, _ = _synthetic_faces(moved, t, seed=1)
    f = len(lower) / len(idx)  # after mean-centring: lower points move d(1-f), the others -d f
    expected = (len(lower) * d * (1 - f) + (len(idx) - len(lower)) * d * f) / len(idx) / eye_distance(can) * 100
    got = landmark_distance(out, ref, can)
    np.testing.assert_allclose(got, expected, rtol=1e-3)
    # a different pose of the same displaced face does not change it
    out2, _ = _synthetic_faces(moved, t, seed=7)
    np.testing.assert_allclose(landmark_distance(out2, ref, can), expected, rtol=1e-3)
    # untracked frames are NaN
    out2[2] = np.nan
    assert np.isnan(landmark_distance(out2, ref, can)[2])


def test_mouth_correlation_of_synthetic_openings(grid, tmp_path):
    from eval.metrics.lipsync import mouth_series, pearson
    from lipsync.topology import INNER_LIP_LOWER

    can = grid["canonical"]
    openings = np.sin(np.linspace(0, 6, 30)) * 0.04 + 0.05
    lower = list(INNER_LIP_LOWER[1:-1])  # the lower inner lip without the mouth corners
    faces = []
    for o in openings:
        f = can.copy()
        f[lower, 1] += o
        faces.append(_synthetic_faces(f, 1, seed=len(faces))[0][0])
    faces = np.stack(faces)
    m = mouth_series(faces, can)
    assert pearson(m, openings) > 0.999
    assert pearson(m, -openings) < -0.999


def warp_lower_lip(frame: np.ndarray, pts: np.ndarray, k: float, topo) -> np.ndarray:
    """Move the lower lip region of an RGB frame down by ``k`` pixels (smoothly fading out)."""
    import cv2

    h, w = frame.shape[:2]
    lips = pts[np.r_[topo.regions["lips_outer"], topo.regions["lips_inner"]], :2]
    cx, cy = lips[:, 0].mean(), lips[:, 1].mean()
    half_w = (lips[:, 0].max() - lips[:, 0].min()) * 0.6
    depth = (lips[:, 1].max() - cy) * 1.8
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    wx = np.clip(1 - np.abs(xs - cx) / half_w, 0, 1)
    wy = np.clip(1 - np.abs(ys - (cy + depth / 2)) / (depth / 2), 0, 1) * (ys > cy)
    shift = (k * wx * np.sin(np.pi / 2 * wy)).astype(np.float32)
    return cv2.remap(frame, xs, ys - shift, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def test_lmd_on_real_frames_is_zero_for_identical_video_and_grows_with_lip_warp(grid, tmp_path):
    from eval.metrics import METRICS

    sub = slice(10, 40)
    gt = np.ascontiguousarray(grid["frames"][sub])
    lm = grid["landmarks"][sub]
    face = boxes_from_landmarks(lm)
    common = dict(landmarks=lm, canonical=grid["canonical"], face_box=face, mouth_box=face, workdir=tmp_path)
    same = METRICS["lmd"].compute(make_sample(gt.copy(), gt, **common), {})
    assert same.value == 0.0 and same.extra["skipped_fraction"] == 0.0
    assert list((tmp_path / "tracks").glob("*.npy")), "tracked landmarks are cached in the workdir"
    values = []
    for k in (2, 4, 6):
        out = np.stack([warp_lower_lip(f, p, k, grid["topo"]) for f, p in zip(gt, lm)])
        values.append(METRICS["lmd"].compute(make_sample(out, gt, **common), {}).value)
    assert 0 < values[0] < values[1] < values[2]
    corr = METRICS["mouth_corr"].compute(make_sample(gt.copy(), gt, **common), {})
    assert corr.value == pytest.approx(1.0)


def test_syncnet_metrics_are_unavailable_without_weights(tmp_path):
    from eval.metrics import METRICS

    for name in ("lse_d", "lse_c"):
        reason = METRICS[name].unavailable({})
        assert "syncnet_v2.model" in reason and "syncnet_weights" in reason
        missing = {"syncnet_weights": str(tmp_path / "nope.model"), "s3fd_weights": str(tmp_path / "x.pth")}
        reason = METRICS[name].unavailable(missing)
        assert "do not exist" in reason
        s = make_sample(textured_frames(2), textured_frames(2), workdir=tmp_path)
        with pytest.raises(Unavailable, match="syncnet_weights"):
            METRICS[name].compute(s, {})


# ---------------------------------------------------------------------------------------------
# realism and stability

def test_sharpness_is_one_for_the_real_frames_and_lower_when_blurred(tmp_path):
    import cv2

    from eval.metrics import METRICS

    target = textured_frames(4)
    assert METRICS["sharpness"].compute(make_sample(target.copy(), target, workdir=tmp_path), {}).value == pytest.approx(1.0)
    blurred = np.stack([cv2.GaussianBlur(f, (7, 7), 2.0) for f in target])
    v = METRICS["sharpness"].compute(make_sample(blurred, target, workdir=tmp_path), {})
    assert v.value < 0.5 and np.isfinite(v.per_frame).all()


def test_flicker_against_the_real_video(tmp_path):
    from eval.metrics import METRICS

    target = textured_frames(8)
    rng = np.random.default_rng(3)
    same = METRICS["flicker"].compute(make_sample(target.copy(), target, workdir=tmp_path), {})
    assert same.value == pytest.approx(1.0)
    assert np.isnan(same.per_frame[0]) and np.isnan(same.per_frame[-1])
    assert np.nanmean(same.per_frame) == pytest.approx(same.value)
    frozen = np.repeat(target[:1], len(target), axis=0)
    assert METRICS["flicker"].compute(make_sample(frozen, target, workdir=tmp_path), {}).value == 0.0
    noisy = np.clip(target.astype(int) + rng.integers(-30, 31, target.shape), 0, 255).astype(np.uint8)
    assert METRICS["flicker"].compute(make_sample(noisy, target, workdir=tmp_path), {}).value > 1.5


def test_flicker_skips_the_turns_of_a_ping_pong_schedule():
    from lipsync.synthesis.schedule import ping_pong as frame_schedule
    from eval.metrics.realism import consecutive_triples

    clip = textured_frames(5)
    schedule = frame_schedule(12, 5)  # 0 1 2 3 4 3 2 1 0 1 2 3
    ok = consecutive_triples(clip[schedule])
    turns = {4, 8}  # frames whose neighbours are one clip frame: 3 4 3 and 1 0 1
    assert [t for t in range(12) if not ok[t]] == [0, *sorted(turns), 11]


def test_frechet_distance_matches_the_matrix_square_root_formula():
    from scipy import linalg

    from eval.metrics.realism import frechet_distance

    rng = np.random.default_rng(4)
    for n, m, d in ((12, 15, 40), (300, 200, 8)):  # fewer and more samples than dimensions
        a = rng.normal(size=(n, d))
        b = rng.normal(size=(m, d)) @ rng.normal(size=(d, d)) * 0.5 + 0.3
        sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * np.trace(linalg.sqrtm(sa @ sb).real)
        assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)
        assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    # row weights are multiplicities: the same as repeating the rows (what a bootstrap resample does)
    w = rng.integers(0, 4, len(b))
    rows = np.repeat(np.arange(len(b)), w)
    c = rng.normal(size=b.shape)
    assert frechet_distance(b, c, w) == pytest.approx(frechet_distance(b[rows], c[rows]), rel=1e-9)


def test_fid_is_unavailable_without_inception_weights(tmp_path, monkeypatch):
    from eval.metrics import METRICS

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    reason = METRICS["fid"].unavailable({})
    assert "inception_weights" in reason and "inception_v3_google" in reason
    assert "do not exist" in METRICS["fid"].unavailable({"inception_weights": str(tmp_path / "nope.pth")})
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert "could not be read" in METRICS["fid"].unavailable({"inception_weights": str(tmp_path / "junk.pth")})
    with pytest.raises(Unavailable, match="Inception"):
        METRICS["fid"].compute(make_sample(textured_frames(2), textured_frames(2), workdir=tmp_path), {})


def test_fid_plumbing_with_random_inception_weights(tmp_path, monkeypatch):
    """Plumbing only: the Inception weights are RANDOM (made by the test), so the values are not
    FID; what is tested is strict loading of a torchvision state dict file, the per-clip features
    and the set-level aggregate (identical sets -> ~0, different sets -> > 0)."""
    import torch
    from torchvision.models import inception_v3

    from eval.metrics import METRICS
    from eval.stats import summarize

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.manual_seed(0)
    path = tmp_path / "inception-random.pth"
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), path)
    settings = {"inception_weights": str(path), "fid_frames": 4}
    fid = METRICS["fid"]
    assert fid.unavailable(settings) is None
    target = textured_frames(6)
    same = [fid.compute(make_sample(target.copy(), target, workdir=tmp_path / f"s{i}"), settings) for i in range(2)]
    assert all(Path(v.extra["features"]).is_file() and v.extra["frames_used"] == 4 for v in same)
    assert fid.aggregate(same, np.random.default_rng(0)) == pytest.approx(0.0, abs=1e-6)
    other = fid.compute(make_sample(255 - target, target, workdir=tmp_path / "o"), settings)
    assert fid.aggregate(same + [other], None) > 0
    summary = summarize(same + [other], metric=fid, n_boot=50)
    assert summary["ci_over"] == "clips" and summary["ci95"][0] <= summary["ci95"][1]


# ---------------------------------------------------------------------------------------------
# bootstrap

def test_bootstrap_over_clips_covers_the_true_mean():
    from eval.stats import summarize

    rng = np.random.default_rng(5)
    covered = 0
    trials = 200
    for i in range(trials):
        values = [MetricValue(float(x)) for x in rng.normal(3.0, 1.0, 20)]
        s = summarize(values, n_boot=400, seed=i)
        covered += s["ci95"][0] <= 3.0 <= s["ci95"][1]
    assert s["ci_over"] == "clips" and s["n_clips"] == 20
    assert 0.85 <= covered / trials <= 0.99  # nominal 95%; the percentile bootstrap runs a little narrow at n = 20


def test_bootstrap_is_deterministic_for_a_seed_and_drops_failed_clips():
    from eval.stats import summarize

    clips = (1.0, 2.0, 4.0, 3.5, 0.5, 2.5, 6.0, 1.5)
    values = [MetricValue(v, np.array([v, v + 1.0, np.nan])) for v in clips] + [MetricValue(float("nan"))]
    a, b = summarize(values, seed=3), summarize(values, seed=3)
    assert a == b
    assert summarize(values, seed=4)["ci95"] != a["ci95"]
    assert a["value"] == pytest.approx(np.mean(clips)) and a["n_failed"] == 1 and a["n_clips"] == 8 and a["n_frames"] == 16
    none = summarize([MetricValue(float("nan"))])
    assert np.isnan(none["value"]) and none["ci95"] is None and none["n_failed"] == 1 and "note" in none


def test_single_clip_intervals():
    from eval.stats import summarize

    rng = np.random.default_rng(6)
    per = rng.normal(10.0, 2.0, 75)
    s = summarize([MetricValue(float(per.mean()), per)], block_frames=25)
    assert s["ci_over"] == "frames" and s["n_frames"] == 75 and s["ci95"][0] < per.mean() < s["ci95"][1]
    s = summarize([MetricValue(0.7)])
    assert s["ci95"] is None and s["ci_over"] is None and "no per-frame" in s["note"] and s["value"] == 0.7


def test_set_level_aggregate_is_reapplied_to_each_resample():
    from eval.metrics import Metric
    from eval.stats import summarize

    calls = []

    def biggest(values, rng):
        calls.append(len(values))
        return max(v.value for v in values)

    m = Metric(name="max", better="lower", needs_reference=False, unit="", description="Test.", requires="nothing",
               compute=lambda s, c: MetricValue(0.0), aggregate=biggest)
    s = summarize([MetricValue(v) for v in (1.0, 5.0, 3.0)], metric=m, n_boot=100)
    assert s["value"] == 5.0 and len(calls) == 101 and set(calls) == {3}
    assert 1.0 <= s["ci95"][0] <= s["ci95"][1] <= 5.0
    assert summarize([MetricValue(v) for v in (1.0, 5.0, 3.0)], metric=m, n_boot=2000, n_boot_set=40)["n_boot"] == 40
    one = summarize([MetricValue(2.0)], metric=m)
    assert one["value"] == 2.0 and one["ci95"] is None
