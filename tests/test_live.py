"""Streaming synthesis: audio chunks in, frames out, as offline synthesis makes them."""
from __future__ import annotations

import numpy as np
import pytest

import lipsync.synthesis.composite as composite
from conftest import ROOT
from lipsync.common import LipsyncError
from lipsync.media import load_audio
from lipsync.model_io import load_model

EXAMPLE_MODEL = ROOT / "demo" / "assets" / "grid_s1_model"  # shipped: has a mouth bank


@pytest.fixture(scope="module")
def model():
    return load_model(EXAMPLE_MODEL)


@pytest.fixture(scope="module")
def speech(grid_clip):
    return load_audio(grid_clip)[:32000]  # 2 s of the fixture's own speech


def stream(model, target, audio, chunk, tmp_path, *, rate=16000, **kwargs):
    session = model.live(target, workdir=tmp_path, renderer="gl", **kwargs)
    frames = []
    for i in range(0, len(audio), chunk):
        frames += session.push(audio[i:i + chunk], rate)
    frames += session.finish()
    return session, frames


def capture_offline_frames(monkeypatch) -> list:
    """The frames offline synthesis makes, just before they would be encoded."""
    written = []

    class Capture:
        def __init__(self, *args, **kwargs):
            pass

        def write(self, frame):
            written.append(np.array(frame))

        def finish(self):
            pass

        def abort(self):
            pass

    monkeypatch.setattr(composite, "VideoWriter", Capture)
    return written


def test_streamed_frames_equal_offline_synthesis(model, speech, prepared_grid, tmp_path, monkeypatch):
    written = capture_offline_frames(monkeypatch)
    import soundfile as sf

    sf.write(tmp_path / "speech.wav", speech, 16000)
    model.synthesize(out=tmp_path / "offline.mp4", audio=tmp_path / "speech.wav", target=prepared_grid.path,
                     renderer="gl")
    heard = load_audio(tmp_path / "speech.wav")  # what offline synthesis reads: 16-bit samples
    session, frames = stream(model, prepared_grid.path, heard, 320, tmp_path / "live")
    assert [f.index for f in frames] == list(range(len(written))) == list(range(50))
    diff = np.array([np.abs(f.image.astype(int) - w.astype(int)).max() for f, w in zip(frames, written)])
    assert diff.max() <= 2, diff  # float rounding: batched against one-frame-at-a-time products
    # each frame carries its own 1/fps of the audio, and its time
    assert np.array_equal(np.concatenate([f.audio for f in frames]), heard)
    assert frames[10].time_s == pytest.approx(0.4)
    assert 0.15 < session.lookahead_s < 0.25
    # only what the next frames need is kept, however long the stream runs
    assert len(session._audio) < 2 * 640 and len(session.spec._cols) <= model.net.config.columns + 2
    assert len(session._mouths) <= 2 and len(session._path._unary) <= session._path.lag + 1


def test_any_chunk_size_gives_the_same_frames(model, speech, prepared_grid, tmp_path):
    audio = speech[:12000]
    _, whole = stream(model, prepared_grid.path, audio, 16000, tmp_path / "a")
    for chunk in (1, 333):
        _, frames = stream(model, prepared_grid.path, audio, chunk, tmp_path / f"c{chunk}")
        assert len(frames) == len(whole) == 19
        assert all(np.array_equal(a.image, b.image) for a, b in zip(frames, whole)), chunk


