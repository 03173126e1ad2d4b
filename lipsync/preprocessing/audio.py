"""Stage 8 of preprocessing: the speech track, 16 kHz mono with sample 0 at the start of frame 0,
re-aligned shot by shot when it is measurably out of sync with the lips."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..media import VideoInfo, extract_aligned_audio, write_wav
from ..sync import estimate_sync, realign_audio
from .options import PreprocessOptions


@dataclass(frozen=True)
class SpeechTrack:
    """Members:
        samples: float32 (S,); exactly ``frames / fps`` seconds (silence for a video without sound).
        sync: the manifest's ``sync`` entry (whether and how the audio was re-aligned).
        warnings: what a person should know (e.g. that the sound was out of sync).
    """
    samples: np.ndarray
    sync: dict
    warnings: list = field(default_factory=list)


def prepare_audio(info: VideoInfo, frames: int, mouth: np.ndarray, valid: np.ndarray, cuts: np.ndarray,
                  options: PreprocessOptions, folder: Path) -> SpeechTrack:
    """8. Extract, measure the audio/lip offset per shot, re-align if needed; writes ``audio.wav``."""
    audio = (extract_aligned_audio(info, frames) if info.has_audio
             else np.zeros(int(round(frames / info.fps * 16000)), np.float32))
    sync: dict = {"applied": False}
    warnings = []
    if info.has_audio and options.sync_audio:
        shots, sync = estimate_sync(audio, mouth, valid, cuts, info.fps)
        if sync["applied"]:
            audio = realign_audio(audio, shots, info.fps, frames)
            sync["shots"] = [[sh.start, sh.end, sh.offset] for sh in shots]
            offs = [sh.offset for sh in shots]
            warnings.append(f"the sound was out of sync with the lips ({min(offs):+.2f} to {max(offs):+.2f} s over the clip); it was re-aligned")
    write_wav(folder / "audio.wav", audio)
    return SpeechTrack(samples=audio, sync=sync, warnings=warnings)
