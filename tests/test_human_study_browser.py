"""The human-study rater app in a real browser: ``python -m human_study serve`` in a subprocess on a
free port of 127.0.0.1, driven by Playwright in Debian's /usr/bin/chromium (Playwright's own browser
download does not work offline). Screenshots go to ``test-artifacts/human_study/``.

One small study (1 s clips, 6 scored trials, 1 practice, 1 attention check) is made once for the
module; every test has its own server and database, so the admin's counts are this test's alone.
The whole file takes well under a minute on 2 CPU cores, so it is not marked slow.
"""
from __future__ import annotations

import csv
import io
import re
import shutil
from pathlib import Path

import pytest

from conftest import CHROMIUM, CHROMIUM_ARGS, ROOT
from human_study_support import SECRET, make_study, running_server

ARTIFACTS = ROOT / "test-artifacts" / "human_study"
METHODS = ("ground_truth", "lipsync3d", "personalized_2d", "frozen")
N_PRACTICE, N_SCORED, N_ATTENTION = 1, 6, 1
N_ALL = N_PRACTICE + N_SCORED + N_ATTENTION
STEP_MS = 15_000  # one trial's page change or video end, on a loaded 2-core machine

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); the browser tests need it", allow_module_level=True)
if shutil.which("ffmpeg") is None:
    pytest.skip("ffmpeg is missing; the study's test videos are made with it", allow_module_level=True)


# ----- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return make_study(tmp_path_factory.mktemp("hs-browser"), trials_per_rater=N_SCORED,
                      practice_trials=N_PRACTICE, attention=N_ATTENTION)


@pytest.fixture
def server(study, tmp_path, request):
    """The base URL of a fresh server (own database) for this test; its log goes to test-artifacts."""
    log = tmp_path / "server.log"
    try:
        with running_server(study, f"sqlite:///{tmp_path}/r.db", log) as (base, _proc):
            yield base
    finally:
        if log.is_file():
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, ARTIFACTS / f"{request.node.name}-server.log")


@pytest.fixture(scope="module")
def pw():
    with playwright_api.sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(pw):
    b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
    yield b
    b.close()


# ----- helpers -------------------------------------------------------------------------------------
def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _phase(page) -> str:
    """Which section is shown: instructions, interlude, trial or done."""
    for name in ("instructions", "interlude", "trial", "done"):
        if page.locator(f"#{name}").is_visible():
            return name
    return ""


def _trial_id(page) -> int | None:
    """The id of the trial on the page, read from the first video's /media/TOKEN/TRIAL/SLOT URL."""
    src = page.evaluate("() => { const v = document.querySelector('video.stimulus'); return v ? v.getAttribute('src') : null; }")
    if not src:
        return None
    m = re.fullmatch(r"/media/[A-Za-z0-9_-]+/(\d+)/0", src)
    assert m, f"unexpected video URL {src!r}"
    return int(m.group(1))


def _wait_for_change(page, old_trial: int | None) -> None:
    """Wait until the page shows something other than trial ``old_trial`` (next trial, interlude, done)."""
    page.wait_for_function(
        """(old) => {
             const visible = (id) => !document.getElementById(id).hidden;
             if (visible('done') || visible('interlude') || visible('instructions')) return true;
             const v = document.querySelector('video.stimulus');
             if (!visible('trial') || !v) return false;
             return !v.getAttribute('src').endsWith(`/${old}/0`);
           }""", arg=old_trial, timeout=STEP_MS)


def _assert_blind(page) -> None:
    """Nothing a rater can see or fetch names a method: visible text, the title, the video URLs."""
    text = (page.inner_text("body") + "\n" + page.title()).lower()
    srcs = page.eval_on_selector_all("video.stimulus", "vs => vs.map(v => v.getAttribute('src') + ' ' + v.currentSrc)")
    for m in METHODS:
        assert m not in text, f"the method name {m!r} is visible on the rater page: {text!r}"
        for s in srcs:
            assert m not in s.lower(), f"the video URL {s!r} names the method {m!r}"


SYNC_TOL_S = 0.2   # seconds: the largest gap between the two videos' clocks while they play


