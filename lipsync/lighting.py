"""Lighting normalization of texture atlases (spatial by facial symmetry, temporal by skin albedo).

We work in log space, where lighting is a smooth additive field over the atlas: for texel u and
frame t, ``log A_t(u) = log albedo(u) + g_t(u)``.

1. Spatial (reference atlas): a face's skin albedo is nearly left/right symmetric, so
   ``log A(u) - log A(m(u)) = g(u) - g(m(u))`` where m mirrors a texel. Only the antisymmetric part
   of g is identifiable (the symmetric part is indistinguishable from albedo), so we fit g with
   polynomials that are odd in the horizontal coordinate and remove it.
2. Temporal (every frame): with the normalized reference as albedo, each frame's log-ratio to it
   over skin texels is a smooth per-channel field g_t (a low-order 2D polynomial), fitted robustly
   (Huber, then Tukey IRLS) so lips, shadows of hair or a hand do not bias it. Dividing by exp(g_t) gives the
   frame under the reference's (normalized) light; multiplying the target frame's exp(g_t) back at
   synthesis puts the target's lighting back.

Coefficients are stored per frame (``LightingParams``) so either step can be re-applied exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .common import check_shape

LOG_FLOOR = 4.0 / 255.0  # darker values carry no reliable lighting information


def poly_terms(degree: int, *, odd_in_u: bool = False) -> list[tuple[int, int]]:
    """Exponents (i, j) of the monomials x^i y^j with i + j <= degree (odd i only if asked)."""
    return [(i, d - i) for d in range(degree + 1) for i in range(d + 1) if not odd_in_u or i % 2 == 1]


def poly_basis(u: np.ndarray, v: np.ndarray, terms: list[tuple[int, int]]) -> np.ndarray:
    """Monomials of centred coordinates x = 2u - 1, y = 2v - 1 at points (...) -> (..., K)."""
    x = 2.0 * np.asarray(u, np.float64) - 1.0
    y = 2.0 * np.asarray(v, np.float64) - 1.0
    return np.stack([x ** i * y ** j for i, j in terms], -1).astype(np.float32)


@dataclass(frozen=True)
class LightingParams:
    """Members:
        spatial_terms: exponents (i, j) of the spatial (antisymmetric) basis.
        spatial: float32 (3, Ka) log-gain coefficients of the reference's left/right lighting.
        temporal_terms: exponents (i, j) of the per-frame basis.
        gains: float32 (T, 3, K) per-frame log-gain coefficients relative to the normalized
            reference (NaN for excluded frames).
    The field of frame t at atlas coordinates (u, v) is ``poly_basis(u, v, temporal_terms) @ gains[t].T``
    (log units, per RGB channel).
    """
    spatial_terms: list
    spatial: np.ndarray
    temporal_terms: list
    gains: np.ndarray

    def field(self, t: int, size: int) -> np.ndarray:
        """float32 (S, S, 3) log-gain of frame t."""
        return log_field(self.gains[t], self.temporal_terms, size)

    def spatial_field(self, size: int) -> np.ndarray:
        return log_field(self.spatial, self.spatial_terms, size)


def log_field(coeffs: np.ndarray, terms, size: int) -> np.ndarray:
    """Evaluate (3, K) coefficients on the (S, S) texel grid -> (S, S, 3) log-gain."""
    return (_grid_basis(tuple(map(tuple, terms)), int(size)) @ np.asarray(coeffs, np.float32).T).astype(np.float32)


@lru_cache(maxsize=8)
def _grid_basis(terms: tuple, size: int) -> np.ndarray:
    """``poly_basis`` on the (S, S) texel grid (S, S, K), computed once per grid (synthesis
    evaluates a field on every frame)."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    u, v = np.meshgrid(c, c)
    basis = poly_basis(u, v, list(terms))
    basis.flags.writeable = False
    return basis


def to_log(atlas: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(np.asarray(atlas, np.float32) / 255.0, LOG_FLOOR))


