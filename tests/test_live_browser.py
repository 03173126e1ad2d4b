"""The live page in a real browser: Debian's Chromium with a fake microphone that plays a wav file
(``--use-file-for-fake-audio-capture``) talks to ``lipsync serve`` on a loopback port. The frames
it receives must move their mouth with the speech the page sent, in time, and the page must show
the latency and the frame counts."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from conftest import CHROMIUM, CHROMIUM_ARGS, ROOT
from conftest import live_server as serve_live

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); the browser tests need it", allow_module_level=True)

EXAMPLE_MODEL = ROOT / "demo" / "assets" / "grid_s1_model"
ARTIFACTS = ROOT / "test-artifacts" / "live"
FAKE_MIC = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream", "--autoplay-policy=no-user-gesture-required"]


@pytest.fixture(scope="module")
def live_server(prepared_grid):
    with serve_live(EXAMPLE_MODEL, prepared_grid.path) as (url, _):
        yield url


def mouth_openings(images: list[np.ndarray]) -> np.ndarray:
    """Inner-lip gap over eye distance of each frame, from MediaPipe landmarks (NaN: no face)."""
    from lipsync.face_measures import face_measures
    from lipsync.tracking import MediaPipeTracker

    out = []
    with MediaPipeTracker(max_faces=1) as tracker:
        for img in images:
            faces = tracker(img)
            out.append(face_measures(faces[0][None])["mouth"][0] if faces else np.nan)
    return np.array(out)


def test_speaking_into_the_fake_microphone_moves_the_mouth_in_time(live_server, grid_clip, prepared_grid, tmp_path):
    import soundfile as sf

    from lipsync.media import load_audio

    speech = load_audio(grid_clip)[:16000 * 3]
    wav = tmp_path / "mic.wav"
    sf.write(wav, speech, 16000, subtype="PCM_16")
    sent, received, starts = [], [], []

    def on_socket(ws):
        def on_sent(payload):
            if isinstance(payload, (bytes, bytearray)):
                sent.append(bytes(payload))
            else:
                starts.append(json.loads(payload))
        ws.on("framesent", on_sent)
        ws.on("framereceived", lambda payload: received.append(payload) if isinstance(payload, (bytes, bytearray)) else None)

    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=CHROMIUM_ARGS + FAKE_MIC + [f"--use-file-for-fake-audio-capture={wav}%noloop"])
        page = browser.new_page()
        page.on("websocket", on_socket)
        page.goto(f"{live_server}/live")
        page.fill("#live-motion", "1.2")
        page.click("#live-mic")
        page.wait_for_function("Number(document.getElementById('live-stats').dataset.frames) >= 70", timeout=60000)
        stats = page.locator("#live-stats").inner_text()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "live_page.png"))
        p50 = float(page.locator("#live-stats").get_attribute("data-latency-p50"))
        page.click("#live-stop")
        page.wait_for_function("document.getElementById('live-message').textContent.startsWith('Finished')", timeout=30000)
        message = page.locator("#live-message").inner_text()
        browser.close()
    assert "latency (speech to picture)" in stats and "model lookahead" in stats and 0 < p50 < 3000, stats
    assert "none dropped" in message, message
    assert starts[0]["mouth_motion"] == 1.2  # the page's setting goes with the start message
    # the microphone goes out as 16-bit samples at the model's 16 kHz: 256 kbit/s (raw 48 kHz float: 1.5 Mbit/s)
    assert (starts[0]["format"], starts[0]["sample_rate"]) == ("s16le", 16000), starts[0]
    rate = starts[0]["sample_rate"]
    from lipsync.live_server import FORMATS, unpack_frame

    pcm = np.frombuffer(b"".join(sent), FORMATS["s16le"][0])
    audio = pcm / 32768.0

    frames = [unpack_frame(m) for m in received]
    assert [h["index"] for h, _, _ in frames] == list(range(len(frames)))
    n = min(len(frames), int(len(audio) / rate * 25))
    images = [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1] for _, j, _ in frames[:n]]
    opening = mouth_openings(images)
    spf = rate / 25
    env = np.array([np.sqrt(np.mean(audio[int(i * spf):int((i + 1) * spf)] ** 2)) for i in range(n)])
    env = np.log(env + 1e-4)
    ok = np.isfinite(opening)
    assert ok.mean() > 0.9
    moves = lagged_correlation(opening, env, 0)
    print("correlation of mouth opening with the speech envelope:", moves, stats)
    assert moves > 0.3  # the mouth opens when there is speech
    # In time: the frames are the ones streaming synthesis makes from the audio the page sent, frame for
    # frame (streaming equals offline synthesis, whose timing the sync tests check). The envelope alone
    # cannot show a shift of a few frames: one short sentence's correlation is nearly flat over +-4 frames.
    from lipsync.model_io import load_model

    session = load_model(EXAMPLE_MODEL).live(prepared_grid.path, renderer="gl", mouth_motion=1.2, workdir=tmp_path / "ref")
    made = [f.image for f in session.push(pcm, rate) + session.finish()][:n]
    assert len(made) == n
    diff = [np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(images, made)]
    assert max(diff) < 3, diff  # JPEG at quality 80
    scores = {lag: lagged_correlation(opening, mouth_openings(made), lag) for lag in range(-3, 4)}
    print("correlation with the streamed synthesis' mouth opening by lag (frames):", scores)
    assert max(scores, key=scores.get) == 0 and scores[0] > 0.98, scores


def lagged_correlation(a: np.ndarray, b: np.ndarray, lag: int) -> float:
    """Pearson correlation of ``a[t + lag]`` with ``b[t]`` over the frames where both are finite."""
    n = min(len(a), len(b))
    a, b = a[max(0, lag):n + min(0, lag)], b[max(0, -lag):n - max(0, lag)]
    m = np.isfinite(a) & np.isfinite(b)
    return float(np.corrcoef(a[m], b[m])[0, 1])


# A browser that cannot resample a microphone into a 16 kHz context (its constructor, or the
# microphone's connection to it, refuses): the page captures at the device's own rate instead.
REFUSE_16K = """
(() => {
  const Native = window.AudioContext;
  window.AudioContext = class extends Native {
    createMediaStreamSource(stream) {
      if (this.sampleRate === 16000) throw new DOMException("cannot connect nodes of different rates", "NotSupportedError");
      return super.createMediaStreamSource(stream);
    }
  };
})();
"""


def test_a_browser_without_16khz_capture_streams_at_its_own_rate(live_server, grid_clip, tmp_path):
    import soundfile as sf

    from lipsync.media import load_audio

    wav = tmp_path / "mic.wav"
    sf.write(wav, load_audio(grid_clip)[:16000 * 2], 16000, subtype="PCM_16")
    starts = []
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=CHROMIUM_ARGS + FAKE_MIC + [f"--use-file-for-fake-audio-capture={wav}%noloop"])
        page = browser.new_page()
        page.add_init_script(REFUSE_16K)
        page.on("websocket", lambda ws: ws.on("framesent", lambda m: starts.append(json.loads(m)) if isinstance(m, str) else None))
        page.goto(f"{live_server}/live")
        page.click("#live-mic")
        page.wait_for_function("Number(document.getElementById('live-stats').dataset.frames) >= 30", timeout=60000)
        page.click("#live-stop")
        page.wait_for_function("document.getElementById('live-message').textContent.startsWith('Finished')", timeout=30000)
        message = page.locator("#live-message").inner_text()
        browser.close()
    assert starts[0]["format"] == "s16le" and starts[0]["sample_rate"] in (44100, 48000), starts[0]
    assert "none dropped" in message, message


def test_typed_text_is_spoken_live_and_a_refused_microphone_is_one_clear_message(live_server):
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS + FAKE_MIC)
        page = browser.new_page()
        page.goto(f"{live_server}/live")
        page.fill("#live-text", "Bin blue at F two now.")
        page.click("#live-say")
        page.wait_for_function("document.getElementById('live-message').textContent.startsWith('Finished')", timeout=60000)
        frames = int(page.locator("#live-stats").get_attribute("data-frames"))
        assert frames > 20 and "none dropped" in page.locator("#live-message").inner_text()
        browser.close()
        # no fake UI: the browser refuses the microphone, and the page says so in one sentence
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=CHROMIUM_ARGS + ["--use-fake-device-for-media-stream"])
        page = browser.new_page()
        page.goto(f"{live_server}/live")
        page.click("#live-mic")
        page.wait_for_function("document.getElementById('live-message').dataset.kind === 'error'", timeout=30000)
        text = page.locator("#live-message").inner_text()
        assert text.startswith("No microphone: the browser did not allow it") and "Allow the microphone" in text, text
        browser.close()


def test_webrtc_carries_the_microphone_in_and_the_face_out(live_server, grid_clip, tmp_path):
    """The same page over WebRTC (aiortc on the server): the fake microphone's track goes in, the
    face comes back as a video track the browser decodes and plays, frame statistics come on the
    data channel."""
    import soundfile as sf

    from lipsync.media import load_audio

    wav = tmp_path / "mic.wav"
    sf.write(wav, load_audio(grid_clip)[:48000], 16000, subtype="PCM_16")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=CHROMIUM_ARGS + FAKE_MIC + [f"--use-file-for-fake-audio-capture={wav}%noloop"])
        page = browser.new_page()
        page.goto(f"{live_server}/live")
        page.select_option("#live-transport", "webrtc")
        page.click("#live-mic")
        page.wait_for_function("Number(document.getElementById('live-stats').dataset.frames) >= 40", timeout=60000)
        page.wait_for_function("document.getElementById('live-video').getVideoPlaybackQuality().totalVideoFrames >= 10",
                               timeout=30000)
        size = page.evaluate("[document.getElementById('live-video').videoWidth, document.getElementById('live-video').videoHeight]")
        stats = page.locator("#live-stats").inner_text()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "live_webrtc.png"))
        page.click("#live-stop")
        page.wait_for_function("document.getElementById('live-message').textContent.startsWith('Finished')", timeout=30000)
        browser.close()
    assert size == [360, 288] and "latency (audio in to frame out, on the server)" in stats, (size, stats)
