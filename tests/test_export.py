"""Export: binary glTF round trip (geometry, animation, texture, conventions) and ARKit-named blendshapes."""
from __future__ import annotations

import json
import struct

import cv2
import numpy as np
import pytest

from conftest import leftovers, validate_glb
from lipsync.common import LipsyncError
from lipsync.export.blendshapes import (BLENDSHAPE_NAMES, blendshape_basis, bounded_lstsq, fit_blendshapes,
                                        lower_face_vertices, write_blendshapes_csv)
from lipsync.export.gltf import FACE_WIDTH_M, read_glb, to_canonical, write_glb
from lipsync.topology import INNER_LIP_BOTTOM, INNER_LIP_TOP, MOUTH_CORNERS, triangle_area_2d

FPS = 25.0
# float32 storage of positions (~0.1 m, 6e-9 m resolution) and of weights x targets: the largest
# round-trip error measured on the real clip is 3e-7 canonical units; 1e-5 units is 0.6 micrometre.
GLB_TOL = 1e-5            # canonical units: max |read back - written| per coordinate, exact (T <= max_targets)
PCA_TOL = 1e-3            # canonical units: max error of 5-mode motion + 1e-4 noise compressed to 8 targets
TIME_TOL = 1e-6           # seconds: key times are float32
FIT_TOL = 1e-6            # weight units: noise-free synthetic frames are fitted back exactly (float64)
NOISY_FIT_TOL = 0.05      # weight units: the same with 0.002-unit (0.2% of the mouth width) vertex noise
NEUTRAL_TOL = 0.05        # weight units: the reference with 0.002-unit noise
REQUIRED = ("jawOpen", "mouthClose", "mouthFunnel", "mouthPucker", "mouthSmileLeft", "mouthSmileRight",
            "mouthStretchLeft", "mouthStretchRight", "mouthRollLower", "mouthRollUpper", "mouthUpperUp",
            "mouthLowerDown")


@pytest.fixture(scope="module")
def clip_frames(prepared_grid):
    """float64 (T, V, 3) canonical vertices of the bundled clip (75 frames)."""
    return np.array(prepared_grid.array("vertices"), dtype=np.float64)


def _texture(size: int = 64) -> np.ndarray:
    """An RGB texture whose channels differ everywhere (a swapped R/B would show)."""
    rng = np.random.default_rng(3)
    tex = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    tex[..., 0] = np.arange(size, dtype=np.uint8)[None, :] * 4       # red ramps left to right
    tex[..., 2] = 255 - tex[..., 0]
    return tex


def _glb_chunks(data: bytes) -> tuple[tuple[int, int, int], dict, bytes]:
    magic, version, length = struct.unpack_from("<III", data, 0)
    json_len, json_type = struct.unpack_from("<II", data, 12)
    doc = json.loads(data[20:20 + json_len])
    bin_len, bin_type = struct.unpack_from("<II", data, 20 + json_len)
    assert (json_type, bin_type) == (0x4E4F534A, 0x004E4942)
    assert json_len % 4 == 0 and bin_len % 4 == 0
    return (magic, version, length), doc, data[28 + json_len:28 + json_len + bin_len]


# --------------------------------------------------------------------------------------------
# glTF

