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
