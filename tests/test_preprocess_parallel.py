"""The per-frame stages of preprocessing on several threads: the same prepared clip as on one
thread, bounded work in flight, and failures that still leave nothing behind."""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from conftest import ffmpeg, leftovers
from lipsync.prepared import MANIFEST, open_prepared
from lipsync.workers import BoundedPool, resolve_workers

# manifest entries that say how the run went rather than what it produced
RUN_KEYS = {"timings_s", "cpu_s", "frames_per_second", "workers", "source"}


def assert_same_clip(a, b) -> None:
    names = sorted(p.name for p in a.glob("*.npy"))
    assert names == sorted(p.name for p in b.glob("*.npy")) and len(names) > 15
    for name in names:
        x, y = np.load(a / name), np.load(b / name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), f"{name} differs between one and several threads"
    ma, mb = (json.loads((d / MANIFEST).read_text()) for d in (a, b))
    differ = sorted(k for k in set(ma) | set(mb) if k not in RUN_KEYS and ma.get(k) != mb.get(k))
    assert not differ, f"manifest entries differ: {differ}"
    assert (a / "audio.wav").read_bytes() == (b / "audio.wav").read_bytes()


def test_threads_give_the_same_prepared_clip(tmp_path, grid_clip, prepared_grid):
    """The session's clip was made with one thread per core; one thread must give the same arrays.
    Small lighting chunks on three threads finish out of order, which must not matter either (the
    chunk size itself may change the last bit of the lighting fit: batched matrix products)."""
    from lipsync.preprocessing import PreprocessOptions, preprocess

    one = preprocess(grid_clip, tmp_path / "one", options=PreprocessOptions(keep_raw_atlas=True, workers=1))
    assert_same_clip(one, prepared_grid.path)
    small = [preprocess(grid_clip, tmp_path / f"chunks{w}", options=PreprocessOptions(workers=w, chunk=7, previews=False))
             for w in (1, 3)]
    assert_same_clip(*small)
    m = json.loads((small[1] / MANIFEST).read_text())
    assert m["workers"] == 3 and set(m["cpu_s"]) >= {"track", "atlas", "lighting"}
    assert m["cpu_s"]["track"]["decoder"] > 0  # ffmpeg's decoding is counted, not hidden


def test_a_gap_and_a_cut_inside_chunks_give_the_same_clip(tmp_path, grid_clip):
    """Grey frames (a tracking gap) across a chunk boundary and a shot cut inside a chunk."""
    from lipsync.preprocessing import PreprocessOptions, preprocess

    video = tmp_path / "edited.mp4"
    ffmpeg("-i", str(grid_clip), "-vf",
           "drawbox=x=0:y=0:w=iw:h=ih:color=gray:t=fill:enable='between(n,20,24)',"
           "crop=320:288:x='if(gte(n,50),40,0)':y=0",
           "-c:v", "libx264", "-crf", "16", "-c:a", "aac", str(video))
    outs = [preprocess(video, tmp_path / f"w{w}", options=PreprocessOptions(workers=w, chunk=22, previews=False))
            for w in (1, 2)]  # chunks 0-21, 22-43, 44-65: the gap spans 22, the cut at 50 is inside one
    clip = open_prepared(outs[1])
    assert clip.manifest["cuts"] == [50] and not np.array(clip.array("valid"))[20:25].any()
    assert_same_clip(*outs)


def test_a_failing_frame_on_a_worker_thread_leaves_nothing_behind(tmp_path, grid_clip, monkeypatch):
    from lipsync.preprocessing import PreprocessOptions, preprocess
    import lipsync.preprocessing.unwrap as unwrap

    real = unwrap.extract_atlas
    calls = []

    def breaks_on_the_30th(*args, **kwargs):
        calls.append(threading.current_thread().name)
        if len(calls) == 30:
            raise RuntimeError("simulated failure in a worker")
        return real(*args, **kwargs)

    monkeypatch.setattr(unwrap, "extract_atlas", breaks_on_the_30th)
    with pytest.raises(RuntimeError, match="simulated failure"):
        preprocess(grid_clip, tmp_path / "out" / "clip", options=PreprocessOptions(workers=2, previews=False))
    assert any(name.startswith("atlas") for name in calls)  # it did run on the pool's threads
    assert leftovers(tmp_path) == []
    # and the next run succeeds
    monkeypatch.setattr(unwrap, "extract_atlas", real)
    out = preprocess(grid_clip, tmp_path / "out" / "clip", options=PreprocessOptions(workers=2, previews=False))
    assert (out / MANIFEST).is_file()


