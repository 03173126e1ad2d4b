"""The demo's event handlers: plain functions that call ``lipsync`` and return what the page shows.

Every handler takes the ``DemoConfig`` first (``build_app`` binds it) and the session dict kept in
``gr.State``; long ones take ``progress=gr.Progress()``. Failures become one sentence on the page
(``errors.user_errors``); what the page shows is rendered by ``views``. Heavy libraries are
imported inside the handlers.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import gradio as gr

from lipsync.common import LipsyncError
from lipsync.files import atomic_write_text

from . import jobs
from .checks import check_audio, check_name, check_text, check_video, shown_name
from .config import EXAMPLE_TEXT, DemoConfig
from .example_model import MODEL_DIR, model_key, shipped_model
from .errors import user_errors
from .views import (CURVE_EVERY_S, job_status, loss_plot, model_choices, progress_bar, speaker_choices,
                    speaker_overview, synthesis_status, training_view)

log = logging.getLogger("demo")


def stage_progress(progress, label: str = ""):
    """lipsync's ``progress(stage, done, total)`` -> a ``gr.Progress`` bar."""
    def update(stage: str, done: int, total: int) -> None:
        progress((done, max(total, 1)), desc=f"{label}{stage}")
    return update


# ---------------------------------------------------------------------------------------------
# page load

@user_errors
def start(cfg: DemoConfig, token: str | None):
    """On page load: the session of this browser's cookie token (see ``demo.web``) or a new one, and
    the example's cached result when there is one. Returns (session, speakers, models, example
    video, example 3D face, example downloads, example status)."""
    session = jobs.new_session(cfg, token)
    cached = example_cached_result(cfg, EXAMPLE_TEXT, shipped=True) or example_cached_result(cfg, EXAMPLE_TEXT, shipped=False)
    if cached:
        session["speaker"] = jobs.EXAMPLE_ID
        video, mesh, files, status = cached
    else:
        video = mesh = files = None
        status = ("Press **Run the example** to make the shipped model (trained on 3 minutes of GRID speaker s1) "
                  "speak the sentence above over a 3-second clip of the same speaker it never saw (a few seconds), "
                  "or **Train it yourself** to preprocess that clip, train a model on it alone and make it speak "
                  "(about 2-3 minutes on 2 CPU cores)."
                  if shipped_model() else
                  "Press **Train it yourself** to preprocess the bundled 3-second GRID clip, train a model on it "
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


def _example_output_dir(cfg: DemoConfig, text: str, *, shipped: bool) -> Path:
    from lipsync.files import content_key
    from lipsync.synthesis import RENDER_VERSION

    speaker = jobs.example_speaker(cfg)
    if shipped:
        return speaker.folder / "outputs" / content_key(jobs.SHIPPED, model_key(MODEL_DIR), text, RENDER_VERSION)
    model = jobs.model_dir(speaker, cfg.example_preset)
    return speaker.folder / "outputs" / content_key(model.name, text, RENDER_VERSION)


def _result_files(folder: Path) -> tuple[str, str, list[str]]:
    video, mesh, csv = folder / "talk.mp4", folder / "face.glb", folder / "blendshapes.csv"
    return str(video), str(mesh), [str(video), str(mesh), str(csv)]


def example_cached_result(cfg: DemoConfig, text: str, *, shipped: bool):
    """(video, mesh, downloads, status) of an example already made for ``text`` (by the shipped
    model, or by the model trained on the bundled clip), else None."""
    if shipped and shipped_model() is None:
        return None
    folder = _example_output_dir(cfg, text, shipped=shipped)
    if not (folder / "summary.json").is_file():
        return None
    summary = json.loads((folder / "summary.json").read_text())
    return (*_result_files(folder), synthesis_status(summary, cached=True))


def _synthesize_example(model_folder: Path, out: Path, cfg: DemoConfig, text: str, progress, label: str,
                        target: Path | None = None) -> dict:
    """Synthesize ``text`` with the model into the example's cache folder ``out``; its summary.json
    is written last and marks the entry done."""
    from lipsync import load_model

    out.mkdir(parents=True, exist_ok=True)
    video, mesh, _ = _result_files(out)
    speech = speech_file(cfg, "text", None, text, out)
    return load_model(model_folder).synthesize(out=video, audio=speech, target=target, mesh=mesh,
                                               blendshapes=out / "blendshapes.csv",
                                               progress=stage_progress(progress, label)).to_dict()


def _finish_example(out: Path, summary: dict, t0: float, what: str) -> tuple:
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str))  # marks the cache entry done
    return (*_result_files(out), synthesis_status(summary) + f" {what} took {summary['wall_s']:.0f} s; the next "
            "visit shows this at once.")


