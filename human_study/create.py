"""Build a study folder from an ``eval.run`` results folder.

``python -m human_study create --from RESULTS --out STUDY_DIR/study.yaml`` copies the chosen
methods' self-reenactment videos into ``STUDY_DIR/media/`` under opaque names (the content
hash), with their metadata stripped, so neither a file name nor a tag tells a rater which
method made a video. Attention checks are made from the ground-truth clips: a copy whose picture
lags its sound by ``--attention-shift`` seconds (the first frame is held), so whichever video's
sound plays, the copy is the one out of sync.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from lipsync.common import path_arg
from lipsync.files import atomic_write_text, file_digest
from lipsync.media import _tool

from .study import (DEFAULT_INSTRUCTIONS, DEFAULT_MIN_WATCH, DEFAULT_TEXT, StudyError, parse_study, study_to_dict)

QUESTION_PRESETS = {
    "ab_realism": ("paired", "realism"), "ab_lipsync": ("paired", "lip_sync"), "ab_quality": ("paired", "visual_quality"),
    "mos_realism": ("mos", "realism"), "mos_lipsync": ("mos", "lip_sync"), "mos_quality": ("mos", "visual_quality"),
}
DEFAULT_QUESTIONS = ("ab_realism", "ab_lipsync", "ab_quality", "mos_realism", "mos_lipsync", "mos_quality")


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
        raise StudyError(f"ffmpeg could not {what}: {tail}.")


def _blind_copy(src: Path, media: Path, staging: Path) -> str:
    """Copy ``src`` into the media folder under its content hash, without metadata; returns the name."""
    name = f"{file_digest(src)}{src.suffix.lower() if src.suffix.lower() in ('.mp4', '.webm') else '.mp4'}"
    if (media / name).is_file() or (staging / name).is_file():
        return name
    _run([_tool("ffmpeg"), "-v", "error", "-y", "-i", path_arg(src), "-map", "0:v:0", "-map", "0:a:0?", "-c", "copy",
          "-map_metadata", "-1", "-map_chapters", "-1", "-fflags", "+bitexact", "-flags:v", "+bitexact",
          "-flags:a", "+bitexact", "-movflags", "+faststart", path_arg(staging / name)], f"copy {src.name}")
    return name


def _shifted_copy(src: Path, shift_s: float, staging: Path) -> str:
    """A copy of ``src`` whose picture lags the (unchanged) sound by ``shift_s`` s; returns the name."""
    from lipsync.media import probe

    duration = probe(src).duration
    tmp = staging / "shift-tmp.mp4"
    _run([_tool("ffmpeg"), "-v", "error", "-y", "-i", path_arg(src), "-filter_complex",
          f"[0:v]tpad=start_duration={shift_s}:start_mode=clone[v]", "-map", "[v]", "-map", "0:a:0",
          "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p", "-c:a", "copy",
          "-t", f"{duration:.3f}", "-map_metadata", "-1", "-fflags", "+bitexact", "-movflags", "+faststart", path_arg(tmp)],
         f"make the attention copy of {src.name}")
    name = f"{file_digest(tmp)}.mp4"
    os.replace(tmp, staging / name)
    return name


def create_study(results_dir: str | Path, out_file: str | Path, *, methods: list[str] | None = None,
                 reference: str = "lipsync3d", pairs: str = "reference", questions: list[str] | None = None,
                 trials_per_rater: int | None = None, practice_trials: int = 2, attention: int = 2,
                 attention_shift_s: float = 0.5, title: str | None = None, seed: int = 0,
                 min_watch_fraction: float = DEFAULT_MIN_WATCH) -> Path:
    """Write ``out_file`` (YAML) and its ``media/`` folder from an evaluation results folder.

    ``pairs``: ``reference`` compares ``reference`` with every other method (the usual design);
    ``all`` compares every pair. ``min_watch_fraction``: see ``Study``. Returns the path of the study file.
    """
    import yaml

    results_dir, out_file = Path(results_dir), Path(out_file)
    rj = results_dir / "results.json"
    if not rj.is_file():
        raise StudyError(f"{results_dir} has no results.json; give the folder that `python -m eval.run --out` wrote.")
    try:
        res = json.loads(rj.read_text())
        per_clip = res["per_clip"]
    except (ValueError, KeyError, TypeError):
        raise StudyError(f"{rj} is not an eval.run results file (no per_clip videos).") from None
    available = [m for m in per_clip if per_clip[m]]
    if methods is None:
        methods = [m for m in available if not m.startswith("no_")]  # ablations only on request
    missing = [m for m in methods if m not in available]
    if missing:
        raise StudyError(f"The results have no videos for {', '.join(missing)}; available: {', '.join(available)}.")
    if len(methods) < 2:
        raise StudyError("A study needs at least two methods to compare; pass more with --methods.")
    if pairs == "reference":
        if reference not in methods:
            raise StudyError(f"The reference method {reference!r} is not among the methods {', '.join(methods)}; set --reference.")
        pair_list = [[reference, m] for m in methods if m != reference]
    elif pairs == "all":
        pair_list = "all"
    else:
        raise StudyError(f"--pairs must be 'reference' or 'all', not {pairs!r}.")
    questions = list(questions or DEFAULT_QUESTIONS)
    bad = [q for q in questions if q not in QUESTION_PRESETS]
    if bad:
        raise StudyError(f"Unknown question {', '.join(bad)}; choose from {', '.join(QUESTION_PRESETS)}.")
    if attention and "ground_truth" not in available:
        raise StudyError("Attention checks need the ground_truth videos in the results; run eval.run with "
                         "ground_truth or pass --attention 0.")

    out_dir = out_file.parent.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    media = out_dir / "media"
    staging = Path(tempfile.mkdtemp(prefix=".media-", dir=out_dir))
    try:
        clips = []
        clip_names = sorted({c for m in methods for c in per_clip[m]})
        for cid in clip_names:
            vids = {}
            for m in methods:
                entry = per_clip[m].get(cid)
                if entry and entry.get("video"):
                    src = results_dir / entry["video"]
                    if not src.is_file():
                        raise StudyError(f"The results list {entry['video']} but the file is missing.")
                    vids[m] = f"media/{_blind_copy(src, media, staging)}"
            if len(vids) >= 2:
                clips.append({"id": cid, "videos": vids})
        if not clips:
            raise StudyError("No test clip has videos of two of the chosen methods.")
        att_clips = {}
        if attention:
            for cid in clip_names:
                gt = per_clip["ground_truth"].get(cid)
                if gt and gt.get("video"):
                    src = results_dir / gt["video"]
                    att_clips[cid] = {"reference": f"media/{_blind_copy(src, media, staging)}",
                                      "shifted": f"media/{_shifted_copy(src, attention_shift_s, staging)}"}
        qs = [{"id": q, "type": QUESTION_PRESETS[q][0], "axis": QUESTION_PRESETS[q][1],
               "text": DEFAULT_TEXT[QUESTION_PRESETS[q]], "no_preference": True} for q in questions]
        raw = {
            "version": 1, "title": title or "Rating talking-head videos",  # never name the methods to raters
            "instructions": DEFAULT_INSTRUCTIONS, "methods": methods, "pairs": pair_list, "clips": clips,
            "questions": qs, "practice_trials": practice_trials, "seed": seed,
            "attention_checks": {"count": attention, "shift_s": attention_shift_s, "clips": att_clips},
            "open_enrollment": True, "max_raters": 1000, "min_watch_fraction": min_watch_fraction,
        }
        # validate before anything is moved into place (files are checked in the staging folder)
        media.mkdir(exist_ok=True)
        for f in staging.iterdir():
            os.replace(f, media / f.name)
        n_items = len(parse_study({**raw, "trials_per_rater": 1}, root=out_dir).item_universe())
        raw["trials_per_rater"] = min(trials_per_rater or 20, n_items)
        study = parse_study(raw, root=out_dir)
        header = (f"# Made by `python -m human_study create --from {results_dir}`.\n"
                  "# Media names are content hashes so that raters cannot tell the methods apart.\n")
        atomic_write_text(out_file, header + yaml.safe_dump(study_to_dict(study), sort_keys=False, allow_unicode=True,
                                                            width=100), what="study file")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_file