def test_pool_runs_inline_with_one_worker_and_bounds_the_work_in_flight():
    seen = []
    with BoundedPool(1) as pool:
        pool.submit(lambda: seen.append(threading.current_thread()))
        assert seen == [threading.current_thread()]  # already ran, in the caller's thread

    lock, running, most = threading.Lock(), [0], [0]
    started = []

    def job(i):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        started.append(i)
        time.sleep(0.01)
        with lock:
            running[0] -= 1

    with BoundedPool(2) as pool:
        for i in range(20):
            pool.submit(job, i)
            assert i + 1 - len(started) <= 2 * 2 + 1  # the producer never runs far ahead
    assert sorted(started) == list(range(20)) and most[0] == 2


def test_pool_raises_the_first_failure_and_cancels_the_rest():
    ran = []

    def job(i):
        if i == 3:
            raise ValueError("job 3 failed")
        time.sleep(0.02)
        ran.append(i)

    with pytest.raises(ValueError, match="job 3 failed"):
        with BoundedPool(2) as pool:
            for i in range(50):
                pool.submit(job, i)
    assert len(ran) < 20  # the queue was not worked off after the failure


def test_pool_restores_the_libraries_thread_counts():
    import cv2
    from threadpoolctl import threadpool_info

    before = cv2.getNumThreads(), [i["num_threads"] for i in threadpool_info()]
    for workers in (2, 1):  # one worker too: the same single-threaded arithmetic as several
        with BoundedPool(workers):
            assert cv2.getNumThreads() == 1
            assert all(i["num_threads"] == 1 for i in threadpool_info() if i["user_api"] == "blas")
        assert (cv2.getNumThreads(), [i["num_threads"] for i in threadpool_info()]) == before
    # two pools overlapping (two preprocessing runs in one process) restore them too
    first, second = BoundedPool(2), BoundedPool(2)
    first.close()
    assert cv2.getNumThreads() == 1  # the second pool still runs
    second.close()
    assert (cv2.getNumThreads(), [i["num_threads"] for i in threadpool_info()]) == before


def test_zero_workers_means_one_per_core():
    import os

    assert resolve_workers(0) == len(os.sched_getaffinity(0)) and resolve_workers(3) == 3


def test_frame_array_round_trips_frames_written_from_several_threads(tmp_path):
    from lipsync.files import FrameArray

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 255, (40, 6, 5, 3), dtype=np.uint8)
    arr = FrameArray(tmp_path / "a.npy", dtype=np.uint8, shape=truth.shape)
    with BoundedPool(3) as pool:
        for i in rng.permutation(len(truth)):
            pool.submit(arr.__setitem__, int(i), truth[i])
    assert len(arr) == 40 and np.array_equal(np.load(tmp_path / "a.npy"), truth)
    assert np.array_equal(arr[7], truth[7]) and np.array_equal(arr[[3, 1, 3]], truth[[3, 1, 3]])
    window = arr[10:20]  # a writable map of those frames only
    window[:] //= 2
    del window
    truth[10:20] //= 2
    arr[39] = 0  # broadcast to the whole frame
    truth[39] = 0
    assert np.array_equal(np.load(tmp_path / "a.npy"), truth)
    assert arr[35:60].shape == (5, 6, 5, 3)  # clipped like any slice
    with pytest.raises(IndexError):
        arr[40] = truth[0]
    with pytest.raises(IndexError):
        arr[0:10:2]
    arr.close()
    masks = FrameArray(tmp_path / "m.npy", dtype=bool, shape=(3, 4, 4))
    masks[1] = np.eye(4, dtype=bool)
    assert np.array_equal(FrameArray(tmp_path / "m.npy")[1], np.eye(4, dtype=bool))  # reopened from the file


