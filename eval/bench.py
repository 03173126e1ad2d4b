"""Performance benchmarks.

    python -m eval.bench preprocess VIDEO [--repeat N]
    python -m eval.bench train PREPARED_DIR [--preset quick]
    python -m eval.bench synthesize --model MODEL_DIR --audio FILE [--target VIDEO]
    python -m eval.bench stream --model MODEL_DIR --audio FILE [--target VIDEO] [--chunk-ms 20] [--sessions N]
    python -m eval.bench ray --dataset DATASET [--cpus 1 2] [--projection-from RESULTS.json] [--store URI]

``preprocess`` reports frames per second for each stage and overall; ``train`` the seconds until
the preset's final validation loss is first reached (within 2%) and in all; ``synthesize`` output
frames per second end to end and per stage; ``stream`` feeds the audio to a live session in
real-time chunks and reports the latency from a chunk's arrival to the first frame that shows it
(split into the model's lookahead and computing) and the frames per second it sustained; ``ray``
runs a dataset evaluation from scratch on an embedded local Ray confined to 1, 2, ... cores (the
speed-up), times Ray's scheduling overhead per task, and projects a large benchmark's wall time on
a cluster from the per-task times of a single-speaker ``eval.run``. Each reports the peak resident memory of the process
and of its children (ffmpeg). Results are printed and can be written as JSON (``--json``) with
the machine and versions, so figures can be compared.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path


def _peak_mib() -> dict:
    self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"process_mib": round(self_kib / 1024, 1), "children_mib": round(child_kib / 1024, 1)}


def repeated_video(video: str, times: int, folder: Path) -> Path:
    """``video`` played ``times`` times in a row (stream copy, so quick): a long input for memory
    and throughput figures. Each join is a cut back to the first frame."""
    import subprocess

    from lipsync.common import LipsyncError, path_arg
    from lipsync.media import _tool

    listing = folder / "repeat.txt"
    quoted = path_arg(video).replace("'", "'\\''")
    listing.write_text("".join(f"file '{quoted}'\n" for _ in range(times)))
    out = folder / f"repeated{Path(video).suffix or '.mp4'}"
    proc = subprocess.run([_tool("ffmpeg"), "-nostdin", "-v", "error", "-y", "-f", "concat",
                           "-safe", "0", "-i", path_arg(listing), "-c", "copy", path_arg(out)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise LipsyncError(f"{video} could not be repeated {times} times ({proc.stderr.strip() or 'ffmpeg failed'}).")
    return out


def bench_preprocess(video: str, *, atlas_size: int = 256, previews: bool = True, keep: str | None = None,
                     workers: int = 0, repeat: int = 1) -> dict:
    from lipsync.preprocessing import PreprocessOptions, preprocess
    from lipsync.prepared import open_prepared

    work = Path(tempfile.mkdtemp(prefix="lipsync-bench-"))
    out = Path(keep) if keep else work / "prepared"
    source = video
    try:
        if repeat > 1:
            video = str(repeated_video(video, repeat, work))
        t0 = time.perf_counter()
        preprocess(video, out, options=PreprocessOptions(atlas_size=atlas_size, previews=previews, workers=workers),
                   overwrite=True)
        wall = time.perf_counter() - t0
        m = open_prepared(out).info
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n = m.frames
    stages = {k: {"seconds": v, "frames_per_s": round(n / v, 1) if v > 0 else None,
                  "cpu_s": m.cpu_s.get(k, {}).get("process"), "decoder_cpu_s": m.cpu_s.get(k, {}).get("decoder")}
              for k, v in m.timings_s.items() if k != "total"}
    return {
        "benchmark": "preprocess",
        "workers": m.workers,
        "video": str(source) + (f" x{repeat}" if repeat > 1 else ""),
        "frames": n,
        "resolution": f"{m.width}x{m.height}",
        "fps_source": m.fps,
        "atlas_size": atlas_size,
        "previews": previews,
        "stages": stages,
        "total_s": round(wall, 3),
        "overall_frames_per_s": round(n / wall, 1),
        "realtime_factor": round((n / m.fps) / wall, 2),
        "peak_memory": _peak_mib(),
        "machine": _machine(),
        "versions": m.versions,
    }


def _machine() -> dict:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def bench_train(prepared: str, *, preset: str = "quick", keep: str | None = None, device: str = "auto") -> dict:
    from lipsync.training import train

    work = Path(tempfile.mkdtemp(prefix="lipsync-bench-"))
    out = Path(keep) if keep else work / "model"
    try:
        t0 = time.perf_counter()
        folder = train(prepared, out, preset=preset, device=device)
        wall = time.perf_counter() - t0
        rows, summary = folder.log_rows(), folder.summary()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    final = float(rows[-1]["val_loss"])
    reached = next(float(r["seconds"]) for r in rows if float(r["val_loss"]) <= 1.02 * final)
    return {"benchmark": "train", "prepared": str(prepared), "preset": preset, "device": summary.device,
            "steps": summary.steps, "train_seconds": summary.seconds, "wall_seconds": round(wall, 1),
            "seconds_to_final_val_loss": reached, "final_val_loss": round(final, 5),
            "val_geometry": summary.val_geometry, "val_texture": summary.val_texture,
            "steps_per_second": round(summary.steps / summary.seconds, 2), "peak_memory": _peak_mib(),
            "machine": _machine()}


def bench_synthesize(model_dir: str, audio: str, *, target: str | None = None, renderer: str = "auto") -> dict:
    from lipsync.model_io import load_model

    model = load_model(model_dir)
    work = Path(tempfile.mkdtemp(prefix="lipsync-bench-"))
    try:
        t0 = time.perf_counter()
        r = model.synthesize(out=work / "out.mp4", audio=audio, target=target, renderer=renderer)
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    t = r.timings_s
    stages = {k: {"seconds": v, "frames_per_s": round(r.frames / v, 1) if v > 0 else None}
              for k, v in t.items() if k != "total"}
    return {"benchmark": "synthesize", "model": str(model_dir), "audio": str(audio), "target": r.target,
            "frames": r.frames, "fps_video": r.fps, "resolution": r.resolution, "renderer": r.renderer,
            "stages": stages, "total_s": round(wall, 3), "overall_frames_per_s": round(r.frames / wall, 1),
            "peak_memory": _peak_mib(), "machine": _machine()}


def _feed_stream(session, speech, *, chunk_ms: float, realtime: bool, encode: bool) -> dict:
    """One live stream: ``speech`` pushed in ``chunk_ms`` chunks, each at the moment it would arrive
    (``realtime``); per-chunk latencies and per-frame compute times in seconds."""
    step = max(1, int(round(chunk_ms / 1000 * 16000)))
    arrivals, ready, completed_by = [], {}, {}
    if encode:
        from lipsync.live_server import encode_frame

    def take(frames, due):
        for f in frames:
            if encode:
                encode_frame(f, 80)
            ready[f.index], completed_by[f.index] = time.perf_counter() if encode else f.ready_s, due

    start = time.perf_counter()
    try:
        for i in range(0, len(speech), step):
            chunk = speech[i:i + step]
            due = start + (i + len(chunk)) / 16000 if realtime else time.perf_counter()  # its last sample is in
            now = time.perf_counter()
            if now < due:
                time.sleep(due - now)
            arrivals.append((i, due))
            take(session.push(chunk), due)
        end_due = start + len(speech) / 16000 if realtime else time.perf_counter()
        take(session.finish(), max(end_due, time.perf_counter() - 1e-9))
        wall = time.perf_counter() - start
    finally:
        session.close()
    latency = []
    for first, due in arrivals:
        t = int(first / 16000 * session.fps)  # the frame that shows the chunk's first sample
        if t in ready:
            latency.append(ready[t] - due)
    return {"latency": latency, "compute": [ready[t] - completed_by[t] for t in ready], "frames": len(ready), "wall": wall}


def bench_stream(model_dir: str, audio: str, *, target: str | None = None, renderer: str = "auto",
                 chunk_ms: float = 20.0, realtime: bool = True, sessions: int = 1) -> dict:
    """Feed ``audio`` to ``sessions`` concurrent ``LiveSession``s sharing one prepared target (as
    ``lipsync serve`` does), each in its own thread, in ``chunk_ms`` chunks at the moment they would
    arrive from a live source (``realtime``; else as fast as a session takes them). With more than
    one session each frame is also encoded as JPEG, as the server sends it."""
    import threading

    import numpy as np

    from lipsync.common import LipsyncError
    from lipsync.media import load_audio
    from lipsync.model_io import load_model
    from lipsync.synthesis import LiveTarget

    if sessions < 1:
        raise LipsyncError("--sessions must be at least 1.")
    model = load_model(model_dir)
    speech = load_audio(audio)
    t_prep = time.perf_counter()
    live = LiveTarget(model, target)
    prepare_s = time.perf_counter() - t_prep
    results, errors = [None] * sessions, []
    try:
        made = [model.live(live, renderer=renderer) for _ in range(sessions)]

        def run(k):
            try:
                results[k] = _feed_stream(made[k], speech, chunk_ms=chunk_ms, realtime=realtime, encode=sessions > 1)
            except Exception as err:  # noqa: BLE001 - reported below
                errors.append(err)

        threads = [threading.Thread(target=run, args=(k,)) for k in range(sessions)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        live.close()
    if errors:
        raise errors[0]
    fps = made[0].fps
    pct = lambda v: {"p50": round(1000 * float(np.percentile(v, 50)), 1),  # noqa: E731
                     "p95": round(1000 * float(np.percentile(v, 95)), 1), "max": round(1000 * float(np.max(v)), 1)}
    per_session = [round(r["frames"] / r["wall"], 1) for r in results]
    out = {"benchmark": "stream", "model": str(model_dir), "audio": str(audio), "target": str(live.target.source),
           "resolution": f"{live.target.width}x{live.target.height}", "fps_video": fps, "frames": results[0]["frames"],
           "chunk_ms": chunk_ms, "realtime": realtime, "sessions": sessions, "jpeg": sessions > 1,
           "lookahead_ms": round(1000 * made[0].lookahead_s, 1),
           "latency_ms": pct(sum((r["latency"] for r in results), [])),
           "compute_ms": pct(sum((r["compute"] for r in results), [])), "prepare_s": round(prepare_s, 2),
           "wall_s": round(max(r["wall"] for r in results), 2), "audio_s": round(len(speech) / 16000, 2),
           "sustained_frames_per_s": min(per_session), "sessions_frames_per_s": per_session,
           "peak_memory": _peak_mib(), "machine": _machine()}
    return out


def _noop(i: int) -> int:
    return i


def bench_ray(dataset: str, *, cpus: list[int], keep: str | None = None, projection_from: str | None = None,
              overhead_tasks: int = 200, store: str | None = None) -> dict:
    """A dataset evaluation from scratch on a local Ray of each CPU count in ``cpus`` (the process
    tree confined to that many cores, so a 1-CPU run cannot borrow the others); Ray's overhead per
    task (no-op tasks through the same graph runner); and the projection (``project_benchmark``).
    With ``store`` (an object-store URI), the same evaluation once more with the most CPUs into a
    new prefix under it (removed afterwards unless ``keep``), against the folder run's wall time."""
    from eval.config import EvalConfig
    from eval.dataset import load_dataset, run_dataset
    from lipsync.common import LipsyncError
    from lipsync.engine import Task, connect, disconnect, run_graph

    ds = load_dataset(dataset)
    cores = sorted(os.sched_getaffinity(0))
    if max(cpus) > len(cores):
        raise LipsyncError(f"this machine has {len(cores)} cores; ask for at most that many CPUs.")
    work = Path(keep or tempfile.mkdtemp(prefix="bench-ray-"))
    runs = []
    base = EvalConfig(video=None, out=work, quiet=True)
    try:
        for n in cpus:
            out = work / f"cpus{n}"
            shutil.rmtree(out, ignore_errors=True)
            os.sched_setaffinity(0, set(cores[:n]))
            try:
                t0 = time.perf_counter()
                doc = run_dataset(ds, base, out, num_cpus=n)
                wall = time.perf_counter() - t0
            finally:
                os.sched_setaffinity(0, set(cores))
            secs = doc["engine"]["task_seconds"]
            runs.append({"cpus": n, "wall_s": round(wall, 1), "tasks": doc["engine"]["tasks"],
                         "task_seconds_sum": round(sum(secs.values()), 1), "counts": doc["engine"]["counts"],
                         "speakers_done": sum(1 for v in doc["speakers"].values() if v["status"] == "done")})
            print(f"  {n} CPU(s): {wall:.1f} s", file=sys.stderr, flush=True)
        stored = _bench_store(ds, base, store, max(cpus), work, keep) if store else None
        info = connect(None, num_cpus=len(cores))
        try:
            t0 = time.perf_counter()
            run_graph([Task(f"noop{i}", _noop, (i,)) for i in range(overhead_tasks)], work / "overhead", show=False)
            per_task = (time.perf_counter() - t0) / overhead_tasks
        finally:
            disconnect(info)
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
    one = next((r for r in runs if r["cpus"] == min(cpus)), None)
    for r in runs:
        r["speedup"] = round(one["wall_s"] / r["wall_s"], 2) if one else None
    result = {"dataset": str(dataset), "speakers": len(ds.speakers), "runs": runs,
              "overhead_ms_per_task": round(1000 * per_task, 1), "overhead_tasks": overhead_tasks, "machine": _machine()}
    if stored:
        folder = next(r for r in runs if r["cpus"] == stored["cpus"])
        stored["folder_wall_s"] = folder["wall_s"]
        stored["overhead_pct"] = round(100 * (stored["wall_s"] / folder["wall_s"] - 1), 1)
        result["store"] = stored
    if projection_from:
        result["projection"] = project_benchmark(projection_from)
    return result


