"""Data efficiency: how good the model is after N seconds of training footage.

``python -m eval.run --video V [--test-clips D] --train-seconds 20 40 60 120 180 --out R`` trains
``lipsync3d`` (the run's preset) on the first N seconds of the training part of the footage, for
each N, and measures every model on the same test clips as the main comparison (self-reenactment).
It writes ``R/efficiency.md`` (a table with 95% bootstrap intervals), ``R/efficiency.json``,
``R/efficiency.csv`` and the curve ``R/plots/data_efficiency.png``. Models and videos are cached
like the main run's, so a re-run reuses them.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from lipsync.files import atomic_write_text, content_key

from .methods.lipsync3d import LipSync3D, train_cached

# the default metrics of the study: geometry, articulation and the mouth's detail
METRICS = ("lmd", "mouth_corr", "articulation", "opening", "sharpness", "teeth", "teeth_corr")


class FirstSeconds(LipSync3D):
    """``lipsync3d`` trained on a prepared clip of the first ``seconds`` of the training footage."""

    def __init__(self, ctx, seconds: float, prepared: Path, used_seconds: float):
        super().__init__(ctx)
        self.seconds, self.prepared, self.used_seconds = float(seconds), Path(prepared), float(used_seconds)
        self.name = f"lipsync3d_{self.seconds:g}s"
        self.description = f"lipsync3d trained on the first {self.used_seconds:g} s of the training footage"

    def fit(self) -> dict:
        whole = self.prepared == Path(self.ctx.train_prepared)  # the main comparison's lipsync3d model, when it is there
        self.model_dir, info = train_cached(self.ctx, LipSync3D.name if whole else self.name, self.prepared, self.options())
        self._model = None
        return {**info, "train_seconds_of_video": self.used_seconds}


def first_seconds(train_video: Path, train_prepared: Path, seconds: float, cache: Path, progress=None) -> tuple[Path, float]:
    """(prepared clip, its length in seconds) of the first ``seconds`` of the training footage; the
    whole training clip when it is not longer than that."""
    from lipsync.prepared import open_prepared

    from .protocol import prepare_cached, write_segment

    clip = open_prepared(train_prepared)
    frames = int(round(seconds * clip.fps))
    if frames >= clip.num_frames:
        return Path(train_prepared), clip.num_frames / clip.fps
    audio, _ = clip.audio()
    folder = cache / f"first-{content_key(Path(train_prepared) / 'manifest.json', frames)}"
    folder.mkdir(parents=True, exist_ok=True)
    video = folder / f"first_{seconds:g}s.mp4"
    if not video.is_file():
        write_segment(Path(train_video), audio, 0, frames, clip.fps, video, folder)
    return prepare_cached(video, cache, sync_audio=False, progress=progress), frames / clip.fps


def run_efficiency(config, seconds: list[float]) -> dict:
    """The data-efficiency study (see the module docstring); returns ``efficiency.json``'s document."""
    from lipsync.common import LipsyncError, resolve_device

    from .cache import write_json
    from .core import RunContext
    from .metrics import get_metrics
    from .protocol import prepare_protocol
    from .run import Job, _progress_printer, _summaries, measure, results_folder
    from .stats import summarize

    if not seconds or any(not np.isfinite(s) or s <= 0 for s in seconds):
        raise LipsyncError("--train-seconds takes positive numbers of seconds, e.g. 20 40 60 120 180.")
    t_start = time.perf_counter()
    progress = _progress_printer(not config.quiet)
    out, cache = results_folder(config)
    metrics = get_metrics(list(config.metrics) if config.metrics else list(METRICS))
    device = resolve_device(config.device)
    settings = {"device": device}
    train_video, train_prepared, clips, protocol = prepare_protocol(
        Path(config.video), cache, test_clips=config.test_clips, test_fraction=config.test_fraction,
        clip_seconds=config.clip_seconds, max_test_clips=config.max_test_clips, progress=progress)
    if any(mt.name.startswith("sync") for mt in metrics):
        from .sync_expert import expert_settings

        settings.update(expert_settings(train_prepared, cache, progress=progress))
    ctx = RunContext(out=out, cache=cache, train_video=Path(train_video), train_prepared=Path(train_prepared),
                     preset=config.preset, seed=config.seed, device=device, progress=progress,
                     options={"renderer": config.renderer})
    methods, info = [], {}
    for s in sorted(set(float(x) for x in seconds)):
        prepared, used = first_seconds(Path(train_video), Path(train_prepared), s, cache, progress)
        m = FirstSeconds(ctx, s, prepared, used)
        if any(o.used_seconds == used for o in methods):
            continue  # asked for more than the footage has, twice: one model
        t0 = time.perf_counter()
        info[m.name] = {"description": m.description, **m.fit(), "fit_wall_s": round(time.perf_counter() - t0, 1)}
        methods.append(m)
    metric_unavail = {mt.name: reason for mt in metrics if mt.check and (reason := mt.check(settings))}
    reasons: dict[str, str] = {}
    measured = measure(methods, [Job(c.name, c, c.audio, True) for c in clips], metrics, settings, info, out=out,
                       cache=cache, videos="videos", samples="samples", metric_unavail=metric_unavail,
                       reasons=reasons, progress=progress, label="render and measure")
    results = _summaries(methods, metrics, measured.values, metric_unavail, {}, summarize, config.seed, reasons)
    doc = {"results": results, "seconds": {m.name: m.used_seconds for m in methods}, "methods": info,
           "metrics": {mt.name: {"better": mt.better, "target": mt.target, "unit": mt.unit} for mt in metrics},
           "protocol": protocol, "preset": config.preset, "test_clips": [c.name for c in clips],
           "timings_s": {"total": round(time.perf_counter() - t_start, 1)}}
    write_json(out / "efficiency.json", doc)
    write_efficiency_report(out, doc)
    return doc