def test_one_face_tracking_equals_the_two_face_tracker(tmp_path, grid_clip):
    """The fast tracker (one-face FaceMesh plus a detector on another thread) gives exactly what
    the two-face tracker gives: on one person, and on a clip where a second face appears at frame
    40 (then it tracks the clip again with the two-face tracker)."""
    from lipsync.media import FrameReader, probe
    from lipsync.tracking import MediaPipeTracker, track_frames, track_one_face

    enters = tmp_path / "enters.mp4"
    ffmpeg("-i", str(grid_clip), "-i", str(grid_clip), "-filter_complex",
           "[1:v]scale=160:128[s];[0:v][s]overlay=x='if(gte(n,40),200,-300)':y=160",
           "-c:v", "libx264", "-crf", "18", "-an", str(enters))
    for video, most in ((grid_clip, 1), (enters, 2)):
        info = probe(video)
        with MediaPipeTracker(max_faces=2) as two:
            want = track_frames(FrameReader(info), fps=info.fps, width=info.width, height=info.height, tracker=two)
        rereads = []

        def again():
            rereads.append(1)
            return FrameReader(info)

        got = track_one_face(FrameReader(info), fps=info.fps, width=info.width, height=info.height, retrack=again)
        assert np.array_equal(got.landmarks, want.landmarks, equal_nan=True)
        assert np.array_equal(got.faces_seen, want.faces_seen) and got.faces_seen.max() == most
        assert len(rereads) == (most - 1)  # the second face made it track again, one face did not


def test_another_face_is_a_second_detection_or_one_away_from_the_followed_face():
    from lipsync.tracking import another_face

    face = np.array([[100, 100, 0], [200, 100, 0], [150, 220, 0]], np.float32)  # box 100-200 x 100-220
    on_it, beside = np.array([110, 110, 190, 200.0]), np.array([300, 110, 380, 200.0])
    assert not another_face([], face) and not another_face([on_it], face)
    assert another_face([beside], face) and another_face([on_it, beside], face)
    assert not another_face([beside], None)  # nothing followed: the tracker itself detects


def test_bench_reports_cpu_per_stage_on_a_repeated_video(grid_clip, capsys):
    """``python -m eval.bench preprocess --repeat 2``: the clip twice in a row (a cut at the join),
    with wall and CPU seconds per stage and the peak memory."""
    from eval.bench import main

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        assert main(["preprocess", str(grid_clip), "--repeat", "2", "--workers", "2", "--no-previews",
                     "--json", str(out)]) == 0
        r = json.loads(out.read_text())
    assert r["frames"] == 150 and r["video"].endswith(" x2") and r["workers"] == 2
    assert r["stages"]["track"]["cpu_s"] > 0 and r["stages"]["atlas"]["decoder_cpu_s"] > 0
    assert r["peak_memory"]["process_mib"] > 0
    printed = capsys.readouterr().out
    assert "cores busy" in printed and "2 worker thread(s)" in printed


def test_prepared_clip_frames_are_read_only_chunks(prepared_grid):
    atlas = prepared_grid.frames("atlas_raw")
    assert len(atlas) == prepared_grid.num_frames and not atlas.writable
    assert np.array_equal(atlas[10:14], prepared_grid.array("atlas_raw")[10:14])
    with pytest.raises(PermissionError):
        atlas[0] = 0
    with pytest.raises(KeyError):
        prepared_grid.frames("no_such_array")


def test_a_run_killed_during_the_threaded_stages_leaves_nothing_and_the_next_succeeds(tmp_path, grid_clip):
    """SIGKILL `lipsync preprocess` (and its ffmpeg) once the atlas file exists, then run again."""
    import os
    import signal
    import subprocess
    import sys

    from conftest import ROOT
    from eval.bench import repeated_video
    from lipsync.preprocessing import PreprocessOptions, preprocess

    video = repeated_video(str(grid_clip), 4, tmp_path)  # 300 frames: the atlas stage lasts a while
    out = tmp_path / "work" / "clip"
    proc = subprocess.Popen([sys.executable, "-m", "lipsync", "preprocess", str(video), "--out", str(out),
                             "--workers", "2", "--quiet"], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(out.parent.glob(".clip.partial-*/atlas.npy")):
            assert proc.poll() is None, "preprocessing ended before it could be killed"
            assert time.monotonic() < deadline, "the atlas stage never started"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not out.exists()  # the folder only ever appears complete
    again = preprocess(video, out, options=PreprocessOptions(previews=False))
    assert (again / MANIFEST).is_file()
    assert leftovers(out.parent) == ["clip"]  # the killed run's partial folder is gone
