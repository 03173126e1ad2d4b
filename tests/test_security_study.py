"""Attacks on the rating server, each replayed against it with the safe outcome asserted.

What broke before and is fixed: wrong admin logins froze every rater (a blocking sleep on the
event loop); anyone could use up the rater places through the open link; the admin cookie was a
fixed value that never expired nor was revoked; no Content-Security-Policy and framing allowed;
``ratings.db`` world-readable; answers accepted without the video ever playing; attention checks
recognisable by their wording and answers; invite links built from the request's ``Host``.
What held and is kept as regression tests: path traversal and symlinks, other raters' trials and
files, token guessing, malformed answers, oversized bodies, double submissions, the admin secret.
"""
from __future__ import annotations

import concurrent.futures
import datetime as dt
import re
import shutil
import stat
import time

import httpx
import pytest
import yaml

from conftest import CHROMIUM, CHROMIUM_ARGS
from human_study_support import SECRET, answer, join, make_study, running_server, study_client

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is needed to make the study videos")

CLIP_S = 1.0  # the synthetic study's videos are this long


@pytest.fixture(scope="module")
def study_file(tmp_path_factory):
    """A study that checks viewing time as a real one does (``min_watch_fraction`` at its default)."""
    return make_study(tmp_path_factory.mktemp("hs-sec"), trials_per_rater=6, practice_trials=1, attention=1)


@pytest.fixture(scope="module")
def quick_study(study_file):
    """The same study without the viewing-time check, for tests that answer at once."""
    return _variant(study_file, "quick", min_watch_fraction=0)


def _variant(study_file, name, **changes):
    raw = yaml.safe_load(study_file.read_text())
    raw.update(changes)
    path = study_file.parent / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture()
def client(quick_study, tmp_path):
    with study_client(quick_study, tmp_path / "r.db") as c:
        yield c


def _login(client, secret=SECRET):
    return client.post("/admin/login", json={"secret": secret})


# ----- the admin login: throttled without blocking anyone ----------------------------------------------

def test_wrong_logins_do_not_stall_raters(study_file, tmp_path):
    """A flood of wrong admin secrets once froze the event loop (12 wrong logins: 5.7 s for a
    rater's /state); now raters are answered at once and the flood gets 401 or 429."""
    with running_server(study_file, f"sqlite:///{tmp_path}/r.db", tmp_path / "log") as (base, _):
        token = httpx.post(base + "/api/join").json()["token"]

        def wrong(_):
            return httpx.post(base + "/admin/login", json={"secret": "not-the-secret-0000"}, timeout=30).status_code

        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            flood = [pool.submit(wrong, k) for k in range(48)]
            time.sleep(0.05)
            t0 = time.perf_counter()
            r = httpx.get(f"{base}/api/r/{token}/state", timeout=30)
            rater_s = time.perf_counter() - t0
            codes = [f.result() for f in flood]
        assert r.status_code == 200
        assert rater_s < 2.0, f"a rater waited {rater_s:.2f} s during a flood of wrong logins"
        assert set(codes) <= {401, 429} and codes.count(429) > 0, codes
        # the flooding address is locked out, even with the right secret, and told when to retry
        locked = httpx.post(base + "/admin/login", json={"secret": SECRET})
        assert locked.status_code == 429 and int(locked.headers["retry-after"]) >= 1
        assert httpx.get(base + "/healthz").status_code == 200