def test_glb_round_trip(face_model, clip_frames, tmp_path):
    ref, uv, topo = face_model["vertices"], face_model["uv"], face_model["topo"]
    frames = clip_frames[:20]
    tex = _texture()
    summary = write_glb(tmp_path / "face.glb", ref, topo.faces, uv, tex, frames, FPS, max_targets=32)
    assert summary["frames"] == 20 and summary["targets"] <= 20 and summary["faces"] == len(topo.faces)

    data = (tmp_path / "face.glb").read_bytes()
    (magic, version, length), doc, blob = _glb_chunks(data)
    assert (magic, version) == (0x46546C67, 2) and data[:4] == b"glTF"
    assert length == len(data) == summary["bytes"] and len(data) % 4 == 0

    # required fields and conventions of the JSON
    assert doc["asset"]["version"] == "2.0" and doc["asset"]["generator"]
    prim = doc["meshes"][0]["primitives"][0]
    assert set(prim["attributes"]) == {"POSITION", "NORMAL", "TEXCOORD_0"} and prim["mode"] == 4
    assert doc["buffers"][0]["byteLength"] == len(blob)
    assert all(v["byteOffset"] % 4 == 0 and v["byteOffset"] + v["byteLength"] <= len(blob)
               for v in doc["bufferViews"])
    for acc in [prim["attributes"]["POSITION"]] + [t["POSITION"] for t in prim["targets"]]:
        entry = doc["accessors"][acc]
        values = np.frombuffer(blob, np.float32, entry["count"] * 3,
                               doc["bufferViews"][entry["bufferView"]]["byteOffset"]).reshape(-1, 3)
        assert entry["min"] == values.min(0).tolist() and entry["max"] == values.max(0).tolist()
    anim = doc["animations"][0]
    assert anim["samplers"][0]["interpolation"] == "LINEAR"
    assert anim["channels"][0]["target"] == {"node": 0, "path": "weights"}
    K = len(prim["targets"])
    assert doc["accessors"][anim["samplers"][0]["output"]]["count"] == 20 * K
    assert len(doc["meshes"][0]["weights"]) == K

    # read back and undo the coordinate change
    glb = read_glb(tmp_path / "face.glb")
    assert glb["length"] == len(data)
    np.testing.assert_allclose(glb["times"], np.arange(20) / FPS, atol=TIME_TOL)
    assert glb["weights"].shape == (20, K) and np.abs(glb["weights"]).max() <= 1.0 + 1e-6
    scale = glb["metres_per_unit"]
    assert scale == pytest.approx(summary["metres_per_unit"])
    assert np.ptp(glb["positions"][:, 0]) == pytest.approx(FACE_WIDTH_M, rel=1e-5)
    assert np.abs(to_canonical(glb["positions"], scale) - ref).max() < GLB_TOL
    assert np.abs(to_canonical(glb.frames(), scale) - frames).max() < GLB_TOL
    assert np.abs(glb.canonical_frames() - frames).max() < GLB_TOL
    np.testing.assert_array_equal(glb["faces"], topo.faces)
    np.testing.assert_allclose(glb["uv"], uv, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(glb["normals"], axis=1), 1.0, atol=1e-5)

    # the embedded PNG decodes (independently of read_glb) to the RGB texture
    decoded = cv2.imdecode(np.frombuffer(glb["png"], np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB), tex)
    np.testing.assert_array_equal(glb["texture"], tex)
    assert doc["images"][0]["mimeType"] == "image/png"


def test_every_kind_of_glb_passes_the_khronos_validator(face_model, clip_frames, tmp_path):
    """A still face, an animated one with exact morph targets, and one compressed to fewer targets
    than frames: zero errors from the reference validator; its warnings and infos are printed."""
    topo, ref, uv = face_model["topo"], face_model["vertices"], face_model["uv"]
    files = [write_glb(tmp_path / "still.glb", ref, topo.faces, uv, _texture(), ref[None], FPS)["path"],
             write_glb(tmp_path / "animated.glb", ref, topo.faces, uv, _texture(), clip_frames[:30], FPS,
                       max_targets=32)["path"],
             write_glb(tmp_path / "compressed.glb", ref, topo.faces, uv, _texture(256), clip_frames, FPS,
                       max_targets=8)["path"]]
    for report in validate_glb(*files):
        print(report["file"], f"{report['warnings']} warnings, {report['infos']} infos:",
              [m["message"] for m in report["messages"]])
        assert report["errors"] == 0, report["messages"]


