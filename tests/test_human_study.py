"""The human-study service: study files, balanced assignment, storage and migrations, the rater
and admin API (idempotency, isolation, blinding, media confinement, malformed requests)."""
from __future__ import annotations

import random
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from human_study_support import ROOT, SECRET, make_results, make_study, study_client
from human_study_support import answer as _answer
from human_study_support import join as _join

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is needed to make the study videos")

METHODS = ("ground_truth", "lipsync3d", "personalized_2d", "frozen")


@pytest.fixture(scope="module")
def study_file(tmp_path_factory) -> Path:
    return make_study(tmp_path_factory.mktemp("hs"), trials_per_rater=12, practice_trials=2, attention=2,
                      min_watch_fraction=0)  # these tests answer at once; the viewing time has its own tests


@pytest.fixture()
def client(study_file, tmp_path):
    with study_client(study_file, tmp_path / "r.db") as c:
        yield c


# ----- study files -------------------------------------------------------------------------------

def test_create_from_results_blinds_media_and_makes_attention_copies(study_file):
    from human_study.study import load_study

    study = load_study(study_file)
    assert set(study.methods) == set(METHODS)
    assert study.pairs == (("lipsync3d", "ground_truth"), ("lipsync3d", "personalized_2d"), ("lipsync3d", "frozen"))
    media = sorted((study.root / "media").iterdir())
    for f in media:  # opaque names, no method name in file names or container tags
        assert not any(m in f.name for m in METHODS)
        tags = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format_tags:stream_tags", "-of", "json",
                               str(f)], capture_output=True, text=True).stdout
        assert not any(m in tags for m in METHODS), tags
    # the attention copy: same duration and sound, picture held for the first 0.5 s
    att = study.attention.clips["c1"]
    assert att["reference"] == study.clip("c1").videos["ground_truth"]
    from lipsync.media import probe

    ref, shifted = probe(study.media_path(att["reference"])), probe(study.media_path(att["shifted"]))
    assert abs(ref.duration - shifted.duration) < 0.1


def test_create_errors_are_one_sentence(tmp_path):
    from human_study.create import create_study
    from human_study.study import StudyError

    with pytest.raises(StudyError, match="no results.json"):
        create_study(tmp_path, tmp_path / "s" / "study.yaml")
    results = make_results(tmp_path / "r", methods=("lipsync3d", "frozen"), clips=("c1",))
    with pytest.raises(StudyError, match="ground_truth"):
        create_study(results, tmp_path / "s" / "study.yaml")
    with pytest.raises(StudyError, match="no videos for nope"):
        create_study(results, tmp_path / "s" / "study.yaml", methods=["lipsync3d", "nope"], attention=0)
    assert not (tmp_path / "s" / "study.yaml").exists()


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(methods="x"), "'methods' must be a list"),
    (lambda d: d["clips"][0]["videos"].update(lipsync3d="../outside.mp4"), "without '..'"),
    (lambda d: d["clips"][0]["videos"].update(lipsync3d="/etc/passwd.mp4"), "relative to the study folder"),
    (lambda d: d["clips"][0]["videos"].update(lipsync3d="media/missing.mp4"), "does not exist"),
    (lambda d: d["clips"][0]["videos"].update(nope="media/x.mp4"), "not in 'methods'"),
    (lambda d: d["questions"][0].update(type="likert"), "use one of paired, mos"),
    (lambda d: d["questions"][0].update(axis="beauty"), "use one of realism"),
    (lambda d: d.update(trials_per_rater=10_000), "trials_per_rater"),
    (lambda d: d.update(pairs=[["lipsync3d", "lipsync3d"]]), "two different methods"),
    (lambda d: d.update(colour="blue"), "unknown setting"),
    (lambda d: d["attention_checks"].update(count=3, clips={}), "no attention clips"),
])
def test_study_validation(study_file, tmp_path, edit, message):
    from human_study.study import StudyError, load_study

    raw = yaml.safe_load(study_file.read_text())
    edit(raw)
    bad = study_file.parent / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(StudyError, match=message) as err:
        load_study(bad)
    assert "\n" not in str(err.value)


