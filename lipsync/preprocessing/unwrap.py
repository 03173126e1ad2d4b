"""Stages 5-6 of preprocessing: the speaker's UV layout and atlas sampler, then every usable frame
unwrapped into the texture atlas (written straight into memory-mapped output files)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atlas import AtlasSampler, build_sampler, extract_atlas, region_masks
from ..common import Progress
from ..files import FrameArray
from ..media import FrameReader, VideoInfo
from ..topology import FaceTopology
from ..uvmap import UVLayout, build_uv_layout
from ..workers import BoundedPool
from .options import PreprocessOptions
from .reference import NormalizedPose

PREVIEW_FRAMES = 16  # frames kept (raw frame and raw atlas) for the preview pictures


@dataclass(frozen=True)
class AtlasLayout:
    """Members:
        layout: the UV layout (``uv`` float32 (V, 2) in [0, 1]).
        sampler: which triangle and barycentric coordinates each covered texel has.
        regions: name -> bool (S, S); skin, mouth, lower_face, eyes.
    """
    layout: UVLayout
    sampler: AtlasSampler
    regions: dict


def build_layout(pose: NormalizedPose, topo: FaceTopology, options: PreprocessOptions) -> AtlasLayout:
    """5. The UV layout of the reference shape, its atlas sampler and region masks."""
    layout = build_uv_layout(pose.reference, topo)
    size = options.atlas_size
    sampler = build_sampler(layout.uv, pose.reference, topo, size)
    return AtlasLayout(layout=layout, sampler=sampler, regions=region_masks(layout.uv, topo, size, sampler.covered_mask()))


@dataclass
class Unwrapped:
    """Members:
        atlas: uint8 (T, S, S, 3); ``atlas.npy`` of the output folder, on disk (0 where unusable).
        masks: bool (T, S, S); ``atlas_mask.npy`` on disk: texel seen in this frame.
        preview_idx: int (P,); frames chosen for the previews.
        kept_frames, kept_raw: frame index -> the video frame and its raw atlas (previews, reference frame).
    """
    atlas: FrameArray
    masks: FrameArray
    preview_idx: np.ndarray
    kept_frames: dict
    kept_raw: dict


def unwrap_frames(info: VideoInfo, frames: int, pose: NormalizedPose, valid: np.ndarray, layout: AtlasLayout,
                  topo: FaceTopology, folder: Path, progress: Progress, *, workers: int = 1) -> Unwrapped:
    """6. Decode the video again and unwrap each usable frame into the atlas (``folder``'s
    ``atlas.npy`` and ``atlas_mask.npy``), on ``workers`` threads (0: one per core)."""
    size = layout.sampler.size
    atlas = FrameArray(folder / "atlas.npy", dtype=np.uint8, shape=(frames, size, size, 3))
    masks = FrameArray(folder / "atlas_mask.npy", dtype=bool, shape=(frames, size, size))
    preview_idx = spread(np.flatnonzero(valid), PREVIEW_FRAMES)
    keep = set(preview_idx.tolist()) | {pose.reference_frame}
    kept_frames = {}

    def unwrap(i: int, frame: np.ndarray) -> None:
        atlas[i], masks[i] = extract_atlas(frame, pose.landmarks[i], float(pose.pose.scale[i]), layout.sampler,
                                           topo.faces)

    with BoundedPool(workers, name="atlas") as pool:
        for i, frame in enumerate(FrameReader(info, max_frames=frames)):
            if valid[i]:
                pool.submit(unwrap, i, frame)  # each decoded frame is a new buffer: safe to hand over
            if i in keep:
                kept_frames[i] = frame.copy()
            if i % 25 == 0:
                progress("atlas", i + 1, frames)
    kept_raw = {i: atlas[i] for i in kept_frames}
    progress("atlas", frames, frames)
    return Unwrapped(atlas=atlas, masks=masks, preview_idx=preview_idx, kept_frames=kept_frames, kept_raw=kept_raw)


def spread(idx: np.ndarray, k: int) -> np.ndarray:
    """At most ``k`` entries of ``idx``, evenly spaced."""
    if len(idx) <= k:
        return idx
    return idx[np.linspace(0, len(idx) - 1, k).round().astype(int)]