def test_pcm_bytes_and_other_sample_rates(model, speech, prepared_grid, tmp_path):
    import soxr

    pcm = np.round(speech[:8000] * 32767).astype(np.int16)
    _, as_float = stream(model, prepared_grid.path, pcm.astype(np.float32) / 32768.0, 800, tmp_path / "f")
    session = model.live(prepared_grid.path, workdir=tmp_path / "b", renderer="gl")
    as_bytes = session.push(pcm.tobytes()[:1001 * 2]) + session.push(pcm.tobytes()[1001 * 2:]) + session.finish()
    assert len(as_bytes) == len(as_float) == 12  # 0.5 s at 25 fps, rounded as offline synthesis rounds
    assert all(np.array_equal(a.image, b.image) for a, b in zip(as_bytes, as_float))
    # 48 kHz in: resampled as a stream; the same frames whatever the chunks, close to 16 kHz input
    high = soxr.resample(speech[:8000], 16000, 48000).astype(np.float32)
    _, a = stream(model, prepared_grid.path, high, 960, tmp_path / "h1", rate=48000)
    _, b = stream(model, prepared_grid.path, high, 4801, tmp_path / "h2", rate=48000)
    assert len(a) == len(b) == 12 and all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    _, ref = stream(model, prepared_grid.path, speech[:8000], 800, tmp_path / "r")
    assert np.mean([np.abs(x.image.astype(int) - y.image.astype(int)).mean() for x, y in zip(a, ref)]) < 0.5


def test_silence_keeps_the_mouth_closed_and_still(model, prepared_grid, tmp_path):
    from lipsync.face_measures import mouth_opening

    _, frames = stream(model, prepared_grid.path, np.zeros(24000, np.float32), 640, tmp_path)
    opening = mouth_opening(np.stack([f.vertices for f in frames]))
    assert len(frames) == 38 and np.ptp(opening) < 0.01
    ref = model.speaker.reference_vertices[None]
    assert abs(float(np.median(opening)) - float(mouth_opening(ref)[0])) < 0.02  # closed, like the reference


def test_bad_stream_input_is_refused_with_one_sentence(model, prepared_grid, tmp_path):
    session = model.live(prepared_grid.path, workdir=tmp_path, renderer="gl")
    with pytest.raises(LipsyncError, match="even number of bytes"):
        session.push(b"\x00\x01\x02")
    with pytest.raises(LipsyncError, match="16-bit PCM"):
        session.push(np.zeros(10, np.int32))
    session.push(np.zeros(100, np.float32), 16000)
    with pytest.raises(LipsyncError, match="sample rate changed"):
        session.push(np.zeros(100, np.float32), 48000)
    session.finish()
    with pytest.raises(LipsyncError, match="has finished"):
        session.push(np.zeros(10, np.float32))


def test_a_missing_target_is_one_sentence_and_leaves_no_temporary_folder(model, tmp_path):
    import tempfile
    from pathlib import Path

    before = set(Path(tempfile.gettempdir()).glob("lipsync-live-*"))
    with pytest.raises(LipsyncError):
        model.live(tmp_path / "nowhere.mp4", renderer="gl")
    assert set(Path(tempfile.gettempdir()).glob("lipsync-live-*")) == before


def test_a_shorter_lookahead_streams_like_offline_and_waits_less(model, speech, prepared_grid, tmp_path, monkeypatch):
    """A model whose audio window ends 40 ms past the frame's centre (``lookahead_ms=40``): offline
    synthesis and the live session cut the same windows, and the live session needs 70 ms less
    audio ahead of each frame than with the centred window."""
    import copy

    from lipsync.audio_features import window_offsets

    short = copy.copy(model)
    short.net = copy.deepcopy(model.net)
    short.net.config.lookahead = 4
    assert list(window_offsets(24, 4)[[0, -1]]) == [-19, 4]
    written = capture_offline_frames(monkeypatch)
    import soundfile as sf

    sf.write(tmp_path / "speech.wav", speech[:16000], 16000)
    short.synthesize(out=tmp_path / "offline.mp4", audio=tmp_path / "speech.wav", target=prepared_grid.path, renderer="gl")
    heard = load_audio(tmp_path / "speech.wav")
    session, frames = stream(short, prepared_grid.path, heard, 320, tmp_path / "live")
    centred = model.live(prepared_grid.path, workdir=tmp_path / "c", renderer="gl")
    assert session.lookahead_s == pytest.approx(centred.lookahead_s - 0.07)
    centred.close()
    assert len(frames) == len(written) == 25
    assert max(np.abs(f.image.astype(int) - w.astype(int)).max() for f, w in zip(frames, written)) <= 2
    # and it is a different model: the window moved, so the frames differ from the centred model's
    _, same_audio = stream(model, prepared_grid.path, heard, 320, tmp_path / "centred")
    assert max(np.abs(a.image.astype(int) - b.image.astype(int)).max() for a, b in zip(frames, same_audio)) > 2