def test_login_lockout_and_admin_cookie_per_login(client):
    from human_study.security import LOGIN_FAILURES

    first = _login(client)
    assert first.status_code == 200
    cookie1 = client.cookies.get("hs_admin")
    set_cookie = first.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=strict" in set_cookie and "max-age=" in set_cookie
    assert "secure" not in set_cookie  # plain HTTP here; --secure-cookies marks it
    assert SECRET not in cookie1
    client.cookies.clear()
    assert _login(client).status_code == 200
    cookie2 = client.cookies.get("hs_admin")
    assert cookie2 != cookie1, "every login gets its own session id"
    assert client.get("/admin/api/progress").status_code == 200
    # logging out revokes that session server-side: a copy of the cookie no longer works
    client.post("/admin/logout")
    client.cookies.clear()
    client.cookies.set("hs_admin", cookie2, path="/admin")
    assert client.get("/admin/api/progress").status_code == 401
    client.cookies.clear()
    client.cookies.set("hs_admin", cookie1, path="/admin")  # another login's cookie still works
    assert client.get("/admin/api/progress").status_code == 200
    client.cookies.clear()
    # the old fixed cookie (an HMAC of the secret) is refused
    import hashlib
    import hmac

    client.cookies.set("hs_admin", hmac.new(SECRET.encode(), b"admin-session", hashlib.sha256).hexdigest())
    assert client.get("/admin/api/progress").status_code == 401
    client.cookies.clear()
    # wrong secrets lock this client out; a bearer secret is refused too while it lasts
    for _ in range(LOGIN_FAILURES):
        assert _login(client, "wrong-secret-000000").status_code == 401
    r = _login(client)
    assert r.status_code == 429 and "try again" in r.json()["detail"] and int(r.headers["retry-after"]) > 0
    bearer = client.get("/admin/api/progress", headers={"Authorization": f"Bearer {SECRET}"})
    assert bearer.status_code == 429
    # raters carry on
    token = join(client)
    assert client.get(f"/api/r/{token}/state").status_code == 200


def test_admin_session_expires_and_can_be_marked_secure(quick_study, tmp_path):
    with study_client(quick_study, tmp_path / "r.db", admin_session_s=1, secure_cookies=True) as c:
        r = _login(c)
        assert r.status_code == 200 and "secure" in r.headers["set-cookie"].lower()
        sid = r.cookies.get("hs_admin") or re.search(r"hs_admin=([^;]+)", r.headers["set-cookie"]).group(1)
        headers = {"Cookie": f"hs_admin={sid}"}
        assert c.get("/admin/api/progress", headers=headers).status_code == 200
        time.sleep(1.2)
        assert c.get("/admin/api/progress", headers=headers).status_code == 401


def test_login_guard_lockouts_double_and_a_global_budget():
    from human_study import security as sec

    now = [1000.0]
    g = sec.LoginGuard(clock=lambda: now[0])
    for _ in range(sec.LOGIN_FAILURES):
        g.check("a")
        g.failed("a")
    with pytest.raises(sec.Refused) as err:
        g.check("a")
    assert err.value.retry_after == sec.LOGIN_LOCKOUT_S
    g.check("b")  # others are not affected
    now[0] += sec.LOGIN_LOCKOUT_S + 1
    g.check("a")
    for _ in range(sec.LOGIN_FAILURES):
        g.failed("a")
    with pytest.raises(sec.Refused) as err:
        g.check("a")
    assert err.value.retry_after == 2 * sec.LOGIN_LOCKOUT_S  # the second lockout is twice as long
    # many addresses together: past the global budget every secret check pauses briefly
    for k in range(sec.GLOBAL_FAILURES):
        g.failed(f"10.0.{k // 200}.{k % 200}")
    with pytest.raises(sec.Refused, match="sent to this server"):
        g.check("c")
    now[0] += sec.GLOBAL_LOCKOUT_S + 1
    g.check("c")


# ----- open enrollment: rate limits, an optional code, places that are given back ---------------------

