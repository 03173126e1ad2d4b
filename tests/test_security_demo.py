"""Attacks on the Gradio demo, each replayed against it with the safe outcome asserted.

What broke before and is fixed: a video uploaded under the name ``evil.html`` with a ``<script>`` in
its metadata was stored as ``video.html`` and served as a page of the demo's origin, where the
script could read the visitor's session token from localStorage and decrypt it with the secret the
demo published in ``/config`` (stored XSS -> session takeover); text for the offline TTS starting
with ``-`` became an option of espeak-ng (``-f/etc/passwd`` read the server's files aloud, ``-w``
wrote elsewhere, and the audio-length limit never applied to text); no Content-Security-Policy
and the page could be framed; the speaker name had no length limit; the 200 MB upload cap was
enforced as 209.7 MB. What held and is kept as regression tests: traversal and symlinks through the
file route, files outside the sessions, other sessions' speakers, guessed session tokens.

One demo server runs in this process for the module (``tiny`` example preset, a 1 MB upload cap
so the cap can be tested with small files); Chromium is Debian's, driven by Playwright.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
import urllib.parse
from pathlib import Path

import httpx
import pytest

from conftest import CHROMIUM, CHROMIUM_ARGS, GRID_CLIP, ffmpeg, free_port

from demo import handlers, jobs
from demo.checks import NAME_CHARS, check_name, store_video
from demo.config import DemoConfig, Limits
from demo.web import SESSION_COOKIE
from lipsync.common import LipsyncError

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("espeak-ng") is None,
                                reason="ffmpeg and espeak-ng are needed (apt-get install ffmpeg espeak-ng)")

UPLOAD_MB = 1.0         # the module's upload cap
SCRIPT_TITLE = "XSS"    # what the planted script would set the page title to
ETC_PASSWD_S = 5.0      # speaking "-f/etc/passwd" as words takes ~2 s; reading the file aloud took 146.7 s




@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(base URL, config) of a demo launched in this process exactly as ``python -m demo`` launches it."""
    from demo.app import build_app, launch_kwargs

    cfg = DemoConfig(root=tmp_path_factory.mktemp("demo-sec") / "root", example_preset="tiny",
                     limits=Limits(video_mb=UPLOAD_MB))
    app = build_app(cfg)
    app.queue(default_concurrency_limit=1)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs(cfg))
    try:
        yield f"http://127.0.0.1:{port}/", cfg
    finally:
        app.close()


@pytest.fixture(scope="module")
def evil_html(tmp_path_factory) -> Path:
    """A valid mp4 named ``evil.html`` whose title tag holds a script (the reported reproduction)."""
    path = tmp_path_factory.mktemp("evil") / "evil.html"
    ffmpeg("-i", str(GRID_CLIP), "-c:v", "libx264", "-c:a", "aac", "-movflags", "+faststart", "-metadata",
           f'title=<script>document.title="{SCRIPT_TITLE} "+document.cookie</script>', "-f", "mp4", str(path))
    return path


@pytest.fixture(scope="module")
def browser():
    pw = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); the browser tests need it")
    with pw.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def _file_url(base: str, path: Path) -> str:
    return f"{base}gradio_api/file={urllib.parse.quote(str(path))}"


def _open_as_page(page, url: str) -> str:
    """Navigate to ``url``: "download" when the browser downloads it, else the page's title."""
    try:
        with page.expect_download(timeout=10_000) as dl:
            try:
                page.goto(url)
            except Exception as err:  # noqa: BLE001 - Chromium reports a download as an aborted navigation
                if "Download is starting" not in str(err):
                    raise
        dl.value.cancel()
        return "download"
    except Exception as err:  # noqa: BLE001 - no download: the document opened
        if "Timeout" not in type(err).__name__ and "Timeout" not in str(err):
            raise
        return page.title()


# ----- the stored XSS: uploads keep no name of theirs, files are media or downloads ------------------

