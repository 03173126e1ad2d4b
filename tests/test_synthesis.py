"""Synthesis end to end with a tiny model: a playable mp4 with sound, targets, exports, bad input."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

from conftest import GLTF_VALIDATOR_PACKAGE, ROOT, ffmpeg, validate_glb
from lipsync.media import probe
from lipsync.model_io import load_model
from lipsync.synthesis import identity_similarity, ping_pong
from lipsync.training import TrainOptions, train

TINY = TrainOptions(steps=60, batch=8, val_every=30, tex_channels=16, pca_components=8)


@pytest.fixture(scope="module")
def model(prepared_grid, tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "model"
    train(prepared_grid.path, out, options=TINY)
    return load_model(out)


@pytest.fixture(scope="module")
def speech(tmp_path_factory, grid_clip):
    path = tmp_path_factory.mktemp("audio") / "speech.m4a"  # any format ffmpeg reads
    ffmpeg("-i", str(grid_clip), "-vn", "-t", "1.5", "-c:a", "aac", str(path))
    return path


def stream_info(path):
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,codec_name,nb_frames,duration",
                          "-of", "json", str(path)], capture_output=True, text=True).stdout
    return {s["codec_type"]: s for s in json.loads(out)["streams"]}


def test_synthesis_gives_a_playable_video_with_sound(model, speech, tmp_path):
    out = tmp_path / "talk.mp4"
    r = model.synthesize(out=out, audio=speech, renderer="gl")
    streams = stream_info(out)
    assert streams["video"]["codec_name"] == "h264" and streams["audio"]["codec_name"] == "aac"
    frames = int(streams["video"]["nb_frames"])
    assert frames == r.frames and abs(frames / 25 - 1.5) <= 1 / 25  # duration matches the audio within a frame
    assert abs(float(streams["audio"]["duration"]) - 1.5) <= 1 / 25 + 0.03
    assert [p.name for p in tmp_path.iterdir()] == ["talk.mp4"]  # no temporary files left
    assert set(r.timings_s) >= {"model", "render", "blend", "encode", "total"}


def test_only_the_lower_face_changes(model, speech, tmp_path, grid_clip):
    """Blending replaces the lower face through a soft mask: the eyes and background are untouched."""
    from lipsync.media import FrameReader

    out = tmp_path / "talk.mp4"
    model.synthesize(out=out, audio=speech, renderer="gl")
    ours = next(iter(FrameReader(probe(out), max_frames=1))).astype(float)
    orig = next(iter(FrameReader(probe(grid_clip), max_frames=1))).astype(float)
    lm = np.array(load_prepared_landmarks(model))[0]
    eyes_y = int(lm[[33, 263], 1].mean())
    mouth_y = int(lm[13, 1])
    x0, x1 = int(lm[:, 0].min()), int(lm[:, 0].max())
    top = np.abs(ours[: eyes_y + 5] - orig[: eyes_y + 5]).mean()
    assert top < 3.0, "above the eyes only video coding noise"
    assert np.abs(ours[mouth_y - 10:mouth_y + 10, x0:x1] - orig[mouth_y - 10:mouth_y + 10, x0:x1]).mean() > top


def load_prepared_landmarks(model):
    from lipsync.prepared import open_prepared

    return open_prepared(model.config["training"]["prepared"]).array("landmarks")


def test_long_audio_ping_pongs_the_target(model, tmp_path, grid_clip):
    audio = tmp_path / "long.wav"
    ffmpeg("-stream_loop", "2", "-i", str(grid_clip), "-vn", "-t", "7", "-ac", "1", "-ar", "16000", str(audio))
    r = model.synthesize(out=tmp_path / "long.mp4", audio=audio, renderer="gl")
    assert r.frames == 175  # 7 s at 25 fps: longer than the 3 s target, which plays back and forth
    assert ping_pong(7, 4).tolist() == [0, 1, 2, 3, 2, 1, 0]


def test_text_is_spoken_with_espeak(model, tmp_path):
    if not __import__("shutil").which("espeak-ng"):
        pytest.skip("espeak-ng is not installed (make test installs it)")
    r = model.synthesize(out=tmp_path / "tts.mp4", text="Hello there.", renderer="gl")
    assert r.frames > 10 and "espeak" in r.audio


def test_other_targets_video_and_still_image(model, speech, tmp_path, grid_clip):
    still = tmp_path / "face.png"
    ffmpeg("-i", str(grid_clip), "-vf", "select=eq(n\\,30)", "-frames:v", "1", str(still))
    r = model.synthesize(out=tmp_path / "still.mp4", audio=speech, target=still, renderer="gl")
    assert any("still image" in n for n in r.notes)
    silent_target = tmp_path / "target.mp4"  # a target needs no sound of its own
    ffmpeg("-i", str(grid_clip), "-an", "-c:v", "libx264", str(silent_target))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same person: no warning
        r = model.synthesize(out=tmp_path / "video.mp4", audio=speech, target=silent_target, renderer="gl")
    assert r.frames == 37 or r.frames == 38


def test_mesh_and_blendshapes_exports(model, speech, tmp_path):
    r = model.synthesize(out=tmp_path / "t.mp4", audio=speech, mesh=tmp_path / "face.glb",
                         blendshapes=tmp_path / "face.csv", renderer="gl")
    from lipsync.export.gltf import read_glb

    glb = read_glb(tmp_path / "face.glb")
    assert len(glb["times"]) == r.frames
    rows = (tmp_path / "face.csv").read_text().strip().splitlines()
    assert rows[0].startswith("frame,time_s,") and "jawOpen" in rows[0] and len(rows) == r.frames + 1
    if shutil.which("node") and GLTF_VALIDATOR_PACKAGE.is_dir():  # and passes the Khronos validator
        assert validate_glb(tmp_path / "face.glb")[0]["errors"] == 0


def test_the_saved_speaker_is_the_person_of_its_training_clip(model, prepared_grid):
    """The same-person check reads a loaded model's speaker data (tests/test_same_person.py has the rest)."""
    from lipsync.model_io import SpeakerData

    r = identity_similarity(model.speaker, SpeakerData.from_prepared(prepared_grid))
    assert r.same_person and r.similarity > 0.95, r


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "lipsync", *map(str, args)], capture_output=True, text=True, cwd=ROOT)


