"""Helpers for the human-study tests: a small eval-results folder of real mp4 files, a study made
from it, and the study server started as a separate process on a free loopback port."""
from __future__ import annotations

import signal
import subprocess
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECRET = "test-admin-secret-0123456789"


def make_results(out: Path, **kw) -> Path:
    """An eval.run-like results folder of real mp4 files (see human_study.loadtest.synthetic_results)."""
    from human_study.loadtest import synthetic_results

    return synthetic_results(out, **kw)


def make_study(tmp: Path, **kw) -> Path:
    from human_study.create import create_study

    results = make_results(tmp / "results")
    return create_study(results, tmp / "study" / "study.yaml", **kw)


@contextmanager
def study_client(study_file: Path, db_path: Path, **build_kw):
    """A FastAPI TestClient on the study's app over a fresh SQLite database; ``client.engine`` is it."""
    from fastapi.testclient import TestClient

    from human_study.db import open_database
    from human_study.server import build_app
    from human_study.study import load_study

    study = load_study(study_file)
    engine = open_database(f"sqlite:///{db_path}", study)
    try:
        with TestClient(build_app(study, engine, SECRET, **build_kw)) as c:
            c.engine = engine
            yield c
    finally:
        engine.dispose()


def join(client, **kw) -> str:
    """A new rater through the open link; returns the token."""
    r = client.post("/api/join", **kw)
    assert r.status_code == 200, r.text
    return r.json()["token"]


def answer(client, token, state=None, submit_id=None, choice=None, plays=1):
    """Answer the rater's current trial; returns (response, body sent)."""
    state = state or client.get(f"/api/r/{token}/state").json()
    t = state["trial"]
    body = {"trial_id": t["id"], "choice": choice or t["choices"][0], "submit_id": submit_id or f"s{t['id']:08d}x",
            "response_ms": 1234, "plays": plays}
    return client.post(f"/api/r/{token}/rate", json=body), body


def free_port() -> int:
    from human_study.loadtest import free_port as _free

    return _free()


def start_server(study: Path, db_url: str, port: int, log: Path) -> subprocess.Popen:
    from human_study.loadtest import start_server as _start

    secret_file = study.parent / "secret.txt"
    secret_file.write_text(SECRET)
    return _start(study, db_url, port, log, secret_file)


def stop_server(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    from human_study.loadtest import stop_server as _stop

    _stop(proc, sig)


@contextmanager
def running_server(study: Path, db_url: str, log: Path):
    port = free_port()
    proc = start_server(study, db_url, port, log)
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        stop_server(proc)
