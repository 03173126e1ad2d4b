"""The demo's handlers, called directly (no server, no browser, no network).

One work folder per module, the ``tiny`` training preset (seconds) for everything that trains.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import gradio as gr
import pytest

from conftest import GRID_CLIP, ROOT, ffmpeg

from demo import compare, errors, handlers, jobs, views
from demo.checks import check_audio, check_text, check_video
from demo.config import DemoConfig, Limits
from lipsync.common import LipsyncError

CACHED_EXAMPLE_S = 1.0  # a second visit shows the example from the cache: well under a second


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> DemoConfig:
    return DemoConfig(root=tmp_path_factory.mktemp("demo-root"), example_preset="tiny")


@pytest.fixture
def session(cfg) -> dict:
    return jobs.new_session(cfg)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    """Small files made with ffmpeg: no face, too long, silent, a photo, a text file."""
    d = tmp_path_factory.mktemp("media")
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=2", "-f", "lavfi", "-i", "sine=duration=2",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(d / "noface.mp4"))
    ffmpeg("-f", "lavfi", "-i", "color=c=gray:size=64x48:rate=1:duration=310", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", str(d / "long.mp4"))
    ffmpeg("-f", "lavfi", "-i", "sine=duration=61", str(d / "long.wav"))
    ffmpeg("-i", str(GRID_CLIP), "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(d / "silent.mp4"))
    ffmpeg("-i", str(GRID_CLIP), "-vn", str(d / "speech.wav"))
    ffmpeg("-ss", "1", "-i", str(GRID_CLIP), "-frames:v", "1", str(d / "photo.png"))
    (d / "notes.mp4").write_text("this is not a video\n")
    return {p.name: p for p in d.iterdir()}


@pytest.fixture(scope="module")
def grid_session(cfg) -> dict:
    """A session whose speaker is the GRID clip, uploaded and preprocessed through the handler."""
    session = jobs.new_session(cfg)
    out = handlers.preprocess_speaker(cfg, session, str(GRID_CLIP), "Grid upload")
    return out[0]


# ---------------------------------------------------------------------------------------------
# structure

def test_import_demo_is_light():
    code = "import sys, demo; print(sorted(m for m in ('torch', 'gradio', 'mediapipe') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_build_app_without_launching(cfg):
    from demo.app import build_app

    app = build_app(cfg)
    assert isinstance(app, gr.Blocks)
    names = {d.api_name for d in app.fns.values()}
    assert {"run_example", "train_example", "preprocess", "train", "synthesize", "compare"} <= names


def test_cli_defaults():
    from demo.__main__ import build_parser

    args = build_parser().parse_args([])
    assert (args.host, args.port) == ("127.0.0.1", 7860)


# ---------------------------------------------------------------------------------------------
# upload checks (before any slow work)

def test_wrong_type_is_refused(cfg, media):
    with pytest.raises(LipsyncError, match="is not a readable video file") as err:
        check_video(media["notes.mp4"], "notes.mp4", cfg.limits)
    assert str(media["notes.mp4"].parent) not in str(err.value)


def test_too_long_video_is_refused_quickly(cfg, media):
    t0 = time.perf_counter()
    with pytest.raises(LipsyncError, match="310 s long; the limit here is 300 s"):
        check_video(media["long.mp4"], "long.mp4", cfg.limits)
    assert time.perf_counter() - t0 < 5


def test_too_large_video_is_refused(media):
    with pytest.raises(LipsyncError, match="videos may be at most"):
        check_video(media["noface.mp4"], "noface.mp4", Limits(video_mb=0.001))


def test_audio_checks(cfg, media):
    with pytest.raises(LipsyncError, match="the limit here is 60 s"):
        check_audio(media["long.wav"], "long.wav", cfg.limits)
    with pytest.raises(LipsyncError, match="has no sound"):
        check_audio(media["silent.mp4"], "silent.mp4", cfg.limits)
    path, seconds = check_audio(media["speech.wav"], "speech.wav", cfg.limits)
    assert 2.5 < seconds < 3.5
    with pytest.raises(LipsyncError, match="text is empty"):
        check_text("  ", cfg.limits)
    with pytest.raises(LipsyncError, match="characters"):
        check_text("a" * 501, cfg.limits)


def test_photo_is_a_target(cfg, media):
    assert check_video(media["photo.png"], "photo.png", cfg.limits, allow_image=True)[1] == "image"


# ---------------------------------------------------------------------------------------------
# handlers: error paths show one sentence

def test_no_face_is_a_readable_error_and_leaves_no_speaker(cfg, session, media):
    with pytest.raises(gr.Error, match="No face was found in noface.mp4") as err:
        handlers.preprocess_speaker(cfg, session, str(media["noface.mp4"]), "")
    assert str(cfg.root) not in err.value.message
    assert [sid for _, sid in jobs.list_speakers(cfg, session)] == [jobs.EXAMPLE_ID]


def test_wrong_type_and_missing_upload_in_the_handler(cfg, session, media):
    with pytest.raises(gr.Error, match="notes.mp4 is not a readable video file"):
        handlers.preprocess_speaker(cfg, session, str(media["notes.mp4"]), "")
    with pytest.raises(gr.Error, match="no video was given"):
        handlers.preprocess_speaker(cfg, session, None, "")


def test_missing_model_and_missing_speaker(cfg, session, grid_session):
    with pytest.raises(gr.Error, match="no speaker is selected"):
        handlers.synthesize_speech(cfg, session, None, "text", None, "Hello.", "training", None)
    with pytest.raises(gr.Error, match="has no trained model yet"):
        handlers.synthesize_speech(cfg, grid_session, None, "text", None, "Hello.", "training", None)
    with pytest.raises(gr.Error, match="has no trained model yet"):
        compare.run_comparison(cfg, grid_session, None, ["frozen"], "self", None, None, None, "tiny")


def test_sessions_do_not_see_each_others_speakers(cfg, session, grid_session):
    sid = grid_session["speaker"]
    assert sid in [s for _, s in jobs.list_speakers(cfg, grid_session)]
    assert sid not in [s for _, s in jobs.list_speakers(cfg, session)]
    with pytest.raises(LipsyncError, match="not in this session"):
        jobs.get_speaker(cfg, session, sid)
    with pytest.raises(LipsyncError, match="not in this session"):
        jobs.get_speaker(cfg, session, "../" + grid_session["token"])


def test_unexpected_errors_are_one_sentence(cfg, session):
    @errors.user_errors
    def broken(cfg, session):
        raise KeyError(str(cfg.root / "sessions" / "x" / "secret.npy"))

    with pytest.raises(gr.Error) as err:
        broken(cfg, session)
    assert "Something went wrong unexpectedly" in err.value.message
    assert str(cfg.root) not in err.value.message and "secret.npy" in err.value.message


# ---------------------------------------------------------------------------------------------
# handlers: the main paths

def test_preprocess_shows_what_happened(cfg, grid_session):
    summary, *images = handlers.select_speaker(cfg, grid_session, grid_session["speaker"], "quick")[2:8]
    assert "Grid upload" in summary and "usable" in summary
    assert "only 3 s of usable frames" in summary  # the manifest's warnings are listed
    assert all(Path(p).is_file() for p in images)  # mesh, atlas before/after, pose, lighting


def test_train_cancel_and_resume(cfg, grid_session):
    speaker = jobs.get_speaker(cfg, grid_session, grid_session["speaker"])
    folder = jobs.model_dir(speaker, "tiny")
    job = jobs.start_training(speaker.prepared, folder, "tiny")
    job.cancel.set()
    assert job.done.wait(120)
    assert job.cancelled and job.error is None
    assert jobs.model_state(folder) == "stopped"
    updates = list(handlers.train_speaker(cfg, grid_session, "tiny"))
    curve, status, models = updates[-1]
    assert jobs.training_job(folder).resumed
    assert jobs.model_state(folder) == "finished"
    assert "Finished" in status
    assert {"train geometry", "validation texture"} <= {line.get_label() for line in curve.axes[0].lines}
    assert set(views.loss_frame(None, folder)["series"]) == {"train geometry", "train texture",
                                                                "validation geometry", "validation texture"}
    assert models.choices[0][1] == "tiny"


def test_example_then_cached_second_visit(cfg, session):
    out = handlers.run_example(cfg, session, "Place blue at F two now.")
    new_session, video, mesh, files, status = out[0], out[3], out[4], out[5], out[6]
    assert new_session["speaker"] == jobs.EXAMPLE_ID
    assert Path(video).stat().st_size > 0 and Path(mesh).suffix == ".glb"
    assert [Path(f).suffix for f in files] == [".mp4", ".glb", ".csv"]
    assert "frames" in status
    t0 = time.perf_counter()
    again = handlers.start(cfg, new_session["token"])
    assert time.perf_counter() - t0 < CACHED_EXAMPLE_S
    assert again[0]["token"] == new_session["token"] and again[3] == video


def test_the_example_uses_the_shipped_model_first(cfg, session):
    """Run the example: the shipped model (trained on 3 minutes of the speaker), over the bundled
    clip; it is the example speaker's first model, drivable like any other."""
    from demo.example_model import shipped_model

    assert shipped_model() is not None
    out = handlers.run_example(cfg, session, "Bin blue at A one.")
    assert "Preprocessing the example clip and synthesis took" in out[6]
    assert jobs.example_speaker(cfg).is_prepared()  # its overview and Compare work as for any speaker
    assert out[2].choices[0] == (jobs.PRESET_LABELS[jobs.SHIPPED], jobs.SHIPPED)
    speaker = jobs.get_speaker(cfg, out[0], jobs.EXAMPLE_ID)
    assert jobs.finished_models(speaker)[0] == (jobs.SHIPPED, shipped_model())
    video, _, _, status = handlers.synthesize_speech(cfg, out[0], jobs.SHIPPED, "text", None, "Lay red by B two.",
                                                     "training", None)
    assert Path(video).stat().st_size > 0 and "frames" in status
    _, table, notes, _ = compare.run_comparison(cfg, out[0], jobs.SHIPPED, ["frozen"], "self", None, None, None, "tiny")
    assert "which the shipped model never saw" in notes and list(table["method"])[0] == compare.THIS_MODEL
    # another speaker cannot borrow the example's shipped model
    with pytest.raises(LipsyncError, match="the shipped model is the example speaker's"):
        jobs.model_dir(jobs.Speaker("sp-000000000000", "x", cfg.root / "x", GRID_CLIP), jobs.SHIPPED)


