"""``lipsync batch``: the jobs CSV and its checks, a run on an embedded Ray (a bad row fails alone,
rows with the same training video train once), re-runs that redo nothing or only what is missing,
a row with a model folder, and whole-command errors."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import GRID_CLIP, ROOT, ffmpeg, read_store

TEXT = "Bin blue at F two now."


@pytest.fixture(scope="module")
def ray_local():
    from lipsync.engine import connect, disconnect

    info = connect(num_cpus=2)
    yield info
    disconnect(info)


def _batch(*args) -> tuple[int, str, str]:
    """``lipsync batch ARGS --preset tiny --quiet`` in this process: (exit code, stdout, stderr)."""
    from lipsync.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["batch", *map(str, args), "--preset", "tiny", "--quiet"])
    return rc, out.getvalue(), err.getvalue()


def _write_csv(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def _summary(out: Path) -> dict[str, dict]:
    with open(out / "summary.csv", newline="") as f:
        return {r["output"]: r for r in csv.DictReader(f)}


def _mtimes(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` but the engine's bookkeeping, with its mtime."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")
            if p.is_file() and "engine" not in p.parts and p.name not in ("progress.json", "summary.csv")}


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """A jobs folder: the GRID clip under a relative path (and by its absolute path: the same
    content), 1.5 s of its speech, and a CSV of three rows, the last one naming a missing file."""
    d = tmp_path_factory.mktemp("jobs")
    (d / "clips").mkdir()
    shutil.copy(GRID_CLIP, d / "clips" / "train.mpg")
    ffmpeg("-i", str(GRID_CLIP), "-vn", "-t", "1.5", "-c:a", "aac", str(d / "speech.m4a"))
    csv_path = _write_csv(d / "jobs.csv", [
        ["Output", "train_video", "audio", "text", "voice", "mesh", "blendshapes"],
        ["a.mp4", "clips/train.mpg", "speech.m4a", "", "", "yes", ""],
        ["b", str(GRID_CLIP), "", TEXT, "en-us", "", "yes"],
        ["c.mp4", "clips/train.mpg", "missing.wav", "", "", "", ""],
    ])
    return d, csv_path


@pytest.fixture(scope="module")
def first_run(ray_local, jobs, tmp_path_factory):
    d, csv_path = jobs
    out = tmp_path_factory.mktemp("batch") / "out"
    rc, stdout, stderr = _batch(csv_path, "--out", out)
    return out, rc, stdout, stderr


def test_bad_rows_fail_alone_with_one_sentence(tmp_path):
    from lipsync.batch import read_jobs

    (tmp_path / "v.mpg").write_bytes(GRID_CLIP.read_bytes())
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "model").mkdir()
    rows = [
        ["output", "model", "train_video", "audio", "text", "voice", "target", "mesh"],
        ["ok.mp4", "", "v.mpg", "", "hi", "en-us", "", "no"],              # 2: good
        ["../x", "", "v.mpg", "", "hi", "", "", ""],                       # 3: a path
        [".hidden", "", "v.mpg", "", "hi", "", "", ""],                    # 4: leading dot
        ["-x", "", "v.mpg", "", "hi", "", "", ""],                         # 5: leading dash
        ["two", "model", "v.mpg", "", "hi", "", "", ""],                   # 6: model and train_video
        ["none", "", "", "", "hi", "", "", ""],                            # 7: neither
        ["both", "", "v.mpg", "v.mpg", "hi", "", "", ""],                  # 8: audio and text
        ["silent", "", "v.mpg", "", "", "", "", ""],                       # 9: neither audio nor text
        ["gone", "", "gone.mp4", "", "hi", "", "", ""],                    # 10: missing training video
        ["empty", "", "v.mpg", "empty.wav", "", "", "", ""],               # 11: empty audio
        ["voiceless", "", "v.mpg", "v.mpg", "", "en", "", ""],             # 12: voice without text
        ["badvoice", "", "v.mpg", "", "hi", "en us", "", ""],              # 13: not a voice name
        ["notmodel", "model", "", "", "hi", "", "", ""],                   # 14: not a trained model
        ["notarget", "", "v.mpg", "", "hi", "", "nope.jpg", ""],           # 15: missing target
        ["flag", "", "v.mpg", "", "hi", "", "", "maybe"],                  # 16: mesh not yes/no
        ["Dup.mp4", "", "v.mpg", "", "hi", "", "", ""],                    # 17, 18: the same output
        ["dup", "", "v.mpg", "", "hi", "", "", ""],
        ["summary", "", "v.mpg", "", "hi", "", "", ""],                    # 19: our summary's name
        ["", "", "v.mpg", "", "hi", "", "", ""],                           # 20: no output
    ]
    jobs = read_jobs(_write_csv(tmp_path / "jobs.csv", rows))
    by_row = {j.row: j for j in jobs}
    assert len(jobs) == len(rows) - 1
    ok = by_row[2]
    assert ok.error is None and ok.stem == "ok" and ok.train_video == (tmp_path / "v.mpg").resolve()
    assert ok.voice == "en-us" and ok.text == "hi" and ok.mesh is False and ok.video_digest
    expected = {3: "is a path", 4: "starts with '.'", 5: "starts with '-'", 6: "both a model and a train_video",
                7: "neither a model nor a train_video", 8: "both audio and text", 9: "neither audio nor text",
                10: "gone.mp4 does not exist", 11: "is empty", 12: "voice but no text", 13: "not an espeak-ng voice",
                14: "no model.safetensors", 15: "nope.jpg does not exist", 16: "write yes or no",
                17: "which row 18 also writes", 18: "which row 17 also writes", 19: "uses itself", 20: "no output name"}
    for row, words in expected.items():
        err = by_row[row].error
        assert err and words in err and err.startswith(f"row {row}") and err.endswith(".") and "\n" not in err, (row, err)


def test_a_rows_mouth_motion_is_checked_and_changes_its_key(tmp_path):
    """The optional mouth_motion column: a number in range is the row's setting (and part of its
    key, so a changed value makes the video again); anything else fails that row alone; 1 or an
    empty cell keeps the key a row without the column has."""
    from lipsync.batch import job_key, read_jobs

    (tmp_path / "v.mpg").write_bytes(GRID_CLIP.read_bytes())
    rows = [["output", "train_video", "text", "mouth_motion"],
            ["a", "v.mpg", "hi", "0.8"], ["b", "v.mpg", "hi", "1"], ["c", "v.mpg", "hi", ""],
            ["d", "v.mpg", "hi", "lots"], ["e", "v.mpg", "hi", "5"]]
    jobs = {j.stem or j.output: j for j in read_jobs(_write_csv(tmp_path / "jobs.csv", rows))}
    plain = read_jobs(_write_csv(tmp_path / "plain.csv", [["output", "train_video", "text"], ["a", "v.mpg", "hi"]]))[0]
    assert jobs["a"].error is None and jobs["a"].mouth_motion == 0.8
    assert jobs["b"].mouth_motion == jobs["c"].mouth_motion == 1.0
    key = lambda j: job_key(j, preset="tiny", renderer="auto")  # noqa: E731
    assert key(jobs["b"]) == key(jobs["c"]) == key(plain) != key(jobs["a"])
    for name, words in (("d", "must be a number"), ("e", "must be between")):
        err = jobs[name].error
        assert err and words in err and err.startswith("row ") and err.endswith(".") and "\n" not in err, err


def test_a_run_writes_the_good_rows_and_reports_the_bad_one(first_run):
    from lipsync.media import probe

    out, rc, stdout, stderr = first_run
    assert rc == 1, stderr
    summary = _summary(out)
    assert list(summary) == ["a.mp4", "b.mp4", "c.mp4"]
    for name in ("a.mp4", "b.mp4"):
        row = summary[name]
        assert row["status"] == "done" and row["error"] == "" and row["attempts"] == "1", row
        info = probe(out / name)
        assert info.has_audio and info.frames > 10 and abs(info.duration - float(row["duration_s"])) < 0.1
        assert float(row["seconds"]) > 0
    assert abs(float(summary["a.mp4"]["duration_s"]) - 1.5) < 0.1
    bad = summary["c.mp4"]
    assert bad["status"] == "failed" and "missing.wav does not exist" in bad["error"] and bad["error"].startswith("row 4")
    assert (out / "a.glb").stat().st_size > 0 and not (out / "b.glb").exists()
    assert (out / "b.csv").read_text().startswith("frame,time_s,") and not (out / "a.csv").exists()
    # nothing half-made or left over beside the outputs
    assert sorted(p.name for p in out.iterdir()) == [".work", "a.glb", "a.mp4", "b.csv", "b.mp4", "summary.csv"]
    assert not any((out / ".work" / "dub").iterdir())
    assert "2 done, 1 failed" in stdout and "missing.wav" in stdout


def test_rows_with_the_same_training_video_train_once(first_run):
    out, rc, _, _ = first_run
    progress = json.loads((out / ".work" / "progress.json").read_text())
    tasks = progress["tasks"]
    stages = sorted(t["stage"] for t in tasks.values())
    assert stages == ["dub", "dub", "prepare", "train"], tasks
    assert all(t["status"] == "done" for t in tasks.values())
    assert tasks["train.mpg/train"]["attempts"] == 1 and tasks["b/dub"]["group"] == "b"
    work = out / ".work"
    assert len(list(work.glob("prepared-*"))) == 1 and len(list(work.glob("models-*/model-*"))) == 1


def test_a_second_run_recomputes_nothing(first_run, jobs):
    out, _, _, _ = first_run
    _, csv_path = jobs
    before = _mtimes(out)
    runs = sorted(p.name for p in (out / ".work" / "engine").iterdir())
    rc, stdout, stderr = _batch(csv_path, "--out", out)
    assert rc == 1, stderr
    summary = _summary(out)
    assert summary["a.mp4"]["status"] == summary["b.mp4"]["status"] == "cached"
    assert summary["a.mp4"]["seconds"] == "0.0" and float(summary["b.mp4"]["duration_s"]) > 0
    assert summary["c.mp4"]["status"] == "failed"
    assert _mtimes(out) == before
    assert sorted(p.name for p in (out / ".work" / "engine").iterdir()) == runs  # no task ran at all
    assert "2 cached, 1 failed" in stdout


def test_a_run_after_an_interruption_makes_only_what_is_missing(first_run, jobs):
    """As after Ctrl-C during b's dub: b's video is gone; a is kept, and nothing is trained again."""
    out, _, _, _ = first_run
    _, csv_path = jobs
    (out / "b.mp4").unlink()
    before = _mtimes(out)
    rc, _, stderr = _batch(csv_path, "--out", out)
    assert rc == 1, stderr
    summary = _summary(out)
    assert summary["a.mp4"]["status"] == "cached" and summary["b.mp4"]["status"] == "done"
    after = _mtimes(out)
    changed = sorted(k for k in after if before.get(k) != after[k])
    assert set(changed) == {"b.csv", "b.mp4", str(Path(".work", "records", "b.json"))}, changed


def test_a_row_with_a_model_folder_and_a_still_target(first_run, ray_local, tmp_path):
    from lipsync.media import probe

    out, _, _, _ = first_run
    model = next((out / ".work").glob("models-*/model-*"))
    ffmpeg("-ss", "1", "-i", str(GRID_CLIP), "-frames:v", "1", str(tmp_path / "still.png"))
    csv_path = _write_csv(tmp_path / "jobs.csv", [["output", "model", "text", "target"],
                                                  ["still", str(model), TEXT, "still.png"]])
    rc, stdout, stderr = _batch(csv_path, "--out", tmp_path / "out")
    assert rc == 0, stderr
    row = _summary(tmp_path / "out")["still.mp4"]
    assert row["status"] == "done", row
    info = probe(tmp_path / "out" / "still.mp4")
    assert info.has_audio and abs(info.duration - float(row["duration_s"])) < 0.1
    progress = json.loads((tmp_path / "out" / ".work" / "progress.json").read_text())
    assert list(progress["tasks"]) == ["still/dub"]  # nothing to prepare or train


def test_an_object_store_root_gets_every_video(first_run, jobs, tmp_path, s3_bucket):
    """``--out s3://...``: the inputs (a training video, speech, a model folder, a still target)
    go to the store, the tasks work in node-local mirrors, and the store ends with the videos, the
    mesh, the weights and the summary; from a fresh machine the same command finds them all made."""
    from lipsync.media import probe

    out, _, _, _ = first_run
    d, _ = jobs
    model = next((out / ".work").glob("models-*/model-*"))
    ffmpeg("-ss", "1", "-i", str(GRID_CLIP), "-frames:v", "1", str(tmp_path / "still.png"))
    csv_path = _write_csv(tmp_path / "jobs.csv", [
        ["output", "train_video", "model", "audio", "text", "target", "mesh", "blendshapes"],
        ["a", str(d / "clips" / "train.mpg"), "", str(d / "speech.m4a"), "", "", "yes", ""],
        ["b", str(GRID_CLIP), "", "", TEXT, "", "", "yes"],
        ["still", "", str(model), "", TEXT, "still.png", "", ""],
        ["bad", "", "", str(d / "speech.m4a"), "", "", "", ""],
    ])
    uri = f"s3://{s3_bucket}/dubbed"

    def run(mirror: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "LIPSYNC_MIRROR": str(tmp_path / mirror), "PYTHONPATH": str(ROOT)}
        return subprocess.run([sys.executable, "-m", "lipsync", "batch", str(csv_path), "--out", uri, "--preset", "tiny",
                               "--num-cpus", "2", "--quiet"], env=env, capture_output=True, text=True, timeout=900)

    p = run("node1")
    assert p.returncode == 1, p.stderr  # the bad row
    summary = {r["output"]: r for r in csv.DictReader(io.StringIO(read_store(f"{uri}/summary.csv").decode()))}
    assert [summary[n]["status"] for n in ("a.mp4", "b.mp4", "still.mp4", "bad.mp4")] == ["done"] * 3 + ["failed"]
    (tmp_path / "a.mp4").write_bytes(read_store(f"{uri}/a.mp4"))
    assert probe(tmp_path / "a.mp4").has_audio
    assert read_store(f"{uri}/a.glb")[:4] == b"glTF" and read_store(f"{uri}/b.csv").count(b"\n") > 10
    assert len(read_store(f"{uri}/still.mp4")) > 1000
    assert f"summary in {uri}/summary.csv" in p.stdout
    p = run("node2")
    assert p.returncode == 1, p.stderr
    summary = {r["output"]: r for r in csv.DictReader(io.StringIO(read_store(f"{uri}/summary.csv").decode()))}
    assert [summary[n]["status"] for n in ("a.mp4", "b.mp4", "still.mp4")] == ["cached"] * 3
    assert not list((tmp_path / "node2").glob("*/.work/engine"))  # no task ran


def test_whole_command_errors_write_nothing(tmp_path):
    from lipsync.cli import build_parser

    (tmp_path / "a.wav").write_bytes(b"x")
    cases = {
        "output,audio\nx.mp4,a.wav\n": "no model or train_video column",
        "output,model,audio,colour\nx,m,a.wav,red\n": "unknown column 'colour'",
        "model,audio\nm,a.wav\n": "no output column",
        "output,model,text,output\nx,m,hi,y\n": "column 'output' twice",
        "output,model,text\n": "no jobs",
        "": "is empty",
    }
    for text, words in cases.items():
        path = tmp_path / "jobs.csv"
        path.write_text(text)
        out = tmp_path / "out"
        rc, stdout, stderr = _batch(path, "--out", out)
        assert rc == 2 and words in stderr, (text, stderr)
        assert stderr.count("\n") == 1 and stderr.startswith("lipsync: error: ") and stdout == ""
        assert not out.exists()
    rc, _, stderr = _batch(tmp_path / "nope.csv", "--out", tmp_path / "out")
    assert rc == 2 and "does not exist" in stderr and not (tmp_path / "out").exists()
    assert "tiny" not in build_parser()._subparsers._group_actions[0].choices["batch"].format_help()


def test_training_asks_for_a_gpu_only_where_there_is_one(tmp_path, ray_local):
    from lipsync.batch import Job, build_graph

    video = tmp_path / "v.mpg"
    jobs = [Job(row=2, output="x", stem="x", train_video=video, video_digest="d1", text="hi"),
            Job(row=3, output="y", stem="y", train_video=video, video_digest="d1", audio=video)]
    for gpus, device, wanted in ((1, "auto", 1), (1, "cuda", 1), (1, "cpu", 0), (0, "auto", 0)):
        tasks, dubs = build_graph(jobs, tmp_path, {"x": "k1", "y": "k2"}, preset="tiny", device=device, renderer="auto",
                                  gpus=gpus, node_cpus=2)
        by_key = {t.key: t for t in tasks}
        assert sorted(by_key) == ["v.mpg/prepare", "v.mpg/train", "x/dub", "y/dub"] and dubs == {"x": "x/dub", "y": "y/dub"}
        assert by_key["v.mpg/train"].num_gpus == wanted and by_key["v.mpg/prepare"].num_gpus == 0
        assert by_key["x/dub"].num_gpus == 0 and by_key["x/dub"].deps() == ["v.mpg/train"]
    if ray_local["gpus"]:
        return
    # --device cuda on a cluster without a GPU: a whole-command error, nothing written
    (tmp_path / "v.mpg").write_bytes(GRID_CLIP.read_bytes())
    csv_path = _write_csv(tmp_path / "jobs.csv", [["output", "train_video", "text"], ["x", "v.mpg", "hi"]])
    from lipsync.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["batch", str(csv_path), "--out", str(tmp_path / "out"), "--device", "cuda", "--quiet"])
    assert rc == 2 and "needs a GPU" in err.getvalue() and not (tmp_path / "out").exists()
