"""Binary glTF 2.0 (.glb) export of an animated, textured face, written by hand (json + struct).

The file holds one node with one mesh primitive:

* ``POSITION`` (the base shape), ``NORMAL`` (area-weighted vertex normals of the base shape),
  ``TEXCOORD_0`` (our atlas UVs unchanged: glTF's UV origin is also the top-left of the image) and
  ``indices`` (unsigned short, or unsigned int above 65535 vertices);
* a baseColor texture, the atlas embedded as PNG (material marked ``KHR_materials_unlit`` as an
  optional extension, since the atlas already contains the captured shading);
* the motion as morph targets: the per-frame offsets ``frames - base_vertices`` are compressed by
  an (uncentred) truncated SVD into at most ``max_targets`` targets, which is the best rank-K
  approximation in the least-squares sense and exact when ``T <= max_targets`` or the motion has
  a lower rank; one animation drives the targets' ``weights`` with a LINEAR sampler, one key per
  frame at ``t / fps`` seconds. Weights are scaled so that each lies in [-1, 1].

Coordinates. Our canonical frame (docs/COORDINATES.md) has x to the person's left, y down and z
away from the camera, in units where the stable vertices have RMS radius 1 (a face is ~2.5 units
wide). glTF is right-handed with +Y up, +Z toward the viewer and metres, so::

    gltf = scale * (x, -y, -z)        scale = FACE_WIDTH_M / (x-extent of the base shape)

Flipping y and z together is a rotation by 180 degrees about x: handedness is preserved, and a
triangle that is counter-clockwise on our y-down screen (front-facing for our topology) is
counter-clockwise seen from a viewer at +Z looking down -Z, which is glTF's front face, so the
triangle winding is written unchanged. ``scale`` is stored in ``asset.extras.lipsync`` and in the
summary; ``to_canonical`` undoes the change.

Limitations: morph targets carry positions only (viewers keep the base normals while animating);
one primitive, one material; ``read_glb`` reads back files of this layout (first mesh, first
primitive), not every glTF feature (no sparse accessors, no external buffers).
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np

from lipsync.common import LipsyncError, check_shape
from lipsync.files import atomic_write_bytes

FACE_WIDTH_M = 0.15          # width of the exported face (x-extent of the base shape), metres
GENERATOR = "lipsync glb exporter"
GLB_MAGIC = 0x46546C67       # b"glTF"
CHUNK_JSON = 0x4E4F534A      # b"JSON"
CHUNK_BIN = 0x004E4942       # b"BIN\0"
AXIS_FLIP = np.array([1.0, -1.0, -1.0])  # canonical (x, y-down, z-away) -> glTF (x, y-up, z-toward)

_FLOAT, _USHORT, _UINT = 5126, 5123, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_COMPONENTS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}
_DTYPES = {5120: np.int8, 5121: np.uint8, 5122: np.int16, 5123: np.uint16, 5125: np.uint32, 5126: np.float32}


# --------------------------------------------------------------------------------------------
# Geometry helpers

def to_gltf(points: np.ndarray, scale: float) -> np.ndarray:
    """Canonical points (..., 3) -> glTF coordinates (..., 3) in metres (float64)."""
    return np.asarray(points, dtype=np.float64) * (scale * AXIS_FLIP)


def to_canonical(points: np.ndarray, scale: float) -> np.ndarray:
    """glTF points (..., 3) in metres -> canonical coordinates (..., 3) (float64); undoes ``to_gltf``."""
    return np.asarray(points, dtype=np.float64) * (AXIS_FLIP / scale)


def vertex_normals(positions: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit area-weighted vertex normals (V, 3) of a right-handed mesh with counter-clockwise front faces.

    Vertices with no (or only degenerate) triangles get (0, 0, 1).
    """
    p = np.asarray(positions, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    n_face = np.cross(p[f[:, 1]] - p[f[:, 0]], p[f[:, 2]] - p[f[:, 0]])  # length = 2 * area
    n = np.zeros_like(p)
    for k in range(3):
        np.add.at(n, f[:, k], n_face)
    length = np.linalg.norm(n, axis=1, keepdims=True)
    ok = length[:, 0] > 1e-20
    n[ok] /= length[ok]
    n[~ok] = (0.0, 0.0, 1.0)
    return n


def compress_offsets(offsets: np.ndarray, max_targets: int) -> tuple[np.ndarray, np.ndarray]:
    """Truncated SVD of per-frame offsets (T, V, 3) -> (targets (K, V, 3), weights (T, K)), float64.

    ``offsets[t] ~= sum_k weights[t, k] * targets[k]`` is the best rank-K approximation (K <= max_targets,
    K <= numerical rank, K >= 1). Each weight column is scaled to a maximum magnitude of 1.
    """
    T, V, _ = offsets.shape
    d = offsets.reshape(T, 3 * V)
    u, s, vt = np.linalg.svd(d, full_matrices=False)
    tol = (s[0] if len(s) else 0.0) * max(d.shape) * np.finfo(np.float64).eps
    k = int(max(1, min(max_targets, int(np.count_nonzero(s > tol)))))
    weights = u[:, :k] * s[:k]
    targets = vt[:k].copy()
    targets[s[:k] <= tol] = 0.0  # motionless input: one all-zero target
    peak = np.abs(weights).max(axis=0)
    peak[peak == 0] = 1.0
    weights /= peak
    targets *= peak[:, None]
    return targets.reshape(k, V, 3), weights


# --------------------------------------------------------------------------------------------
# Writing

class _Builder:
    """Accumulates buffer views and accessors of the single BIN buffer."""

    def __init__(self) -> None:
        self.blob = bytearray()
        self.views: list[dict] = []
        self.accessors: list[dict] = []

    def view(self, data: bytes, target: int | None = None) -> int:
        self.blob += b"\0" * (-len(self.blob) % 4)  # 4-byte alignment of every buffer view
        entry = {"buffer": 0, "byteOffset": len(self.blob), "byteLength": len(data)}
        if target is not None:
            entry["target"] = target
        self.blob += data
        self.views.append(entry)
        return len(self.views) - 1

    def accessor(self, array: np.ndarray, kind: str, component: int, *, target: int | None = None,
                 bounds: bool = False) -> int:
        array = np.ascontiguousarray(array, dtype=_DTYPES[component])
        count = array.shape[0] if kind != "SCALAR" else array.size
        entry = {"bufferView": self.view(array.tobytes(), target), "componentType": component,
                 "count": int(count), "type": kind}
        if bounds:
            flat = array.reshape(count, _COMPONENTS[kind])
            entry["min"] = [float(x) for x in flat.min(axis=0)]
            entry["max"] = [float(x) for x in flat.max(axis=0)]
        self.accessors.append(entry)
        return len(self.accessors) - 1


def _encode_png(texture: np.ndarray) -> bytes:
    import cv2  # lazy: only needed when writing or decoding the texture

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(texture[..., ::-1]))  # RGB -> BGR for OpenCV
    if not ok:
        raise LipsyncError("OpenCV could not encode the texture as PNG.")
    return buf.tobytes()