def test_uploaded_html_is_stored_as_a_video_and_nothing_runs_in_chromium(demo, evil_html, browser):
    from gradio_client import Client, handle_file

    base, cfg = demo
    Client(base, verbose=False).predict(handle_file(str(evil_html)), "Eve", api_name="/preprocess")
    stored = sorted(cfg.root.glob("sessions/*/speakers/sp-*/video*"))
    assert [p.name for p in stored] == ["video.mp4"], "the upload must be stored under the server's own name"
    assert not list(cfg.root.rglob("*.html"))
    meta = json.loads((stored[0].parent / "meta.json").read_text())
    assert meta["uploaded_as"] == "evil.html" and meta["video"] == "video.mp4"

    folder = stored[0].parent
    planted_html = folder / "planted.html"  # as a version before this fix stored it
    shutil.copyfile(evil_html, planted_html)
    planted_svg = folder / "planted.svg"
    planted_svg.write_text(f'<svg xmlns="http://www.w3.org/2000/svg"><script>document.title="{SCRIPT_TITLE}"</script></svg>')

    ctx = browser.new_context(accept_downloads=True)
    page = ctx.new_page()
    try:
        page.goto(base)
        page.wait_for_selector("#run-example", timeout=60_000)
        video = page.request.get(_file_url(base, stored[0]))
        assert video.status == 200 and video.headers["content-type"] == "video/mp4"
        assert video.headers["x-content-type-options"] == "nosniff" and "sandbox" in video.headers["content-security-policy"]
        for planted in (planted_html, planted_svg):
            r = page.request.get(_file_url(base, planted))
            assert r.headers["content-type"] == "application/octet-stream", planted.name
            assert r.headers["content-disposition"].startswith("attachment"), planted.name
            assert "sandbox" in r.headers["content-security-policy"]
            assert _open_as_page(page, _file_url(base, planted)) == "download", planted.name
        # the stored video itself opens as media; its metadata never runs
        title = _open_as_page(page, _file_url(base, stored[0]))
        assert not title.startswith(SCRIPT_TITLE)
    finally:
        ctx.close()


def test_session_token_is_out_of_reach_of_page_scripts(demo, browser):
    base, cfg = demo
    config = httpx.get(base + "config").text
    assert "secret" not in config.lower() and "lipsync-demo-session" not in config
    ctx = browser.new_context()
    page = ctx.new_page()
    try:
        page.goto(base)
        page.wait_for_selector("#run-example", timeout=60_000)
        cookie = next(c for c in ctx.cookies() if c["name"] == SESSION_COOKIE)
        assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and re.fullmatch(r"[0-9a-f]{32}", cookie["value"])
        assert SESSION_COOKIE not in page.evaluate("document.cookie")
        storage = page.evaluate("JSON.stringify(Object.assign({}, localStorage, sessionStorage))")
        assert cookie["value"] not in storage
        # the session's folder is named by a hash of the token, so file links do not show the token
        key = jobs.session_key(cookie["value"])
        deadline = time.monotonic() + 30
        while not (cfg.root / "sessions" / key).is_dir() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (cfg.root / "sessions" / key).is_dir()
        assert not (cfg.root / "sessions" / cookie["value"]).exists()
        assert cookie["value"] not in page.content()
        # markup that got into the page anyway cannot run: inline handlers and scripts are blocked
        page.evaluate("""() => {
            document.body.insertAdjacentHTML('beforeend', '<img src="data:," onerror="window.__xss = 1">');
            const s = document.createElement('script'); s.textContent = 'window.__xss = 2'; document.body.appendChild(s);
        }""")
        time.sleep(1)
        assert page.evaluate("window.__xss === undefined")
    finally:
        ctx.close()


def test_headers_cookie_and_framing(demo, browser):
    base, _ = demo
    r = httpx.get(base)
    csp = r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "object-src 'none'" in csp and "connect-src 'self'" in csp
    # the page's own inline scripts run by hash; no other inline script or on...= attribute can
    script_src = next(d for d in csp.split(";") if d.strip().startswith("script-src")).split()
    assert "'unsafe-inline'" not in script_src and len([t for t in script_src if t.startswith("'sha256-")]) >= 3
    from demo.web import page_csp

    assert page_csp(r.content) == csp
    assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
    set_cookie = r.headers["set-cookie"]
    assert set_cookie.startswith(f"{SESSION_COOKIE}=") and "HttpOnly" in set_cookie and "SameSite=Lax" in set_cookie
    assert "Secure" not in set_cookie  # plain HTTP; --secure-cookies marks it
    again = httpx.get(base, cookies={SESSION_COOKIE: set_cookie.split(";")[0].split("=")[1]})
    assert "set-cookie" not in again.headers, "a visitor with a session keeps it"
    # another site cannot frame the demo
    page = browser.new_page()
    try:
        page.set_content(f'<iframe id="f" src="{base}" width="800" height="600"></iframe>')
        time.sleep(3)
        frame = page.frames[1]
        assert frame.url.startswith("chrome-error:") or frame.query_selector("#run-example") is None
    finally:
        page.close()


