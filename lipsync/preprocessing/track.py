"""Stages 1-3 of preprocessing: probe the file, decode and track one face per frame, then clean
the track (fill short gaps, exclude long ones, find cuts between shots)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..common import LipsyncError, Progress
from ..files import column_groups, frame_array, read_columns, write_columns
from ..media import FrameReader, VideoInfo, extract_aligned_audio, probe
from ..temporal import detect_cuts, fill_gaps
from ..topology import NUM_VERTICES, FaceTopology
from ..tracking import FaceTrack, track_frames, track_one_face
from .options import PreprocessOptions


def probe_video(video, options: PreprocessOptions) -> VideoInfo:
    """1. The video's format; refuses files that are too short, or silent when sound is required,
    before any slow work."""
    info = probe(video)
    if info.frames < 2 or info.duration < options.min_seconds:
        raise LipsyncError(f"{info.path} is too short ({info.frames} frame(s), {info.duration:.2f} s); give at least {options.min_seconds:g} s of video (1-5 minutes works best).")
    if not info.has_audio and options.require_audio:
        extract_aligned_audio(info, 0)  # raises the no-audio error
    return info


def track_video(info: VideoInfo, options: PreprocessOptions, progress: Progress, tracker_factory=None,
                folder: Path | None = None) -> FaceTrack:
    """2. Decode every frame and track one face (MediaPipe FaceMesh in tracking mode by default,
    ``tracking.track_one_face``); refuses truncated videos and videos without a face. With a
    ``folder``, the landmarks go to its ``landmarks_raw.npy`` as they come (flat memory)."""
    total = max(info.frames, 1)
    store = frame_array(folder, "landmarks_raw.npy", (total + 16, NUM_VERTICES, 3), np.float32) if folder else None

    def on_frame(i, frame, pts):
        if i % 25 == 0:
            progress("track", min(i + 1, total), total)

    if tracker_factory is None:
        track = track_one_face(FrameReader(info), fps=info.fps, width=info.width, height=info.height,
                               on_frame=on_frame, retrack=lambda: FrameReader(info), store=store)
    else:
        tracker = tracker_factory()
        try:
            track = track_frames(FrameReader(info), fps=info.fps, width=info.width, height=info.height,
                                 tracker=tracker, on_frame=on_frame, store=store)
        finally:
            tracker.close()
    progress("track", total, total)
    n = len(track)
    if n < 2:
        raise LipsyncError(f"{info.path} has {n} decodable frame(s); it is empty, corrupt or truncated, so give a complete video.")
    if n < 0.95 * info.frames - 2:
        raise LipsyncError(f"{info.path} looks truncated or corrupt: only {n} of {info.frames} frames could be decoded; re-export or re-download the video.")
    if n / info.fps < options.min_seconds:
        raise LipsyncError(f"{info.path} is too short ({n} frames at {info.fps:g} fps); give at least {options.min_seconds:g} s of video.")
    if not track.tracked.any():
        raise LipsyncError(f"No face was found in {info.path}; give a video where one person's face is clearly visible and facing the camera.")
    return track


FILLED = ".filled_landmarks.npy"  # scratch file of stage 3 in the output folder


@dataclass(frozen=True)
class CleanTrack:
    """Members:
        landmarks: float32 (T, V, 3); the track with short gaps interpolated (NaN in long ones); in
            memory or a ``FrameArray``.
        valid: bool (T,); usable frames (tracked or inside a short gap).
        interpolated: bool (T,); frames filled by interpolation.
        cuts: bool (T,); frames that start a new shot.
    """
    landmarks: np.ndarray
    valid: np.ndarray
    interpolated: np.ndarray
    cuts: np.ndarray


def clean_track(track: FaceTrack, info: VideoInfo, topo: FaceTopology, options: PreprocessOptions,
                folder: Path | None = None) -> CleanTrack:
    """3. Find cuts, interpolate gaps up to ``max_gap_s`` (never across a cut), exclude longer ones.

    Gaps are filled a group of vertices at a time; with a ``folder`` the filled landmarks are its
    scratch file ``FILLED`` (removed by the caller before the folder is complete)."""
    max_gap = int(np.floor(options.max_gap_s * info.fps))
    cuts = detect_cuts(track.landmarks, topo.regions["stable"])
    filled = frame_array(folder, FILLED, track.landmarks.shape, np.float32)
    for cols in column_groups(track.landmarks.shape):
        part, valid, interpolated = fill_gaps(read_columns(track.landmarks, cols), track.tracked, max_gap, breaks=cuts)
        write_columns(filled, cols, part)
    if valid.sum() < max(2, options.min_seconds * info.fps):
        raise LipsyncError(f"A face was found in only {int(track.tracked.sum())} of {len(track)} frames of {info.path}; give a video where the face is visible most of the time.")
    return CleanTrack(landmarks=filled, valid=valid, interpolated=interpolated, cuts=cuts)