def robust_fit(basis: np.ndarray, target: np.ndarray, weight: np.ndarray, *, huber_iters: int = 2,
               tukey_iters: int = 4, huber: float = 1.345, tukey: float = 4.685, ridge: float = 1e-4) -> np.ndarray:
    """Batched robust least squares: coeffs (B, C, K) with ``basis @ coeffs[b, c] ~= target[b, :, c]``.

    Args:
        basis: (N, K) design matrix shared by the batch.
        target: (B, N, C) values.
        weight: (B, N) non-negative prior weights (0 = ignore).

    Iteratively reweighted least squares: a few Huber steps from the plain fit, then Tukey
    bisquare steps, which give zero weight to gross outliers (a hand, a hair strand, a hard shadow
    covering a tenth of the skin). The robust scale (median absolute residual over the weighted
    points) is re-estimated at every step. Each step is a few matrix products over the points: the
    normal equations of all B*C problems come from one product with the per-point outer products
    of the basis.
    """
    basis = basis.astype(np.float32)
    n, k = basis.shape
    b, c = target.shape[0], target.shape[2]
    yt = np.ascontiguousarray(np.moveaxis(np.asarray(target, np.float32), 2, 1)).reshape(b * c, n)  # (BC, N)
    w0 = np.repeat(np.asarray(weight, np.float32), c, axis=0)  # (BC, N)
    use = w0 > 0
    outer = (basis[:, :, None] * basis[:, None, :]).reshape(n, k * k)  # (N, K*K)
    eye = ridge * np.eye(k)
    w = w0
    iters = huber_iters + tukey_iters
    for it in range(iters + 1):
        # accumulate in float32 (fast products), solve the small K x K systems in float64
        ata = (w @ outer).reshape(-1, k, k).astype(np.float64) + eye
        atb = ((w * yt) @ basis).astype(np.float64)  # (BC, K)
        coef = np.linalg.solve(ata, atb[..., None])[..., 0].astype(np.float32)
        if it == iters:
            break
        absr = np.abs(yt - coef @ basis.T)  # (BC, N)
        scale = masked_row_median(absr, use)[:, None] / 0.6745 + 1e-4
        if it < huber_iters:
            w = w0 * np.minimum(1.0, huber * scale / np.maximum(absr, 1e-12), dtype=np.float32)
        else:
            u = np.minimum(absr / (tukey * scale), 1.0)
            w = w0 * np.square(1.0 - np.square(u))
    return coef.reshape(b, c, k).astype(np.float32)


