"""The live WebSocket protocol: PCM in, frames out, one session per client, bad clients alone refused."""
from __future__ import annotations

import json
import threading
import time

import cv2
import numpy as np
import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from conftest import ROOT
from conftest import live_server as serve_live
from lipsync.live_server import LiveOptions, LiveService, create_app, unpack_frame
from lipsync.media import load_audio
from lipsync.model_io import load_model

EXAMPLE_MODEL = ROOT / "demo" / "assets" / "grid_s1_model"


@pytest.fixture(scope="module")
def model():
    return load_model(EXAMPLE_MODEL)


@pytest.fixture(scope="module")
def live_target(model, prepared_grid):
    from lipsync.synthesis import LiveTarget

    target = LiveTarget(model, prepared_grid.path)
    yield target
    target.close()


@pytest.fixture(scope="module")
def speech(grid_clip):
    return load_audio(grid_clip)[:16000]  # 1 s of the fixture's own speech, 16 kHz


def client_for(model, live_target, **options):
    service = LiveService(lambda settings: (model, live_target), LiveOptions(renderer="gl", **options))
    return service, TestClient(create_app(service))


def start(ws, **settings):
    ws.send_text(json.dumps({"type": "start", "sample_rate": 16000, "format": "s16le", **settings}))
    return json.loads(ws.receive_text())


def receive_all(ws) -> tuple[list, list, dict]:
    """Frames (header, image, pcm), warnings and the end message, until the server's end."""
    frames, warnings = [], []
    while True:
        msg = ws.receive()
        if msg.get("bytes") is not None:
            header, jpeg, pcm = unpack_frame(msg["bytes"])
            image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
            frames.append((header, image, np.frombuffer(pcm, "<i2")))
            continue
        doc = json.loads(msg["text"])
        if doc["type"] == "warning":
            warnings.append(doc)
            continue
        return frames, warnings, doc


def test_protocol_round_trip_gives_the_sessions_frames_and_audio(model, live_target, speech, tmp_path):
    """16-bit PCM at 16 kHz in 20 ms messages: the frames that come back are the live session's (up
    to JPEG), with their index, time and latency, and each carries its 1/fps of the audio."""
    pcm = np.round(speech * 32767).astype("<i2")
    service, client = client_for(model, live_target)
    with client.websocket_connect("/live/ws") as ws:
        ready = start(ws, quality=90)
        assert ready["type"] == "ready" and ready["protocol"] == "lipsync-live/1" and ready["fps"] == 25.0
        assert (ready["width"], ready["height"]) == live_target.size and 150 < ready["lookahead_ms"] < 250
        assert service.status()["active_sessions"] == 1
        for i in range(0, len(pcm), 320):
            ws.send_bytes(pcm[i:i + 320].tobytes())
        ws.send_text(json.dumps({"type": "end"}))
        frames, warnings, end = receive_all(ws)
    assert end == {"type": "end", "frames": 25, "audio_s": 1.0, "late_frames": 0} and not warnings
    assert [h["index"] for h, _, _ in frames] == list(range(25))
    assert frames[5][0]["time"] == pytest.approx(0.2)
    assert all(0 < h["latency_ms"] < 5000 for h, _, _ in frames)
    assert np.array_equal(np.concatenate([a for _, _, a in frames]), pcm)
    direct = model.live(live_target, renderer="gl")
    expected = direct.push(pcm) + direct.finish()
    err = [np.abs(img.astype(int) - f.image.astype(int)).mean() for (_, img, _), f in zip(frames, expected)]
    assert max(err) < 2.0, err  # JPEG at quality 90
    assert service.status()["active_sessions"] == 0


def test_float_audio_at_another_rate_and_a_fast_client_is_paced(model, live_target, speech):
    """f32le at 48 kHz sent all at once in 0.1 s messages: the server reads at most ``max_ahead_s``
    ahead of real time, so 1.5 s of audio takes at least 1 s to be taken in; every frame comes back."""
    import soxr

    high = soxr.resample(np.concatenate([speech, speech[:8000]]), 16000, 48000).astype("<f4")
    _, client = client_for(model, live_target, max_ahead_s=0.5)
    with client.websocket_connect("/live/ws") as ws:
        assert start(ws, sample_rate=48000, format="f32le")["type"] == "ready"
        t0 = time.perf_counter()
        for i in range(0, len(high), 4800):
            ws.send_bytes(high[i:i + 4800].tobytes())
        ws.send_text(json.dumps({"type": "end"}))
        frames, _, end = receive_all(ws)
        took = time.perf_counter() - t0
    assert end["frames"] == len(frames) == 38 and took >= 1.0


