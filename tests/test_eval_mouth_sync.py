"""The mouth metrics (teeth, teeth_corr, articulation, opening) and the speaker's sync expert
(sync_offset, sync_conf), with known truths:

* teeth on real GRID frames: none in any frame with closed lips, several percent of the squared
  mouth width when the teeth show; a painted patch of known size is measured to the pixel; an
  output whose teeth are painted over scores a ratio near 0, the real video exactly 1;
* articulation: landmarks whose inner-lip gap is scaled by k give a ratio of exactly k;
* sync: an expert trained on 57 s of the same speaker (other sentences) finds the real clip in
  sync and its audio shifted by a known number of frames at that shift, within one frame.
"""
from __future__ import annotations

import numpy as np
import pytest

from lipsync.common import LipsyncError

from test_eval_metrics import FPS, make_sample

CLOSED = list(range(0, 16)) + list(range(45, 75))   # fixture frames with closed lips (checked by eye)
TEETH = [30, 31, 32, 33, 34]                        # fixture frames with the teeth fully shown
SHIFTS = (-4, 0, 3, 6)                              # audio shifts (frames) for the sync test


# ---------------------------------------------------------------------------------------------
# teeth

@pytest.fixture(scope="module")
def colours(grid):
    from eval.metrics.mouth import speaker_colours

    c = speaker_colours(grid["frames"], grid["landmarks"])
    assert c is not None
    return c


def test_teeth_area_on_real_frames_is_zero_with_closed_lips_and_large_with_teeth(grid, colours):
    from eval.metrics.mouth import teeth_areas

    areas = teeth_areas(grid["frames"], grid["landmarks"], colours)
    assert np.all(areas[CLOSED] == 0), areas[CLOSED]
    assert np.all(areas[TEETH] > 0.03), areas[TEETH]
    # the speaker's lips are darker and redder than the skin: the thresholds come from them
    assert colours.lip_l < colours.skin_l and colours.lip_a > colours.skin_a


def test_teeth_area_of_a_painted_patch_is_measured_to_the_pixel(grid, colours):
    import cv2

    from eval.metrics.mouth import mouth_width, polygon_mask, teeth_areas

    t = 33
    frame = grid["frames"][t].copy()
    lm = grid["landmarks"][t:t + 1]
    inner = grid["topo"].regions["lips_inner"]
    mask = polygon_mask(frame.shape[:2], lm[0, inner])
    frame[mask] = (40, 20, 20)  # a dark mouth cavity: no teeth
    assert teeth_areas(frame[None], lm, colours)[0] == 0
    # a pale patch of known size (only the part inside the lip contour counts)
    cx, cy = np.round(lm[0, inner, :2].mean(0)).astype(int)
    patch = np.zeros_like(mask)
    cv2.rectangle(patch.view(np.uint8), (cx - 6, cy - 2), (cx + 5, cy + 2), 1, -1)
    frame[patch & mask] = (235, 230, 215)
    expected = (patch & mask).sum() / mouth_width(lm[0]) ** 2
    assert (patch & mask).sum() >= 40
    assert teeth_areas(frame[None], lm, colours)[0] == pytest.approx(expected)


def test_teeth_metrics_on_samples(grid, tmp_path):
    from eval.metrics import METRICS
    from eval.metrics.mouth import polygon_mask

    gt = grid["frames"]
    common = dict(canonical=grid["canonical"], landmarks=grid["landmarks"], workdir=tmp_path)
    same = make_sample(gt.copy(), gt, **common)
    assert METRICS["teeth"].compute(same, {}).value == pytest.approx(1.0)
    assert METRICS["teeth_corr"].compute(same, {}).value == pytest.approx(1.0)
    # the same video with the inside of the lips painted the colour of the mouth's shadow
    inner = grid["topo"].regions["lips_inner"]
    no_teeth = gt.copy()
    for t, p in enumerate(grid["landmarks"]):
        if np.isfinite(p).all():
            no_teeth[t][polygon_mask(gt.shape[1:3], p[inner])] = (60, 30, 30)
    v = METRICS["teeth"].compute(make_sample(no_teeth, gt, **common), {})
    assert v.value < 0.1 and v.extra["teeth_frames"] >= len(TEETH)
    # a clip whose real frames show no teeth has no teeth ratio, and says why
    closed = gt[CLOSED[:16]]
    c = METRICS["teeth"].compute(make_sample(closed.copy(), closed, canonical=grid["canonical"],
                                             landmarks=grid["landmarks"][CLOSED[:16]], workdir=tmp_path), {})
    assert np.isnan(c.value) and "teeth in only 0 frames" in c.extra["reason"]


# ---------------------------------------------------------------------------------------------
# articulation

def test_articulation_of_a_known_opening_amplitude_is_exact(grid):
    from eval.metrics.lipsync import mouth_series
    from eval.metrics.mouth import opening_ratios
    from lipsync.topology import INNER_LIP_BOTTOM, INNER_LIP_TOP

    lm = grid["landmarks"].astype(np.float64)
    real = mouth_series(lm, grid["canonical"])
    for k in (0.5, 0.8, 1.3):
        scaled = lm.copy()
        top = lm[:, INNER_LIP_TOP]
        scaled[:, INNER_LIP_BOTTOM] = top + k * (lm[:, INNER_LIP_BOTTOM] - top)
        r = opening_ratios(mouth_series(scaled, grid["canonical"]), real)
        assert r["articulation"] == pytest.approx(k, rel=1e-3)
        assert r["opening"] == pytest.approx(k, rel=1e-3)
    # a mouth that moves as much but sits wider open: articulation 1, opening above 1
    r = opening_ratios(real + 0.05, real)
    assert r["articulation"] == pytest.approx(1.0) and r["opening"] > 1
    assert np.isnan(opening_ratios(real[:5], real[:5])["articulation"])  # too few frames