def build_glb(base_vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, texture: np.ndarray,
              frames: np.ndarray, fps: float, *, max_targets: int = 32) -> tuple[bytes, dict]:
    """The bytes of the .glb file and its summary (see ``write_glb``); writes nothing."""
    dims = check_shape("base_vertices", base_vertices, ("V", 3))
    check_shape("faces", faces, (None, 3))
    check_shape("uv", uv, (dims["V"], 2))
    check_shape("texture", texture, (None, None, 3))
    tdims = check_shape("frames", frames, ("T", dims["V"], 3))
    V, T = dims["V"], tdims["T"]
    faces = np.asarray(faces)
    if T < 1 or len(faces) < 1:
        raise LipsyncError("The glTF export needs at least one frame and one triangle.")
    if not np.issubdtype(faces.dtype, np.integer) or faces.min() < 0 or faces.max() >= V:
        raise ValueError(f"faces: expected integer vertex indices in [0, {V})")
    if np.asarray(texture).dtype != np.uint8:
        raise ValueError(f"texture: expected uint8, got {np.asarray(texture).dtype}")
    if not (isinstance(fps, (int, float, np.floating, np.integer)) and math.isfinite(fps) and fps > 0):
        raise LipsyncError(f"The frame rate must be a positive number, got {fps!r}.")
    if int(max_targets) < 1:
        raise ValueError(f"max_targets must be at least 1, got {max_targets}")
    base = np.asarray(base_vertices, dtype=np.float64)
    frames = np.asarray(frames, dtype=np.float64)
    if not (np.isfinite(base).all() and np.isfinite(frames).all() and np.isfinite(np.asarray(uv, float)).all()):
        raise LipsyncError("The vertices or UVs to export contain NaN or infinite values.")

    width = float(np.ptp(base[:, 0]))
    if width <= 0:
        raise LipsyncError("The base shape has zero width, so it cannot be scaled to metres.")
    scale = FACE_WIDTH_M / width
    positions = to_gltf(base, scale)
    offsets = to_gltf(frames, scale) - positions
    targets, weights = compress_offsets(offsets, int(max_targets))
    targets32, weights32 = targets.astype(np.float32), weights.astype(np.float32)
    K = len(targets)
    approx = positions.astype(np.float32) + np.einsum("tk,kvc->tvc", weights32, targets32)
    err = np.linalg.norm(approx - (positions + offsets), axis=-1)
    times = (np.arange(T, dtype=np.float64) / float(fps)).astype(np.float32)
    index_type = _USHORT if V <= 65535 else _UINT

    b = _Builder()
    attributes = {
        "POSITION": b.accessor(positions, "VEC3", _FLOAT, target=_ARRAY_BUFFER, bounds=True),
        "NORMAL": b.accessor(vertex_normals(positions, faces), "VEC3", _FLOAT, target=_ARRAY_BUFFER),
        "TEXCOORD_0": b.accessor(np.asarray(uv, np.float64), "VEC2", _FLOAT, target=_ARRAY_BUFFER),
    }
    indices = b.accessor(faces.reshape(-1), "SCALAR", index_type, target=_ELEMENT_ARRAY_BUFFER)
    morph = [{"POSITION": b.accessor(t, "VEC3", _FLOAT, target=_ARRAY_BUFFER, bounds=True)} for t in targets32]
    times_acc = b.accessor(times, "SCALAR", _FLOAT, bounds=True)
    weights_acc = b.accessor(weights32.reshape(-1), "SCALAR", _FLOAT)
    png = _encode_png(np.asarray(texture))
    image_view = b.view(png)

    doc = {
        "asset": {"version": "2.0", "generator": GENERATOR,
                  "extras": {"lipsync": {"metres_per_unit": scale, "fps": float(fps),
                                         "axes": "gltf = metres_per_unit * (x, -y, -z) of the canonical frame"}}},
        "extensionsUsed": ["KHR_materials_unlit"],
        "scene": 0,
        "scenes": [{"name": "lipsync", "nodes": [0]}],
        "nodes": [{"name": "face", "mesh": 0}],
        "meshes": [{"name": "face", "weights": [0.0] * K,
                    "extras": {"targetNames": [f"pc{k:02d}" for k in range(K)]},
                    "primitives": [{"attributes": attributes, "indices": indices, "material": 0, "mode": 4,
                                    "targets": morph}]}],
        "materials": [{"name": "face_atlas", "doubleSided": False,
                       "pbrMetallicRoughness": {"baseColorTexture": {"index": 0, "texCoord": 0},
                                                "metallicFactor": 0.0, "roughnessFactor": 1.0},
                       "extensions": {"KHR_materials_unlit": {}}}],
        "textures": [{"sampler": 0, "source": 0}],
        "samplers": [{"magFilter": 9729, "minFilter": 9729, "wrapS": 33071, "wrapT": 33071}],
        "images": [{"name": "atlas", "bufferView": image_view, "mimeType": "image/png"}],
        "animations": [{"name": "speech",
                        "samplers": [{"input": times_acc, "output": weights_acc, "interpolation": "LINEAR"}],
                        "channels": [{"sampler": 0, "target": {"node": 0, "path": "weights"}}]}],
        "accessors": b.accessors,
        "bufferViews": b.views,
        "buffers": [{"byteLength": 0}],
    }
    b.blob += b"\0" * (-len(b.blob) % 4)
    doc["buffers"][0]["byteLength"] = len(b.blob)
    json_bytes = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    json_bytes += b" " * (-len(json_bytes) % 4)
    total = 12 + 8 + len(json_bytes) + 8 + len(b.blob)
    data = b"".join([struct.pack("<III", GLB_MAGIC, 2, total),
                     struct.pack("<II", len(json_bytes), CHUNK_JSON), json_bytes,
                     struct.pack("<II", len(b.blob), CHUNK_BIN), bytes(b.blob)])
    summary = {"bytes": total, "vertices": V, "faces": int(len(faces)), "frames": T, "targets": K,
               "fps": float(fps), "duration_s": (T - 1) / float(fps), "metres_per_unit": scale,
               "max_error_m": float(err.max()), "rms_error_m": float(np.sqrt(np.mean(err ** 2))),
               "texture_size": [int(texture.shape[1]), int(texture.shape[0])]}
    return data, summary


