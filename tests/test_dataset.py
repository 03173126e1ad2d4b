"""The evaluation of a dataset of speakers on Ray (``python -m eval.run --dataset``): the dataset
file, pooled numbers equal to serial per-speaker runs, a speaker that fails alone, resuming after
Ctrl-C, a worker killed mid-training, and (slow) a real two-node cluster."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FIXTURES, GRID_CLIP, ROOT, ffmpeg, free_port
from lipsync.common import LipsyncError

METHODS = ["ground_truth", "frozen", "lipsync3d", "no_mouth_bank"]
METRICS = ["lmd", "mouth_corr", "sharpness"]
SETTINGS = ("methods: [" + ", ".join(METHODS) + "]\nmetrics: [" + ", ".join(METRICS) + "]\n"
            "preset: tiny\nmax_test_clips: 1\ncross_audio: false\nside_by_side: false\n")


def _env() -> dict:
    # one torch thread per task, as the Ray tasks use: torch's float sums depend on the thread count
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _eval(args: list[str], **kw) -> subprocess.Popen:
    # Ctrl-C reaches the run even when the tests themselves run in the background (which ignores SIGINT)
    return subprocess.Popen([sys.executable, "-m", "eval.run", *args, "--quiet"], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kw)


@pytest.fixture(scope="module")
def speakers(tmp_path_factory) -> dict:
    """Two real speakers' clips (the GRID fixture, and 4 s of the other GRID fixture) and a video without a face."""
    d = tmp_path_factory.mktemp("speakers")
    ffmpeg("-ss", "6", "-i", str(FIXTURES / "grid_s1_19clips.mp4"), "-t", "4", "-c:v", "libx264", "-crf", "12",
           "-c:a", "aac", str(d / "b.mp4"))
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=3", "-f", "lavfi", "-i",
           "sine=frequency=300:duration=3", "-c:v", "libx264", "-c:a", "aac", "-shortest", str(d / "noface.mp4"))
    return {"a": GRID_CLIP, "b": d / "b.mp4", "noface": d / "noface.mp4"}


def _dataset(path: Path, speakers: dict, names: list[str], extra: str = "") -> Path:
    text = SETTINGS + extra + "speakers:\n" + "".join(f"  - name: {n}\n    video: {speakers[n]}\n" for n in names)
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def dataset_run(tmp_path_factory, speakers):
    """Two speakers and the faceless video through an embedded local Ray with 2 CPUs (in this process)."""
    from eval.run import main

    d = tmp_path_factory.mktemp("dataset")
    spec = _dataset(d / "dataset.yaml", speakers, ["a", "b", "noface"])
    out = d / "results"
    rc = main(["--dataset", str(spec), "--out", str(out), "--num-cpus", "2", "--quiet"])
    return spec, out, rc


def test_dataset_file_is_checked_in_one_sentence(tmp_path, speakers):
    from eval.dataset import load_dataset

    bad = {
        "speakers: []\n": "lists no speakers",
        "speakers:\n  - name: a\n": "names no video",
        "speakers:\n  - name: ../x\n    video: a.mp4\n": "must be letters",
        "speakers:\n  - {name: a, video: a.mp4}\n  - {name: A, video: b.mp4}\n": "two speakers are called",
        "speakers:\n  - {name: a, video: a.mp4, colour: red}\n": "unknown key 'colour'",
        "preset: huge\nspeakers:\n  - {name: a, video: a.mp4}\n": "preset must be",
        "sweeps: {train_seconds: [-3]}\nspeakers:\n  - {name: a, video: a.mp4}\n": "above 0",
        "speakers: [": "not valid YAML",
    }
    for text, message in bad.items():
        f = tmp_path / "d.yaml"
        f.write_text(text)
        with pytest.raises(LipsyncError, match=message):
            load_dataset(f)
    ok = tmp_path / "ok.yaml"
    ok.write_text("test_fraction: 0.3\nsweeps: {train_seconds: [2, 1]}\nspeakers:\n"
                  "  - {name: s1, video: clips/s1.mp4, clip_seconds: 2}\n")
    ds = load_dataset(ok)
    assert ds.speakers[0].video == (tmp_path / "clips" / "s1.mp4").resolve()
    assert ds.settings == {"test_fraction": 0.3} and ds.speakers[0].settings == {"clip_seconds": 2.0}
    assert ds.train_seconds == (1.0, 2.0)
    # a folder of speakers: one subfolder (with its test/ clips) or one video each
    folder = tmp_path / "folder"
    (folder / "alice" / "test").mkdir(parents=True)
    (folder / "alice" / "talk.mp4").write_bytes(b"x")
    (folder / "bob.mp4").write_bytes(b"x")
    ds = load_dataset(folder)
    assert [s.name for s in ds.speakers] == ["alice", "bob"]
    assert ds.speakers[0].test_clips == (folder / "alice" / "test").resolve() and ds.speakers[1].test_clips is None
    (folder / "alice" / "other.mp4").write_bytes(b"x")
    with pytest.raises(LipsyncError, match="exactly one training video"):
        load_dataset(folder)