def _play_until_answerable(page, click) -> None:
    """Press Play and wait for the first video to end, which enables the answer buttons."""
    buttons = page.locator("#answers button")
    assert buttons.count() >= 2
    for i in range(buttons.count()):
        assert buttons.nth(i).is_disabled(), "answers must wait until the video was watched"
    # sample how far apart the two videos' clocks are while they play (one sound track: A's)
    page.evaluate("""() => {
        const vs = [...document.querySelectorAll('video.stimulus')];
        window.__sync = {max: 0, n: 0, muted: vs.map(v => v.muted)};
        clearInterval(window.__syncTimer);
        if (vs.length === 2) window.__syncTimer = setInterval(() => {
            if (!vs[0].paused && !vs[0].ended && !vs[1].ended) {
                window.__sync.max = Math.max(window.__sync.max, Math.abs(vs[0].currentTime - vs[1].currentTime));
                window.__sync.n += 1;
            }
        }, 40);
    }""")
    click(page.locator("#play"))
    try:
        page.wait_for_function(
            "() => { const bs = [...document.querySelectorAll('#answers button')];"
            " return bs.length > 0 && bs.every(b => !b.disabled); }", timeout=STEP_MS)
    except playwright_api.TimeoutError:
        pytest.fail(f"the answers did not enable after Play; page error: {page.inner_text('#error')!r}")
    assert page.inner_text("#error") == ""
    sync = page.evaluate("() => window.__sync")
    if len(sync["muted"]) == 2:
        assert sync["muted"] == [False, True], "exactly one sound track (video A's) must play"
        assert sync["n"] > 5, "the videos were not seen playing together"
        assert sync["max"] < SYNC_TOL_S, f"the two videos drifted {sync['max']:.3f} s apart"


def _pick(trial_kind: str, choices: list[str], k: int) -> str:
    """Vary the answers: A, B, No preference in turn for paired trials; 1..5 in turn for MOS."""
    return choices[k % len(choices)] if trial_kind == "paired" else choices[(k + 2) % len(choices)]


def _current(page) -> tuple[str, list[str], int]:
    """(kind, choices, number of videos) of the shown trial, from its buttons."""
    choices = page.eval_on_selector_all("#answers button", "bs => bs.map(b => b.dataset.choice)")
    n_videos = page.locator("video.stimulus").count()
    kind = "mos" if choices and choices[0] == "1" else "paired"
    return kind, choices, n_videos


def _start(page, base: str) -> str:
    """Open the study's front page, press Start, pass the instructions; returns the rater's token."""
    page.goto(base + "/")
    page.get_by_role("button", name="Start").click()
    page.wait_for_url(re.compile(r"/r/[A-Za-z0-9_-]{20,64}$"), timeout=STEP_MS)
    token = page.url.rsplit("/", 1)[1]
    page.locator("#instructions").wait_for(state="visible", timeout=STEP_MS)
    assert "Instructions" in page.inner_text("#instructions")
    return token


def _export(request_context, base: str) -> list[dict]:
    r = request_context.get(base + "/admin/export.csv")
    assert r.status == 200, r.text()
    return list(csv.DictReader(io.StringIO(r.text())))


def _admin_login(page, base: str) -> None:
    page.goto(base + "/admin")
    page.locator("#login").wait_for(state="visible", timeout=STEP_MS)
    page.fill("#secret", SECRET)
    page.get_by_role("button", name="Log in").click()
    page.locator("#panel").wait_for(state="visible", timeout=STEP_MS)