def write_glb(path: str | Path, base_vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, texture: np.ndarray,
              frames: np.ndarray, fps: float, *, max_targets: int = 32) -> dict:
    """Write an animated, textured face as a binary glTF 2.0 file (atomically).

    Args:
        path: output file (``.glb``); missing parent folders are created.
        base_vertices: float (V, 3) canonical bind shape (e.g. the speaker's reference vertices).
        faces: int (F, 3) triangles, counter-clockwise on our y-down screen when front-facing.
        uv: float (V, 2) atlas coordinates in [0, 1], u right, v down.
        texture: uint8 (H, W, 3) RGB atlas.
        frames: float (T, V, 3) canonical vertices of each frame.
        fps: frames per second; key t is at ``t / fps`` seconds.
        max_targets: most morph targets kept by the PCA compression of ``frames - base_vertices``.

    Returns:
        summary dict: ``path``, ``bytes``, ``vertices``, ``faces``, ``frames``, ``targets`` (K),
        ``fps``, ``duration_s``, ``metres_per_unit``, ``max_error_m`` / ``rms_error_m`` (per-vertex
        error of the compressed animation, metres), ``texture_size`` [W, H].

    Raises ``LipsyncError`` for a path that cannot be written or unusable data, ``ValueError`` for
    arrays of the wrong shape or type.
    """
    data, summary = build_glb(base_vertices, faces, uv, texture, frames, fps, max_targets=max_targets)
    summary["path"] = str(atomic_write_bytes(path, data, what="glTF file"))
    return summary


