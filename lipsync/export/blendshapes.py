"""ARKit-named facial blendshapes built on the speaker's own shape, fitting, and CSV export.

Each blendshape is a displacement field (V, 3) in canonical coordinates (docs/COORDINATES.md: x to
the person's left, y down, z away from the camera) that is added to the speaker's reference shape
at weight 1: ``frame ~= reference + sum_i weights[i] * basis[i]`` with weights in [0, 1]. The fields
are built procedurally from landmark geometry, so they fit any speaker without a template:

* ``W``: mouth width, the distance between the outer mouth corners 61 and 291 (~0.95 units, 40% of
  the face width); ``c``: the inner-lip centre (mean of vertices 13 and 14).
* ``J`` (V,) in [0, 1], the *jaw field*: a harmonic function on the mesh graph (MediaPipe's
  tessellation, which has no edge across the mouth slit) that is 0 on the upper inner lip and on
  everything above the base of the nose, and 1 on the lower inner lip and on the lower half of the
  chin. It separates the lips by topology, even when the mouth is closed in the reference, and
  blends smoothly through the cheeks and mouth corners.
* ``L`` (V,), the *lip mask*: 1 on the lips (the outer lip ring and everything inside it), falling
  off as ``exp(-(d / 0.12 W)^2)`` with the distance ``d`` to the lips; ``M`` is the same with a
  ``0.3 W`` falloff (lips and surrounding skin). The upper lip is ``L (1 - J)``, the lower ``L J``.
* ``S_side`` (V,), a Gaussian of width ``0.35 W`` around a mouth corner (61 right, 291 left).
* ``P(u)``, a lateral profile: 1 over the middle of the mouth, smoothly 0 beyond the corners.

Left and right are the person's (left = +x, corner 291). Amplitudes are displacements at weight 1
of the vertex that moves most (unless another is named), in units of ``W``:

=====================  ===================================================================  ====================
name                   displacement at weight 1                                             amplitude (x W)
=====================  ===================================================================  ====================
jawOpen                ``J`` x (rotation about the x axis through the ears, vertices        0.45 down at vertex
                       234/454, plus the condyle's forward glide that cancels 55% of the    14; chin ~0.6
                       lower lip's backward motion): chin and lower lip swing down, back
jawForward             ``J`` x translation toward the camera (-z)                           0.12
jawLeft, jawRight      ``J`` x translation to the person's left (+x) / right (-x)           0.15
mouthClose             lips close while the jaw stays: the lower lip (``L J``) undoes 60%   0.45 closure (with
                       of jawOpen, the upper lip (``L (1 - J)``) follows vertex 14's        jawOpen = 1)
                       jawOpen motion by 40%
mouthFunnel            "O": lips forward (-z, ``L``), corners inward (``M``), lips part     0.15 fwd, 0.1 in,
                       vertically at the centre (``P``)                                     0.1 each lip apart
mouthPucker            lips forward (``L``) and narrowed toward the centre line (``M``,     0.2 fwd, 0.25 in
                       proportional to x - c_x), closed                                     at the corners
mouthLeft, mouthRight  lips and surrounding skin (``M``) shift to the left / right          0.15
mouthSmileLeft/Right   corner region (``S``) outward, up (-y) and slightly back (+z)        0.15 out, 0.15 up,
                                                                                            0.05 back
mouthFrownLeft/Right   corner region (``S``) down (+y) and slightly inward                  0.15 down, 0.04 in
mouthStretchLeft/Right corner region (Gaussian of width 0.5 W) outward, slightly down       0.18 out, 0.05 down
mouthRollLower         lower lip (``L J``) rolls in: back (+z), its outer border moves up   0.1 back, 0.08 up
                       toward the lip line (the visible lip gets thinner)                   at the border
mouthRollUpper         upper lip (``L (1 - J)``) the same, its outer border moves down      0.1 back, 0.08 down
mouthUpperUp           upper lip (``L (1 - J) P``) raised (-y)                              0.12
mouthLowerDown         lower lip (``L J P``) lowered (+y), the chin stays                   0.12
=====================  ===================================================================  ====================

``fit_blendshapes`` solves the bounded least-squares problem of every frame at once over the
lower-face vertices (everything below the eyes except the eye and brow rings: lips, jaw, chin,
cheeks, nose base). The exactly opposite pairs (jawLeft/jawRight, mouthLeft/mouthRight) are fitted as
one signed weight, so at most one of a pair is non-zero. ``write_blendshapes_csv`` writes one row
per frame.

Limitations: the shapes are a generic linear model (no per-speaker calibration of amplitudes,
linear blending of the jaw rotation); several are partly correlated (smile / stretch / frown,
pucker / funnel), so weights of real frames are a plausible decomposition, not a unique one.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from lipsync.common import LipsyncError, check_shape
from lipsync.files import atomic_write_bytes
from lipsync.topology import (INNER_LIP_BOTTOM, INNER_LIP_LOWER, INNER_LIP_TOP, INNER_LIP_UPPER, MOUTH_CORNERS,
                              FaceTopology)

BLENDSHAPE_NAMES = (
    "jawOpen", "jawForward", "jawLeft", "jawRight", "mouthClose", "mouthFunnel", "mouthPucker",
    "mouthLeft", "mouthRight", "mouthSmileLeft", "mouthSmileRight", "mouthFrownLeft", "mouthFrownRight",
    "mouthStretchLeft", "mouthStretchRight", "mouthRollLower", "mouthRollUpper", "mouthUpperUp",
    "mouthLowerDown",
)
EAR_VERTICES = (234, 454)     # tragus region, the jaw hinge is near their midpoint
NOSE_BASE = 2                 # subnasale: the jaw field is 0 at and above it
LOWER_LIP_BOTTOM = 17         # bottom of the lower lip on the midline
CHIN = 152
JAW_GLIDE = 0.55              # share of jawOpen's backward motion of vertex 14 undone by the condyle's glide
LIP_FALLOFF = 0.12            # x W: Gaussian falloff of the lip mask L
MOUTH_FALLOFF = 0.3           # x W: falloff of the mouth-region mask M
CORNER_SIGMA = 0.35           # x W: Gaussian width around a mouth corner (smile, frown)
STRETCH_SIGMA = 0.5           # x W: the same for stretch
AMPLITUDE = {                 # x W, see the table above
    "jawOpen": 0.45, "jawForward": 0.12, "jawSide": 0.15, "closeLower": 0.6, "closeUpper": 0.4,
    "funnelForward": 0.15, "funnelInward": 0.1, "funnelApart": 0.1, "puckerForward": 0.2, "puckerInward": 0.25,
    "mouthSide": 0.15, "smileOut": 0.15, "smileUp": 0.15, "smileBack": 0.05, "frownDown": 0.15, "frownIn": 0.04,
    "stretchOut": 0.18, "stretchDown": 0.05, "rollBack": 0.1, "rollThin": 0.08, "upperUp": 0.12, "lowerDown": 0.12,
}


# --------------------------------------------------------------------------------------------
# Geometry helpers

def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _edges(faces: np.ndarray) -> np.ndarray:
    """Unique undirected edges (E, 2) of triangles (F, 3)."""
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).astype(np.int64)
    return np.unique(np.sort(e, axis=1), axis=0)


def _harmonic(points: np.ndarray, faces: np.ndarray, fixed: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Harmonic interpolation (V,) on the mesh graph (edge weights 1 / length) of ``values`` at ``fixed``."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    V = len(points)
    e = _edges(faces)
    w = 1.0 / np.maximum(np.linalg.norm(points[e[:, 0]] - points[e[:, 1]], axis=1), 1e-6)
    adj = coo_matrix((np.concatenate([w, w]), (np.concatenate([e[:, 0], e[:, 1]]), np.concatenate([e[:, 1], e[:, 0]]))),
                     shape=(V, V)).tocsr()
    lap = (coo_matrix((np.asarray(adj.sum(axis=1)).ravel(), (np.arange(V), np.arange(V))), shape=(V, V)) - adj).tocsr()
    out = np.zeros(V)
    out[fixed] = values
    free = np.setdiff1d(np.arange(V), fixed)
    rhs = -lap[free][:, fixed] @ out[fixed]
    out[free] = spsolve(lap[free][:, free].tocsc(), rhs)
    return np.clip(out, 0.0, 1.0)


def _inside_polygon(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """bool (N,): 2D ``points`` (N, 2) strictly inside the closed polygon ``poly`` (P, 2) (even-odd rule)."""
    x, y = points[:, 0:1], points[:, 1:2]
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    crosses = (y0 > y) != (y1 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        xint = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return (crosses & (x < xint)).sum(axis=1) % 2 == 1


def _outer_chains(topo: FaceTopology, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upper and lower outer-lip chains, each from corner 61 to corner 291 (vertex indices)."""
    ring = [int(v) for v in topo.regions["lips_outer"]]
    a = ring.index(MOUTH_CORNERS[0])
    ring = ring[a:] + ring[:a]                      # starts at 61
    b = ring.index(MOUTH_CORNERS[1])
    one = ring[:b + 1]                               # 61 ... 291
    other = [ring[0]] + ring[b:][::-1]               # 61 ... 291 the other way round
    if ref[one[1:-1], 1].mean() < ref[other[1:-1], 1].mean():
        return np.asarray(one), np.asarray(other)
    return np.asarray(other), np.asarray(one)


