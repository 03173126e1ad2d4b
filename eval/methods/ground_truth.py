"""``ground_truth``: the real frames, re-encoded like every method's output. It is the ceiling
for every metric and checks that the metrics behave (its PSNR is not infinite: it measures the
loss of one H.264 encode at ``EVAL_CRF``, which every method's output also goes through)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from lipsync.synthesis.schedule import ping_pong

from ..core import EVAL_CRF, TestClip, read_video
from . import Method, register


def write_frames(frames: np.ndarray, order: np.ndarray, fps: float, audio: Path, out: Path) -> None:
    """Encode ``frames[order]`` with ``audio`` (atomic)."""
    from lipsync.media import VideoWriter

    h, w = frames.shape[1:3]
    with VideoWriter(out, w, h, fps, audio, crf=EVAL_CRF) as writer:
        for k in order:
            writer.write(frames[int(k)])


def audio_frames(audio: Path, fps: float) -> int:
    """How many video frames at ``fps`` a 16 kHz wav lasts."""
    import soundfile as sf

    from lipsync.audio_features import frames_for_audio

    return frames_for_audio(sf.info(str(audio)).frames, fps)


@register
class GroundTruth(Method):
    name = "ground_truth"
    description = "the real test frames (re-encoded like every output): the ceiling for each metric"

    def render(self, clip: TestClip, audio: Path, out: Path) -> dict:
        with tempfile.TemporaryDirectory(prefix="eval-gt-") as tmp:
            frames = read_video(clip.video, Path(tmp))
            n = audio_frames(audio, clip.fps)
            write_frames(frames, ping_pong(n, len(frames)), clip.fps, audio, out)
            del frames
        return {"frames": n}