def test_yaml_syntax_error(tmp_path):
    from human_study.study import StudyError, load_study

    (tmp_path / "s.yaml").write_text("methods: [a, b\nclips: {")
    with pytest.raises(StudyError, match="not valid YAML"):
        load_study(tmp_path / "s.yaml")


# ----- assignment ----------------------------------------------------------------------------------

def test_assignment_is_balanced_across_raters_and_sides(study_file):
    from human_study.assign import Tally, assign_trials
    from human_study.study import load_study

    study = load_study(study_file)
    universe = study.item_universe()
    tally, rng = Tally(), random.Random(0)
    n_raters = 42
    per_rater = [assign_trials(study, tally, random.Random(rng.getrandbits(32))) for _ in range(n_raters)]
    for specs in per_rater:
        assert [s.position for s in specs] == list(range(len(specs)))
        assert all(s.is_practice for s in specs[:study.practice_trials])
        scored = [s for s in specs if not s.is_practice and not s.is_attention]
        assert len(scored) == study.trials_per_rater
        assert len({(s.question_id, s.clip_id, *sorted((s.method_left, s.method_right or ""))) for s in scored}) == len(scored)
        att = [s for s in specs if s.is_attention]
        assert len(att) == 2 and all(s.position > study.practice_trials for s in att)
        assert all(s.expected == ("left" if s.method_left == "ground_truth" else "right") for s in att)
    # every item shown equally often, to within one, as raters arrive
    counts = Counter(tally.items[it] for it in universe)
    assert max(tally.items[it] for it in universe) - min(tally.items[it] for it in universe) <= 1, counts
    # left/right balanced per pair to within one
    for pair, (a_left, b_left) in tally.first_left.items():
        assert abs(a_left - b_left) <= 1, (pair, a_left, b_left)
    # orders differ between raters
    assert len({tuple((s.question_id, s.clip_id) for s in specs) for specs in per_rater}) == n_raters


# ----- storage and migrations ----------------------------------------------------------------------

def test_migration_from_first_schema_keeps_ratings(tmp_path):
    """A database made by revision 0001 (the first release) upgrades in place with its ratings."""
    from sqlalchemy import text

    from human_study.db import current_revision, make_engine, open_database, ratings_frame, upgrade

    url = f"sqlite:///{tmp_path}/old.db"
    engine = make_engine(url)
    upgrade(engine, "0001")
    assert current_revision(engine) == "0001"
    with engine.begin() as c:
        c.execute(text("INSERT INTO studies (id, title, design_hash, created_at) VALUES (1, 't', 'h', '2026-01-01')"))
        c.execute(text("INSERT INTO raters (id, study_id, token, created_at) VALUES (1, 1, 'tok', '2026-01-01')"))
        c.execute(text("INSERT INTO trials (id, rater_id, position, kind, question_id, axis, clip_id, method_left, "
                       "method_right, media_left, media_right, is_practice, is_attention) VALUES "
                       "(1, 1, 0, 'paired', 'q', 'realism', 'c', 'a', 'b', 'm/a.mp4', 'm/b.mp4', 0, 0)"))
        c.execute(text("INSERT INTO ratings (id, trial_id, rater_id, submit_id, choice, chosen_method, response_ms, "
                       "created_at, app_version) VALUES (1, 1, 1, 'sub1', 'left', 'a', 900, '2026-01-01', 'v0')"))
    engine.dispose()
    engine = open_database(url)
    assert current_revision(engine) == "0003"
    df = ratings_frame(engine)
    assert len(df) == 1 and df.loc[0, "chosen_method"] == "a" and df.loc[0, "response_ms"] == 900
    assert df["plays"].isna().all() and df["viewed_ms"].isna().all() and df["first_shown_at"].isna().all()


