"""Sweeps: ``lipsync3d`` trained several ways, every model measured on the same test clips.

Two studies, each instead of the main comparison:

* data efficiency, ``python -m eval.run --video V [--test-clips D] --train-seconds 20 40 60 120 180
  --out R``: ``lipsync3d`` (the run's preset) trained on the first N seconds of the training part
  of the footage, for each N. Writes ``R/efficiency.md``, ``.json``, ``.csv`` and
  ``R/plots/data_efficiency.png``.
* audio lookahead, ``... --lookahead-ms 110 80 40 0``: ``lipsync3d`` trained on the whole training
  part with an audio window that reaches N ms past each frame's centre (the latency a live stream
  must wait for; 110 is the default centred window). Writes ``R/lookahead.md``, ``.json``,
  ``.csv`` and ``R/plots/lookahead.png``.

Each table has the mean over clips with a 95% bootstrap interval per metric; the plot is one panel
per metric against the swept value. Models and videos are cached like the main run's, so a re-run
reuses them (the default-settings model is the main comparison's ``lipsync3d``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lipsync.files import atomic_write_text, content_key

from .methods.lipsync3d import LipSync3D, train_cached

# the default metrics of the studies: geometry, articulation and the mouth's detail
METRICS = ("lmd", "mouth_corr", "articulation", "opening", "sharpness", "teeth", "teeth_corr")


@dataclass(frozen=True)
class Study:
    stem: str        # file names: STEM.md/.json/.csv
    plot: str        # plots/PLOT.png
    title: str
    variable: str    # the swept quantity, as the table's first column and the plot's x axis
    column: str      # its name in the CSV file
    summary: str     # what each model is, for the report's first paragraph


EFFICIENCY = Study("efficiency", "data_efficiency", "Data efficiency", "training footage (s)", "seconds",
                   "trained on the first N seconds of the training footage")
LOOKAHEAD = Study("lookahead", "lookahead", "Audio lookahead", "lookahead (ms)", "lookahead_ms",
                  "trained on the whole training footage with an audio window reaching N ms past each frame's centre "
                  "(the default, centred window reaches 110 ms ahead)")


class Variant(LipSync3D):
    """``lipsync3d`` trained on ``prepared`` with the preset changed by ``changes``; ``value`` is
    its place on the study's axis."""

    def __init__(self, ctx, name: str, description: str, value: float, prepared: Path, changes: dict):
        super().__init__(ctx)
        self.name, self.description, self.value = name, description, float(value)
        self.prepared, self.changes = Path(prepared), dict(changes)

    def fit(self) -> dict:
        # the main comparison's lipsync3d model, when this variant is it
        same = self.prepared == Path(self.ctx.train_prepared) and not self.changes
        self.model_dir, info = train_cached(self.ctx, LipSync3D.name if same else self.name, self.prepared, self.options())
        self._model = None
        return info


def first_seconds(train_video: Path, train_prepared: Path, seconds: float, cache: Path,
                  progress=None) -> tuple[Path, Path, float]:
    """(video, prepared clip, length in seconds) of the first ``seconds`` of the training footage;
    the whole training clip when it is not longer than that."""
    from lipsync.prepared import open_prepared

    from .protocol import prepare_cached, write_segment

    clip = open_prepared(train_prepared)
    frames = int(round(seconds * clip.fps))
    if frames >= clip.num_frames:
        return Path(train_video), Path(train_prepared), clip.num_frames / clip.fps
    audio, _ = clip.audio()
    folder = cache / f"first-{content_key(Path(train_prepared) / 'manifest.json', frames)}"
    folder.mkdir(parents=True, exist_ok=True)
    video = folder / f"first_{seconds:g}s.mp4"
    if not video.is_file():
        write_segment(Path(train_video), audio, 0, frames, clip.fps, video, folder)
    return video, prepare_cached(video, cache, sync_audio=False, progress=progress), frames / clip.fps


def check_values(study: Study, preset: str, values: list) -> None:
    """Refuse a bad sweep before any work (one sentence)."""
    from lipsync.common import LipsyncError
    from lipsync.training import lookahead_columns

    from .methods.lipsync3d import train_options

    if study is EFFICIENCY and (not values or any(not np.isfinite(s) or s <= 0 for s in values)):
        raise LipsyncError("--train-seconds takes positive numbers of seconds, e.g. 20 40 60 120 180.")
    if study is LOOKAHEAD:
        if not values:
            raise LipsyncError("--lookahead-ms takes numbers of ms, e.g. 110 80 40 0.")
        for ms in values:
            lookahead_columns(train_options(preset, lookahead_ms=ms))


def efficiency_variants(ctx, seconds: list[float]) -> list[Variant]:
    """One model per length of training footage (a length past the footage's end is the whole
    training part, once)."""
    out: list[Variant] = []
    for s in sorted(set(float(x) for x in seconds)):
        _, prepared, used = first_seconds(ctx.train_video, ctx.train_prepared, s, ctx.cache, ctx.progress)
        if any(v.value == used for v in out):
            continue
        out.append(Variant(ctx, f"lipsync3d_{s:g}s", f"lipsync3d trained on the first {used:g} s of the training footage",
                           used, prepared, {}))
    return out


