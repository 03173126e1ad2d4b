"""A plain numpy rasterizer: slow and obvious, used by tests as ground truth for the others.

Orthographic projection of image-space vertices (x right, y down in pixels, pixel centres at
i + 0.5, z larger = farther), perspective-free barycentric interpolation of UVs, a z-buffer, and
bilinear texture lookup. Triangles facing away (negative screen area in our winding) are culled.
"""
from __future__ import annotations

import numpy as np

from ..topology import triangle_area_2d


def bilinear(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Sample an (S, S, C) texture at uv (N, 2) in [0, 1] (u right, v down), clamping at the border."""
    size_y, size_x = texture.shape[:2]
    x = np.clip(uv[:, 0] * size_x - 0.5, 0, size_x - 1)
    y = np.clip(uv[:, 1] * size_y - 0.5, 0, size_y - 1)
    x0 = np.floor(x).astype(int)
    y0 = np.floor(y).astype(int)
    x1 = np.minimum(x0 + 1, size_x - 1)
    y1 = np.minimum(y0 + 1, size_y - 1)
    fx = (x - x0)[:, None]
    fy = (y - y0)[:, None]
    t = texture.astype(np.float64)
    return ((1 - fx) * (1 - fy) * t[y0, x0] + fx * (1 - fy) * t[y0, x1]
            + (1 - fx) * fy * t[y1, x0] + fx * fy * t[y1, x1])


def render(points: np.ndarray, faces: np.ndarray, uv: np.ndarray, texture: np.ndarray, height: int, width: int,
           *, background: np.ndarray | None = None):
    """Rasterize a textured mesh.

    Args:
        points: (V, 3) image-space vertices.
        faces: (F, 3) triangles (front-facing = positive ``triangle_area_2d``).
        uv: (V, 2) texture coordinates in [0, 1].
        texture: (S, S, C) texture.
    Returns:
        image float64 (H, W, C) and coverage mask bool (H, W).
    """
    c = texture.shape[2]
    image = np.zeros((height, width, c)) if background is None else background.astype(np.float64).copy()
    depth = np.full((height, width), np.inf)
    cover = np.zeros((height, width), bool)
    area = triangle_area_2d(points[:, :2].astype(np.float64), faces)
    for f in np.flatnonzero(area > 1e-9):
        a, b, cc = faces[f]
        pa, pb, pc = points[a].astype(np.float64), points[b].astype(np.float64), points[cc].astype(np.float64)
        x0 = max(int(np.floor(min(pa[0], pb[0], pc[0]) - 0.5)), 0)
        x1 = min(int(np.ceil(max(pa[0], pb[0], pc[0]) - 0.5)), width - 1)
        y0 = max(int(np.floor(min(pa[1], pb[1], pc[1]) - 0.5)), 0)
        y1 = min(int(np.ceil(max(pa[1], pb[1], pc[1]) - 0.5)), height - 1)
        if x1 < x0 or y1 < y0:
            continue
        xs, ys = np.meshgrid(np.arange(x0, x1 + 1) + 0.5, np.arange(y0, y1 + 1) + 0.5)
        det = (pb[0] - pa[0]) * (pc[1] - pa[1]) - (pc[0] - pa[0]) * (pb[1] - pa[1])
        w1 = ((xs - pa[0]) * (pc[1] - pa[1]) - (pc[0] - pa[0]) * (ys - pa[1])) / det
        w2 = ((pb[0] - pa[0]) * (ys - pa[1]) - (xs - pa[0]) * (pb[1] - pa[1])) / det
        w0 = 1 - w1 - w2
        inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
        if not inside.any():
            continue
        z = w0 * pa[2] + w1 * pb[2] + w2 * pc[2]
        yy, xx = np.nonzero(inside)
        py, px = y0 + yy, x0 + xx
        closer = z[inside] < depth[py, px]
        py, px = py[closer], px[closer]
        bw = np.stack([w0[inside][closer], w1[inside][closer], w2[inside][closer]], -1)
        tex_uv = bw @ uv[[a, b, cc]].astype(np.float64)
        depth[py, px] = z[inside][closer]
        image[py, px] = bilinear(texture, tex_uv)
        cover[py, px] = True
    return image, cover
