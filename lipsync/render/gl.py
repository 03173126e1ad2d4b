"""Headless OpenGL renderer (moderngl over EGL): the same pictures as ``reference``, fast on a CPU or GPU.

Conventions are those of ``reference.render``: points are image-space pixels (x right, y down,
pixel centres at i + 0.5, z larger = farther), front faces have positive ``triangle_area_2d``,
uv has v down with texel centres at (j + 0.5) / S, bilinear filtering clamps to the edge.

How they map onto OpenGL:

* x_ndc = 2 x / W - 1 and y_ndc = 1 - 2 y / H, so OpenGL samples pixel (row r, col c) at exactly
  (c + 0.5, r + 0.5); ``fbo.read()`` returns rows bottom-up and we flip them back.
* Flipping y keeps the on-screen orientation: our front faces are counter-clockwise in OpenGL's
  y-up window coordinates, its default front face, and back faces are culled.
* The texture is uploaded row 0 first, so texel row i sits at t = (i + 0.5) / S = v: no flip.
* z is mapped to [-1, 1] over the points' own range (with a margin), nearer = smaller, and the
  depth test keeps the smallest (first drawn wins ties, as in the reference).

Everything is allocated once in the constructor; ``render`` uploads points and texture and draws.
"""
from __future__ import annotations

import numpy as np

from ..common import LipsyncError, check_shape

VERTEX_SHADER = """
#version 330
uniform vec2 image_size;   // (W, H) in pixels
uniform vec2 depth_range;  // z that maps to -1 (near) and +1 (far)
in vec3 in_pos;            // image-space pixels: x right, y down, z larger = farther
in vec2 in_uv;
out vec2 v_uv;
void main() {
    float x = 2.0 * in_pos.x / image_size.x - 1.0;
    float y = 1.0 - 2.0 * in_pos.y / image_size.y;
    float z = 2.0 * (in_pos.z - depth_range.x) / (depth_range.y - depth_range.x) - 1.0;
    gl_Position = vec4(x, y, z, 1.0);
    v_uv = in_uv;
}
"""

FRAGMENT_SHADER = """
#version 330
uniform sampler2D tex;
in vec2 v_uv;
layout(location = 0) out vec4 out_color;
layout(location = 1) out float out_cover;
void main() {
    out_color = texture(tex, v_uv);
    out_cover = 1.0;
}
"""

DEPTH_MARGIN = 0.01  # share of the z span added on both sides so no vertex sits on a clip plane

UNAVAILABLE = ("OpenGL rendering over EGL is unavailable ({reason}); install the Debian packages "
               "libegl1 libgl1-mesa-dri libegl-mesa0, or use --renderer reference.")


def _load_triton_first() -> None:
    """Mesa's llvmpipe and triton (which torch's optimizers import) each carry their own LLVM;
    loading triton after llvmpipe crashes the process (segmentation fault), before it is fine.
    So a process that renders and later trains (the demo, the tests) loads triton first."""
    try:
        import triton  # noqa: F401
    except Exception:  # not installed (CPU-only torch builds), or broken: nothing to protect
        pass


def create_egl_context():
    """A standalone moderngl context over EGL (no display needed); ``LipsyncError`` if there is none."""
    _load_triton_first()
    try:
        import moderngl
        return moderngl.create_standalone_context(backend="egl", require=330)
    except Exception as err:  # ImportError, or moderngl/glcontext's own errors (no libEGL, no driver)
        reason = " ".join(str(err).split()) or type(err).__name__
        raise LipsyncError(UNAVAILABLE.format(reason=reason)) from err


def depth_range(z: np.ndarray) -> tuple[float, float]:
    """(near, far) values of z (N,) that map to -1 and +1, with a margin and a non-zero span."""
    lo, hi = float(np.min(z)), float(np.max(z))
    margin = DEPTH_MARGIN * (hi - lo) + 1e-3 * max(1.0, abs(lo), abs(hi))
    return lo - margin, hi + margin