def _bench_store(ds, base, store: str, n: int, work: Path, keep: str | None) -> dict:
    """The dataset run into a new prefix of the object store ``store`` with ``n`` CPUs."""
    import uuid

    from eval.dataset import run_dataset
    from lipsync.storage import Storage

    uri = f"{store.rstrip('/')}/bench-ray-{uuid.uuid4().hex[:8]}"
    storage = Storage.open(uri, mirror=work / "mirror")
    t0 = time.perf_counter()
    try:
        doc = run_dataset(ds, base, uri, num_cpus=n, mirror=storage.local)
        wall = time.perf_counter() - t0
        files = storage.listing([""])
    finally:
        if keep is None:
            storage.remove()
    print(f"  {n} CPU(s) into {uri}: {wall:.1f} s", file=sys.stderr, flush=True)
    return {"uri": uri, "cpus": n, "wall_s": round(wall, 1), "files": len(files),
            "megabytes": round(sum(size for size, _ in files.values()) / 2**20, 1),
            "transfers": doc["engine"]["transfers"],
            "speakers_done": sum(1 for v in doc["speakers"].values() if v["status"] == "done")}


def project_benchmark(results_json: str, *, speakers: int = 50, lengths: int = 3, methods: int = 7,
                      nodes=(1, 2, 4, 8, 16), cpus_per_node: int = 8, prepare_fps: float = 110.0) -> dict:
    """Wall time of ``speakers`` x ``lengths`` training lengths x ``methods`` methods on N nodes of
    ``cpus_per_node`` CPUs, from one speaker's ``eval.run`` results (its measured preparation,
    training and per-(method, clip) times, and ``prepare_fps``: preprocessing's measured frames per
    second on that footage; every training of a method as long as there, and each
    task's CPU time taken as its measured wall time on that run's cores, an upper bound).
    Wall = max(all the work spread over the CPUs, one speaker's critical path)."""
    d = json.loads(Path(results_json).read_text())
    t, cores = d["timings_s"], d["machine"]["cpus"]
    fits = [v.get("train_seconds") or v.get("seconds") for v in d["methods"].values()]
    fits = [float(f) for f in fits if f]
    fit_mean = sum(fits) / len(fits)
    n_methods, n_clips = len(d["methods"]), len(d["test_clips"])
    n_cross = len(next(iter(d["cross_audio_videos"].values()), {})) if d.get("cross_audio_videos") else 0
    unit = (t["render_and_measure"] + t.get("cross_audio", 0.0)) / max(1, n_methods * (n_clips + n_cross))
    # preprocessing every frame once (the training footage and the test clips) at ``prepare_fps``,
    # the speed `eval.bench preprocess` measured on the same footage (the run itself reused a cache)
    frames = d["protocol"].get("train_frames", 0) + sum(c["frames"] for c in d["test_clips"])
    prepare = frames / prepare_fps + t.get("sync_expert", 0.0)
    trained = methods - 2  # ground truth and the frozen face train nothing
    per_point = trained * fit_mean + methods * (n_clips + n_cross) * unit + t.get("report", 0.0)
    cpu_s = cores * speakers * (prepare + lengths * per_point)
    critical = prepare + max(fits) + unit + t.get("report", 0.0)
    rows = [{"nodes": n, "cpus": n * cpus_per_node, "hours": round(max(cpu_s / (n * cpus_per_node), critical) / 3600, 1)}
            for n in nodes]
    return {"from": str(results_json), "prepare_fps": prepare_fps, "speakers": speakers, "lengths": lengths, "methods": methods,
            "fit_s_mean": round(fit_mean, 1), "fit_s_max": round(max(fits), 1), "measure_unit_s": round(unit, 2),
            "prepare_s": round(prepare, 1), "clips": n_clips, "cross_audio": n_cross, "cpu_hours": round(cpu_s / 3600, 1),
            "critical_path_h": round(critical / 3600, 2), "rows": rows, "gpu": "no GPU figures measured yet"}


