"""The prepared clip: what ``lipsync preprocess`` writes and every later stage reads.

A prepared clip is a folder holding ``manifest.json``, one numpy ``.npy`` file per array (load
them with ``np.load(path, mmap_mode="r")`` to avoid reading gigabytes of atlases), ``audio.wav``
(16 kHz mono, sample 0 = start of frame 0) and ``previews/``. ``ARRAYS`` below documents every
array; the manifest repeats each one's shape and dtype.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from .common import LipsyncError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"

# name -> (dtype, shape in dimension letters, meaning). T frames, V=468 vertices, F triangles,
# S atlas size, K/Ka lighting basis sizes.
ARRAYS: dict[str, tuple[str, str, str]] = {
    "landmarks": ("float32", "T,V,3", "smoothed image-space landmarks (pixels; x right, y down, z away from camera); NaN in excluded frames"),
    "landmarks_raw": ("float32", "T,V,3", "landmarks exactly as tracked; NaN where tracking failed"),
    "tracked": ("bool", "T", "the tracker found the face in this frame"),
    "valid": ("bool", "T", "usable for training: tracked (or inside a short interpolated gap) and not an appearance outlier"),
    "interpolated": ("bool", "T", "filled by interpolation across a short tracking gap"),
    "cuts": ("bool", "T", "frame starts a new shot (an edit in the footage); nothing is smoothed, interpolated or conditioned across it"),
    "pose_scale": ("float32", "T", "pose scale s (pixels per canonical unit); landmarks = s * R @ vertices + t"),
    "pose_rotation": ("float32", "T,3,3", "pose rotation R (canonical -> camera)"),
    "pose_translation": ("float32", "T,3", "pose translation t (pixels)"),
    "vertices": ("float32", "T,V,3", "pose-normalized 3D vertices in canonical units; NaN in excluded frames"),
    "reference_vertices": ("float32", "V,3", "canonical reference shape (frontal, mouth closed)"),
    "faces": ("int32", "F,3", "triangles: MediaPipe's tessellation plus mouth and eye fills"),
    "uv": ("float32", "V,2", "atlas coordinates of each vertex in [0,1] (u right, v down)"),
    "atlas": ("uint8", "T,S,S,3", "lighting-normalized RGB texture atlas per frame (0 where invalid)"),
    "atlas_mask": ("bool", "T,S,S", "texel holds visible face texture in this frame"),
    "reference_atlas": ("uint8", "S,S,3", "lighting-normalized reference atlas (robust median of reference frames)"),
    "region_masks": ("bool", "4,S,S", "atlas regions: skin, mouth (lips and interior), lower_face, eyes"),
    "lighting_gains": ("float32", "T,3,K", "per-frame log-gain coefficients (temporal lighting) relative to the reference"),
    "lighting_spatial": ("float32", "3,Ka", "log-gain coefficients of the reference's left/right lighting"),
    "skin_residual": ("float32", "T", "median |log atlas - log reference| over skin after normalization (NaN: no skin seen)"),
    "skin_correlation": ("float32", "T", "correlation of the skin's log luminance with the reference's (NaN: no skin seen)"),
    "mouth_opening": ("float32", "T", "inner-lip gap over mouth width, from the smoothed vertices"),
}
OPTIONAL_ARRAYS = {"atlas_raw": ("uint8", "T,S,S,3", "atlas before lighting normalization (only with --keep-raw-atlas)")}
REGION_NAMES = ("skin", "mouth", "lower_face", "eyes")


@dataclass(frozen=True)
class Manifest:
    """The typed view of ``manifest.json`` that readers use (the JSON itself keeps every figure;
    ``PreparedClip.manifest`` is it as a dict).

    Members:
        source: the video preprocessed; fps, frames, width, height, duration_s: its format (frames
            actually decoded); atlas_size: S.
        reference_frame, reference_candidates: the frontal closed-mouth frame and the frames
            averaged into the reference shape and atlas.
        region_names: the order of ``region_masks`` (use ``PreparedClip.regions()``).
        arrays: array name -> its file, dtype, shape and meaning (``ARRAYS``).
        audio_file: the speech track (16 kHz mono, sample 0 = start of frame 0).
        temporal_terms, spatial_terms: exponents of the lighting bases (``lipsync.lighting``).
        lighting: the lighting figures (temporal std, residual, asymmetry before/after).
        sync: whether and how the audio was re-aligned; warnings: quality warnings.
        timings_s, frames_per_second: how long preprocessing took; cpu_s: per stage, CPU seconds of
            this process (all threads) and of its ffmpeg decoders; workers: threads of the per-frame
            stages; versions: of the libraries used.
        previews: preview name -> relative path (empty without previews).
        valid_fraction, tracked_fraction: shares of usable and tracked frames; usable_s: seconds of
            usable frames; interpolated_frames, excluded_frames, appearance_outliers: frame counts;
            cuts: frames that start a new shot; faces_seen_max: most faces in one frame;
            face_width_px: median face width; pose: yaw/pitch/roll ranges in degrees.
    """
    source: Path
    fps: float
    frames: int
    width: int
    height: int
    duration_s: float
    atlas_size: int
    reference_frame: int
    reference_candidates: tuple
    region_names: tuple
    arrays: dict
    audio_file: str
    temporal_terms: tuple
    spatial_terms: tuple
    lighting: dict = field(default_factory=dict)
    sync: dict = field(default_factory=dict)
    warnings: tuple = ()
    timings_s: dict = field(default_factory=dict)
    frames_per_second: float | None = None
    cpu_s: dict = field(default_factory=dict)
    workers: int = 1
    versions: dict = field(default_factory=dict)
    previews: dict = field(default_factory=dict)
    valid_fraction: float = 1.0
    tracked_fraction: float = 1.0
    usable_s: float = 0.0
    interpolated_frames: int = 0
    excluded_frames: int = 0
    appearance_outliers: int = 0
    cuts: tuple = ()
    faces_seen_max: int = 1
    face_width_px: float = 0.0
    pose: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, m: dict) -> "Manifest":
        light = m.get("lighting", {})
        return cls(source=Path(m["source"]), fps=float(m["fps"]), frames=int(m["frames"]), width=int(m["width"]),
                   height=int(m["height"]), duration_s=float(m.get("duration_s", m["frames"] / m["fps"])),
                   atlas_size=int(m["atlas_size"]), reference_frame=int(m["reference_frame"]),
                   reference_candidates=tuple(int(c) for c in m.get("reference_candidates", [m["reference_frame"]])),
                   region_names=tuple(m.get("region_names", REGION_NAMES)), arrays=dict(m.get("arrays", {})),
                   audio_file=m.get("audio", {}).get("file", "audio.wav"),
                   temporal_terms=tuple(tuple(t) for t in light.get("temporal_terms", [])),
                   spatial_terms=tuple(tuple(t) for t in light.get("spatial_terms", [])),
                   lighting={k: v for k, v in light.items() if k not in ("temporal_terms", "spatial_terms")},
                   sync=dict(m.get("sync", {})), warnings=tuple(m.get("warnings", [])),
                   timings_s=dict(m.get("timings_s", {})), frames_per_second=m.get("frames_per_second"),
                   cpu_s=dict(m.get("cpu_s", {})), workers=int(m.get("workers", 1)),
                   versions=dict(m.get("versions", {})), previews=dict(m.get("previews", {})),
                   valid_fraction=float(m.get("valid_fraction", 1.0)),
                   tracked_fraction=float(m.get("tracked_fraction", 1.0)), usable_s=float(m.get("usable_s", 0.0)),
                   interpolated_frames=int(m.get("interpolated_frames", 0)),
                   excluded_frames=int(m.get("excluded_frames", 0)),
                   appearance_outliers=int(m.get("appearance_outliers", 0)), cuts=tuple(m.get("cuts", [])),
                   faces_seen_max=int(m.get("faces_seen_max", 1)), face_width_px=float(m.get("face_width_px", 0.0)),
                   pose=dict(m.get("pose", {})))

    def has_array(self, name: str) -> bool:
        return name in self.arrays


@dataclass(frozen=True)
class PreparedClip:
    """A prepared clip opened for reading; arrays are memory-mapped on first access.

    ``info`` is the typed manifest (``Manifest``); ``manifest`` the JSON as a dict."""
    path: Path
    manifest: dict

    @cached_property
    def info(self) -> Manifest:
        return Manifest.from_dict(self.manifest)

    @property
    def fps(self) -> float:
        return self.info.fps

    @property
    def num_frames(self) -> int:
        return self.info.frames

    @property
    def atlas_size(self) -> int:
        return self.info.atlas_size

    def array(self, name: str, *, mmap: bool = True) -> np.ndarray:
        spec = self.info.arrays.get(name)
        if spec is None:
            raise KeyError(f"{self.path} has no array {name!r}")
        return np.load(self.path / spec["file"], mmap_mode="r" if mmap else None)

    def frames(self, name: str):
        """A per-frame array (``atlas``, ``atlas_raw``, ``atlas_mask``) as a read-only
        ``lipsync.files.FrameArray``: read a chunk at a time, so memory does not grow with the clip."""
        from .files import FrameArray

        spec = self.info.arrays.get(name)
        if spec is None:
            raise KeyError(f"{self.path} has no array {name!r}")
        return FrameArray(self.path / spec["file"], writable=False)

    def regions(self) -> dict[str, np.ndarray]:
        """Region name (``REGION_NAMES``) -> bool (S, S) atlas mask."""
        masks = self.array("region_masks", mmap=False)
        return dict(zip(self.info.region_names, masks))

    def audio(self) -> tuple[np.ndarray, int]:
        import soundfile as sf

        data, rate = sf.read(str(self.path / self.info.audio_file), dtype="float32")
        return data, rate


def open_prepared(path: str | Path) -> PreparedClip:
    """Open a prepared clip folder; raises ``LipsyncError`` if it is not a complete one."""
    path = Path(path)
    man = path / MANIFEST
    if not man.is_file():
        raise LipsyncError(f"{path} is not a prepared clip (no {MANIFEST}); make one with 'lipsync preprocess VIDEO --out {path}'.")
    try:
        manifest = json.loads(man.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise LipsyncError(f"{man} could not be read ({err}); preprocess the video again.") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise LipsyncError(f"{path} was written by an incompatible lipsync version (format {manifest.get('format_version')}, need {FORMAT_VERSION}); preprocess the video again.")
    missing = [s["file"] for s in manifest.get("arrays", {}).values() if not (path / s["file"]).is_file()]
    if missing:
        raise LipsyncError(f"{path} is incomplete (missing {', '.join(missing[:3])}); preprocess the video again.")
    return PreparedClip(path=path, manifest=manifest)


def array_entry(name: str, array: np.ndarray) -> dict:
    dtype, dims, meaning = ARRAYS.get(name) or OPTIONAL_ARRAYS[name]
    return {"file": f"{name}.npy", "dtype": str(array.dtype), "shape": list(array.shape), "dims": dims,
            "description": meaning}
