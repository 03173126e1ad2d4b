"""The evaluation run: protocol split, registries, claims, and a tiny end-to-end run on the fixture."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from lipsync.common import LipsyncError


def test_split_points_cut_the_test_part_into_clips():
    from eval.protocol import split_points

    split, ranges = split_points(1000, 25.0, 0.2, 2.0)
    assert split == 800
    assert ranges[0][0] == 800 and ranges[-1][1] == 1000
    assert all(a < b for a, b in ranges) and all(r[1] == s[0] for r, s in zip(ranges, ranges[1:]))
    assert len(ranges) == 4  # 200 frames in clips of ~50
    _, one = split_points(75, 25.0, 0.2, 5.0)
    assert one == [(60, 75)]
    with pytest.raises(LipsyncError, match="between 0 and 1"):
        split_points(100, 25.0, 1.5, 2.0)


def test_frame_schedule_follows_then_ping_pongs():
    from lipsync.synthesis.schedule import ping_pong as frame_schedule

    assert frame_schedule(4, 10).tolist() == [0, 1, 2, 3]
    assert frame_schedule(7, 4).tolist() == [0, 1, 2, 3, 2, 1, 0]


def test_registries_reject_unknown_names():
    from eval.methods import available_methods, get_method
    from eval.metrics import get_metrics

    assert {"ground_truth", "lipsync3d", "frozen", "no_autoregression", "no_lighting_norm"} <= set(available_methods())
    with pytest.raises(LipsyncError, match="unknown method 'wav3lip'"):
        get_method("wav3lip")
    with pytest.raises(LipsyncError, match="psnrr"):
        get_metrics(["psnrr"])


def test_content_key_changes_with_file_content(tmp_path):
    from lipsync.files import content_key

    f = tmp_path / "a.bin"
    f.write_bytes(b"one")
    k1 = content_key(f, {"x": 1})
    assert content_key(f, {"x": 1}) == k1
    assert content_key(f, {"x": 2}) != k1
    f.write_bytes(b"two")
    assert content_key(f, {"x": 1}) != k1


def _doc(per_clip: dict) -> dict:
    return {"per_clip": per_clip, "config": {"seed": 0},
            "metrics": {"lmd": {"better": "lower"}, "mouth_corr": {"better": "higher"}}}


def test_claims_are_decided_by_paired_intervals():
    from eval.report import check_claims

    rng = np.random.default_rng(1)
    clips = [f"c{i}" for i in range(12)]
    good = {c: {"lmd": 1.0 + 0.05 * rng.standard_normal(), "mouth_corr": 0.8 + 0.02 * rng.standard_normal()} for c in clips}
    bad = {c: {"lmd": 2.0 + 0.05 * rng.standard_normal(), "mouth_corr": 0.1 + 0.02 * rng.standard_normal()} for c in clips}
    same = {c: dict(v) for c, v in good.items()}
    claims = {c["baseline"]: c for c in check_claims(_doc({"lipsync3d": good, "frozen": bad}))}
    assert claims["frozen"]["verdict"] == "holds"
    reverse = {c["baseline"]: c for c in check_claims(_doc({"lipsync3d": bad, "frozen": good}))}
    assert reverse["frozen"]["verdict"] == "does not hold"
    tie = [c for c in check_claims(_doc({"lipsync3d": good, "personalized_2d": same})) if c["baseline"] == "personalized_2d"]
    assert tie[0]["verdict"] == "inconclusive"
    missing = {c["baseline"]: c for c in check_claims(_doc({"lipsync3d": good}))}
    assert missing["frozen"]["verdict"] == "not tested"


@pytest.mark.parametrize("changes", [
    {},
    {"methods": ["ground_truth", "lipsync3d"], "metrics": ["teeth", "lmd"], "cross_audio_test": False, "seed": 3},
    {"mouth_motion": 0.8},
    {"test_fraction": 0.3, "clip_seconds": 4.0, "max_test_clips": 2, "cross_audio": ["a.wav", "b.wav"], "preset": "tiny"},
    {"test_clips": "clips", "test_fraction": 0.3},  # with separate test clips the fraction is not used
])
def test_the_reports_command_repeats_the_run(changes):
    """The report's "Reproduce" command, parsed by eval.run's own command line, gives back every
    setting of the run that changes what is measured."""
    import shlex

    from eval.config import DEFAULT_METHODS, EvalConfig
    from eval.metrics import available_metrics
    from eval.report import reproduce_command
    from eval.run import build_parser

    cfg = {"video": "talk.mp4", "test_clips": None, "methods": list(DEFAULT_METHODS), "metrics": available_metrics(),
           "preset": "quick", "seed": 0, "test_fraction": 0.2, "clip_seconds": 5.0, "max_test_clips": None,
           "cross_audio": None, "cross_audio_test": True, "mouth_motion": 1.0, **changes}
    words = shlex.split(reproduce_command(cfg))
    assert words[:3] == ["python", "-m", "eval.run"]
    got = EvalConfig.from_args(build_parser().parse_args(words[3:]))
    assert str(got.video) == cfg["video"] and (str(got.test_clips) if got.test_clips else None) == cfg["test_clips"]
    assert list(got.methods or DEFAULT_METHODS) == cfg["methods"]
    assert list(got.metrics or available_metrics()) == cfg["metrics"]
    assert (got.preset, got.seed, got.max_test_clips, got.cross_audio_test) == \
        (cfg["preset"], cfg["seed"], cfg["max_test_clips"], cfg["cross_audio_test"])
    assert list(got.cross_audio or []) == list(cfg["cross_audio"] or [])
    assert got.mouth_motion == cfg["mouth_motion"]
    if not cfg["test_clips"]:
        assert (got.test_fraction, got.clip_seconds) == (cfg["test_fraction"], cfg["clip_seconds"])
    if not changes:
        assert reproduce_command(cfg) == "python -m eval.run --video talk.mp4 --preset quick --out RESULTS"


def test_bad_inputs_give_one_sentence(tmp_path, capsys):
    from eval.run import main

    assert main(["--video", str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "eval.run: error:" in err and "Traceback" not in err
    (tmp_path / "file").write_text("x")
    assert main(["--video", str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "file"), "--quiet"]) == 2
    assert main(["--video", "x.mp4", "--out", str(tmp_path / "r2"), "--methods", "nope", "--quiet"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(["--video", "x.mp4", "--out", str(tmp_path / "r3"), "--mouth-motion", "5", "--quiet"]) == 2
    assert "mouth motion must be between" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, grid_clip):
    """The whole suite on the 3-second fixture: tiny training, three methods, cross-audio by TTS."""
    from eval.run import main

    out = tmp_path_factory.mktemp("eval") / "results"
    args = ["--video", str(grid_clip), "--preset", "tiny", "--methods", "ground_truth", "frozen", "lipsync3d",
            "--out", str(out), "--quiet"]
    assert main(args) == 0
    return out, args


def test_tiny_run_writes_every_output(tiny_run):
    out, _ = tiny_run
    for name in ("results.json", "results.csv", "report.md", "side_by_side.mp4", "plots/metrics.png",
                 "plots/mouth_opening.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    doc = json.loads((out / "results.json").read_text())
    assert set(doc["results"]) == {"ground_truth", "frozen", "lipsync3d"}
    for method, row in doc["results"].items():
        for metric, entry in row.items():
            assert ("value" in entry and "ci95" in entry) or "unavailable" in entry, (method, metric)
    # weights that cannot be had here are reported as unavailable with the reason, never as numbers
    for name in ("lpips", "lse_d", "lse_c", "fid"):
        if name in doc["results"]["lipsync3d"]:
            entry = doc["results"]["lipsync3d"][name]
            assert "unavailable" in entry and len(entry["unavailable"]) > 10
    # 3 s of training footage are too few for a sync expert: the sync metrics say so in one sentence
    for name in ("sync_offset", "sync_conf"):
        assert "no sync expert could be trained" in doc["results"]["lipsync3d"][name]["unavailable"]
    assert not (out / "plots/sync_curve.png").exists()
    for name in ("teeth", "articulation", "opening"):
        assert name in doc["results"]["lipsync3d"]
    for key in ("config", "versions", "git_commit", "timings_s", "protocol", "claims"):
        assert key in doc
    assert doc["config"]["seed"] == 0 and doc["versions"]["lipsync"]
    gt = doc["results"]["ground_truth"]
    assert gt["psnr"]["value"] > 38  # one H.264 encode at crf 12
    assert gt["psnr"]["value"] > doc["results"]["frozen"]["psnr"]["value"]
    assert gt["lmd"]["value"] < doc["results"]["frozen"]["lmd"]["value"]
    assert doc["cross_audio"] and "psnr" not in doc["cross_audio"]["lipsync3d"]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {r["method"] for r in rows} == {"ground_truth", "frozen", "lipsync3d"}
    report = (out / "report.md").read_text()
    assert "| method |" in report and "unavailable" in report and "claims" in report
    assert "--methods ground_truth frozen lipsync3d --preset tiny --out RESULTS`" in report


def test_tiny_run_reuses_its_work(tiny_run):
    from eval.run import main

    out, args = tiny_run
    before = json.loads((out / "results.json").read_text())
    assert main(args) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["methods"]["lipsync3d"]["cached"] is True
    assert all(v["render"]["cached"] for per in doc["per_clip"].values() for v in per.values())
    assert doc["results"] == before["results"]


def test_a_run_with_more_mouth_motion_reuses_the_models_and_renders_again(tiny_run, tmp_path):
    """``--mouth-motion`` changes the videos, not the training: the model is reused, every
    lipsync3d video is made again and differs (the ground truth's stay cached), and the report's
    command carries the setting (that the motion scales the mouth is checked in test_synthesis)."""
    import shutil

    from eval.run import main

    out, _ = tiny_run
    before = json.loads((out / "results.json").read_text())
    again = tmp_path / "results"
    shutil.copytree(out, again)
    args = ["--video", before["config"]["video"], "--preset", "tiny", "--methods", "ground_truth", "lipsync3d",
            "--metrics", "articulation", "--no-cross-audio", "--no-video", "--mouth-motion", "1.6", "--out", str(again), "--quiet"]
    assert main(args) == 0
    doc = json.loads((again / "results.json").read_text())
    assert doc["methods"]["lipsync3d"]["cached"] is True and doc["config"]["mouth_motion"] == 1.6
    assert not any(v["render"]["cached"] for v in doc["per_clip"]["lipsync3d"].values())
    assert all(v["render"]["cached"] for v in doc["per_clip"]["ground_truth"].values())
    for clip, v in doc["per_clip"]["lipsync3d"].items():  # a different video from the same model
        assert (again / v["video"]).read_bytes() != (out / before["per_clip"]["lipsync3d"][clip]["video"]).read_bytes()
    assert "--mouth-motion 1.6" in (again / "report.md").read_text()


def test_human_study_from_the_results(tiny_run, tmp_path):
    """A study made from a real eval.run folder serves its videos and collects a full set of answers."""
    from fastapi.testclient import TestClient

    from human_study.create import create_study
    from human_study.db import open_database, ratings_frame
    from human_study.server import build_app
    from human_study.study import load_study

    out, _ = tiny_run
    study = load_study(create_study(out, tmp_path / "study" / "study.yaml", trials_per_rater=6, attention=1,
                                    min_watch_fraction=0))  # answers at once, after one "play"
    assert set(study.methods) == {"ground_truth", "frozen", "lipsync3d"}
    engine = open_database(f"sqlite:///{tmp_path}/r.db", study)
    with TestClient(build_app(study, engine, "x" * 20)) as c:
        token = c.post("/api/join").json()["token"]
        state = c.get(f"/api/r/{token}/state").json()
        while state["trial"]:
            t = state["trial"]
            for url in t["media"]:
                assert c.get(url).content[4:8] == b"ftyp"  # an mp4
            r = c.post(f"/api/r/{token}/rate", json={"trial_id": t["id"], "choice": t["choices"][-1],
                                                       "submit_id": f"sub-{t['id']:06d}", "response_ms": 10,
                                                       "plays": 1})
            state = r.json()["state"]
    df = ratings_frame(engine)
    assert len(df) == study.practice_trials + 6 + 1 and df["is_attention"].sum() == 1
    engine.dispose()


def test_data_efficiency_study_trains_on_the_first_seconds_and_reports(tmp_path):
    """``--train-seconds``: one model per length of training footage (asking for more than there
    is gives the whole training part, once), each measured on the same test clip, as a table and a plot."""
    from conftest import FIXTURES
    from eval.run import main

    out = tmp_path / "eff"
    args = ["--video", str(FIXTURES / "grid_s1_19clips.mp4"), "--preset", "tiny", "--train-seconds", "3", "100", "200",
            "--max-test-clips", "1", "--metrics", "mouth_corr", "sharpness", "--out", str(out), "--quiet"]
    assert main(args) == 0
    doc = json.loads((out / "efficiency.json").read_text())
    seconds = sorted(doc["values"].values())
    assert len(seconds) == 2 and seconds[0] == 3.0 and 40 < seconds[1] < 50  # the training part: 80% of 57 s
    for name in doc["values"]:
        assert np.isfinite(doc["results"][name]["sharpness"]["value"])
    assert (out / "plots" / "data_efficiency.png").stat().st_size > 1000
    table = (out / "efficiency.md").read_text()
    assert "| 3 |" in table
    rows = list(csv.reader((out / "efficiency.csv").open()))
    assert rows[0][:4] == ["seconds", "mouth_corr", "mouth_corr_lo", "mouth_corr_hi"] and len(rows) == 3
    assert main(["--video", str(FIXTURES / "grid_s1_19clips.mp4"), "--train-seconds", "-5", "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    # --mouth-motion reaches the study's models: the 3 s model is reused and its video made again, differently
    import shutil

    again = tmp_path / "eff_motion"
    shutil.copytree(out, again)
    assert main(["--video", str(FIXTURES / "grid_s1_19clips.mp4"), "--preset", "tiny", "--train-seconds", "3",
                 "--max-test-clips", "1", "--metrics", "mouth_corr", "sharpness", "--mouth-motion", "1.6",
                 "--out", str(again), "--quiet"]) == 0
    moved = json.loads((again / "efficiency.json").read_text())
    (name,) = moved["values"]
    assert moved["methods"][name]["cached"] is True and moved["mouth_motion"] == 1.6
    videos = sorted((out / "videos" / name).glob("*.mp4"))
    assert videos and all((again / "videos" / name / v.name).read_bytes() != v.read_bytes() for v in videos)
    assert "mouth motion 1.6" in (again / "efficiency.md").read_text()


def test_lookahead_study_refuses_bad_values_before_any_work(tmp_path, capsys):
    from conftest import FIXTURES
    from eval.run import main

    video = str(FIXTURES / "grid_s1_19clips.mp4")
    for bad in (["45"], ["240"], ["-10"]):
        assert main(["--video", video, "--lookahead-ms", *bad, "--out", str(tmp_path / "bad"), "--quiet"]) == 2
        assert "lookahead" in capsys.readouterr().err
    assert main(["--video", video, "--lookahead-ms", "40", "--train-seconds", "20", "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    assert "choose one study" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_lookahead_study_trains_one_model_per_lookahead_and_reports(tmp_path):
    """``--lookahead-ms``: the default window is the main comparison's model, the others are trained
    with their window; all measured on the same test clip, as a table, a CSV and a plot."""
    from conftest import FIXTURES
    from eval.run import main

    out = tmp_path / "la"
    assert main(["--video", str(FIXTURES / "grid_s1_19clips.mp4"), "--preset", "tiny", "--lookahead-ms", "110", "0",
                 "--max-test-clips", "1", "--metrics", "lmd", "--out", str(out), "--quiet"]) == 0
    doc = json.loads((out / "lookahead.json").read_text())
    assert doc["values"] == {"lipsync3d_lookahead_110ms": 110.0, "lipsync3d_lookahead_0ms": 0.0}
    assert "model-lipsync3d-" in doc["methods"]["lipsync3d_lookahead_110ms"]["model"]
    assert "| 0 |" in (out / "lookahead.md").read_text() and (out / "plots" / "lookahead.png").stat().st_size > 1000
    rows = list(csv.reader((out / "lookahead.csv").open()))
    assert rows[0][:2] == ["lookahead_ms", "lmd"] and len(rows) == 3