def test_bad_input_is_refused_with_one_sentence(model, tmp_path):
    mdir = model.folder
    tiny = tmp_path / "tiny.wav"
    import soundfile as sf

    sf.write(tiny, np.zeros(200, np.float32), 16000)  # 12 ms: shorter than a frame
    noface = tmp_path / "noface.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=2", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(noface))
    cases = [
        (["--audio", tiny], "shorter than one video frame"),
        (["--audio", tmp_path / "missing.wav"], "does not exist"),
        (["--audio", noface], "no audio that ffmpeg can decode"),
        (["--audio", tiny, "--target", noface], "No face was found"),
        (["--text", "  "], "--text is empty"),
        (["--audio", tiny, "--mouth-motion", "0"], "mouth motion must be between"),
    ]
    for extra, expected in cases:
        out = tmp_path / "o.mp4"
        p = run_cli("synthesize", "--model", mdir, *extra, "--out", out)
        assert p.returncode == 2, (extra, p.stderr)
        err = [ln for ln in p.stderr.splitlines() if ln.startswith("lipsync:")]
        assert len(err) == 1 and expected in err[0] and "Traceback" not in p.stderr, (extra, p.stderr)
        assert not out.exists()
        assert not [n for n in tmp_path.iterdir() if ".partial" in n.name]
    p = run_cli("synthesize", "--model", tmp_path / "nomodel", "--audio", tiny, "--out", tmp_path / "x.mp4")
    assert p.returncode == 2 and "not a model folder" in p.stderr
    p = run_cli("synthesize", "--model", mdir, "--audio", tiny, "--out", tmp_path / "x.avi")
    assert p.returncode == 2 and "should end in .mp4" in p.stderr


def test_mouth_motion_scales_the_faces_change_from_its_mean(model, speech, monkeypatch):
    """``mouth_motion`` m: every vertex's offset from the model's mean face is m times the trained
    one (known truth: the geometry is linear in that scale), and a live session passes its own m
    to the same place."""
    from lipsync.common import LipsyncError
    from lipsync.media import load_audio
    from lipsync.synthesis import LiveSession
    from lipsync.synthesis.pipeline import predict

    audio = load_audio(speech)
    mean = model.net.geometry.basis.bias.detach().view(-1, 3).numpy()
    base, crops = predict(model, audio, 25.0)
    for m in (0.5, 1.7):
        verts, crops_m = predict(model, audio, 25.0, m)
        np.testing.assert_allclose(verts - mean, m * (base - mean), atol=1e-5)
        np.testing.assert_array_equal(crops_m, crops)  # the texture does not depend on it
    seen = []
    shapes = type(model.net).shapes
    monkeypatch.setattr(type(model.net), "shapes", lambda self, z, motion=1.0: seen.append(motion) or shapes(self, z, motion))
    with pytest.raises(LipsyncError, match="mouth motion"):
        LiveSession(model, mouth_motion=3.0)
    session = LiveSession(model, renderer="gl", mouth_motion=0.6)
    try:
        session.push(audio[:16000], 16000)
    finally:
        session.close()
    assert seen and set(seen) == {0.6}


