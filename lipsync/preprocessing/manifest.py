"""Stages 9-10 of preprocessing: the prepared clip's arrays, the quality warnings a person should
read before training, and ``manifest.json`` (see ``lipsync.prepared`` for the format)."""
from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from .. import __version__
from ..face_measures import face_measures
from ..files import FrameArray, map_frames
from ..media import VideoInfo, ffmpeg_version
from ..prepared import ARRAYS, FORMAT_VERSION, REGION_NAMES, array_entry
from ..topology import FaceTopology
from ..tracking import FaceTrack
from .audio import SpeechTrack
from .lighting import NormalizedLighting
from .options import PreprocessOptions
from .reference import NormalizedPose
from .track import CleanTrack
from .unwrap import AtlasLayout


def versions() -> dict:
    """Versions of lipsync and of the libraries whose results it depends on."""
    out = {"lipsync": __version__, "python": platform.python_version(), "numpy": np.__version__,
           "ffmpeg": ffmpeg_version()}
    for mod in ("mediapipe", "cv2", "scipy"):
        try:
            out["opencv" if mod == "cv2" else mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a version string is informative only
            out[mod] = "unknown"
    return out


def write_arrays(folder: Path, *, frames: int, size: int, track: FaceTrack, clean: CleanTrack, pose: NormalizedPose,
                 layout: AtlasLayout, lighting: NormalizedLighting, mouth: np.ndarray, topo: FaceTopology,
                 keep_raw_atlas: bool) -> dict:
    """9. Save every array of ``lipsync.prepared.ARRAYS`` (the atlases are already on disk); returns
    the manifest's ``arrays`` entry."""
    arrays: dict = {}
    arrays["atlas"] = array_entry("atlas", np.empty((frames, size, size, 3), np.uint8))
    arrays["atlas_mask"] = array_entry("atlas_mask", np.empty((frames, size, size), bool))
    if keep_raw_atlas:
        arrays["atlas_raw"] = array_entry("atlas_raw", np.empty((frames, size, size, 3), np.uint8))
    stats, p = lighting.stats, pose.pose
    for name, arr in (("landmarks", pose.landmarks), ("landmarks_raw", track.landmarks), ("tracked", track.tracked),
                      ("valid", clean.valid), ("interpolated", clean.interpolated), ("cuts", clean.cuts),
                      ("pose_scale", p.scale), ("pose_rotation", p.rotation), ("pose_translation", p.translation),
                      ("vertices", pose.vertices), ("reference_vertices", pose.reference),
                      ("faces", topo.faces.astype(np.int32)), ("uv", layout.layout.uv),
                      ("reference_atlas", lighting.reference_atlas),
                      ("region_masks", np.stack([layout.regions[k] for k in REGION_NAMES])),
                      ("lighting_gains", lighting.params.gains), ("skin_residual", stats.res_after.astype(np.float32)),
                      ("skin_correlation", stats.corr.astype(np.float32)),
                      ("lighting_spatial", lighting.params.spatial.astype(np.float32)),
                      ("mouth_opening", mouth.astype(np.float32))):
        if isinstance(arr, FrameArray):  # written there already, a chunk at a time
            assert arr.path == folder / f"{name}.npy", arr.path
        else:
            arr = np.asarray(arr)
            np.save(folder / f"{name}.npy", arr)
        arrays[name] = array_entry(name, arr)
    assert set(ARRAYS) <= set(arrays), set(ARRAYS) - set(arrays)
    return arrays


def quality_warnings(*, usable_s: float, outliers: np.ndarray, valid_fraction: float, faces_max: int, face_px: float,
                     size: int, lighting_summary: dict, yaw_range: float) -> list[str]:
    """What limits the quality of a model trained on this clip, one sentence each."""
    warnings = []
    if usable_s < 60:
        warnings.append(f"only {usable_s:.0f} s of usable frames: quality will be limited (1-5 minutes of video works best)")
    if outliers.any():
        warnings.append(f"{int(outliers.sum())} frame(s) looked unlike the face even after normalization (corrupt frames, occlusions) and were excluded")
    if valid_fraction < 0.9:
        warnings.append(f"the face was usable in only {100 * valid_fraction:.0f}% of frames")
    if faces_max > 1:
        warnings.append(f"up to {faces_max} faces were seen; the largest one was followed")
    if face_px < 120:
        warnings.append(f"the face is small ({face_px:.0f} px wide): the {size}x{size} atlas is upsampled and fine detail is limited")
    if lighting_summary["temporal_std_before"] > 0.15:
        warnings.append("the lighting changes strongly over the clip; normalization removes smooth changes but hard shadows remain")
    if yaw_range > 50:
        warnings.append(f"the head turns a lot ({yaw_range:.0f} degrees of yaw): texels seen only from the side are sparse")
    return warnings


def build_manifest(video, *, info: VideoInfo, frames: int, track: FaceTrack, clean: CleanTrack, pose: NormalizedPose,
                   layout: AtlasLayout, lighting: NormalizedLighting, speech: SpeechTrack, arrays: dict,
                   options: PreprocessOptions) -> dict:
    """10. The manifest (without previews and timings, which the pipeline adds last)."""
    valid, n, size = clean.valid, frames, options.atlas_size
    euler = pose.pose.euler_degrees()[valid]
    measures = {k: v[valid] for k, v in map_frames(face_measures, clean.landmarks).items()}
    usable_s = float(valid.sum() / info.fps)
    valid_fraction = float(valid.mean())
    faces_max = int(track.faces_seen.max()) if n else 0
    face_px = float(np.median(measures["face_width"]))
    outliers = lighting.outliers
    warnings = list(speech.warnings) + quality_warnings(
        usable_s=usable_s, outliers=outliers, valid_fraction=valid_fraction, faces_max=faces_max, face_px=face_px,
        size=size, lighting_summary=lighting.summary,
        yaw_range=float(np.ptp(euler[:, 0])) if len(euler) else 0.0)
    t_terms, s_terms = lighting.params.temporal_terms, lighting.params.spatial_terms
    return {
        "format_version": FORMAT_VERSION,
        "source": str(Path(video).resolve()),
        "fps": info.fps,
        "frames": n,
        "width": info.width,
        "height": info.height,
        "duration_s": round(n / info.fps, 4),
        "valid_fraction": round(valid_fraction, 6),
        "tracked_fraction": round(float(track.tracked.mean()), 6),
        "interpolated_frames": int(clean.interpolated.sum()),
        "excluded_frames": int((~valid).sum()),
        "appearance_outliers": int(outliers.sum()),
        "cuts": np.flatnonzero(clean.cuts).tolist(),
        "usable_s": round(usable_s, 3),
        "faces_seen_max": faces_max,
        "face_width_px": round(face_px, 1),
        "atlas_size": size,
        "reference_frame": pose.reference_frame,
        "reference_candidates": [int(c) for c in pose.candidates],
        "uv": {"mouth_open": layout.layout.mouth_open, "scale": layout.layout.scale},
        "pose": {"convention": "landmarks = scale * rotation @ vertices + translation",
                 "yaw_deg": _range(euler[:, 0]), "pitch_deg": _range(euler[:, 1]), "roll_deg": _range(euler[:, 2])},
        "lighting": {"log_space": True, "temporal_terms": [list(t) for t in t_terms],
                     "spatial_terms": [list(t) for t in s_terms],
                     "field": "log_gain(u,v) = sum_k c_k * (2u-1)^i_k * (2v-1)^j_k per RGB channel; atlas = normalized * exp(log_gain)",
                     **lighting.summary},
        "audio": {"file": "audio.wav", "sample_rate": 16000, "samples": int(len(speech.samples)),
                  "samples_per_frame": 16000 / info.fps},
        "sync": speech.sync,
        "region_names": list(REGION_NAMES),
        "arrays": arrays,
        "options": {k: v for k, v in options.__dict__.items() if k != "workers"},  # results do not depend on it
        "warnings": warnings,
        "versions": versions(),
    }


def _range(x: np.ndarray) -> list[float]:
    return [round(float(np.min(x)), 2), round(float(np.max(x)), 2)] if len(x) else [0.0, 0.0]
