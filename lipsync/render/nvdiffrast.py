"""CUDA renderer on nvdiffrast (``RasterizeCudaContext``): batches of frames on an NVIDIA GPU.

Same conventions and results as ``reference.render`` (see ``gl.py`` for the list). How they map
onto nvdiffrast:

* nvdiffrast's output row i holds the pixel centred at y_ndc = (2 i + 1) / H - 1 (row 0 at
  y_ndc = -1, OpenGL's bottom). We use x_ndc = 2 x / W - 1 and y_ndc = 2 y / H - 1, so output
  row r is image row r and no flip is needed.
* nvdiffrast draws both sides of every triangle, so back faces are culled here: each frame keeps
  only its triangles with positive ``triangle_area_2d``, and a batch is drawn in range mode
  (vertices of all frames concatenated, each frame's triangles a range of one index tensor).
* ``texture`` with ``filter_mode='linear'`` and ``boundary_mode='clamp'`` samples texel (i, j) at
  uv = ((j + 0.5) / S, (i + 0.5) / S) with row 0 at v = 0, as our textures are stored: no flip.
* z is mapped to [-1, 1] over each frame's own range (with a margin), nearer = smaller.

nvdiffrast 0.3.2 or later is needed for image sizes that are not multiples of 8.

This module imports torch and nvdiffrast only when a renderer is created. It cannot run without
CUDA, so ``tests/test_render.py`` checks only that it fails clearly there.
"""
from __future__ import annotations

import numpy as np

from ..common import LipsyncError, check_shape

DEPTH_MARGIN = 0.01  # share of the z span added on both sides so no vertex sits on a clip plane

NEEDS_GPU = "nvdiffrast needs an NVIDIA GPU with CUDA and the optional extra: pip install 'lipsync[gpu]'"


def load_nvdiffrast():
    """``(torch, nvdiffrast.torch)``, or ``LipsyncError`` when CUDA or nvdiffrast is missing."""
    try:
        import torch
    except ImportError as err:  # pragma: no cover - torch is a hard dependency
        raise LipsyncError(f"{NEEDS_GPU} (torch is not importable: {err}).") from err
    if not torch.cuda.is_available():
        raise LipsyncError(f"{NEEDS_GPU} (torch sees no CUDA device here).")
    try:
        import nvdiffrast.torch as dr
    except Exception as err:  # ImportError, or a failed build of its CUDA plugin
        reason = " ".join(str(err).split()) or type(err).__name__
        raise LipsyncError(f"{NEEDS_GPU} (importing nvdiffrast.torch failed: {reason}).") from err
    return torch, dr


