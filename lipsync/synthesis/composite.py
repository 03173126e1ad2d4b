"""Compositing: the predicted lower face assembled into a full atlas, rendered in each target
frame's pose and lighting, and blended into the frame through a feathered mask."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..common import Progress
from ..media import VideoWriter
from ..prepared import REGION_NAMES
from .schedule import frame_schedule, ping_pong
from .targets import Target

TEXTURE_UPSAMPLE = 2  # atlas enlargement before rendering (see composite_video)
# Bumped whenever rendering or blending changes what a video looks like, so that caches of
# rendered videos (eval.run's) are not reused across such a change.
RENDER_VERSION = 6


def feather_mask(region: np.ndarray, feather: float) -> np.ndarray:
    """float32 (S, S): the bool ``region`` eroded by ``feather`` texels, then blurred by as much, so a
    blend through it fades out inside the region and shows no edge (also used by the 2D baselines)."""
    import cv2

    k = int(2 * round(feather) + 1)
    inner = cv2.erode(region.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    return cv2.GaussianBlur(inner.astype(np.float32), (0, 0), feather)


def blend_mask(speaker, size: int, *, feather: float | None = None) -> np.ndarray:
    """float32 (S, S) in [0,1]: the lower face and mouth, eroded then blurred so it fades out well
    inside the face and the rendered face blends into the frame without a visible edge."""
    regions = dict(zip(REGION_NAMES, speaker.region_masks))
    covered = speaker.reference_atlas.max(-1) > 0
    lower = (regions["lower_face"] | regions["mouth"]) & covered
    soft = feather_mask(lower, feather or size / 40.0)
    return np.clip(soft * covered, 0, 1).astype(np.float32)


def assemble_atlas(reference: np.ndarray, residual: np.ndarray, crop_box, mask: np.ndarray) -> np.ndarray:
    """The full atlas (S,S,4) float32 0..255 with the blend mask as alpha.

    The model predicts the lower-face crop at a reduced resolution as a change over the reference;
    only that change is upsampled (``residual`` (h, w, 3) in [-1, 1]) and added to the
    full-resolution reference, so static detail (skin, stubble, lip lines) stays sharp.
    """
    import cv2

    t, b, l, r = crop_box
    atlas = reference.astype(np.float32)
    atlas[t:b, l:r] += cv2.resize(residual, (r - l, b - t), interpolation=cv2.INTER_CUBIC) * 255.0
    return np.concatenate([np.clip(atlas, 0, 255), mask[..., None] * 255.0], -1)


class FrameCompositor:
    """Puts a rendered face into target frames: the atlas is relit like the target frame
    (``relight``), enlarged ``texture_upsample`` times (bicubic, so the renderer's bilinear lookup
    does not blur the mouth a second time), rendered with the mesh in the target frame's pose and
    blended in through the atlas's alpha (the feathered lower-face mask). Used frame by frame by
    ``composite_video`` and by streaming synthesis. ``render_s``/``blend_s``: time spent so far."""

    def __init__(self, speaker, target: Target, *, renderer: str = "auto", relight: bool = True,
                 texture_upsample: int = TEXTURE_UPSAMPLE):
        from ..render import make_renderer

        self.target, self.relight = target, relight
        self.size = speaker.reference_atlas.shape[0]
        self.up = max(1, int(texture_upsample))
        self.renderer = make_renderer(renderer, target.height, target.width, speaker.faces, speaker.uv,
                                      self.size * self.up, channels=4)
        self.render_s = self.blend_s = 0.0

    def shows_face(self, k: int) -> bool:
        """Whether target frame ``k`` gets the face (else it passes through unchanged)."""
        return bool(self.target.valid[k]) and bool(np.isfinite(self.target.pose_scale[k]))

    def compose(self, frame: np.ndarray, k: int, verts: np.ndarray, texture: np.ndarray) -> np.ndarray:
        """Target frame ``frame`` (number ``k``) with the face ``verts`` (V, 3) textured by
        ``texture`` (float32 (S, S, 4), 0..255, alpha = blend weight; changed in place): uint8 (H, W, 3)."""
        import cv2

        from ..lighting import log_field
        from ..pose import apply_similarity

        if not self.shows_face(k):
            return frame
        t = self.target
        ta = time.perf_counter()
        tex, size = texture, self.size
        g = t.gains[k]
        if self.relight and np.isfinite(g).all():
            tex[..., :3] = np.clip(tex[..., :3] * np.exp(log_field(g, t.terms, size)), 0, 255)
        if self.up > 1:
            tex = np.clip(cv2.resize(tex, (size * self.up, size * self.up), interpolation=cv2.INTER_CUBIC), 0, 255)
        pts = apply_similarity(verts[None], t.pose_scale[k][None], t.pose_rotation[k][None], t.pose_translation[k][None])[0]
        img, cover = self.renderer.render(pts, tex)
        tb = time.perf_counter()
        # blend inside the box where the face has weight only: elsewhere the frame is unchanged
        weight = (img[..., 3] > 0) & cover
        rows, cols = np.flatnonzero(weight.any(1)), np.flatnonzero(weight.any(0))
        result = np.array(frame)
        if len(rows):
            box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
            alpha = (img[box][..., 3:4] / 255.0) * cover[box][..., None]
            blended = frame[box].astype(np.float32) * (1 - alpha) + img[box][..., :3] * alpha
            result[box] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
        self.render_s += tb - ta
        self.blend_s += time.perf_counter() - tb
        return result

    def close(self) -> None:
        close = getattr(self.renderer, "close", None)
        if close:
            close()


def composite_video(speaker, target: Target, verts: np.ndarray, texture_at: Callable[[int], np.ndarray], out: Path,
                    wav: Path, *, schedule: str = "usable", renderer: str = "auto", relight: bool = True,
                    workdir: Path, crf: int = 18, progress: Progress | None = None,
                    texture_upsample: int = TEXTURE_UPSAMPLE) -> dict:
    """Render the face ``verts`` (T,V,3, canonical units of ``speaker``) with the atlas
    ``texture_at(i)`` (float32 (S,S,4), 0..255, alpha = blend weight) into the target's frames,
    re-applying each target frame's head pose and (``relight``) lighting, and encode ``out`` with
    the audio ``wav`` (see ``FrameCompositor``). Returns timings and the renderer used."""
    progress = progress or (lambda stage, done, total: None)
    n = len(verts)
    t0 = time.perf_counter()
    order = frame_schedule(n, target, schedule)
    needed = int(order.max()) + 1
    frames = target.read_frames(needed, workdir)
    if len(frames) < needed:  # the container promised more frames than it had
        if schedule == "aligned":
            order = ping_pong(n, len(frames))
        else:
            usable = np.flatnonzero(target.valid[:len(frames)])
            order = usable[ping_pong(n, len(usable))]
    timings = {"decode": time.perf_counter() - t0}
    h, w = target.height, target.width
    comp = FrameCompositor(speaker, target, renderer=renderer, relight=relight, texture_upsample=texture_upsample)
    writer = VideoWriter(out, w, h, target.fps, wav, crf=crf)
    t_write = 0.0
    try:
        for i in range(n):
            k = int(order[i])
            result = frames[k]
            if comp.shows_face(k):
                ta = time.perf_counter()
                tex = texture_at(i)
                comp.render_s += time.perf_counter() - ta  # the texture counts as rendering
                result = comp.compose(result, k, verts[i], tex)
            tc = time.perf_counter()
            writer.write(result)
            t_write += time.perf_counter() - tc
            if i % 25 == 0:
                progress("render", i + 1, n)
        progress("render", n, n)
        tw = time.perf_counter()
        writer.finish()
        t_write += time.perf_counter() - tw
    except BaseException:
        writer.abort()
        raise
    finally:
        comp.close()
    timings.update(render=comp.render_s, blend=comp.blend_s, encode=t_write)
    return {"timings": timings, "renderer": type(comp.renderer).__name__}
