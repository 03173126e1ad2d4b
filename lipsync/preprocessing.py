"""``lipsync preprocess``: one talking-head video -> a prepared clip (see ``prepared.py``).

Steps (each timed in the manifest's ``timings_s``):
 1. probe      check the file, read its format
 2. track      decode and track one face per frame (MediaPipe FaceMesh, tracking mode)
 3. clean      fill short tracking gaps, exclude long ones
 4. pose       choose the reference frame, build the canonical shape, fit per-frame similarities,
               smooth pose and shape without lag
 5. uv         build the speaker's UV layout and the atlas sampler
 6. atlas      decode again and unwrap every frame into the atlas
 7. lighting   spatial (symmetry) and temporal (skin albedo) lighting normalization
 8. audio      extract the speech track, 16 kHz mono, aligned to frame 0
 9. previews   pictures and plots for a person to check
10. write      manifest, then an atomic rename of the finished folder
"""
from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .atlas import build_sampler, extract_atlas, region_masks
from .common import LipsyncError, Progress
from .files import atomic_output
from .lighting import (LightingParams, apply_log_gain, estimate_gains, estimate_spatial, log_field, masked_row_median,
                       poly_basis, poly_terms, to_log)
from .media import FrameReader, extract_aligned_audio, ffmpeg_version, probe, write_wav
from .pose import HeadPose, apply_similarity, fit_similarity, normalize_poses, symmetry_frame
from .prepared import ARRAYS, FORMAT_VERSION, MANIFEST, REGION_NAMES, array_entry
from .sync import estimate_sync, realign_audio
from .temporal import detect_cuts, fill_gaps, savgol_window, smooth
from .topology import (CHIN, FOREHEAD_TOP, INNER_LIP_BOTTOM, INNER_LIP_TOP, LEFT_EYE_LIDS, LEFT_EYE_OUTER,
                       MOUTH_CORNERS, RIGHT_EYE_LIDS, RIGHT_EYE_OUTER, FaceTopology, load_topology)
from .tracking import MediaPipeTracker, track_frames
from .uvmap import build_uv_layout



@dataclass(frozen=True)
class PreprocessOptions:
    """Settings of ``preprocess`` (all have defaults that suit 1-5 minute talking-head videos)."""
    atlas_size: int = 256            # atlas side in texels
    max_gap_s: float = 0.5           # tracking gaps up to this long are interpolated, longer are excluded
    pose_smooth_s: float = 0.28      # Savitzky-Golay window for head pose (zero phase)
    shape_smooth_s: float = 0.2      # window for the non-rigid face shape (short: keeps lip motion)
    reference_candidates: int = 15   # frames averaged into the reference shape and reference atlas
    lighting_degree: int = 2         # per-frame gain field: 2D polynomial degree (6 terms)
    spatial_degree: int = 2          # left/right lighting field: odd-in-u polynomial degree (u, u*v)
    keep_raw_atlas: bool = False     # also store the atlas before lighting normalization
    min_seconds: float = 1.0         # shorter videos are refused
    require_audio: bool = True       # refuse videos without sound (a synthesis target needs none)
    sync_audio: bool = True          # measure the audio/lip offset and re-align out-of-sync audio
    chunk: int = 256                 # frames per batch in the lighting step
    previews: bool = True


@dataclass
class Timer:
    timings: dict = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        yield
        self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t0, 4)


def _tqdm_progress(enabled: bool) -> Progress:
    bars = {}

    def update(stage: str, done: int, total: int) -> None:
        if not enabled:
            return
        from tqdm import tqdm

        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=f"{stage:>8}", unit="frame", leave=True,
                                     dynamic_ncols=True, file=sys.stderr)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update


# ------------------------------------------------------------------------------------------
# per-frame measures

