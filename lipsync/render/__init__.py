"""Renderers of the textured face mesh. ``reference`` is the slow, obvious one used to check the others."""
from __future__ import annotations

import importlib.util
import warnings
from typing import Protocol

import numpy as np

from ..common import LipsyncError, check_shape

RENDERERS = ("auto", "gl", "nvdiffrast", "reference")


class Renderer(Protocol):
    """What every renderer offers (built once per mesh, image size and texture size).

    ``render(points (V, 3) image-space, texture (S, S, C) 0..255)`` returns image float32 (H, W, C)
    (0 where nothing is drawn) and cover bool (H, W); ``close()`` frees it, as does ``with``.
    """

    def render(self, points: np.ndarray, texture: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def close(self) -> None: ...


def validate_mesh(faces: np.ndarray, uv: np.ndarray, channels: int) -> int:
    """Check the arguments every renderer is built from; returns the number of vertices V."""
    check_shape("faces", faces, (None, 3))
    num_vertices = check_shape("uv", uv, ("V", 2))["V"]
    if channels not in (3, 4):
        raise ValueError(f"channels must be 3 or 4, got {channels}")
    if len(faces) and (np.min(faces) < 0 or np.max(faces) >= num_vertices):
        raise ValueError(f"faces index vertices outside [0, {num_vertices})")
    return num_vertices


class ReferenceRenderer:
    """``reference.render`` behind the common interface (slow: for tests and machines without EGL).

    Args as ``make_renderer``.
    """

    def __init__(self, height: int, width: int, faces: np.ndarray, uv: np.ndarray, texture_size: int,
                 channels: int = 4):
        self.num_vertices = validate_mesh(faces, uv, channels)
        self.height, self.width = int(height), int(width)
        self.texture_size, self.channels = int(texture_size), int(channels)
        self.faces = np.asarray(faces)
        self.uv = np.asarray(uv)

    def render(self, points: np.ndarray, texture: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Draw the mesh at ``points`` (V, 3) with ``texture`` (S, S, C) -> float32 (H, W, C), bool (H, W)."""
        from .reference import render

        check_shape("points", points, (self.num_vertices, 3))
        check_shape("texture", texture, (self.texture_size, self.texture_size, self.channels))
        image, cover = render(points, self.faces, self.uv, texture, self.height, self.width)
        return image.astype(np.float32), cover

    def close(self) -> None:
        """Nothing to free; present for the common interface."""

    def __enter__(self) -> "ReferenceRenderer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_renderer(kind: str, height: int, width: int, faces: np.ndarray, uv: np.ndarray, texture_size: int,
                  channels: int = 4) -> Renderer:
    """Build a renderer of an (H, W) image of the mesh ``faces`` (F, 3) with ``uv`` (V, 2).

    ``kind``: ``"gl"`` (moderngl over EGL), ``"nvdiffrast"`` (CUDA), ``"reference"`` (numpy), or
    ``"auto"``: nvdiffrast when CUDA and nvdiffrast are there, else gl, else (with a warning)
    reference. Textures given to ``render`` are (texture_size, texture_size, channels).
    Raises ``LipsyncError`` when the renderer asked for by name cannot run here.
    """
    args = (height, width, faces, uv, texture_size, channels)
    if kind not in RENDERERS:
        raise LipsyncError(f"Unknown renderer {kind!r}; choose one of {', '.join(RENDERERS)}.")
    if kind == "reference":
        return ReferenceRenderer(*args)
    if kind == "gl":
        from .gl import GLRenderer
        return GLRenderer(*args)
    if kind == "nvdiffrast":
        from .nvdiffrast import NvdiffrastRenderer
        return NvdiffrastRenderer(*args)
    return _auto_renderer(args)


def _nvdiffrast_installed() -> bool:
    """Whether the nvdiffrast package is there (cheap: imports neither it nor torch)."""
    return importlib.util.find_spec("nvdiffrast") is not None


def _auto_renderer(args: tuple) -> Renderer:
    """nvdiffrast if it can run, else gl, else reference with a warning."""
    if _nvdiffrast_installed():
        from .nvdiffrast import NvdiffrastRenderer
        try:
            return NvdiffrastRenderer(*args)
        except LipsyncError:
            pass  # no CUDA here, or nvdiffrast is broken: the GL renderer is fast enough
    from .gl import GLRenderer
    try:
        return GLRenderer(*args)
    except LipsyncError as err:
        warnings.warn(f"Falling back to the slow reference renderer: {err}", RuntimeWarning, stacklevel=3)
        return ReferenceRenderer(*args)