# --------------------------------------------------------------------------------------------
# Reading

class GlbData(dict):
    """What ``read_glb`` returns: a dict with the keys below, plus ``frames()``.

    ``json`` (dict), ``length`` (bytes, from the header), ``positions`` float32 (V, 3), ``normals``
    float32 (V, 3) or None, ``uv`` float32 (V, 2) or None, ``faces`` int64 (F, 3), ``targets``
    float32 (K, V, 3), ``times`` float32 (T,), ``weights`` float32 (T, K), ``png`` bytes or None,
    ``texture`` uint8 (H, W, 3) RGB or None, ``metres_per_unit`` (float or None). All positions are in
    glTF coordinates (metres, +Y up, +Z toward the viewer).
    """

    def frames(self) -> np.ndarray:
        """float32 (T, V, 3) animated positions: ``positions + weights @ targets`` (glTF coordinates)."""
        base = self["positions"].astype(np.float32)
        if len(self["targets"]) == 0 or len(self["weights"]) == 0:
            return np.repeat(base[None], max(1, len(self["times"])), axis=0)
        return base[None] + np.einsum("tk,kvc->tvc", self["weights"], self["targets"])

    def canonical_frames(self) -> np.ndarray:
        """float64 (T, V, 3) ``frames()`` in our canonical coordinates (needs ``metres_per_unit``)."""
        if not self["metres_per_unit"]:
            raise LipsyncError("This .glb was not written by lipsync, so its canonical scale is unknown.")
        return to_canonical(self.frames(), self["metres_per_unit"])