@user_errors
def run_example(cfg: DemoConfig, session: dict, text: str, progress=gr.Progress()):
    """The shipped model (trained on 3 minutes of GRID s1) speaks ``text`` over the bundled clip,
    which it never saw; cached by content. Without a shipped model, the same as ``train_example``.
    Returns (session, speakers, models, video, 3D face, downloads, status)."""
    if shipped_model() is None:
        return train_example(cfg, session, text, progress)
    text = check_text(text or EXAMPLE_TEXT, cfg.limits)
    speaker = jobs.example_speaker(cfg)
    session = {**session, "speaker": jobs.EXAMPLE_ID}
    cached = example_cached_result(cfg, text, shipped=True)
    if cached is None:
        t0 = time.perf_counter()
        # prepared like any speaker, so its overview, training and comparison tabs work as well
        _ensure_prepared(speaker, progress, "1/2 preprocess the example clip: ")
        out = _example_output_dir(cfg, text, shipped=True)
        summary = _synthesize_example(MODEL_DIR, out, cfg, text, progress, "2/2 synthesize: ", target=speaker.video)
        cached = _finish_example(out, summary, t0, "Preprocessing the example clip and synthesis")
    return (session, speaker_choices(cfg, session), model_choices(cfg, session), *cached)


@user_errors
def train_example(cfg: DemoConfig, session: dict, text: str, progress=gr.Progress()):
    """Preprocess the bundled example, train a model on it alone and synthesize, each step cached
    by content. Returns (session, speakers, models, video, 3D face, downloads, status)."""
    text = check_text(text or EXAMPLE_TEXT, cfg.limits)
    cached = example_cached_result(cfg, text, shipped=False)
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
        out = _example_output_dir(cfg, text, shipped=False)
        summary = _synthesize_example(folder, out, cfg, text, progress, "3/3 synthesize: ")
        cached = _finish_example(out, summary, t0, "Preprocessing, training and synthesis")
    return (session, speaker_choices(cfg, session), model_choices(cfg, session), *cached)


# ---------------------------------------------------------------------------------------------
# your speaker: upload and preprocess


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
        yield curve, job_status(job), gr.skip()
    if job.error:
        raise LipsyncError(job.error)
    yield loss_plot(job, folder), job_status(job), model_choices(cfg, session)


@user_errors
def cancel_training(cfg: DemoConfig, session: dict, preset: str) -> str:
    speaker = jobs.get_speaker(cfg, session, session.get("speaker"))
    job = jobs.training_job(jobs.model_dir(speaker, preset))
    if job is None or job.done.is_set():
        raise LipsyncError("no training of this speaker with this preset is running.")
    job.cancel.set()
    return progress_bar(job.step, job.total) + "<p>Cancelling: writing a checkpoint…</p>"


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
                      text: str | None, target_kind: str, target: str | None, mouth_motion: float = 1.0,
                      progress=gr.Progress()):
    """Drive the selected speaker's model (``mouth_motion``: as ``synthesize``'s). Returns (video,
    3D face, downloads, status)."""
    from lipsync import load_model

    speaker, folder = resolve_model(cfg, session, preset)
    # "the training video": the model's own training clip; the shipped model's was not shipped, so
    # it speaks over the example speaker's bundled clip (preprocessed on the fly)
    target_path = speaker.video if Path(folder) == MODEL_DIR else None
    if target_kind == "upload":
        shown = shown_name(target, "target video or photo")
        target_path, _, _ = check_video(target, shown, cfg.limits, max_seconds=cfg.limits.target_s,
                                        work=jobs.session_dir(cfg, session) / "uploads", allow_image=True)
    out = jobs.new_run_dir(cfg, session, "synth")
    video, mesh, files = str(out / "talk.mp4"), str(out / "face.glb"), None
    try:
        speech = speech_file(cfg, source, audio, text, out)
        summary = load_model(folder).synthesize(out=video, audio=speech, target=target_path, mesh=mesh,
                                                blendshapes=out / "blendshapes.csv", mouth_motion=mouth_motion,
                                                progress=stage_progress(progress)).to_dict()
    except LipsyncError as err:
        shutil.rmtree(out, ignore_errors=True)
        msg = str(err)
        if target_path is not None:
            msg = msg.replace(str(target_path), shown_name(target))
        raise LipsyncError(msg) from None
    _, _, files = _result_files(out)
    return video, mesh, files, synthesis_status(summary)