def test_live_tab_gets_a_ticket_for_the_visitors_own_model_and_target(cfg, session, media):
    """Get ready: the shipped model into its bundled clip, then into an uploaded photo; each gives
    the page a new ticket that resolves to that model and target; an unknown ticket, a target
    without a face, and a visitor without a model get one sentence."""
    import re

    from demo import live

    with pytest.raises(gr.Error, match="no speaker is selected|no trained model"):
        live.get_ready(cfg, session, None)
    out = handlers.run_example(cfg, session, "Bin blue at A one.")
    html = live.get_ready(cfg, out[0], jobs.SHIPPED, "training", None)
    ticket = re.search(r'data-ticket="([^"]+)"', html).group(1)
    model, target = live.DESK.resolve({"ticket": ticket})
    assert Path(target.target.source).name == Path(jobs.example_speaker(cfg).video).name and target.size == (360, 288)
    photo = live.get_ready(cfg, out[0], jobs.SHIPPED, "upload", str(media["photo.png"]))
    ticket2 = re.search(r'data-ticket="([^"]+)"', photo).group(1)
    assert ticket2 != ticket and "into photo.png" in photo
    model2, target2 = live.DESK.resolve({"ticket": ticket2})
    assert model2 is model and target2 is not target and target2.size == (360, 288) and len(target2.usable) >= 1
    for bad in (None, "nope", ticket + "x"):
        with pytest.raises(LipsyncError, match="press Get ready again"):
            live.DESK.resolve({"ticket": bad})
    with pytest.raises(gr.Error, match="(?i)no face"):
        live.get_ready(cfg, out[0], jobs.SHIPPED, "upload", str(media["noface.mp4"]))