def _chain_y(chain: np.ndarray, ref: np.ndarray, x: np.ndarray) -> np.ndarray:
    """y of a lip chain (indices) interpolated at abscissae ``x`` (constant beyond its ends)."""
    pts = ref[chain]
    order = np.argsort(pts[:, 0])
    return np.interp(x, pts[order, 0], pts[order, 1])


def _fields(ref: np.ndarray, topo: FaceTopology) -> dict:
    """The scalar fields of the module docstring (all float64 (V,) unless said)."""
    right, left = ref[MOUTH_CORNERS[0]], ref[MOUTH_CORNERS[1]]
    width = float(np.linalg.norm(left - right))
    if not np.isfinite(width) or width <= 1e-9:
        raise LipsyncError("The reference shape has coincident mouth corners, so no blendshapes can be built on it.")
    centre = 0.5 * (ref[INNER_LIP_TOP] + ref[INNER_LIP_BOTTOM])
    up_in, lo_in = np.asarray(INNER_LIP_UPPER), np.asarray(INNER_LIP_LOWER)
    up_out, lo_out = _outer_chains(topo, ref)

    # jaw field: harmonic on the tessellation (the mouth slit is a hole in it)
    y = ref[:, 1]
    above = np.flatnonzero(y <= ref[NOSE_BASE, 1])
    below = np.flatnonzero(y >= ref[LOWER_LIP_BOTTOM, 1] + 0.5 * (ref[CHIN, 1] - ref[LOWER_LIP_BOTTOM, 1]))
    zero = np.union1d(above, up_in[1:-1])
    one = np.setdiff1d(np.union1d(below, lo_in[1:-1]), zero)
    jaw = _harmonic(ref, topo.faces[:topo.n_tessellation], np.concatenate([zero, one]),
                    np.concatenate([np.zeros(len(zero)), np.ones(len(one))]))

    # lip masks
    ring = np.asarray(topo.regions["lips_outer"])
    on_lips = _inside_polygon(ref[:, :2], ref[ring, :2])
    on_lips[ring] = True
    on_lips[topo.regions["lips_inner"]] = True
    dist = np.linalg.norm(ref[:, None, :] - ref[None, on_lips, :], axis=-1).min(axis=1)
    lips = np.exp(-(dist / (LIP_FALLOFF * width)) ** 2)
    mouth = np.exp(-(dist / (MOUTH_FALLOFF * width)) ** 2)

    # depth inside each lip: 0 on the inner lip line, 1 on the outer border
    x = ref[:, 0]
    yi_lo, yo_lo = _chain_y(lo_in, ref, x), _chain_y(lo_out, ref, x)
    yi_up, yo_up = _chain_y(up_in, ref, x), _chain_y(up_out, ref, x)
    depth_lo = np.clip((y - yi_lo) / np.maximum(yo_lo - yi_lo, 1e-6), 0.0, 1.0)
    depth_up = np.clip((yi_up - y) / np.maximum(yi_up - yo_up, 1e-6), 0.0, 1.0)
    u = (x - centre[0]) / (0.5 * width)
    profile = 1.0 - _smoothstep((np.abs(u) - 0.3) / 0.9)
    return {"width": width, "centre": centre, "jaw": jaw, "lips": lips, "mouth": mouth,
            "upper": lips * (1.0 - jaw), "lower": lips * jaw, "depth_lo": depth_lo, "depth_up": depth_up,
            "profile": profile, "on_lips": on_lips}


