"""The prepared clip: what ``lipsync preprocess`` writes and every later stage reads.

A prepared clip is a folder holding ``manifest.json``, one numpy ``.npy`` file per array (load
them with ``np.load(path, mmap_mode="r")`` to avoid reading gigabytes of atlases), ``audio.wav``
(16 kHz mono, sample 0 = start of frame 0) and ``previews/``. ``ARRAYS`` below documents every
array; the manifest repeats each one's shape and dtype.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
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
class PreparedClip:
    """A prepared clip opened for reading; arrays are memory-mapped on first access."""
    path: Path
    manifest: dict

    @property
    def fps(self) -> float:
        return float(self.manifest["fps"])

    @property
    def num_frames(self) -> int:
        return int(self.manifest["frames"])

    @property
    def atlas_size(self) -> int:
        return int(self.manifest["atlas_size"])

    def array(self, name: str, *, mmap: bool = True) -> np.ndarray:
        spec = self.manifest["arrays"].get(name)
        if spec is None:
            raise KeyError(f"{self.path} has no array {name!r}")
        return np.load(self.path / spec["file"], mmap_mode="r" if mmap else None)

    def regions(self) -> dict[str, np.ndarray]:
        masks = self.array("region_masks", mmap=False)
        return dict(zip(self.manifest["region_names"], masks))

    def audio(self) -> tuple[np.ndarray, int]:
        import soundfile as sf

        data, rate = sf.read(str(self.path / self.manifest["audio"]["file"]), dtype="float32")
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
