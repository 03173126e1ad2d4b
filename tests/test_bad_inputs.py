"""Bad input: one clear sentence, a non-zero exit, no traceback, and nothing left behind."""
from __future__ import annotations

import os

import pytest

from conftest import ffmpeg, leftovers
from lipsync.cli import main


def run_cli(capsys, *args):
    code = main(["preprocess", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.err


def assert_clean_failure(code, err, workdir, expected):
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("lipsync:")]
    assert len(lines) == 1, err
    assert lines[0].startswith("lipsync: error: ") and lines[0].endswith(".")
    assert expected in lines[0]
    assert "Traceback" not in err
    names = leftovers(workdir)
    assert not any(n == "out" or ".partial" in n or ".old" in n for n in names), names


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_text_file_is_not_a_video(work, capsys):
    (work / "notes.mp4").write_text("not a video")
    assert_clean_failure(*run_cli(capsys, "notes.mp4", "--out", "out"), work, "is not a readable video file")


def test_still_image_is_not_a_video(work, capsys, grid_clip):
    ffmpeg("-i", str(grid_clip), "-frames:v", "1", str(work / "still.png"))
    assert_clean_failure(*run_cli(capsys, "still.png", "--out", "out"), work, "is a still image")


def test_zero_length_file(work, capsys):
    (work / "empty.mp4").write_bytes(b"")
    assert_clean_failure(*run_cli(capsys, "empty.mp4", "--out", "out"), work, "is empty")


def test_missing_file_and_folder(work, capsys):
    assert_clean_failure(*run_cli(capsys, "nothere.mp4", "--out", "out"), work, "does not exist")
    (work / "folder").mkdir()
    assert_clean_failure(*run_cli(capsys, "folder", "--out", "out"), work, "is a folder")


def test_one_frame_video(work, capsys):
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=1", "-frames:v", "1", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", str(work / "one.mp4"))
    assert_clean_failure(*run_cli(capsys, "one.mp4", "--out", "out"), work, "too short (1 frame")


def test_video_without_audio(work, capsys, grid_clip):
    ffmpeg("-i", str(grid_clip), "-an", "-c:v", "libx264", str(work / "silent.mp4"))
    assert_clean_failure(*run_cli(capsys, "silent.mp4", "--out", "out"), work, "has no audio track")


def test_video_without_a_face(work, capsys):
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=2", "-f", "lavfi", "-i", "sine=duration=2",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(work / "noface.mp4"))
    assert_clean_failure(*run_cli(capsys, "noface.mp4", "--out", "out"), work, "No face was found")


def test_truncated_video_without_its_index(work, capsys, grid_clip):
    ffmpeg("-i", str(grid_clip), "-c:v", "libx264", "-c:a", "aac", str(work / "full.mp4"))
    data = (work / "full.mp4").read_bytes()
    (work / "cut.mp4").write_bytes(data[:len(data) // 2])  # the index (moov) is at the end: lost
    os.remove(work / "full.mp4")
    assert_clean_failure(*run_cli(capsys, "cut.mp4", "--out", "out"), work, "is not a readable video file")


def test_truncated_video_that_decodes_partly(work, capsys, grid_clip):
    ffmpeg("-i", str(grid_clip), "-c:v", "libx264", "-c:a", "aac", "-movflags", "+faststart", str(work / "full.mp4"))
    data = (work / "full.mp4").read_bytes()
    (work / "cut.mp4").write_bytes(data[:len(data) // 2])  # index first: the first half still decodes
    os.remove(work / "full.mp4")
    assert_clean_failure(*run_cli(capsys, "cut.mp4", "--out", "out"), work, "looks truncated or corrupt")


def test_unwritable_output_location(work, capsys, grid_clip):
    (work / "afile").write_text("x")
    code, err = run_cli(capsys, grid_clip, "--out", "afile/out")
    assert_clean_failure(code, err, work, "is a file, not a folder")
    assert (work / "afile").read_text() == "x"
    code, err = run_cli(capsys, grid_clip, "--out", "afile")
    assert_clean_failure(code, err, work, "exists and is a file")
    code, err = run_cli(capsys, grid_clip, "--out", "/proc/lipsync-test/out")
    assert code == 2 and "Cannot write the output folder" in err and "Traceback" not in err


def test_failure_removes_the_folders_it_created(work, capsys):
    (work / "notes.mp4").write_text("not a video")
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=2", "-f", "lavfi", "-i", "sine=duration=2",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(work / "noface.mp4"))
    code, err = run_cli(capsys, "noface.mp4", "--out", "new/deeper/out")
    assert code == 2
    assert not (work / "new").exists()


def test_stale_partial_folder_of_a_killed_run_is_cleaned(work, capsys):
    stale = work / ".out.partial-999999999"  # no such process
    stale.mkdir()
    (stale / "atlas.npy").write_bytes(b"half")
    (work / "notes.mp4").write_text("not a video")
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=2", "-f", "lavfi", "-i", "sine=duration=2",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(work / "noface.mp4"))
    code, _ = run_cli(capsys, "noface.mp4", "--out", "out")
    assert code == 2 and not stale.exists()


def test_bad_atlas_size(work, capsys, grid_clip):
    code, err = run_cli(capsys, grid_clip, "--out", "out", "--atlas-size", "7")
    assert_clean_failure(code, err, work, "--atlas-size must be between")