def test_dataset_run_pools_speakers_and_equals_serial_runs(dataset_run, speakers):
    """Each speaker's results equal ``eval.run --video`` on that speaker alone (same thread count),
    and the pooled numbers equal pooling those serial runs."""
    from eval.dataset import load_dataset, pool

    spec, out, rc = dataset_run
    assert rc == 1  # one speaker failed
    doc = json.loads((out / "pooled.json").read_text())
    serial = {}
    for name in ("a", "b"):
        folder = out.parent / f"serial_{name}"
        p = _eval(["--video", str(speakers[name]), "--methods", *METHODS, "--metrics", *METRICS, "--preset", "tiny",
                   "--max-test-clips", "1", "--no-cross-audio", "--no-video", "--out", str(folder)])
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        serial[name] = json.loads((folder / "results.json").read_text())
        ours = json.loads((out / "speakers" / name / "results.json").read_text())
        assert ours["results"] == serial[name]["results"], name
        assert ours["per_clip"].keys() == serial[name]["per_clip"].keys()
    reports = {n: {"results": d["results"], "cross_audio": d["cross_audio"], "claims": d["claims"],
                   "metrics": d["metrics"], "results_json": "", "test_clips": 1, "train_seconds": 0.0}
               for n, d in serial.items()}
    again = pool(load_dataset(spec), reports, {"noface": "failed"}, seed=0)
    assert again["results"] == doc["results"] and again["claims"] == doc["claims"]
    assert set(doc["results"]) == set(METHODS) and doc["results"]["lipsync3d"]["lmd"]["n_speakers"] == 2
    assert doc["results"]["lipsync3d"]["lmd"]["ci95"] is not None  # an interval over the two speakers
    # the faceless speaker failed alone, with one sentence
    assert doc["speakers"]["a"]["status"] == doc["speakers"]["b"]["status"] == "done"
    failed = doc["speakers"]["noface"]
    assert failed["status"] == "failed" and "noface/prepare failed:" in failed["error"] and "\n" not in failed["error"]
    md = (out / "pooled.md").read_text()
    assert "Pooled results over 2 of 3 speakers" in md and "**failed**" in md and "## Per speaker" in md
    for f in ("pooled.csv", "per_speaker.csv", "plots/pooled_metrics.png", "speakers/a/report.md"):
        assert (out / f).stat().st_size > 0, f
    eng = doc["engine"]
    assert eng["cpus"] == 2 and eng["retries"] == {} and eng["counts"]["failed"] == 1
    progress = json.loads((out / "progress.json").read_text())
    assert progress["finished"] and progress["tasks"]["a/fit/lipsync3d"]["status"] == "done"


def _artifacts(out: Path) -> dict[str, float]:
    """Every prepared clip, trained model, rendered video and metric value under the run, with its mtime."""
    keep = (".npy", ".safetensors", ".mp4", ".json")
    skip = ("results.json", "pooled.json", "progress.json", "summary.json")
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*")
            if p.is_file() and p.suffix in keep and p.name not in skip and "engine" not in p.parts
            and not p.name.endswith(".frames.npy")}  # decoded frames: scratch of a measurement in progress


def test_a_second_run_recomputes_nothing(dataset_run):
    from eval.run import main

    spec, out, _ = dataset_run
    before = _artifacts(out)
    assert any(k.endswith("model.safetensors") for k in before) and any("/videos/" in k for k in before)
    assert main(["--dataset", str(spec), "--out", str(out), "--num-cpus", "2", "--quiet"]) == 1
    assert _artifacts(out) == before
    doc = json.loads((out / "pooled.json").read_text())
    fits = json.loads((out / "speakers" / "a" / "results.json").read_text())["methods"]
    assert fits["lipsync3d"]["cached"] is True and doc["speakers"]["a"]["status"] == "done"


