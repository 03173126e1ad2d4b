"""Upload checks that run before any slow work: size, duration and type, with one-sentence errors.

Each check takes the uploaded file's path and the name to show the user (uploads live under
random folder names, which mean nothing to them) and raises ``LipsyncError`` when the file is
refused. Only ffprobe runs here (a fraction of a second per file).
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from lipsync.common import LipsyncError

from .config import Limits

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _size_mb(path: Path) -> float:
    return path.stat().st_size / 1e6


def _exists(path, shown: str) -> Path:
    if not path:
        raise LipsyncError(f"no {shown} was given; upload one first.")
    path = Path(path)
    if not path.is_file():
        raise LipsyncError(f"the uploaded {shown} is gone from the server; upload it again.")
    if path.stat().st_size == 0:
        raise LipsyncError(f"the uploaded {shown} is empty (0 bytes).")
    return path


def media_duration(path: Path) -> float | None:
    """Seconds of audio/video in ``path`` according to ffprobe (None when unknown or unreadable)."""
    exe = shutil.which("ffprobe") or "ffprobe"
    proc = subprocess.run([exe, "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    meta = json.loads(proc.stdout or "{}")
    values = [meta.get("format", {}).get("duration")] + [s.get("duration") for s in meta.get("streams", [])]
    seconds = [float(v) for v in values if v not in (None, "N/A")]
    return max(seconds) if seconds else None


def _has_audio_stream(path: Path) -> bool:
    exe = shutil.which("ffprobe") or "ffprobe"
    proc = subprocess.run([exe, "-v", "error", "-select_streams", "a", "-show_entries", "stream=index", "-of", "csv=p=0",
                           str(path)], capture_output=True, text=True)
    return proc.returncode == 0 and bool(proc.stdout.strip())


def _remux_without_duration(path: Path, work: Path, limit_s: float, shown: str) -> Path:
    """Browser recordings (webcam webm) often carry no duration; re-encode at most ``limit_s`` + 1 s of
    them to mp4 so that every later stage sees a normal file."""
    out = work / f"{path.stem}-recoded.mp4"
    exe = shutil.which("ffmpeg") or "ffmpeg"
    proc = subprocess.run([exe, "-nostdin", "-v", "error", "-y", "-i", str(path), "-t", f"{limit_s + 1:g}",
                           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2",
                           "-c:a", "aac", str(out)], capture_output=True, text=True)
    if proc.returncode != 0 or not out.is_file():
        raise LipsyncError(f"{shown} could not be read as a video; upload an mp4, mov, webm or mkv file.")
    return out


def check_video(path, shown: str, limits: Limits, *, max_seconds: float | None = None, work: Path | None = None,
                allow_image: bool = False) -> tuple[Path, str, float]:
    """A usable video (or, with ``allow_image``, a photo): returns (path, "video" | "image", seconds).

    The path may change: a recording without a duration is re-encoded into ``work``.
    """
    from lipsync.media import probe

    path = _exists(path, shown)
    max_seconds = limits.video_s if max_seconds is None else max_seconds
    if allow_image and path.suffix.lower() in IMAGE_SUFFIXES:
        if _size_mb(path) > limits.image_mb:
            raise LipsyncError(f"{shown} is {_size_mb(path):.0f} MB; photos may be at most {limits.image_mb:.0f} MB.")
        return path, "image", 0.0
    if _size_mb(path) > limits.video_mb:
        raise LipsyncError(f"{shown} is {_size_mb(path):.0f} MB; videos may be at most {limits.video_mb:.0f} MB.")
    try:
        info = probe(path)
    except LipsyncError as err:
        if allow_image and "still image" in str(err):
            return path, "image", 0.0
        raise LipsyncError(str(err).replace(str(path), shown)) from None
    seconds = info.duration
    if seconds <= 0 and work is not None:
        path = _remux_without_duration(path, work, max_seconds, shown)
        seconds = probe(path).duration
    if seconds > max_seconds + 0.5:
        raise LipsyncError(f"{shown} is {seconds:.0f} s long; the limit here is {max_seconds:.0f} s, so trim it first.")
    return path, "video", seconds


def check_audio(path, shown: str, limits: Limits) -> tuple[Path, float]:
    """A decodable sound file (or a video with sound) within the limits: returns (path, seconds)."""
    path = _exists(path, shown)
    if _size_mb(path) > limits.audio_mb:
        raise LipsyncError(f"{shown} is {_size_mb(path):.0f} MB; audio may be at most {limits.audio_mb:.0f} MB.")
    seconds = media_duration(path)
    if seconds is None or not _has_audio_stream(path):
        raise LipsyncError(f"{shown} has no sound that ffmpeg can decode; upload a wav, mp3, m4a, ogg or a video with sound.")
    if seconds > limits.audio_s + 0.5:
        raise LipsyncError(f"{shown} is {seconds:.0f} s long; the limit here is {limits.audio_s:.0f} s of speech, so trim it first.")
    return path, seconds


def check_text(text: str | None, limits: Limits) -> str:
    text = (text or "").strip()
    if not text:
        raise LipsyncError("the text is empty; type the words to speak.")
    if len(text) > limits.text_chars:
        raise LipsyncError(f"the text has {len(text)} characters; the limit here is {limits.text_chars}.")
    return text
