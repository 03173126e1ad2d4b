"""Shared fixtures: the bundled GRID clip, one prepared clip per session, and ways to make bad videos."""
from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from human_study.loadtest import free_port  # a free port of 127.0.0.1, for test servers
from lipsync.common import setup_cache_env

setup_cache_env()

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
GRID_CLIP = FIXTURES / "grid_s1_bgaa8p.mpg"
GRID_ALIGN = FIXTURES / "grid_s1_bgaa8p.align"
# ../shared/data beside the checkout; LIPSYNC_SHARED_DATA points elsewhere (a git worktree, another machine)
SHARED_DATA = Path(os.environ.get("LIPSYNC_SHARED_DATA", ROOT.parent / "shared" / "data"))
# The browser tests drive Debian's Chromium (Playwright's own download does not work offline);
# without the background-networking flags it keeps trying to reach Google's hosts.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def ffmpeg(*args: str) -> None:
    """Run ffmpeg quietly; fail the test with its message if it fails."""
    proc = subprocess.run([shutil.which("ffmpeg") or "ffmpeg", "-nostdin", "-v", "error", "-y", *args],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"ffmpeg {' '.join(args)} failed: {proc.stderr.strip()}")


@pytest.fixture(scope="session")
def grid_clip() -> Path:
    assert GRID_CLIP.is_file(), "the GRID fixture ships with the repository"
    return GRID_CLIP


@pytest.fixture(scope="session")
def prepared_grid(tmp_path_factory, grid_clip):
    """The bundled GRID clip preprocessed once per session (with previews and the raw atlas)."""
    from lipsync.preprocessing import PreprocessOptions, preprocess
    from lipsync.prepared import open_prepared

    out = tmp_path_factory.mktemp("prepared") / "grid"
    preprocess(grid_clip, out, options=PreprocessOptions(keep_raw_atlas=True))
    return open_prepared(out)


@pytest.fixture(scope="session")
def face_model(prepared_grid):
    """A real canonical face (reference vertices), its UV layout and the shipped topology."""
    from lipsync.topology import load_topology

    return {"vertices": np.array(prepared_grid.array("reference_vertices")),
            "uv": np.array(prepared_grid.array("uv")), "topo": load_topology()}


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the shared development data at {SHARED_DATA}, which is absent on this machine")
    return SHARED_DATA


def leftovers(folder: Path) -> list[str]:
    """Names of anything in ``folder`` (used to check that failures leave nothing behind)."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


GLTF_VALIDATOR = ROOT / "tools" / "gltf_validator" / "validate.js"
GLTF_VALIDATOR_PACKAGE = ROOT / ".cache" / "node" / "node_modules" / "gltf-validator"


def validate_glb(*paths) -> list[dict]:
    """Khronos glTF-Validator reports of ``paths`` (errors, warnings, infos, messages per file);
    skips the test, with the reason, where Node.js or the validator (``make`` installs it) is missing."""
    import json

    node = shutil.which("node")
    if node is None or not GLTF_VALIDATOR_PACKAGE.is_dir():
        pytest.skip("the Khronos glTF validator needs Node.js and 'make' to install gltf-validator from npm")
    proc = subprocess.run([node, str(GLTF_VALIDATOR), *map(str, paths)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="session")
def grid(grid_clip):
    """The GRID fixture's frames, audio, MediaPipe landmarks and canonical face."""
    from eval.core import read_video
    from eval.metrics.lipsync import track_landmarks
    from lipsync.media import extract_aligned_audio, probe
    from lipsync.preprocessing.reference import canonical_reference, choose_reference
    from lipsync.topology import load_topology

    frames = read_video(grid_clip)
    audio = extract_aligned_audio(probe(grid_clip), len(frames))
    lm = track_landmarks(frames, 25.0)
    topo = load_topology()
    valid = np.isfinite(lm).all(axis=(1, 2))
    _, best = choose_reference(lm, valid, topo, 10)
    return {"frames": frames, "audio": audio, "landmarks": lm, "valid": valid,
            "canonical": canonical_reference(lm, best, topo), "topo": topo}


@contextmanager
def live_server(model_dir: Path, target: Path):
    """``lipsync serve`` of ``model_dir`` into ``target`` on a free loopback port: yields (its base URL,
    its /live/status document) once it answers; stopped on the way out."""
    import json
    import sys
    import time
    import urllib.request

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lipsync", "serve", "--model", str(model_dir), "--target", str(target),
                             "--port", str(port), "--renderer", "gl"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        for _ in range(900):
            try:
                status = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/live/status", timeout=1).read())
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()[1][-2000:]
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", status
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture
def s3_bucket(monkeypatch):
    """An S3 endpoint on a loopback port (moto's server) with an empty bucket; the Ray workers find
    it through the environment, as on a cluster."""
    import logging

    moto_server = pytest.importorskip("moto.server", reason="moto[server] is a test dependency")
    import boto3

    port = free_port()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for k, v in {"AWS_ACCESS_KEY_ID": "lipsync", "AWS_SECRET_ACCESS_KEY": "lipsync", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(k, v)
    boto3.client("s3").create_bucket(Bucket="lipsync-test")
    try:
        yield "lipsync-test"
    finally:
        server.stop()


def read_store(uri: str) -> bytes:
    """The bytes of one object of a store (``s3://bucket/key``)."""
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    with fs.open_input_stream(path) as f:
        return f.read()
