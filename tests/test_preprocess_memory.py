"""Preprocessing in memory that does not grow with the video: the per-frame geometry goes to disk
as it is made and the whole-clip steps read it a window of frames or a group of vertices at a
time, with exactly the numbers the same steps give on arrays held in memory."""
from __future__ import annotations

import numpy as np
import pytest

import lipsync.files as files
from lipsync.files import FrameArray, column_groups, map_frames, read_columns, read_frames, write_columns


@pytest.fixture
def tiny_pieces(monkeypatch):
    """Windows of a few frames and groups of 8 vertices: every boundary case of the sweeps."""
    import lipsync.preprocessing.reference as reference

    monkeypatch.setattr(files, "WINDOW_BYTES", 3 * 468 * 3 * 4)
    monkeypatch.setattr(files, "COLUMN_BUDGET", 1)
    monkeypatch.setattr(reference, "REFERENCE_CHUNK", 7)


def test_frame_array_resizes_in_place_and_takes_boolean_masks(tmp_path):
    arr = FrameArray(tmp_path / "a.npy", dtype=np.float32, shape=(3, 4, 3))
    rng = np.random.default_rng(0)
    data = rng.standard_normal((10, 4, 3)).astype(np.float32)
    for i, row in enumerate(data):
        if i >= len(arr):
            arr.resize(2 * len(arr))
        arr[i] = row
    assert len(arr) == 12
    arr.resize(10)
    arr.close()
    back = np.load(tmp_path / "a.npy")
    assert back.shape == (10, 4, 3) and np.array_equal(back, data)
    ro = FrameArray(tmp_path / "a.npy", writable=False)
    mask = np.zeros(10, bool)
    mask[[1, 7]] = True
    assert np.array_equal(ro[mask], data[[1, 7]])  # a mask selects frames, not frames 0 and 1
    with pytest.raises(PermissionError):
        ro.resize(5)


def test_sweeps_over_a_frame_array_match_the_same_work_in_memory(tmp_path, tiny_pieces):
    rng = np.random.default_rng(1)
    data = rng.standard_normal((23, 50, 3)).astype(np.float32)
    disk = FrameArray(tmp_path / "d.npy", dtype=np.float32, shape=data.shape)
    for i, row in enumerate(data):
        disk[i] = row
    groups = column_groups(data.shape)
    assert len(groups) == 7 and groups[0] == slice(0, 8) and groups[-1] == slice(48, 50)
    for cols in groups:
        assert np.array_equal(read_columns(disk, cols), data[:, cols])
    assert np.array_equal(read_frames(disk, slice(4, 17)), data[4:17])
    per_frame = lambda a: {"norm": np.linalg.norm(a, axis=(1, 2)), "first": a[:, 0, 0]}  # noqa: E731
    got, want = map_frames(per_frame, disk), per_frame(data)
    assert all(np.array_equal(got[k], want[k]) for k in want)
    out = FrameArray(tmp_path / "o.npy", dtype=np.float32, shape=data.shape)
    for cols in groups:
        write_columns(out, cols, 2 * data[:, cols])
    out.close()
    assert np.array_equal(np.load(tmp_path / "o.npy"), 2 * data)
    assert len(column_groups((30000, 468, 3))) > 1  # long clips are smoothed a vertex group at a time


