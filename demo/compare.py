"""Compare side by side: the same audio through this model and the evaluation suite's baselines,
in one grid video, with the suite's metrics.

The test clip is the end of the speaker's training video (the last ``TEST_SECONDS``; the whole
video when it is shorter). With the clip's own audio (self-reenactment) every method remakes the
real footage, so the metrics that compare against it apply; with other audio only the metrics
that need no reference do. Everything is cached per speaker under ``compare_cache/`` (prepared
clips, trained baselines, metric values), keyed by content, as in ``python -m eval.run``.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import gradio as gr

from lipsync.common import LipsyncError

from . import jobs
from .config import DemoConfig
from .errors import user_errors
from .handlers import resolve_model, speech_file, stage_progress

TEST_SECONDS = 8.0
THIS_MODEL = "this model"
BASELINES = {  # name -> label on the page
    "ground_truth": "ground truth (the real footage; self-reenactment only)",
    "frozen": "frozen: mouth held closed (the lip-sync floor)",
    "personalized_2d": "personalized 2D baseline (Wav2Lip-style crop, trained on this speaker)",
    "no_pose_norm": "ablation: no pose normalization (trains a model)",
    "no_lighting_norm": "ablation: no lighting normalization (trains a model)",
    "no_autoregression": "ablation: no auto-regression (trains a model)",
    "external": "an uploaded result of another system",
}
DEFAULT_BASELINES = ["ground_truth", "frozen", "personalized_2d"]


def comparison_clip(speaker: jobs.Speaker, cache: Path, progress):
    """(training prepared clip with the raw atlas, the test clip), both cached."""
    from lipsync.files import content_key
    from eval.protocol import clip_from, prepare_cached, write_segment
    from lipsync.prepared import open_prepared

    report = stage_progress(progress)
    train_prepared = prepare_cached(speaker.video, cache, sync_audio=True, progress=report)
    full = open_prepared(train_prepared)
    n, fps = full.num_frames, full.fps
    length = int(round(TEST_SECONDS * fps))
    if n <= length + int(round(2 * fps)):
        return train_prepared, clip_from("test_clip", speaker.video, train_prepared)
    folder = cache / f"test-{content_key(Path(train_prepared) / 'manifest.json', TEST_SECONDS)}"
    folder.mkdir(parents=True, exist_ok=True)
    video = folder / "test_clip.mp4"
    if not video.is_file():
        audio, _ = full.audio()
        write_segment(speaker.video, audio, n - length, n, fps, video, folder)
    return train_prepared, clip_from("test_clip", video, prepare_cached(video, cache, sync_audio=False, progress=report))


def _val_fraction() -> float:
    from lipsync.training import TrainOptions

    return TrainOptions().val_fraction


def _seen_in_training(clip, speaker: jobs.Speaker) -> float:
    """Seconds of the test clip (the end of the training video) that training also used."""
    from lipsync.prepared import open_prepared

    if not speaker.is_prepared():
        return 0.0
    full = open_prepared(speaker.prepared)
    n, fps = full.num_frames, full.fps
    train_end = int(round(n * (1 - _val_fraction())))
    test_start = n - int(round(TEST_SECONDS * fps))
    return max(0, train_end - test_start) / fps


def _driving_audio(clip, mode: str, speech: Path | None, run: Path) -> Path:
    """A 16 kHz mono wav in ``run``: the test clip's own audio, or the visitor's speech (``speech_file``)."""
    from lipsync.media import load_audio, write_wav

    if mode == "self":
        return Path(clip.audio)
    wav = run / "speech.wav"
    write_wav(wav, load_audio(speech))
    return wav


def _metric_table(methods: dict[str, Path], clip, wav: Path, cache: Path, *, with_reference: bool, device: str,
                  expert: dict | None = None):
    """(DataFrame of metric values, notes on metrics that could not run); ``expert``: the sync
    metrics' settings (``eval.sync_expert.expert_settings``; None: they are noted as not computed)."""
    import numpy as np
    import pandas as pd

    from eval.core import Unavailable
    from eval.metrics import direction, get_metrics, resolve_settings
    from eval.cache import compute_metric
    from eval.samples import LazySample

    settings = resolve_settings({"device": device, **(expert or {})})
    metrics = [m for m in get_metrics(None) if (with_reference or not m.needs_reference) and m.aggregate is None]
    notes, usable = {}, []
    for mt in metrics:
        reason = mt.unavailable(settings)
        if reason:
            notes[mt.name] = reason
        else:
            usable.append(mt)
    rows = []
    for label, video in methods.items():
        lazy = LazySample(label, clip, video, wav, with_reference=with_reference,
                          workdir=cache / "samples" / jobs_safe(label) / ("self" if with_reference else wav.stem))
        row = {"method": label}
        for mt in usable:
            try:
                value = compute_metric(mt, lazy, settings).value
            except Unavailable as err:
                notes.setdefault(mt.name, str(err))
                continue
            row[f"{mt.name} ({direction(mt)}{', ' + mt.unit if mt.unit else ''})"] = (
                None if value is None or not np.isfinite(value) else round(float(value), 4))
        lazy.close()
        rows.append(row)
    return pd.DataFrame(rows), notes


def jobs_safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in label)


