"""Simulated raters against a running study server, on loopback only.

Each simulated rater does what the rater page does: join through the open link, fetch its
state, answer the current trial with a fresh ``submit_id``, and on a network error or a 5xx
retry the *same* submission until it is acknowledged. A share of answers is sent twice (a
double click) to exercise de-duplication. Every acknowledgement is recorded, so a test can
check afterwards that each acknowledged rating is in the database exactly once, also across a
server crash and restart.
"""
from __future__ import annotations

import ipaddress
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlparse

from .study import StudyError


@dataclass
class LoadReport:
    """What the simulated raters saw.

    Members:
        acks: ``(token, trial_id, rating_id)`` of every acknowledged submission (duplicates included).
        latencies_ms: submit round-trip times of acknowledged first submissions, milliseconds.
        tokens: the raters' tokens.
        retries: submissions re-sent after a network error or a 5xx answer.
        double_clicks: answers deliberately sent twice.
        errors: unexpected answers (4xx other than the expected, or give-ups), as text.
        finished: raters who reached the end.
        wall_s: seconds from the first join to the last answer.
    """

    acks: list = field(default_factory=list)
    latencies_ms: list = field(default_factory=list)
    tokens: list = field(default_factory=list)
    retries: int = 0
    double_clicks: int = 0
    errors: list = field(default_factory=list)
    finished: int = 0
    wall_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def summary(self) -> dict:
        import numpy as np

        lat = np.asarray(self.latencies_ms, dtype=float)
        pct = (lambda q: round(float(np.percentile(lat, q)), 1)) if lat.size else (lambda q: None)
        return {"raters": len(self.tokens), "finished": self.finished,
                "acknowledged": len({(t, tr) for t, tr, _ in self.acks}), "double_clicks": self.double_clicks,
                "retries": self.retries, "errors": len(self.errors), "first_errors": self.errors[:5],
                "submit_latency_ms": {"p50": pct(50), "p95": pct(95), "max": pct(100)},
                "wall_s": round(self.wall_s, 2),
                "ratings_per_s": round(len(self.latencies_ms) / self.wall_s, 1) if self.wall_s else None}


def _check_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    try:
        ok = ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = host == "localhost"
    if not ok:
        raise StudyError(f"The load test only runs against loopback addresses (127.0.0.1, ::1), not {host!r}.")


def run_load(url: str, *, raters: int = 50, trials: int = 20, concurrency: int = 50, seed: int = 0,
             double_click_rate: float = 0.1, timeout_s: float = 300.0, stop: threading.Event | None = None,
             admin_secret: str | None = None, report: LoadReport | None = None) -> LoadReport:
    """Run ``raters`` simulated raters answering ``trials`` trials each (practice included
    first); returns the report. Retries through connection errors until ``timeout_s``."""
    import httpx

    _check_loopback(url)
    url = url.rstrip("/")
    report = report or LoadReport()
    deadline = time.monotonic() + timeout_s
    stop = stop or threading.Event()
    limits = httpx.Limits(max_connections=concurrency + 10, max_keepalive_connections=concurrency + 10)
    client = httpx.Client(base_url=url, timeout=30.0, limits=limits)

    def call(method: str, path: str, **kw):
        """The request, retried through connection errors and 5xx; None when the deadline passes."""
        first = True
        while time.monotonic() < deadline and not stop.is_set():
            try:
                r = client.request(method, path, **kw)
                if r.status_code < 500:
                    return r
            except httpx.TransportError:
                pass
            if not first:
                with report.lock:
                    report.retries += 1
            first = False
            time.sleep(0.2)
        return None

    def one_rater(k: int) -> None:
        rng = random.Random(seed * 100003 + k)
        r = call("POST", "/api/join")
        if r is None or r.status_code != 200:
            report.errors.append(f"join: {None if r is None else r.text[:200]}")
            return
        token = r.json()["token"]
        with report.lock:
            report.tokens.append(token)
        r = call("GET", f"/api/r/{token}/state")
        if r is None or r.status_code != 200:
            return
        state, answered = r.json(), 0
        while answered < trials and state["trial"] is not None:
            trial = state["trial"]
            choice = rng.choice(trial["choices"])
            body = {"trial_id": trial["id"], "choice": choice, "submit_id": uuid.uuid4().hex,
                    "response_ms": rng.randint(800, 9000), "plays": 1}
            t0 = time.perf_counter()
            resp = call("POST", f"/api/r/{token}/rate", json=body)
            while resp is not None and resp.status_code == 409 and "watch the video" in resp.text:
                time.sleep(0.2)  # the server wants the video played first, as the rater page waits for its end
                t0 = time.perf_counter()
                resp = call("POST", f"/api/r/{token}/rate", json=body)
            dt_ms = (time.perf_counter() - t0) * 1000
            if resp is None:
                report.errors.append(f"gave up on {token[:6]}.. trial {trial['id']}")
                return
            if resp.status_code != 200:
                report.errors.append(f"rate {resp.status_code}: {resp.text[:200]}")
                return
            data = resp.json()
            with report.lock:
                report.acks.append((token, trial["id"], data["rating_id"]))
                report.latencies_ms.append(dt_ms)
            if rng.random() < double_click_rate:  # the same answer again, as a double click sends it
                again = call("POST", f"/api/r/{token}/rate", json=body)
                with report.lock:
                    report.double_clicks += 1
                if again is None or again.status_code != 200 or not again.json().get("duplicate"):
                    report.errors.append(f"double click not de-duplicated: {None if again is None else again.text[:200]}")
                elif again.json()["rating_id"] != data["rating_id"]:
                    report.errors.append("double click got another rating id")
            answered += 1
            state = data.get("state")  # the answer carries the next state, as GET state would
            if state is None:
                return
        with report.lock:
            report.finished += 1

    t0 = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(one_rater, range(raters)))
    finally:
        client.close()
    report.wall_s = time.perf_counter() - t0
    return report