def _rotation_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _jaw_open(ref: np.ndarray, f: dict) -> np.ndarray:
    """Displacement (V, 3) of jawOpen: ``J`` x (rotation about the ear axis + forward glide of the condyle).

    The angle makes vertex 14 (lower inner lip) drop by ``AMPLITUDE["jawOpen"] * W``; the glide
    (toward the camera) cancels ``JAW_GLIDE`` of the rotation's backward motion of vertex 14, as the
    condyle slides forward when the mouth opens wide.
    """
    pivot = np.array([f["centre"][0], *ref[list(EAR_VERTICES), 1:].mean(axis=0)])
    rel = ref - pivot
    r = rel[INNER_LIP_BOTTOM]
    # angle a with (R(a) r - r)_y = drop: r_y cos a - r_z sin a = radius cos(a - phase) = drop + r_y
    drop = AMPLITUDE["jawOpen"] * f["width"]
    radius, phase = np.hypot(r[1], r[2]), np.arctan2(-r[2], r[1])
    angle = float(phase - np.arccos(np.clip((drop + r[1]) / radius, -1.0, 1.0)))
    moved = rel @ _rotation_x(angle).T - rel
    glide = np.array([0.0, 0.0, -JAW_GLIDE * moved[INNER_LIP_BOTTOM, 2]])
    return f["jaw"][:, None] * (moved + glide)


