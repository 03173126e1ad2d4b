"""The demo's event handlers: plain functions that call ``lipsync`` and return what the page shows.

Every handler takes the ``DemoConfig`` first (``build_app`` binds it) and the session dict kept in
``gr.State``; long ones take ``progress=gr.Progress()``. Expected failures (``LipsyncError``)
reach the page as ``gr.Error`` with their one sentence; anything else as a one-sentence
"unexpected" message, with the traceback only in the server log. Heavy libraries are imported
inside the handlers.
"""
from __future__ import annotations

import functools
import html
import inspect
import json
import logging
import re
import shutil
import time
from pathlib import Path

import gradio as gr

from lipsync.common import LipsyncError
from lipsync.files import atomic_write_text

from . import jobs
from .checks import check_audio, check_name, check_text, check_video, shown_name
from .config import EXAMPLE_TEXT, DemoConfig

log = logging.getLogger("demo")
PREVIEWS = ("mesh", "atlas_raw", "atlas_normalized", "pose", "lighting")
LOSS_POINTS = 400   # points per curve in the live loss plot
LOSS_SMOOTH = 25    # steps in the running mean of the per-step training losses
CURVE_EVERY_S = 10  # seconds between redraws of the live loss curve


# ---------------------------------------------------------------------------------------------
# errors

def _clean(message: str, cfg: DemoConfig) -> str:
    """Server paths in a message -> the file's name (the visitor never sees the folder layout)."""
    return re.sub(re.escape(str(cfg.root)) + r"/[^\s,;:()']*/([^/\s,;:()']+)", r"\1", message)


def _as_gr_error(err: Exception, cfg: DemoConfig) -> gr.Error:
    if isinstance(err, gr.Error):
        return err
    if isinstance(err, LipsyncError):
        return gr.Error(_clean(str(err), cfg), duration=None, print_exception=False)
    log.exception("unexpected failure in a demo handler")
    return gr.Error(_clean(f"Something went wrong unexpectedly ({type(err).__name__}: {err}); the server log has the details.", cfg),
                    duration=None, print_exception=False)


def _session(cfg: DemoConfig, session):
    """The session dict, or a new session when the page sent none (an event that beat the page load)."""
    if isinstance(session, dict) and jobs.TOKEN_RE.match(str(session.get("token", ""))):
        return session
    if session is None or isinstance(session, dict):
        return jobs.new_session(cfg)
    return session  # start() gets the stored token here, not a session


def user_errors(fn):
    """Turn ``LipsyncError`` (and anything unexpected) into a one-sentence ``gr.Error``; every
    handler takes (cfg, session, ...) and gets a valid session."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(cfg, session, *args, **kwargs):
            try:
                yield from fn(cfg, _session(cfg, session), *args, **kwargs)
            except Exception as err:  # noqa: BLE001 - shown as one sentence
                raise _as_gr_error(err, cfg) from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(cfg, session, *args, **kwargs):
        try:
            return fn(cfg, _session(cfg, session), *args, **kwargs)
        except Exception as err:  # noqa: BLE001 - shown as one sentence
            raise _as_gr_error(err, cfg) from None
    return wrapper


def stage_progress(progress, label: str = ""):
    """lipsync's ``progress(stage, done, total)`` -> a ``gr.Progress`` bar."""
    def update(stage: str, done: int, total: int) -> None:
        progress((done, max(total, 1)), desc=f"{label}{stage}")
    return update


# ---------------------------------------------------------------------------------------------
# page load, speaker list

def speaker_choices(cfg: DemoConfig, session: dict) -> gr.Dropdown:
    return gr.Dropdown(choices=jobs.list_speakers(cfg, session), value=session.get("speaker"))


def model_choices(cfg: DemoConfig, session: dict) -> gr.Dropdown:
    """The selected speaker's finished models (best first) for the drive and compare tabs."""
    sid = session.get("speaker")
    models = jobs.finished_models(jobs.get_speaker(cfg, session, sid)) if sid else []
    choices = [(jobs.PRESET_LABELS.get(p, p), p) for p, _ in models]
    return gr.Dropdown(choices=choices, value=choices[0][1] if choices else None)