def test_busy_when_every_session_is_taken_and_free_again_when_a_client_leaves(model, live_target, speech):
    service, client = client_for(model, live_target, max_sessions=1)
    with client.websocket_connect("/live/ws") as first:
        assert start(first)["type"] == "ready"
        first.send_bytes(np.zeros(3200, "<i2").tobytes())
        with client.websocket_connect("/live/ws") as second:
            msg = json.loads(second.receive_text())
            assert msg["code"] == "busy" and "try again" in msg["message"]
            with pytest.raises(WebSocketDisconnect) as closed:
                second.receive_text()
            assert closed.value.code == 1013
        # the first client goes away mid-stream, without "end"
    for _ in range(100):
        if service.status()["active_sessions"] == 0:
            break
        time.sleep(0.05)
    assert service.status()["active_sessions"] == 0
    with client.websocket_connect("/live/ws") as again:
        assert start(again)["type"] == "ready"
        again.send_text(json.dumps({"type": "end"}))
        assert receive_all(again)[2]["frames"] == 0


@pytest.mark.parametrize("first, then, code", [
    (b"\x00\x01", None, "bad_request"),                                   # audio before the start message
    ("hello", None, "bad_request"),                                       # not JSON
    ('{"type": "start", "sample_rate": 7, "format": "s16le"}', None, "bad_request"),
    ('{"type": "start", "sample_rate": 16000, "format": "mp3"}', None, "bad_request"),
    ('{"type": "start", "sample_rate": 16000, "format": "s16le"}', b"\x00\x01\x02", "bad_audio"),  # half a sample
    ('{"type": "start", "sample_rate": 16000, "format": "s16le"}', b"\x00" * 200000, "bad_audio"),  # > 5 s at once
    ('{"type": "start", "sample_rate": 16000, "format": "f32le"}', np.full(4, np.nan, "<f4").tobytes(), "bad_audio"),
    ('{"type": "start", "sample_rate": 16000, "format": "s16le"}', "garbage", "bad_request"),
    ('{"type": "start", "sample_rate": 16000, "format": "s16le", "mouth_motion": 5}', None, "bad_request"),
    ('{"type": "start", "sample_rate": 16000, "format": "s16le", "mouth_motion": "more"}', None, "bad_request"),
])
def test_bad_clients_get_one_sentence_and_the_others_keep_being_served(model, live_target, first, then, code, speech):
    service, client = client_for(model, live_target, max_sessions=2)
    results = {}

    def good_client():
        with client.websocket_connect("/live/ws") as ws:
            start(ws)
            ws.send_bytes(np.round(speech[:8000] * 32767).astype("<i2").tobytes())
            ws.send_text(json.dumps({"type": "end"}))
            results["good"] = receive_all(ws)[2]

    other = threading.Thread(target=good_client)
    other.start()
    with client.websocket_connect("/live/ws") as ws:
        send = ws.send_bytes if isinstance(first, bytes) else ws.send_text
        send(first)
        if then is not None:
            assert json.loads(ws.receive_text())["type"] == "ready"
            (ws.send_bytes if isinstance(then, bytes) else ws.send_text)(then)
        msg = json.loads(ws.receive_text())
        assert msg["type"] == "error" and msg["code"] == code, msg
        assert msg["message"].endswith(".") and "\n" not in msg["message"] and "Traceback" not in msg["message"]
        with pytest.raises(WebSocketDisconnect):
            ws.receive_text()
    other.join(60)
    assert results["good"]["frames"] == 12
    assert service.status()["active_sessions"] == 0


def test_the_start_message_sets_the_sessions_mouth_motion(model, live_target, speech):
    """``mouth_motion`` in the start message reaches the session (1 when not given); the session
    itself scales the shapes (tests/test_live.py)."""
    asked = []

    class Spy:
        def live(self, target, **options):
            asked.append(options["mouth_motion"])
            return model.live(target, **options)

    service = LiveService(lambda settings: (Spy(), live_target), LiveOptions(renderer="gl"))
    client = TestClient(create_app(service))
    for settings in ({}, {"mouth_motion": 1.4}, {"mouth_motion": 1}):
        with client.websocket_connect("/live/ws") as ws:
            assert start(ws, **settings)["type"] == "ready"
            ws.send_bytes(np.round(speech[:4000] * 32767).astype("<i2").tobytes())
            ws.send_text(json.dumps({"type": "end"}))
            assert receive_all(ws)[2]["frames"] == 6
    assert asked == [1.0, 1.4, 1.0]


