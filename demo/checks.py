"""Upload checks that run before any slow work: size, duration and type, with one-sentence errors.

Each check takes the uploaded file's path and the name to show the user (uploads live under
random folder names, which mean nothing to them) and raises ``LipsyncError`` when the file is
refused. Only ffprobe runs here (a fraction of a second per file). What a file is comes from
probing its bytes, never from its name: a stored copy gets an extension the server chooses from
the probed container (``store_video``), so an upload named ``x.html`` is stored as ``video.mp4``.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import unicodedata
from pathlib import Path

from lipsync.common import LipsyncError, path_arg

from .config import Limits

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# ffprobe's name of a container -> the extension of a stored copy; other containers are remuxed to .mkv
CONTAINER_SUFFIX = {"mov,mp4,m4a,3gp,3g2,mj2": ".mp4", "matroska,webm": ".mkv", "avi": ".avi", "mpeg": ".mpg",
                    "mpegts": ".ts", "flv": ".flv", "asf": ".wmv"}
NAME_CHARS = 80     # a speaker's name, and how much of an uploaded file's name is shown


def shown_name(path, fallback: str = "upload") -> str:
    """The uploaded file's name as messages show it: printable characters, at most ``NAME_CHARS``."""
    name = "".join(c for c in Path(path).name if unicodedata.category(c)[0] != "C") if path else ""
    name = name.strip() or fallback
    return name if len(name) <= NAME_CHARS else name[:NAME_CHARS - 1] + "…"


def check_name(name: str | None) -> str:
    """A speaker's display name: printable text of at most ``NAME_CHARS`` characters ('' if none given)."""
    name = " ".join((name or "").split())
    if any(unicodedata.category(c)[0] == "C" for c in name):
        raise LipsyncError("the name contains control characters; use plain text.")
    if len(name) > NAME_CHARS:
        raise LipsyncError(f"the name has {len(name)} characters; the limit here is {NAME_CHARS}.")
    return name


def store_video(src: Path, folder: Path, stem: str = "video") -> Path:
    """Copy a checked video into ``folder`` as ``stem`` plus the extension of its probed container.

    The uploaded name and extension are never kept. A container outside ``CONTAINER_SUFFIX`` is
    remuxed (streams copied, not re-encoded) into Matroska.
    """
    from lipsync.media import _tool, probe

    from lipsync.files import atomic_file

    suffix = CONTAINER_SUFFIX.get(probe(src).container)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{stem}{suffix or '.mkv'}"
    with atomic_file(target) as tmp:
        if suffix is not None:
            shutil.copyfile(src, tmp)
        else:
            proc = subprocess.run([_tool("ffmpeg"), "-nostdin", "-v", "error", "-y", "-i", path_arg(src), "-map", "0",
                                   "-c", "copy", "-f", "matroska", path_arg(tmp)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise LipsyncError("the video's format cannot be stored as it is; convert it to mp4 first "
                                   "(e.g. 'ffmpeg -i IN -c:v libx264 -c:a aac OUT.mp4').")
    return target


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
    proc = subprocess.run([exe, "-v", "error", "-show_format", "-show_streams", "-of", "json", path_arg(path)],
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
                           path_arg(path)], capture_output=True, text=True)
    return proc.returncode == 0 and bool(proc.stdout.strip())


def _remux_without_duration(path: Path, work: Path, limit_s: float, shown: str) -> Path:
    """Browser recordings (webcam webm) often carry no duration; re-encode at most ``limit_s`` + 1 s of
    them to mp4 so that every later stage sees a normal file."""
    import secrets

    out = work / f"recording-{secrets.token_hex(4)}.mp4"
    exe = shutil.which("ffmpeg") or "ffmpeg"
    proc = subprocess.run([exe, "-nostdin", "-v", "error", "-y", "-i", path_arg(path), "-t", f"{limit_s + 1:g}",
                           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2",
                           "-c:a", "aac", path_arg(out)], capture_output=True, text=True)
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
    """Words for the offline TTS: not empty, at most ``limits.text_chars`` characters, no NUL."""
    text = (text or "").strip()
    if not text:
        raise LipsyncError("the text is empty; type the words to speak.")
    if "\x00" in text:
        raise LipsyncError("the text contains a NUL character; type plain text.")
    if len(text) > limits.text_chars:
        raise LipsyncError(f"the text has {len(text)} characters; the limit here is {limits.text_chars}.")
    return text