class GLRenderer:
    """Rasterize one textured mesh over and over (new vertex positions and texture each frame).

    Args:
        height, width: output image size in pixels.
        faces: (F, 3) int triangles; front-facing = positive ``triangle_area_2d`` on screen.
        uv: (V, 2) texture coordinates in [0, 1] (u right, v down).
        texture_size: S, the side of the square textures passed to ``render``.
        channels: C, 3 or 4 channels of those textures (and of the rendered image).
    """

    def __init__(self, height: int, width: int, faces: np.ndarray, uv: np.ndarray, texture_size: int,
                 channels: int = 4):
        from . import validate_mesh

        self.num_vertices = validate_mesh(faces, uv, channels)
        self.height, self.width = int(height), int(width)
        self.texture_size, self.channels = int(texture_size), int(channels)
        self._ctx = None
        ctx = create_egl_context()
        try:
            with ctx:
                self._build(ctx, np.ascontiguousarray(faces, np.int32), np.ascontiguousarray(uv, np.float32))
        except Exception:
            ctx.release()
            raise
        self._ctx = ctx

    def _build(self, ctx, faces: np.ndarray, uv: np.ndarray) -> None:
        """Create the program, buffers, texture and framebuffer in ``ctx`` (made current by the caller)."""
        import moderngl

        self._prog = ctx.program(vertex_shader=VERTEX_SHADER, fragment_shader=FRAGMENT_SHADER)
        self._prog["image_size"].value = (float(self.width), float(self.height))
        self._prog["tex"].value = 0
        self._pos = ctx.buffer(reserve=self.num_vertices * 3 * 4)
        self._uv = ctx.buffer(uv.tobytes())
        self._index = ctx.buffer(faces.tobytes())
        self._vao = ctx.vertex_array(self._prog, [(self._pos, "3f", "in_pos"), (self._uv, "2f", "in_uv")],
                                     index_buffer=self._index, index_element_size=4)
        size = self.texture_size
        self._tex = ctx.texture((size, size), self.channels, dtype="f4")
        self._tex.filter = (moderngl.LINEAR, moderngl.LINEAR)  # bilinear, no mipmaps
        self._tex.repeat_x = self._tex.repeat_y = False        # clamp to edge
        shape = (self.width, self.height)
        self._color = ctx.renderbuffer(shape, 4, dtype="f4")   # RGB32F is not always renderable
        self._cover = ctx.renderbuffer(shape, 1, dtype="f1")
        self._depth = ctx.depth_renderbuffer(shape)
        self._fbo = ctx.framebuffer(color_attachments=[self._color, self._cover], depth_attachment=self._depth)
        ctx.front_face = "ccw"
        ctx.cull_face = "back"
        ctx.depth_func = "<"

    def render(self, points: np.ndarray, texture: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Draw the mesh at ``points`` (V, 3) image-space with ``texture`` (S, S, C) in 0..255.

        Returns:
            image float32 (H, W, C) in the texture's units (0 where nothing is drawn) and
            cover bool (H, W), True where a front-facing triangle covers the pixel centre.
        """
        if self._ctx is None:
            raise RuntimeError("this GLRenderer is closed")
        check_shape("points", points, (self.num_vertices, 3))
        check_shape("texture", texture, (self.texture_size, self.texture_size, self.channels))
        pts = np.ascontiguousarray(points, np.float32)
        if not np.isfinite(pts).all():
            raise ValueError("points must be finite")
        import moderngl

        with self._ctx as ctx:
            self._pos.write(pts)
            self._tex.write(np.ascontiguousarray(texture, np.float32))
            self._prog["depth_range"].value = depth_range(pts[:, 2])
            self._fbo.use()
            self._fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
            ctx.enable(moderngl.DEPTH_TEST | moderngl.CULL_FACE)
            self._tex.use(location=0)
            self._vao.render(moderngl.TRIANGLES)
            color = self._fbo.read(components=4, attachment=0, dtype="f4")
            cover = self._fbo.read(components=1, attachment=1, dtype="f1")
        image = np.frombuffer(color, np.float32).reshape(self.height, self.width, 4)[::-1, :, :self.channels]
        mask = np.frombuffer(cover, np.uint8).reshape(self.height, self.width)[::-1] > 0
        return np.ascontiguousarray(image), np.ascontiguousarray(mask)

    def close(self) -> None:
        """Free the GL objects and the context (safe to call twice)."""
        if self._ctx is None:
            return
        with self._ctx:
            for obj in (self._fbo, self._color, self._cover, self._depth, self._tex, self._vao,
                        self._index, self._uv, self._pos, self._prog):
                obj.release()
        self._ctx.release()
        self._ctx = None

    def __enter__(self) -> "GLRenderer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