@user_errors
def start(cfg: DemoConfig, token: str | None):
    """On page load: the session of this browser's cookie token (see ``demo.web``) or a new one, and
    the example's cached result when there is one. Returns (session, speakers, models, example
    video, example 3D face, example downloads, example status)."""
    session = jobs.new_session(cfg, token)
    cached = example_cached_result(cfg, EXAMPLE_TEXT)
    if cached:
        session["speaker"] = jobs.EXAMPLE_ID
        video, mesh, files, status = cached
    else:
        video = mesh = files = None
        status = ("Press **Run the example** to preprocess the bundled 3-second GRID clip, train a model on it "
                  "and make it speak the sentence above (about 2-3 minutes the first time on 2 CPU cores; "
                  "instant afterwards).")
    return session, speaker_choices(cfg, session), model_choices(cfg, session), video, mesh, files, status


# ---------------------------------------------------------------------------------------------
# the bundled example

def _ensure_prepared(speaker: jobs.Speaker, progress, label: str = "", shown: str | None = None) -> Path:
    """Preprocess the speaker's video unless done; errors name the file as ``shown``."""
    from lipsync.preprocessing import preprocess

    if not speaker.is_prepared():
        speaker.folder.mkdir(parents=True, exist_ok=True)
        try:
            preprocess(speaker.video, speaker.prepared, overwrite=True, progress=stage_progress(progress, label))
        except LipsyncError as err:
            raise LipsyncError(str(err).replace(str(speaker.video), shown or speaker.video.name)) from None
    return speaker.prepared


def _example_output_dir(cfg: DemoConfig, text: str) -> Path:
    from lipsync.files import content_key
    from lipsync.synthesis import RENDER_VERSION

    speaker = jobs.example_speaker(cfg)
    model = jobs.model_dir(speaker, cfg.example_preset)
    return speaker.folder / "outputs" / content_key(model.name, text, RENDER_VERSION)


def _result_files(folder: Path) -> tuple[str, str, list[str]]:
    video, mesh, csv = folder / "talk.mp4", folder / "face.glb", folder / "blendshapes.csv"
    return str(video), str(mesh), [str(video), str(mesh), str(csv)]


def example_cached_result(cfg: DemoConfig, text: str):
    """(video, mesh, downloads, status) of an example already made for ``text``, else None."""
    folder = _example_output_dir(cfg, text)
    if not (folder / "summary.json").is_file():
        return None
    summary = json.loads((folder / "summary.json").read_text())
    return (*_result_files(folder), _synthesis_status(summary, cached=True))


@user_errors
def run_example(cfg: DemoConfig, session: dict, text: str, progress=gr.Progress()):
    """Preprocess, train and synthesize the bundled example, each step cached by content.
    Returns (session, speakers, models, video, 3D face, downloads, status)."""
    from lipsync import load_model

    text = check_text(text or EXAMPLE_TEXT, cfg.limits)
    cached = example_cached_result(cfg, text)
    speaker = jobs.example_speaker(cfg)
    session = {**session, "speaker": jobs.EXAMPLE_ID}
    if cached is None:
        t0 = time.perf_counter()
        prepared = _ensure_prepared(speaker, progress, "1/3 preprocess: ")
        folder = jobs.model_dir(speaker, cfg.example_preset)
        if jobs.model_state(folder) != "finished":
            job = jobs.start_training(prepared, folder, cfg.example_preset, cfg.device)
            while not job.done.wait(0.5):
                progress((job.step, job.total), desc="2/3 train", unit="steps")
            if job.error or job.cancelled:
                raise LipsyncError(job.error or "training of the example was cancelled; run it again to resume.")
        out = _example_output_dir(cfg, text)
        out.mkdir(parents=True, exist_ok=True)
        video, mesh, _ = _result_files(out)
        speech = speech_file(cfg, "text", None, text, out)
        summary = load_model(folder).synthesize(out=video, audio=speech, mesh=mesh, blendshapes=out / "blendshapes.csv",
                                                progress=stage_progress(progress, "3/3 synthesize: ")).to_dict()
        summary["wall_s"] = round(time.perf_counter() - t0, 1)
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str))  # marks the cache entry done
        cached = (*_result_files(out), _synthesis_status(summary) + f" Preprocessing, training and synthesis "
                  f"took {summary['wall_s']:.0f} s; the next visit shows this at once.")
    return (session, speaker_choices(cfg, session), model_choices(cfg, session), *cached)


def _synthesis_status(summary: dict, *, cached: bool = False) -> str:
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


# ---------------------------------------------------------------------------------------------
# your speaker: upload and preprocess

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