def _print_ray(r: dict) -> None:
    print(f"dataset evaluation on local Ray: {r['speakers']} speakers")
    for run in r["runs"]:
        print(f"  {run['cpus']} CPU(s): {run['wall_s']} s wall, {run['tasks']} tasks (sum of task times "
              f"{run['task_seconds_sum']} s), speed-up {run['speedup']}x, speakers done {run['speakers_done']}")
    print(f"  scheduling overhead: {r['overhead_ms_per_task']} ms per task ({r['overhead_tasks']} no-op tasks)")
    st = r.get("store")
    if st:
        print(f"  into an object store ({st['uri']}): {st['wall_s']} s with {st['cpus']} CPU(s) against "
              f"{st['folder_wall_s']} s into a folder ({st['overhead_pct']:+.1f}%), {st['files']} files, {st['megabytes']} MB")
        tr = st["transfers"]
        print(f"    the tasks fetched {tr['fetched_mb']} MB ({tr['fetched']} files) and sent {tr['sent_mb']} MB "
              f"({tr['sent']} files) in {tr['seconds']} s of task time")
    pj = r.get("projection")
    if pj:
        print(f"  projection: {pj['speakers']} speakers x {pj['lengths']} training lengths x {pj['methods']} methods "
              f"= {pj['cpu_hours']} CPU-hours (critical path {pj['critical_path_h']} h)")
        for row in pj["rows"]:
            print(f"    {row['nodes']:>3} nodes x 8 CPUs: {row['hours']} h")


