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
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from lipsync.files import file_digest

from .cache import RESULTS_VERSION, compute_metric, plot_data, render_cached, write_json
from .config import DEFAULT_METHODS, EvalConfig
from .core import RunContext, TestClip, Unavailable
from .samples import LazySample

# The default cross-audio test: sentences spoken by espeak-ng in several voices (not the speaker's).
CROSS_SPEECH = (
    ("en-us", "Please put the blue pen on the table, then read the next sentence slowly and clearly."),
    ("en", "We were away a year ago, when the weather was warm and the sea was calm."),
    ("en-us+f3", "My mother made a big pot of soup for the whole family on Sunday."),
    ("en-gb-x-rp", "Which watch did you wish to wear at the show this evening?"),
    ("en-us+m3", "Five fat frogs hopped over the muddy path and jumped into the pool."),
)

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
# measuring: render every method's video of every (clip, audio) and measure it

@dataclass(frozen=True)
class Job:
    """One video to make and measure: ``key`` names it ("bgaa8p", or a cross-audio sentence);
    ``clip`` gives the frames, pose and lighting; ``audio`` drives it; ``with_reference``: the
    clip's own audio, so the real frames are the reference."""
    key: str
    clip: TestClip
    audio: Path
    with_reference: bool


@dataclass
class Measured:
    """Members:
        values: method -> metric -> [MetricValue per measured job].
        per_sample: method -> job key -> {"video": path relative to the results, "render": facts, metric: value}.
        unavailable: method -> job key (or "key/metric") -> why it could not be made or measured.
        series: method -> the first job's plot data (mouth opening, sync curve).
    """
    values: dict = field(default_factory=dict)
    per_sample: dict = field(default_factory=dict)
    unavailable: dict = field(default_factory=dict)
    series: dict = field(default_factory=dict)


def measure(methods, jobs: list[Job], metrics, settings: dict, method_info: dict, *, out: Path, cache: Path,
            videos: str, samples: str, metric_unavail: dict, reasons: dict, progress, label: str,
            series: bool = False) -> Measured:
    """Render (or reuse) each method's video of each job under ``out/videos``, then compute (or
    reuse) each metric on it. ``reasons`` collects the first reason each metric could not run."""
    result = Measured(values={m.name: {mt.name: [] for mt in metrics} for m in methods},
                      unavailable={m.name: {} for m in methods})
    total, k = len(methods) * len(jobs), 0
    for m in methods:
        for job in jobs:
            progress(label, k, total)
            k += 1
            video = out / videos / m.name / f"{job.key}.mp4"
            try:
                rinfo = render_cached(m, job.clip, job.audio, video, method_info[m.name])
            except Unavailable as err:
                result.unavailable[m.name][job.key] = str(err)
                continue
            entry = result.per_sample.setdefault(m.name, {})[job.key] = {"video": str(video.relative_to(out)),
                                                                         "render": rinfo}
            lazy = LazySample(m.name, job.clip, video, job.audio, with_reference=job.with_reference,
                              workdir=cache / samples / m.name / job.key)
            for mt in metrics:
                if mt.name in metric_unavail:
                    continue
                try:
                    v = compute_metric(mt, lazy, settings)
                except Unavailable as err:
                    reasons.setdefault(mt.name, str(err))
                    result.unavailable[m.name][f"{job.key}/{mt.name}"] = str(err)
                    continue
                result.values[m.name][mt.name].append(v)
                entry[mt.name] = v.value
            if series and job is jobs[0]:
                try:
                    result.series[m.name] = plot_data(lazy, settings)
                except Exception as err:  # noqa: BLE001 - a plot must not sink the run
                    print(f"[eval] plot data for {m.name}: {err}", file=sys.stderr)
            lazy.close()
    progress(label, total, total)
    return result