class NvdiffrastRenderer:
    """Rasterize one textured mesh on the GPU, one frame (``render``) or a batch (``render_batch``).

    Args:
        height, width: output image size in pixels.
        faces: (F, 3) int triangles; front-facing = positive ``triangle_area_2d`` on screen.
        uv: (V, 2) texture coordinates in [0, 1] (u right, v down).
        texture_size: S, the side of the square textures.
        channels: C, 3 or 4 channels of the textures (and of the rendered image).
        device: the CUDA device, e.g. ``"cuda"`` or ``"cuda:1"``.
    """

    def __init__(self, height: int, width: int, faces: np.ndarray, uv: np.ndarray, texture_size: int,
                 channels: int = 4, device: str = "cuda"):
        from . import validate_mesh

        self.num_vertices = validate_mesh(faces, uv, channels)
        self.height, self.width = int(height), int(width)
        self.texture_size, self.channels = int(texture_size), int(channels)
        self._torch, self._dr = load_nvdiffrast()
        torch = self._torch
        self.device = torch.device(device)
        try:
            self._glctx = self._dr.RasterizeCudaContext(device=self.device)
        except Exception as err:
            reason = " ".join(str(err).split()) or type(err).__name__
            raise LipsyncError(f"{NEEDS_GPU} (creating its CUDA rasterizer failed: {reason}).") from err
        self._faces = torch.as_tensor(np.asarray(faces, np.int64), device=self.device)      # (F, 3)
        self._uv = torch.as_tensor(np.asarray(uv, np.float32), device=self.device)           # (V, 2)

    def render(self, points: np.ndarray, texture: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Draw the mesh at ``points`` (V, 3) image-space with ``texture`` (S, S, C) in 0..255.

        Returns:
            image float32 (H, W, C) (0 where nothing is drawn) and cover bool (H, W), on the CPU.
        """
        check_shape("points", points, (self.num_vertices, 3))
        check_shape("texture", texture, (self.texture_size, self.texture_size, self.channels))
        image, cover = self.render_batch(np.asarray(points)[None], np.asarray(texture)[None])
        return image[0].cpu().numpy(), cover[0].cpu().numpy()

    def render_batch(self, points, textures):
        """Draw B frames at once; arrays or tensors in, CUDA tensors out.

        Args:
            points: (B, V, 3) image-space vertices of each frame.
            textures: (B, S, S, C) one texture per frame, or (1, S, S, C) / (S, S, C) shared by all.
        Returns:
            image float32 (B, H, W, C) and cover bool (B, H, W) on ``self.device``.
        """
        torch, dr = self._torch, self._dr
        pts = torch.as_tensor(points, dtype=torch.float32, device=self.device)
        tex = torch.as_tensor(textures, dtype=torch.float32, device=self.device)
        if tex.ndim == 3:
            tex = tex[None]
        batch = check_shape("points", pts, ("B", self.num_vertices, 3))["B"]
        check_shape("textures", tex, (None, self.texture_size, self.texture_size, self.channels))
        if tex.shape[0] not in (1, batch):
            raise ValueError(f"textures: expected 1 or {batch} textures, got {tex.shape[0]}")
        if not bool(torch.isfinite(pts).all()):
            raise ValueError("points must be finite")

        tri, ranges = self._front_triangles(pts)
        if len(tri) == 0:  # every triangle faces away: nothing to draw
            empty = torch.zeros((batch, self.height, self.width, self.channels), device=self.device)
            return empty, torch.zeros((batch, self.height, self.width), dtype=torch.bool, device=self.device)
        clip = self._clip_positions(pts).reshape(batch * self.num_vertices, 4)
        uv = self._uv.repeat(batch, 1)                                     # (B * V, 2)
        rast, _ = dr.rasterize(self._glctx, clip.contiguous(), tri, (self.height, self.width), ranges=ranges)
        tex_uv, _ = dr.interpolate(uv.contiguous(), rast, tri)            # (B, H, W, 2)
        image = dr.texture(tex.contiguous(), tex_uv.contiguous(), filter_mode="linear", boundary_mode="clamp")
        cover = rast[..., 3] > 0                                           # triangle id + 1, 0 = empty
        image = torch.where(cover[..., None], image, torch.zeros_like(image))
        return image, cover

    def _clip_positions(self, pts):
        """(B, V, 3) image-space pixels -> (B, V, 4) clip space (see the module docstring)."""
        torch = self._torch
        z = pts[..., 2]
        lo, hi = z.amin(dim=1, keepdim=True), z.amax(dim=1, keepdim=True)
        margin = DEPTH_MARGIN * (hi - lo) + 1e-3 * torch.clamp(torch.maximum(lo.abs(), hi.abs()), min=1.0)
        near, far = lo - margin, hi + margin
        x = 2.0 * pts[..., 0] / self.width - 1.0
        y = 2.0 * pts[..., 1] / self.height - 1.0
        zn = 2.0 * (z - near) / (far - near) - 1.0
        return torch.stack([x, y, zn, torch.ones_like(x)], dim=-1)

    def _front_triangles(self, pts):
        """Front-facing triangles of each frame, indexing the concatenated vertices.

        Returns:
            tri int32 (T, 3) on the device and ranges int32 (B, 2) (start, count) on the CPU.
        """
        torch = self._torch
        f = self._faces
        a, b, c = pts[:, f[:, 0], :2], pts[:, f[:, 1], :2], pts[:, f[:, 2], :2]          # (B, F, 2)
        cross = (b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (c[..., 0] - a[..., 0])
        front = -0.5 * cross > 1e-9                          # triangle_area_2d > 0, as the reference
        frame, face = torch.nonzero(front, as_tuple=True)    # row-major: frames in order
        tri = (f[face] + frame[:, None] * self.num_vertices).to(torch.int32).contiguous()
        counts = front.sum(dim=1).to(torch.int32).cpu()
        starts = torch.cumsum(counts, 0, dtype=torch.int32) - counts
        return tri, torch.stack([starts, counts], dim=1).contiguous()

    def close(self) -> None:
        """Drop the GPU rasterizer context and buffers (safe to call twice)."""
        self._glctx = None
        self._faces = self._uv = None

    def __enter__(self) -> "NvdiffrastRenderer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