def test_join_flood_is_rate_limited(quick_study, tmp_path):
    with study_client(quick_study, tmp_path / "r.db", joins_per_client_hour=5) as c:
        codes = [c.post("/api/join").status_code for _ in range(8)]
        assert codes[:5] == [200] * 5 and set(codes[5:]) == {429}, codes
        r = c.post("/api/join")
        assert "too many joins from your address" in r.json()["detail"] and int(r.headers["retry-after"]) > 0
    with study_client(quick_study, tmp_path / "r2.db", joins_per_client_hour=0, joins_per_minute=3) as c:
        codes = [c.post("/api/join").status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        assert "right now" in c.post("/api/join").json()["detail"]


def test_rate_limiter_refills_per_client():
    from human_study.security import RateLimiter, Refused

    now = [0.0]
    lim = RateLimiter(2, 60, what="joins from your address", clock=lambda: now[0])
    lim.check("a"), lim.check("a")
    with pytest.raises(Refused, match="from your address") as err:
        lim.check("a")
    assert err.value.retry_after == 30
    lim.check("b")  # another address has its own bucket
    now[0] += 30    # half the window refills one of the two tokens
    lim.check("a")
    with pytest.raises(Refused):
        lim.check("a")
    RateLimiter(0, 60).check("a")  # 0: no limit


def test_enrollment_code(quick_study, tmp_path):
    with study_client(quick_study, tmp_path / "r.db", enrollment_code="orchid-41") as c:
        assert c.get("/api/study").json()["needs_code"] is True
        r = c.post("/api/join")
        assert r.status_code == 403 and "enrollment code" in r.json()["detail"]
        r = c.post("/api/join", json={"code": "orchid-42"})
        assert r.status_code == 403 and "not right" in r.json()["detail"]
        assert c.post("/api/join", json={"code": "x" * 5000}).status_code in (400, 413)
        assert join(c, json={"code": "orchid-41"})


def test_serve_with_an_enrollment_code_file(quick_study, tmp_path):
    import subprocess
    import sys

    from human_study.loadtest import free_port, start_server, stop_server
    from human_study_support import ROOT

    r = subprocess.run([sys.executable, "-m", "human_study", "serve", "--study", str(quick_study),
                        "--enrollment-code-file", str(tmp_path / "missing.txt")], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "code.txt").write_text("orchid-41\n")
    (tmp_path / "secret.txt").write_text(SECRET)
    port = free_port()
    proc = start_server(quick_study, f"sqlite:///{tmp_path}/r.db", port, tmp_path / "log", tmp_path / "secret.txt",
                        extra_args=("--enrollment-code-file", str(tmp_path / "code.txt")))
    try:
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(base + "/api/study").json()["needs_code"] is True
        assert httpx.post(base + "/api/join").status_code == 403
        assert httpx.post(base + "/api/join", json={"code": "orchid-41"}).status_code == 200
    finally:
        stop_server(proc)


def test_full_study_and_abandoned_joins_give_places_back(quick_study, tmp_path):
    from sqlalchemy import update

    from human_study.db import Rater
    from human_study.server import JOIN_HOLD_S

    small = _variant(quick_study, "small", max_raters=3)
    with study_client(small, tmp_path / "r.db") as c:
        a, b, idle = join(c), join(c), join(c)
        assert answer(c, a)[0].status_code == 200
        info = c.get("/api/study").json()
        assert info["full"] is True
        r = c.post("/api/join")
        assert r.status_code == 403 and "all the raters it needs" in r.json()["detail"]
        # joins that never answered give their place back after JOIN_HOLD_S ...
        old = dt.datetime.utcnow() - dt.timedelta(seconds=JOIN_HOLD_S + 60)
        with c.engine.begin() as conn:
            conn.execute(update(Rater).where(Rater.token.in_([b, idle])).values(created_at=old))
        assert c.get("/api/study").json()["full"] is False
        new = join(c)
        # ... while a rater who answered keeps it, and the old idle links still work
        assert c.get(f"/api/r/{idle}/state").status_code == 200
        assert c.get(f"/api/r/{a}/state").json()["progress"]["practice_done"] == 1
        assert new not in (a, b, idle)
        # invited raters always hold their place
        assert _login(c).status_code == 200
        assert c.post("/admin/api/invites", json={"count": 1}).status_code == 200
        assert c.get("/api/study").json()["full"] is True


def test_full_study_page_in_chromium(quick_study, tmp_path):
    pw = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    small = _variant(quick_study, "one", max_raters=1)
    with running_server(small, f"sqlite:///{tmp_path}/r.db", tmp_path / "log") as (base, _):
        with pw.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
            try:
                violations: list[str] = []
                page = browser.new_page()
                page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
                page.goto(base + "/")
                page.get_by_role("button", name="Start").click()
                page.wait_for_url(re.compile(r"/r/[A-Za-z0-9_-]{20,64}$"), timeout=15_000)
                page.locator("#instructions").wait_for(state="visible", timeout=15_000)
                other = browser.new_page()  # somebody else, after the only place is taken
                other.goto(base + "/")
                other.locator("#full").wait_for(state="visible", timeout=15_000)
                assert "all the raters it needs" in other.inner_text("#full")
                assert not other.locator("#start").is_visible()
                assert not violations, violations  # the pages run under the strict policy
            finally:
                browser.close()


# ----- answers: the video must have played -----------------------------------------------------------

def test_answers_need_a_play_and_the_time_to_watch(study_file, tmp_path):
    with study_client(study_file, tmp_path / "r.db") as c:
        token = join(c)
        state = c.get(f"/api/r/{token}/state").json()
        r, _ = answer(c, token, state, plays=0)
        assert r.status_code == 400 and "play the video" in r.json()["detail"]
        r, body = answer(c, token, state)  # at once, as a script would
        assert r.status_code == 409 and "watch the video" in r.json()["detail"]
        time.sleep(CLIP_S)
        r = c.post(f"/api/r/{token}/rate", json=body)
        assert r.status_code == 200, r.text
        # the next trial came with the answer: its clock started then, so answering at once is refused
        nxt = r.json()["state"]
        r2, _ = answer(c, token, nxt)
        assert r2.status_code == 409
        from human_study.db import ratings_frame

        df = ratings_frame(c.engine)
        assert len(df) == 1 and df.loc[0, "viewed_ms"] >= 0.9 * CLIP_S * 1000 and df.loc[0, "plays"] == 1
        assert df.loc[0, "first_shown_at"].endswith("Z")
        assert _login(c).status_code == 200
        csv = c.get("/admin/export.csv").text.splitlines()[0].split(",")
        assert {"first_shown_at", "viewed_ms", "plays"} <= set(csv)


def test_analysis_flags_answers_given_without_a_play():
    import pandas as pd

    from human_study.analysis import attention_table

    rows = []
    for rater, plays in ((1, [1, 1, 1]), (2, [1, 0, 1])):
        for k, p in enumerate(plays):
            rows.append({"rating_id": len(rows) + 1, "rater_id": rater, "question_id": "ab", "question_type": "paired",
                         "is_practice": False, "is_attention": k == 2, "attention_passed": True if k == 2 else None,
                         "plays": p, "viewed_ms": 1500 + 100 * k})
    t = attention_table(pd.DataFrame(rows))
    assert t.n_unplayed.tolist() == [0, 1] and t.flagged.tolist() == [False, True]
    assert t.median_viewed_s.tolist() == [1.6, 1.6]


# ----- attention checks look like every other trial ---------------------------------------------------

@pytest.mark.parametrize("no_preference", [False, True])
def test_attention_checks_look_like_scored_trials(quick_study, tmp_path, no_preference):
    raw = yaml.safe_load(quick_study.read_text())
    raw["questions"] = [q for q in raw["questions"] if q["type"] == "paired"]
    for q in raw["questions"]:
        q["no_preference"] = no_preference
    raw["trials_per_rater"] = 6
    path = quick_study.parent / f"att-{no_preference}.yaml"
    path.write_text(yaml.safe_dump(raw))
    lip_text = next(q["text"] for q in raw["questions"] if q["axis"] == "lip_sync")
    with study_client(path, tmp_path / "r.db") as c:
        token = join(c)
        state = c.get(f"/api/r/{token}/state").json()
        seen = []
        while state["trial"] is not None:
            seen.append((state["trial"]["text"], tuple(state["trial"]["choices"])))
            r, _ = answer(c, token, state)
            state = r.json()["state"]
        from human_study.db import ratings_frame

        df = ratings_frame(c.engine)
        att = df[df["is_attention"]]
        assert len(att) == 1
        texts = {t for t, _ in seen}
        assert texts <= {q["text"] for q in raw["questions"]}, "attention checks must reuse a question's wording"
        expected = ("left", "right", "none") if no_preference else ("left", "right")
        assert {ch for _, ch in seen} == {expected}
        assert (lip_text, expected) in seen


# ----- headers, pages, files ---------------------------------------------------------------------------

def test_security_headers_and_no_inline_scripts(client):
    from human_study.server import STATIC

    for path in ("/", "/admin", "/healthz", "/static/rater.js", "/api/study"):
        r = client.get(path)
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
    for page in STATIC.glob("*.html"):
        html = page.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), f"{page.name} has an inline script"
        assert "<style" not in html and " style=" not in html and "onclick=" not in html, page.name
    assert client.get("/static/../server.py").status_code == 404
    assert client.get("/static/study.yaml").status_code == 404


