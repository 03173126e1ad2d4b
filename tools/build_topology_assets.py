"""Rebuild lipsync/assets/face_topology.npz from mediapipe's tessellation and real faces.

The triangles come from mediapipe's source file; the left/right mirror map is estimated from real
frontal talking-head video (it is a property of MediaPipe's topology, so any frontal speaker gives
the same map; the asset in the repository was built from the two GRID/news clips below and both
gave identical maps).

    python tools/build_topology_assets.py ../shared/data/grid_s1/s1_train_180s.mp4 \
        ../shared/data/clips/news_anchor_de_20s.mp4
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
from scipy.optimize import linear_sum_assignment

from lipsync.media import FrameReader, probe
from lipsync.pose import symmetry_frame
from lipsync.topology import (ASSET_PATH, build_topology, load_topology, mediapipe_connections_source,
                              save_topology)
from lipsync.tracking import track_frames

# Pairs every frontal face shows; enough to find a first symmetry plane.
SEED_PAIRS = [(33, 263), (133, 362), (234, 454), (61, 291), (130, 359), (127, 356)]


def frontal_mean_shape(landmarks: np.ndarray, mirror: np.ndarray, use=None) -> np.ndarray:
    rot, center = symmetry_frame(landmarks, mirror, use=use)
    x = np.einsum("tij,tvj->tvi", rot, landmarks - center[:, None])
    x /= np.linalg.norm(x[:, 263] - x[:, 33], axis=-1)[:, None, None]
    return np.median(x, axis=0)


def estimate_mirror(landmarks: np.ndarray, iters: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Mirror map (V,) by optimal assignment of the frontalized mean shape to its reflection."""
    landmarks = landmarks[np.isfinite(landmarks).all(axis=(1, 2))]
    mirror = np.arange(landmarks.shape[1])
    for a, b in SEED_PAIRS:
        mirror[a], mirror[b] = b, a
    use = np.array([v for p in SEED_PAIRS for v in p])
    for _ in range(iters):
        mean = frontal_mean_shape(landmarks, mirror, use=use)
        cost = np.linalg.norm((mean * [-1, 1, 1])[:, None] - mean[None], axis=-1)
        _, mirror = linear_sum_assignment(cost)
        use = None
    return mirror, mean


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("videos", nargs="+")
    ap.add_argument("--frames", type=int, default=1500, help="frames to track per video")
    args = ap.parse_args(argv)
    mirrors, means = [], []
    for path in args.videos:
        info = probe(path)
        track = track_frames(FrameReader(info, max_frames=args.frames), fps=info.fps, width=info.width, height=info.height)
        m, mean = estimate_mirror(track.landmarks)
        if not np.array_equal(m[m], np.arange(len(m))):
            print(f"{path}: the estimated mirror map is not an involution", file=sys.stderr)
            return 1
        mirrors.append(m)
        means.append(mean)
        print(f"{path}: {int((m == np.arange(len(m))).sum())} midline vertices")
    if any(not np.array_equal(m, mirrors[0]) for m in mirrors):
        print("the videos disagree on the mirror map", file=sys.stderr)
        return 1
    topo = build_topology(mediapipe_connections_source(), mirrors[0], means[0])
    save_topology(topo)
    load_topology.cache_clear()
    print(f"wrote {ASSET_PATH}: {len(topo.faces)} triangles ({topo.n_tessellation} from mediapipe), "
          f"{int((topo.mirror_faces() < 0).sum())} without a mirror triangle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
