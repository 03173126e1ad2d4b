"""``external``: results of another system (Wav2Lip, SadTalker, MuseTalk...) made elsewhere.

The user runs the other system on each test clip's audio and puts the videos in one folder
(``ctx.options['external_dir']``); ``ctx.options['external_name']`` names the method in reports
(default ``external``); ``ctx.options['external_max_pad']`` overrides ``MAX_PAD_FRAMES``.
Each video is matched to a test clip by file name:

1. ``<clip name>.<ext>`` for any common video extension (case-insensitive), else
2. ``<clip name>_<anything>.<ext>`` (tools that append a suffix, e.g. ``clip07_result.mp4``).

More than one file at the first level that matches is an error naming them. (A clip named
``a`` would take ``a_2.mp4`` at level 2 if ``a.mp4`` is absent, so give exact names when clip
names extend each other.)

Each video is normalized to the clip: resized to its size (aspect ratios must agree), resampled
in time to its fps (nearest frame: output frame i shows the source frame nearest i / fps s),
cut or padded to the audio's frame count, and muxed with OUR audio, so every method is judged
on the same sound. A result slightly shorter than the audio (at most ``MAX_PAD_FRAMES``) is
padded by repeating its last frame; a longer one is trimmed (by at most ``MAX_TRIM_SECONDS``);
anything else means the video was made from other audio and is an error.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np

from lipsync.common import LipsyncError

from ..core import EVAL_CRF, TestClip, Unavailable, read_video
from . import Method, register

VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".flv", ".wmv", ".ts")
MAX_PAD_FRAMES = 4        # a result this many frames short is padded with its last frame (Wav2Lip stops 3 early)
MAX_TRIM_SECONDS = 0.5    # a result longer than the audio by up to this much is trimmed
ASPECT_TOLERANCE = 0.02   # relative difference of aspect ratios accepted (even-size padding etc.)


def match_video(folder: Path, clip_name: str) -> Path | None:
    """The video in ``folder`` for ``clip_name`` (see the module docstring), or None.

    Raises ``LipsyncError`` naming the files when several match equally well.
    """
    videos = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    exact = [p for p in videos if p.stem == clip_name]
    prefixed = [p for p in videos if re.fullmatch(re.escape(clip_name) + r"_.+", p.stem)]
    for found in (exact, prefixed):
        if len(found) > 1:
            raise LipsyncError(f"several videos in {folder} match the test clip {clip_name!r} ({', '.join(p.name for p in found)}); keep one.")
        if found:
            return found[0]
    return None


def resample_indices(source_frames: int, source_fps: float, fps: float) -> np.ndarray:
    """For each frame of the source as seen at ``fps``: the nearest source frame in time.

    Output frame i (time i / fps) shows source frame floor(i * source_fps / fps + 0.5); the list
    ends where that index would pass the last source frame. int64 (m,).
    """
    ratio = source_fps / fps
    count = int(np.ceil((source_frames - 0.5) / ratio - 1e-9)) if source_frames > 0 else 0
    idx = np.floor(np.arange(count) * ratio + 0.5).astype(np.int64)
    return idx[idx < source_frames]


def conform(source_frames: int, source_fps: float, fps: float, count: int, *, name: str,
            max_pad: int = MAX_PAD_FRAMES, max_trim_s: float = MAX_TRIM_SECONDS) -> tuple[np.ndarray, int]:
    """Source frame index of each of ``count`` output frames at ``fps``: int64 (count,), and how
    many frames were added (repeats of the last one; negative: frames trimmed).

    Resampled by time (``resample_indices``), then padded with the last frame when it falls
    short by at most ``max_pad`` frames or trimmed when it is longer by at most ``max_trim_s``
    seconds; otherwise ``LipsyncError`` naming ``name`` and both frame counts.
    """
    idx = resample_indices(source_frames, source_fps, fps)
    m = len(idx)
    if m < count - max_pad or m == 0:
        raise LipsyncError(f"{name} has {m} frames at {fps:g} fps but the audio needs {count}; it must be made from the same audio (more than {max_pad} frames missing; the external_max_pad option allows more).")
    if m > count + max(max_pad, int(round(max_trim_s * fps))):
        raise LipsyncError(f"{name} has {m} frames at {fps:g} fps but the audio needs {count}; it seems to be made from other, longer audio.")
    if m < count:
        idx = np.concatenate([idx, np.full(count - m, idx[-1])])
    return idx[:count], count - m


@register
class External(Method):
    name = "external"
    description = "videos made by another system elsewhere, one per test clip, matched by file name"
    trainable = False

    @property
    def display_name(self) -> str:
        return str(self.ctx.options.get("external_name") or "external")

    def _folder(self) -> Path:
        given = self.ctx.options.get("external_dir")
        if not given:
            raise Unavailable("no folder of external results was given; give one with --external FOLDER (one video per test clip, named after the clip).")
        folder = Path(given).expanduser()
        if not folder.exists():
            raise Unavailable(f"the external results folder {folder} does not exist.")
        if not folder.is_dir():
            raise Unavailable(f"the external results path {folder} is not a folder; give the folder that holds the videos.")
        return folder

    def check(self) -> None:
        self._folder()

    def fit(self) -> dict:
        return {"cached": True, "trained": False, "folder": str(self._folder()), "name": self.display_name}

    def render(self, clip: TestClip, audio: Path, out: Path) -> dict:
        import cv2

        from lipsync.audio_features import frames_for_audio
        from lipsync.media import load_audio, probe, write_wav
        from lipsync.media import VideoWriter

        folder = self._folder()
        src = match_video(folder, clip.name)
        if src is None:
            raise Unavailable(f"{folder} has no result for the test clip {clip.name!r}; expected {clip.name}.mp4 (or another video extension).")
        info = probe(src)
        # 1. geometry: the same picture at another size is fine; another framing is not
        aspect, want = info.width / info.height, clip.width / clip.height
        if abs(aspect / want - 1) > ASPECT_TOLERANCE:
            raise LipsyncError(f"{src} is {info.width}x{info.height} but the test clip is {clip.width}x{clip.height} (another aspect ratio); give full-frame results, not face crops.")
        speech = load_audio(audio)
        n = frames_for_audio(len(speech), clip.fps)
        if n < 1:
            raise LipsyncError(f"{audio} is shorter than one video frame; give at least {1000 / clip.fps:.0f} ms of audio.")
        with tempfile.TemporaryDirectory(prefix="external-") as tmp:
            frames = read_video(src, Path(tmp))  # decoded count, not the container's estimate
            idx, added = conform(len(frames), info.fps, clip.fps, n, name=str(src),
                                 max_pad=int(self.ctx.options.get("external_max_pad", MAX_PAD_FRAMES)))
            resize = (info.width, info.height) != (clip.width, clip.height)
            interp = cv2.INTER_AREA if info.width > clip.width else cv2.INTER_CUBIC
            track = Path(tmp) / "audio.wav"
            # our sound, padded to exactly n frames so the writer's -shortest never drops a frame
            write_wav(track, np.pad(speech, (0, max(0, int(np.ceil(n / clip.fps * 16000)) - len(speech)))))
            with VideoWriter(out, clip.width, clip.height, clip.fps, track, crf=EVAL_CRF) as writer:
                for i, k in enumerate(idx):
                    frame = frames[k]
                    writer.write(cv2.resize(frame, (clip.width, clip.height), interpolation=interp) if resize else frame)
                    if i % 50 == 0:
                        self.ctx.progress("external", i + 1, n)
        return {"source": str(src), "name": self.display_name, "frames": n,
                "source_frames": int(len(frames)), "source_fps": info.fps,
                "source_size": f"{info.width}x{info.height}", "frames_added": int(added), "resized": resize}
