"""Evaluate this project's model, its ablations and baselines under one protocol.

    python -m eval.run --video VIDEO [--test-clips DIR] [--methods ...] [--metrics ...]
                       [--preset tiny|quick|full] --out RESULTS

Self-reenactment: the last 20% of VIDEO (``--test-fraction``) is held out and cut into test
clips; every trainable method trains on the rest; every method then makes each test clip from
the clip's own audio inside the clip's own frames (its head pose and lighting), and metrics
compare the result with the real frames. ``--test-clips DIR`` uses separate clips of the same
speaker as the test set instead (training on all of VIDEO). Cross-audio: each method is also
driven by audio that is not the speaker's (``--cross-audio FILE``; by default a sentence spoken by
espeak-ng) over the first test clip's frames, and judged by the metrics that need no reference.

Writes to RESULTS: ``results.json`` (every number with its 95% bootstrap interval, or the reason
it is unavailable; the config, seeds, versions, git commit and timings), ``results.csv``,
``report.md`` (tables, plots, whether the paper's claims hold here), ``plots/*.png``,
``side_by_side.mp4`` and the methods' videos under ``videos/``. A re-run reuses prepared clips,
trained models, videos and metric values whose inputs have not changed (``RESULTS/cache``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from lipsync.files import atomic_write_text, content_key, file_digest

from lipsync.synthesis.schedule import ping_pong

from .core import RunContext, Sample, TestClip, Unavailable, read_video

# methods that run unless --methods says otherwise: everything that needs nothing from the user
DEFAULT_METHODS = ("ground_truth", "lipsync3d", "no_lighting_norm", "no_pose_norm", "no_autoregression", "frozen",
                   "personalized_2d")
# The default cross-audio test: sentences spoken by espeak-ng in several voices (not the speaker's).
CROSS_SPEECH = (
    ("en-us", "Please put the blue pen on the table, then read the next sentence slowly and clearly."),
    ("en", "We were away a year ago, when the weather was warm and the sea was calm."),
    ("en-us+f3", "My mother made a big pot of soup for the whole family on Sunday."),
    ("en-gb-x-rp", "Which watch did you wish to wear at the show this evening?"),
    ("en-us+m3", "Five fat frogs hopped over the muddy path and jumped into the pool."),
)
RESULTS_VERSION = 1


def _progress_printer(enabled: bool):
    state = {"stage": None, "t": 0.0}

    def show(stage: str, done: int, total: int) -> None:
        if not enabled:
            return
        now = time.perf_counter()
        if stage != state["stage"] or done >= total or now - state["t"] > 2.0:
            pct = 100.0 * done / max(total, 1)
            print(f"\r[eval] {stage}: {done}/{total} ({pct:.0f}%)".ljust(78), end="\n" if done >= total else "",
                  file=sys.stderr, flush=True)
            state.update(stage=stage, t=now)
    return show


def _git_commit() -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                           cwd=Path(__file__).resolve().parent, timeout=10)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict:
    from lipsync.preprocessing.manifest import versions

    out = versions()
    for mod in ("torch", "skimage", "lpips", "gradio"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - informative only
            out[mod] = "unavailable"
    return out


# ---------------------------------------------------------------------------------------------
# samples: what the metrics see

def _boxes(landmarks: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Face and mouth boxes (T,4) x0,y0,x1,y1 from landmarks (T,V,3); untracked frames take the
    nearest tracked frame's boxes (the whole frame if none is tracked)."""
    from lipsync.topology import load_topology

    lips = load_topology().regions["lips_outer"]
    t = len(landmarks)
    ok = np.isfinite(landmarks).all(axis=(1, 2))
    face = np.tile([0, 0, width, height], (t, 1))
    mouth = np.tile([0, 0, width, height], (t, 1))
    if not ok.any():
        return face, mouth
    idx = np.flatnonzero(ok)
    near = idx[np.abs(np.arange(t)[:, None] - idx[None]).argmin(1)]
    pts = landmarks[near, :, :2]
    lo, hi = pts.min(1), pts.max(1)
    face = np.concatenate([lo, hi], 1)
    lp = landmarks[near][:, lips, :2]
    llo, lhi = lp.min(1), lp.max(1)
    pad = 0.25 * (lhi - llo)[:, :1]
    mouth = np.concatenate([llo - pad, lhi + pad], 1)
    clip = np.array([width, height, width, height])
    return (np.clip(np.round(face), 0, clip).astype(int), np.clip(np.round(mouth), 0, clip).astype(int))