def _print_stream(r: dict) -> None:
    lat, comp = r["latency_ms"], r["compute_ms"]
    print(f"stream {r['frames']} frames at {r['resolution']} ({r['fps_video']:g} fps video), {r['chunk_ms']:g} ms chunks"
          f"{' in real time' if r['realtime'] else ' as fast as possible'}, audio {r['audio']} ({r['audio_s']} s), "
          f"target {r['target']} (prepared in {r['prepare_s']} s)")
    if r["sessions"] > 1:
        print(f"{r['sessions']} concurrent sessions sharing the target, each frame also encoded as JPEG")
    print(f"latency from a chunk's arrival to the first frame showing it, ms: p50 {lat['p50']}  p95 {lat['p95']}  max {lat['max']}")
    print(f"  of which the model's lookahead is {r['lookahead_ms']} ms past a frame's start; computing a frame once its "
          f"audio is in, ms: p50 {comp['p50']}  p95 {comp['p95']}  max {comp['max']}")
    print(f"sustained {r['sustained_frames_per_s']} frames/s over {r['wall_s']} s"
          + (f" (the slowest session; each: {', '.join(map(str, r['sessions_frames_per_s']))})" if r["sessions"] > 1 else ""))
    _print_memory(r)


def _print_train(r: dict) -> None:
    print(f"train {r['prepared']} ({r['preset']} preset, {r['device']}): {r['steps']} steps in {r['train_seconds']:.0f} s "
          f"({r['steps_per_second']:.1f} steps/s)")
    print(f"final validation loss {r['final_val_loss']:.4f} (geometry {r['val_geometry']:.4f}, texture {r['val_texture']:.4f}), "
          f"first reached (within 2%) after {r['seconds_to_final_val_loss']:.0f} s")
    _print_memory(r)