# ----- checking what the database holds against what was acknowledged ----------------------------

def verify_acks(engine, report: LoadReport) -> dict:
    """Compare the acknowledged submissions with the database.

    Returns counts: ``acknowledged`` (distinct rater/trial), ``missing`` (acknowledged but not
    stored), ``duplicated`` (trials with more than one rating, which the schema forbids),
    ``mismatched`` (stored under another rating id than acknowledged), ``unacknowledged``
    (stored but never acknowledged: possible only for a rater abandoned mid-request) and
    ``stored`` (ratings of the simulated raters).
    """
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from .db import Rater, Rating

    tokens = set(report.tokens)
    stored: dict = {}
    with Session(engine) as s:
        for token, trial_id, rating_id in s.execute(
                select(Rater.token, Rating.trial_id, Rating.id).join(Rater, Rating.rater_id == Rater.id)):
            if token in tokens:
                stored.setdefault((token, trial_id), []).append(rating_id)
        dup_trials = s.scalar(select(func.count()).select_from(
            select(Rating.trial_id).group_by(Rating.trial_id).having(func.count() > 1).subquery()))
    acked = {}
    for token, trial_id, rating_id in report.acks:
        acked.setdefault((token, trial_id), set()).add(rating_id)
    return {
        "acknowledged": len(acked),
        "missing": sum(1 for k in acked if k not in stored),
        "duplicated": dup_trials + sum(1 for v in stored.values() if len(v) > 1),
        "mismatched": sum(1 for k, ids in acked.items() if k in stored and set(stored[k]) != ids),
        "unacknowledged": sum(1 for k in stored if k not in acked),
        "stored": sum(len(v) for v in stored.values()),
    }


# ----- a synthetic study and a server process, for tests and the benchmark ------------------------

def synthetic_results(out, *, methods=("ground_truth", "lipsync3d", "personalized_2d", "frozen"),
                      clips=("c1", "c2", "c3"), seconds: float = 1.0):
    """An eval.run-like results folder of real H.264 + AAC files: ``videos/METHOD/CLIP.mp4`` and a
    ``results.json`` listing them; each method has its own picture, each clip its own tone."""
    import json
    import subprocess
    from pathlib import Path

    out = Path(out)
    per_clip: dict = {}
    for i, m in enumerate(methods):
        for j, c in enumerate(clips):
            path = out / "videos" / m / f"{c}.mp4"
            path.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                            f"testsrc2=size=96x96:rate=25:duration={seconds}", "-f", "lavfi", "-i",
                            f"sine=frequency={300 + 100 * j}:duration={seconds}:sample_rate=16000",
                            "-vf", f"hue=h={40 * i}", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                            "-c:a", "aac", "-metadata", f"title={m}", "-shortest", str(path)], check=True)
            per_clip.setdefault(m, {})[c] = {"video": f"videos/{m}/{c}.mp4"}
    (out / "results.json").write_text(json.dumps({"results_version": 1, "per_clip": per_clip}))
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(study, db_url: str, port: int, log, secret_file, extra_args=("--join-rate", "0")):
    """``python -m human_study serve`` in its own process group; returns once /healthz answers.

    ``extra_args``: more ``serve`` options; by default no join limit, since simulated raters all
    join from one address."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import httpx

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "human_study", "serve", "--study", str(study), "--db", db_url,
                             "--port", str(port), "--admin-secret-file", str(secret_file), *extra_args],
                            cwd=Path(__file__).resolve().parent.parent, env=env, stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the study server exited: {Path(log).read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    stop_server(proc)
    raise RuntimeError(f"the study server did not start: {Path(log).read_text()[-2000:]}")


def stop_server(proc, sig=None) -> None:
    """Stop a server from ``start_server`` (SIGTERM, or ``sig``), its whole process group."""
    import os
    import signal
    import subprocess

    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig or signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def bench_study(*, study=None, db_url: str | None = None, raters: int = 50, trials_per_rater: int = 20,
                workdir=None) -> dict:
    """The load benchmark: serve a study (a synthetic one unless ``study`` is given), run
    ``raters`` simulated raters concurrently through every trial, and check the database."""
    import tempfile
    from pathlib import Path

    import shutil

    work = Path(workdir or tempfile.mkdtemp(prefix="hs-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _bench_in(work, study, db_url, raters, trials_per_rater)
    finally:
        if workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def _bench_in(work, study, db_url, raters, trials_per_rater) -> dict:
    import secrets as _secrets

    from .create import create_study
    from .db import make_engine
    from .study import load_study

    if study is None:
        results = synthetic_results(work / "results")
        # simulated raters answer at once: no minimum viewing time (the server's throughput is measured)
        study = create_study(results, work / "study" / "study.yaml", trials_per_rater=trials_per_rater,
                             min_watch_fraction=0)
    st = load_study(study)
    answers = st.practice_trials + st.trials_per_rater + st.attention.count
    db_url = db_url or f"sqlite:///{work / 'bench.db'}"
    secret_file = work / "secret.txt"
    secret_file.write_text(_secrets.token_urlsafe(24))
    port = free_port()
    proc = start_server(study, db_url, port, work / "server.log", secret_file)
    try:
        report = run_load(f"http://127.0.0.1:{port}", raters=raters, trials=answers, concurrency=raters)
    finally:
        stop_server(proc)
    engine = make_engine(db_url)
    try:
        check = verify_acks(engine, report)
    finally:
        engine.dispose()
    return {"load": report.summary(), "database": check, "answers_per_rater": answers,
            "db": db_url.split(":", 1)[0], "study": str(study)}