def build_sample(method: str, clip: TestClip, video: Path, audio: Path, *, with_reference: bool,
                 workdir: Path) -> Sample:
    import soundfile as sf

    from lipsync.prepared import open_prepared

    workdir.mkdir(parents=True, exist_ok=True)
    frames = read_video(video, workdir / "frames")
    target_all = read_video(clip.video, workdir / "target")
    order = ping_pong(len(frames), len(target_all))
    prepared = open_prepared(clip.prepared)
    lm = np.array(prepared.array("landmarks"))
    valid = np.array(prepared.array("valid"))
    n = min(len(frames), len(order))
    order = np.minimum(order[:n], len(lm) - 1)
    target = target_all if (n == len(target_all) and np.array_equal(order, np.arange(n))) else target_all[order]
    face, mouth = _boxes(lm[order], clip.width, clip.height)
    samples, _ = sf.read(str(audio), dtype="float32")
    return Sample(method=method, clip=clip.name, fps=clip.fps, frames=frames[:n], target=target[:n],
                  reference=target[:n] if with_reference else None,
                  canonical=np.array(prepared.array("reference_vertices")), audio=samples, face_box=face,
                  mouth_box=mouth, landmarks=lm[order], valid=valid[order], video=video, workdir=workdir)


def _jsonable(x):
    """Plain JSON types; NaN and infinities (a measurement that failed) become null."""
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, np.integer)):
        x = x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def _metric_settings_key(settings: dict) -> dict:
    # weights paths matter by content; other settings by value
    return {k: (Path(v) if isinstance(v, str) and Path(v).is_file() else v) for k, v in sorted(settings.items())}


class LazySample:
    """Builds the ``Sample`` (decoding both videos) only when a metric is not cached; ``close()``
    removes the decoded frames."""

    def __init__(self, method: str, clip: TestClip, video: Path, audio: Path, *, with_reference: bool, workdir: Path):
        self.args = (method, clip, video, audio)
        self.with_reference = with_reference
        self.workdir = workdir
        self.video_key = file_digest(video)
        self.clip_key = f"{clip.name}-{file_digest(clip.video)}"
        self._sample = None

    def get(self) -> Sample:
        if self._sample is None:
            self._sample = build_sample(*self.args, with_reference=self.with_reference, workdir=self.workdir)
        return self._sample

    def close(self) -> None:
        import shutil

        self._sample = None
        for sub in ("frames", "target"):
            shutil.rmtree(self.workdir / sub, ignore_errors=True)


def compute_metric(metric, lazy: LazySample, settings: dict):
    """A metric on one sample, cached by the content of the output, the reference and the settings."""
    from .core import MetricValue

    key = content_key(metric.name, lazy.video_key, lazy.clip_key, lazy.with_reference,
                      _metric_settings_key(settings), RESULTS_VERSION)
    lazy.workdir.mkdir(parents=True, exist_ok=True)
    path = lazy.workdir / f"{metric.name}-{key}.json"
    if path.is_file():
        d = json.loads(path.read_text())
        if "unavailable" in d:
            raise Unavailable(d["unavailable"])
        pf = d.get("per_frame")
        return MetricValue(value=float("nan") if d["value"] is None else d["value"], per_frame=None if pf is None else np.array(pf, float), extra=d.get("extra", {}))
    try:
        v = metric.compute(lazy.get(), settings)
    except Unavailable as err:
        atomic_write_text(path, json.dumps({"unavailable": str(err)}))
        raise
    atomic_write_text(path, json.dumps(_jsonable({"value": v.value, "per_frame": v.per_frame, "extra": v.extra})))
    return v


def plot_data(lazy: LazySample) -> dict:
    """The mouth opening over time (re-tracked from the output, pose-normalized) and the
    audio-visual correlation over lags of one sample, for the report's plots; cached like a metric
    (the tracking itself is shared with the landmark metrics)."""
    from .metrics.lipsync import LAGS, av_sync, mouth_series, track_landmarks

    path = lazy.workdir / f"plot-{content_key(lazy.video_key, lazy.clip_key, RESULTS_VERSION)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    sample = lazy.get()
    mouth = mouth_series(track_landmarks(sample.frames, sample.fps, sample.workdir), sample.canonical)
    d = {"mouth": mouth, "lags": LAGS, "curve": av_sync(mouth, sample.audio, sample.fps)["curve"]}
    if sample.reference is not None:
        ref = track_landmarks(sample.reference, sample.fps, sample.workdir)
        d["reference_mouth"] = mouth_series(ref, sample.canonical)
    atomic_write_text(path, json.dumps(_jsonable(d)))
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------
# the run

