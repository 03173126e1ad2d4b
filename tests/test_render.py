"""Fast renderers (OpenGL over EGL, nvdiffrast) against the numpy reference rasterizer."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from lipsync.common import LipsyncError
from lipsync.pose import apply_similarity, euler_to_rotation
from lipsync.render import RENDERERS, ReferenceRenderer, make_renderer
from lipsync.render.reference import render as reference_render

IMAGE = 256        # pixels, square
FACE_WIDTH = 180   # pixels across the posed face
TEX = 256          # texture side

# Measured on Mesa llvmpipe (LLVM 15, Mesa 22.3), yaw -35..20 degrees at 256 px and 20 degrees at
# 512 px: 0 to 2 pixels of ~31,000 covered differ in coverage (pixel centres on an edge, where GL's
# top-left rule and the reference's inclusive test disagree); over pixels both cover the median
# |GL - reference| is 0.0000 and the 99th percentile 0.0002 grey levels (float32 texture and
# framebuffer); the worst pixel (9 levels, one of 147,000 at 512 px) has its centre 1e-5 px inside
# a nose triangle that overlaps a farther one on screen, and float32 GL puts it outside. The
# margins leave room for GPUs, whose bilinear weights have 8 fractional bits (about 0.05 grey
# levels on this texture).
COVER_MISMATCH_TOL = 0.002  # share of the reference's covered pixels whose coverage may differ
MEDIAN_TOL = 0.05           # grey levels: median |GL - reference| over pixels both cover
P99_TOL = 0.5               # grey levels: 99th percentile over pixels both cover


def gl_renderer(*args, **kwargs):
    """A GLRenderer, or skip the test when this machine cannot create an EGL context."""
    from lipsync.render.gl import GLRenderer

    try:
        return GLRenderer(*args, **kwargs)
    except LipsyncError as err:
        pytest.skip(f"no OpenGL context over EGL on this machine: {err}")


def known_texture(size: int, channels: int = 3) -> np.ndarray:
    """A smooth (S, S, C) float texture in 0..255 with a different pattern in each channel."""
    u, v = np.meshgrid((np.arange(size) + 0.5) / size, (np.arange(size) + 0.5) / size)
    planes = [128 + 90 * np.sin(2 * np.pi * 6 * u), 128 + 90 * np.cos(2 * np.pi * 5 * v),
              128 + 60 * np.sin(2 * np.pi * 4 * (u + v)), 255 * (0.2 + 0.6 * u * v)]
    return np.stack(planes[:channels], -1)


def posed(vertices: np.ndarray, yaw: float, shift: float = 0.0) -> np.ndarray:
    """The canonical face (V, 3) turned by ``yaw`` degrees, FACE_WIDTH wide, centred in the image."""
    rot = euler_to_rotation(np.array([yaw]), np.array([5.0]), np.array([3.0]))
    scale = FACE_WIDTH / np.ptp(vertices[:, 0])
    centre = IMAGE / 2 + shift
    return apply_similarity(vertices[None], np.array([scale]), rot, np.array([[centre, centre, 0.0]]))[0]


def boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of a bool (H, W) mask whose 3x3 neighbourhood is not all the same."""
    padded = np.pad(mask, 1, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3))
    return windows.any(axis=(-1, -2)) & ~windows.all(axis=(-1, -2))


def assert_matches_reference(image, cover, ref_image, ref_cover):
    """Coverage and colours within the module tolerances of the reference rasterizer."""
    assert image.dtype == np.float32 and cover.dtype == bool
    assert image.shape == ref_image.shape and cover.shape == ref_cover.shape
    differ = cover != ref_cover
    assert differ.sum() <= COVER_MISMATCH_TOL * ref_cover.sum(), f"{differ.sum()} pixels differ in coverage"
    assert not (differ & ~boundary(ref_cover)).any(), "coverage differs away from the mesh's edges"
    assert (image[~cover] == 0).all()
    err = np.abs(image.astype(np.float64) - ref_image)[cover & ref_cover]
    assert np.median(err) < MEDIAN_TOL
    assert np.percentile(err, 99) < P99_TOL


@pytest.fixture(scope="module")
def face(face_model):
    return face_model["vertices"], face_model["uv"], face_model["topo"].faces


