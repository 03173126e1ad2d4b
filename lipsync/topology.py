"""The face mesh topology: MediaPipe's 468-vertex tessellation, hole fills, regions, symmetry.

MediaPipe ships the tessellation only as a frozenset of edges (``FACEMESH_TESSELATION``), but the
source file lists the edges in an order where consecutive triplets ``(a,b), (b,c), (c,a)`` are the
triangles. ``parse_tessellation`` recovers those 852 triangles from the file's text. We add:

* a fill of the inner-mouth hole (a strip between the upper and lower inner-lip chains), so teeth
  and tongue land in the texture atlas;
* fills of the two eye holes (same construction), so the atlas shows a whole face and blinks;
* the left/right mirror map (vertex ``i`` <-> ``mirror[i]``), estimated once from real frontal faces
  by ``tools/build_topology_assets.py`` and stored in ``assets/face_topology.npz``;
* named vertex regions (lips, eyes, brows, face oval) and the stable vertices used to fit head pose.

Everything here is fixed for all speakers; the per-speaker UV layout lives in ``uvmap.py``.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

ASSET_PATH = Path(__file__).resolve().parent / "assets" / "face_topology.npz"
NUM_VERTICES = 468  # FaceMesh without iris refinement

# Vertices that do not move with speech or expression: forehead, nose bridge and ridge, eye corners,
# temples and upper cheeks (no lips, jaw, chin or brows). Used to fit the per-frame similarity.
STABLE_VERTICES = np.array(sorted({
    # forehead and its sides
    10, 151, 9, 8, 109, 338, 67, 297, 108, 337, 69, 299, 104, 333, 103, 332, 54, 284, 21, 251,
    # nose bridge and ridge down to the tip
    168, 6, 197, 195, 5, 4, 1, 122, 351, 196, 419, 3, 248, 174, 399, 236, 456,
    # eye corners (inner and outer) and the bone just below the eyes
    33, 133, 362, 263, 130, 359, 243, 463, 226, 446, 111, 340, 117, 346, 118, 347, 119, 348,
    # temples and cheekbones
    127, 356, 162, 389, 234, 454, 93, 323, 116, 345, 123, 352, 50, 280, 101, 330, 100, 329,
}), dtype=np.int64)

# Landmarks used for per-frame measures (MediaPipe indices; "left"/"right" are the person's).
INNER_LIP_TOP, INNER_LIP_BOTTOM = 13, 14
MOUTH_CORNERS = (61, 291)
RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 33, 263
RIGHT_EYE_LIDS, LEFT_EYE_LIDS = (159, 145), (386, 374)
FOREHEAD_TOP, CHIN = 10, 152
# Inner-lip chains from the person's right mouth corner (78) to the left one (308).
INNER_LIP_UPPER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
INNER_LIP_LOWER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)


@dataclass(frozen=True)
class FaceTopology:
    """Members:
        faces: int32 (F, 3) triangles; rows [0, n_tessellation) are MediaPipe's, then the fills.
            Winding: counter-clockwise on screen (x right, y down -> negative-y-up area > 0 is
            clockwise in maths terms); see docs/COORDINATES.md. ``triangle_area_2d`` > 0 for a
            front-facing triangle.
        n_tessellation: number of MediaPipe triangles (852).
        mouth_faces: int64 (M,) indices into ``faces`` of the inner-mouth fill.
        eye_faces: int64 (E,) indices into ``faces`` of both eye fills.
        mirror: int64 (V,) left/right vertex correspondence; ``mirror[mirror] == arange(V)``.
        regions: dict name -> int64 vertex indices: ``lips_outer``, ``lips_inner`` (closed rings in
            order), ``left_eye``, ``right_eye`` (rings), ``left_brow``, ``right_brow``,
            ``face_oval`` (ring), ``stable``.
    """
    faces: np.ndarray
    n_tessellation: int
    mouth_faces: np.ndarray
    eye_faces: np.ndarray
    mirror: np.ndarray
    regions: dict

    @property
    def num_vertices(self) -> int:
        return NUM_VERTICES

    def mirror_faces(self) -> np.ndarray:
        """int64 (F,) index of the mirror image of each triangle (-1 where the mesh is asymmetric)."""
        return _mirror_faces(self.faces, self.mirror)


def triangle_area_2d(points: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Signed area of each triangle of 2D ``points`` (..., V, 2) in a y-down frame -> (..., F).

    Positive for triangles that appear counter-clockwise on screen (the orientation of a
    front-facing triangle of our topology).
    """
    a = points[..., faces[:, 0], :]
    b = points[..., faces[:, 1], :]
    c = points[..., faces[:, 2], :]
    cross = (b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (c[..., 0] - a[..., 0])
    # y points down on screen, so a visually counter-clockwise triangle has a negative cross product.
    return -0.5 * cross


def _mirror_faces(faces: np.ndarray, mirror: np.ndarray) -> np.ndarray:
    key = {tuple(sorted(f)): i for i, f in enumerate(faces.tolist())}
    out = np.full(len(faces), -1, dtype=np.int64)
    for i, f in enumerate(faces.tolist()):
        out[i] = key.get(tuple(sorted(int(mirror[v]) for v in f)), -1)
    return out


# --------------------------------------------------------------------------------------------
# Building the topology from MediaPipe's own source (used by tools/build_topology_assets.py and
# by the test that checks the shipped asset against the installed mediapipe).

def mediapipe_connections_source() -> str:
    """The text of mediapipe's ``face_mesh_connections.py`` (it holds the ordered edge lists)."""
    from mediapipe.python.solutions import face_mesh_connections  # heavy import, done lazily

    return Path(face_mesh_connections.__file__).read_text()


def parse_connections(source: str) -> dict[str, list[tuple[int, int]]]:
    """Ordered edge lists of every ``FACEMESH_* = frozenset([...])`` assignment in ``source``."""
    out: dict[str, list[tuple[int, int]]] = {}
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)):
            continue
        value = node.value
        if (isinstance(value, ast.Call) and getattr(value.func, "id", "") == "frozenset"
                and value.args and isinstance(value.args[0], (ast.List, ast.Tuple))):
            try:
                out[node.targets[0].id] = [tuple(ast.literal_eval(e)) for e in value.args[0].elts]
            except ValueError:
                continue  # composed sets (e.g. unions) carry no order of their own
    return out