def _cell(entry: dict) -> str:
    if "value" not in entry:
        return "unavailable"
    ci = entry.get("ci95")
    return f"{entry['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and all(np.isfinite(ci)) else "")


def write_efficiency_report(out: Path, doc: dict) -> None:
    """``efficiency.md``, ``efficiency.csv`` and ``plots/data_efficiency.png`` from the document."""
    from .report import _plt, _save

    names = list(doc["results"])
    keys = list(doc["metrics"])
    rows = ["| training footage (s) | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    csv = ["seconds," + ",".join(f"{k},{k}_lo,{k}_hi" for k in keys)]
    for n in names:
        r = doc["results"][n]
        rows.append(f"| {doc['seconds'][n]:g} | " + " | ".join(_cell(r.get(k, {})) for k in keys) + " |")
        cells = []
        for k in keys:
            e = r.get(k, {})
            ci = e.get("ci95") or [float("nan")] * 2
            cells += [f"{e.get('value', float('nan')):.6g}", f"{ci[0]:.6g}", f"{ci[1]:.6g}"]
        csv.append(f"{doc['seconds'][n]:g}," + ",".join(cells))
    text = ("# Data efficiency\n\n"
            f"lipsync3d ({doc['preset']} preset) trained on the first N seconds of the training footage, each model "
            f"measured on the same {len(doc['test_clips'])} test clips (self-reenactment); means over clips with 95% "
            "bootstrap intervals.\n\n" + "\n".join(rows) + "\n\n![data efficiency](plots/data_efficiency.png)\n")
    atomic_write_text(out / "efficiency.md", text)
    atomic_write_text(out / "efficiency.csv", "\n".join(csv) + "\n")
    plt = _plt()
    cols = min(4, len(keys))
    nrows = -(-len(keys) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 2.9 * nrows), squeeze=False)
    xs = np.array([doc["seconds"][n] for n in names])
    for ax, k in zip(axes.flat, keys):
        vals = np.array([doc["results"][n].get(k, {}).get("value", np.nan) for n in names], float)
        ci = np.array([doc["results"][n].get(k, {}).get("ci95") or [np.nan, np.nan] for n in names], float)
        ax.errorbar(xs, vals, yerr=[np.nan_to_num(np.clip(vals - ci[:, 0], 0, None)),
                                    np.nan_to_num(np.clip(ci[:, 1] - vals, 0, None))], marker="o", capsize=3)
        target = doc["metrics"][k].get("target")
        if target is not None:
            ax.axhline(target, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{k} ({doc['metrics'][k]['better']} is better)" if doc["metrics"][k]["better"] != "target"
                     else f"{k} (closest to {target:g})", fontsize=9)
        ax.set_xlabel("seconds of training footage", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    (out / "plots").mkdir(exist_ok=True)
    _save(fig, out / "plots" / "data_efficiency.png")