# --------------------------------------------------------------------------------------------
# Public API

def blendshape_basis(reference: np.ndarray, topo: FaceTopology) -> tuple[list[str], np.ndarray]:
    """The blendshapes of ``BLENDSHAPE_NAMES`` built on one speaker's reference shape.

    Args:
        reference: float (V, 3) canonical reference (neutral, mouth closed or nearly so) vertices.
        topo: the face topology (``lipsync.topology.load_topology()``).

    Returns:
        (names, basis): ``names`` list of N strings; ``basis`` float64 (N, V, 3) displacements at weight 1.
    """
    check_shape("reference", reference, (topo.num_vertices, 3))
    ref = np.asarray(reference, dtype=np.float64)
    if not np.isfinite(ref).all():
        raise LipsyncError("The reference shape contains NaN or infinite values.")
    f = _fields(ref, topo)
    W, c = f["width"], f["centre"]
    A = {k: v * W for k, v in AMPLITUDE.items()}
    V = len(ref)
    ex, ey, ez = np.eye(3)

    def col(values: np.ndarray) -> np.ndarray:
        """(V,) -> (V, 1), to scale direction vectors per vertex."""
        return np.asarray(values, dtype=np.float64)[:, None]

    jaw_open = _jaw_open(ref, f)
    drop = jaw_open[INNER_LIP_BOTTOM]
    lateral = col(ref[:, 0] - c[0])

    def corner(side: int, sigma: float) -> np.ndarray:
        d2 = np.sum((ref - ref[MOUTH_CORNERS[side]]) ** 2, axis=1)
        return col(np.exp(-d2 / (2.0 * (sigma * W) ** 2)))

    shapes = {
        "jawOpen": jaw_open,
        "jawForward": -A["jawForward"] * col(f["jaw"]) * ez,
        "jawLeft": A["jawSide"] * col(f["jaw"]) * ex,
        "jawRight": -A["jawSide"] * col(f["jaw"]) * ex,
        "mouthClose": -AMPLITUDE["closeLower"] * col(f["lower"]) * jaw_open
                      + AMPLITUDE["closeUpper"] * col(f["upper"]) * drop,
        "mouthFunnel": (-A["funnelForward"] * col(f["lips"]) * ez
                        - (A["funnelInward"] / (0.5 * W)) * col(f["mouth"]) * lateral * ex
                        + A["funnelApart"] * col(f["profile"] * (f["lower"] - f["upper"])) * ey),
        "mouthPucker": (-A["puckerForward"] * col(f["lips"]) * ez
                        - (A["puckerInward"] / (0.5 * W)) * col(f["mouth"]) * lateral * ex),
        "mouthLeft": A["mouthSide"] * col(f["mouth"]) * ex,
        "mouthRight": -A["mouthSide"] * col(f["mouth"]) * ex,
    }
    for side, name in ((1, "Left"), (0, "Right")):
        out = ex if side == 1 else -ex
        shapes[f"mouthSmile{name}"] = corner(side, CORNER_SIGMA) * (A["smileOut"] * out - A["smileUp"] * ey
                                                                    + A["smileBack"] * ez)
        shapes[f"mouthFrown{name}"] = corner(side, CORNER_SIGMA) * (A["frownDown"] * ey - A["frownIn"] * out)
        shapes[f"mouthStretch{name}"] = corner(side, STRETCH_SIGMA) * (A["stretchOut"] * out + A["stretchDown"] * ey)
    shapes["mouthRollLower"] = col(f["lower"]) * (A["rollBack"] * ez - A["rollThin"] * col(f["depth_lo"]) * ey)
    shapes["mouthRollUpper"] = col(f["upper"]) * (A["rollBack"] * ez + A["rollThin"] * col(f["depth_up"]) * ey)
    shapes["mouthUpperUp"] = -A["upperUp"] * col(f["upper"] * f["profile"]) * ey
    shapes["mouthLowerDown"] = A["lowerDown"] * col(f["lower"] * f["profile"]) * ey
    names = list(BLENDSHAPE_NAMES)
    basis = np.stack([np.broadcast_to(shapes[n], (V, 3)) for n in names]).astype(np.float64)
    return names, basis