def test_file_route_refuses_traversal_symlinks_and_files_outside_the_sessions(demo, tmp_path):
    base, cfg = demo
    secret = cfg.root / "private.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    session = jobs.new_session(cfg)
    folder = jobs.session_dir(cfg, session)
    link = folder / "link.mp4"
    link.symlink_to("/etc/passwd")
    for path in (secret, Path("/etc/passwd"), folder / ".." / ".." / "private.txt", link,
                 cfg.root / "sessions" / ".." / "private.txt"):
        r = httpx.get(f"{base}gradio_api/file={path}")
        assert r.status_code in (403, 404), (path, r.status_code)
        assert b"root:x" not in r.content and b"TOP-SECRET-CONTENT" not in r.content


def test_upload_cap_is_the_one_the_page_states(demo):
    from demo.app import launch_kwargs

    base, cfg = demo
    assert launch_kwargs(DemoConfig())["max_file_size"] == 200_000_000  # "200 MB" on the page
    cap = int(UPLOAD_MB * 1e6)
    assert f"{UPLOAD_MB:.0f} MB" in cfg.limits.describe()
    ok = httpx.post(base + "gradio_api/upload", files={"files": ("a.bin", b"\0" * cap)})
    over = httpx.post(base + "gradio_api/upload", files={"files": ("b.bin", b"\0" * (cap + 1))})
    assert ok.status_code == 200, ok.text
    assert over.status_code == 413, over.text


def test_error_messages_show_file_names_as_text(demo, browser, tmp_path):
    """An uploaded file's name reaches the error pop-up as text (Gradio also strips ``<>`` from
    uploaded names; messages keep at most ``NAME_CHARS`` printable characters of it)."""
    base, _ = demo
    name = f'<img src=x onerror="document.title=\'{SCRIPT_TITLE}\'">.mp4'
    page = browser.new_page()
    try:
        page.goto(base)
        page.wait_for_selector("#run-example", timeout=60_000)
        page.get_by_role("tab", name="Your speaker").click()
        page.locator("#upload-video input[type=file]").set_input_files(
            files=[{"name": name, "mimeType": "video/mp4", "buffer": b"not a video at all" * 100}])
        time.sleep(2)
        page.click("#preprocess")
        page.locator(".toast-messages").first.wait_for(timeout=60_000)
        time.sleep(1)
        toast = " ".join(page.locator(".toast-messages").all_inner_texts())
        assert "not a readable video" in toast or "could not be read" in toast, toast
        assert page.title() != SCRIPT_TITLE
        assert page.locator(".toast-messages img").count() == 0
    finally:
        page.close()


# ----- text to speech: user text never becomes an option --------------------------------------------

def test_tts_text_is_never_an_option(tmp_path):
    import soundfile as sf

    from lipsync.synthesis import text_to_speech

    wav = text_to_speech("-f/etc/passwd", tmp_path)
    assert sf.info(str(wav)).duration < ETC_PASSWD_S, "the file was read aloud instead of the words"
    elsewhere = tmp_path / "elsewhere.wav"
    out = tmp_path / "out"
    out.mkdir()
    text_to_speech(f"-w{elsewhere} hello", out)
    assert not elsewhere.exists() and (out / "tts.wav").is_file()
    for voice in ("-f/etc/passwd", "en --stdin", "../x"):
        with pytest.raises(LipsyncError, match="voice"):
            text_to_speech("hello", tmp_path, voice=voice)
    with pytest.raises(LipsyncError, match="NUL"):
        text_to_speech("hello\x00-f/etc/passwd", tmp_path)


def test_tts_output_is_held_to_the_audio_limit(tmp_path):
    from lipsync.synthesis import text_to_speech

    words = "Place blue at F two now. " * 12  # ~20 s of speech
    with pytest.raises(LipsyncError, match="limit here is 5 s"):
        text_to_speech(words, tmp_path, max_seconds=5)
    assert not (tmp_path / "tts.wav").exists(), "a refused speech file is not left behind"
    cfg = DemoConfig(root=tmp_path / "root", limits=Limits(audio_s=5))
    with pytest.raises(LipsyncError, match="limit here is 5 s"):
        handlers.speech_file(cfg, "text", None, words, tmp_path / "run")
    assert handlers.speech_file(cfg, "text", None, "-f/etc/passwd", tmp_path / "run2").is_file()


