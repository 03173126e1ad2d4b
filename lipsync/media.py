"""Reading video and audio through the ffmpeg command-line tools.

ffmpeg (Debian's ``ffmpeg`` package, installed by ``make``) decodes every container and codec a
user is likely to have, applies rotation metadata, and lets us resample audio exactly.
Frames are RGB uint8 (H, W, 3), top row first.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from .common import LipsyncError, path_arg

AUDIO_SAMPLE_RATE = 16_000  # Hz: the rate every audio feature in lipsync uses


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise LipsyncError(f"The '{name}' program was not found; install ffmpeg (e.g. 'apt-get install ffmpeg', which 'make' does for you).")
    return path


@dataclass(frozen=True)
class VideoInfo:
    """Members:
        path: the file.
        width, height: frame size in pixels after rotation metadata is applied.
        fps: frames per second (the stream's average frame rate).
        frames: expected frame count (from the container; an estimate for some formats).
        duration: seconds of video.
        has_audio: whether there is at least one audio stream.
        video_start, audio_start: stream start times in seconds (to align audio to frame 0).
        container: ffprobe's name of the file format found in the bytes (e.g. ``mov,mp4,m4a,3gp,3g2,mj2``),
            whatever the file is called.
    """
    path: Path
    width: int
    height: int
    fps: float
    frames: int
    duration: float
    has_audio: bool
    video_start: float
    audio_start: float
    container: str = ""


def _rate(text: str | None) -> float:
    try:
        value = float(Fraction(text)) if text else 0.0
    except (ValueError, ZeroDivisionError):
        return 0.0
    return value


def probe(path: str | Path) -> VideoInfo:
    """Describe a video file; raises ``LipsyncError`` for anything that is not a readable video."""
    path = Path(path)
    if not path.exists():
        raise LipsyncError(f"{path} does not exist.")
    if path.is_dir():
        raise LipsyncError(f"{path} is a folder, not a video file.")
    if path.stat().st_size == 0:
        raise LipsyncError(f"{path} is empty (0 bytes); give a video file with a person talking.")
    cmd = [_tool("ffprobe"), "-v", "error", "-show_streams", "-show_format", "-of", "json", path_arg(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise LipsyncError(f"{path} is not a readable video file ({why}); check that it is a complete, uncorrupted video.")
    meta = json.loads(proc.stdout or "{}")
    streams = meta.get("streams", [])
    video = [s for s in streams if s.get("codec_type") == "video"
             and not s.get("disposition", {}).get("attached_pic")]
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    fmt_name = meta.get("format", {}).get("format_name", "")
    if not video:
        raise LipsyncError(f"{path} has no video stream; give a video file with a person talking.")
    if fmt_name == "image2" or fmt_name.endswith("_pipe"):
        raise LipsyncError(f"{path} is a still image, not a video; give a video of the person talking.")
    v = video[0]
    fps = _rate(v.get("avg_frame_rate")) or _rate(v.get("r_frame_rate"))
    if not (0 < fps <= 240):
        raise LipsyncError(f"{path} has no usable frame rate ({v.get('avg_frame_rate')}); re-encode it, e.g. 'ffmpeg -i IN -r 25 OUT.mp4'.")
    duration = float(v.get("duration") or meta.get("format", {}).get("duration") or 0.0)
    frames = int(v.get("nb_frames") or 0) or int(round(duration * fps))
    width, height = int(v.get("width") or 0), int(v.get("height") or 0)
    rotation = 0
    for side in v.get("side_data_list", []) or []:
        if "rotation" in side:
            rotation = int(side["rotation"])
    if abs(rotation) % 180 == 90:
        width, height = height, width
    return VideoInfo(path=path, width=width, height=height, fps=fps, frames=frames, duration=duration,
                     has_audio=bool(audio), video_start=float(v.get("start_time") or 0.0),
                     audio_start=float(audio[0].get("start_time") or 0.0) if audio else 0.0, container=fmt_name)


class FrameReader:
    """Iterate over a video's frames as RGB uint8 (H, W, 3), decoded by an ffmpeg subprocess.

    Decoding runs in ffmpeg's own process, up to ``ahead`` frames ahead of the consumer: a reader
    thread moves each frame from the pipe into its own array (without it, ffmpeg could run only
    one pipe buffer ahead and would decode while the consumer waits). Every frame is a new array,
    safe to hand to another thread. A thread collects ffmpeg's error output so that a corrupt
    stream can be reported after the frames run out (``errors``).
    """

    def __init__(self, info: VideoInfo, *, max_frames: int | None = None, ahead: int = 4):
        self.info = info
        self.max_frames = max_frames
        self.ahead = max(1, int(ahead))
        self.errors: list[str] = []
        self.frames_read = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        w, h = self.info.width, self.info.height
        cmd = [_tool("ffmpeg"), "-nostdin", "-v", "error", "-i", path_arg(self.info.path), "-map", "0:v:0",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
        _grow_pipe(proc.stdout, w * h * 3)
        err_thread = threading.Thread(target=self._drain, args=(proc.stderr,), daemon=True)
        err_thread.start()
        frames: queue.Queue = queue.Queue(maxsize=self.ahead)
        stop = threading.Event()

        def put(item) -> None:
            while not stop.is_set():
                try:
                    frames.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

        def pump() -> None:
            try:
                count = 0
                while not stop.is_set() and (self.max_frames is None or count < self.max_frames):
                    frame = np.empty((h, w, 3), np.uint8)
                    if not _read_exactly(proc.stdout, memoryview(frame).cast("B")):
                        break
                    count += 1
                    put(frame)
            except BaseException as err:  # noqa: BLE001 - re-raised in the consumer's thread
                put(err)
            finally:
                put(None)

        reader = threading.Thread(target=pump, name="frame-reader", daemon=True)
        reader.start()
        try:
            while (item := frames.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                self.frames_read += 1
                yield item
        finally:
            stop.set()
            if proc.poll() is None:
                proc.kill()  # the reader thread's read then ends at once
            reader.join()
            proc.stdout.close()
            proc.wait()
            err_thread.join(timeout=5)
            proc.stderr.close()

    def _drain(self, stream) -> None:
        for line in stream:
            text = line.decode("utf-8", "replace").strip()
            if text and len(self.errors) < 50:
                self.errors.append(text)


def _read_exactly(stream, into: memoryview) -> bool:
    """Fill ``into`` from an unbuffered ``stream``; False if the stream ended first."""
    done, size = 0, len(into)
    while done < size:
        got = stream.readinto(into[done:])
        if not got:
            return False
        done += got
    return True


def _grow_pipe(stream, size: int) -> None:
    """Let a pipe hold up to a frame (Linux; 1 MiB at most without privileges): fewer switches
    between ffmpeg and the reader."""
    try:
        import fcntl

        fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, min(size, 1 << 20))
    except (ImportError, AttributeError, OSError):
        pass


def read_image(path: str | Path) -> np.ndarray:
    """A still image as RGB uint8 (H, W, 3)."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise LipsyncError(f"{path} is not a readable image file.")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def load_audio(path: str | Path, *, sample_rate: int = AUDIO_SAMPLE_RATE, stream: int = 0) -> np.ndarray:
    """Decode the audio of any file ffmpeg reads (wav, mp3, m4a, a video...) to mono float32 (S,)."""
    cmd = [_tool("ffmpeg"), "-nostdin", "-v", "error", "-i", path_arg(path), "-map", f"0:a:{stream}",
           "-ac", "1", "-ar", str(sample_rate), "-f", "f32le", "-"]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        why = (proc.stderr.decode("utf-8", "replace").strip().splitlines() or ["unknown error"])[-1]
        raise LipsyncError(f"The audio of {path} could not be decoded ({why}).")
    return np.frombuffer(proc.stdout, np.float32).copy()


def extract_aligned_audio(info: VideoInfo, num_frames: int, *, sample_rate: int = AUDIO_SAMPLE_RATE) -> np.ndarray:
    """The video's speech track as mono float32 (S,), aligned so sample 0 is the start of frame 0.

    Streams that start later than the video are padded with silence, earlier ones trimmed, and the
    result is cut or padded to exactly ``num_frames / fps`` seconds.
    """
    if not info.has_audio:
        raise LipsyncError(f"{info.path} has no audio track; lipsync learns from speech, so give a video with its sound (or add one: 'ffmpeg -i VIDEO -i AUDIO -c:v copy -map 0:v -map 1:a OUT.mp4').")
    audio = load_audio(info.path, sample_rate=sample_rate)
    offset = int(round((info.audio_start - info.video_start) * sample_rate))
    if offset > 0:
        audio = np.concatenate([np.zeros(offset, np.float32), audio])
    elif offset < 0:
        audio = audio[-offset:]
    total = int(round(num_frames / info.fps * sample_rate))
    if len(audio) < total:
        audio = np.concatenate([audio, np.zeros(total - len(audio), np.float32)])
    return audio[:total]


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int = AUDIO_SAMPLE_RATE) -> None:
    import soundfile as sf

    sf.write(str(path), np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16")


def ffmpeg_version() -> str:
    try:
        out = subprocess.run([_tool("ffmpeg"), "-version"], capture_output=True, text=True).stdout
    except LipsyncError:
        return "missing"
    return out.split("\n", 1)[0].replace("ffmpeg version ", "").split(" ")[0]


class VideoWriter:
    """Raw RGB frames piped into ffmpeg (H.264 yuv420p + the AAC audio), written to a temporary
    file and moved into place by ``finish()``; ``abort()`` removes it. As a context manager it
    finishes when the block ends normally and aborts when it raises."""

    def __init__(self, out: Path, width: int, height: int, fps: float, audio_wav: Path, *, crf: int = 18):
        self.out = out
        self.tmp = out.with_name(f".{out.stem}.partial-{os.getpid()}{out.suffix or '.mp4'}")
        cmd = [_tool("ffmpeg"), "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{width}x{height}", "-r", f"{fps}", "-i", "-", "-i", path_arg(audio_wav), "-map", "0:v", "-map", "1:a",
               "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-preset", "veryfast", "-crf", str(int(crf)),
               "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k", "-shortest", "-movflags", "+faststart",
               "-f", "mp4", path_arg(self.tmp)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()

    def write(self, frame: np.ndarray) -> None:
        self.proc.stdin.write(np.ascontiguousarray(frame, np.uint8).tobytes())

    def finish(self) -> None:
        self.proc.stdin.close()
        err = self.proc.stderr.read().decode("utf-8", "replace")
        self.proc.stderr.close()
        if self.proc.wait() != 0:
            self.abort()
            raise LipsyncError(f"ffmpeg could not encode {self.out} ({err.strip().splitlines()[-1] if err.strip() else 'unknown error'}).")
        os.replace(self.tmp, self.out)

    def abort(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stderr):
            try:
                stream.close()
            except (OSError, ValueError):
                pass
        self.tmp.unlink(missing_ok=True)