def test_schema_matches_models(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from human_study.db import Base, open_database

    engine = open_database(f"sqlite:///{tmp_path}/m.db")
    with engine.connect() as c:
        assert compare_metadata(MigrationContext.configure(c), Base.metadata) == []


def test_database_of_another_study_is_refused(study_file, tmp_path):
    from human_study.db import open_database
    from human_study.study import StudyError, load_study

    study = load_study(study_file)
    url = f"sqlite:///{tmp_path}/r.db"
    open_database(url, study).dispose()
    raw = yaml.safe_load(study_file.read_text())
    raw["trials_per_rater"] = 5
    other = study_file.parent / "other.yaml"
    other.write_text(yaml.safe_dump(raw))
    with pytest.raises(StudyError, match="another study design"):
        open_database(url, load_study(other))


# ----- rater API -------------------------------------------------------------------------------------

def test_rater_flow_and_idempotent_submissions(client):
    token = _join(client)
    state = client.get(f"/api/r/{token}/state").json()
    assert state["phase"] == "practice" and state["progress"] == {"done": 0, "total": 14, "practice_done": 0,
                                                                  "practice_total": 2}
    r, body = _answer(client, token, state)
    assert r.status_code == 200 and not r.json()["duplicate"]
    again = client.post(f"/api/r/{token}/rate", json=body)  # a retried request
    assert again.status_code == 200 and again.json()["duplicate"] and again.json()["rating_id"] == r.json()["rating_id"]
    other_choice = dict(body, submit_id="another-submission", choice=state["trial"]["choices"][1])
    assert client.post(f"/api/r/{token}/rate", json=other_choice).status_code == 409
    # answering out of order is refused
    later = dict(body, trial_id=body["trial_id"] + 3, submit_id="later-trial-1")
    assert client.post(f"/api/r/{token}/rate", json=later).status_code == 409
    # invalid choice for the trial type
    st = client.get(f"/api/r/{token}/state").json()
    bad = {"trial_id": st["trial"]["id"], "choice": "7", "submit_id": "badchoice1", "response_ms": 1}
    assert client.post(f"/api/r/{token}/rate", json=bad).status_code == 400
    # finish, then the state says done and the database holds one rating per trial
    while st["trial"] is not None:
        r, _ = _answer(client, token, st)
        assert r.status_code == 200
        st = r.json()["state"]
    assert st["phase"] == "done" and st["progress"]["done"] == 14
    from human_study.db import ratings_frame

    df = ratings_frame(client.engine)
    assert len(df) == 16 and df["trial_id"].is_unique
    assert df["app_version"].str.startswith("human_study").all()
    att = df[df["is_attention"]]
    assert len(att) == 2 and att["attention_passed"].notna().all()


def test_trials_never_reveal_methods(client):
    import json

    token = _join(client)
    st = client.get(f"/api/r/{token}/state")
    text, state = st.text, st.json()
    while True:
        assert not any(m in text for m in METHODS) and ".mp4" not in text
        assert "attention" not in json.dumps(state["trial"])  # attention checks look like any trial
        if state["trial"] is None:
            break
        for url in state["trial"]["media"]:
            m = client.get(url)
            assert m.status_code == 200 and m.headers["content-type"] == "video/mp4"
            assert "content-disposition" not in m.headers
        r, _ = _answer(client, token, state)
        text, state = r.text, r.json()["state"]  # the answer carries the next state


# ----- admin -------------------------------------------------------------------------------------------

def test_admin_login_progress_invites_and_exports(client):
    import io

    import pandas as pd

    assert client.post("/admin/login", json={"secret": "wrong"}).status_code == 401
    r = client.post("/admin/login", json={"secret": SECRET})
    assert r.status_code == 200 and "httponly" in r.headers["set-cookie"].lower()
    inv = client.post("/admin/api/invites", json={"count": 2, "label": "lab-A"}).json()["links"]
    assert len(inv) == 2 and all("/r/" in u for u in inv)
    token = inv[0].rsplit("/", 1)[1]
    for _ in range(5):
        assert _answer(client, token)[0].status_code == 200
    p = client.get("/admin/api/progress").json()
    assert p["raters"] == 2 and p["ratings"] == 5
    csv = pd.read_csv(io.StringIO(client.get("/admin/export.csv").text))
    pq = pd.read_parquet(io.BytesIO(client.get("/admin/export.parquet").content))
    assert len(csv) == len(pq) == 5 and (csv["rater_label"] == "lab-A").all()
    assert list(csv["rating_id"]) == list(pq["rating_id"])
    import zipfile

    z = client.get("/admin/analysis.zip")
    assert z.status_code == 200
    names = zipfile.ZipFile(io.BytesIO(z.content)).namelist()
    assert {"report.md", "preferences.csv", "mos.csv", "attention.csv"} <= set(names)
    client.post("/admin/logout")
    client.cookies.clear()
    assert client.get("/admin/api/progress").status_code == 401


def test_closed_enrollment_and_full_study(study_file, tmp_path):
    from fastapi.testclient import TestClient

    from human_study.db import open_database
    from human_study.server import build_app
    from human_study.study import load_study

    raw = yaml.safe_load(study_file.read_text())
    raw.update(open_enrollment=False)
    (study_file.parent / "closed.yaml").write_text(yaml.safe_dump(raw))
    study = load_study(study_file.parent / "closed.yaml")
    engine = open_database(f"sqlite:///{tmp_path}/c.db", study)
    with TestClient(build_app(study, engine, SECRET)) as c:
        assert c.post("/api/join").status_code == 403
    raw.update(open_enrollment=True, max_raters=1)
    (study_file.parent / "full.yaml").write_text(yaml.safe_dump(raw))
    study = load_study(study_file.parent / "full.yaml")
    engine = open_database(f"sqlite:///{tmp_path}/f.db", study)
    with TestClient(build_app(study, engine, SECRET)) as c:
        assert c.post("/api/join").status_code == 200
        r = c.post("/api/join")
        assert r.status_code == 403 and "all the raters" in r.json()["detail"]


# ----- command line ----------------------------------------------------------------------------------

def test_cli_errors_are_one_line(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "human_study", *args], capture_output=True, text=True, cwd=ROOT)

    r = run("serve", "--study", str(tmp_path / "none.yaml"))
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    r = run("create", "--from", str(tmp_path), "--out", str(tmp_path / "s.yaml"))
    assert r.returncode == 2 and "results.json" in r.stderr and "Traceback" not in r.stderr
    r = run("export", "--db", f"sqlite:///{tmp_path}/x.db", "--out", str(tmp_path / "x.txt"))
    assert r.returncode == 2 and ".csv or .parquet" in r.stderr
    r = run("loadtest", "--url", "http://192.0.2.1:7870", "--raters", "1")
    assert r.returncode == 2 and "loopback" in r.stderr


