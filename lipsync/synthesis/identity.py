"""Is a synthesis target the model's speaker? A cheap check from the reference data both sides have.

Two cues, both read in the canonical face so that head pose plays no part:

1. **Colour pattern**: every triangle's mean colour as log-chromaticity (log R/G, log B/G), each
   channel centred on the face's own mean, compared by rank (Spearman) correlation. Where the lips,
   brows, cheeks and skin sit in colour relative to each other is a trait of the person; a global
   gain per channel (exposure, white balance) cancels, shading is nearly colourless, and the rank
   bounds the pull of any one triangle (a highlight, hair at the face's edge, glasses).
2. **Shape**: the canonical meshes above the mouth, aligned by a similarity and compared with the
   worst quarter of the vertices left out, so that a smile or a squint does not count.

``similarity = colour - SHAPE_WEIGHT * shape``; the verdict is ``similarity >= SAME_PERSON``.
``python tools/same_person.py`` re-measures both on the shared clips (see ``SAME_PERSON``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..common import check_shape

# 6 sample points per triangle, barycentric: the interior points of a 5-step subdivision
SUBDIVISION = 5
SAMPLE_WEIGHTS = np.array([(i, j, SUBDIVISION - i - j) for i in range(1, SUBDIVISION)
                           for j in range(1, SUBDIVISION - i) if SUBDIVISION - i - j > 0], np.float32) / SUBDIVISION
MIN_LEVEL = 40.0       # 0-255: triangles darker than this (in either face) have too little light for a colour
MIN_TRIANGLES = 100    # fewer triangles seen in both faces: no verdict
SHAPE_KEEP = 0.75      # the best-fitting share of vertices the shape difference is measured on
SHAPE_WEIGHT = 3.0     # a face shape 0.05 off (typical of two different people) costs 0.15 of colour correlation

# similarity below which the target is probably someone else, halfway between the two groups that
# ``python tools/same_person.py`` measures on the shared clips (7 people; the first 60% of each clip
# against stills and its last 40%, GRID s1's 3-minute video against its 20 held-out sentences, and
# every pair of different people both ways, videos and stills): same person 0.69-0.96 (40 pairs,
# lowest: a still of the VoxCeleb2 speaker with glasses, head turned), different people -0.05-0.53
# (240 pairs, highest: the other VoxCeleb2 speaker against a GRID still); margins 0.08 each side.
SAME_PERSON = 0.61


@dataclass(frozen=True)
class IdentityMatch:
    """How alike the model's speaker and a target's face are (``identity_similarity``).

    Members:
        similarity: ``colour - SHAPE_WEIGHT * shape``; NaN when too little of the face is seen in both.
        colour: rank correlation of the two faces' colour patterns, in [-1, 1] (NaN as above).
        shape: trimmed RMS shape difference after a similarity alignment, relative to the face's size.
        triangles: triangles whose colours were compared.
    """
    similarity: float
    colour: float
    shape: float
    triangles: int

    @property
    def decided(self) -> bool:
        return bool(np.isfinite(self.similarity))

    @property
    def same_person(self) -> bool:
        """True unless the faces were compared and look like two people."""
        return not self.decided or self.similarity >= SAME_PERSON


def colour_pattern(atlas: np.ndarray, uv: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean log-chromaticity of every triangle of a face atlas.

    Args:
        atlas: uint8 (S, S, 3) RGB atlas, 0 where the face was not seen.
        uv: (V, 2) atlas coordinates of the vertices (u right, v down, in [0, 1]).
        faces: int (F, 3) triangles.
    Returns:
        pattern float32 (F, 2): (log R/G, log B/G), uncentred; seen bool (F,): every sample point of
        the triangle lies on seen texels and the triangle is at least ``MIN_LEVEL`` bright.
    """
    import cv2

    size = check_shape("atlas", atlas, ["S", "S", 3])["S"]
    check_shape("uv", uv, ["V", 2])
    pts = np.einsum("kc,fcd->fkd", SAMPLE_WEIGHTS, np.asarray(uv, np.float32)[faces]).reshape(1, -1, 2) * size - 0.5
    mx, my = np.ascontiguousarray(pts[..., 0]), np.ascontiguousarray(pts[..., 1])
    col = cv2.remap(np.asarray(atlas, np.float32), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)[0]
    seen = cv2.remap((atlas.max(-1) > 0).astype(np.float32), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)[0]
    k = len(SAMPLE_WEIGHTS)
    log = np.log(col + 1.0).reshape(len(faces), k, 3).mean(1)  # (F, 3)
    ok = (seen.reshape(len(faces), k) > 0.999).all(1) & (log.mean(1) > np.log(MIN_LEVEL + 1.0))
    pattern = np.stack([log[:, 0] - log[:, 1], log[:, 2] - log[:, 1]], 1)
    return pattern.astype(np.float32), ok