def test_glb_axes_and_front_faces(face_model, tmp_path):
    """glTF convention: +Y up, +Z toward the viewer, x to the viewer's right, counter-clockwise front faces."""
    ref, topo = face_model["vertices"], face_model["topo"]
    write_glb(tmp_path / "face.glb", ref, topo.faces, face_model["uv"], _texture(), ref[None], FPS)
    glb = read_glb(tmp_path / "face.glb")
    p = glb["positions"].astype(np.float64)
    assert p[10, 1] > p[152, 1]                                   # forehead above chin: +Y up
    assert p[1, 2] > p[[234, 454], 2].max() + 0.02                 # nose tip toward the viewer: +Z
    assert p[MOUTH_CORNERS[1], 0] > p[MOUTH_CORNERS[0], 0]         # person's left is the viewer's right

    tess = glb["faces"][:topo.n_tessellation]
    normal = np.cross(p[tess[:, 1]] - p[tess[:, 0]], p[tess[:, 2]] - p[tess[:, 0]])
    area = triangle_area_2d(ref[:, :2], topo.faces[:topo.n_tessellation])
    clear = np.abs(area) > 1e-3 * np.abs(area).max()
    # the glTF front side (counter-clockwise seen from +Z) is exactly our screen front side
    np.testing.assert_array_equal(normal[clear, 2] > 0, area[clear] > 0)
    assert (area[clear] > 0).mean() > 0.95                          # the real face is front-facing
    total = normal.sum(axis=0)
    assert total[2] > 0.9 * np.linalg.norm(total)
    assert glb["normals"][1, 2] > 0.8 and glb["normals"][:, 2].mean() > 0.5   # vertex normals face the viewer
    assert glb["weights"].shape[0] == 1 and np.all(glb["weights"] == 0)        # static: one all-zero key


def test_glb_pca_compression(face_model, tmp_path):
    ref, topo = face_model["vertices"], face_model["topo"]
    rng = np.random.default_rng(0)
    T, V = 200, len(ref)
    modes = rng.normal(0.0, 0.05, (5, V, 3))
    t = np.arange(T) / FPS
    coeff = np.stack([np.sin(2 * np.pi * f * t + ph) for f, ph in zip((0.5, 1.3, 2.1, 3.7, 4.4), rng.uniform(0, 6, 5))], 1)
    motion = ref + np.einsum("tk,kvc->tvc", coeff, modes)
    noisy = motion + rng.normal(0.0, 1e-4, motion.shape)

    summary = write_glb(tmp_path / "noisy.glb", ref, topo.faces, face_model["uv"], _texture(), noisy, FPS, max_targets=8)
    glb = read_glb(tmp_path / "noisy.glb")
    assert summary["targets"] == 8 and glb["targets"].shape == (8, V, 3) and glb["weights"].shape == (T, 8)
    err = np.abs(glb.canonical_frames() - noisy).max()
    assert err < PCA_TOL
    assert summary["max_error_m"] == pytest.approx(err * summary["metres_per_unit"], rel=0.3, abs=1e-7)

    # rank 5 < max_targets: only 5 targets, exact
    summary = write_glb(tmp_path / "rank5.glb", ref, topo.faces, face_model["uv"], _texture(), motion, FPS)
    assert summary["targets"] == 5
    assert np.abs(read_glb(tmp_path / "rank5.glb").canonical_frames() - motion).max() < GLB_TOL


def test_glb_bad_paths(face_model, tmp_path):
    ref, topo, uv = face_model["vertices"], face_model["topo"], face_model["uv"]
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_dir").mkdir()
    before = leftovers(tmp_path)
    for bad in (tmp_path / "a_file" / "face.glb", tmp_path / "a_dir", tmp_path / "a_file" / "sub" / "face.glb"):
        with pytest.raises(LipsyncError) as err:
            write_glb(bad, ref, topo.faces, uv, _texture(), ref[None], FPS)
        assert str(err.value).count(". ") == 0 and str(bad) in str(err.value)
    assert leftovers(tmp_path) == before and leftovers(tmp_path / "a_dir") == []
    with pytest.raises(LipsyncError):
        read_glb(tmp_path / "a_file")
    with pytest.raises(LipsyncError):
        read_glb(tmp_path / "missing.glb")
    with pytest.raises(LipsyncError):
        write_glb(tmp_path / "x.glb", ref, topo.faces, uv, _texture(), ref[None], 0.0)
    # missing parent folders are created
    write_glb(tmp_path / "new" / "deeper" / "face.glb", ref, topo.faces, uv, _texture(), ref[None], FPS)
    assert leftovers(tmp_path / "new" / "deeper") == ["face.glb"]


# --------------------------------------------------------------------------------------------
# Blendshapes

