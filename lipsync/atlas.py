"""Texture atlas extraction: unwrap each frame's face into the fixed UV layout.

Every texel of the atlas lies in one triangle of the UV layout, at fixed barycentric coordinates
(``AtlasSampler``, computed once per speaker). For a frame, the texel's image position is the same
barycentric combination of that triangle's projected vertices, and the atlas is one ``cv2.remap``.

A texel is valid when its triangle faces the camera and is not squeezed to a sliver in the image
(its screen area is at least ``min_area_ratio`` of what a frontal view at this scale would give).
Texels on triangles facing away, or folded away at the silhouette, are marked invalid rather than
smeared; so are texels whose sample falls outside the frame. The closed mouth's interior is invalid
too (its triangles have no area), and becomes valid as the mouth opens.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .common import check_shape
from .topology import FaceTopology, triangle_area_2d


@dataclass(frozen=True)
class AtlasSampler:
    """Members:
        size: atlas side S in texels.
        texels: int64 (N,) flat indices (row * S + col) of the texels covered by a triangle.
        face_index: int32 (N,) triangle of each covered texel.
        vertex_index: int32 (N, 3) that triangle's vertices.
        bary: float32 (N, 3) barycentric coordinates of the texel centre in it.
        uv_area: float32 (F,) triangle areas in the atlas (texels^2, positive).
        frontal_ratio: float32 (F,) canonical-area / uv-area of each triangle on the reference shape
            (what a frontal view gives; the mouth interior uses the median of the others).
        mouth_faces: int64 (M,) triangles of the mouth interior (their own validity threshold).
    """
    size: int
    texels: np.ndarray
    face_index: np.ndarray
    vertex_index: np.ndarray
    bary: np.ndarray
    uv_area: np.ndarray
    frontal_ratio: np.ndarray
    mouth_faces: np.ndarray

    def covered_mask(self) -> np.ndarray:
        """bool (S, S): texels that belong to some triangle."""
        m = np.zeros(self.size * self.size, bool)
        m[self.texels] = True
        return m.reshape(self.size, self.size)

    def interpolate(self, values: np.ndarray) -> np.ndarray:
        """Barycentric interpolation of per-vertex ``values`` (V, D) at the covered texels -> (N, D)."""
        if values.dtype == np.float32:
            return self._weights @ values  # same sums in the same order as below, 5x faster
        return np.einsum("nk,nkd->nd", self.bary, values[self.vertex_index])

    @cached_property
    def _weights(self):
        """The barycentric interpolation as a sparse (N, V) matrix (three weights per row)."""
        import scipy.sparse

        n = len(self.texels)
        return scipy.sparse.csr_matrix((self.bary.ravel(), self.vertex_index.ravel().astype(np.int64),
                                        np.arange(0, 3 * n + 1, 3)), shape=(n, int(self.vertex_index.max()) + 1))


def rasterize_uv(uv: np.ndarray, faces: np.ndarray, size: int):
    """Which triangle covers each texel centre, and where.

    Returns (face_index int32 (S, S) with -1 for uncovered texels, bary float32 (S, S, 3)).
    Ties on shared edges go to the higher triangle index.
    """
    px = uv.astype(np.float64) * size  # texel centres are at integer + 0.5
    face_index = np.full((size, size), -1, np.int32)
    bary = np.zeros((size, size, 3), np.float32)
    eps = 1e-7
    for f, (a, b, c) in enumerate(faces):
        pa, pb, pc = px[a], px[b], px[c]
        x0 = max(int(np.floor(min(pa[0], pb[0], pc[0]) - 0.5)), 0)
        x1 = min(int(np.ceil(max(pa[0], pb[0], pc[0]) - 0.5)), size - 1)
        y0 = max(int(np.floor(min(pa[1], pb[1], pc[1]) - 0.5)), 0)
        y1 = min(int(np.ceil(max(pa[1], pb[1], pc[1]) - 0.5)), size - 1)
        if x1 < x0 or y1 < y0:
            continue
        xs, ys = np.meshgrid(np.arange(x0, x1 + 1) + 0.5, np.arange(y0, y1 + 1) + 0.5)
        det = (pb[0] - pa[0]) * (pc[1] - pa[1]) - (pc[0] - pa[0]) * (pb[1] - pa[1])
        if abs(det) < 1e-12:
            continue
        w1 = ((xs - pa[0]) * (pc[1] - pa[1]) - (pc[0] - pa[0]) * (ys - pa[1])) / det
        w2 = ((pb[0] - pa[0]) * (ys - pa[1]) - (xs - pa[0]) * (pb[1] - pa[1])) / det
        w0 = 1.0 - w1 - w2
        inside = (w0 >= -eps) & (w1 >= -eps) & (w2 >= -eps)
        if not inside.any():
            continue
        yy, xx = np.nonzero(inside)
        face_index[y0 + yy, x0 + xx] = f
        bary[y0 + yy, x0 + xx] = np.stack([w0[inside], w1[inside], w2[inside]], -1)
    return face_index, bary


def build_sampler(uv: np.ndarray, reference: np.ndarray, topo: FaceTopology, size: int = 256) -> AtlasSampler:
    """Precompute texel -> (triangle, barycentric) for a UV layout and its canonical shape."""
    check_shape("uv", uv, [topo.num_vertices, 2])
    face_index, bary = rasterize_uv(uv, topo.faces, size)
    flat = face_index.ravel()
    texels = np.flatnonzero(flat >= 0)
    fi = flat[texels]
    uv_area = triangle_area_2d(uv.astype(np.float64) * size, topo.faces)
    ref_area = triangle_area_2d(reference[:, :2].astype(np.float64), topo.faces)
    ratio = ref_area / np.maximum(uv_area, 1e-12)
    others = np.setdiff1d(np.arange(len(topo.faces)), topo.mouth_faces)
    ratio[topo.mouth_faces] = np.median(ratio[others])
    ratio = np.maximum(ratio, 1e-3 * np.median(ratio[others]))
    return AtlasSampler(size=size, texels=texels, face_index=fi.astype(np.int32),
                        vertex_index=topo.faces[fi].astype(np.int32), bary=bary.reshape(-1, 3)[texels],
                        uv_area=np.abs(uv_area).astype(np.float32), frontal_ratio=ratio.astype(np.float32),
                        mouth_faces=np.asarray(topo.mouth_faces))


def face_visibility(points2d: np.ndarray, scale: float, sampler: AtlasSampler, faces: np.ndarray, *,
                    min_area_ratio: float = 0.25, min_mouth_ratio: float = 0.03) -> np.ndarray:
    """bool (F,): triangles seen well enough in this frame to take texture from.

    ``points2d`` (V, 2) are image positions, ``scale`` the frame's pose scale (pixels per canonical
    unit). The ratio compares the triangle's signed screen area with its frontal area at this
    scale: negative means it faces away, small means it is seen edge-on.
    """
    area = triangle_area_2d(points2d.astype(np.float64), faces)
    expected = (scale ** 2) * sampler.frontal_ratio * sampler.uv_area
    ratio = area / np.maximum(expected, 1e-12)
    ok = ratio >= min_area_ratio
    ok[sampler.mouth_faces] = ratio[sampler.mouth_faces] >= min_mouth_ratio
    return ok


def extract_atlas(frame: np.ndarray, points: np.ndarray, scale: float, sampler: AtlasSampler,
                  faces: np.ndarray, *, min_area_ratio: float = 0.25, min_mouth_ratio: float = 0.03):
    """Unwrap one frame's face into the atlas.

    Args:
        frame: uint8 (H, W, 3) RGB.
        points: (V, 2) or (V, 3) image-space vertex positions (pixels, pixel centres at i + 0.5).
        scale: pose scale of this frame (pixels per canonical unit).
    Returns:
        atlas uint8 (S, S, 3) (zero where invalid) and mask bool (S, S).
    """
    import cv2

    h, w = frame.shape[:2]
    p2 = np.asarray(points, np.float32)[:, :2]
    size = sampler.size
    # Anti-alias: a face much larger than the atlas is reduced first (area averaging), so that
    # point sampling does not alias skin texture and teeth. Sampling is bicubic: at about a texel
    # per pixel, bilinear sampling would blur the mouth a second time on top of the renderer's
    # bilinear lookup (measured on GRID: mouth sharpness 0.53 -> 0.61 of the real video).
    texel_px = float(scale) * float(np.median(np.sqrt(sampler.frontal_ratio)))  # image px per texel
    if texel_px > 1.6:
        f = 1.0 / np.floor(texel_px)
        small = cv2.resize(frame, (max(1, int(round(w * f))), max(1, int(round(h * f)))), interpolation=cv2.INTER_AREA)
        fx, fy = small.shape[1] / w, small.shape[0] / h
        frame, p2 = small, p2 * np.array([fx, fy], np.float32)
        scale = scale * float(np.sqrt(fx * fy))
        h, w = frame.shape[:2]
    pos = sampler.interpolate(p2)  # (N, 2) image positions of texel centres
    ok_face = face_visibility(p2, scale, sampler, faces, min_area_ratio=min_area_ratio,
                              min_mouth_ratio=min_mouth_ratio)[sampler.face_index]
    inside = (pos[:, 0] >= 0) & (pos[:, 0] <= w) & (pos[:, 1] >= 0) & (pos[:, 1] <= h)
    map_xy = np.full((size, size, 2), -10.0, np.float32)
    pos -= 0.5  # cv2 puts pixel centres at integers
    # scatter each (x, y) pair as one 8-byte item: twice as fast as a (N, 2) fancy assignment
    map_xy.view(np.complex64).reshape(-1)[sampler.texels] = pos.view(np.complex64).reshape(-1)
    atlas = cv2.remap(frame, map_xy, None, interpolation=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    mask = np.zeros(size * size, bool)
    ok_face &= inside
    mask[sampler.texels] = ok_face
    mask = mask.reshape(size, size)
    atlas *= mask[..., None]  # zero where invalid (faster than boolean indexing)
    return atlas, mask


def texel_uv(size: int) -> tuple[np.ndarray, np.ndarray]:
    """u, v coordinates (S, S) of texel centres."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(c, c)


