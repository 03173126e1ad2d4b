"""The per-speaker UV layout of the texture atlas.

The layout is an orthographic projection of the canonical reference shape (frontal, mouth closed),
so the face unwraps with little distortion for the views that dominate a talking-head video. Two
changes make it useful for lip-sync:

1. The mouth is opened in UV space: the inner-lip chains are pushed apart by an ellipse of height
   ``mouth_open`` x mouth width, and the displacement fades smoothly away from the lips, so the mouth interior (teeth, tongue) gets atlas area while the
   rest of the face barely moves. Without this the closed reference mouth would give the interior
   zero area.
2. The layout is centred on the face's symmetry plane (canonical x = 0 -> u = 0.5), so the left
   and right halves are mirror images, which lighting normalization relies on.

UVs are in [0, 1]^2 with u to the right and v down (atlas row = v * size); see docs/COORDINATES.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .common import check_shape
from .topology import INNER_LIP_LOWER, INNER_LIP_UPPER, FaceTopology, triangle_area_2d


@dataclass(frozen=True)
class UVLayout:
    """Members:
        uv: float32 (V, 2) atlas coordinates in [0, 1], u right, v down.
        mouth_open: fraction of the mouth width given to the mouth interior's height.
        scale: atlas units per canonical unit (uv = 0.5 + scale * (x, y - y_center)).
    """
    uv: np.ndarray
    mouth_open: float
    scale: float


def lip_sides(points: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """+1 for vertices on the upper side of the mouth, -1 for the lower side (V,).

    Decided by geodesic distance along the mesh (without the mouth fill) to the upper versus the
    lower inner-lip chain, so a curled lip is never split from its own side.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import dijkstra

    n = len(points)
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    w = np.linalg.norm(points[e[:, 0]] - points[e[:, 1]], axis=1) + 1e-9
    graph = coo_matrix((np.concatenate([w, w]), (np.concatenate([e[:, 0], e[:, 1]]), np.concatenate([e[:, 1], e[:, 0]]))),
                       shape=(n, n)).tocsr()
    d_up = dijkstra(graph, indices=list(INNER_LIP_UPPER[1:-1]), min_only=True)
    d_lo = dijkstra(graph, indices=list(INNER_LIP_LOWER[1:-1]), min_only=True)
    return np.where(d_up <= d_lo, 1.0, -1.0)


def mouth_opening_field(points: np.ndarray, faces: np.ndarray, amount: float, *, falloff: float = 0.5) -> np.ndarray:
    """Displacement (V, 2) that pulls the closed inner lips apart into a lens-shaped opening.

    Along the mouth axis (corner 78 to corner 308, coordinate s in [-1/2, 1/2]) the opening height
    is ``amount * width * (1 - (2 s)^2)``. Points above the inner-lip line move up by half of it,
    points below move down, both fading with distance d from the line as exp(-(d / (falloff *
    width))^2). Each vertical line maps monotonically (the fade is slow enough), so the map is
    fold-free; only the mouth-fill triangles, which straddle the line, open up.
    """
    p = points.astype(np.float64)
    left, right = INNER_LIP_UPPER[0], INNER_LIP_UPPER[-1]
    centre = 0.5 * (p[left] + p[right])
    axis = p[right] - p[left]
    width = float(np.linalg.norm(axis))
    axis /= width
    normal = np.array([axis[1], -axis[0]])  # toward smaller y: up on screen
    s = ((p - centre) @ axis) / width  # along the mouth
    n = (p - centre) @ normal  # across it, positive above
    chain = np.array(INNER_LIP_UPPER)
    order = np.argsort(s[chain])
    line = np.interp(s, s[chain][order], n[chain][order])  # the inner-lip line at each vertex's s
    side = lip_sides(p, faces)
    profile = np.clip(1.0 - (2.0 * s) ** 2, 0.0, None)
    fade = np.exp(-(((n - line) / (falloff * width)) ** 2))
    mag = 0.5 * amount * width * profile * fade * side
    return mag[:, None] * normal[None, :]


def build_uv_layout(reference: np.ndarray, topo: FaceTopology, *, mouth_open: float = 0.45,
                    margin: float = 0.03) -> UVLayout:
    """UV layout from the canonical reference shape.

    Args:
        reference: float32 (V, 3) frontal canonical shape (x right, y down), mouth closed.
        mouth_open: interior height as a fraction of the mouth width (reduced automatically if
            the reference shape is so unusual that the opening would fold triangles).
        margin: empty border of the atlas, in atlas units.
    Raises:
        ValueError if no fold-free layout exists (a broken reference shape).
    """
    check_shape("reference", reference, [topo.num_vertices, 3])
    p = reference[:, :2].astype(np.float64)
    base_faces = np.delete(topo.faces, topo.mouth_faces, axis=0)
    base_area = triangle_area_2d(p, topo.faces)
    for amount in (mouth_open, 0.7 * mouth_open, 0.5 * mouth_open, 0.3 * mouth_open):
        moved = p + mouth_opening_field(p, base_faces, amount)
        area = triangle_area_2d(moved, topo.faces)
        # An orthographic projection of a face always shows a few slivers edge-on or slightly from
        # behind (under the lower lip, the sides of the nose); they cost a few doubly covered
        # texels. The opening must not fold anything further, and must open every mouth triangle.
        tol = 0.05 * np.median(np.abs(area))
        if (area > np.minimum(base_area, 0) - tol).all() and (area[topo.mouth_faces] > tol).all():
            break
    else:
        raise ValueError("could not build a fold-free UV layout from the reference shape")
    # Centre on the symmetry plane (x = 0) and fit into the unit square with a margin.
    half_w = np.abs(moved[:, 0]).max()
    y_mid = 0.5 * (moved[:, 1].min() + moved[:, 1].max())
    half = max(half_w, 0.5 * np.ptp(moved[:, 1]))
    scale = (0.5 - margin) / half
    uv = np.stack([0.5 + scale * moved[:, 0], 0.5 + scale * (moved[:, 1] - y_mid)], 1)
    return UVLayout(uv=uv.astype(np.float32), mouth_open=float(amount), scale=float(scale))
