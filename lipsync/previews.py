"""Preview images of a prepared clip, for a person to check that preprocessing went right."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .lighting import LightingParams
from .topology import FaceTopology


def _grid(images: list[np.ndarray], cols: int = 4, pad: int = 2) -> np.ndarray:
    h, w = images[0].shape[:2]
    rows = (len(images) + cols - 1) // cols
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for k, img in enumerate(images):
        r, c = divmod(k, cols)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = img
    return out


def _figure(rows: int, cols: int, *, figsize, **subplots):
    """A matplotlib figure and its axes, without pyplot (whose global state is not safe across threads)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, **subplots)


def _save_png(path: Path, rgb: np.ndarray) -> None:
    import cv2

    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def draw_mesh(frame: np.ndarray, points: np.ndarray, topo: FaceTopology) -> np.ndarray:
    """The frame with the tracked mesh drawn on it (fills in red, stable vertices in yellow)."""
    import cv2

    img = frame.copy()
    scale = max(1, int(np.ceil(720 / max(img.shape[:2]))))
    if scale > 1:
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    p = np.round(points[:, :2] * scale * 16).astype(np.int32)
    n_t = topo.n_tessellation
    for k, tri in enumerate(topo.faces):
        colour = (0, 220, 0) if k < n_t else (255, 60, 60)
        cv2.polylines(img, [p[tri]], True, colour, 1, cv2.LINE_AA, shift=4)
    for v in topo.regions["stable"]:
        cv2.circle(img, tuple(int(c) for c in p[v]), 2 * 16, (255, 220, 0), -1, cv2.LINE_AA, shift=4)
    return img


def draw_uv(atlas: np.ndarray, uv: np.ndarray, topo: FaceTopology, scale: int = 2) -> np.ndarray:
    import cv2

    img = cv2.resize(atlas, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    p = np.round(uv * atlas.shape[0] * scale * 16).astype(np.int32)
    for k, tri in enumerate(topo.faces):
        colour = (0, 200, 0) if k < topo.n_tessellation else (255, 60, 60)
        cv2.polylines(img, [p[tri]], True, colour, 1, cv2.LINE_AA, shift=4)
    return img


def write_previews(folder: Path, *, topo: FaceTopology, landmarks: np.ndarray, ref_frame: int, kept_frames: dict,
                   kept_raw: dict, preview_idx: np.ndarray, uv: np.ndarray, size: int, lighting: LightingParams,
                   skin: np.ndarray, face_area: np.ndarray, valid: np.ndarray, euler: np.ndarray, fps: float, atlas_path: Path,
                   mouth: np.ndarray) -> dict:
    """Write the PNGs; returns {name: relative path}."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    # 1. the mesh on the reference frame
    _save_png(folder / "mesh.png", draw_mesh(kept_frames[ref_frame], landmarks[ref_frame], topo))
    out["mesh"] = "previews/mesh.png"
    # 2. atlases before / after lighting normalization, same frames
    atlas = np.load(atlas_path, mmap_mode="r")
    idx = [int(i) for i in preview_idx if i in kept_raw]
    if idx:
        _save_png(folder / "atlas_raw.png", _grid([kept_raw[i] for i in idx]))
        _save_png(folder / "atlas_normalized.png", _grid([np.array(atlas[i]) for i in idx]))
        out["atlas_raw"] = "previews/atlas_raw.png"
        out["atlas_normalized"] = "previews/atlas_normalized.png"
        _save_png(folder / "uv_layout.png", draw_uv(np.array(atlas[ref_frame]), uv, topo))
        out["uv_layout"] = "previews/uv_layout.png"
    # 3. lighting over time: mean gain per channel over skin texels, and the spatial field
    t = np.arange(len(valid)) / fps
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    from .lighting import poly_basis

    uu, vv = np.meshgrid(c, c)
    skin_idx = np.flatnonzero(skin.ravel())
    if len(skin_idx) > 2000:  # the mean gain over 2000 skin texels is as good as over all of them
        skin_idx = np.sort(np.random.default_rng(0).choice(skin_idx, 2000, replace=False))
    basis_t = poly_basis(uu.ravel()[skin_idx], vv.ravel()[skin_idx], lighting.temporal_terms).T  # (K, N)
    mean_gain = np.full((len(valid), 3), np.nan)
    ok = np.flatnonzero(np.isfinite(lighting.gains).all(axis=(1, 2)))
    for start in range(0, len(ok) if len(skin_idx) else 0, 512):
        rows = ok[start:start + 512]
        g = lighting.gains[rows].reshape(-1, basis_t.shape[0]) @ basis_t  # (B*3, N)
        mean_gain[rows] = np.exp(g).mean(1).reshape(len(rows), 3)
    fig, axes = _figure(1, 2, figsize=(11, 3.4), gridspec_kw={"width_ratios": [3, 1]})
    for ch, col in enumerate(("tab:red", "tab:green", "tab:blue")):
        axes[0].plot(t, mean_gain[:, ch], color=col, lw=1, label="RGB"[ch])
    axes[0].set_xlabel("time (s)")
    axes[0].set_ylabel("gain vs reference (mean over skin)")
    axes[0].set_title("temporal lighting removed from each frame")
    axes[0].legend(loc="upper right", ncol=3, fontsize=8)
    axes[0].grid(alpha=0.3)
    sp = np.exp(lighting.spatial_field(size)).mean(-1)
    sp = np.where(face_area, sp, np.nan)
    im = axes[1].imshow(sp, cmap="coolwarm", vmin=min(0.8, np.nanmin(sp)), vmax=max(1.2, np.nanmax(sp)))
    axes[1].set_title("left/right lighting (gain)")
    axes[1].axis("off")
    fig.colorbar(im, ax=axes[1], fraction=0.046)
    fig.tight_layout()
    fig.savefig(folder / "lighting.png", dpi=110)
    out["lighting"] = "previews/lighting.png"
    # 4. head pose and mouth opening over time
    fig, axes = _figure(2, 1, figsize=(11, 4.6), sharex=True)
    for k, name in enumerate(("yaw", "pitch", "roll")):
        axes[0].plot(t, euler[:, k], lw=1, label=name)
    axes[0].set_ylabel("degrees")
    axes[0].set_title("head pose relative to the canonical frontal face (removed by pose normalization)")
    axes[0].legend(loc="upper right", ncol=3, fontsize=8)
    axes[0].grid(alpha=0.3)
    axes[1].plot(t, mouth, lw=1, color="k")
    bad = ~valid
    if bad.any():
        axes[1].fill_between(t, 0, 1, where=bad, color="tab:red", alpha=0.2, transform=axes[1].get_xaxis_transform(),
                             label="excluded")
        axes[1].legend(loc="upper right", fontsize=8)
    axes[1].set_ylabel("mouth opening")
    axes[1].set_xlabel("time (s)")
    axes[1].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / "pose.png", dpi=110)
    out["pose"] = "previews/pose.png"
    return out

