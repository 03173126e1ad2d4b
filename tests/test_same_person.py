"""Synthesis's same-person check (``lipsync.synthesis.identity``): known truths on the GRID fixture,
and every calibration pair of the shared clips on its side of ``SAME_PERSON``."""
from __future__ import annotations

import dataclasses
import importlib.util
import sys
import warnings

import numpy as np
import pytest

from conftest import FIXTURES, ROOT, ffmpeg
from lipsync.model_io import SpeakerData
from lipsync.synthesis import SAME_PERSON, identity_similarity

EXACT_TOL = 1e-4        # shape difference and colour correlation of a face with itself
INVARIANT_MIN = 0.95    # colour correlation after a white-balance and exposure change (rounding, clipping)
SAME_PERSON_SHAPE_MAX = 0.024  # the largest shape difference between one person's clips on the shared data
CALIBRATION_MARGIN = 0.03      # every shared-data pair at least this far on its side of SAME_PERSON


@pytest.fixture(scope="module")
def speaker(prepared_grid) -> SpeakerData:
    return SpeakerData.from_prepared(prepared_grid)


def with_changes(sp: SpeakerData, **changes) -> SpeakerData:
    return dataclasses.replace(sp, **changes)


def test_a_face_is_itself_at_any_pose_size_and_white_balance(speaker):
    from lipsync.pose import apply_similarity, euler_to_rotation

    same = identity_similarity(speaker, speaker)
    assert abs(same.colour - 1) < EXACT_TOL and same.shape < EXACT_TOL and same.same_person
    rot = euler_to_rotation(20.0, -10.0, 5.0)
    moved = apply_similarity(speaker.reference_vertices[None], np.float32([1.7]), rot[None], np.float32([[3, -2, 5]]))[0]
    atlas = speaker.reference_atlas.astype(np.float32) * np.float32([0.8, 1.0, 1.15]) * 1.1  # warmer light, brighter
    relit = np.where(speaker.reference_atlas.max(-1, keepdims=True) > 0, np.clip(atlas + 0.5, 1, 255), 0).astype(np.uint8)
    r = identity_similarity(speaker, with_changes(speaker, reference_vertices=moved, reference_atlas=relit))
    assert r.shape < EXACT_TOL
    assert r.colour > INVARIANT_MIN and r.same_person


def test_a_different_face_is_not_the_same_person(speaker):
    """Another face shape (longer and narrower below the eyes) and another colour pattern (the
    texture upside down: lip colours on the forehead, brows at the chin) are each caught."""
    v = speaker.reference_vertices.copy()
    below = v[:, 1] > 0
    v[below, 1] *= 1.25
    v[below, 0] *= 0.85
    reshaped = identity_similarity(speaker, with_changes(speaker, reference_vertices=v))
    assert reshaped.shape > 2 * SAME_PERSON_SHAPE_MAX
    recoloured = identity_similarity(speaker, with_changes(speaker, reference_atlas=speaker.reference_atlas[::-1].copy()))
    assert recoloured.colour < SAME_PERSON and not recoloured.same_person
    both = identity_similarity(speaker, with_changes(speaker, reference_vertices=v,
                                                     reference_atlas=speaker.reference_atlas[::-1].copy()))
    assert both.similarity < recoloured.similarity and not both.same_person


def test_too_little_face_gives_no_verdict(speaker):
    dark = np.zeros_like(speaker.reference_atlas)
    r = identity_similarity(speaker, with_changes(speaker, reference_atlas=dark))
    assert not r.decided and np.isnan(r.similarity) and r.triangles == 0
    assert r.same_person  # no verdict is no warning


def test_stills_of_the_grid_speaker_are_the_same_person(speaker, grid_clip, tmp_path):
    """A frame of the clip the speaker was prepared from, and a frame of another sentence, each
    prepared as synthesis prepares a --target image."""
    from lipsync.synthesis.targets import open_target

    for name, video, frame in (("itself", grid_clip, 30), ("other", FIXTURES / "grid_s1_19clips.mp4", 600)):
        still = tmp_path / f"{name}.png"
        ffmpeg("-i", str(video), "-vf", f"select=eq(n\\,{frame})", "-frames:v", "1", str(still))
        notes: list[str] = []
        clip, _, _ = open_target(still, tmp_path / name, int(speaker.reference_atlas.shape[0]), notes)
        r = identity_similarity(speaker, SpeakerData.from_prepared(clip))
        assert r.decided and r.similarity > SAME_PERSON + CALIBRATION_MARGIN, (name, r)


def test_a_target_of_someone_else_warns_and_notes(speaker, grid_clip, tmp_path, monkeypatch):
    """The check is a warning with a note, never a refusal."""
    import lipsync.synthesis.targets as targets
    from lipsync.synthesis.identity import IdentityMatch

    monkeypatch.setattr(targets, "identity_similarity", lambda a, b: IdentityMatch(0.1, 0.2, 0.03, 500))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = targets.target_for_speaker(speaker, grid_clip, tmp_path)
    assert any("different person" in str(w.message) for w in caught)
    assert any("different person" in n for n in t.notes) and t.valid.any()


def load_tool():
    spec = importlib.util.spec_from_file_location("same_person_tool", ROOT / "tools" / "same_person.py")
    tool = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = tool  # its dataclasses look their module up there
    spec.loader.exec_module(tool)
    return tool


@pytest.fixture(scope="session")
def calibration(shared_data, tmp_path_factory):
    """tools/same_person.py --quick: every pair's scores (the clips are prepared once a session)."""
    tool = load_tool()
    plan = tool.speakers(shared_data, quick=True)
    rows = tool.score(plan, tool.prepare(plan, tmp_path_factory.mktemp("same_person"), log=lambda *a: None))
    return tool, plan, rows


@pytest.mark.shared_data
@pytest.mark.slow
def test_every_calibration_pair_is_on_its_side(calibration):
    tool, plan, rows = calibration
    assert len(plan) == 7 and {sp.name for sp in plan} >= {"grid_s1", "news_anchor_de_20s", "vox_pose_a", "vox_input_b"}
    m = tool.margins(rows)
    assert m["pairs_same"] == 6 * 3 + 3 and m["pairs_different"] == 7 * 6 * 3
    report = tool.matrix(plan, rows)
    assert not m["wrong"], report
    assert m["same_margin"] >= CALIBRATION_MARGIN and m["different_margin"] >= CALIBRATION_MARGIN, (m, report)