def test_train_the_example_yourself(cfg, session):
    """The second button: preprocess, train on the bundled 3 s and synthesize, cached by content."""
    out = handlers.train_example(cfg, session, "Place red at G nine now.")
    assert "Preprocessing, training and synthesis took" in out[6]
    speaker = jobs.get_speaker(cfg, out[0], jobs.EXAMPLE_ID)
    assert jobs.model_state(jobs.model_dir(speaker, "tiny")) == "finished"
    again = handlers.train_example(cfg, out[0], "Place red at G nine now.")
    assert again[3] == out[3] and "from the cache" in again[6]


def test_drive_with_text_and_a_photo(cfg, grid_session, media):
    speaker = jobs.get_speaker(cfg, grid_session, grid_session["speaker"])
    if jobs.model_state(jobs.model_dir(speaker, "tiny")) != "finished":
        list(handlers.train_speaker(cfg, grid_session, "tiny"))
    video, mesh, files, status = handlers.synthesize_speech(cfg, grid_session, "tiny", "text", None,
                                                            "Bin blue at A one.", "upload", str(media["photo.png"]), 1.3)
    assert Path(video).stat().st_size > 0 and "still image" in status
    with pytest.raises(gr.Error, match="mouth motion must be between"):
        handlers.synthesize_speech(cfg, grid_session, "tiny", "text", None, "Bin blue.", "training", None, 5.0)
    with pytest.raises(gr.Error, match="the limit here is 60 s"):
        handlers.synthesize_speech(cfg, grid_session, "tiny", "audio", str(media["long.wav"]), None,
                                   "training", None)


