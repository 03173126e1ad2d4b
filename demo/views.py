"""What the page shows, rendered from the demo's state: the speaker and model lists, a speaker's
preprocessing summary and previews, the training status and loss curve, a synthesis summary."""
from __future__ import annotations

import html
import time
from pathlib import Path

import gradio as gr

from . import jobs
from .config import DemoConfig

PREVIEWS = ("mesh", "atlas_raw", "atlas_normalized", "pose", "lighting")
LOSS_POINTS = 400   # points per curve in the live loss plot
LOSS_SMOOTH = 25    # steps in the running mean of the per-step training losses
CURVE_EVERY_S = 10  # seconds between redraws of the live loss curve


def speaker_choices(cfg: DemoConfig, session: dict) -> gr.Dropdown:
    return gr.Dropdown(choices=jobs.list_speakers(cfg, session), value=session.get("speaker"))


def model_choices(cfg: DemoConfig, session: dict) -> gr.Dropdown:
    """The selected speaker's finished models (best first) for the drive and compare tabs."""
    sid = session.get("speaker")
    models = jobs.finished_models(jobs.get_speaker(cfg, session, sid)) if sid else []
    choices = [(jobs.PRESET_LABELS.get(p, p), p) for p, _ in models]
    return gr.Dropdown(choices=choices, value=choices[0][1] if choices else None)


def synthesis_status(summary: dict, *, cached: bool = False) -> str:
    """The page's description of a synthesis (``SynthesisResult.to_dict()``, or its cached JSON)."""
    lines = [f"**{summary['frames']} frames** ({summary['seconds']:.1f} s at {summary['fps']:g} fps, "
             f"{summary['resolution']}), rendered with {summary['renderer']}; speech in "
             f"{100 * summary.get('speech_fraction', 0):.0f}% of frames."]
    if cached:
        lines.append("Made earlier with the same model and input, so it is shown straight from the cache.")
    elif "timings_s" in summary:
        lines.append(f"Took {summary['timings_s'].get('total', 0):.1f} s ({summary.get('frames_per_second', 0):g} frames/s).")
    lines += [f"- note: {n}" for n in summary.get("notes", [])]
    return "\n\n".join(lines)


def speaker_overview(cfg: DemoConfig, speaker: jobs.Speaker) -> tuple:
    """(summary markdown, mesh, atlas before, atlas after, pose plot, lighting plot)."""
    from lipsync.prepared import open_prepared

    if not speaker.is_prepared():
        return (f"**{speaker.name}** is not preprocessed yet.", None, None, None, None, None)
    m = open_prepared(speaker.prepared).info
    light = m.lighting
    lines = [
        f"### {speaker.name}",
        f"- video: {m.width}x{m.height}, {m.fps:g} fps, {m.frames} frames ({m.duration_s:.1f} s)",
        f"- usable: {m.usable_s:.1f} s ({100 * m.valid_fraction:.0f}% of frames; "
        f"{m.interpolated_frames} interpolated, {m.excluded_frames} excluded)",
        f"- face: {m.face_width_px:.0f} px wide; head yaw {m.pose['yaw_deg'][0]:+.0f}..{m.pose['yaw_deg'][1]:+.0f} deg",
        f"- lighting change over time (std, log units): {light['temporal_std_before']:.3f} before, "
        f"{light['temporal_std_after']:.3f} after normalization",
        f"- preprocessing took {m.timings_s['total']:.1f} s",
    ]
    lines.append("\n**Warnings**\n" + "\n".join(f"- ⚠️ {w}" for w in m.warnings) if m.warnings else "\nNo warnings.")
    images = [str(speaker.prepared / m.previews[k]) if k in m.previews else None for k in PREVIEWS]
    return ("\n".join(lines), *images)