def test_blendshape_basis(face_model):
    ref, topo = face_model["vertices"], face_model["topo"]
    names, basis = blendshape_basis(ref, topo)
    assert set(REQUIRED) <= set(names) and names == list(BLENDSHAPE_NAMES)
    assert basis.shape == (len(names), len(ref), 3) and np.isfinite(basis).all()
    width = np.linalg.norm(ref[MOUTH_CORNERS[1]] - ref[MOUTH_CORNERS[0]])
    shape = dict(zip(names, basis))
    peak = np.linalg.norm(basis, axis=2).max(axis=1) / width
    assert np.all((peak > 0.05) & (peak < 0.7)), dict(zip(names, peak.round(3)))
    # eyes, brows and forehead do not move
    upper = np.concatenate([topo.regions[k] for k in ("left_eye", "right_eye", "left_brow", "right_brow")] + [[10, 151, 9]])
    assert np.abs(basis[:, upper]).max() < 0.01 * width

    top, bottom = INNER_LIP_TOP, INNER_LIP_BOTTOM
    right, left = MOUTH_CORNERS
    assert shape["jawOpen"][bottom, 1] == pytest.approx(0.45 * width) and abs(shape["jawOpen"][top]).max() < 1e-3 * width
    assert shape["jawOpen"][152, 1] > 0.1 * width and shape["jawOpen"][152, 2] > 0     # chin down and back
    assert shape["mouthSmileLeft"][left, 0] > 0.1 * width and shape["mouthSmileLeft"][left, 1] < -0.1 * width
    assert np.abs(shape["mouthSmileLeft"][right]).max() < 0.02 * width
    assert shape["mouthSmileRight"][right, 0] < -0.1 * width
    assert shape["mouthStretchLeft"][left, 0] > 0.1 * width and shape["mouthStretchRight"][right, 0] < -0.1 * width
    assert shape["mouthPucker"][[top, bottom], 2].max() < -0.15 * width                 # toward the camera
    assert shape["mouthPucker"][left, 0] < -0.1 * width < 0.1 * width < shape["mouthPucker"][right, 0]
    assert shape["mouthFunnel"][top, 1] < 0 < shape["mouthFunnel"][bottom, 1]           # the lips part
    assert shape["mouthUpperUp"][top, 1] < -0.1 * width and abs(shape["mouthUpperUp"][bottom]).max() < 1e-3 * width
    assert shape["mouthLowerDown"][bottom, 1] > 0.1 * width and abs(shape["mouthLowerDown"][152]).max() < 0.01 * width
    assert shape["mouthRollLower"][17, 2] > 0 and shape["mouthRollUpper"][0, 2] > 0
    closed = shape["jawOpen"] + shape["mouthClose"]                                     # jaw open, lips together
    assert abs(closed[bottom, 1] - closed[top, 1]) < 1e-3 * width and closed[152, 1] > 0.1 * width


def _random_weights(names: list[str], T: int, active: int, rng) -> np.ndarray:
    """(T, N) weights in [0, 1] with ``active`` shapes on per frame, never both of an opposite pair."""
    w = np.zeros((T, len(names)))
    for t in range(T):
        on = rng.choice(len(names), active, replace=False)
        w[t, on] = rng.uniform(0.05, 1.0, active)
        for a, b in (("jawLeft", "jawRight"), ("mouthLeft", "mouthRight")):
            if w[t, names.index(a)] > 0:
                w[t, names.index(b)] = 0.0
    return w


def test_fit_round_trip(face_model):
    ref, topo = face_model["vertices"], face_model["topo"]
    names, basis = blendshape_basis(ref, topo)
    rng = np.random.default_rng(1)
    truth = _random_weights(names, 60, 4, rng)
    truth[0] = 0.0
    truth[1, names.index("jawOpen")] = 1.0                                             # a bound reached
    frames = ref + np.einsum("tn,nvc->tvc", truth, basis)
    np.testing.assert_allclose(fit_blendshapes(frames, ref, topo), truth, atol=FIT_TOL)

    noisy = frames + rng.normal(0.0, 0.002, frames.shape)
    fitted = fit_blendshapes(noisy, ref, topo)
    assert fitted.min() >= 0.0 and fitted.max() <= 1.0
    assert np.abs(fitted - truth).max() < NOISY_FIT_TOL