def test_a_silent_client_is_closed_after_the_idle_timeout(model, live_target):
    service, client = client_for(model, live_target, idle_timeout_s=0.5)
    with client.websocket_connect("/live/ws") as ws:
        msg = json.loads(ws.receive_text())
        assert msg["code"] == "timeout"
    assert service.status()["active_sessions"] == 0


def test_lipsync_serve_and_the_example_client_write_the_streamed_video(prepared_grid, speech, tmp_path):
    """``lipsync serve`` on a loopback port, ``examples/live_client.py`` streams a wav in real-time
    20 ms chunks over a real WebSocket and writes an mp4 of every frame with the sound."""
    import subprocess
    import sys

    import soundfile as sf

    from lipsync.media import probe

    with serve_live(EXAMPLE_MODEL, prepared_grid.path) as (url, status):
        assert status["protocol"] == "lipsync-live/1" and status["max_sessions"] == 2
        sf.write(tmp_path / "speech.wav", speech, 16000, subtype="PCM_16")
        r = subprocess.run([sys.executable, str(ROOT / "examples" / "live_client.py"), str(tmp_path / "speech.wav"),
                            str(tmp_path / "out.mp4"), "--url", url.replace("http://", "ws://") + "/live/ws"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "25 frames for 1.00 s of audio" in r.stderr and "latency p50" in r.stderr
        info = probe(tmp_path / "out.mp4")
        assert info.frames == 25 and info.has_audio
        assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_webrtc_offers_are_checked_and_count_against_the_session_limit(model, live_target):
    """``POST /live/offer``: a malformed offer is a 400 with one sentence; with every session taken
    (here by a WebSocket client) an offer is told the server is busy (503)."""
    service, client = client_for(model, live_target, max_sessions=1)
    for body in (b"not json", b'{"type": "answer", "sdp": "x"}', b'{"type": "offer"}', b"x" * 70000):
        r = client.post("/live/offer", content=body)
        assert r.status_code == 400 and r.json()["code"] == "bad_request" and r.json()["message"].endswith("."), r.text
    r = client.post("/live/offer", json={"type": "offer", "sdp": "v=0", "mouth_motion": 0.1})  # checked before the SDP
    assert r.status_code == 400 and r.json()["message"].startswith("the mouth motion must be between"), r.text
    r = client.post("/live/offer", json={"type": "offer", "sdp": "v=0"})  # a slot is free, but this is no offer
    assert r.status_code == 400 and "SDP" in r.json()["message"] and service.status()["active_sessions"] == 0
    with client.websocket_connect("/live/ws") as ws:
        assert start(ws)["type"] == "ready"
        r = client.post("/live/offer", json={"type": "offer", "sdp": "v=0"})
        assert r.status_code == 503 and r.json()["code"] == "busy"
    assert service.status()["active_sessions"] == 0


def test_a_machine_that_falls_behind_warns_once_and_drops_no_frame(model, live_target, speech):
    """A session that stalls for 1.5 s once (as on an overloaded machine): the frames after it are
    late, one warning says so, every frame still comes, and the end message counts the late ones."""

    class Stalling:
        def live(self, target, **kwargs):
            session = model.live(target, **kwargs)
            push, calls = session.push, []

            def slow(samples, rate):
                calls.append(1)
                if len(calls) == 10:
                    time.sleep(1.5)
                return push(samples, rate)

            session.push = slow
            return session

    service = LiveService(lambda settings: (Stalling(), live_target), LiveOptions(renderer="gl"))
    client = TestClient(create_app(service))
    pcm = np.round(speech * 32767).astype("<i2")
    with client.websocket_connect("/live/ws") as ws:
        assert start(ws)["type"] == "ready"
        for i in range(0, len(pcm), 320):
            ws.send_bytes(pcm[i:i + 320].tobytes())
        ws.send_text(json.dumps({"type": "end"}))
        frames, warnings, end = receive_all(ws)
    assert len(frames) == end["frames"] == 25 and [h["index"] for h, _, _ in frames] == list(range(25))
    assert len(warnings) == 1 and "too slow to keep up" in warnings[0]["message"] and "none is dropped" in warnings[0]["message"]
    assert end["late_frames"] >= 1 and max(h["latency_ms"] for h, _, _ in frames) > 1400