def test_training_length_sweep_pools_each_method_over_speakers(dataset_run, speakers):
    """``sweeps: train_seconds``: every method also trained on the first N seconds of each speaker's
    training footage; the main runs are reused from the earlier run."""
    from eval.run import main

    _, out, _ = dataset_run
    spec = _dataset(out.parent / "sweep.yaml", speakers, ["a", "b"], extra="sweeps: {train_seconds: [2.2]}\n")
    assert main(["--dataset", str(spec), "--out", str(out), "--num-cpus", "2", "--quiet"]) == 0
    doc = json.loads((out / "pooled.json").read_text())
    line = doc["sweep"]["lmd"]["lipsync3d"]
    assert [e["train_seconds"] for e in line][0] == 2.2 and line[-1]["all"] and len(line) == 2
    assert all(e["n_speakers"] == 2 for e in line) and line[0]["used_seconds"] < line[1]["used_seconds"]
    assert set(doc["sweep"]["mouth_corr"]) == set(METHODS)
    for name in ("a", "b"):
        cut = json.loads((out / "speakers" / name / "sweeps" / "train_2.2s" / "results.json").read_text())
        assert cut["protocol"]["train_seconds"] == pytest.approx(2.2, abs=0.05)
    assert (out / "plots" / "sweep_train_seconds.png").stat().st_size > 1000
    assert "## Training-length sweep" in (out / "pooled.md").read_text()


def _wait_for(progress: Path, proc: subprocess.Popen, test, timeout: float = 300.0) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            state = json.loads(progress.read_text())
        except (OSError, ValueError):
            state = None
        if state and test(state["tasks"]):
            return state["tasks"]
        time.sleep(0.1)
    proc.kill()
    pytest.fail("the run never reached the expected state")


def test_ctrl_c_stops_cleanly_and_the_next_run_resumes(tmp_path, speakers, dataset_run):
    spec = _dataset(tmp_path / "one.yaml", speakers, ["a"])
    out = tmp_path / "results"
    p = _eval(["--dataset", str(spec), "--out", str(out), "--num-cpus", "2"])
    # interrupted while training (seconds long, so the run cannot end first), after the preparation
    _wait_for(out / "progress.json", p, lambda t: t["a/fit/lipsync3d"]["status"] == "running")
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "run the same command again" in err, err
    finished = _artifacts(out)
    assert any("/prepared-" in k and k.endswith(".npy") for k in finished)
    p = _eval(["--dataset", str(spec), "--out", str(out), "--num-cpus", "2"])
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    after = _artifacts(out)
    assert all(after[k] == finished[k] for k in finished)  # nothing finished was made again
    _, first, _ = dataset_run
    ours = json.loads((out / "speakers" / "a" / "results.json").read_text())["results"]
    assert ours == json.loads((first / "speakers" / "a" / "results.json").read_text())["results"]


def test_a_worker_killed_mid_training_is_retried_with_identical_results(tmp_path, speakers, dataset_run):
    spec = _dataset(tmp_path / "one.yaml", speakers, ["a"])
    out = tmp_path / "results"
    p = _eval(["--dataset", str(spec), "--out", str(out), "--num-cpus", "2"])
    tasks = _wait_for(out / "progress.json", p, lambda t: t["a/fit/lipsync3d"]["status"] == "running")
    time.sleep(1.0)  # into the training
    os.kill(tasks["a/fit/lipsync3d"]["pid"], signal.SIGKILL)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    doc = json.loads((out / "pooled.json").read_text())
    assert doc["engine"]["retries"] == {"a/fit/lipsync3d": 2}
    assert "a/fit/lipsync3d (2 attempts)" in (out / "pooled.md").read_text()
    _, first, _ = dataset_run
    ours = json.loads((out / "speakers" / "a" / "results.json").read_text())["results"]
    assert ours == json.loads((first / "speakers" / "a" / "results.json").read_text())["results"]


def _store_artifacts(bucket: str, prefix: str) -> dict[str, int]:
    import pyarrow.fs as pafs

    fs, _ = pafs.FileSystem.from_uri(f"s3://{bucket}")
    infos = fs.get_file_info(pafs.FileSelector(f"{bucket}/{prefix}", recursive=True))
    keep = (".npy", ".safetensors", ".mp4", ".mpg", ".json")
    return {i.path: i.mtime_ns for i in infos if i.type == pafs.FileType.File and i.path.endswith(keep)
            and "/engine/" not in i.path and not i.path.endswith(("/pooled.json", "/progress.json", "/results.json"))}