def _print_stages(r: dict, suffix: str = "") -> None:
    """The per-stage table (seconds, frames/s; CPU seconds where measured) and the overall line of a
    preprocess or synthesize result."""
    cpu = any("cpu_s" in v for v in r["stages"].values())
    head = f"{'stage':<10} {'seconds':>9} {'frames/s':>10}"
    print(head + (f" {'cpu s':>8} {'ffmpeg s':>9} {'cores busy':>10}" if cpu else ""))
    for k, v in r["stages"].items():
        fps = f"{v['frames_per_s']:.1f}" if v["frames_per_s"] else "-"
        line = f"{k:<10} {v['seconds']:>9.3f} {fps:>10}"
        if cpu and v.get("cpu_s") is not None:
            busy = (v["cpu_s"] + v["decoder_cpu_s"]) / v["seconds"] if v["seconds"] > 0 else 0.0
            line += f" {v['cpu_s']:>8.2f} {v['decoder_cpu_s']:>9.2f} {busy:>10.2f}"
        print(line)
    print(f"{'overall':<10} {r['total_s']:>9.3f} {r['overall_frames_per_s']:>10.1f}{suffix}")


def _print_memory(r: dict) -> None:
    pm = r["peak_memory"]
    print(f"peak memory: {pm['process_mib']:.0f} MiB (process), {pm['children_mib']:.0f} MiB (largest child)")


