"""Speech input of synthesis: a sound file of any format ffmpeg reads, or text spoken by
espeak-ng (offline), as 16 kHz mono samples."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from ..common import LipsyncError, path_arg

VOICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_+-]{0,39}$")  # espeak-ng voice names: en, en-us, de, en+f3


def _espeak(text: str, voice: str, output: list[str]) -> list[str]:
    """The espeak-ng command speaking ``text`` (checked) with ``output`` options before the ``--``."""
    if not text or not text.strip():
        raise LipsyncError("--text is empty; give the words to speak.")
    if "\x00" in text:
        raise LipsyncError("--text contains a NUL character; give plain text.")
    if not VOICE_RE.match(voice):
        raise LipsyncError(f"{voice!r} is not an espeak-ng voice name (e.g. en, en-us, de).")
    exe = shutil.which("espeak-ng") or shutil.which("espeak")
    if exe is None:
        raise LipsyncError("espeak-ng is not installed, so --text cannot be spoken; install it (apt-get install espeak-ng) or give --audio.")
    return [exe, "-v", voice, *output, "--", text]


def text_to_speech(text: str, folder: Path, *, voice: str = "en", max_seconds: float | None = None) -> Path:
    """Speak ``text`` with espeak-ng (offline) into ``folder / "tts.wav"``.

    The text is handed over after ``--``, so espeak-ng reads it as words to speak even when it
    starts with ``-`` (``-f FILE`` would otherwise read a file aloud, ``-w PATH`` write elsewhere).
    ``max_seconds``: refuse speech longer than this (the file is removed).
    """
    path = folder / "tts.wav"
    proc = subprocess.run(_espeak(text, voice, ["-w", path_arg(path)]), capture_output=True, text=True)
    if proc.returncode != 0 or not path.is_file():
        raise LipsyncError(f"espeak-ng could not speak the text ({proc.stderr.strip() or 'no output'}).")
    if max_seconds is not None:
        import soundfile as sf

        seconds = sf.info(str(path)).duration
        if seconds > max_seconds + 0.5:
            path.unlink()
            raise LipsyncError(f"the text takes {seconds:.0f} s to speak; the limit here is {max_seconds:.0f} s of "
                               "speech, so shorten it.")
    return path


def speech_stream(text: str, *, voice: str = "en", chunk_samples: int = 441, max_seconds: float | None = None):
    """Speak ``text`` with espeak-ng, yielding (int16 samples, sample rate) as it is generated (its
    WAV on stdout, read a chunk at a time), for live synthesis. ``max_seconds``: stop there."""
    import struct

    proc = subprocess.Popen(_espeak(text, voice, ["--stdout"]), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        head = proc.stdout.read(44)
        if len(head) < 44 or head[:4] != b"RIFF" or head[8:16] != b"WAVEfmt " or struct.unpack("<H", head[20:22])[0] != 1:
            raise LipsyncError(f"espeak-ng could not speak the text ({proc.stderr.read().decode(errors='replace').strip() or 'no output'}).")
        rate = struct.unpack("<I", head[24:28])[0]
        left = None if max_seconds is None else int(max_seconds * rate)
        while left is None or left > 0:
            data = proc.stdout.read(2 * (chunk_samples if left is None else min(chunk_samples, left)))
            if len(data) < 2:
                break
            x = np.frombuffer(data[:len(data) // 2 * 2], "<i2")
            left = None if left is None else left - len(x)
            yield x, rate
    finally:
        proc.kill()
        proc.wait()


def load_speech(audio: str | Path | None, text: str | None, folder: Path) -> tuple[np.ndarray, str]:
    """16 kHz mono float32 speech and a description of where it came from."""
    from ..media import load_audio

    if (audio is None) == (text is None):
        raise LipsyncError("give exactly one of --audio FILE or --text \"...\".")
    if text is not None:
        path = text_to_speech(text, folder)
        return load_audio(path), f"text ({len(text)} characters, espeak-ng)"
    path = Path(audio)
    if not path.is_file():
        raise LipsyncError(f"{path} does not exist." if not path.exists() else f"{path} is not a file.")
    if path.stat().st_size == 0:
        raise LipsyncError(f"{path} is empty (0 bytes); give an audio file with speech.")
    try:
        samples = load_audio(path)
    except LipsyncError:
        raise LipsyncError(f"{path} has no audio that ffmpeg can decode; give a wav, mp3, m4a or a video with sound.") from None
    return samples, str(path)