def test_serve_refuses_a_busy_port_before_printing_links(study_file):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "human_study", "serve", "--study", str(study_file), "--port", str(port),
                            "--db", f"sqlite:///{study_file.parent}/busy.db"], capture_output=True, text=True,
                           cwd=ROOT, timeout=60)
    assert r.returncode == 2 and f"Cannot listen on 127.0.0.1:{port}" in r.stderr and "Traceback" not in r.stderr
    assert "raters:" not in r.stdout


def test_cli_export_and_analyze(client, tmp_path):
    import pandas as pd

    from human_study.__main__ import main

    for _ in range(3):
        token = _join(client)
        state = client.get(f"/api/r/{token}/state").json()
        while state["trial"] is not None:
            r, _ = _answer(client, token, state, choice=random.Random(state["trial"]["id"]).choice(state["trial"]["choices"]))
            state = r.json()["state"]
    db = str(client.engine.url)
    assert main(["export", "--db", db, "--out", str(tmp_path / "r.csv")]) == 0
    assert main(["export", "--db", db, "--out", str(tmp_path / "r.parquet")]) == 0
    assert len(pd.read_csv(tmp_path / "r.csv")) == len(pd.read_parquet(tmp_path / "r.parquet")) == 3 * 16
    assert main(["analyze", "--db", db, "--out", str(tmp_path / "an"), "--exclude-flagged"]) == 0
    for name in ("report.md", "preferences.csv", "preferences.md", "mos.csv", "bradley_terry.csv", "agreement.csv",
                 "attention.csv", "preferences.png", "mos.png", "bradley_terry.png"):
        assert (tmp_path / "an" / name).stat().st_size > 0, name
    assert main(["analyze", "--db", f"sqlite:///{tmp_path}/none.db", "--out", str(tmp_path / "an2")]) == 2
    assert not (tmp_path / "none.db").exists()
    from human_study.db import open_database

    open_database(f"sqlite:///{tmp_path}/empty.db").dispose()
    assert main(["analyze", "--db", f"sqlite:///{tmp_path}/empty.db", "--out", str(tmp_path / "an2")]) == 2
    assert not (tmp_path / "an2").exists()