def test_stream_benchmark_runs_concurrent_sessions_on_one_target(tmp_path, grid_clip):
    """``eval.bench stream --sessions 2``: two live sessions share the prepared target, each
    reports its frames; the latency and compute figures are there."""
    import soundfile as sf

    from eval.bench import bench_stream

    sf.write(tmp_path / "speech.wav", load_audio(grid_clip)[:8000], 16000)
    r = bench_stream(str(EXAMPLE_MODEL), str(tmp_path / "speech.wav"), target=str(grid_clip), renderer="gl",
                     realtime=False, sessions=2)
    assert r["sessions"] == 2 and r["frames"] == 12 and len(r["sessions_frames_per_s"]) == 2 and r["jpeg"]
    assert r["latency_ms"]["p95"] >= r["latency_ms"]["p50"] > -1 and r["sustained_frames_per_s"] > 0


@pytest.mark.parametrize("minutes", [1, pytest.param(10, marks=pytest.mark.slow)])
def test_the_texture_loop_does_not_drift_over_a_long_stream(model, prepared_grid, grid_clip, tmp_path, minutes):
    """Known truth: 2 s of speech looped (exactly 50 frames and 200 spectrogram columns, so every
    loop after the first gets the same audio windows). The auto-regressive texture of every later
    loop must equal the second loop's, to float rounding, however long the stream runs; the
    audio and spectrogram kept stay bounded."""
    session = model.live(prepared_grid.path, workdir=tmp_path, renderer="gl", mouth_bank=False)
    crops = []
    session.compositor.compose = lambda image, k, verts, atlas: image  # the loop is under test, not the render
    compose = session._compose

    def spy(t, verts, crop):
        crops.append(crop[::2, ::2].copy())
        return compose(t, verts, crop)

    session._compose = spy
    speech = load_audio(grid_clip)[:32000]
    for _ in range(minutes * 30):
        for i in range(0, len(speech), 1600):
            session.push(speech[i:i + 1600])
        assert len(session._audio) < 1600 + 2 * 640 and len(session.spec._cols) <= model.net.config.columns + 2
    session.close()
    n = len(crops) // 50 * 50
    assert n >= minutes * 1500 - 50
    loops = np.stack(crops[:n]).reshape(n // 50, 50, -1)
    drift = np.abs(loops[2:] - loops[1]).max(axis=(1, 2))
    assert drift.max() < 0.005, drift  # crops in 0..1
    assert abs(float(loops[-1].mean()) - float(loops[1].mean())) < 1e-4


def test_when_speech_stops_the_mouth_eases_shut(model, speech, prepared_grid, tmp_path):
    """Audio cut mid-word (the mouth open) and followed by silence: from its last open frame (the
    model hears the silence coming, so that is a few frames before the cut) the mouth closes over
    several frames, no step larger than half the way, then stays still and shut."""
    from lipsync.face_measures import mouth_opening

    for cut in (20000, 24000):
        audio = np.concatenate([speech[:cut], np.zeros(16000, np.float32)])
        _, frames = stream(model, prepared_grid.path, audio, 640, tmp_path / str(cut))
        opening = mouth_opening(np.stack([f.vertices for f in frames]))
        t = cut // 640  # the frame where the speech stops
        closed = float(np.median(opening[-10:]))
        peak = t - 5 + int(np.argmax(opening[t - 5:t + 1]))
        drop = float(opening[peak]) - closed
        assert drop > 0.08, opening[t - 6:t + 3]  # it was open
        steps = np.abs(np.diff(opening[peak:t + 12]))
        assert steps.max() <= 0.5 * drop, (opening[peak:t + 12], drop)
        shut = int(np.argmax(np.abs(opening[peak:] - closed) < 0.01))
        assert shut >= 3, opening[peak:peak + 8]
        assert np.ptp(opening[-10:]) < 0.01
