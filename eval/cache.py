"""The evaluation's caches: every rendered video and every metric value is kept under the run's
``cache`` folder, named by a content hash of its inputs (the method's trained state, the clip, the
audio, the metric's settings), so a re-run redoes only what changed. Entries are written atomically."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from lipsync.files import atomic_write_text, content_key

from .core import MetricValue, TestClip, Unavailable
from .samples import LazySample

RESULTS_VERSION = 1  # bumped when a change makes cached metric values or videos stale


def jsonable(x):
    """Plain JSON types; NaN and infinities (a measurement that failed) become null."""
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.floating, np.integer)):
        x = x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return x


def metric_settings_key(settings: dict) -> dict:
    # weights paths matter by content; other settings by value
    return {k: (Path(v) if isinstance(v, str) and Path(v).is_file() else v) for k, v in sorted(settings.items())}


def compute_metric(metric, lazy: LazySample, settings: dict):
    """A metric on one sample, cached by the content of the output, the reference and the settings."""
    key = content_key(metric.name, lazy.video_key, lazy.clip_key, lazy.with_reference,
                      metric_settings_key(settings), RESULTS_VERSION)
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
    atomic_write_text(path, json.dumps(jsonable({"value": v.value, "per_frame": v.per_frame, "extra": v.extra})))
    return v


def plot_data(lazy: LazySample, settings: dict) -> dict:
    """The mouth opening over time (re-tracked from the output, pose-normalized) and the sync
    expert's audio-mouth similarity over lags (when ``settings`` name an expert) of one sample, for
    the report's plots; cached like a metric (the tracking itself is shared with the metrics)."""
    from .metrics.lipsync import check_sync_expert, expert_sync, mouth_series, track_landmarks
    from .sync_expert import LAGS

    expert = None if check_sync_expert(settings) else Path(settings["sync_expert"])
    path = lazy.workdir / f"plot-{content_key(lazy.video_key, lazy.clip_key, expert, RESULTS_VERSION)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    sample = lazy.get()
    mouth = mouth_series(track_landmarks(sample.frames, sample.fps, sample.workdir), sample.canonical)
    d = {"mouth": mouth, "lags": LAGS, "curve": expert_sync(sample, settings)["curve"] if expert else []}
    if sample.reference is not None:
        ref = track_landmarks(sample.reference, sample.fps, sample.workdir)
        d["reference_mouth"] = mouth_series(ref, sample.canonical)
    atomic_write_text(path, json.dumps(jsonable(d)))
    return json.loads(path.read_text())


def render_cached(method, clip: TestClip, audio: Path, out: Path, fit_info: dict) -> dict:
    """Render one video unless an identical one exists (same method state, clip and audio)."""
    from lipsync.synthesis import RENDER_VERSION

    model = fit_info.get("model")
    if isinstance(model, str) and os.sep in model:
        model = Path(model).name  # a model folder's name holds its content key; where it lies does not matter
    settings = method.render_settings()  # synthesis settings that change the video (none by default)
    key = content_key(method.name, model, Path(clip.video), Path(audio), RESULTS_VERSION, RENDER_VERSION,
                      *([settings] if settings else []))
    meta = out.with_suffix(".json")
    if out.is_file() and meta.is_file():
        d = json.loads(meta.read_text())
        if d.get("key") == key:
            return {**d, "cached": True}
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    info = method.render(clip, audio, out)
    d = {"key": key, "seconds": round(time.perf_counter() - t0, 2), **(info or {})}
    atomic_write_text(meta, json.dumps(jsonable(d)))
    return {**d, "cached": False}


def write_json(path: Path, doc: dict) -> None:
    atomic_write_text(path, json.dumps(jsonable(doc), indent=2, allow_nan=False, default=str))