def _ranks(x: np.ndarray) -> np.ndarray:
    r = np.empty(len(x))
    r[np.argsort(x, kind="stable")] = np.arange(len(x))
    return r


def colour_correlation(model, target) -> tuple[float, int]:
    """Spearman correlation of the two faces' centred colour patterns over the triangles seen in
    both (mouth and eye interiors left out: speech and blinks change them); (NaN, n) when fewer
    than ``MIN_TRIANGLES`` are. ``model``, ``target``: ``model_io.SpeakerData`` (or anything with
    ``reference_atlas``, ``uv`` and ``faces``)."""
    from ..topology import load_topology

    topo = load_topology()
    faces = np.asarray(model.faces)
    pa, oka = colour_pattern(model.reference_atlas, model.uv, faces)
    pb, okb = colour_pattern(target.reference_atlas, target.uv, faces)
    use = oka & okb
    use[np.concatenate([topo.mouth_faces, topo.eye_faces])] = False
    n = int(use.sum())
    if n < MIN_TRIANGLES:
        return float("nan"), n
    a, b = pa[use] - pa[use].mean(0), pb[use] - pb[use].mean(0)
    ra, rb = _ranks(a.ravel()), _ranks(b.ravel())
    return float(np.corrcoef(ra, rb)[0, 1]), n


def shape_difference(model_vertices: np.ndarray, target_vertices: np.ndarray, *, iterations: int = 3) -> float:
    """Trimmed shape difference of two canonical meshes (V, 3) above the mouth.

    The target is aligned to the model by a similarity, refitted ``iterations`` times on the
    ``SHAPE_KEEP`` best-fitting vertices; returns the RMS distance of those vertices over their RMS
    radius (0 for the same shape at any pose and size; up to 0.024 between one person's clips and
    0.013-0.09 between people on the shared clips).
    """
    from ..pose import apply_similarity, fit_similarity

    a, b = np.asarray(model_vertices, np.float64), np.asarray(target_vertices, np.float64)
    check_shape("model_vertices", a, ["V", 3])
    check_shape("target_vertices", b, [a.shape[0], 3])
    upper_lip_top = 0  # MediaPipe vertex at the top of the upper lip
    idx = np.flatnonzero(a[:, 1] < a[upper_lip_top, 1])  # y points down: the face above the mouth
    keep = idx
    for _ in range(iterations + 1):
        s, r, t = fit_similarity(b[keep], a[keep])
        d = np.linalg.norm(apply_similarity(b[idx][None], s[None], r[None], t[None])[0] - a[idx], axis=1)
        keep = idx[d <= np.quantile(d, SHAPE_KEEP)]
    d = np.sort(d)[: max(1, int(SHAPE_KEEP * len(d)))]
    radius = np.sqrt(((a[idx] - a[idx].mean(0)) ** 2).sum(1).mean())
    return float(np.sqrt((d ** 2).mean()) / radius)


def identity_similarity(model, target) -> IdentityMatch:
    """How alike two faces' reference data are: the model's speaker and a target clip's face, each a
    ``model_io.SpeakerData`` (``SpeakerData.from_prepared(clip)`` for a prepared clip). A few ms."""
    colour, n = colour_correlation(model, target)
    shape = shape_difference(model.reference_vertices, target.reference_vertices)
    return IdentityMatch(similarity=colour - SHAPE_WEIGHT * shape, colour=colour, shape=shape, triangles=n)
