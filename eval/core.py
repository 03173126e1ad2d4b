"""The types every part of the evaluation suite shares: test clips, the run context, methods'
outputs handed to metrics, and metric values.

A run (``python -m eval.run``) trains each trainable method once on the training video, then
asks every method to *render* every test clip: an mp4 with the clip's size, fps and frame count
(frame i of the output corresponds to frame i of the ground truth) with the driving audio muxed
in. Metrics then compare each output with the ground truth (``Sample.reference``) or, in
cross-audio runs where there is none, judge it on its own.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lipsync.common import Progress

# H.264 quality of every method's output video (and of the test clips cut from a longer video):
# the same for all methods, and close enough to lossless (~48 dB) not to mask their differences
EVAL_CRF = 12


def _quiet(stage: str, done: int, total: int) -> None:
    return None


@dataclass(frozen=True)
class TestClip:
    """One ground-truth test clip of the speaker.

    ``video``: the clip (mp4, with its audio); ``audio``: the same audio as 16 kHz mono wav,
    sample 0 = start of frame 0; ``prepared``: the clip preprocessed by lipsync with the raw
    atlas kept (landmarks, pose, lighting of every frame: the target for insertion and the
    tracking the metrics use); ``frames``/``fps``/``width``/``height`` of ``video``.
    """
    __test__ = False  # not a pytest test class

    name: str
    video: Path
    audio: Path
    prepared: Path
    fps: float
    frames: int
    width: int
    height: int


@dataclass
class RunContext:
    """What a method needs to train and render.

    ``train_video`` is the training part of the footage and ``train_prepared`` its prepared clip
    (lipsync format, raw atlas kept). ``cache`` is the folder where a method keeps what it
    trained, under a name that includes ``content_key(...)`` of its inputs, so a re-run with the
    same inputs reuses it. ``options`` holds method options from the command line (e.g.
    ``wav2lip_checkpoint``, ``external_dir``).
    """
    out: Path
    cache: Path
    train_video: Path
    train_prepared: Path
    preset: str = "quick"
    seed: int = 0
    device: str = "cpu"
    options: dict = field(default_factory=dict)
    progress: Progress = _quiet


@dataclass
class Sample:
    """One method's output on one test clip, as the metrics see it. T = output frames.

    ``frames`` uint8 (T, H, W, 3) (may be memory-mapped); ``target`` the real frames the output
    was laid over (T, H, W, 3), always present; ``reference`` the ground truth for this audio
    (the same array as ``target`` in self-reenactment) or None (cross-audio: no reference);
    ``canonical`` float32 (468, 3) the test clip's canonical face (lipsync reference vertices),
    the frame that landmark metrics normalize pose into; ``audio`` float32 16 kHz mono aligned with
    frame 0; ``face_box`` / ``mouth_box`` int (T, 4) x0, y0, x1, y1 of the face and mouth in each
    frame, from the ground truth's (target frames') tracking; ``landmarks`` float32 (T, 468, 3)
    tracked landmarks of the target frames (NaN where untracked); ``valid`` bool (T,) frames with
    a tracked face; ``video`` the output mp4 (with audio); ``workdir`` a folder for this sample's
    cached intermediates (e.g. re-tracked landmarks).
    """
    method: str
    clip: str
    fps: float
    frames: np.ndarray
    target: np.ndarray
    reference: np.ndarray | None
    canonical: np.ndarray
    audio: np.ndarray
    face_box: np.ndarray
    mouth_box: np.ndarray
    landmarks: np.ndarray
    valid: np.ndarray
    video: Path
    workdir: Path


class Unavailable(Exception):
    """A metric or method cannot run here; ``str(err)`` says why (e.g. weights absent)."""


@dataclass
class MetricValue:
    """A metric's result on one sample: ``value`` for the clip, and per-frame values where the
    metric is a mean over frames (used for frame-level bootstrap intervals)."""
    value: float
    per_frame: np.ndarray | None = None
    extra: dict = field(default_factory=dict)


def read_video(path: Path, folder: Path | None = None) -> np.ndarray:
    """All frames of a video as uint8 (T, H, W, 3); memory-mapped in ``folder`` when given."""
    from lipsync.media import FrameReader, probe

    info = probe(path)
    frames = list(FrameReader(info)) if folder is None else None
    if frames is not None:
        return np.stack(frames) if frames else np.zeros((0, info.height, info.width, 3), np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    store = np.lib.format.open_memmap(folder / f"{Path(path).stem}.frames.npy", mode="w+", dtype=np.uint8,
                                      shape=(max(1, info.frames + 16), info.height, info.width, 3))
    n = 0
    for frame in FrameReader(info):
        if n == len(store):
            break
        store[n] = frame
        n += 1
    return store[:n]