def region_masks(uv: np.ndarray, topo: FaceTopology, size: int, covered: np.ndarray) -> dict[str, np.ndarray]:
    """bool (S, S) atlas masks drawn from the topology's regions in UV space.

    ``skin``: covered texels minus lips, mouth interior, eyes and brows (each grown by a margin)
    and a band along the face outline (which catches hair and background). ``mouth``: lips and
    mouth interior. ``lower_face``: the face below the nose, where speech moves the skin.
    """
    import cv2

    px = uv * size - 0.5

    def poly(idx, grow):
        m = np.zeros((size, size), np.uint8)
        cv2.fillPoly(m, [np.round(px[idx] * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
        if grow > 0:
            k = 2 * grow + 1
            m = cv2.dilate(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
        return m.astype(bool)

    g = max(1, size // 64)
    mouth = poly(topo.regions["lips_outer"], g)
    eyes = poly(topo.regions["right_eye"], 2 * g) | poly(topo.regions["left_eye"], 2 * g)
    brows = np.zeros((size, size), bool)
    for side in ("right_brow", "left_brow"):
        pts = np.round(px[topo.regions[side]]).astype(np.int32)
        hull = cv2.convexHull(pts)
        m = np.zeros((size, size), np.uint8)
        cv2.fillConvexPoly(m, hull, 1)
        brows |= cv2.dilate(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (4 * g + 1, 4 * g + 1))).astype(bool)
    inner = cv2.erode(covered.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (6 * g + 1, 6 * g + 1))).astype(bool)
    skin = inner & ~mouth & ~eyes & ~brows
    nose_tip_v = uv[1, 1]  # vertex 1: nose tip
    _, v = texel_uv(size)
    lower = covered & (v > nose_tip_v)
    return {"skin": skin, "mouth": mouth & covered, "lower_face": lower, "eyes": eyes & covered}


def masked_median(atlases: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """float32 (S, S, C): per texel, the median over the atlases (T, S, S, C) whose mask (T, S, S)
    is set there; NaN where no atlas covers the texel. The robust reference of a set of frames."""
    stack = np.where(masks[..., None], np.asarray(atlases, np.float32), np.nan)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # texels no atlas covers: all-NaN slices
        return np.nanmedian(stack, axis=0)