@user_errors
def run_comparison(cfg: DemoConfig, session: dict, preset: str | None, baselines: list[str], audio_mode: str,
                   audio: str | None, text: str | None, external: str | None, baseline_preset: str,
                   progress=gr.Progress()):
    """Returns (grid video, metrics table, notes, downloads)."""
    from eval.core import EVAL_CRF, RunContext, Unavailable
    from eval.methods import get_method
    from eval.report import side_by_side
    from eval.sync_expert import expert_settings
    from lipsync import load_model
    from lipsync.common import resolve_device

    from .checks import check_video, shown_name, store_video

    speaker, folder = resolve_model(cfg, session, preset)
    baselines = [b for b in baselines or [] if b in BASELINES]
    if audio_mode not in ("self", "audio", "text"):
        raise LipsyncError(f"unknown audio choice {audio_mode!r}.")
    ext_path = ext_copy = None
    ext_shown = shown_name(external, "external video")
    if "external" in baselines:
        if not external:
            raise LipsyncError("'an uploaded result of another system' is ticked but no video was uploaded; upload it or untick it.")
        ext_path, _, _ = check_video(external, ext_shown, cfg.limits, max_seconds=cfg.limits.target_s + 5)
    cache = speaker.folder / "compare_cache"
    run = jobs.new_run_dir(cfg, session, "compare")
    device = resolve_device(cfg.device)
    try:
        speech = None
        if audio_mode != "self":
            speech = speech_file(cfg, audio_mode, audio, text, run)  # refuse bad speech before any slow work
            baselines = [b for b in baselines if b != "ground_truth"]
        train_prepared, clip = comparison_clip(speaker, cache, progress)
        wav = _driving_audio(clip, audio_mode, speech, run)
        videos: dict[str, Path] = {}
        progress(None, desc=f"{THIS_MODEL}: synthesize")
        videos[THIS_MODEL] = run / "this_model.mp4"
        load_model(folder).synthesize(out=videos[THIS_MODEL], audio=wav, target=clip.prepared, schedule="aligned",
                                      crf=EVAL_CRF, progress=stage_progress(progress, f"{THIS_MODEL}: "))
        options = {"renderer": "auto"}
        if ext_path is not None:
            ext_copy = store_video(ext_path, run / "external", clip.name)  # named by the server, not the upload
            options.update(external_dir=str(ext_copy.parent), external_name=Path(ext_shown).stem[:40] or "external")
        notes = []
        for name in baselines:
            ctx = RunContext(out=run, cache=cache, train_video=Path(speaker.video), train_prepared=Path(train_prepared),
                             preset=baseline_preset, seed=0, device=device, options=options,
                             progress=stage_progress(progress, f"{name}: "))
            method = get_method(name)(ctx)
            label = options.get("external_name", name) if name == "external" else name
            try:
                method.check()
                method.fit()
                progress(None, desc=f"{label}: render")
                out = run / f"{jobs_safe(label)}.mp4"
                method.render(clip, wav, out)
            except Unavailable as err:
                notes.append(f"- {label}: not available here ({err})")
                continue
            videos[label] = out
        progress(None, desc="side-by-side video")
        grid = side_by_side(run / "side_by_side.mp4", {k: [v] for k, v in videos.items()}, [wav], clip.fps,
                            mouths=[clip.prepared])
        progress(None, desc="sync expert")
        expert = expert_settings(train_prepared, cache)
        progress(None, desc="metrics")
        table, metric_notes = _metric_table(videos, clip, wav, cache, with_reference=audio_mode == "self",
                                            device=device, expert=expert)
    except LipsyncError as err:
        shutil.rmtree(run, ignore_errors=True)
        msg = str(err)
        for path in (ext_copy, ext_path):
            if path is not None:
                msg = msg.replace(str(path), ext_shown)
        raise LipsyncError(msg) from None
    same = clip.video == speaker.video
    where = ("the whole training video (it is short), so the numbers show how well each method fits footage it "
             "trained on" if same else f"the last {TEST_SECONDS:g} s of the training video")
    from .example_model import MODEL_DIR

    if Path(folder) == MODEL_DIR:
        where = ("the bundled 3-second clip, which the shipped model never saw (it was trained on a separate "
                 "3-minute recording of the speaker); the baselines that train learn from this clip itself")
    elif not same:
        seen_s = _seen_in_training(clip, speaker)
        if seen_s > 0:
            where += (f"; {seen_s:.1f} s of it were also in the training part (training holds out only the last "
                      f"{100 * _val_fraction():.0f}% of the video), so the numbers partly show how well each method "
                      "fits footage it trained on. `python -m eval.run` measures on footage held out from training")
    head = [f"Test clip: {where}. Baselines trained with the **{baseline_preset}** preset; this model: "
            f"**{jobs.PRESET_LABELS.get(Path(folder).name.split('-')[0], preset)}**."]
    if audio_mode == "self":
        head.append("Driven by the clip's own audio (self-reenactment), so the metrics compare each video with the real footage.")
    else:
        head.append("Driven by other audio: there is no real footage to compare with, so only the metrics that need "
                    "no reference (sync, sharpness, flicker) are shown.")
    if notes:
        head.append("**Methods left out**\n" + "\n".join(notes))
    if metric_notes:
        head.append("**Metrics not computed**\n" + "\n".join(f"- {k}: {v}" for k, v in metric_notes.items()))
    downloads = [str(grid), str(clip.video)] + [str(v) for v in videos.values()]
    return str(grid), table, "\n\n".join(head), downloads
