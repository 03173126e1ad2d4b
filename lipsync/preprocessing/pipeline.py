"""``preprocess``: one talking-head video -> a prepared clip, as a numbered list of stages.

Each stage is a function in its own module of this package, with a typed result:

 1. probe      ``track.probe_video``       check the file, read its format
 2. track      ``track.track_video``       decode and track one face per frame (MediaPipe FaceMesh)
 3. clean      ``track.clean_track``       find cuts, fill short tracking gaps, exclude long ones
 4. pose       ``reference.normalize_pose`` reference frame and canonical shape, per-frame
                                           similarities, pose and shape smoothed without lag
 5. uv         ``unwrap.build_layout``     the speaker's UV layout and the atlas sampler
 6. atlas      ``unwrap.unwrap_frames``    decode again and unwrap every frame into the atlas
 7. lighting   ``lighting.normalize_lighting`` spatial (symmetry) and temporal (skin albedo) lighting
 8. audio      ``audio.prepare_audio``     the speech track, 16 kHz mono, aligned to frame 0
 9. write      ``manifest.write_arrays``   every array of the prepared clip
10. manifest   ``manifest.build_manifest`` figures and warnings; previews; an atomic rename into place

Each stage's wall time is in the manifest's ``timings_s``, its CPU time in ``cpu_s``. Stages 6 and 7
work frame by frame (chunk by chunk) on one thread per core (``PreprocessOptions.workers``), with
the same results as on one thread. Memory does not grow with the video's length: the atlases and
the per-frame geometry (raw and smoothed landmarks, vertices) are written to the output folder as
they are made and read back a chunk of frames or a group of vertices at a time.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..common import Progress
from ..face_measures import mouth_series
from ..files import FrameArray, atomic_output
from ..prepared import MANIFEST
from ..topology import load_topology
from ..workers import resolve_workers
from .audio import prepare_audio
from .lighting import normalize_lighting
from .manifest import build_manifest, write_arrays
from .options import PreprocessOptions
from .reference import normalize_pose
from .track import FILLED, clean_track, probe_video, track_video
from .unwrap import build_layout, unwrap_frames


@dataclass
class Timer:
    """Per named stage: wall seconds (``timings``) and CPU seconds (``cpu``: this process on all
    its threads, and the decoders it ran, which are ffmpeg processes)."""
    timings: dict = field(default_factory=dict)
    cpu: dict = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str):
        t0, c0 = time.perf_counter(), os.times()
        yield
        c1 = os.times()
        self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t0, 4)
        old = self.cpu.get(name, {"process": 0.0, "decoder": 0.0})
        own = max(0.0, c1.user + c1.system - c0.user - c0.system)
        children = max(0.0, c1.children_user + c1.children_system - c0.children_user - c0.children_system)
        self.cpu[name] = {"process": round(old["process"] + own, 3), "decoder": round(old["decoder"] + children, 3)}


def preprocess(video: str | Path, out: str | Path, *, options: PreprocessOptions = PreprocessOptions(),
               overwrite: bool = False, progress: Progress | None = None, tracker_factory=None) -> Path:
    """Prepare one talking-head video for training; returns the prepared clip's folder.

    Raises ``LipsyncError`` (one sentence) for bad input; nothing is left at ``out`` on failure.
    ``tracker_factory``: makes the face tracker (a MediaPipe FaceMesh by default; tests pass fakes).
    """
    timer = Timer()
    t_start = time.perf_counter()
    progress = progress or (lambda stage, done, total: None)
    topo = load_topology()
    with timer.stage("probe"):
        info = probe_video(video, options)                                              # 1
    with atomic_output(out, overwrite=overwrite, marker=MANIFEST, what="prepared clip") as tmp:
        with timer.stage("track"):
            track = track_video(info, options, progress, tracker_factory, folder=tmp)   # 2
            n = len(track)
        with timer.stage("clean"):
            clean = clean_track(track, info, topo, options, folder=tmp)                 # 3
        with timer.stage("pose"):
            pose = normalize_pose(clean, info, topo, options, folder=tmp)               # 4
        with timer.stage("uv"):
            layout = build_layout(pose, topo, options)                                  # 5
        with timer.stage("atlas"):
            unwrapped = unwrap_frames(info, n, pose, clean.valid, layout, topo, tmp, progress,
                                      workers=options.workers)                          # 6
        with timer.stage("lighting"):
            lighting = normalize_lighting(unwrapped, pose, clean.valid, layout, topo.mirror, tmp, options,
                                          progress)                                     # 7
            # frames that looked unlike the face after normalization are excluded everywhere
            clean.valid[lighting.outliers] = False
            for arr in (pose.pose.scale, pose.pose.rotation, pose.pose.translation):
                arr[lighting.outliers] = np.nan
            for t in np.flatnonzero(lighting.outliers):
                pose.vertices[t] = pose.landmarks[t] = np.nan
        mouth = mouth_series(pose.vertices, clean.valid)  # (T,) mouth opening; NaN in excluded frames
        with timer.stage("audio"):
            speech = prepare_audio(info, n, mouth, clean.valid, clean.cuts, options, tmp)  # 8
        with timer.stage("write"):
            unwrapped.atlas.close()
            unwrapped.masks.close()
            arrays = write_arrays(tmp, frames=n, size=options.atlas_size, track=track, clean=clean, pose=pose,
                                  layout=layout, lighting=lighting, mouth=mouth, topo=topo,
                                  keep_raw_atlas=options.keep_raw_atlas)                # 9
        manifest = build_manifest(video, info=info, frames=n, track=track, clean=clean, pose=pose, layout=layout,
                                  lighting=lighting, speech=speech, arrays=arrays, options=options)  # 10
        clean.landmarks.close()
        (tmp / FILLED).unlink()
        if options.previews:
            from ..previews import write_previews

            with timer.stage("previews"):
                manifest["previews"] = write_previews(
                    tmp / "previews", topo=topo, landmarks=pose.landmarks, ref_frame=pose.reference_frame,
                    kept_frames=unwrapped.kept_frames, kept_raw=unwrapped.kept_raw, preview_idx=unwrapped.preview_idx,
                    uv=layout.layout.uv, size=options.atlas_size, lighting=lighting.params, skin=lighting.skin,
                    face_area=layout.sampler.covered_mask(), valid=clean.valid, euler=pose.pose.euler_degrees(),
                    fps=info.fps, atlas_path=tmp / "atlas.npy", mouth=mouth)
        for arr in (track.landmarks, pose.vertices, pose.landmarks):
            if isinstance(arr, FrameArray):
                arr.close()
        timer.timings["total"] = round(time.perf_counter() - t_start, 4)
        manifest["timings_s"] = timer.timings
        manifest["cpu_s"] = timer.cpu
        manifest["workers"] = resolve_workers(options.workers)
        manifest["frames_per_second"] = round(n / timer.timings["total"], 2)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return Path(out)