def parse_tessellation(source: str) -> np.ndarray:
    """Triangles (F, 3) from the ordered ``FACEMESH_TESSELATION`` edge list.

    Raises ``ValueError`` if the edges do not come in closed triplets (a mediapipe release that
    changed the file layout).
    """
    edges = parse_connections(source)["FACEMESH_TESSELATION"]
    if len(edges) % 3:
        raise ValueError("FACEMESH_TESSELATION does not have a multiple of 3 edges")
    tris = []
    for k in range(0, len(edges), 3):
        (a, b), (b2, c), (c2, a2) = edges[k:k + 3]
        if b != b2 or c != c2 or a != a2:
            raise ValueError(f"edges {k}..{k + 2} of FACEMESH_TESSELATION do not close a triangle")
        tris.append((a, b, c))
    return np.asarray(tris, dtype=np.int32)


def chain(edges: list[tuple[int, int]], start: int, end: int) -> list[list[int]]:
    """The two vertex paths from ``start`` to ``end`` in a ring given by ``edges``."""
    adj: dict[int, list[int]] = {}
    for a, b in edges:
        adj.setdefault(a, []).append(b)
        adj.setdefault(b, []).append(a)
    paths = []
    for first in adj[start]:
        path, prev, cur = [start], start, first
        while cur != end:
            path.append(cur)
            nxt = [n for n in adj[cur] if n != prev]
            prev, cur = cur, nxt[0]
        path.append(end)
        paths.append(path)
    return paths


def ring(edges: list[tuple[int, int]]) -> list[int]:
    """Vertices of a closed ring in order."""
    adj: dict[int, list[int]] = {}
    for a, b in edges:
        adj.setdefault(a, []).append(b)
        adj.setdefault(b, []).append(a)
    start = min(adj)
    out, prev, cur = [start], None, start
    while True:
        nxt = [n for n in adj[cur] if n != prev][0]
        if nxt == start:
            return out
        out.append(nxt)
        prev, cur = cur, nxt


def strip_fill(upper: list[int], lower: list[int]) -> list[tuple[int, int, int]]:
    """Triangulate the hole between two vertex chains that share their end points."""
    assert upper[0] == lower[0] and upper[-1] == lower[-1] and len(upper) == len(lower)
    n = len(upper)
    tris = [(upper[0], upper[1], lower[1])]
    for i in range(1, n - 2):
        tris.append((upper[i], upper[i + 1], lower[i]))
        tris.append((upper[i + 1], lower[i + 1], lower[i]))
    tris.append((upper[n - 2], upper[n - 1], lower[n - 2]))
    return tris