def masked_row_median(values: np.ndarray, use: np.ndarray) -> np.ndarray:
    """Median (lower middle) of each row of ``values`` (R, N) over the entries where ``use``; 1.0 for rows with none."""
    count = use.sum(1)
    s = np.sort(np.where(use, values, np.inf), axis=1)
    mid = np.clip((count - 1) // 2, 0, values.shape[1] - 1)
    med = s[np.arange(len(s)), mid]
    return np.where(count > 0, med, 1.0)


def mirror_sample(image: np.ndarray, mirror_xy: np.ndarray) -> np.ndarray:
    """Sample an (S, S, C) atlas at the mirrored texel positions ``mirror_xy`` (S, S, 2) in texels."""
    import cv2

    out = cv2.remap(np.ascontiguousarray(image, np.float32), mirror_xy[..., 0] - 0.5, mirror_xy[..., 1] - 0.5,
                    interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(image.shape)  # cv2 drops a trailing axis of size 1


def estimate_spatial(reference: np.ndarray, valid: np.ndarray, skin: np.ndarray, mirror_xy: np.ndarray, *,
                     degree: int = 3):
    """Antisymmetric lighting of the reference atlas from its left/right differences.

    Args:
        reference: (S, S, 3) atlas (uint8 or float in 0..255).
        valid: bool (S, S) texels that hold face texture.
        skin: bool (S, S) skin texels.
        mirror_xy: float32 (S, S, 2) texel position of each texel's mirror image.
    Returns:
        (terms, coeffs (3, Ka)) with ``log A_norm = log A - field``.
    """
    size = reference.shape[0]
    terms = poly_terms(degree, odd_in_u=True)
    log_a = to_log(reference)
    both = skin & valid & (mirror_sample((skin & valid).astype(np.float32)[..., None], mirror_xy)[..., 0] > 0.99)
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    u, v = np.meshgrid(c, c)
    mu, mv = mirror_xy[..., 0] / size, mirror_xy[..., 1] / size
    diff_basis = poly_basis(u, v, terms) - poly_basis(mu, mv, terms)  # (S, S, Ka)
    d = log_a - mirror_sample(log_a, mirror_xy)
    idx = np.flatnonzero(both.ravel())
    if len(idx) < 50:
        return terms, np.zeros((3, len(terms)), np.float32)
    coef = robust_fit(diff_basis.reshape(-1, len(terms))[idx], d.reshape(-1, 3)[idx][None],
                      np.ones((1, len(idx))))[0]
    return terms, coef


def estimate_gains(atlases: np.ndarray, masks: np.ndarray, reference_log: np.ndarray, skin: np.ndarray, *,
                   degree: int = 2, max_points: int = 4000, seed: int = 0) -> tuple[list, np.ndarray]:
    """Per-frame smooth log-gain of ``atlases`` relative to the normalized reference.

    Args:
        atlases: uint8 (B, S, S, 3).
        masks: bool (B, S, S) valid texels of each atlas.
        reference_log: float32 (S, S, 3) log of the normalized reference atlas.
        skin: bool (S, S) skin texels valid in the reference.
        max_points: skin texels used in the fit (a fixed random subset, for speed).
    Returns:
        (terms, coeffs float32 (B, 3, K)); NaN for frames with fewer than 100 usable texels.
    """
    check_shape("atlases", atlases, ["B", "S", "S", 3])
    size = atlases.shape[1]
    terms = poly_terms(degree)
    idx = np.flatnonzero(skin.ravel())
    if len(idx) > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_points, replace=False))
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    u, v = np.meshgrid(c, c)
    basis = poly_basis(u.ravel()[idx], v.ravel()[idx], terms)
    flat = atlases.reshape(len(atlases), -1, 3)[:, idx]
    w = masks.reshape(len(masks), -1)[:, idx].astype(np.float32)
    target = to_log(flat) - reference_log.reshape(-1, 3)[idx][None]
    # very dark or saturated texels say little about the light
    w *= ((flat.min(-1) > 8) & (flat.max(-1) < 250)).astype(np.float32)
    coef = robust_fit(basis, target, w)
    coef[w.sum(1) < 100] = np.nan
    return terms, coef


def frame_gains(atlases: np.ndarray, masks: np.ndarray, reference_log: np.ndarray, skin: np.ndarray, *,
                degree: int, valid: np.ndarray, chunk: int = 256, each_chunk=None,
                workers: int = 1) -> tuple[list, np.ndarray]:
    """``estimate_gains`` over a whole clip, ``chunk`` frames at a time (atlases may be memory-mapped).

    The one loop that measures every frame's lighting: preprocessing normalizes each chunk in place
    right after it is measured (``each_chunk(slice, coeffs)``), synthesis measures a target's frames
    against a model's reference. Chunks run on ``workers`` threads (0: one per core; the results do
    not depend on it). Returns (terms, float32 (T, 3, K)); NaN where ``valid`` is False.
    """
    from .workers import BoundedPool

    n = len(atlases)
    terms = poly_terms(degree)
    gains = np.full((n, 3, len(terms)), np.nan, np.float32)

    def measure(sl: slice) -> None:
        _, coef = estimate_gains(atlases[sl], masks[sl], reference_log, skin, degree=degree)
        coef[~valid[sl]] = np.nan
        gains[sl] = coef
        if each_chunk is not None:
            each_chunk(sl, coef)

    with BoundedPool(workers, name="lighting") as pool:
        for start in range(0, n, chunk):
            pool.submit(measure, slice(start, min(n, start + chunk)))
    return terms, gains


def apply_log_gain(atlas: np.ndarray, field: np.ndarray, mask: np.ndarray | None = None, *, sign: float = -1.0) -> np.ndarray:
    """``atlas * exp(sign * field)`` as uint8; ``sign=-1`` removes the light, ``+1`` puts it back."""
    out = np.asarray(atlas, np.float32) * np.exp(sign * field)
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    if mask is not None:
        out[~mask] = 0
    return out