def test_ratings_database_is_private(study_file, tmp_path):
    """The database holds every rater's personal token: only its owner may read it (WAL files too)."""
    with study_client(study_file, tmp_path / "r.db") as c:
        join(c)  # a write, so the WAL and shared-memory files exist now
        files = [tmp_path / n for n in ("r.db", "r.db-wal", "r.db-shm")]
        assert all(f.exists() for f in files)
        for f in files:
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, (f.name, oct(f.stat().st_mode))


def test_invite_links_never_come_from_the_host_header(quick_study, tmp_path):
    with study_client(quick_study, tmp_path / "r.db") as c:
        assert _login(c).status_code == 200
        links = c.post("/admin/api/invites", json={"count": 2}, headers={"Host": "evil.example"}).json()["links"]
        assert all(re.fullmatch(r"/r/[A-Za-z0-9_-]{20,64}", u) for u in links), links
    with study_client(quick_study, tmp_path / "r2.db", public_url="https://study.example.org/") as c:
        assert _login(c).status_code == 200
        links = c.post("/admin/api/invites", json={"count": 1}, headers={"Host": "evil.example"}).json()["links"]
        assert links[0].startswith("https://study.example.org/r/") and "evil" not in links[0]


def _media_of_tampered_trial(client, media_left: str):
    """The response for a trial whose stored media path was changed to ``media_left``."""
    from sqlalchemy import update

    from human_study.db import Trial

    t = join(client)
    i = client.get(f"/api/r/{t}/state").json()["trial"]["id"]
    with client.engine.begin() as conn:
        conn.execute(update(Trial).where(Trial.id == i).values(media_left=media_left))
    return client.get(f"/media/{t}/{i}/0")