def loss_frame(job: jobs.TrainJob | None, folder: Path):
    """Long-format losses for ``gr.LinePlot``: step, loss, series (running means of the per-step
    training losses while a run is live, and the validation losses from ``train_log.csv``)."""
    import numpy as np
    import pandas as pd

    rows = []
    if job is not None and job.losses:
        arr = np.array(job.losses, float)
        k = min(LOSS_SMOOTH, len(arr))
        kernel = np.ones(k) / k
        pick = np.unique(np.linspace(k - 1, len(arr) - 1, min(LOSS_POINTS, len(arr) - k + 1)).round().astype(int))
        for col, label in ((1, "train geometry"), (2, "train texture")):
            smooth = np.convolve(arr[:, col], kernel, mode="valid")  # index i ends at step i + k - 1
            rows += [(arr[i, 0], smooth[i - k + 1], label) for i in pick]
    from lipsync.model_io import ModelFolder

    log_path = ModelFolder(folder).log
    if log_path.is_file():
        log_rows = pd.read_csv(log_path)
        series = [("val_geometry", "validation geometry"), ("val_texture", "validation texture")]
        if not rows:  # no live run: the logged training means instead
            series += [("train_geometry", "train geometry"), ("train_texture", "train texture")]
        for col, label in series:
            rows += [(s, v, label) for s, v in zip(log_rows["step"], log_rows[col])]
    # explicit dtypes: an empty or object column would make the plot's axes categorical
    return pd.DataFrame(rows, columns=["step", "loss", "series"]).astype({"step": "int64", "loss": "float64", "series": "str"})


def loss_plot(job: jobs.TrainJob | None, folder: Path):
    """The loss curves of ``loss_frame`` as a matplotlib figure (log scale) for ``gr.Plot``.

    A static image: Gradio's LinePlot, updated while its event is still running, showed only its
    axes in Chromium until the run ended."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from lipsync.training import log_loss_axis

    df = loss_frame(job, folder)
    fig = Figure(figsize=(9, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    styles = {"train geometry": ("#1f77b4", "-"), "train texture": ("#d62728", "-"),
              "validation geometry": ("#1f77b4", "--"), "validation texture": ("#d62728", "--")}
    for label, part in df.groupby("series", sort=False):
        color, ls = styles.get(label, (None, "-"))
        ax.plot(part["step"], part["loss"], ls, color=color, label=label, marker="o" if ls == "--" else None, ms=3)
    if len(df):
        log_loss_axis(ax)  # plain tick labels: training may be drawing its own plot in another thread
        ax.legend(fontsize=8, ncol=2)
    else:
        ax.text(0.5, 0.5, "no training yet", ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xlabel("step")
    ax.set_ylabel("L1 loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


def progress_bar(done: int, total: int) -> str:
    pct = 100.0 * done / max(total, 1)
    return (f'<div class="train-bar"><div style="width:{pct:.1f}%"></div></div>'
            f"<p>step {done} / {total} ({pct:.0f}%)</p>")


def job_status(job: jobs.TrainJob) -> str:
    elapsed = time.time() - job.started
    if job.done.is_set():
        if job.error:
            return f"<p><b>Training stopped:</b> {html.escape(job.error)}</p>"
        if job.cancelled:
            return progress_bar(job.step, job.total) + (f"<p>Cancelled at step {job.step}; a checkpoint is kept, so "
                                                "<b>Train</b> resumes from there.</p>")
        return progress_bar(job.total, job.total) + f"<p>Finished in {_clock(elapsed)}. The model is ready in <b>Drive it</b>.</p>"
    left = job.seconds_left()
    head = "Resumed from the checkpoint. " if job.resumed else ""
    return progress_bar(job.step, job.total) + f"<p>{head}Elapsed {_clock(elapsed)}, about {_clock(left)} left.</p>"


def training_view(cfg: DemoConfig, session: dict, preset: str):
    """(loss curve, status) of the selected speaker's model for ``preset``, without starting anything."""
    speaker = jobs.get_speaker(cfg, session, session.get("speaker"))
    folder = jobs.model_dir(speaker, preset)
    job = jobs.training_job(folder)
    if job is not None and (not job.done.is_set() or job.error or job.cancelled):
        return loss_plot(job, folder), job_status(job)
    from lipsync.model_io import ModelFolder

    model = ModelFolder(folder)
    state = model.state()
    if state == "finished":
        info = model.summary()
        return loss_plot(None, folder), (f"<p>Trained: {info.steps} steps in {_clock(info.seconds)}; "
                                          f"validation loss {info.val_loss or float('nan'):.4f}.</p>")
    if state == "stopped":
        return loss_plot(None, folder), progress_bar(*model.stopped_at()) + "<p>Stopped; <b>Train</b> resumes from the checkpoint.</p>"
    if not speaker.is_prepared():
        return loss_plot(None, folder), "<p>Preprocess this speaker first (tab <b>Your speaker</b>).</p>"
    return loss_plot(None, folder), "<p>Not trained with this preset yet.</p>"