def test_gl_matches_reference_on_a_posed_face(face):
    vertices, uv, faces = face
    texture = known_texture(TEX)
    pts = posed(vertices, 20)
    ref_image, ref_cover = reference_render(pts, faces, uv, texture, IMAGE, IMAGE)
    with gl_renderer(IMAGE, IMAGE, faces, uv, TEX, channels=3) as rend:
        image, cover = rend.render(pts, texture)
    assert ref_cover.mean() > 0.3, "the face fills a good part of the image"
    assert_matches_reference(image, cover, ref_image, ref_cover)


def test_gl_carries_the_alpha_channel_of_4_channel_textures(face):
    vertices, uv, faces = face
    texture = np.clip(known_texture(TEX, 4) + 0.5, 0, 255).astype(np.uint8)  # uint8 input works too
    pts = posed(vertices, -15)
    ref_image, ref_cover = reference_render(pts, faces, uv, texture, IMAGE, IMAGE)
    with gl_renderer(IMAGE, IMAGE, faces, uv, TEX, channels=4) as rend:
        image, cover = rend.render(pts, texture)
    assert image.shape == (IMAGE, IMAGE, 4)
    assert_matches_reference(image, cover, ref_image, ref_cover)
    alpha = image[..., 3][cover]
    assert alpha.max() < 200 and np.ptp(alpha) > 50, "alpha follows the texture, it is not forced opaque"


def test_gl_renderer_is_reused_across_frames(face):
    vertices, uv, faces = face
    texture = known_texture(TEX)
    with gl_renderer(IMAGE, IMAGE, faces, uv, TEX, channels=3) as rend:
        first_pts, second_pts = posed(vertices, 20), posed(vertices, -25, shift=7.3)
        first, first_cover = rend.render(first_pts, texture)
        kept = first.copy()
        second, second_cover = rend.render(second_pts, texture[:, ::-1])
    assert (first == kept).all(), "a later render does not overwrite an earlier result"
    assert (first_cover != second_cover).sum() > 1000
    for (image, cover), pts, tex in (((first, first_cover), first_pts, texture),
                                     ((second, second_cover), second_pts, texture[:, ::-1])):
        assert_matches_reference(image, cover, *reference_render(pts, faces, uv, tex, IMAGE, IMAGE))


def depth_scene(near_first: bool):
    """Three separate triangles on a 32 x 32 image, each with its own 3 vertices.

    A far front-facing triangle (z = 10, red), a smaller near one inside it (z = 5, blue) and a
    nearest (z = 0) back-facing one (green) over everything. The 2 x 2 texture has a solid colour
    per texel and each triangle's uv sits on one texel centre, so colours are exact.
    """
    far = [[2.3, 2.2, 10.0], [3.1, 29.6, 10.0], [29.7, 15.4, 10.0]]       # counter-clockwise on screen
    near = [[8.2, 10.3, 5.0], [8.6, 20.7, 5.0], [18.9, 15.2, 5.0]]
    back = [[-5.0, -5.0, 0.0], [40.0, -5.0, 0.0], [-5.0, 40.0, 0.0]]       # clockwise on screen
    points = np.array(far + near + back, np.float32)
    texel = {"red": (0.25, 0.25), "blue": (0.75, 0.25), "green": (0.25, 0.75)}
    uv = np.array([texel["red"]] * 3 + [texel["blue"]] * 3 + [texel["green"]] * 3, np.float32)
    faces = np.array([[3, 4, 5], [0, 1, 2], [6, 7, 8]] if near_first else [[6, 7, 8], [0, 1, 2], [3, 4, 5]])
    texture = np.zeros((2, 2, 3), np.float32)
    texture[0, 0], texture[0, 1], texture[1, 0] = (255, 0, 0), (0, 0, 255), (0, 255, 0)
    return points, faces, uv, texture


@pytest.mark.parametrize("near_first", [True, False], ids=["near-drawn-first", "near-drawn-last"])
def test_gl_culls_back_faces_and_keeps_the_nearer_surface(near_first):
    points, faces, uv, texture = depth_scene(near_first)
    with gl_renderer(32, 32, faces, uv, 2, channels=3) as rend:
        image, cover = rend.render(points, texture)
    assert tuple(image[15, 12]) == (0, 0, 255), "the near triangle hides the far one"
    assert tuple(image[5, 5]) == (255, 0, 0), "the far triangle shows around it"
    assert not cover[30, 30] and tuple(image[30, 30]) == (0, 0, 0), "the back face is culled"
    assert not (image[..., 1] > 0).any(), "no pixel of the back face is drawn"
    ref_image, ref_cover = reference_render(points, faces, uv, texture, 32, 32)
    assert (cover == ref_cover).all()
    assert np.abs(image - ref_image).max() < 1e-3