def _read_accessor(doc: dict, blob: bytes, index: int) -> np.ndarray:
    acc = doc["accessors"][index]
    view = doc["bufferViews"][acc["bufferView"]]
    dtype = np.dtype(_DTYPES[acc["componentType"]])
    ncomp = _COMPONENTS[acc["type"]]
    count = acc["count"]
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    stride = view.get("byteStride") or dtype.itemsize * ncomp
    if stride == dtype.itemsize * ncomp:
        out = np.frombuffer(blob, dtype=dtype, count=count * ncomp, offset=start).reshape(count, ncomp)
    else:
        raw = np.frombuffer(blob, dtype=np.uint8, count=stride * (count - 1) + dtype.itemsize * ncomp, offset=start)
        out = np.stack([raw[i * stride:i * stride + dtype.itemsize * ncomp].view(dtype) for i in range(count)])
    return out.copy() if ncomp > 1 else out[:, 0].copy()


def read_glb(path: str | Path) -> GlbData:
    """Parse a .glb file (header, JSON chunk, BIN chunk) written by ``write_glb``; see ``GlbData``.

    Raises ``LipsyncError`` with one sentence for a missing, truncated or non-glTF file.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise LipsyncError(f"Cannot read the glTF file {path} ({err.strerror or err}).") from None
    if len(data) < 20:
        raise LipsyncError(f"{path} is too short to be a binary glTF file.")
    magic, version, length = struct.unpack_from("<III", data, 0)
    if magic != GLB_MAGIC or version != 2:
        raise LipsyncError(f"{path} is not a binary glTF 2.0 file (bad header).")
    if length != len(data):
        raise LipsyncError(f"{path} is truncated or padded: its header says {length} bytes, the file has {len(data)}.")
    doc, blob, offset = None, b"", 12
    while offset + 8 <= length:
        chunk_len, chunk_type = struct.unpack_from("<II", data, offset)
        chunk = data[offset + 8:offset + 8 + chunk_len]
        if len(chunk) != chunk_len:
            raise LipsyncError(f"{path} has a truncated chunk at byte {offset}.")
        if chunk_type == CHUNK_JSON and doc is None:
            doc = json.loads(chunk.decode("utf-8"))
        elif chunk_type == CHUNK_BIN and not blob:
            blob = chunk
        offset += 8 + chunk_len
    if doc is None:
        raise LipsyncError(f"{path} has no JSON chunk, so it is not a valid binary glTF file.")

    prim = doc["meshes"][0]["primitives"][0]
    attrs = prim["attributes"]
    positions = _read_accessor(doc, blob, attrs["POSITION"])
    faces = (_read_accessor(doc, blob, prim["indices"]).astype(np.int64).reshape(-1, 3) if "indices" in prim
             else np.arange(len(positions), dtype=np.int64).reshape(-1, 3))
    targets = np.stack([_read_accessor(doc, blob, t["POSITION"]) for t in prim.get("targets", [])]) \
        if prim.get("targets") else np.zeros((0, len(positions), 3), np.float32)
    times = np.zeros(0, np.float32)
    weights = np.zeros((0, len(targets)), np.float32)
    for anim in doc.get("animations", []):
        for channel in anim["channels"]:
            if channel["target"].get("path") == "weights":
                sampler = anim["samplers"][channel["sampler"]]
                times = _read_accessor(doc, blob, sampler["input"])
                weights = _read_accessor(doc, blob, sampler["output"]).reshape(len(times), -1)
                break
    png, texture = None, None
    if doc.get("images") and "bufferView" in doc["images"][0]:
        view = doc["bufferViews"][doc["images"][0]["bufferView"]]
        png = bytes(blob[view.get("byteOffset", 0):view.get("byteOffset", 0) + view["byteLength"]])
        import cv2  # lazy

        img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
        texture = None if img is None else np.ascontiguousarray(img[..., ::-1])
    extras = doc.get("asset", {}).get("extras", {}).get("lipsync", {})
    return GlbData(json=doc, length=length, positions=positions,
                   normals=_read_accessor(doc, blob, attrs["NORMAL"]) if "NORMAL" in attrs else None,
                   uv=_read_accessor(doc, blob, attrs["TEXCOORD_0"]) if "TEXCOORD_0" in attrs else None,
                   faces=faces, targets=targets, times=times, weights=weights, png=png, texture=texture,
                   metres_per_unit=extras.get("metres_per_unit"))
