"""Reliability of the study server under load, across a SIGKILL, and on PostgreSQL.

50 simulated raters answer every trial concurrently (practice, 20 scored, attention checks:
24 answers each) against the real server process on a loopback port. Afterwards every
acknowledged rating must be in the database exactly once. The submit latency is reported
(test-artifacts/human_study/load_*.json), not asserted: machines here are shared and noisy;
``python -m eval.bench study`` is the benchmark.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from human_study_support import ROOT, make_study, running_server, start_server, stop_server

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is needed to make the study videos")

RATERS, TRIALS = 50, 20
ARTIFACTS = ROOT / "test-artifacts" / "human_study"


@pytest.fixture(scope="module")
def study_file(tmp_path_factory) -> Path:
    return make_study(tmp_path_factory.mktemp("hsload"), trials_per_rater=TRIALS, practice_trials=2, attention=2,
                      min_watch_fraction=0)  # simulated raters answer at once


def _answers(study_file) -> int:
    from human_study.study import load_study

    s = load_study(study_file)
    return s.practice_trials + s.trials_per_rater + s.attention.count


def _check(db_url: str, report, answers: int) -> dict:
    from human_study.db import make_engine
    from human_study.loadtest import verify_acks

    engine = make_engine(db_url)
    try:
        check = verify_acks(engine, report)
    finally:
        engine.dispose()
    assert report.errors == [], report.errors[:5]
    assert check["missing"] == 0 and check["duplicated"] == 0 and check["mismatched"] == 0, check
    assert check["acknowledged"] == RATERS * answers == check["stored"], check
    assert report.finished == RATERS
    return check


def _save(name: str, data: dict) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{name}.json").write_text(json.dumps(data, indent=2))
    print(f"\n{name}: {json.dumps(data)}")


def _load(study_file, db_url: str, log: Path, name: str) -> None:
    from human_study.loadtest import run_load

    answers = _answers(study_file)
    with running_server(study_file, db_url, log) as (url, _proc):
        report = run_load(url, raters=RATERS, trials=answers, concurrency=RATERS, timeout_s=240)
    check = _check(db_url, report, answers)
    _save(name, {"summary": report.summary(), "database": check})


@pytest.mark.timeout(300)
def test_load_sqlite(study_file, tmp_path):
    _load(study_file, f"sqlite:///{tmp_path}/ratings.db", tmp_path / "server.log", "load_sqlite")


@pytest.mark.timeout(300)
def test_sigkill_mid_load_loses_no_acknowledged_rating(study_file, tmp_path):
    """SIGKILL while 50 raters submit; restart on the same database and port. The simulated raters
    retry what was in flight (as the page does) and carry on from where the server says they are."""
    from human_study.loadtest import LoadReport, free_port, run_load

    db_url = f"sqlite:///{tmp_path}/ratings.db"
    answers = _answers(study_file)
    port = free_port()
    log = tmp_path / "server.log"
    proc = start_server(study_file, db_url, port, log)
    report = LoadReport()
    worker = threading.Thread(target=run_load, args=(f"http://127.0.0.1:{port}",),
                              kwargs=dict(raters=RATERS, trials=answers, concurrency=RATERS, timeout_s=240,
                                          report=report))
    worker.start()
    try:
        deadline = time.monotonic() + 120
        while len(report.acks) < RATERS * answers // 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        acked_before = len({(t, tr) for t, tr, _ in report.acks})
        assert 0 < acked_before < RATERS * answers, "the kill must land mid-load"
        stop_server(proc, signal.SIGKILL)
        assert proc.returncode == -signal.SIGKILL
        # what the server acknowledged before dying is all on disk
        from human_study.db import make_engine
        from human_study.loadtest import LoadReport as _R, verify_acks

        snapshot = _R(acks=list(report.acks), tokens=list(report.tokens))
        engine = make_engine(db_url)
        mid = verify_acks(engine, snapshot)
        engine.dispose()
        assert mid["missing"] == 0 and mid["duplicated"] == 0, mid
        time.sleep(1.0)
        proc = start_server(study_file, db_url, port, log)
        worker.join(timeout=240)
        assert not worker.is_alive()
    finally:
        stop_server(proc)
    check = _check(db_url, report, answers)
    assert report.retries > 0  # requests did hit the dead server and were retried
    _save("crash_sqlite", {"acknowledged_before_kill": acked_before, "summary": report.summary(), "database": check,
                           "just_after_kill": mid})


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server on a loopback port, started by the test."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; `make test` installs it)")
    pytest.importorskip("psycopg", reason="the [postgres] extra (psycopg) is not installed")
    from human_study.loadtest import free_port

    as_root = os.geteuid() == 0
    run_as = ["runuser", "-u", "postgres", "--"] if as_root else []
    data = Path(tempfile.mkdtemp(prefix="hs-pg-"))
    if as_root:
        shutil.chown(data, "postgres")
    port = free_port()
    try:
        subprocess.run(run_as + [str(bindir / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "hs",
                                 "--no-sync", "-E", "UTF8"], check=True, capture_output=True)
        subprocess.run(run_as + [str(bindir / "pg_ctl"), "-D", str(data / "db"), "-l", str(data / "log"), "-w",
                                 "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c max_connections=100",
                                 "start"], check=True, capture_output=True)
    except (subprocess.CalledProcessError, FileNotFoundError) as err:
        shutil.rmtree(data, ignore_errors=True)
        detail = getattr(err, "stderr", b"") or b""
        pytest.skip(f"could not start a PostgreSQL server here: {detail.decode(errors='replace')[-300:] or err}")
    try:
        yield f"postgresql://hs@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(run_as + [str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.timeout(300)
def test_load_postgres(study_file, postgres_url, tmp_path):
    _load(study_file, postgres_url, tmp_path / "server.log", "load_postgres")