def test_fit_neutral_and_open_jaw(face_model, clip_frames):
    ref, topo = face_model["vertices"], face_model["topo"]
    jaw = BLENDSHAPE_NAMES.index("jawOpen")
    rng = np.random.default_rng(2)
    neutral = np.concatenate([ref[None], ref + rng.normal(0.0, 0.002, (4, *ref.shape))])
    assert np.abs(fit_blendshapes(neutral, ref, topo)).max() < NEUTRAL_TOL
    assert np.abs(fit_blendshapes(ref[None], ref, topo)).max() < 1e-9

    # real frames: the widest-open one is explained by jawOpen, the most closed one is not
    weights = fit_blendshapes(clip_frames, ref, topo)
    gap = clip_frames[:, INNER_LIP_BOTTOM, 1] - clip_frames[:, INNER_LIP_TOP, 1]
    assert weights[gap.argmax(), jaw] > 0.4 and weights[gap.argmin(), jaw] < 0.15
    assert np.corrcoef(np.argsort(np.argsort(gap)), np.argsort(np.argsort(weights[:, jaw])))[0, 1] > 0.6


def test_fit_many_frames_and_region(face_model):
    ref, topo = face_model["vertices"], face_model["topo"]
    names, basis = blendshape_basis(ref, topo)
    rng = np.random.default_rng(4)
    truth = _random_weights(names, 1500, 5, rng)
    frames = ref + np.einsum("tn,nvc->tvc", truth, basis) + rng.normal(0.0, 0.005, (1500, *ref.shape))
    fitted = fit_blendshapes(frames, ref, topo)  # speed is a benchmark matter, not a test
    assert fitted.shape == (1500, len(names)) and np.median(np.abs(fitted - truth)) < 0.02

    region = lower_face_vertices(ref, topo)
    assert not np.isin(np.concatenate([topo.regions["left_eye"], topo.regions["right_brow"], [10]]), region).any()
    assert np.isin([INNER_LIP_TOP, INNER_LIP_BOTTOM, 152, *MOUTH_CORNERS], region).all()
    lips = np.concatenate([topo.regions["lips_outer"], topo.regions["lips_inner"]])
    only_lips = fit_blendshapes(frames[:5], ref, topo, region=lips)
    assert only_lips.shape == (5, len(names))
    with pytest.raises(LipsyncError):
        fit_blendshapes(frames[:5], ref, topo, region=np.array([INNER_LIP_TOP, INNER_LIP_BOTTOM]))


def test_bounded_lstsq_matches_scipy():
    from scipy.optimize import lsq_linear

    rng = np.random.default_rng(5)
    a = rng.normal(size=(60, 8)) + 0.8 * rng.normal(size=(60, 1))    # correlated columns
    b = rng.normal(size=(40, 60)) * 2.0
    lower = np.array([0, 0, -1, 0, 0, 0, 0, 0], float)
    ours = bounded_lstsq(a, b, lower, 1.0)
    for t in range(len(b)):
        ref = lsq_linear(a, b[t], bounds=(lower, 1.0), method="bvls", tol=1e-12).x
        assert 0.5 * np.sum((a @ ours[t] - b[t]) ** 2) <= 0.5 * np.sum((a @ ref - b[t]) ** 2) + 1e-9
        np.testing.assert_allclose(ours[t], ref, atol=1e-6)


def test_blendshapes_csv(tmp_path):
    names = list(BLENDSHAPE_NAMES)
    weights = np.random.default_rng(6).uniform(0, 1, (7, len(names)))
    path = write_blendshapes_csv(tmp_path / "out" / "shapes.csv", weights, names, FPS)
    lines = path.read_text().splitlines()
    assert lines[0] == "frame,time_s," + ",".join(names) and len(lines) == 1 + 7
    table = np.array([[float(x) for x in line.split(",")] for line in lines[1:]])
    np.testing.assert_array_equal(table[:, 0], np.arange(7))
    np.testing.assert_allclose(table[:, 1], np.arange(7) / FPS, atol=1e-6)
    np.testing.assert_allclose(table[:, 2:], weights, atol=1e-6)
    assert leftovers(tmp_path / "out") == ["shapes.csv"]

    (tmp_path / "a_file").write_text("x")
    with pytest.raises(LipsyncError):
        write_blendshapes_csv(tmp_path / "a_file" / "shapes.csv", weights, names, FPS)
    with pytest.raises(LipsyncError):
        write_blendshapes_csv(tmp_path / "out", weights, names, FPS)
    assert leftovers(tmp_path) == ["a_file", "out"] and leftovers(tmp_path / "out") == ["shapes.csv"]