def build_topology(source: str, mirror: np.ndarray, frontal_shape: np.ndarray) -> FaceTopology:
    """Assemble the topology; ``frontal_shape`` (V, 3) only fixes a consistent winding."""
    conns = parse_connections(source)
    tess = parse_tessellation(source)
    lips = conns["FACEMESH_LIPS"]
    inner_edges = [e for e in lips if set(e) <= _INNER_LIP_SET]
    outer_edges = [e for e in lips if not set(e) & _INNER_LIP_SET]

    def upper_lower(paths, vertical_ref):
        # the path whose mean y is smaller is the upper one (y down)
        ys = [frontal_shape[p[1:-1], 1].mean() for p in paths]
        return (paths[0], paths[1]) if ys[0] < ys[1] else (paths[1], paths[0])

    mouth_up, mouth_lo = upper_lower(chain(inner_edges, 78, 308), None)
    fills = {"mouth": strip_fill(mouth_up, mouth_lo)}
    eye_rings = {}
    for side, name, (c0, c1) in (("right", "FACEMESH_RIGHT_EYE", (33, 133)),
                                 ("left", "FACEMESH_LEFT_EYE", (263, 362))):
        up, lo = upper_lower(chain(conns[name], c0, c1), None)
        fills[side + "_eye"] = strip_fill(up, lo)
        eye_rings[side] = ring(conns[name])
    # Fill winding is set on a copy of the shape with the holes pulled open (closed holes give
    # degenerate triangles whose orientation means nothing).
    opened = np.array(frontal_shape, dtype=np.float64, copy=True)
    gap = np.ptp(frontal_shape[:, 1])
    for up, lo in [(mouth_up, mouth_lo)] + [tuple(upper_lower(chain(conns[n], *c), None))
                                           for n, c in (("FACEMESH_RIGHT_EYE", (33, 133)),
                                                        ("FACEMESH_LEFT_EYE", (263, 362)))]:
        opened[up[1:-1], 1] -= gap
        opened[lo[1:-1], 1] += gap
    faces = [tuple(t) for t in tess.tolist()]
    mouth_idx = list(range(len(faces), len(faces) + len(fills["mouth"])))
    faces += fills["mouth"]
    eye_idx = list(range(len(faces), len(faces) + len(fills["right_eye"]) + len(fills["left_eye"])))
    faces += fills["right_eye"] + fills["left_eye"]
    faces = np.asarray(faces, dtype=np.int32)
    # 3. Consistent winding: front-facing triangles have positive screen area on a frontal face.
    area = triangle_area_2d(frontal_shape[:, :2], faces)
    area[len(tess):] = triangle_area_2d(opened[:, :2], faces[len(tess):])
    flip = area < 0
    faces[flip] = faces[flip][:, [0, 2, 1]]
    regions = {
        "lips_outer": np.asarray(ring(outer_edges), np.int64),
        "lips_inner": np.asarray(ring(inner_edges), np.int64),
        "right_eye": np.asarray(eye_rings["right"], np.int64),
        "left_eye": np.asarray(eye_rings["left"], np.int64),
        "right_brow": np.asarray(sorted({v for e in conns["FACEMESH_RIGHT_EYEBROW"] for v in e}), np.int64),
        "left_brow": np.asarray(sorted({v for e in conns["FACEMESH_LEFT_EYEBROW"] for v in e}), np.int64),
        "face_oval": np.asarray(ring(conns["FACEMESH_FACE_OVAL"]), np.int64),
        "stable": STABLE_VERTICES.copy(),
    }
    return FaceTopology(faces=faces, n_tessellation=len(tess), mouth_faces=np.asarray(mouth_idx, np.int64),
                        eye_faces=np.asarray(eye_idx, np.int64), mirror=np.asarray(mirror, np.int64),
                        regions=regions)


_INNER_LIP_SET = {78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191}


def save_topology(topo: FaceTopology, path: Path = ASSET_PATH) -> None:
    arrays = {"faces": topo.faces, "n_tessellation": np.int64(topo.n_tessellation),
              "mouth_faces": topo.mouth_faces, "eye_faces": topo.eye_faces, "mirror": topo.mirror}
    arrays.update({f"region_{k}": v for k, v in topo.regions.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


@lru_cache(maxsize=None)
def load_topology(path: str | None = None) -> FaceTopology:
    """The shipped topology (``assets/face_topology.npz``)."""
    with np.load(path or ASSET_PATH) as z:
        regions = {k[len("region_"):]: z[k] for k in z.files if k.startswith("region_")}
        return FaceTopology(faces=z["faces"], n_tessellation=int(z["n_tessellation"]),
                            mouth_faces=z["mouth_faces"], eye_faces=z["eye_faces"],
                            mirror=z["mirror"], regions=regions)