# ----- tests ---------------------------------------------------------------------------------------
def test_desktop_full_run_with_resume_then_admin(browser, server):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    page.on("console", lambda m: page_errors.append(m.text) if "Content Security Policy" in m.text else None)
    try:
        _start(page, server)
        _assert_blind(page)
        _shot(page, "desktop-01-instructions")
        page.get_by_role("button", name="Begin with a short practice").click()

        answered: list[tuple[int, str]] = []  # (trial id, choice) in the order they were given
        saw_interlude = resumed = False
        for step in range(N_ALL + 2):  # the trials plus the interlude; more means the page is stuck
            phase = _phase(page)
            if phase == "done":
                break
            if phase == "interlude":
                assert not saw_interlude, "the practice interlude came twice"
                assert len(answered) == N_PRACTICE, "the interlude must come right after the practice"
                saw_interlude = True
                _shot(page, "desktop-03-interlude")
                page.get_by_role("button", name="Continue").click()
                page.locator("#trial").wait_for(state="visible", timeout=STEP_MS)
                continue
            assert phase == "trial", f"unexpected page state {phase!r}"
            trial = _trial_id(page)
            kind, choices, n_videos = _current(page)
            practice = len(answered) < N_PRACTICE
            assert page.locator("#practice-badge").is_visible() == practice
            if kind == "paired":
                assert n_videos == 2, "a paired trial shows exactly two videos"
                assert page.locator("figcaption").all_inner_texts() == ["A", "B"]
            else:
                assert n_videos == 1, "a MOS trial shows one video"
                assert choices == ["1", "2", "3", "4", "5"]
            _assert_blind(page)

            # resume: halfway through the scored trials, reload and continue at the same point
            if not resumed and len(answered) == N_PRACTICE + (N_SCORED + N_ATTENTION) // 2:
                count_before = page.inner_text("#count")
                assert re.fullmatch(rf"\d+ of {N_SCORED + N_ATTENTION} done", count_before), count_before
                page.reload()
                page.locator("#trial").wait_for(state="visible", timeout=STEP_MS)
                assert page.inner_text("#count") == count_before, "progress changed on reload"
                assert _trial_id(page) == trial, "after a reload the page must continue at the same trial"
                assert not page.locator("#instructions").is_visible() and not page.locator("#interlude").is_visible()
                resumed = True
                _shot(page, "desktop-04-resumed")

            _play_until_answerable(page, lambda loc: loc.click())
            if step == 0:
                _shot(page, "desktop-02-first-trial")
            choice = _pick(kind, choices, len(answered))
            page.locator(f"#answers button[data-choice='{choice}']").click()
            answered.append((trial, choice))
            _wait_for_change(page, trial)
        else:
            pytest.fail(f"the study did not finish after {len(answered)} answers")

        assert page.locator("#done").is_visible()
        assert "Thank you!" in page.inner_text("#done")
        assert page.inner_text("#count") == f"{N_SCORED + N_ATTENTION} of {N_SCORED + N_ATTENTION} done"
        assert saw_interlude and resumed
        assert len(answered) == N_ALL
        assert len({c for _, c in answered}) >= 3, f"the answers should vary: {answered}"
        _shot(page, "desktop-05-done")
        assert not page_errors, page_errors

        # the admin page: log in through the form, check the summary, export through the session
        _admin_login(page, server)
        summary = page.inner_text("#summary")
        assert re.search(rf": 1 raters \(1 finished\), {N_ALL} ratings;", summary), summary
        _shot(page, "desktop-06-admin")
        rows = _export(page.request, server)
        assert len(rows) == N_ALL
        assert [(int(r["trial_id"]), r["choice"]) for r in rows] == answered
        assert [r["is_practice"] for r in rows].count("True") == N_PRACTICE
        assert [r["is_attention"] for r in rows].count("True") == N_ATTENTION
        assert rows[0]["is_practice"] == "True"
        assert all(int(r["plays"]) >= 1 for r in rows), "every answer came after the video was played"
        assert len({r["rater_id"] for r in rows}) == 1
    finally:
        ctx.close()

    # without the admin login, the export is refused
    fresh = browser.new_context()
    try:
        r = fresh.request.get(server + "/admin/export.csv")
        assert r.status == 401, r.status
        page = fresh.new_page()
        page.goto(server + "/admin")
        page.locator("#login").wait_for(state="visible", timeout=STEP_MS)
        assert not page.locator("#panel").is_visible()
    finally:
        fresh.close()


def test_phone_layout_with_taps(pw, browser, server):
    phone = {k: v for k, v in pw.devices["Pixel 7"].items() if k != "default_browser_type"}
    assert phone["is_mobile"] and phone["has_touch"]
    ctx = browser.new_context(**phone)
    page = ctx.new_page()
    try:
        _start(page, server)
        page.get_by_role("button", name="Begin with a short practice").tap()
        done = 0
        checked_paired = False
        while done < 2 or not checked_paired:  # two trials, and at least one with two videos
            assert done < N_ALL, "no paired trial was shown"
            if _phase(page) == "interlude":
                page.get_by_role("button", name="Continue").tap()
                page.locator("#trial").wait_for(state="visible", timeout=STEP_MS)
            trial = _trial_id(page)
            kind, choices, n_videos = _current(page)
            _play_until_answerable(page, lambda loc: loc.tap())
            if n_videos == 2:
                first, second = (page.locator("video.stimulus").nth(i).bounding_box() for i in (0, 1))
                assert second["y"] >= first["y"] + first["height"], f"videos not stacked: {first} {second}"
                checked_paired = True
            width = page.evaluate("window.innerWidth")
            for box in (b.bounding_box() for b in page.locator("#answers button, #play").all()):
                assert box["x"] >= 0 and box["x"] + box["width"] <= width + 1, f"a button leaves the screen: {box}"
            overflow = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            assert overflow[0] <= overflow[1] + 1, f"the page scrolls sideways: {overflow}"
            if done == 0 or n_videos == 2:
                _shot(page, f"phone-{done + 1:02d}-{kind}")
            page.locator(f"#answers button[data-choice='{choices[0]}']").tap()
            _wait_for_change(page, trial)
            done += 1
    finally:
        ctx.close()


def test_double_click_saves_one_rating(browser, server):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    try:
        _start(page, server)
        page.get_by_role("button", name="Begin with a short practice").click()
        trial = _trial_id(page)
        _, choices, _ = _current(page)
        _play_until_answerable(page, lambda loc: loc.click())
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url) if r.url.endswith("/rate") else None)
        page.locator(f"#answers button[data-choice='{choices[1]}']").dblclick()
        _wait_for_change(page, trial)
        assert page.inner_text("#error") == ""
        _admin_login(page, server)
        rows = _export(page.request, server)
        assert [(int(r["trial_id"]), r["choice"]) for r in rows] == [(trial, choices[1])], rows
        assert len(requests) == 1, f"a double click sent {len(requests)} answers"
    finally:
        ctx.close()