def test_media_symlink_planted_in_the_study_is_not_served(client, quick_study, tmp_path):
    outside = tmp_path / "private.mp4"
    outside.write_bytes(b"root:x:0:0 private bytes")
    link = quick_study.parent / "media" / "planted.mp4"
    link.symlink_to(outside)
    try:
        r = _media_of_tampered_trial(client, "media/planted.mp4")
        assert r.status_code == 404 and b"private" not in r.content
    finally:
        link.unlink()


def test_double_submission_stores_one_rating(client):
    token = join(client)
    r1, body = answer(client, token)
    r2 = client.post(f"/api/r/{token}/rate", json=body)
    assert r1.status_code == r2.status_code == 200
    assert r2.json()["duplicate"] and r2.json()["rating_id"] == r1.json()["rating_id"]
    from human_study.db import ratings_frame

    assert len(ratings_frame(client.engine)) == 1


def test_tokens_cannot_be_guessed(client):
    tokens = {join(client) for _ in range(5)}
    assert all(len(t) >= 32 and re.fullmatch(r"[A-Za-z0-9_-]+", t) for t in tokens)
    for guess in ("0" * 32, "a" * 32, "A" * 43, sorted(tokens)[0][:-1] + "x"):
        if guess not in tokens:
            assert client.get(f"/api/r/{guess}/state").status_code == 404


# ----- what held before (regression tests) ---------------------------------------------------------------

def test_study_symlink_out_of_folder_is_refused(quick_study, tmp_path):
    study_file = quick_study
    from human_study.study import StudyError, load_study

    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"x")
    link = study_file.parent / "media" / "link.mp4"
    link.symlink_to(outside)
    try:
        raw = yaml.safe_load(study_file.read_text())
        raw["clips"][0]["videos"]["lipsync3d"] = "media/link.mp4"
        bad = study_file.parent / "bad_link.yaml"
        bad.write_text(yaml.safe_dump(raw))
        with pytest.raises(StudyError, match="outside the study folder"):
            load_study(bad)
    finally:
        link.unlink()