def _print_synthesize(r: dict) -> None:
    print(f"synthesize {r['frames']} frames at {r['resolution']} ({r['fps_video']:g} fps video) with {r['renderer']}, "
          f"audio {r['audio']}, target {r['target']}")
    _print_stages(r)
    _print_memory(r)


def _print_preprocess(r: dict) -> None:
    print(f"preprocess {r['video']}: {r['frames']} frames {r['resolution']} @ {r['fps_source']:g} fps, atlas {r['atlas_size']}, "
          f"{r['workers']} worker thread(s)")
    _print_stages(r, f"   ({r['realtime_factor']:.2f}x real time)")
    _print_memory(r)


def _print_study(r: dict) -> None:
    load, db = r["load"], r["database"]
    lat = load["submit_latency_ms"]
    print(f"study server ({r['db']}): {load['raters']} raters x {r['answers_per_rater']} answers concurrently "
          f"in {load['wall_s']} s ({load['ratings_per_s']} ratings/s)")
    print(f"  submit latency ms: p50 {lat['p50']}  p95 {lat['p95']}  max {lat['max']}")
    print(f"  acknowledged {db['acknowledged']}, stored {db['stored']}, missing {db['missing']}, "
          f"duplicated {db['duplicated']}, double clicks de-duplicated {load['double_clicks']}, errors {load['errors']}")