def lookahead_variants(ctx, lookahead_ms: list[int]) -> list[Variant]:
    """One model per audio lookahead; the preset's own window is the main comparison's model."""
    from lipsync.audio_features import HOP, SAMPLE_RATE, window_offsets
    from lipsync.training import lookahead_columns

    from .methods.lipsync3d import train_options

    base = train_options(ctx.preset)
    step = 1000 * HOP // SAMPLE_RATE
    default_ms = step * int(window_offsets(base.audio_columns, lookahead_columns(base))[-1])
    out: list[Variant] = []
    for ms in sorted(set(lookahead_ms), reverse=True):
        changes = {} if ms == default_ms else {"lookahead_ms": int(ms)}
        out.append(Variant(ctx, f"lipsync3d_lookahead_{ms}ms", f"lipsync3d with {ms} ms of audio lookahead"
                           + (" (the default)" if not changes else ""), ms, ctx.train_prepared, changes))
    return out


def run_sweep(config, study: Study, values: list) -> dict:
    """A study (see the module docstring); returns ``STEM.json``'s document."""
    from lipsync.common import resolve_device

    from .cache import write_json
    from .core import RunContext
    from .metrics import get_metrics
    from .protocol import prepare_protocol
    from .run import Job, _progress_printer, _summaries, measure, results_folder
    from .stats import summarize

    check_values(study, config.preset, values)
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
                     options={"renderer": config.renderer, "mouth_motion": config.mouth_motion})
    variants = (efficiency_variants if study is EFFICIENCY else lookahead_variants)(ctx, values)
    info = {}
    for m in variants:
        t0 = time.perf_counter()
        info[m.name] = {"description": m.description, **m.fit(), "fit_wall_s": round(time.perf_counter() - t0, 1)}
    metric_unavail = {mt.name: reason for mt in metrics if mt.check and (reason := mt.check(settings))}
    reasons: dict[str, str] = {}
    measured = measure(variants, [Job(c.name, c, c.audio, True) for c in clips], metrics, settings, info, out=out,
                       cache=cache, videos="videos", samples="samples", metric_unavail=metric_unavail,
                       reasons=reasons, progress=progress, label="render and measure")
    results = _summaries(variants, metrics, measured.values, metric_unavail, {}, summarize, config.seed, reasons)
    doc = {"study": study.stem, "variable": study.variable, "results": results,
           "values": {m.name: m.value for m in variants}, "methods": info,
           "metrics": {mt.name: {"better": mt.better, "target": mt.target, "unit": mt.unit} for mt in metrics},
           "protocol": protocol, "preset": config.preset, "mouth_motion": config.mouth_motion,
           "test_clips": [c.name for c in clips],
           "timings_s": {"total": round(time.perf_counter() - t_start, 1)}}
    write_json(out / f"{study.stem}.json", doc)
    write_sweep_report(out, study, doc)
    return doc


def _cell(entry: dict) -> str:
    if "value" not in entry:
        return "unavailable"
    ci = entry.get("ci95")
    return f"{entry['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and all(np.isfinite(ci)) else "")


def write_sweep_report(out: Path, study: Study, doc: dict) -> None:
    """``STEM.md``, ``STEM.csv`` and ``plots/PLOT.png`` from the document."""
    from .report import _plt, _save

    names = list(doc["results"])
    keys = list(doc["metrics"])
    rows = [f"| {study.variable} | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    csv = [f"{study.column}," + ",".join(f"{k},{k}_lo,{k}_hi" for k in keys)]
    for n in names:
        r = doc["results"][n]
        rows.append(f"| {doc['values'][n]:g} | " + " | ".join(_cell(r.get(k, {})) for k in keys) + " |")
        cells = []
        for k in keys:
            e = r.get(k, {})
            ci = e.get("ci95") or [float("nan")] * 2
            cells += [f"{e.get('value', float('nan')):.6g}", f"{ci[0]:.6g}", f"{ci[1]:.6g}"]
        csv.append(f"{doc['values'][n]:g}," + ",".join(cells))
    motion = doc.get("mouth_motion", 1.0)
    text = (f"# {study.title}\n\n"
            f"lipsync3d ({doc['preset']} preset) {study.summary}; "
            + (f"synthesized with mouth motion {motion:g} (`--mouth-motion`); " if motion != 1.0 else "")
            + f"each model measured on the same "
            f"{len(doc['test_clips'])} test clips (self-reenactment); means over clips with 95% "
            f"bootstrap intervals.\n\n" + "\n".join(rows) + f"\n\n![{study.title.lower()}](plots/{study.plot}.png)\n")
    atomic_write_text(out / f"{study.stem}.md", text)
    atomic_write_text(out / f"{study.stem}.csv", "\n".join(csv) + "\n")
    plt = _plt()
    cols = min(4, len(keys))
    nrows = -(-len(keys) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 2.9 * nrows), squeeze=False)
    xs = np.array([doc["values"][n] for n in names])
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
        ax.set_xlabel(study.variable, fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    (out / "plots").mkdir(exist_ok=True)
    _save(fig, out / "plots" / f"{study.plot}.png")