def test_nvdiffrast_matches_reference_on_a_posed_face(face):
    """Runs where CUDA and nvdiffrast are installed (a GPU machine); skipped elsewhere."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU with CUDA (none here)")
    pytest.importorskip("nvdiffrast.torch", reason="needs the [gpu] extra (nvdiffrast)")
    from lipsync.render import make_renderer

    vertices, uv, faces = face
    texture = known_texture(TEX, channels=4)
    pts = posed(vertices, 20)
    ref_image, ref_cover = reference_render(pts, faces, uv, texture, IMAGE, IMAGE)
    rend = make_renderer("nvdiffrast", IMAGE, IMAGE, faces, uv, TEX, channels=4)
    image, cover = rend.render(pts, texture)
    rend.close()
    assert_matches_reference(image, cover, ref_image, ref_cover)


def test_nvdiffrast_fails_clearly_without_cuda():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here, so the nvdiffrast renderer may well work")
    points, faces, uv, _ = depth_scene(True)
    with pytest.raises(LipsyncError, match="nvdiffrast needs an NVIDIA GPU with CUDA"):
        make_renderer("nvdiffrast", 32, 32, faces, uv, 2, channels=3)


def test_auto_renderer_works_here():
    points, faces, uv, texture = depth_scene(False)
    rend = make_renderer("auto", 32, 32, faces, uv, 2, channels=3)
    with rend:
        image, cover = rend.render(points, texture)
    ref_image, ref_cover = reference_render(points, faces, uv, texture, 32, 32)
    assert (cover == ref_cover).all()
    assert np.abs(image - ref_image).max() < 1e-3


def test_reference_renderer_and_unknown_kind():
    points, faces, uv, texture = depth_scene(True)
    assert RENDERERS == ("auto", "gl", "nvdiffrast", "reference")
    with make_renderer("reference", 32, 32, faces, uv, 2, channels=3) as rend:
        assert isinstance(rend, ReferenceRenderer)
        image, cover = rend.render(points, texture)
    assert image.dtype == np.float32 and cover.dtype == bool and tuple(image[15, 12]) == (0, 0, 255)
    with pytest.raises(LipsyncError, match="Unknown renderer 'vulkan'"):
        make_renderer("vulkan", 32, 32, faces, uv, 2)


def test_wrong_texture_shape_is_refused():
    points, faces, uv, _ = depth_scene(True)
    with gl_renderer(32, 32, faces, uv, 2, channels=3) as rend:
        with pytest.raises(ValueError, match="texture"):
            rend.render(points, np.zeros((2, 2, 4), np.float32))


def test_importing_lipsync_render_stays_light():
    code = ("import sys, lipsync.render; "
            "print(sorted(m for m in ('moderngl', 'torch', 'nvdiffrast') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_auto_falls_back_to_reference_with_a_warning_when_gl_fails(monkeypatch):
    import lipsync.render.gl as gl

    def no_egl():
        raise LipsyncError(gl.UNAVAILABLE.format(reason="simulated"))

    monkeypatch.setattr(gl, "create_egl_context", no_egl)
    monkeypatch.setattr("lipsync.render._nvdiffrast_installed", lambda: False)
    points, faces, uv, texture = depth_scene(True)
    with pytest.warns(RuntimeWarning, match="Falling back to the slow reference renderer: OpenGL rendering"):
        rend = make_renderer("auto", 32, 32, faces, uv, 2, channels=3)
    assert isinstance(rend, ReferenceRenderer)
    assert tuple(rend.render(points, texture)[0][15, 12]) == (0, 0, 255)


def test_rendering_then_training_in_one_process(tmp_path):
    """Mesa's llvmpipe and triton both carry LLVM; loading triton after a GL context crashed the
    process as soon as an optimizer was made (the demo renders and trains in one process)."""
    import subprocess
    import sys

    code = ("import numpy as np, torch\n"
            "from lipsync.render import make_renderer\n"
            "r = make_renderer('gl', 32, 32, np.array([[0, 1, 2]]), np.zeros((3, 2), np.float32), 4)\n"
            "r.render(np.array([[1, 1, 0], [30, 1, 0], [1, 30, 0]], np.float32), np.zeros((4, 4, 4), np.uint8))\n"
            "torch.optim.AdamW(torch.nn.Linear(2, 2).parameters())\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if "unavailable" in proc.stderr:
        pytest.skip("no EGL context on this machine")
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]