def _render_cached(method, clip: TestClip, audio: Path, out: Path, fit_info: dict) -> dict:
    """Render one video unless an identical one exists (same method state, clip and audio)."""
    from lipsync.synthesis import RENDER_VERSION

    key = content_key(method.name, fit_info.get("model"), Path(clip.video), Path(audio), RESULTS_VERSION,
                      RENDER_VERSION)
    meta = out.with_suffix(".json")
    if out.is_file() and meta.is_file():
        d = json.loads(meta.read_text())
        if d.get("key") == key:
            return {**d, "cached": True}
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    info = method.render(clip, audio, out)
    d = {"key": key, "seconds": round(time.perf_counter() - t0, 2), **(info or {})}
    atomic_write_text(meta, json.dumps(_jsonable(d)))
    return {**d, "cached": False}


def cross_audio_files(args, cache: Path) -> list[Path]:
    from lipsync.media import load_audio, write_wav
    from lipsync.synthesis import text_to_speech

    out = []
    folder = cache / "cross_audio"
    folder.mkdir(parents=True, exist_ok=True)
    if not args.cross_audio:
        for i, (voice, text) in enumerate(CROSS_SPEECH):
            wav = folder / f"tts{i + 1}-{voice.replace('+', '_')}.wav"
            if not wav.is_file():
                write_wav(wav, load_audio(text_to_speech(text, folder, voice=voice)))
            out.append(wav)
    for f in args.cross_audio or []:
        f = Path(f)
        wav = folder / f"{f.stem}-{file_digest(f)}.wav"
        if not wav.is_file():
            write_wav(wav, load_audio(f))
        out.append(wav)
    return out