def cross_audio_files(config: EvalConfig, cache: Path) -> list[Path]:
    """The cross-audio test's speech as 16 kHz wavs: ``config.cross_audio``, else ``CROSS_SPEECH``."""
    from lipsync.media import load_audio, write_wav
    from lipsync.synthesis import text_to_speech

    out = []
    folder = cache / "cross_audio"
    folder.mkdir(parents=True, exist_ok=True)
    if not config.cross_audio:
        for i, (voice, text) in enumerate(CROSS_SPEECH):
            wav = folder / f"tts{i + 1}-{voice.replace('+', '_')}.wav"
            if not wav.is_file():
                write_wav(wav, load_audio(text_to_speech(text, folder, voice=voice)))
            out.append(wav)
    for f in config.cross_audio or []:
        f = Path(f)
        wav = folder / f"{f.stem}-{file_digest(f)}.wav"
        if not wav.is_file():
            write_wav(wav, load_audio(f))
        out.append(wav)
    return out


# ---------------------------------------------------------------------------------------------
# the run, in stages: prepare the protocol, fit each method, measure each (method, job), report.
# ``run`` does them in turn; a dataset run (``eval.dataset``) runs the same stages as Ray tasks.

def results_folder(config: EvalConfig) -> tuple[Path, Path]:
    """(the results folder, created; its cache folder: ``config.cache`` or RESULTS/cache);
    ``LipsyncError`` when it is a file."""
    from lipsync.common import LipsyncError

    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise LipsyncError(f"{out} is a file; give a folder for the results.")
    out.mkdir(parents=True, exist_ok=True)
    return out, Path(config.cache) if config.cache else out / "cache"


@dataclass(frozen=True)
class Prepared:
    """The protocol of one run, ready for the methods (small and picklable: every array is on disk).

    Members:
        out, cache: the results folder and its cache.
        train_video, train_prepared: the training footage the methods learn from (its first
            ``config.train_seconds`` when set) and its prepared clip.
        clips: the test clips; protocol: facts for the report.
        settings: the metrics' settings (weights, device, the sync expert).
        cross_audio: the cross-audio test's wavs (empty without the test).
        timings: seconds of the preparation steps.
    """
    out: Path
    cache: Path
    train_video: Path
    train_prepared: Path
    clips: tuple
    protocol: dict
    settings: dict
    cross_audio: tuple
    timings: dict


def prepare_run(config: EvalConfig, progress=None) -> Prepared:
    """Stage 1: methods and metrics checked, the protocol prepared (training part, test clips, the
    sync expert, the cross-audio speech) and, with ``config.train_seconds``, the training part cut
    to its first seconds (the sync expert stays the whole part's, so every cut is measured alike)."""
    from lipsync.common import resolve_device

    from .metrics import get_metrics
    from .metrics.lipsync import check_sync_expert
    from .methods import get_method
    from .protocol import prepare_protocol
    from .sync_expert import expert_settings

    progress = progress or _progress_printer(False)
    out, cache = results_folder(config)
    for name in method_names(config):
        get_method(name)
    metrics = get_metrics(list(config.metrics) if config.metrics else None)
    settings = {k: v for k, v in {"lpips_weights": config.lpips_weights, "syncnet_weights": config.syncnet_weights,
                                  "s3fd_weights": config.s3fd_weights, "inception_weights": config.inception_weights,
                                  "device": resolve_device(config.device)}.items() if v is not None}
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    train_video, train_prepared, clips, protocol = prepare_protocol(
        Path(config.video), cache, test_clips=config.test_clips, test_fraction=config.test_fraction,
        clip_seconds=config.clip_seconds, max_test_clips=config.max_test_clips, progress=progress)
    timings["prepare"] = time.perf_counter() - t0
    if any(mt.check is check_sync_expert for mt in metrics):
        t0 = time.perf_counter()
        settings.update(expert_settings(train_prepared, cache, progress=progress))
        if "sync_expert_error" in settings:
            print(f"[eval] {settings['sync_expert_error']}", file=sys.stderr)
        timings["sync_expert"] = time.perf_counter() - t0
    if config.train_seconds is not None:
        from .sweeps import first_seconds

        t0 = time.perf_counter()
        train_video, train_prepared, used = first_seconds(Path(train_video), Path(train_prepared),
                                                          config.train_seconds, cache, progress)
        protocol = {**protocol, "train_seconds": round(used, 3)}
        timings["cut_training"] = time.perf_counter() - t0
    wavs = cross_audio_files(config, cache) if config.cross_audio_test and clips else []
    return Prepared(out=out, cache=cache, train_video=Path(train_video), train_prepared=Path(train_prepared),
                    clips=tuple(clips), protocol=protocol, settings=settings, cross_audio=tuple(wavs), timings=timings)