def main(argv=None) -> int:
    from lipsync.common import LipsyncError, setup_cache_env

    setup_cache_env()
    ap = argparse.ArgumentParser(prog="python -m eval.bench", description=__doc__,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("preprocess", help="time `lipsync preprocess` on a video",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("video")
    p.add_argument("--atlas-size", type=int, default=256)
    p.add_argument("--no-previews", action="store_true", help="leave the preview images out of the timing")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--keep", help="keep the prepared clip in this folder")
    p.add_argument("--workers", type=int, default=0, help="threads of the per-frame stages (0: one per core)")
    p.add_argument("--repeat", type=int, default=1,
                   help="time the video played this many times in a row (a long input, e.g. 60 x 20 s = 20 minutes)")
    p = sub.add_parser("train", help="time `lipsync train` on a prepared clip",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("prepared")
    p.add_argument("--preset", default="quick", choices=["quick", "full"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--keep", help="keep the model in this folder")
    for name, text in (("synthesize", "time `lipsync synthesize` end to end"),
                       ("stream", "feed audio to a live session in real-time chunks: latency and frames/s")):
        p = sub.add_parser(name, help=text, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.add_argument("--model", required=True)
        p.add_argument("--audio", required=True)
        p.add_argument("--target", default=None)
        p.add_argument("--renderer", default="auto", choices=["auto", "gl", "nvdiffrast", "reference"])
        p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--chunk-ms", type=float, default=20.0)
    p.add_argument("--as-fast-as-possible", action="store_true", help="do not wait for each chunk's real arrival time")
    p.add_argument("--sessions", type=int, default=1, help="concurrent live sessions (each frame then also encoded as JPEG)")
    p = sub.add_parser("ray", help="a dataset evaluation on local Ray with 1, 2, ... CPUs; overhead; projection",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", required=True, help="a dataset file or folder (see eval/dataset.py)")
    p.add_argument("--cpus", type=int, nargs="+", default=[1, 2])
    p.add_argument("--keep", help="keep the runs' results in this folder (and the --store run's prefix)")
    p.add_argument("--store", metavar="URI", help="also run it with the most CPUs into an object store, e.g. s3://bucket/bench "
                                                   "(credentials and endpoint from the environment)")
    p.add_argument("--projection-from", metavar="RESULTS_JSON",
                   help="a single-speaker eval.run results.json whose measured times project a 50-speaker benchmark")
    p.add_argument("--json", help="also write the results to this JSON file")
    p = sub.add_parser("study", help="load-test the human-study server: simulated raters answer concurrently",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--study", default=None, help="a study file (default: a synthetic study made with ffmpeg)")
    p.add_argument("--db", default=None, help="database URL (default: a new SQLite file)")
    p.add_argument("--raters", type=int, default=50)
    p.add_argument("--trials-per-rater", type=int, default=20, help="scored trials of the synthetic study")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    try:
        if args.what == "preprocess":
            result = bench_preprocess(args.video, atlas_size=args.atlas_size, previews=not args.no_previews,
                                      keep=args.keep, workers=args.workers, repeat=max(1, args.repeat))
            _print_preprocess(result)
        elif args.what == "train":
            result = bench_train(args.prepared, preset=args.preset, keep=args.keep, device=args.device)
            _print_train(result)
        elif args.what == "synthesize":
            result = bench_synthesize(args.model, args.audio, target=args.target, renderer=args.renderer)
            _print_synthesize(result)
        elif args.what == "stream":
            result = bench_stream(args.model, args.audio, target=args.target, renderer=args.renderer,
                                  chunk_ms=args.chunk_ms, realtime=not args.as_fast_as_possible, sessions=args.sessions)
            _print_stream(result)
        elif args.what == "ray":
            result = bench_ray(args.dataset, cpus=args.cpus, keep=args.keep, projection_from=args.projection_from,
                               store=args.store)
            _print_ray(result)
        else:
            from human_study.loadtest import bench_study

            result = bench_study(study=args.study, db_url=args.db, raters=args.raters,
                                 trials_per_rater=args.trials_per_rater)
            result["machine"] = _machine()
            _print_study(result)
    except LipsyncError as err:
        print(f"eval.bench: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
