"""The settings of preprocessing."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PreprocessOptions:
    """Settings of ``preprocess`` (all have defaults that suit 1-5 minute talking-head videos)."""
    atlas_size: int = 256            # atlas side in texels
    max_gap_s: float = 0.5           # tracking gaps up to this long are interpolated, longer are excluded
    pose_smooth_s: float = 0.28      # Savitzky-Golay window for head pose (zero phase)
    shape_smooth_s: float = 0.2      # window for the non-rigid face shape (short: keeps lip motion)
    reference_candidates: int = 15   # frames averaged into the reference shape and reference atlas
    lighting_degree: int = 2         # per-frame gain field: 2D polynomial degree (6 terms)
    spatial_degree: int = 2          # left/right lighting field: odd-in-u polynomial degree (u, u*v)
    keep_raw_atlas: bool = False     # also store the atlas before lighting normalization
    min_seconds: float = 1.0         # shorter videos are refused
    require_audio: bool = True       # refuse videos without sound (a synthesis target needs none)
    sync_audio: bool = True          # measure the audio/lip offset and re-align out-of-sync audio
    chunk: int = 256                 # frames per batch in the lighting step
    workers: int = 0                 # threads for the per-frame stages (0: one per CPU core; 1: sequential)
    previews: bool = True