def lower_face_vertices(reference: np.ndarray, topo: FaceTopology) -> np.ndarray:
    """int64 (M,) vertices used for fitting: below the lowest eye-ring vertex, minus eye and brow rings."""
    ref = np.asarray(reference, dtype=np.float64)
    eyes = np.concatenate([topo.regions["left_eye"], topo.regions["right_eye"]])
    excluded = np.concatenate([eyes, topo.regions["left_brow"], topo.regions["right_brow"]])
    keep = ref[:, 1] > ref[eyes, 1].max()
    keep[excluded] = False
    return np.flatnonzero(keep)


def bounded_lstsq(a: np.ndarray, b: np.ndarray, lower: float | np.ndarray = 0.0, upper: float | np.ndarray = 1.0, *,
                  max_sweeps: int = 500) -> np.ndarray:
    """Solve ``min ||a w_t - b_t||`` subject to ``lower <= w_t <= upper`` for every row of ``b``.

    Args:
        a: float (M, N) design matrix of full column rank.
        b: float (T, M) targets, one problem per row.
        lower, upper: scalars or (N,) bounds, ``lower < upper``.

    Returns float64 (T, N). Vectorized over T: projected Gauss-Seidel sweeps on the normal
    equations find the active set, then each frame is solved exactly on its free variables (frames
    grouped by active-set pattern) and the result is checked against the KKT conditions; the rare
    frames that fail are solved by ``scipy.optimize.lsq_linear`` (BVLS), so the result is exact.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    N = a.shape[1]
    lo = np.broadcast_to(np.asarray(lower, dtype=np.float64), (N,))
    hi = np.broadcast_to(np.asarray(upper, dtype=np.float64), (N,))
    if np.any(lo >= hi):
        raise ValueError("bounded_lstsq: every lower bound must be below its upper bound")
    gram = a.T @ a
    h = b @ a                                      # (T, N); objective 0.5 w'Gw - h'w
    diag = np.diag(gram).copy()
    if np.any(diag <= 0):
        raise ValueError("bounded_lstsq: a has a zero column")
    w = np.clip(np.linalg.solve(gram, h.T).T, lo, hi)
    for _ in range(max_sweeps):
        change = 0.0
        for i in range(N):
            new = np.clip(w[:, i] - (w @ gram[:, i] - h[:, i]) / diag[i], lo[i], hi[i])
            change = max(change, float(np.abs(new - w[:, i]).max(initial=0.0)))
            w[:, i] = new
        if change < 1e-9 * float(np.max(hi - lo)):
            break
    # exact solve on the free set of each frame
    eps = 1e-7 * (hi - lo)
    free = (w > lo + eps) & (w < hi - eps)
    at_hi = ~free & (w >= 0.5 * (lo + hi))
    slack = 1e-9 * max(1.0, float(np.abs(h).max(initial=0.0)))
    patterns, groups = np.unique(np.concatenate([free, at_hi], axis=1), axis=0, return_inverse=True)
    groups = np.asarray(groups).reshape(-1)
    failed = []
    for g, pattern in enumerate(patterns):
        rows = np.flatnonzero(groups == g)
        fr, up = pattern[:N], pattern[N:]
        fixed = ~fr
        cand = np.where(up, hi, lo)[None].repeat(len(rows), axis=0)
        if fr.any():
            rhs = h[rows][:, fr] - cand[:, fixed] @ gram[np.ix_(fixed, fr)]
            cand[:, fr] = np.linalg.solve(gram[np.ix_(fr, fr)], rhs.T).T
        grad = cand @ gram - h[rows]
        ok = ((cand >= lo - 1e-9) & (cand <= hi + 1e-9)).all(axis=1)
        ok &= ((grad >= -slack) | ~(fixed & ~up)).all(axis=1) & ((grad <= slack) | ~(fixed & up)).all(axis=1)
        w[rows[ok]] = np.clip(cand[ok], lo, hi)
        failed.extend(rows[~ok].tolist())
    if failed:
        from scipy.optimize import lsq_linear

        chol = np.linalg.cholesky(gram)             # ||a w - b||^2 = ||L' w - L^-1 h||^2 + const
        for t in failed:
            w[t] = lsq_linear(chol.T, np.linalg.solve(chol, h[t]), bounds=(lo, hi), method="bvls").x
    return w


def _opposite_pairs(basis: np.ndarray) -> list[tuple[int, int]]:
    """Pairs (i, j), i < j, of shapes with ``basis[j] == -basis[i]`` (mouthLeft/Right, jawLeft/Right)."""
    flat = basis.reshape(len(basis), -1)
    pairs, used = [], set()
    for i in range(len(flat)):
        for j in range(i + 1, len(flat)):
            if i not in used and j not in used and np.allclose(flat[i], -flat[j], rtol=0, atol=1e-12):
                pairs.append((i, j))
                used.update((i, j))
    return pairs


def fit_blendshapes(frames: np.ndarray, reference: np.ndarray, topo: FaceTopology, *,
                    region: np.ndarray | None = None) -> np.ndarray:
    """Per-frame blendshape weights in [0, 1] (bounded least squares over the lower face).

    Shapes that are exact opposites (``mouthLeft``/``mouthRight``, ``jawLeft``/``jawRight``) are
    fitted as one signed weight in [-1, 1] and split, so at most one of each pair is non-zero.

    Args:
        frames: float (T, V, 3) canonical vertices (pose removed), same speaker as ``reference``.
        reference: float (V, 3) the speaker's canonical reference shape (the basis is built on it).
        topo: the face topology.
        region: int (M,) vertex indices to fit; default ``lower_face_vertices(reference, topo)``.

    Returns:
        float64 (T, N) weights, columns in the order of ``blendshape_basis`` (``BLENDSHAPE_NAMES``).
    """
    check_shape("frames", frames, (None, topo.num_vertices, 3))
    names, basis = blendshape_basis(reference, topo)
    frames = np.asarray(frames, dtype=np.float64)
    if not np.isfinite(frames).all():
        raise LipsyncError("The frames to fit contain NaN or infinite values.")
    idx = lower_face_vertices(reference, topo) if region is None else np.asarray(region, dtype=np.int64).reshape(-1)
    if len(idx) == 0:
        raise ValueError("fit_blendshapes: the region is empty")
    N = len(names)
    if len(frames) == 0:
        return np.zeros((0, N))
    pairs = _opposite_pairs(basis)
    second = {j for _, j in pairs}
    cols = [i for i in range(N) if i not in second]            # fitted columns
    signed = np.isin(cols, [i for i, _ in pairs])
    a = basis[cols][:, idx].reshape(len(cols), -1).T           # (3M, N')
    if np.linalg.matrix_rank(a) < a.shape[1]:
        raise LipsyncError(f"The fitting region ({len(idx)} vertices) is too small to tell the blendshapes apart; "
                           "fit over more of the lower face.")
    b = (frames[:, idx] - np.asarray(reference, np.float64)[idx]).reshape(len(frames), -1)
    fitted = bounded_lstsq(a, b, np.where(signed, -1.0, 0.0), 1.0)
    weights = np.zeros((len(frames), N))
    weights[:, cols] = np.maximum(fitted, 0.0)
    for i, j in pairs:
        weights[:, j] = np.maximum(-fitted[:, cols.index(i)], 0.0)
    return weights


def write_blendshapes_csv(path: str | Path, weights: np.ndarray, names: list[str] | tuple[str, ...],
                          fps: float) -> Path:
    """Write weights (T, N) as CSV ``frame,time_s,<names...>``, one row per frame (atomically).

    ``time_s`` is ``frame / fps``. Returns the path; raises ``LipsyncError`` if it cannot be written.
    """
    weights = np.asarray(weights, dtype=np.float64)
    check_shape("weights", weights, (None, len(names)))
    if not (np.isfinite(fps) and fps > 0):
        raise LipsyncError(f"The frame rate must be a positive number, got {fps!r}.")
    if any("," in n or "\n" in n for n in names):
        raise ValueError("blendshape names must not contain commas or newlines")
    buf = io.StringIO()
    buf.write(",".join(["frame", "time_s", *names]) + "\n")
    for t, row in enumerate(weights):
        buf.write(f"{t},{t / fps:.6f}," + ",".join(f"{v:.6f}" for v in row) + "\n")
    return atomic_write_bytes(path, buf.getvalue().encode("utf-8"), what="blendshape CSV file")