def test_articulation_metric_on_real_frames(grid, tmp_path):
    from eval.metrics import METRICS

    gt = grid["frames"]
    s = make_sample(gt.copy(), gt, canonical=grid["canonical"], landmarks=grid["landmarks"], workdir=tmp_path)
    a = METRICS["articulation"].compute(s, {})
    assert a.value == pytest.approx(1.0) and a.extra["opening"] == pytest.approx(1.0)
    # the mouth held still (the first frame repeated) does not articulate at all
    still = make_sample(np.repeat(gt[:1], len(gt), 0), gt, canonical=grid["canonical"],
                        landmarks=grid["landmarks"], workdir=tmp_path)
    assert METRICS["articulation"].compute(still, {}).value < 0.1


def test_metrics_with_a_target_are_ranked_and_claimed_by_closeness():
    from eval.metrics import METRICS, direction, goodness
    from eval.report import _best, check_claims

    meta = {"better": "target", "target": 1.0}
    assert direction(METRICS["articulation"]) == "→1" and direction(meta) == "→1"
    assert goodness(0.9, meta) > goodness(1.2, meta)
    results = {"a": {"articulation": {"value": 0.7}}, "b": {"articulation": {"value": 1.05}},
               "c": {"articulation": {"value": 1.4}}}
    assert _best(results, "articulation", meta) == "b"
    rng = np.random.default_rng(0)
    clips = [f"c{i}" for i in range(12)]
    near = {c: {"articulation": 0.98 + 0.02 * rng.standard_normal()} for c in clips}
    low = {c: {"articulation": 0.5 + 0.02 * rng.standard_normal()} for c in clips}
    doc = {"per_clip": {"lipsync3d": near, "frozen": low}, "config": {"seed": 0}, "metrics": {"articulation": meta}}
    claim = next(c for c in check_claims(doc) if c["baseline"] == "frozen")
    assert claim["verdict"] == "holds" and claim["metrics"][0]["difference"] > 0
    # over-articulating by as much is as bad as under-articulating
    doc["per_clip"]["frozen"] = {c: {"articulation": 2 - v["articulation"]} for c, v in low.items()}
    claim = next(c for c in check_claims(doc) if c["baseline"] == "frozen")
    assert claim["verdict"] == "holds"


# ---------------------------------------------------------------------------------------------
# the sync expert

def _shift_audio(audio: np.ndarray, k: int) -> np.ndarray:
    """The audio moved k frames EARLIER (k > 0: the video then lags the audio by k frames)."""
    n = int(round(k * 16000 / FPS))
    if n >= 0:
        return np.concatenate([audio[n:], np.zeros(n, np.float32)])
    return np.concatenate([np.zeros(-n, np.float32), audio[:n]])


@pytest.fixture(scope="module")
def expert(tmp_path_factory):
    """A sync expert trained on the 57 s fixture of the same speaker (about a minute)."""
    from conftest import FIXTURES
    from eval.sync_expert import expert_for
    from lipsync.preprocessing import preprocess

    folder = tmp_path_factory.mktemp("expert")
    preprocess(FIXTURES / "grid_s1_19clips.mp4", folder / "prepared")
    path = expert_for(folder / "prepared", folder)
    assert expert_for(folder / "prepared", folder) == path  # trained once, then reused
    return path


def test_sync_expert_finds_the_real_clip_in_sync_and_known_shifts(grid, expert, tmp_path):
    from eval.metrics import METRICS

    settings = {"sync_expert": str(expert)}
    confidence = {}
    for k in SHIFTS:
        s = make_sample(grid["frames"], grid["frames"], reference=None, canonical=grid["canonical"],
                        audio=_shift_audio(grid["audio"], k), workdir=tmp_path)
        off = METRICS["sync_offset"].compute(s, settings)
        assert abs(off.extra["offset"] - k) <= 1, (k, off.extra["offset"])
        assert off.value == abs(off.extra["offset"]) and len(off.extra["curve"]) == 31
        confidence[k] = METRICS["sync_conf"].compute(s, settings).value
    # speech of nobody (noise) matches the mouth far less well than the real speech at any shift
    noise = np.random.default_rng(0).normal(size=len(grid["audio"])).astype(np.float32) * 0.05
    s = make_sample(grid["frames"], grid["frames"], reference=None, canonical=grid["canonical"], audio=noise,
                    workdir=tmp_path)
    assert METRICS["sync_conf"].compute(s, settings).value < 0.5 * min(confidence.values())


def test_sync_metrics_need_an_expert_and_the_expert_needs_footage(prepared_grid, tmp_path):
    from eval.metrics import METRICS
    from eval.sync_expert import train_expert

    assert "sync expert" in METRICS["sync_offset"].unavailable({})
    assert "does not exist" in METRICS["sync_conf"].unavailable({"sync_expert": str(tmp_path / "none.pt")})
    with pytest.raises(LipsyncError, match="a sync expert needs 375"):
        train_expert(prepared_grid.path, tmp_path / "e.pt")
    assert not list(tmp_path.iterdir())  # nothing half-written