@user_errors
def preprocess_speaker(cfg: DemoConfig, session: dict, video: str | None, name: str | None, progress=gr.Progress()):
    """Check an uploaded (or recorded) video, store it as this session's speaker and preprocess it.
    Returns (session, speakers, models, summary, mesh, atlas before, atlas after, pose, lighting)."""
    shown = shown_name(video, "video")
    name = check_name(name)
    work = jobs.session_dir(cfg, session) / "uploads"
    work.mkdir(exist_ok=True)
    path, _, _ = check_video(video, shown, cfg.limits, work=work)
    speaker = jobs.add_speaker(cfg, session, path, name, uploaded_as=shown)
    try:
        _ensure_prepared(speaker, progress, "preprocess: ", shown)
    except LipsyncError:
        shutil.rmtree(speaker.folder, ignore_errors=True)  # a failed upload leaves no speaker behind
        raise
    session = {**session, "speaker": speaker.id}
    return (session, speaker_choices(cfg, session), model_choices(cfg, session), *speaker_overview(cfg, speaker))


@user_errors
def select_speaker(cfg: DemoConfig, session: dict, speaker_id: str | None, preset: str | None):
    """Show a speaker chosen in the list. Returns (session, models, summary, 5 previews, loss
    curve, training status)."""
    if not speaker_id:
        return (session, model_choices(cfg, session), "No speaker selected.", None, None, None, None, None,
                None, "")
    speaker = jobs.get_speaker(cfg, session, speaker_id)
    session = {**session, "speaker": speaker.id}
    curve, status = training_view(cfg, session, preset or "quick")
    return (session, model_choices(cfg, session), *speaker_overview(cfg, speaker), curve, status)


# ---------------------------------------------------------------------------------------------
# training

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


def _bar(done: int, total: int) -> str:
    pct = 100.0 * done / max(total, 1)
    return (f'<div class="train-bar"><div style="width:{pct:.1f}%"></div></div>'
            f"<p>step {done} / {total} ({pct:.0f}%)</p>")


def _job_status(job: jobs.TrainJob) -> str:
    elapsed = time.time() - job.started
    if job.done.is_set():
        if job.error:
            return f"<p><b>Training stopped:</b> {html.escape(job.error)}</p>"
        if job.cancelled:
            return _bar(job.step, job.total) + (f"<p>Cancelled at step {job.step}; a checkpoint is kept, so "
                                                "<b>Train</b> resumes from there.</p>")
        return _bar(job.total, job.total) + f"<p>Finished in {_clock(elapsed)}. The model is ready in <b>Drive it</b>.</p>"
    left = job.seconds_left()
    head = "Resumed from the checkpoint. " if job.resumed else ""
    return _bar(job.step, job.total) + f"<p>{head}Elapsed {_clock(elapsed)}, about {_clock(left)} left.</p>"


def training_view(cfg: DemoConfig, session: dict, preset: str):
    """(loss curve, status) of the selected speaker's model for ``preset``, without starting anything."""
    speaker = jobs.get_speaker(cfg, session, session.get("speaker"))
    folder = jobs.model_dir(speaker, preset)
    job = jobs.training_job(folder)
    if job is not None and (not job.done.is_set() or job.error or job.cancelled):
        return loss_plot(job, folder), _job_status(job)
    from lipsync.model_io import ModelFolder

    model = ModelFolder(folder)
    state = model.state()
    if state == "finished":
        info = model.summary()
        return loss_plot(None, folder), (f"<p>Trained: {info.steps} steps in {_clock(info.seconds)}; "
                                          f"validation loss {info.val_loss or float('nan'):.4f}.</p>")
    if state == "stopped":
        return loss_plot(None, folder), _bar(*model.stopped_at()) + "<p>Stopped; <b>Train</b> resumes from the checkpoint.</p>"
    if not speaker.is_prepared():
        return loss_plot(None, folder), "<p>Preprocess this speaker first (tab <b>Your speaker</b>).</p>"
    return loss_plot(None, folder), "<p>Not trained with this preset yet.</p>"


@user_errors
def select_current(cfg: DemoConfig, session: dict, preset: str | None):
    """``select_speaker`` for the session's current speaker (after a page load or the example)."""
    return select_speaker.__wrapped__(cfg, session, session.get("speaker"), preset)


@user_errors
def refresh_training(cfg: DemoConfig, session: dict | None, preset: str | None):
    """``training_view`` for the selected speaker, or an empty view when there is none."""
    if not session or not session.get("speaker"):
        return loss_plot(None, cfg.root / "none"), "<p>Run the example or add a speaker first.</p>"
    return training_view(cfg, session, preset or "quick")