def test_compare_with_a_baseline_and_metrics(cfg, grid_session):
    speaker = jobs.get_speaker(cfg, grid_session, grid_session["speaker"])
    if jobs.model_state(jobs.model_dir(speaker, "tiny")) != "finished":
        list(handlers.train_speaker(cfg, grid_session, "tiny"))
    with pytest.raises(gr.Error, match="no video was uploaded"):
        compare.run_comparison(cfg, grid_session, "tiny", ["external"], "self", None, None, None, "tiny")
    grid, table, notes, files = compare.run_comparison(cfg, grid_session, "tiny", ["frozen"], "self", None, None,
                                                       None, "tiny")
    assert Path(grid).stat().st_size > 0
    assert list(table["method"]) == [compare.THIS_MODEL, "frozen"]
    assert any(c.startswith("psnr") for c in table.columns)
    assert any(c.startswith("articulation (→1") for c in table.columns)
    assert "self-reenactment" in notes
    # the 3 s example is too short for a sync expert: the notes say so instead of a number
    assert "sync_offset: no sync expert could be trained" in notes


def test_comparison_says_how_much_of_its_test_clip_training_saw(monkeypatch, tmp_path):
    """The test clip is the end of the training video; training holds out only its last 10%."""
    import types

    import lipsync.prepared
    from demo import compare

    speaker = types.SimpleNamespace(is_prepared=lambda: True, prepared=tmp_path)
    for seconds, seen in ((20, 6.0), (80, 0.0), (100, 0.0), (40, 4.0)):
        fake = types.SimpleNamespace(num_frames=25 * seconds, fps=25.0)
        monkeypatch.setattr(lipsync.prepared, "open_prepared", lambda _p, f=fake: f)
        assert compare._seen_in_training(None, speaker) == pytest.approx(seen), seconds