def test_external_programs_never_take_a_file_name_as_an_option(tmp_path, monkeypatch):
    """Files named like options or ffmpeg protocols are read as files (paths go in absolute)."""
    from lipsync.media import load_audio, probe

    monkeypatch.chdir(tmp_path)
    for name in ("-y.mp4", "concat:-i.mp4"):
        shutil.copyfile(GRID_CLIP, tmp_path / name)
        info = probe(name)
        assert info.frames == 75 and info.container == "mpeg"
        assert len(load_audio(name)) > 16_000


# ----- names, stored uploads, sessions -----------------------------------------------------------------

def test_speaker_names_are_limited(demo):
    _, cfg = demo
    assert check_name("  Ada   Lovelace ") == "Ada Lovelace"
    with pytest.raises(LipsyncError, match=f"limit here is {NAME_CHARS}"):
        check_name("x" * 200_000)
    with pytest.raises(LipsyncError, match="control characters"):
        check_name("Ada\x1b[31m")
    session = jobs.new_session(cfg)
    with pytest.raises(gr_error()):
        handlers.preprocess_speaker(cfg, session, str(GRID_CLIP), "y" * (NAME_CHARS + 1))
    assert [sid for _, sid in jobs.list_speakers(cfg, session)] == [jobs.EXAMPLE_ID]


def gr_error():
    import gradio as gr

    return gr.Error


def test_stored_uploads_are_named_by_their_content(tmp_path):
    mkv_named = tmp_path / "clip.html"
    ffmpeg("-i", str(GRID_CLIP), "-t", "1", "-c:v", "libx264", "-c:a", "aac", "-f", "matroska", str(mkv_named))
    assert store_video(mkv_named, tmp_path / "a").name == "video.mkv"
    nut = tmp_path / "clip.mp4"  # a container outside the list: remuxed, not renamed
    ffmpeg("-i", str(GRID_CLIP), "-t", "1", "-c:v", "mpeg4", "-c:a", "pcm_s16le", "-f", "nut", str(nut))
    stored = store_video(nut, tmp_path / "b")
    assert stored.name == "video.mkv" and sorted(p.name for p in stored.parent.iterdir()) == ["video.mkv"]
    from lipsync.media import probe

    assert probe(stored).container == "matroska,webm"


def test_sessions_come_only_from_well_formed_tokens(demo):
    _, cfg = demo
    for bad in ("../../etc", "A" * 32, "0" * 31, None, 42):
        session = jobs.new_session(cfg, bad)
        assert session["token"] != bad and re.fullmatch(r"[0-9a-f]{32}", session["token"])
    assert not (cfg.root / "sessions" / "..").resolve().joinpath("etc").exists()
    a, b = jobs.new_session(cfg), jobs.new_session(cfg)
    assert jobs.session_dir(cfg, a) != jobs.session_dir(cfg, b)
    assert jobs.session_dir(cfg, a).name == hashlib.sha256(f"lipsync-demo-session:{a['token']}".encode()).hexdigest()[:32]
    again = handlers.start(cfg, a["token"])
    assert again[0]["token"] == a["token"]


def test_other_sessions_speakers_are_out_of_reach(demo):
    _, cfg = demo
    owner, other = jobs.new_session(cfg), jobs.new_session(cfg)
    folder = jobs.session_dir(cfg, owner) / "speakers" / "sp-0123456789ab"
    folder.mkdir(parents=True)
    shutil.copyfile(GRID_CLIP, folder / "video.mpg")
    (folder / "meta.json").write_text(json.dumps({"name": "Owner", "video": "video.mpg", "created": 0}))
    assert "sp-0123456789ab" in [sid for _, sid in jobs.list_speakers(cfg, owner)]
    assert "sp-0123456789ab" not in [sid for _, sid in jobs.list_speakers(cfg, other)]
    key = jobs.session_dir(cfg, owner).name
    for sid in ("sp-0123456789ab", f"../{key}/speakers/sp-0123456789ab", f"../../sessions/{key}"):
        with pytest.raises(LipsyncError, match="not in this session"):
            jobs.get_speaker(cfg, other, sid)