def test_speech_envelope_in_blocks_equals_one_pass(monkeypatch):
    import lipsync.sync as sync

    def one_pass(audio):
        x = np.pad(np.asarray(audio, np.float32), (sync.WIN // 2, sync.WIN // 2))
        n = 1 + max(0, len(x) - sync.WIN) // sync.STEP
        c = np.concatenate([[0.0], np.cumsum(x.astype(np.float64) ** 2)])
        starts = np.arange(n) * sync.STEP
        return np.log((c[starts + sync.WIN] - c[starts]) / sync.WIN + 1e-8).astype(np.float32)

    rng = np.random.default_rng(2)
    for length in (0, 1, 639, 640, 641, 16_000, 100_003):
        audio = (0.1 * rng.standard_normal(length)).astype(np.float32)
        want = one_pass(audio)
        for block in (1 << 20, 1000, 641):
            monkeypatch.setattr(sync, "BLOCK", block)
            got = sync.envelope(audio)
            assert got.shape == want.shape and np.array_equal(got, want), (length, block)


def test_tracking_into_a_growing_file_equals_tracking_in_memory(tmp_path):
    from lipsync.topology import NUM_VERTICES
    from lipsync.tracking import track_frames

    rng = np.random.default_rng(3)
    faces = [rng.uniform(0, 100, (NUM_VERTICES, 3)).astype(np.float32) for _ in range(11)]

    class Fake:
        def __init__(self):
            self.i = -1

        def __call__(self, frame):
            self.i += 1
            return [] if self.i in (4, 5) else [faces[self.i]]

        def close(self):
            pass

    frames = [np.zeros((8, 8, 3), np.uint8)] * 11
    mem = track_frames(frames, fps=25, width=8, height=8, tracker=Fake())
    store = FrameArray(tmp_path / "landmarks_raw.npy", dtype=np.float32, shape=(2, NUM_VERTICES, 3))
    disk = track_frames(frames, fps=25, width=8, height=8, tracker=Fake(), store=store)
    assert disk.landmarks is store and len(store) == 11
    assert np.array_equal(mem.tracked, disk.tracked) and mem.tracked.tolist().count(False) == 2
    assert np.array_equal(np.load(tmp_path / "landmarks_raw.npy"), mem.landmarks, equal_nan=True)


def test_cut_detection_reads_any_chunk_size_the_same(prepared_grid):
    from lipsync.temporal import detect_cuts
    from lipsync.topology import load_topology

    raw = np.array(prepared_grid.array("landmarks_raw"))
    raw[40] = raw[41]  # a jump there and back: no cut
    raw[60:] += np.array([25.0, 0.0, 0.0], np.float32)  # a jump that stays: a cut at 60
    stable = load_topology().regions["stable"]
    want = detect_cuts(raw, stable, chunk=len(raw))
    assert np.flatnonzero(want).tolist() == [60]
    for chunk in (1, 2, 7, 59, 60):
        assert np.array_equal(detect_cuts(raw, stable, chunk=chunk), want), chunk


def test_geometry_on_disk_in_small_pieces_equals_the_stages_in_memory(tmp_path, grid_clip, tiny_pieces):
    """Stages 2-4 with their arrays on disk, read 3 frames and 8 vertices at a time, against the
    same stages on arrays in memory: the raw track, filled landmarks, poses, vertices and
    landmarks are equal to the bit, on the fixture with a tracking gap and a cut."""
    from conftest import ffmpeg
    from lipsync.preprocessing.options import PreprocessOptions
    from lipsync.preprocessing.reference import normalize_pose
    from lipsync.preprocessing.track import clean_track, probe_video, track_video
    from lipsync.topology import load_topology

    video = tmp_path / "edited.mp4"
    ffmpeg("-i", str(grid_clip), "-vf",
           "drawbox=x=0:y=0:w=iw:h=ih:color=gray:t=fill:enable='between(n,20,24)',"
           "crop=320:288:x='if(gte(n,50),40,0)':y=0", "-c:v", "libx264", "-crf", "16", "-an", str(video))
    options = PreprocessOptions(require_audio=False)
    topo = load_topology()
    info = probe_video(video, options)
    results = []
    for folder in (None, tmp_path / "disk"):
        if folder is not None:
            folder.mkdir()
        track = track_video(info, options, lambda *a: None, folder=folder)
        clean = clean_track(track, info, topo, options, folder=folder)
        pose = normalize_pose(clean, info, topo, options, folder=folder)
        results.append((track, clean, pose))
    (t0, c0, p0), (t1, c1, p1) = results
    assert isinstance(p1.vertices, FrameArray) and isinstance(t1.landmarks, FrameArray)
    assert np.flatnonzero(c0.cuts).tolist() == [50] and c0.interpolated[20:25].all()
    same = lambda a, b: np.array_equal(np.asarray(a), read_frames(b, slice(0, len(b))), equal_nan=True)  # noqa: E731
    assert same(t0.landmarks, t1.landmarks) and np.array_equal(t0.tracked, t1.tracked)
    assert same(c0.landmarks, c1.landmarks) and np.array_equal(c0.valid, c1.valid)
    assert p0.reference_frame == p1.reference_frame and np.array_equal(p0.candidates, p1.candidates)
    assert np.array_equal(p0.reference, p1.reference)
    for f in ("scale", "rotation", "translation"):
        assert np.array_equal(getattr(p0.pose, f), getattr(p1.pose, f), equal_nan=True), f
    assert same(p0.vertices, p1.vertices) and same(p0.landmarks, p1.landmarks)
    assert sorted(p.name for p in (tmp_path / "disk").iterdir()) == [
        ".filled_landmarks.npy", "landmarks.npy", "landmarks_raw.npy", "vertices.npy"]


def test_a_prepared_clip_keeps_no_scratch_files(prepared_grid):
    from lipsync.prepared import ARRAYS

    names = {p.name for p in prepared_grid.path.iterdir()}
    assert not [n for n in names if n.startswith(".")]
    assert {f"{k}.npy" for k in ARRAYS} <= names