def method_names(config: EvalConfig) -> list[str]:
    return list(dict.fromkeys(config.methods or DEFAULT_METHODS))


def run_context(config: EvalConfig, p: Prepared, progress=None) -> RunContext:
    from lipsync.common import resolve_device

    return RunContext(out=p.out, cache=p.cache, train_video=p.train_video, train_prepared=p.train_prepared,
                      preset=config.preset, seed=config.seed, device=resolve_device(config.device),
                      progress=progress or _progress_printer(False),
                      options={"wav2lip_checkpoint": config.wav2lip_checkpoint, "external_dir": config.external,
                               "external_name": config.external_name, "renderer": config.renderer,
                               "mouth_motion": config.mouth_motion})


@dataclass
class Fitted:
    """Stage 2's result for one method: ``info`` (facts for the report) or ``unavailable`` (why it
    cannot run here); ``method`` the fitted object (kept in the process that fitted it only)."""
    name: str
    info: dict | None = None
    unavailable: str | None = None
    method: object = field(default=None, repr=False, compare=False)

    def __getstate__(self):  # the fitted object stays where it was made
        return {**self.__dict__, "method": None}


def fit_method(config: EvalConfig, p: Prepared, name: str, progress=None) -> Fitted:
    """Stage 2: train one method (or reuse what an earlier run trained)."""
    from filelock import FileLock

    from lipsync.files import content_key

    from .methods import get_method

    cls = get_method(name)
    m = cls(run_context(config, p, progress))
    t0 = time.perf_counter()
    try:
        m.check()
        # one fit at a time of the same model on the same footage (e.g. two sweep values whose cut is
        # all the training footage, on two workers): the second finds the first's model
        key = content_key(cls.trains_as or name, p.train_prepared / "manifest.json", config.preset, config.seed)
        with FileLock(str(p.cache / f".fit-{key}.lock")):
            info = m.fit() or {}
    except Unavailable as err:
        print(f"[eval] {name}: unavailable: {err}", file=sys.stderr)
        return Fitted(name, unavailable=str(err))
    info["fit_wall_s"] = round(time.perf_counter() - t0, 1)
    return Fitted(name, info={"description": cls.description, **info}, method=m)


def metrics_of(config: EvalConfig, p: Prepared) -> tuple[list, list, dict]:
    """(the run's metrics, those that need no reference (cross-audio), metric -> why it cannot run here)."""
    from .metrics import get_metrics

    metrics = get_metrics(list(config.metrics) if config.metrics else None)
    unavail = {mt.name: reason for mt in metrics if mt.check and (reason := mt.check(p.settings))}
    return metrics, [mt for mt in metrics if not mt.needs_reference], unavail


def jobs_of(p: Prepared) -> tuple[list[Job], list[Job]]:
    """(self-reenactment jobs: each test clip from its own audio; cross-audio jobs: each foreign
    sentence over another test clip's frames)."""
    clips = list(p.clips)
    own = [Job(c.name, c, c.audio, True) for c in clips]
    cross = [Job(Path(w).stem, clips[j % len(clips)], Path(w), False) for j, w in enumerate(p.cross_audio)] if clips else []
    return own, cross