@user_errors
def train_speaker(cfg: DemoConfig, session: dict, preset: str):
    """Train (or resume) the selected speaker's model; yields (loss curve, status, models) about
    once a second until the run ends. Leaving the page does not stop the run."""
    speaker = jobs.get_speaker(cfg, session, session.get("speaker"))
    if not speaker.is_prepared():
        raise LipsyncError(f"{speaker.name} is not preprocessed yet; preprocess the video in 'Your speaker' first.")
    folder = jobs.model_dir(speaker, preset)
    if jobs.model_state(folder) == "finished":
        curve, status = training_view(cfg, session, preset)
        yield curve, status + "<p>Already trained with this preset.</p>", model_choices(cfg, session)
        return
    job = jobs.start_training(speaker.prepared, folder, preset, cfg.device)
    drawn = 0.0
    while not job.done.wait(1.0):
        # the status every second; the curve (an image) every CURVE_EVERY_S
        now = time.monotonic()
        curve = gr.skip()
        if now - drawn >= CURVE_EVERY_S:
            curve, drawn = loss_plot(job, folder), now
        yield curve, _job_status(job), gr.skip()
    if job.error:
        raise LipsyncError(job.error)
    yield loss_plot(job, folder), _job_status(job), model_choices(cfg, session)


@user_errors
def cancel_training(cfg: DemoConfig, session: dict, preset: str) -> str:
    speaker = jobs.get_speaker(cfg, session, session.get("speaker"))
    job = jobs.training_job(jobs.model_dir(speaker, preset))
    if job is None or job.done.is_set():
        raise LipsyncError("no training of this speaker with this preset is running.")
    job.cancel.set()
    return _bar(job.step, job.total) + "<p>Cancelling: writing a checkpoint…</p>"


# ---------------------------------------------------------------------------------------------
# driving the model

def resolve_model(cfg: DemoConfig, session: dict, preset: str | None) -> tuple[jobs.Speaker, Path]:
    speaker = jobs.get_speaker(cfg, session, session.get("speaker"))
    models = dict(jobs.finished_models(speaker))
    if not models:
        raise LipsyncError(f"{speaker.name} has no trained model yet; train one in the 'Train' tab first.")
    if preset and preset not in models:
        raise LipsyncError(f"{speaker.name} has no finished {preset} model; train it first or pick another.")
    return speaker, models[preset] if preset else next(iter(models.values()))


def speech_file(cfg: DemoConfig, source: str, audio: str | None, text: str | None, folder: Path) -> Path:
    """The chosen speech as a sound file within the limits: the visitor's audio, or their text
    spoken by espeak-ng into ``folder`` (refused when it runs longer than the audio limit)."""
    from lipsync.synthesis import text_to_speech

    if source == "text":
        folder.mkdir(parents=True, exist_ok=True)
        return text_to_speech(check_text(text, cfg.limits), folder, max_seconds=cfg.limits.audio_s)
    path, _ = check_audio(audio, shown_name(audio, "audio"), cfg.limits)
    return path


@user_errors
def synthesize_speech(cfg: DemoConfig, session: dict, preset: str | None, source: str, audio: str | None,
                      text: str | None, target_kind: str, target: str | None, progress=gr.Progress()):
    """Drive the selected speaker's model. Returns (video, 3D face, downloads, status)."""
    from lipsync import load_model

    speaker, folder = resolve_model(cfg, session, preset)
    target_path = None
    if target_kind == "upload":
        shown = shown_name(target, "target video or photo")
        target_path, _, _ = check_video(target, shown, cfg.limits, max_seconds=cfg.limits.target_s,
                                        work=jobs.session_dir(cfg, session) / "uploads", allow_image=True)
    out = jobs.new_run_dir(cfg, session, "synth")
    video, mesh, files = str(out / "talk.mp4"), str(out / "face.glb"), None
    try:
        speech = speech_file(cfg, source, audio, text, out)
        summary = load_model(folder).synthesize(out=video, audio=speech, target=target_path, mesh=mesh,
                                                blendshapes=out / "blendshapes.csv",
                                                progress=stage_progress(progress)).to_dict()
    except LipsyncError as err:
        shutil.rmtree(out, ignore_errors=True)
        msg = str(err)
        if target_path is not None:
            msg = msg.replace(str(target_path), shown_name(target))
        raise LipsyncError(msg) from None
    _, _, files = _result_files(out)
    return video, mesh, files, _synthesis_status(summary)
