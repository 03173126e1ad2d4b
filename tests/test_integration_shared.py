"""Real footage from ../shared/data (skipped, with the reason, where it is absent)."""
from __future__ import annotations

import numpy as np
import pytest

from lipsync.preprocessing import PreprocessOptions, preprocess
from lipsync.prepared import open_prepared

pytestmark = pytest.mark.shared_data


def check_clip(clip, *, min_valid=0.98, max_skin_diff=4.0):
    m = clip.manifest
    assert m["valid_fraction"] >= min_valid
    lighting = m["lighting"]
    assert lighting["residual_after"] < lighting["residual_before"]
    assert lighting["temporal_std_after"] <= lighting["temporal_std_before"]
    atlas, mask = clip.array("atlas"), clip.array("atlas_mask")
    skin = clip.regions()["skin"]
    idx = np.linspace(0, m["frames"] - 2, 40).astype(int)
    diffs = []
    for t in idx:
        a, b = atlas[t].astype(np.float32), atlas[t + 1].astype(np.float32)
        sel = skin & mask[t] & mask[t + 1]
        if sel.sum() > 100:
            diffs.append(np.median(np.abs(a - b)[sel]))
    assert np.median(diffs) < max_skin_diff, "the atlas holds still while the head moves"


def test_news_anchor(shared_data, tmp_path):
    out = preprocess(shared_data / "clips" / "news_anchor_de_20s.mp4", tmp_path / "anchor",
                     options=PreprocessOptions(previews=False))
    clip = open_prepared(out)
    assert clip.manifest["width"] == 512 and clip.manifest["frames"] == 500
    check_clip(clip)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["hdtf_katiehill_8s.mp4", "man_suit_6s.mp4", "woman_blue_7s.mp4", "vox_input_b.mp4"])
def test_other_clips(shared_data, tmp_path, name):
    clip = open_prepared(preprocess(shared_data / "clips" / name, tmp_path / "c", options=PreprocessOptions(previews=False)))
    check_clip(clip, min_valid=0.9, max_skin_diff=6.0)


@pytest.mark.slow
def test_grid_speaker_three_minutes(shared_data, tmp_path):
    clip = open_prepared(preprocess(shared_data / "grid_s1" / "s1_train_180s.mp4", tmp_path / "s1"))
    assert clip.manifest["frames"] == 4500
    check_clip(clip)


def test_a_different_person_as_target_is_warned_about(shared_data, prepared_grid, tmp_path):
    """A model of the GRID speaker put into the news anchor's video: it runs, and says it looks wrong."""
    import warnings

    from lipsync.model_io import load_model
    from lipsync.training import TrainOptions, train

    model = load_model(train(prepared_grid.path, tmp_path / "m",
                             options=TrainOptions(steps=20, batch=8, val_every=20, tex_channels=16, pca_components=8)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = model.synthesize(out=tmp_path / "o.mp4", audio=prepared_grid.path / "audio.wav",
                             target=shared_data / "clips" / "news_anchor_de_20s.mp4", renderer="gl")
    assert any("different person" in str(w.message) for w in caught)
    assert any("different person" in n for n in r.notes)