def measure_jobs(config: EvalConfig, p: Prepared, fitted: Fitted, own: list[Job], cross: list[Job],
                 progress=None) -> tuple[Measured, Measured, dict]:
    """Stage 3: one method's videos of some jobs, made and measured; (self-reenactment, cross-audio,
    the first reason each metric could not run). The plot series come with the first test clip."""
    progress = progress or _progress_printer(False)
    m = fitted.method
    if m is None:  # in another process than the fit: reload what it trained (a cache hit)
        m = fit_method(config, p, fitted.name).method
    metrics, free, unavail = metrics_of(config, p)
    reasons: dict[str, str] = {}
    common = dict(out=p.out, cache=p.cache, metric_unavail=unavail, reasons=reasons, progress=progress)
    info = {fitted.name: fitted.info}
    first = jobs_of(p)[0][:1]
    a = measure([m], own, metrics, p.settings, info, videos="videos", samples="samples", label="render and measure",
                series=bool(own) and own[0] in first, **common)
    b = measure([m], cross, free, p.settings, info, videos="videos/cross_audio", samples="samples_cross",
                label="cross-audio", **common)
    return a, b, reasons


def merge_measured(pieces: list[Measured]) -> Measured:
    """One ``Measured`` from pieces in the order a single ``measure`` call would have made them."""
    out = Measured()
    for piece in pieces:
        for m, per in piece.values.items():
            row = out.values.setdefault(m, {})
            for k, v in per.items():
                row.setdefault(k, []).extend(v)
        for m, per in piece.per_sample.items():
            out.per_sample.setdefault(m, {}).update(per)
        for m, per in piece.unavailable.items():
            out.unavailable.setdefault(m, {}).update(per)
        for m, s in piece.series.items():
            out.series.setdefault(m, s)
    return out