def test_raters_are_isolated(client):
    a, b = join(client), join(client)
    ta = client.get(f"/api/r/{a}/state").json()["trial"]
    # b cannot answer, nor fetch the media of, a's trial
    body = {"trial_id": ta["id"], "choice": ta["choices"][0], "submit_id": "intruder-1", "response_ms": 5}
    assert client.post(f"/api/r/{b}/rate", json=body).status_code == 404
    assert client.get(f"/media/{b}/{ta['id']}/0").status_code == 404
    assert client.get(ta["media"][0].replace(a, "x" * 32)).status_code == 404
    # a's state is untouched
    assert client.get(f"/api/r/{a}/state").json()["progress"]["practice_done"] == 0
    # unknown and malformed tokens
    assert client.get("/api/r/" + "A" * 32 + "/state").status_code == 404
    assert client.get("/api/r/short/state").status_code == 404
    assert client.get("/r/" + "B" * 32).status_code == 404


@pytest.mark.parametrize("path", [
    "/media/{t}/{i}/2", "/media/{t}/{i}/-1", "/media/{t}/../../etc/passwd", "/media/{t}/{i}/..%2F..%2Fstudy.yaml",
    "/media/..%2F..%2Fetc%2Fpasswd", "/media/{t}/%2Fetc%2Fpasswd/0", "/media//etc/passwd", "/static/../study.yaml",
    "/media/{t}/{i}/0/../../../../etc/passwd",
])
def test_media_is_confined_to_the_study(client, path):
    t = join(client)
    i = client.get(f"/api/r/{t}/state").json()["trial"]["id"]
    r = client.get(path.format(t=t, i=i))
    assert r.status_code in (404, 422, 400), (path, r.status_code)
    assert b"root:" not in r.content and b"methods:" not in r.content


def test_tampered_trial_media_path_is_not_served(client, tmp_path):
    """Even a database row pointing outside the study (a bug or tampering) cannot serve that file."""
    r = _media_of_tampered_trial(client, "../../../../etc/passwd")
    assert r.status_code == 404 and b"root:" not in r.content


@pytest.mark.parametrize("body, status", [
    (b"not json", 400), (b"{}", 400), (b'{"trial_id": "x", "choice": "left", "submit_id": "abcdefgh", "response_ms": 1}', 400),
    (b'{"trial_id": 1, "choice": "left", "submit_id": "a b c d e f", "response_ms": 1}', 400),
    (b'{"trial_id": 1, "choice": "left", "submit_id": "abcdefgh", "response_ms": 1, "extra": 1}', 400),
    (b'{"trial_id": 1, "choice": "left", "submit_id": "abcdefgh", "response_ms": -5}', 400),
    (b"x" * 20000, 413),
])
def test_malformed_requests_get_4xx_and_others_carry_on(client, body, status):
    a, b = join(client), join(client)
    r = client.post(f"/api/r/{a}/rate", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert "Traceback" not in r.text
    ok, _ = answer(client, b)
    assert ok.status_code == 200


def test_streamed_oversized_body_is_refused(client):
    token = join(client)

    def chunks():
        for _ in range(40):
            yield b"x" * 1024

    r = client.post(f"/api/r/{token}/rate", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413




@pytest.mark.parametrize("path", ["/admin/api/progress", "/admin/export.csv", "/admin/export.parquet",
                                  "/admin/analysis.zip"])
def test_admin_endpoints_need_the_secret(client, path):
    assert client.get(path).status_code == 401
    assert client.get(path, headers={"Authorization": "Bearer wrong-secret-000000000"}).status_code == 401
    assert client.get(path + f"?secret={SECRET}").status_code == 401  # never in a URL
    client.cookies.set("hs_admin", SECRET)  # the cookie is not the secret itself
    assert client.get(path).status_code == 401
    client.cookies.clear()
    assert client.post("/admin/api/invites", json={"count": 1}).status_code == 401