def test_an_object_store_root_holds_the_whole_run(tmp_path, speakers, dataset_run, s3_bucket, monkeypatch):
    """``--out s3://...``: the tasks work in a node-local mirror and the store ends up with every
    artifact, the speakers' results (equal to the local run's) and the pooled report; a fresh node
    (an empty mirror) resumes from the store alone and makes nothing again."""
    import pyarrow.fs as pafs

    from eval.run import main

    spec = _dataset(tmp_path / "one.yaml", speakers, ["a"])
    uri = f"s3://{s3_bucket}/runs/one"
    monkeypatch.setenv("LIPSYNC_MIRROR", str(tmp_path / "node1"))
    assert main(["--dataset", str(spec), "--out", uri, "--num-cpus", "2", "--quiet"]) == 0
    fs, _ = pafs.FileSystem.from_uri(uri)

    def read(rel: str) -> dict:
        with fs.open_input_stream(f"{s3_bucket}/runs/one/{rel}") as f:
            return json.loads(f.read())

    _, first, _ = dataset_run
    assert read("speakers/a/results.json")["results"] == json.loads(
        (first / "speakers" / "a" / "results.json").read_text())["results"]
    pooled = read("pooled.json")
    assert pooled["speakers"]["a"]["results"] == f"{uri}/speakers/a/results.json"
    moved = pooled["engine"]["transfers"]
    assert moved["sent"] > 50 and moved["sent_mb"] > 10 and pooled["engine"]["storage"] == uri
    made = _store_artifacts(s3_bucket, "runs/one")
    assert any(k.endswith("model.safetensors") for k in made) and any("/inputs/" in k for k in made)
    assert fs.get_file_info(f"{s3_bucket}/runs/one/pooled.md").size > 0
    assert fs.get_file_info(f"{s3_bucket}/runs/one/plots/pooled_metrics.png").size > 0
    # another machine, nothing in its mirror
    monkeypatch.setenv("LIPSYNC_MIRROR", str(tmp_path / "node2"))
    assert main(["--dataset", str(spec), "--out", uri, "--num-cpus", "2", "--quiet"]) == 0
    assert _store_artifacts(s3_bucket, "runs/one") == made
    assert read("speakers/a/results.json")["methods"]["lipsync3d"]["cached"] is True
    assert read("pooled.json")["engine"]["transfers"]["fetched_mb"] > 10  # the new mirror was filled from the store
    # only dataset runs take a URI; an unreachable store is one sentence
    p = _eval(["--video", str(speakers["a"]), "--out", uri])
    assert p.wait(timeout=120) == 2 and "only --dataset runs write to an object store" in p.communicate()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    p = subprocess.run([sys.executable, "-m", "eval.run", "--dataset", str(spec), "--out", "s3://lipsync-test/x"],
                       cwd=ROOT, env={**_env(), "AWS_RETRY_MODE": "standard", "AWS_MAX_ATTEMPTS": "1"},
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "Cannot reach the storage root s3://lipsync-test/x" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


def _pids_with(text: str) -> list[int]:
    """Processes whose command line contains ``text``."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            out.append(int(pid))
    return out


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                stat = Path(f"/proc/{p}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(p))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _kill(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


@pytest.fixture
def two_nodes():
    """A head and a worker node joined with ``ray start`` on loopback ports, one CPU each; yields
    (the head's address, the worker node's raylet process id). Ends only this cluster's processes."""
    ray = Path(sys.executable).parent / "ray"
    temp = Path("/tmp") / f"ray-two-node-{os.getpid()}"
    port, worker_port = free_port(), free_port()
    env = _env()
    try:
        subprocess.run([str(ray), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                        "--num-cpus", "1", "--temp-dir", str(temp), "--include-dashboard", "false",
                        "--disable-usage-stats"], check=True, env=env, capture_output=True, timeout=120)
        subprocess.run([str(ray), "start", "--address", f"127.0.0.1:{port}", "--node-ip-address", "127.0.0.1",
                        "--num-cpus", "1", "--node-manager-port", str(worker_port), "--disable-usage-stats"],
                       check=True, env=env, capture_output=True, timeout=120)
        raylet = [p for p in _pids_with(f"--node_manager_port={worker_port}") if "raylet" in
                  Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")]
        assert len(raylet) == 1, raylet
        yield f"127.0.0.1:{port}", raylet[0]
    finally:
        _kill(_pids_with(str(temp)))


@pytest.mark.slow
def test_a_two_node_cluster_runs_the_same_dataset(tmp_path, speakers, dataset_run, two_nodes):
    """The dataset through ``--ray-address`` on a real two-node cluster gives the embedded run's results."""
    address, _ = two_nodes
    _, first, _ = dataset_run
    spec = _dataset(tmp_path / "two.yaml", speakers, ["a", "b"])
    out = tmp_path / "results"
    p = _eval(["--dataset", str(spec), "--out", str(out), "--ray-address", address])
    _, err = p.communicate(timeout=900)
    assert p.returncode == 0, err
    doc = json.loads((out / "pooled.json").read_text())
    assert doc["engine"]["nodes"] == 2 and doc["engine"]["cpus"] == 2
    for name in ("a", "b"):
        ours = json.loads((out / "speakers" / name / "results.json").read_text())["results"]
        assert ours == json.loads((first / "speakers" / name / "results.json").read_text())["results"]


@pytest.mark.slow
def test_a_node_that_leaves_mid_run_has_its_tasks_run_elsewhere(tmp_path, speakers, dataset_run, two_nodes):
    """The worker node dies (its raylet and its workers killed) while it trains: Ray runs its tasks
    again on the head and the results are those of the embedded run."""
    address, raylet = two_nodes
    _, first, _ = dataset_run
    spec = _dataset(tmp_path / "two.yaml", speakers, ["a", "b"])
    out = tmp_path / "results"
    p = _eval(["--dataset", str(spec), "--out", str(out), "--ray-address", address])

    def training_on_worker_node(tasks):
        on_node = set(_descendants(raylet))
        return any(k.endswith("/fit/lipsync3d") and t["status"] == "running" and t.get("pid") in on_node
                   for k, t in tasks.items())

    _wait_for(out / "progress.json", p, training_on_worker_node)
    time.sleep(1.0)
    _kill([raylet, *_descendants(raylet)])
    _, err = p.communicate(timeout=900)
    assert p.returncode == 0, err
    doc = json.loads((out / "pooled.json").read_text())
    assert doc["engine"]["retries"]  # the killed node's task(s) ran again
    for name in ("a", "b"):
        ours = json.loads((out / "speakers" / name / "results.json").read_text())["results"]
        assert ours == json.loads((first / "speakers" / name / "results.json").read_text())["results"]


def _double(x: int) -> int:
    return 2 * x


def _refuse(x: int) -> int:
    raise LipsyncError(f"{x} is not welcome here.")


def _collect(*values):
    from lipsync.engine import Failed

    return [f"failed: {v.error}" if isinstance(v, Failed) else v for v in values]


def test_engine_skips_what_needs_a_failure_and_reports_it(tmp_path):
    """The graph runner alone: results flow to dependents, an expected failure is not retried and
    skips its dependents with the root cause, a tolerant task sees the failure."""
    from ray import cloudpickle

    from lipsync.engine import Result, Task, connect, disconnect, run_graph

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    info = connect(num_cpus=2)
    try:
        out = run_graph([Task("a", _double, (3,)), Task("b", _double, (Result("a"),)),
                         Task("bad", _refuse, (7,)), Task("after_bad", _double, (Result("bad"),)),
                         Task("after_after", _double, (Result("after_bad"),)),
                         Task("all", _collect, (Result("b"), Result("after_after")), tolerate_failures=True)],
                        tmp_path, show=False)
    finally:
        disconnect(info)
    assert out["b"].value == 12 and out["b"].status == "done" and out["b"].attempts == 1
    assert out["bad"].status == "failed" and out["bad"].error == "7 is not welcome here." and out["bad"].attempts == 1
    assert out["after_bad"].status == out["after_after"].status == "skipped"
    assert out["after_after"].error == "bad failed: 7 is not welcome here."
    assert out["all"].value == [12, "failed: bad failed: 7 is not welcome here."]
    state = json.loads((tmp_path / "progress.json").read_text())
    assert state["finished"] and state["counts"]["skipped"] == 2 and state["tasks"]["a"]["pid"] > 0


def test_a_failure_to_stop_ray_does_not_hide_the_interruption(monkeypatch):
    """Ctrl-C on its way up through ``disconnect`` stays a Ctrl-C (the command exits 130 with its
    message) even when stopping Ray fails; after a clean run the same failure is reported."""
    import ray

    from lipsync.engine import disconnect

    def broken():
        raise RuntimeError("the raylet is already gone")

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "shutdown", broken)
    with pytest.raises(KeyboardInterrupt):
        try:
            raise KeyboardInterrupt
        finally:
            disconnect({"started": True})
    with pytest.raises(RuntimeError):
        disconnect({"started": True})