def face_measures(landmarks: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame mouth opening, eye opening (both relative to eye distance) and face width in pixels."""
    eye = np.linalg.norm(landmarks[:, LEFT_EYE_OUTER, :2] - landmarks[:, RIGHT_EYE_OUTER, :2], axis=-1)
    mouth = np.linalg.norm(landmarks[:, INNER_LIP_TOP] - landmarks[:, INNER_LIP_BOTTOM], axis=-1) / eye
    eyes = 0.5 * (np.linalg.norm(landmarks[:, RIGHT_EYE_LIDS[0]] - landmarks[:, RIGHT_EYE_LIDS[1]], axis=-1)
                  + np.linalg.norm(landmarks[:, LEFT_EYE_LIDS[0]] - landmarks[:, LEFT_EYE_LIDS[1]], axis=-1)) / eye
    width = landmarks[:, :, 0].max(1) - landmarks[:, :, 0].min(1)
    return {"mouth": mouth, "eyes": eyes, "face_width": width}


def mouth_opening(vertices: np.ndarray) -> np.ndarray:
    """Inner-lip gap over mouth-corner distance (T,), from pose-normalized vertices."""
    gap = np.linalg.norm(vertices[:, INNER_LIP_TOP] - vertices[:, INNER_LIP_BOTTOM], axis=-1)
    width = np.linalg.norm(vertices[:, MOUTH_CORNERS[0]] - vertices[:, MOUTH_CORNERS[1]], axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):  # excluded frames: NaN
        return gap / width


def choose_reference(landmarks: np.ndarray, valid: np.ndarray, topo: FaceTopology, count: int):
    """Pick the most frontal frame with the mouth closed and the eyes open.

    Yaw and roll come from the face's own symmetry (absolute); pitch is measured against the
    clip's median (a face has no symmetry to define absolute pitch). Returns the best frame and
    the ``count`` best frames (best first).
    """
    idx = np.flatnonzero(valid)
    lm = landmarks[idx]
    rot, _ = symmetry_frame(lm, topo.mirror, use=topo.regions["stable"])
    yaw_roll = np.degrees(np.arccos(np.clip((np.trace(rot, axis1=1, axis2=2) - 1) / 2, -1, 1)))
    # pitch proxy: the direction from forehead to chin in the camera's y-z plane
    d = lm[:, CHIN] - lm[:, FOREHEAD_TOP]
    pitch = np.degrees(np.arctan2(d[:, 2], d[:, 1]))
    pitch_dev = pitch - np.median(pitch)
    m = face_measures(lm)
    closed = m["mouth"] <= np.quantile(m["mouth"], 0.2) + 1e-6
    eyes_open = m["eyes"] >= 0.7 * np.median(m["eyes"])
    penalty = np.where(closed & eyes_open, 0.0, 90.0)
    score = np.hypot(yaw_roll, pitch_dev) + penalty
    order = np.argsort(score, kind="stable")
    return int(idx[order[0]]), idx[order[:count]]


def canonical_reference(landmarks: np.ndarray, frames: np.ndarray, topo: FaceTopology) -> np.ndarray:
    """Canonical shape: the chosen frames, frontalized (yaw and roll removed by symmetry), aligned
    on the stable vertices to the best one and averaged; centred on the stable vertices and scaled
    so their RMS radius is 1."""
    stable = topo.regions["stable"]
    rot, center = symmetry_frame(landmarks[frames[0]], topo.mirror, use=stable)
    base = (landmarks[frames[0]] - center) @ rot.T
    shapes = []
    for f in frames:
        s, r, t = fit_similarity(landmarks[f][stable], base[stable])
        shapes.append(apply_similarity(landmarks[f][None], s[None], r[None], t[None])[0])
    ref = np.mean(shapes, axis=0)
    ref -= ref[stable].mean(0)
    ref /= np.sqrt((ref[stable] ** 2).sum(1).mean())
    return ref.astype(np.float32)


def smooth_pose(pose: HeadPose, valid: np.ndarray, window: int, breaks: np.ndarray | None = None) -> HeadPose:
    """Zero-phase smoothing of rotation (as rotation vectors), log scale and translation."""
    from scipy.spatial.transform import Rotation

    rot = pose.rotation.copy()
    if valid.any():
        vec = np.zeros((len(rot), 3), np.float32)
        vec[valid] = Rotation.from_matrix(rot[valid].astype(np.float64)).as_rotvec()
        vec = smooth(vec, valid, window=window, breaks=breaks)
        rot[valid] = Rotation.from_rotvec(vec[valid].astype(np.float64)).as_matrix()
    log_s = smooth(np.log(np.where(valid, pose.scale, 1.0)), valid, window=window, breaks=breaks)
    trans = smooth(pose.translation, valid, window=window, breaks=breaks)
    scale = np.where(valid, np.exp(log_s), np.nan).astype(np.float32)
    return HeadPose(scale=scale, rotation=rot.astype(np.float32), translation=trans)


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


# ------------------------------------------------------------------------------------------

def versions() -> dict:
    out = {"lipsync": __version__, "python": platform.python_version(), "numpy": np.__version__,
           "ffmpeg": ffmpeg_version()}
    for mod in ("mediapipe", "cv2", "scipy"):
        try:
            out["opencv" if mod == "cv2" else mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a version string is informative only
            out[mod] = "unknown"
    return out


def _save(folder: Path, name: str, array: np.ndarray, arrays: dict) -> None:
    np.save(folder / f"{name}.npy", array)
    arrays[name] = array_entry(name, array)


def preprocess(video: str | Path, out: str | Path, *, options: PreprocessOptions = PreprocessOptions(),
               overwrite: bool = False, progress: Progress | None = None, tracker_factory=None) -> Path:
    """Prepare one talking-head video for training; returns the prepared clip's folder.

    Raises ``LipsyncError`` (one sentence) for bad input; nothing is left at ``out`` on failure.
    """
    timer = Timer()
    t_start = time.perf_counter()
    progress = progress or (lambda stage, done, total: None)
    out = Path(out)
    topo = load_topology()
    warnings: list[str] = []

    # 1. probe
    with timer.stage("probe"):
        info = probe(video)
        if info.frames < 2 or info.duration < options.min_seconds:
            raise LipsyncError(f"{info.path} is too short ({info.frames} frame(s), {info.duration:.2f} s); give at least {options.min_seconds:g} s of video (1-5 minutes works best).")
        if not info.has_audio and options.require_audio:
            extract_aligned_audio(info, 0)  # raises the no-audio error before any slow work

    with atomic_output(out, overwrite=overwrite, marker=MANIFEST, what="prepared clip") as tmp:
        # 2. track
        with timer.stage("track"):
            reader = FrameReader(info)
            total = max(info.frames, 1)

            def on_frame(i, frame, pts):
                if i % 25 == 0:
                    progress("track", min(i + 1, total), total)

            tracker = tracker_factory() if tracker_factory else MediaPipeTracker()
            try:
                track = track_frames(reader, fps=info.fps, width=info.width, height=info.height,
                                     tracker=tracker, on_frame=on_frame)
            finally:
                tracker.close()
            progress("track", total, total)
            n = len(track)
            if n < 2:
                raise LipsyncError(f"{info.path} has {n} decodable frame(s); it is empty, corrupt or truncated, so give a complete video.")
            if n < 0.95 * info.frames - 2:
                raise LipsyncError(f"{info.path} looks truncated or corrupt: only {n} of {info.frames} frames could be decoded; re-export or re-download the video.")
            if n / info.fps < options.min_seconds:
                raise LipsyncError(f"{info.path} is too short ({n} frames at {info.fps:g} fps); give at least {options.min_seconds:g} s of video.")
            if not track.tracked.any():
                raise LipsyncError(f"No face was found in {info.path}; give a video where one person's face is clearly visible and facing the camera.")

        # 3. clean: interpolate short gaps, exclude long ones
        with timer.stage("clean"):
            max_gap = int(np.floor(options.max_gap_s * info.fps))
            cuts = detect_cuts(track.landmarks, topo.regions["stable"])
            filled, valid, interpolated = fill_gaps(track.landmarks, track.tracked, max_gap, breaks=cuts)
            if valid.sum() < max(2, options.min_seconds * info.fps):
                raise LipsyncError(f"A face was found in only {int(track.tracked.sum())} of {n} frames of {info.path}; give a video where the face is visible most of the time.")

        # 4. pose normalization
        with timer.stage("pose"):
            ref_frame, candidates = choose_reference(filled, valid, topo, options.reference_candidates)
            reference = canonical_reference(filled, candidates, topo)
            pose = normalize_poses(filled, reference, topo.regions["stable"], valid=valid)
            pose = smooth_pose(pose, valid, savgol_window(info.fps, options.pose_smooth_s), breaks=cuts)
            verts = pose.invert(np.nan_to_num(filled))
            verts = smooth(verts, valid, window=savgol_window(info.fps, options.shape_smooth_s), polyorder=3,
                           breaks=cuts)
            verts[~valid] = np.nan
            landmarks = pose.apply(np.nan_to_num(verts))
            landmarks[~valid] = np.nan

        # 5. uv layout and sampler
        with timer.stage("uv"):
            layout = build_uv_layout(reference, topo)
            size = options.atlas_size
            sampler = build_sampler(layout.uv, reference, topo, size)
            regions = region_masks(layout.uv, topo, size, sampler.covered_mask())

        # 6. atlas extraction (raw atlases go straight into the memory-mapped output file)
        with timer.stage("atlas"):
            atlas = np.lib.format.open_memmap(tmp / "atlas.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
            masks = np.lib.format.open_memmap(tmp / "atlas_mask.npy", mode="w+", dtype=bool, shape=(n, size, size))
            preview_idx = _spread(np.flatnonzero(valid), 16)
            keep = set(preview_idx.tolist()) | {ref_frame}
            kept_frames, kept_raw = {}, {}
            for i, frame in enumerate(FrameReader(info, max_frames=n)):
                if valid[i]:
                    atlas[i], masks[i] = extract_atlas(frame, landmarks[i], float(pose.scale[i]), sampler, topo.faces)
                if i in keep:
                    kept_frames[i] = frame.copy()
                    kept_raw[i] = np.array(atlas[i])
                if i % 25 == 0:
                    progress("atlas", i + 1, n)
            progress("atlas", n, n)

        # 7. lighting normalization
        with timer.stage("lighting"):
            if options.keep_raw_atlas:
                atlas.flush()
                shutil.copyfile(tmp / "atlas.npy", tmp / "atlas_raw.npy")
            cand = np.asarray(candidates)
            cand_masks = np.asarray(masks[cand])
            cand_atlas = np.where(cand_masks[..., None], np.asarray(atlas[cand], np.float32), np.nan)
            with np.errstate(all="ignore"):
                import warnings as _w
                with _w.catch_warnings():
                    _w.simplefilter("ignore", RuntimeWarning)
                    ref_raw = np.nanmedian(cand_atlas, axis=0)
            ref_valid = cand_masks.mean(0) >= 0.5
            ref_raw = np.where(ref_valid[..., None], np.nan_to_num(ref_raw), 0.0)
            mirror_xy = mirror_texels(sampler, layout.uv, topo.mirror)
            skin = regions["skin"] & ref_valid
            s_terms, s_coef = estimate_spatial(ref_raw, ref_valid, skin, mirror_xy, degree=options.spatial_degree)
            s_field = log_field(s_coef, s_terms, size)
            ref_log = to_log(ref_raw) - s_field
            ref_norm = apply_log_gain(ref_raw, s_field, ref_valid)
            gains = np.full((n, 3, len(poly_terms(options.lighting_degree))), np.nan, np.float32)
            stats = _LightingStats(n)
            t_terms = poly_terms(options.lighting_degree)
            # Work on the texels the mesh covers only; statistics on a fixed subset of skin texels.
            covered = np.flatnonzero(sampler.covered_mask().ravel())
            c = (np.arange(size, dtype=np.float32) + 0.5) / size
            gu, gv = np.meshgrid(c, c)
            basis_cov_t = np.ascontiguousarray(poly_basis(gu.ravel()[covered], gv.ravel()[covered], t_terms).T)  # (K, N)
            skin_cov = np.flatnonzero(skin.ravel()[covered])
            skin_cov = np.sort(np.random.default_rng(0).choice(skin_cov, min(len(skin_cov), 4000), replace=False))
            ref_skin = ref_log.reshape(-1, 3)[covered][skin_cov]
            for start in range(0, n, options.chunk):
                sl = slice(start, min(n, start + options.chunk))
                a, m = atlas[sl], masks[sl]  # views into the memory-mapped output, normalized in place
                _, coef = estimate_gains(a, m, ref_log, skin, degree=options.lighting_degree)
                coef[~valid[sl]] = np.nan
                gains[sl] = coef
                ok = np.isfinite(coef).all(axis=(1, 2))
                b = len(a)
                # texels outside ``covered`` are already zero and masked out by extract_atlas
                a_flat, m_flat = a.reshape(b, -1, 3), m.reshape(b, -1)
                m_cov = m_flat[:, covered] & ok[:, None]
                # log-gain of every covered texel: (B*3, K) @ (K, N) -> (B, 3, N)
                fld = (np.nan_to_num(coef).reshape(b * 3, -1) @ basis_cov_t).reshape(b, 3, -1)
                a_cov = a_flat[:, covered]
                stats.add(np.arange(sl.start, sl.stop)[ok], a_cov[ok][:, skin_cov], m_cov[ok][:, skin_cov],
                          fld[ok][:, :, skin_cov].transpose(0, 2, 1), ref_skin)
                np.negative(fld, out=fld)
                normed = a_cov * np.exp(fld, out=fld).transpose(0, 2, 1)  # exp on the contiguous layout: fast
                normed += 0.5
                normed = np.clip(normed, 0, 255, out=normed).astype(np.uint8)
                normed[~m_cov] = 0
                a_flat[:, covered] = normed
                m_flat[:, covered] = m_cov
                progress("lighting", sl.stop, n)
            # frames that look nothing like the face even after normalization are excluded
            outliers = stats.outliers(valid)
            for t in np.flatnonzero(outliers):
                atlas[t], masks[t] = 0, False
            valid &= ~outliers
            gains[outliers] = np.nan
            for arr in (verts, landmarks, pose.scale, pose.rotation, pose.translation):
                arr[outliers] = np.nan
            atlas.flush()
            masks.flush()
            lighting = LightingParams(spatial_terms=s_terms, spatial=s_coef, temporal_terms=t_terms, gains=gains)
            sym_before, sym_after = _asymmetry(to_log(ref_raw), ref_log, skin, mirror_xy)

        mouth_series = manifest_mouth(verts, valid)  # (T,) mouth opening; NaN in excluded frames

        # 8. audio
        with timer.stage("audio"):
            audio = (extract_aligned_audio(info, n) if info.has_audio
                     else np.zeros(int(round(n / info.fps * 16000)), np.float32))
            sync: dict = {"applied": False}
            if info.has_audio and options.sync_audio:
                shots, sync = estimate_sync(audio, mouth_series, valid, cuts, info.fps)
                if sync["applied"]:
                    audio = realign_audio(audio, shots, info.fps, n)
                    sync["shots"] = [[sh.start, sh.end, sh.offset] for sh in shots]
                    offs = [sh.offset for sh in shots]
                    warnings.append(f"the sound was out of sync with the lips ({min(offs):+.2f} to {max(offs):+.2f} s over the clip); it was re-aligned")
            write_wav(tmp / "audio.wav", audio)

        # 9. arrays and previews
        arrays: dict = {}
        with timer.stage("write"):
            del atlas, masks
            arrays["atlas"] = array_entry("atlas", np.empty((n, size, size, 3), np.uint8))
            arrays["atlas_mask"] = array_entry("atlas_mask", np.empty((n, size, size), bool))
            if options.keep_raw_atlas:
                arrays["atlas_raw"] = array_entry("atlas_raw", np.empty((n, size, size, 3), np.uint8))
            for name, arr in (("landmarks", landmarks), ("landmarks_raw", track.landmarks), ("tracked", track.tracked),
                              ("valid", valid), ("interpolated", interpolated), ("cuts", cuts), ("pose_scale", pose.scale),
                              ("pose_rotation", pose.rotation), ("pose_translation", pose.translation),
                              ("vertices", verts.astype(np.float32)), ("reference_vertices", reference),
                              ("faces", topo.faces.astype(np.int32)), ("uv", layout.uv), ("reference_atlas", ref_norm),
                              ("region_masks", np.stack([regions[k] for k in REGION_NAMES])),
                              ("lighting_gains", gains), ("skin_residual", stats.res_after.astype(np.float32)),
                              ("skin_correlation", stats.corr.astype(np.float32)), ("lighting_spatial", s_coef.astype(np.float32)),
                              ("mouth_opening", mouth_series.astype(np.float32))):
                _save(tmp, name, np.asarray(arr), arrays)
            assert set(ARRAYS) <= set(arrays), set(ARRAYS) - set(arrays)

        euler = pose.euler_degrees()[valid]
        measures = face_measures(filled[valid])
        usable_s = float(valid.sum() / info.fps)
        valid_fraction = float(valid.mean())
        faces_max = int(track.faces_seen.max()) if n else 0
        if usable_s < 60:
            warnings.append(f"only {usable_s:.0f} s of usable frames: quality will be limited (1-5 minutes of video works best)")
        if outliers.any():
            warnings.append(f"{int(outliers.sum())} frame(s) looked unlike the face even after normalization (corrupt frames, occlusions) and were excluded")
        if valid_fraction < 0.9:
            warnings.append(f"the face was usable in only {100 * valid_fraction:.0f}% of frames")
        if faces_max > 1:
            warnings.append(f"up to {faces_max} faces were seen; the largest one was followed")
        face_px = float(np.median(measures["face_width"]))
        if face_px < 120:
            warnings.append(f"the face is small ({face_px:.0f} px wide): the {size}x{size} atlas is upsampled and fine detail is limited")
        lstats = stats.summary(valid, sym_before, sym_after)
        if lstats["temporal_std_before"] > 0.15:
            warnings.append("the lighting changes strongly over the clip; normalization removes smooth changes but hard shadows remain")
        yaw_range = float(np.ptp(euler[:, 0])) if len(euler) else 0.0
        if yaw_range > 50:
            warnings.append(f"the head turns a lot ({yaw_range:.0f} degrees of yaw): texels seen only from the side are sparse")

        manifest = {
            "format_version": FORMAT_VERSION,
            "source": str(Path(video).resolve()),
            "fps": info.fps,
            "frames": n,
            "width": info.width,
            "height": info.height,
            "duration_s": round(n / info.fps, 4),
            "valid_fraction": round(valid_fraction, 6),
            "tracked_fraction": round(float(track.tracked.mean()), 6),
            "interpolated_frames": int(interpolated.sum()),
            "excluded_frames": int((~valid).sum()),
            "appearance_outliers": int(outliers.sum()),
            "cuts": np.flatnonzero(cuts).tolist(),
            "usable_s": round(usable_s, 3),
            "faces_seen_max": faces_max,
            "face_width_px": round(face_px, 1),
            "atlas_size": size,
            "reference_frame": ref_frame,
            "reference_candidates": [int(c) for c in candidates],
            "uv": {"mouth_open": layout.mouth_open, "scale": layout.scale},
            "pose": {"convention": "landmarks = scale * rotation @ vertices + translation",
                     "yaw_deg": _range(euler[:, 0]), "pitch_deg": _range(euler[:, 1]), "roll_deg": _range(euler[:, 2])},
            "lighting": {"log_space": True, "temporal_terms": [list(t) for t in t_terms],
                         "spatial_terms": [list(t) for t in s_terms],
                         "field": "log_gain(u,v) = sum_k c_k * (2u-1)^i_k * (2v-1)^j_k per RGB channel; atlas = normalized * exp(log_gain)",
                         **lstats},
            "audio": {"file": "audio.wav", "sample_rate": 16000, "samples": int(len(audio)),
                      "samples_per_frame": 16000 / info.fps},
            "sync": sync,
            "region_names": list(REGION_NAMES),
            "arrays": arrays,
            "options": {k: v for k, v in options.__dict__.items()},
            "warnings": warnings,
            "versions": versions(),
        }
        if options.previews:
            from .previews import write_previews

            with timer.stage("previews"):
                manifest["previews"] = write_previews(
                    tmp / "previews", topo=topo, landmarks=landmarks, ref_frame=ref_frame, kept_frames=kept_frames,
                    kept_raw=kept_raw, preview_idx=preview_idx, uv=layout.uv, size=size, lighting=lighting,
                    skin=skin, face_area=sampler.covered_mask(), valid=valid, euler=pose.euler_degrees(), fps=info.fps, atlas_path=tmp / "atlas.npy",
                    mouth=mouth_series)
        timer.timings["total"] = round(time.perf_counter() - t_start, 4)
        manifest["timings_s"] = timer.timings
        manifest["frames_per_second"] = round(n / timer.timings["total"], 2)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return out


def manifest_mouth(verts: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return np.where(valid, mouth_opening(np.nan_to_num(verts)), np.nan)


def _range(x: np.ndarray) -> list[float]:
    return [round(float(np.min(x)), 2), round(float(np.max(x)), 2)] if len(x) else [0.0, 0.0]


def _spread(idx: np.ndarray, k: int) -> np.ndarray:
    if len(idx) <= k:
        return idx
    return idx[np.linspace(0, len(idx) - 1, k).round().astype(int)]


class _LightingStats:
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


def _asymmetry(log_before: np.ndarray, log_after: np.ndarray, skin: np.ndarray, mirror_xy: np.ndarray):
    from .lighting import mirror_sample

    out = []
    for la in (log_before, log_after):
        d = np.abs(la - mirror_sample(la, mirror_xy))[skin]
        out.append(float(np.median(d)) if d.size else 0.0)
    return out
