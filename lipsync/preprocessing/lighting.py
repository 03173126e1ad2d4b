"""Stage 7 of preprocessing: lighting normalization of the whole clip (see ``lipsync.lighting`` for
the model). The reference atlas (a robust median of the reference frames) loses its left/right
lighting by symmetry; every frame's smooth lighting relative to it is measured and divided out in
place; frames that still look unlike the face are marked as outliers."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atlas import masked_median
from ..common import Progress
from ..lighting import (LightingParams, apply_log_gain, estimate_spatial, frame_gains, log_field, masked_row_median,
                        mirror_sample, poly_basis, poly_terms, to_log)
from ..workers import Counter
from .options import PreprocessOptions
from .reference import NormalizedPose
from .unwrap import AtlasLayout, Unwrapped

SKIN_SAMPLE = 4000  # skin texels the per-frame statistics use (a fixed random subset)
NORMALIZE_BATCH = 8  # frames normalized together (their per-texel temporaries fit in the CPU cache)


def mirror_texels(sampler, uv: np.ndarray, mirror: np.ndarray) -> np.ndarray:
    """float32 (S, S, 2): for each covered texel, the texel position of its mirror image.

    The same barycentric coordinates are applied to the mirrored vertices' UVs, which also works for
    the few triangles whose mirror image the tessellation splits the other way.
    """
    size = sampler.size
    c = np.arange(size, dtype=np.float32) + 0.5
    gx, gy = np.meshgrid(c, c)
    out = np.stack([gx, gy], -1).reshape(-1, 2)
    mirrored = np.einsum("nk,nkd->nd", sampler.bary, uv[mirror[sampler.vertex_index]]) * size
    out[sampler.texels] = mirrored
    return out.reshape(size, size, 2).astype(np.float32)


@dataclass
class NormalizedLighting:
    """Members:
        params: the spatial field of the reference and the per-frame gains (NaN for excluded frames).
        reference_atlas: uint8 (S, S, 3); the reference atlas with its left/right lighting removed.
        skin: bool (S, S); skin texels seen in the reference.
        outliers: bool (T,); frames excluded because they look unlike the face after normalization.
        stats: per-frame skin statistics (``LightingStats``), for the manifest and the arrays.
        summary: the manifest's lighting figures (``LightingStats.summary``).
    """
    params: LightingParams
    reference_atlas: np.ndarray
    skin: np.ndarray
    outliers: np.ndarray
    stats: "LightingStats"
    summary: dict


def normalize_lighting(unwrapped: Unwrapped, pose: NormalizedPose, valid: np.ndarray, layout: AtlasLayout,
                       mirror: np.ndarray, folder: Path, options: PreprocessOptions,
                       progress: Progress) -> NormalizedLighting:
    """7. Normalize the lighting of every atlas in place (``folder``'s ``atlas.npy``, a chunk at a time).

    With ``keep_raw_atlas`` the atlases are first copied to ``atlas_raw.npy``. Outlier frames are
    zeroed in the atlas; the caller removes them from ``valid`` and the per-frame geometry.
    """
    atlas, masks = unwrapped.atlas, unwrapped.masks
    n, size = len(atlas), layout.sampler.size
    if options.keep_raw_atlas:
        shutil.copyfile(folder / "atlas.npy", folder / "atlas_raw.npy")
    # 1. the reference atlas: median of the candidates, then its left/right lighting removed
    cand = np.asarray(pose.candidates)
    cand_masks = masks[cand]
    ref_raw = masked_median(atlas[cand], cand_masks)
    ref_valid = cand_masks.mean(0) >= 0.5
    ref_raw = np.where(ref_valid[..., None], np.nan_to_num(ref_raw), 0.0)
    mirror_xy = mirror_texels(layout.sampler, layout.layout.uv, mirror)
    skin = layout.regions["skin"] & ref_valid
    s_terms, s_coef = estimate_spatial(ref_raw, ref_valid, skin, mirror_xy, degree=options.spatial_degree)
    s_field = log_field(s_coef, s_terms, size)
    ref_log = to_log(ref_raw) - s_field
    ref_norm = apply_log_gain(ref_raw, s_field, ref_valid)
    # 2. every frame: measure its gains and divide them out, on the texels the mesh covers only;
    #    statistics on a fixed subset of skin texels
    stats = LightingStats(n)
    covered = np.flatnonzero(layout.sampler.covered_mask().ravel())
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    gu, gv = np.meshgrid(c, c)
    skin_cov = np.flatnonzero(skin.ravel()[covered])
    skin_cov = np.sort(np.random.default_rng(0).choice(skin_cov, min(len(skin_cov), SKIN_SAMPLE), replace=False))
    ref_skin = ref_log.reshape(-1, 3)[covered][skin_cov]
    t_terms = poly_terms(options.lighting_degree)
    basis_cov_t = np.ascontiguousarray(poly_basis(gu.ravel()[covered], gv.ravel()[covered], t_terms).T)  # (K, N)
    texel = np.dtype("V3")  # one texel's three colour bytes

    def normalize_chunk(sl: slice, coef: np.ndarray) -> None:
        ok = np.isfinite(coef).all(axis=(1, 2))
        # a few frames at a time: the per-texel temporaries stay in the CPU cache
        for start in range(sl.start, sl.stop, NORMALIZE_BATCH):
            sub = slice(start, min(sl.stop, start + NORMALIZE_BATCH))
            k = slice(sub.start - sl.start, sub.stop - sl.start)
            normalize_frames(sub, coef[k], ok[k])
        progress("lighting", done.add(sl.stop - sl.start), n)

    def normalize_frames(sl: slice, coef: np.ndarray, ok: np.ndarray) -> None:
        a, m = atlas[sl], masks[sl]  # memory maps of these frames of the output, normalized in place
        b = len(a)
        # texels outside ``covered`` are already zero and masked out by extract_atlas; each texel's
        # three bytes move as one item (``texel``), much faster than a (B, N, 3) fancy index
        a_texels, m_flat = a.reshape(b, -1, 3).view(texel)[..., 0], m.reshape(b, -1)
        m_cov = m_flat[:, covered] & ok[:, None]
        # log-gain of every covered texel: (B*3, K) @ (K, N) -> (B, 3, N)
        fld = (np.nan_to_num(coef).reshape(b * 3, -1) @ basis_cov_t).reshape(b, 3, -1)
        a_cov = np.take(a_texels, covered, axis=1).view(np.uint8).reshape(b, -1, 3)
        stats.add(np.arange(sl.start, sl.stop)[ok], a_cov[ok][:, skin_cov], m_cov[ok][:, skin_cov],
                  fld[ok][:, :, skin_cov].transpose(0, 2, 1), ref_skin)
        np.negative(fld, out=fld)
        np.exp(fld, out=fld)  # on the contiguous layout: fast
        fld *= m_cov[:, None, :]  # texels not seen become 0.5 below, so 0
        normed = np.ascontiguousarray(fld.transpose(0, 2, 1))  # (B, N, 3) gains
        np.multiply(a_cov, normed, out=normed)
        normed += 0.5
        normed = np.clip(normed, 0, 255, out=normed).astype(np.uint8)
        a_texels[:, covered] = normed.view(texel)[..., 0]
        m_flat[:, covered] = m_cov

    done = Counter()  # frames normalized so far (chunks finish in any order on several threads)
    _, gains = frame_gains(atlas, masks, ref_log, skin, degree=options.lighting_degree, valid=valid,
                           chunk=options.chunk, each_chunk=normalize_chunk, workers=options.workers)
    # 3. frames that look nothing like the face even after normalization are excluded
    outliers = stats.outliers(valid)
    for t in np.flatnonzero(outliers):
        atlas[t], masks[t] = 0, False
    gains[outliers] = np.nan
    sym_before, sym_after = asymmetry(to_log(ref_raw), ref_log, skin, mirror_xy)
    params = LightingParams(spatial_terms=s_terms, spatial=s_coef, temporal_terms=t_terms, gains=gains)
    return NormalizedLighting(params=params, reference_atlas=ref_norm, skin=skin, outliers=outliers, stats=stats,
                              summary=stats.summary(valid & ~outliers, sym_before, sym_after))


class LightingStats:
    """Per frame: how far skin texels are from the reference before and after normalization.

    ``mean_*``: mean log intensity over skin (its spread over time is the temporal lighting change);
    ``res_*``: median absolute log difference to the normalized reference (NaN for frames not seen).
    """

    def __init__(self, frames: int):
        self.mean_before, self.mean_after, self.res_before, self.res_after, self.corr = (
            np.full(frames, np.nan) for _ in range(5))

    def add(self, index: np.ndarray, atlas: np.ndarray, mask: np.ndarray, field: np.ndarray, ref: np.ndarray) -> None:
        """index int (B,) frame numbers; atlas uint8 (B, N, 3), mask bool (B, N), field (B, N, 3),
        ref (N, 3): skin texels of a batch."""
        keep = mask.sum(1) >= 50
        if not keep.any():
            return
        index, la, mk, fl = index[keep], to_log(atlas[keep]), mask[keep], field[keep]
        ln = la - fl
        use = np.repeat(mk, 3, axis=1)  # (B, N*3), matching the flattened texel-channel values
        count = use.sum(1)
        b = len(la)
        self.mean_before[index] = (la.reshape(b, -1) * use).sum(1) / count
        self.mean_after[index] = (ln.reshape(b, -1) * use).sum(1) / count
        self.res_before[index] = masked_row_median(np.abs(la - ref).reshape(b, -1), use)
        self.res_after[index] = masked_row_median(np.abs(ln - ref).reshape(b, -1), use)
        # structure: correlation of log luminance with the reference over the skin (gain-invariant)
        lum, ref_lum, w = la.mean(-1), ref.mean(-1)[None], mk.astype(np.float64)
        n_ = w.sum(1, keepdims=True)
        x = lum - (lum * w).sum(1, keepdims=True) / n_
        y = ref_lum - (ref_lum * w).sum(1, keepdims=True) / n_
        sxy, sxx, syy = (x * y * w).sum(1), (x * x * w).sum(1), (y * y * w).sum(1)
        self.corr[index] = sxy / np.sqrt(np.maximum(sxx * syy, 1e-12))

    def outliers(self, valid: np.ndarray, *, sds: float = 8.0) -> np.ndarray:
        """bool (T,): valid frames whose normalized skin is unlike the reference (corrupt or grey
        frames, a hand over the face, a tracker that lost the face for a moment).

        Either the residual to the reference is far above the clip's usual (median + 8 robust SDs,
        and 1.5x the median), or the skin's structure no longer correlates with the reference's
        (below median - 8 robust SDs, and 0.15 below the median).
        """
        out = np.zeros(len(valid), bool)
        r = np.where(valid, self.res_after, np.nan)
        c = np.where(valid, self.corr, np.nan)
        if np.isfinite(r).sum() < 10:
            return out
        robust_sd = lambda a, m: 1.4826 * np.nanmedian(np.abs(a - m))  # noqa: E731
        med_r, med_c = np.nanmedian(r), np.nanmedian(c)
        out |= np.nan_to_num(r, nan=-np.inf) > max(med_r + sds * robust_sd(r, med_r), 1.5 * med_r)
        out |= np.nan_to_num(c, nan=np.inf) < min(med_c - sds * robust_sd(c, med_c), med_c - 0.15)
        return out

    def summary(self, valid: np.ndarray, sym_before: float, sym_after: float) -> dict:
        f = lambda v: round(float(v), 5) if np.isfinite(v) else 0.0  # noqa: E731
        pick = lambda a: a[valid & np.isfinite(a)]  # noqa: E731
        stat = lambda fn, a: f(fn(pick(a))) if pick(a).size else 0.0  # noqa: E731
        return {
            "temporal_std_before": stat(np.std, self.mean_before),
            "temporal_std_after": stat(np.std, self.mean_after),
            "residual_before": stat(np.median, self.res_before),
            "residual_after": stat(np.median, self.res_after),
            "asymmetry_before": f(sym_before),
            "asymmetry_after": f(sym_after),
            "units": "log intensity (0.1 ~ 10% brightness)",
        }


def asymmetry(log_before: np.ndarray, log_after: np.ndarray, skin: np.ndarray, mirror_xy: np.ndarray):
    """Median left/right log difference over skin of the reference before and after the spatial step."""
    out = []
    for la in (log_before, log_after):
        d = np.abs(la - mirror_sample(la, mirror_xy))[skin]
        out.append(float(np.median(d)) if d.size else 0.0)
    return out