def test_silent_audio_gives_a_still_closed_mouth(model, tmp_path):
    import soundfile as sf

    from lipsync.face_measures import mouth_opening
    from lipsync.synthesis import predict

    sf.write(tmp_path / "silence.wav", np.zeros(32000, np.float32), 16000)
    r = model.synthesize(out=tmp_path / "s.mp4", audio=tmp_path / "silence.wav", renderer="gl")
    assert any("no speech" in n for n in r.notes)
    verts, crops = predict(model, np.zeros(32000, np.float32), 25.0)
    assert np.ptp(mouth_opening(verts)) < 0.01


def test_video_writer_finishes_or_leaves_nothing(tmp_path):
    from lipsync.media import write_wav
    from lipsync.media import VideoWriter

    wav = tmp_path / "a.wav"
    write_wav(wav, np.zeros(16000, np.float32))
    frame = np.full((64, 64, 3), 128, np.uint8)
    with VideoWriter(tmp_path / "ok.mp4", 64, 64, 25.0, wav) as writer:
        for _ in range(25):
            writer.write(frame)
    assert probe(tmp_path / "ok.mp4").frames == 25
    with pytest.raises(RuntimeError):
        with VideoWriter(tmp_path / "bad.mp4", 64, 64, 25.0, wav) as writer:
            writer.write(frame)
            raise RuntimeError("the producer failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "ok.mp4"]


def test_the_atlas_is_rendered_enlarged(model, speech, tmp_path, monkeypatch):
    """Synthesis hands the renderer the atlas enlarged TEXTURE_UPSAMPLE times (bicubic), so the
    renderer's bilinear lookup does not soften the mouth (see tests/test_atlas.py for the gain)."""
    import lipsync.render as render_mod
    from lipsync.synthesis import TEXTURE_UPSAMPLE

    seen = {"sizes": set(), "textures": set()}
    real = render_mod.make_renderer

    def spy(name, h, w, faces, uv, size, **kw):
        seen["sizes"].add(size)
        rend = real(name, h, w, faces, uv, size, **kw)
        inner = rend.render

        def render(pts, tex):
            seen["textures"].add(tex.shape[:2])
            return inner(pts, tex)

        rend.render = render
        return rend

    assert TEXTURE_UPSAMPLE >= 2
    monkeypatch.setattr(render_mod, "make_renderer", spy)
    model.synthesize(out=tmp_path / "up.mp4", audio=speech, renderer="gl")
    atlas = model.speaker.reference_atlas.shape[0]
    assert seen["sizes"] == {atlas * TEXTURE_UPSAMPLE}
    assert seen["textures"] == {(atlas * TEXTURE_UPSAMPLE,) * 2}


def test_the_mouth_comes_from_the_mouth_bank(model, speech, tmp_path, monkeypatch):
    """Training keeps real full-resolution mouths with their lip shapes; driven by the lip shape
    of one of them, synthesis draws exactly that real mouth, and nothing outside the mouth changes."""
    import lipsync.synthesis.pipeline as pipeline

    bank = model.mouth_bank
    assert bank is not None and len(bank.patches) >= 50  # of the 3-second clip's 68 training frames
    seen: dict = {}
    real_predict, real_composite = pipeline.predict_with_codes, pipeline.composite_video

    def predict_bank_shape(m, speech, fps, motion=1.0):
        verts, crops, codes = real_predict(m, speech, fps, motion)
        verts[:] = m.speaker.reference_vertices
        verts[:, bank.vertices] = bank.shapes[7].reshape(-1, 3)
        if bank.follows_teeth:  # audio codes that expect mouth 7's own teeth area
            w, b = bank.teeth_probe[:-1].astype(np.float64), float(bank.teeth_probe[-1])
            codes[:] = (float(bank.teeth[7]) - b) * w / (w @ w)
            np.testing.assert_allclose(bank.expected_teeth(codes), bank.teeth[7], atol=1e-4)
        return verts, crops, codes

    def spy(speaker, target, verts, texture_at, *args, **kwargs):
        seen["atlases"] = [texture_at(i) for i in range(0, len(verts), 5)]
        return real_composite(speaker, target, verts, texture_at, *args, **kwargs)

    monkeypatch.setattr(pipeline, "predict_with_codes", predict_bank_shape)
    monkeypatch.setattr(pipeline, "composite_video", spy)
    t, b, l, r = bank.box
    inside = bank.mask >= 1.0
    atlases = {}
    for use in (True, False):
        model.synthesize(out=tmp_path / f"{use}.mp4", audio=speech, mouth_bank=use)
        atlases[use] = seen["atlases"]
    own = bank.patches[7].astype(np.float32)[inside]
    for with_bank, without in zip(atlases[True], atlases[False]):
        np.testing.assert_allclose(with_bank[t:b, l:r, :3][inside], own, atol=1e-3)
        assert np.abs(without[t:b, l:r, :3][inside] - own).mean() > 2.0
        outside = np.ones(with_bank.shape[:2], bool)
        outside[t:b, l:r] = False
        np.testing.assert_array_equal(with_bank[outside], without[outside])


def test_a_model_without_a_mouth_bank_still_synthesizes(model, speech, tmp_path):
    """Models saved before the mouth bank existed (or trained without one) draw the network's mouth."""
    from lipsync.model_io import save_model

    folder = tmp_path / "old_model"
    save_model(folder, model.net, model.speaker, model.audio_norm, fps=model.fps, training=model.config["training"])
    old = load_model(folder)
    assert old.mouth_bank is None
    result = old.synthesize(out=tmp_path / "old.mp4", audio=speech)
    assert result.frames > 0 and (tmp_path / "old.mp4").stat().st_size > 0


def test_training_teaches_the_bank_the_teeth_the_audio_predicts(model, prepared_grid, speech, tmp_path, monkeypatch):
    """The GRID clip shows teeth, so training gives the bank a read-out of the teeth area from the
    audio codes; on the clip's own frames it follows the mouths' real teeth areas, and synthesis
    hands the path the codes of the speech it says."""
    from lipsync.model.mouth_bank import MouthBank

    bank = model.mouth_bank
    assert bank.follows_teeth and len(bank.teeth_probe) == model.net.config.latent + 1
    assert 0 <= bank.teeth.min() and bank.teeth.max() <= 1 and bank.teeth.std() > 0.01
    seen = {}
    real = MouthBank.frame_choice

    def spy(self, vertices, latents=None):
        seen["codes"] = latents
        return real(self, vertices, latents)

    monkeypatch.setattr(MouthBank, "frame_choice", spy)
    r = model.synthesize(out=tmp_path / "talk.mp4", audio=speech, renderer="gl")
    assert seen["codes"].shape == (r.frames, model.net.config.latent)


def test_a_live_stream_chooses_the_mouths_offline_synthesis_chooses(model, prepared_grid, speech, tmp_path, monkeypatch):
    """With the teeth read-out too, a stream (audio codes one window at a time) picks the same bank
    mouths as offline synthesis (codes in batches) for the same speech."""
    from lipsync.media import load_audio
    from lipsync.model.mouth_bank import MouthPath
    from lipsync.synthesis.pipeline import predict_with_codes

    audio = load_audio(speech)
    verts, _, codes = predict_with_codes(model, audio, 25.0)
    offline = model.mouth_bank.frame_choice(verts, codes)
    decided = []
    real_push, real_finish = MouthPath.push, MouthPath.finish

    def push(self, vertices, latent=None):
        out = real_push(self, vertices, latent)
        decided.extend(out)
        return out

    def finish(self):
        out = real_finish(self)
        decided.extend(out)
        return out

    monkeypatch.setattr(MouthPath, "push", push)
    monkeypatch.setattr(MouthPath, "finish", finish)
    session = model.live(prepared_grid.path, workdir=tmp_path / "live", renderer="gl")
    frames = [f for i in range(0, len(audio), 640) for f in session.push(audio[i:i + 640])]
    session.finish()
    assert len(frames) > 0 and len(decided) == len(offline)
    np.testing.assert_array_equal(decided, offline)


def test_bank_teeth_tool_reports_both_choices(model, prepared_grid, tmp_path, capsys):
    """``tools/bank_teeth.py`` on the model's own clip: the teeth area of the mouths chosen by lip
    shape alone and with the teeth read-out, against the real atlases; a model without a bank is
    one sentence and exit 2."""
    import importlib.util

    from conftest import ROOT
    from lipsync.model_io import save_model

    spec = importlib.util.spec_from_file_location("bank_teeth", ROOT / "tools" / "bank_teeth.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--model", str(model.folder), str(prepared_grid.path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["frames"] > 50 and report["frames_with_teeth"] > 5
    for name in ("lip shape", "lip shape and teeth read-out"):
        assert 0 < report[name]["teeth_ratio"] < 3 and -1 <= report[name]["teeth_corr"] <= 1
    save_model(tmp_path / "plain", model.net, model.speaker, model.audio_norm, fps=model.fps, training=model.config["training"])
    assert tool.main(["--model", str(tmp_path / "plain"), str(prepared_grid.path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'plain'} has no mouth bank."
