"""The storage root of Ray runs (``lipsync.storage``): a URI mirrored on each node, with the files
a task writes sent to the store and the ones it reads brought to its node. Two mirrors of one
store stand for two nodes."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from lipsync.common import LipsyncError
from lipsync.storage import Storage, is_uri


@pytest.fixture
def nodes(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    uri = f"file://{store}"
    return store, Storage.open(uri, mirror=tmp_path / "node_a"), Storage.open(uri, mirror=tmp_path / "node_b")


def _write(storage: Storage, rel: str, text: str) -> Path:
    p = storage.path(rel)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def test_a_task_on_one_node_hands_its_files_to_the_next_on_another(nodes):
    store, a, b = nodes
    scope = ["speakers/s1"]
    # node A: a task makes a model, with an atomic write's temporary file and a lock file beside it
    with a.synced(scope):
        _write(a, "speakers/s1/cache/model-abc/model.safetensors", "weights")
        _write(a, "speakers/s1/cache/.model.tmp-123.safetensors", "half")
        _write(a, "speakers/s1/cache/.fit-abc.lock", "")
        _write(a, "speakers/s1/cache/samples/.frames.tmp-decoded/c.frames.npy", "scratch")
        _write(a, "speakers/s2/other.json", "not in the scope")
    assert (store / "speakers/s1/cache/model-abc/model.safetensors").read_text() == "weights"
    assert not (store / "speakers/s1/cache/.model.tmp-123.safetensors").exists()
    assert not (store / "speakers/s1/cache/.fit-abc.lock").exists()
    assert not (store / "speakers/s1/cache/samples").exists()
    assert not (store / "speakers/s2").exists()
    # node B: the next task finds it, and rewrites a report that node A then sees
    _write(a, "speakers/s1/results.json", "old")
    a.push(scope, {})
    assert b.pull(scope) == 2
    assert b.path("speakers/s1/cache/model-abc/model.safetensors").read_text() == "weights"
    assert b.pull(scope) == 0  # nothing new: nothing fetched again
    time.sleep(1.1)  # past a store's one-second resolution of modification times
    with b.synced(scope):
        _write(b, "speakers/s1/results.json", "new")
        b.path("speakers/s1/cache/model-abc/model.safetensors").unlink()
    assert not (store / "speakers/s1/cache/model-abc/model.safetensors").exists()  # a deletion travels
    assert a.pull(scope) == 1 and a.path("speakers/s1/results.json").read_text() == "new"


def test_a_pull_never_replaces_a_newer_file_of_this_node(nodes):
    """A task still running on this node wrote a file the store has an older copy of: another task
    pulling meanwhile keeps this node's version."""
    store, a, b = nodes
    _write(b, "s/x.json", "from the store")
    b.push(["s"], {})
    time.sleep(1.1)
    _write(a, "s/x.json", "being written here")
    assert a.pull(["s"]) == 0 and a.path("s/x.json").read_text() == "being written here"


def test_staged_inputs_are_keyed_by_content(nodes, tmp_path):
    store, a, b = nodes
    video = tmp_path / "talk.mp4"
    video.write_bytes(b"video bytes")
    clips = tmp_path / "held_out"
    clips.mkdir()
    (clips / "c1.mp4").write_bytes(b"clip 1")
    first = a.stage(video)
    assert first.read_bytes() == b"video bytes" and first.is_relative_to(a.path("inputs"))
    assert b.stage(video) == b.path(a.rel(first))  # the same name from any node, and no second copy
    assert len(list((store / "inputs").iterdir())) == 1
    folder = a.stage(clips)
    assert (folder / "c1.mp4").read_bytes() == b"clip 1"
    video.write_bytes(b"other bytes")
    assert a.stage(video) != first  # another content, another name
    local = Storage.open(tmp_path / "plain")
    assert not local.remote and local.stage(video) == video and local.pull() == 0


def test_bad_roots_are_one_sentence(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(LipsyncError, match="is a file"):
        Storage.open(f"file://{f}")
    with pytest.raises(LipsyncError, match="is a file"):
        Storage.open(f)
    with pytest.raises(LipsyncError, match="Cannot open the storage root nosuch://"):
        Storage.open("nosuch://bucket/x")
    assert is_uri("s3://b/p") and is_uri("file:///tmp") and not is_uri("/tmp/x") and not is_uri("results")
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(LipsyncError, match="LIPSYNC_MIRROR"):
            Storage.open(f"file://{tmp_path}/store2", mirror=locked / "m")
