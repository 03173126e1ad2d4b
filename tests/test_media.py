"""Probing videos and extracting audio aligned to the frames, at any frame rate."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import ffmpeg
from lipsync.common import LipsyncError
from lipsync.media import FrameReader, extract_aligned_audio, probe


def make_video(path, *, fps, seconds, audio_delay=0.0, audio=True, size="160x120"):
    args = ["-f", "lavfi", "-i", f"testsrc=size={size}:rate={fps}:duration={seconds}"]
    if audio:
        if audio_delay:
            args += ["-itsoffset", str(audio_delay)]
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={seconds - audio_delay}"]
    args += ["-c:v", "libx264", "-pix_fmt", "yuv420p"]
    args += (["-c:a", "aac", "-shortest"] if audio else [])
    ffmpeg(*args, str(path))
    return path


@pytest.mark.parametrize("fps", [25, 30, 29.97])
def test_audio_has_exactly_the_video_duration(tmp_path, fps):
    video = make_video(tmp_path / "v.mp4", fps=fps, seconds=2)
    info = probe(video)
    assert abs(info.fps - fps) < 0.01
    frames = sum(1 for _ in FrameReader(info))
    assert abs(frames - info.frames) <= 1
    audio = extract_aligned_audio(info, frames)
    assert len(audio) == round(frames / info.fps * 16000)
    assert audio.dtype == np.float32


def test_audio_that_starts_late_is_padded_with_silence(tmp_path):
    video = make_video(tmp_path / "late.mp4", fps=25, seconds=3, audio_delay=0.5)
    info = probe(video)
    audio = extract_aligned_audio(info, info.frames)
    first, rest = audio[:int(0.45 * 16000)], audio[int(0.6 * 16000):int(2.4 * 16000)]
    assert np.abs(first).max() < 0.01, "nothing before the audio stream starts"
    assert np.sqrt(np.mean(rest ** 2)) > 0.05, "the tone (lavfi amplitude 1/8) is there after it starts"


def test_frames_are_rgb_in_display_size(tmp_path, grid_clip):
    info = probe(grid_clip)
    assert (info.width, info.height) == (360, 288) and info.has_audio
    frame = next(iter(FrameReader(info, max_frames=1)))
    assert frame.shape == (288, 360, 3) and frame.dtype == np.uint8


def test_video_without_audio_is_refused_for_audio(tmp_path):
    info = probe(make_video(tmp_path / "silent.mp4", fps=25, seconds=1, audio=False))
    assert not info.has_audio
    with pytest.raises(LipsyncError, match="no audio track"):
        extract_aligned_audio(info, info.frames)
