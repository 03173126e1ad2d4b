"""The demo in a real browser: ``python -m demo`` in a subprocess on a free port of 127.0.0.1,
driven by Playwright in Debian's /usr/bin/chromium (Playwright's own browser download does not
work offline). Screenshots go to ``test-artifacts/demo/``. Both tests together take ~20 s on 2 CPU cores, so
they are not marked slow.

The bundled example runs end to end with the ``tiny`` training preset (seconds), in a fresh work
folder so nothing is served from an earlier run's cache.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import CHROMIUM, CHROMIUM_ARGS, ROOT, ffmpeg, free_port

ARTIFACTS = ROOT / "test-artifacts" / "demo"
SERVER_START_S = 90      # import gradio + torch and bind the port
EXAMPLE_TIMEOUT_S = 240  # preprocess + tiny training + synthesis of the 3 s clip on a loaded CPU

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); the browser tests need it", allow_module_level=True)



@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The demo's URL; the server's log is copied to test-artifacts on the way out."""
    work = tmp_path_factory.mktemp("demo-work")
    port = free_port()
    log_path = work / "server.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "demo", "--host", "127.0.0.1", "--port", str(port),
                                 "--workdir", str(work / "root"), "--example-preset", "tiny"],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the demo exited with status {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the demo did not answer on {url} within {SERVER_START_S} s")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log_path, ARTIFACTS / "server.log")


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    """The demo's page; at the end, nothing on it may have been blocked by its Content-Security-Policy."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    blocked: list[str] = []
    pg.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
    pg.goto(server)
    pg.wait_for_selector("#run-example", timeout=60_000)
    yield pg
    ctx.close()
    assert not blocked, blocked


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _toasts(page) -> str:
    """Text of the error pop-ups on the page ("" when there are none)."""
    return " | ".join(page.locator(".toast-messages").all_inner_texts()).strip()


def test_example_runs_end_to_end(page):
    assert "lipsync" in page.title()
    _shot(page, "01-loaded")
    page.click("#run-example")
    # a video element with a duration, or an error pop-up (then fail at once, with its text)
    try:
        page.wait_for_function(
            "() => { const v = document.querySelector('#example-video video');"
            " return (v && v.duration > 0) || document.querySelector('.toast-messages') !== null; }",
            timeout=EXAMPLE_TIMEOUT_S * 1000)
    finally:
        _shot(page, "02-example")
    assert not _toasts(page), _toasts(page)
    duration = page.evaluate("document.querySelector('#example-video video').duration")
    assert duration > 0.5
    # the example becomes the selected speaker with a model to drive
    assert "GRID" in page.locator("#speaker input").input_value()


def test_video_without_a_face_shows_the_error(page, tmp_path):
    video = tmp_path / "noface.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=2", "-f", "lavfi", "-i", "sine=duration=2",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(video))
    page.get_by_role("tab", name="Your speaker").click()
    page.locator("#upload-video input[type=file]").set_input_files(str(video))
    page.wait_for_selector("#upload-video video", timeout=30_000)  # uploaded and previewed
    page.click("#preprocess")
    message = page.get_by_text("No face was found", exact=False).first
    try:
        message.wait_for(timeout=120_000)
    finally:
        _shot(page, "03-no-face-error")
    assert "Traceback" not in page.content()


def test_live_tab_streams_the_fake_microphone_through_the_shipped_model(browser, server, tmp_path, grid_clip):
    """After the example (its result is cached, so a new visitor starts on the example speaker):
    Live -> Get ready -> Start microphone, in a Chromium whose fake microphone plays a wav. Frames
    arrive over the demo's own host and port, within its Content-Security-Policy."""
    import soundfile as sf

    from conftest import CHROMIUM_ARGS as ARGS
    from lipsync.media import load_audio

    wav = tmp_path / "mic.wav"
    sf.write(wav, load_audio(grid_clip)[:48000], 16000, subtype="PCM_16")
    fake_mic = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={wav}%noloop"]
    b = browser.browser_type.launch(executable_path=str(CHROMIUM), args=ARGS + fake_mic, headless=True)
    try:
        pg = b.new_page(viewport={"width": 1280, "height": 1000})
        blocked: list[str] = []
        pg.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
        pg.goto(server)
        pg.wait_for_selector("#run-example", timeout=60_000)
        pg.get_by_role("tab", name="Live").click()
        pg.click("#live-ready")
        try:
            pg.wait_for_selector("#live-panel[data-ticket]", timeout=120_000)
            pg.click("#live-mic")
            pg.wait_for_function("Number(document.getElementById('live-stats').dataset.frames) >= 40", timeout=60_000)
        finally:
            _shot(pg, "05-live")
        stats = pg.locator("#live-stats").inner_text()
        pg.click("#live-stop")
        pg.wait_for_function("document.getElementById('live-message').textContent.startsWith('Finished')", timeout=30_000)
    finally:
        b.close()
    assert "latency (speech to picture)" in stats, stats
    assert not blocked, blocked