def report_run(config: EvalConfig, p: Prepared, fitted: list[Fitted], measured: list[tuple[Measured, Measured, dict]],
               timings: dict, progress=None) -> dict:
    """Stage 4: ``results.json``, ``results.csv``, ``report.md``, the plots and the side-by-side
    video from the stages' results (``measured`` per method, in ``fitted``'s order); returns the document."""
    from .report import write_outputs
    from .stats import summarize

    progress = progress or _progress_printer(False)
    metrics, free, metric_unavail = metrics_of(config, p)
    ok = [f for f in fitted if f.info is not None]
    names = [f.name for f in fitted]
    method_info = {f.name: f.info for f in ok}
    unavailable_methods = {f.name: f.unavailable for f in fitted if f.info is None}
    reasons: dict[str, str] = {}
    for _, _, r in measured:
        for k, v in r.items():
            reasons.setdefault(k, v)
    own = merge_measured([a for a, _, _ in measured])
    cross = merge_measured([b for _, b, _ in measured])
    for f in ok:
        own.values.setdefault(f.name, {mt.name: [] for mt in metrics})
        cross.values.setdefault(f.name, {mt.name: [] for mt in free})
    results = _summaries(ok, metrics, own.values, metric_unavail, unavailable_methods, summarize, config.seed, reasons)
    cross_results, cross_samples = {}, {}
    if p.cross_audio:
        cross_samples = {m: {key: e["video"] for key, e in per.items()} for m, per in cross.per_sample.items()}
        cross_results = _summaries(ok, free, cross.values, metric_unavail, unavailable_methods, summarize,
                                   config.seed, reasons)
    device = p.settings.get("device", config.device)
    doc = {
        "results_version": RESULTS_VERSION,
        "results": results,
        "cross_audio": cross_results,
        "metrics": {mt.name: {"better": mt.better, "target": mt.target, "needs_reference": mt.needs_reference, "unit": mt.unit,
                              "description": mt.description, "requires": mt.requires} for mt in metrics},
        "methods": method_info,
        "unavailable_methods": unavailable_methods,
        "unavailable_metrics": metric_unavail,
        "per_clip": own.per_sample,
        "per_clip_unavailable": {k: v for k, v in own.unavailable.items() if v},
        "cross_audio_videos": cross_samples,
        "test_clips": [{"name": c.name, "video": str(c.video), "frames": c.frames, "fps": c.fps} for c in p.clips],
        "protocol": p.protocol,
        "config": {"video": str(config.video), "test_clips": str(config.test_clips) if config.test_clips else None,
                   "methods": names, "metrics": [mt.name for mt in metrics], "preset": config.preset,
                   "seed": config.seed, "device": device, "test_fraction": config.test_fraction,
                   "clip_seconds": config.clip_seconds, "max_test_clips": config.max_test_clips,
                   "train_seconds": config.train_seconds,
                   "cross_audio": list(config.cross_audio) if config.cross_audio else None,
                   "cross_audio_test": config.cross_audio_test, "renderer": config.renderer,
                   "mouth_motion": config.mouth_motion, "bootstrap": {"resamples": 2000, "seed": config.seed}},
        "versions": _versions(),
        "git_commit": _git_commit(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "timings_s": timings,
    }
    t0 = time.perf_counter()
    write_outputs(p.out, doc, list(p.clips), own.series, make_video=config.side_by_side, progress=progress)
    timings["report"] = time.perf_counter() - t0
    doc["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    write_json(p.out / "results.json", doc)
    return doc


def run(config: EvalConfig) -> dict:
    """Prepare the protocol, fit every method, measure self-reenactment and cross-audio, write the
    results folder; returns ``results.json``'s document."""
    t_start = time.perf_counter()
    progress = _progress_printer(not config.quiet)
    p = prepare_run(config, progress)
    timings = dict(p.timings)
    fitted = [fit_method(config, p, name, progress) for name in method_names(config)]
    timings["fit"] = sum(f.info["fit_wall_s"] for f in fitted if f.info)
    own, cross = jobs_of(p)
    t0 = time.perf_counter()
    measured = [measure_jobs(config, p, f, own, cross, progress) for f in fitted if f.info is not None]
    timings["render_and_measure"] = time.perf_counter() - t0
    doc = report_run(config, p, fitted, measured, timings, progress)
    doc["timings_s"]["total"] = round(time.perf_counter() - t_start, 1)
    write_json(p.out / "results.json", doc)
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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m eval.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", help="the speaker's video (training footage; also the test set without --test-clips)")
    src.add_argument("--dataset", metavar="DATASET",
                     help="many speakers: a YAML file or a folder of speakers (see eval/dataset.py); runs on Ray and "
                          "writes each speaker's results under RESULTS/speakers/ and pooled.md over them")
    ap.add_argument("--test-clips", help="a folder of separate clips of the same speaker to test on")
    ap.add_argument("--out", required=True,
                    help="results folder (created; re-runs reuse its cache); with --dataset also an object-store URI "
                         "such as s3://bucket/prefix, mirrored on each node (see docs/cluster.md)")
    ap.add_argument("--methods", nargs="+", metavar="NAME",
                    help=f"methods to compare (default: {' '.join(DEFAULT_METHODS)}; also: external, wav2lip_checkpoint)")
    ap.add_argument("--metrics", nargs="+", metavar="NAME", help="metrics to compute (default: all)")
    ap.add_argument("--preset", choices=["tiny", "quick", "full"], default=None,
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
    ap.add_argument("--mouth-motion", type=float, default=1.0, metavar="M",
                    help="lipsync3d and its 3D ablations synthesize with this mouth motion (as lipsync synthesize "
                         "--mouth-motion; default 1: as much as the speaker); the trained models are reused")
    ap.add_argument("--wav2lip-checkpoint", metavar="PATH", help="official wav2lip.pth / wav2lip_gan.pth")
    ap.add_argument("--external", metavar="DIR", help="folder of another system's results, one video per test clip")
    ap.add_argument("--external-name", default="external", help="label of --external in the report")
    ap.add_argument("--lpips-weights", metavar="PATH", help="torchvision's alexnet-owt-7be5be79.pth (default: $TORCH_HOME/hub/checkpoints)")
    ap.add_argument("--syncnet-weights", metavar="PATH", help="SyncNet syncnet_v2.model")
    ap.add_argument("--s3fd-weights", metavar="PATH", help="S3FD face detector sfd_face.pth (for SyncNet)")
    ap.add_argument("--inception-weights", metavar="PATH", help="Inception-v3 weights for FID")
    ap.add_argument("--train-seconds", nargs="+", type=float, metavar="S",
                    help="instead of the comparison, the data-efficiency study: lipsync3d trained on the first S "
                         "seconds of the training footage for each S, measured on the same test clips "
                         "(efficiency.md and plots/data_efficiency.png in --out)")
    ap.add_argument("--lookahead-ms", nargs="+", type=int, metavar="MS",
                    help="instead of the comparison, the audio-lookahead study: lipsync3d trained with an audio window "
                         "reaching MS ms past each frame for each MS (multiples of 10; 110 is the default window), "
                         "measured on the same test clips (lookahead.md and plots/lookahead.png in --out)")
    ap.add_argument("--ray-address", metavar="ADDRESS",
                    help="with --dataset: join the Ray cluster at ADDRESS (default: $RAY_ADDRESS, else an embedded "
                         "local Ray on this machine); every node must see --out at the same path, "
                         "unless it is an object-store URI")
    ap.add_argument("--num-cpus", type=int, metavar="N", help="with --dataset: CPUs of the embedded local Ray (default: all)")
    ap.add_argument("--quiet", action="store_true", help="no progress output")
    return ap


def _main_dataset(args) -> int:
    from lipsync.common import LipsyncError
    from lipsync.storage import is_uri

    from .dataset import load_dataset, run_dataset

    if args.train_seconds or args.lookahead_ms or args.test_clips:
        raise LipsyncError("with --dataset, put the sweeps and the held-out clips in the dataset file "
                           "(sweeps: train_seconds: [...]; a speaker's test_clips).")
    if args.num_cpus is not None and args.num_cpus < 1:
        raise LipsyncError("--num-cpus must be at least 1.")
    dataset = load_dataset(args.dataset)
    # options given on the command line win over the dataset file's
    given = {"methods": tuple(args.methods) if args.methods else None, "metrics": tuple(args.metrics) if args.metrics else None,
             "preset": args.preset, "max_test_clips": args.max_test_clips,
             "cross_audio_test": False if args.no_cross_audio else None, "side_by_side": False if args.no_video else None}
    dataset = replace(dataset, settings={**dataset.settings, **{k: v for k, v in given.items() if v is not None}})
    base = EvalConfig.from_args(args)
    doc = run_dataset(dataset, base, args.out, address=args.ray_address, num_cpus=args.num_cpus)
    done = sum(1 for s in doc["speakers"].values() if s["status"] == "done")
    where = f"{args.out.rstrip('/')}/pooled.md" if is_uri(args.out) else Path(args.out) / "pooled.md"
    print(f"results: {where} ({done} of {len(doc['speakers'])} speakers, "
          f"{doc['engine']['wall_s']:.0f} s)")
    return 0 if done == len(doc["speakers"]) else 1


def main(argv=None) -> int:
    from lipsync.common import LipsyncError, setup_cache_env
    from lipsync.storage import is_uri

    setup_cache_env()
    args = build_parser().parse_args(argv)
    try:
        if args.dataset:
            return _main_dataset(args)
        if args.ray_address or args.num_cpus:
            raise LipsyncError("--ray-address and --num-cpus go with --dataset.")
        if is_uri(args.out):
            raise LipsyncError("only --dataset runs write to an object store; give a folder with --out.")
        if args.train_seconds or args.lookahead_ms:
            from .sweeps import EFFICIENCY, LOOKAHEAD, run_sweep

            if args.train_seconds and args.lookahead_ms:
                raise LipsyncError("choose one study: --train-seconds or --lookahead-ms.")
            study = EFFICIENCY if args.train_seconds else LOOKAHEAD
            doc = run_sweep(EvalConfig.from_args(args), study, args.train_seconds or args.lookahead_ms)
            print(f"results: {Path(args.out) / (study.stem + '.md')} ({doc['timings_s']['total']:.0f} s)")
            return 0
        doc = run(EvalConfig.from_args(args))
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