def run(args) -> dict:
    from lipsync.common import LipsyncError, resolve_device

    from .methods import get_method
    from .metrics import get_metrics
    from .protocol import prepare_protocol
    from .stats import summarize

    t_start = time.perf_counter()
    progress = _progress_printer(not args.quiet)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise LipsyncError(f"{out} is a file; give a folder for the results.")
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "cache"
    timings: dict[str, float] = {}

    method_names = list(dict.fromkeys(args.methods or DEFAULT_METHODS))
    method_classes = [get_method(m) for m in method_names]
    metrics = get_metrics(args.metrics)
    settings = {k: v for k, v in {"lpips_weights": args.lpips_weights, "syncnet_weights": args.syncnet_weights,
                                  "s3fd_weights": args.s3fd_weights, "inception_weights": args.inception_weights,
                                  "device": resolve_device(args.device)}.items() if v is not None}

    t0 = time.perf_counter()
    train_video, train_prepared, clips, protocol = prepare_protocol(
        Path(args.video), cache, test_clips=Path(args.test_clips) if args.test_clips else None,
        test_fraction=args.test_fraction, clip_seconds=args.clip_seconds, max_test_clips=args.max_test_clips,
        progress=progress)
    timings["prepare"] = time.perf_counter() - t0

    ctx = RunContext(out=out, cache=cache, train_video=Path(train_video), train_prepared=Path(train_prepared),
                     preset=args.preset, seed=args.seed, device=resolve_device(args.device), progress=progress,
                     options={"wav2lip_checkpoint": args.wav2lip_checkpoint, "external_dir": args.external,
                              "external_name": args.external_name, "renderer": args.renderer})
    methods, method_info, unavailable_methods = [], {}, {}
    for cls in method_classes:
        m = cls(ctx)
        t0 = time.perf_counter()
        try:
            m.check()
            info = m.fit() or {}
        except Unavailable as err:
            unavailable_methods[cls.name] = str(err)
            print(f"[eval] {cls.name}: unavailable: {err}", file=sys.stderr)
            continue
        info["fit_wall_s"] = round(time.perf_counter() - t0, 1)
        method_info[cls.name] = {"description": cls.description, **info}
        methods.append(m)
    timings["fit"] = sum(v["fit_wall_s"] for v in method_info.values())

    # self-reenactment videos and metrics
    t0 = time.perf_counter()
    per_sample: dict[str, dict[str, dict]] = {}
    sample_values: dict[str, dict[str, list]] = {m.name: {mt.name: [] for mt in metrics} for m in methods}
    sample_unavail: dict[str, dict[str, str]] = {m.name: {} for m in methods}
    metric_unavail, sample_reasons = {}, {}
    series: dict[str, dict] = {}
    for mt in metrics:
        reason = mt.check(settings) if mt.check else None
        if reason:
            metric_unavail[mt.name] = reason
    total = len(methods) * len(clips)
    k = 0
    for m in methods:
        for clip in clips:
            progress("render and measure", k, total)
            k += 1
            video = out / "videos" / m.name / f"{clip.name}.mp4"
            try:
                rinfo = _render_cached(m, clip, clip.audio, video, method_info[m.name])
            except Unavailable as err:
                sample_unavail[m.name][clip.name] = str(err)
                continue
            per_sample.setdefault(m.name, {})[clip.name] = {"video": str(video.relative_to(out)), "render": rinfo}
            lazy = LazySample(m.name, clip, video, clip.audio, with_reference=True,
                              workdir=cache / "samples" / m.name / clip.name)
            for mt in metrics:
                if mt.name in metric_unavail:
                    continue
                try:
                    v = compute_metric(mt, lazy, settings)
                except Unavailable as err:
                    sample_reasons.setdefault(mt.name, str(err))
                    sample_unavail[m.name][f"{clip.name}/{mt.name}"] = str(err)
                    continue
                sample_values[m.name][mt.name].append(v)
                per_sample[m.name][clip.name][mt.name] = v.value
            if clip is clips[0]:
                try:
                    series[m.name] = plot_data(lazy)
                except Exception as err:  # noqa: BLE001 - a plot must not sink the run
                    print(f"[eval] plot data for {m.name}: {err}", file=sys.stderr)
            lazy.close()
    progress("render and measure", total, total)
    timings["render_and_measure"] = time.perf_counter() - t0

    results = _summaries(methods, metrics, sample_values, metric_unavail, unavailable_methods, summarize, args.seed,
                         sample_reasons)

    # cross-audio: foreign speech over the test clips' frames, reference-free metrics only
    t0 = time.perf_counter()
    cross_results, cross_samples = {}, {}
    if not args.no_cross_audio and clips:
        free = [mt for mt in metrics if not mt.needs_reference]
        cross_values = {m.name: {mt.name: [] for mt in free} for m in methods}
        wavs = cross_audio_files(args, cache)
        for m in methods:
            for j, wav in enumerate(wavs):
                clip = clips[j % len(clips)]  # each foreign sentence over another test clip's frames
                video = out / "videos" / "cross_audio" / m.name / f"{wav.stem}.mp4"
                try:
                    _render_cached(m, clip, wav, video, method_info[m.name])
                except Unavailable:
                    continue
                cross_samples.setdefault(m.name, {})[wav.stem] = str(video.relative_to(out))
                lazy = LazySample(m.name, clip, video, wav, with_reference=False,
                                  workdir=cache / "samples_cross" / m.name / wav.stem)
                for mt in free:
                    if mt.name in metric_unavail:
                        continue
                    try:
                        cross_values[m.name][mt.name].append(compute_metric(mt, lazy, settings))
                    except Unavailable as err:
                        sample_reasons.setdefault(mt.name, str(err))
                lazy.close()
        cross_results = _summaries(methods, free, cross_values, metric_unavail, unavailable_methods, summarize,
                                   args.seed, sample_reasons)
    timings["cross_audio"] = time.perf_counter() - t0

    doc = {
        "results_version": RESULTS_VERSION,
        "results": results,
        "cross_audio": cross_results,
        "metrics": {mt.name: {"better": mt.better, "needs_reference": mt.needs_reference, "unit": mt.unit,
                              "description": mt.description, "requires": mt.requires} for mt in metrics},
        "methods": method_info,
        "unavailable_methods": unavailable_methods,
        "unavailable_metrics": metric_unavail,
        "per_clip": per_sample,
        "per_clip_unavailable": {k: v for k, v in sample_unavail.items() if v},
        "cross_audio_videos": cross_samples,
        "test_clips": [{"name": c.name, "video": str(c.video), "frames": c.frames, "fps": c.fps} for c in clips],
        "protocol": protocol,
        "config": {"video": str(args.video), "test_clips": args.test_clips, "methods": method_names,
                   "metrics": [mt.name for mt in metrics], "preset": args.preset, "seed": args.seed,
                   "device": ctx.device, "test_fraction": args.test_fraction, "clip_seconds": args.clip_seconds,
                   "max_test_clips": args.max_test_clips, "cross_audio": args.cross_audio, "renderer": args.renderer,
                   "bootstrap": {"resamples": 2000, "seed": args.seed}},
        "versions": _versions(),
        "git_commit": _git_commit(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "timings_s": timings,
    }
    from .report import write_outputs

    t0 = time.perf_counter()
    write_outputs(out, doc, clips, series, make_video=not args.no_video, progress=progress)
    timings["report"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    doc["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    _write_json(out / "results.json", doc)
    return doc


def _summaries(methods, metrics, values, metric_unavail, unavailable_methods, summarize, seed, reasons) -> dict:
    results: dict[str, dict] = {}
    for m in methods:
        row = {}
        for mt in metrics:
            if mt.name in metric_unavail:
                row[mt.name] = {"unavailable": metric_unavail[mt.name]}
            elif not values[m.name][mt.name]:
                row[mt.name] = {"unavailable": reasons.get(mt.name, "no test clip could be measured")}
            else:
                s = summarize(values[m.name][mt.name], metric=mt, seed=seed)
                row[mt.name] = s if np.isfinite(s.get("value", np.nan)) else {
                    "unavailable": s.get("note", "the measurement failed on every clip")}
        results[m.name] = row
    for name, reason in unavailable_methods.items():
        results[name] = {mt.name: {"unavailable": reason} for mt in metrics}
    return results


def _write_json(path: Path, doc: dict) -> None:
    atomic_write_text(path, json.dumps(_jsonable(doc), indent=2, allow_nan=False, default=str))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m eval.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", required=True, help="the speaker's video (training footage; also the test set without --test-clips)")
    ap.add_argument("--test-clips", help="a folder of separate clips of the same speaker to test on")
    ap.add_argument("--out", required=True, help="results folder (created; re-runs reuse its cache)")
    ap.add_argument("--methods", nargs="+", metavar="NAME",
                    help=f"methods to compare (default: {' '.join(DEFAULT_METHODS)}; also: external, wav2lip_checkpoint)")
    ap.add_argument("--metrics", nargs="+", metavar="NAME", help="metrics to compute (default: all)")
    ap.add_argument("--preset", choices=["tiny", "quick", "full"], default="quick",
                    help="training preset of the trainable methods (tiny: a smoke test, not a usable model)")
    ap.add_argument("--test-fraction", type=float, default=0.2, help="held-out end of the video (default 0.2)")
    ap.add_argument("--clip-seconds", type=float, default=5.0, help="length of the test clips cut from it (default 5)")
    ap.add_argument("--max-test-clips", type=int, help="use only the first N test clips")
    ap.add_argument("--cross-audio", nargs="+", metavar="FILE",
                    help="audio of other speakers for the cross-audio test, each over another test clip "
                         "(default: five sentences by espeak-ng in five voices)")
    ap.add_argument("--no-cross-audio", action="store_true", help="skip the cross-audio test")
    ap.add_argument("--no-video", action="store_true", help="do not write the side-by-side video")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--renderer", choices=["auto", "gl", "nvdiffrast", "reference"], default="auto")
    ap.add_argument("--wav2lip-checkpoint", metavar="PATH", help="official wav2lip.pth / wav2lip_gan.pth")
    ap.add_argument("--external", metavar="DIR", help="folder of another system's results, one video per test clip")
    ap.add_argument("--external-name", default="external", help="label of --external in the report")
    ap.add_argument("--lpips-weights", metavar="PATH", help="torchvision's alexnet-owt-7be5be79.pth (default: $TORCH_HOME/hub/checkpoints)")
    ap.add_argument("--syncnet-weights", metavar="PATH", help="SyncNet syncnet_v2.model")
    ap.add_argument("--s3fd-weights", metavar="PATH", help="S3FD face detector sfd_face.pth (for SyncNet)")
    ap.add_argument("--inception-weights", metavar="PATH", help="Inception-v3 weights for FID")
    ap.add_argument("--quiet", action="store_true", help="no progress output")
    return ap


def main(argv=None) -> int:
    from lipsync.common import LipsyncError, setup_cache_env

    setup_cache_env()
    args = build_parser().parse_args(argv)
    try:
        doc = run(args)
    except LipsyncError as err:
        print(f"eval.run: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("eval.run: interrupted; run the same command again to continue (finished work is reused).", file=sys.stderr)
        return 130
    print(f"results: {Path(args.out) / 'report.md'} ({doc['timings_s']['total']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
