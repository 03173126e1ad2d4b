"""The ``no_pose_norm`` ablation: lipsync's model trained on aligned 2D face crops.

LipSync3D's ablation takes the texture from a 2D face crop instead of the atlas of the
pose-normalized 3D mesh. ``prepare_crop2d`` writes such a crop clip in the prepared-clip format
that ``lipsync.training.train`` reads, so the very same network and training are used; only
the data differ:

* ``atlas`` (T, S, S, 3) is each frame's crop aligned to a 2D template by an in-plane similarity
  (``eval.methods.face2d``); head turns and nods stay in the texture. Colours are RAW: no
  lighting normalization (``lighting_gains`` are zero, i.e. the identity), so the ablation
  removes the 3D pose normalization and the lighting normalization together, which is how the
  atlas of a 2D crop comes out.
* ``atlas_mask``: canvas pixels that fall inside the frame (all of the canvas for a face well
  inside the picture); nothing in excluded frames.
* ``reference_atlas``: the per-pixel median crop of the source clip's reference candidates
  (frontal, mouth closed); ``region_masks`` (skin, mouth, lower_face, eyes) are drawn from the
  template as lipsync draws them from its UV layout; ``uv`` is the template divided by S.
* ``vertices`` / ``reference_vertices``: the 2D-aligned landmarks in canvas units / S (z scaled
  alike), so the geometry branch still has a target; ``pose_*`` hold the exact inverse of each
  frame's 2D transform in lipsync's pose convention (``landmarks = s R v + t``).
* ``landmarks``, ``valid``, ``cuts``... and ``audio.wav`` are the source clip's.

``render_crop2d`` inserts such a model's predictions into a test clip: the predicted canvas is
pasted into each target frame with that frame's own 2D transform through a feathered lower-face
mask. ``fit_no_pose_norm`` prepares and trains it (cached).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from lipsync.common import LipsyncError

from lipsync.files import content_key

from lipsync.synthesis.schedule import ping_pong

from ..core import EVAL_CRF, RunContext, TestClip
from .face2d import (TEMPLATE_SIZE, CropTemplate, blend_mask, crop_transforms, make_template, template_regions,
                     transform_points, warp_crop)

CODE_VERSION = "crop2d-1"  # bump when prepare_crop2d's output changes, so cached models are rebuilt
STAT_TEXELS = 4000         # skin pixels sampled for the per-frame residual/correlation statistics


def tiny_options():
    """The 'tiny' preset (tests, smoke runs): seconds on a CPU."""
    from lipsync.training import TrainOptions

    return TrainOptions(steps=40, batch=8, val_every=20)


def train_options(preset: str, seed: int = 0):
    """lipsync's ``TrainOptions`` for an eval preset ('tiny' or one of ``lipsync.training.PRESETS``),
    with the run's seed."""
    from lipsync.training import PRESETS

    if preset == "tiny":
        opts = tiny_options()
    elif preset in PRESETS:
        opts = PRESETS[preset]
    else:
        raise LipsyncError(f"unknown preset {preset!r}; choose one of tiny, {', '.join(PRESETS)}.")
    return dataclasses.replace(opts, seed=int(seed))


def _save(folder: Path, name: str, array: np.ndarray, arrays: dict) -> None:
    from lipsync.prepared import array_entry

    np.save(folder / f"{name}.npy", array)
    arrays[name] = array_entry(name, array)


def _skin_stats(atlas: np.ndarray, mask: np.ndarray, valid: np.ndarray, skin: np.ndarray, reference: np.ndarray):
    """Per frame (T,): median |log crop - log reference| and the correlation of log luminance over
    a fixed sample of skin pixels (NaN where fewer than 50 are seen)."""
    from lipsync.lighting import to_log

    idx = np.flatnonzero(skin.ravel())
    idx = np.sort(np.random.default_rng(0).choice(idx, min(len(idx), STAT_TEXELS), replace=False))
    ref = to_log(reference.reshape(-1, 3)[idx])
    res = np.full(len(atlas), np.nan, np.float32)
    corr = np.full(len(atlas), np.nan, np.float32)
    for t in np.flatnonzero(valid):
        use = mask[t].ravel()[idx]
        if use.sum() < 50:
            continue
        la = to_log(np.asarray(atlas[t]).reshape(-1, 3)[idx][use])
        rf = ref[use]
        res[t] = np.median(np.abs(la - rf))
        x, y = la.mean(-1) - la.mean(), rf.mean(-1) - rf.mean()
        corr[t] = float((x * y).sum() / np.sqrt(max((x * x).sum() * (y * y).sum(), 1e-12)))
    return res, corr


def prepare_crop2d(prepared_clip_dir: str | Path, video: str | Path, out_dir: str | Path, *,
                   size: int = TEMPLATE_SIZE, progress=None) -> Path:
    """Write the 2D-crop version of a prepared clip to ``out_dir`` (see the module docstring).

    Args:
        prepared_clip_dir: a clip prepared by lipsync from ``video``.
        video: the video the clip was prepared from (decoded again for the crops).
        out_dir: new folder (must not exist or be empty); written atomically.
        size: canvas side S.
    Returns:
        ``out_dir``. Raises ``LipsyncError`` if the video does not match the prepared clip.
    """
    from lipsync.atlas import masked_median
    from lipsync.files import atomic_output
    from lipsync.media import FrameReader, probe
    from lipsync.prepared import ARRAYS, MANIFEST, REGION_NAMES, open_prepared
    from lipsync.face_measures import mouth_opening
    from lipsync.topology import load_topology

    t0 = time.perf_counter()
    progress = progress or (lambda stage, done, total: None)
    src = open_prepared(prepared_clip_dir)
    man = src.manifest
    n = src.num_frames
    info = probe(video)
    if (info.width, info.height) != (src.info.width, src.info.height) or info.frames < 0.95 * n - 2:
        raise LipsyncError(f"{video} ({info.width}x{info.height}, {info.frames} frames) is not the video {src.path} was prepared from ({src.info.width}x{src.info.height}, {n} frames); give the matching video.")
    landmarks = np.array(src.array("landmarks"), np.float32)
    valid = np.array(src.array("valid"))
    ref_frame = src.info.reference_frame
    template = make_template(landmarks[ref_frame], size)
    mats = crop_transforms(landmarks, valid, template)
    valid = valid & np.isfinite(mats).all(axis=(1, 2))
    topo = load_topology()
    out_dir = Path(out_dir)
    with atomic_output(out_dir, overwrite=False, marker=MANIFEST, what="prepared clip") as tmp:
        # 1. crops of every frame, straight into the memory-mapped output files
        atlas = np.lib.format.open_memmap(tmp / "atlas.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
        amask = np.lib.format.open_memmap(tmp / "atlas_mask.npy", mode="w+", dtype=bool, shape=(n, size, size))
        seen = 0
        for i, frame in enumerate(FrameReader(info, max_frames=n)):
            seen = i + 1
            if valid[i]:
                atlas[i], amask[i] = warp_crop(frame, mats[i], size, with_coverage=True)
                atlas[i][~amask[i]] = 0
            if i % 25 == 0:
                progress("crop2d", i + 1, n)
        progress("crop2d", n, n)
        valid[seen:] = False
        atlas[seen:], amask[seen:] = 0, False
        atlas.flush()
        amask.flush()

        # 2. reference crop: per-pixel median over the reference candidates
        cand = np.array([c for c in src.info.reference_candidates if valid[c]] or [ref_frame])
        cm = np.asarray(amask[cand])
        ref = masked_median(atlas[cand], cm)
        ref_ok = cm.mean(0) >= 0.5
        reference = np.where(ref_ok[..., None], np.nan_to_num(ref), 0.0)
        reference = np.clip(reference + 0.5, 0, 255).astype(np.uint8)

        # 3. geometry: 2D-aligned landmarks in canvas units / S, and the pose that undoes the crop
        a = mats[:, :, :2].astype(np.float64)                     # (T, 2, 2) = s R2
        s = np.sqrt(np.abs(np.linalg.det(np.nan_to_num(a))))      # (T,) canvas px per frame px
        verts = np.full(landmarks.shape, np.nan, np.float32)
        for t in np.flatnonzero(valid):
            verts[t, :, :2] = transform_points(landmarks[t], mats[t]) / size
            verts[t, :, 2] = landmarks[t, :, 2] * s[t] / size
        reference_vertices = verts[ref_frame].copy() if valid[ref_frame] else np.nanmedian(verts[valid], axis=0)
        pose_scale = np.where(valid, size / np.where(s > 0, s, np.nan), np.nan).astype(np.float32)
        pose_rotation = np.full((n, 3, 3), np.nan, np.float32)
        pose_translation = np.full((n, 3), np.nan, np.float32)
        for t in np.flatnonzero(valid):
            r2t = (a[t] / s[t]).T
            pose_rotation[t] = np.eye(3)
            pose_rotation[t, :2, :2] = r2t
            pose_translation[t, :2] = -(r2t @ mats[t, :, 2]) / s[t]
            pose_translation[t, 2] = 0.0

        # 4. canvas regions, lighting (none: zero log-gains), statistics
        regions = template_regions(template)
        gains = np.zeros((n,) + tuple(src.array("lighting_gains").shape[1:]), np.float32)
        gains[~valid] = np.nan
        spatial = np.zeros(src.array("lighting_spatial").shape, np.float32)
        residual, correlation = _skin_stats(atlas, amask, valid, regions["skin"] & ref_ok, reference)
        mouth = np.where(valid, mouth_opening(np.nan_to_num(verts)), np.nan).astype(np.float32)

        arrays: dict = {}
        del atlas, amask
        from lipsync.prepared import array_entry

        arrays["atlas"] = array_entry("atlas", np.empty((n, size, size, 3), np.uint8))
        arrays["atlas_mask"] = array_entry("atlas_mask", np.empty((n, size, size), bool))
        copied = ("landmarks", "landmarks_raw", "tracked", "interpolated", "cuts")
        for name in copied:
            _save(tmp, name, np.array(src.array(name)), arrays)
        for name, arr in (("valid", valid), ("pose_scale", pose_scale), ("pose_rotation", pose_rotation),
                          ("pose_translation", pose_translation), ("vertices", verts),
                          ("reference_vertices", reference_vertices.astype(np.float32)),
                          ("faces", topo.faces.astype(np.int32)), ("uv", template.uv), ("reference_atlas", reference),
                          ("region_masks", np.stack([regions[k] for k in REGION_NAMES])), ("lighting_gains", gains),
                          ("lighting_spatial", spatial), ("skin_residual", residual),
                          ("skin_correlation", correlation), ("mouth_opening", mouth)):
            _save(tmp, name, np.asarray(arr), arrays)
        missing = set(ARRAYS) - set(arrays)
        if missing:  # a newer prepared format: fail loudly rather than write a clip train() rejects later
            raise RuntimeError(f"prepare_crop2d does not write {sorted(missing)}")
        shutil.copyfile(src.path / src.info.audio_file, tmp / src.info.audio_file)

        manifest = {k: v for k, v in man.items() if k not in ("previews", "timings_s", "frames_per_second")}
        manifest.update({
            "source": str(Path(video).resolve()),
            "atlas_size": size,
            "valid_fraction": round(float(valid.mean()), 6),
            "excluded_frames": int((~valid).sum()),
            "uv": {"layout": "2D crop template (uv = canvas position / S)"},
            "lighting": {"log_space": True, "normalized": False,
                         "temporal_terms": [list(t) for t in src.info.temporal_terms],
                         "spatial_terms": [list(t) for t in src.info.spatial_terms],
                         "field": src.info.lighting.get("field", ""),
                         "note": "raw colours: no lighting normalization; the gains are zero (identity)"},
            "region_names": list(REGION_NAMES),
            "arrays": arrays,
            "crop2d": {"code_version": CODE_VERSION, "source_prepared": str(src.path.resolve()),
                       "template_size": size, "reference_frame": ref_frame,
                       "median_crop_scale": round(float(np.nanmedian(np.where(valid, s, np.nan))), 4) if valid.any() else None,
                       "description": "atlas = aligned 2D face crop (in-plane similarity on the stable landmarks), raw colours"},
            "warnings": list(src.info.warnings),
        })
        manifest["timings_s"] = {"total": round(time.perf_counter() - t0, 4)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return out_dir


def crop_template(model) -> CropTemplate:
    """The canvas layout a crop-clip model was trained on (its speaker's ``uv`` times S)."""
    size = int(model.speaker.reference_atlas.shape[0])
    return CropTemplate(points=(np.asarray(model.speaker.uv, np.float64) * size).astype(np.float32), size=size)


def render_crop2d(model, clip: TestClip, audio: Path, out: Path, *, device: str = "cpu") -> dict:
    """Drive a model trained on a crop clip with ``audio`` and insert it into ``clip``.

    Args:
        model: a ``lipsync.model_io.LoadedModel`` trained by ``fit_no_pose_norm``, or its folder.
        clip: the test clip (its prepared landmarks give each target frame's 2D transform).
        audio: 16 kHz mono wav; out: the mp4 to write (H.264 + AAC, the clip's size and fps).
        device: where a model given as a folder is loaded; the prediction itself runs on the CPU,
            as ``lipsync.synthesis.predict`` does (an auto-regressive rollout of a small network).
    Returns:
        {"frames", "seconds", "frames_per_second"}.
    """
    from lipsync.media import load_audio
    from lipsync.model_io import load_model
    from lipsync.prepared import open_prepared
    from lipsync.media import VideoWriter
    from lipsync.synthesis import assemble_atlas, predict

    from ..core import read_video
    from .face2d import paste_back

    t0 = time.perf_counter()
    if not hasattr(model, "net"):
        model = load_model(model, device=device)
    model.net.to("cpu")  # predict() feeds CPU tensors
    template = crop_template(model)
    target = open_prepared(clip.prepared)
    mats = crop_transforms(np.array(target.array("landmarks"), np.float32), np.array(target.array("valid")), template)
    speech = load_audio(audio)
    _, crops = predict(model, speech, clip.fps)  # (n, h, w, 3) in [0, 1]
    n = len(crops)
    schedule = ping_pong(n, clip.frames)
    mask = blend_mask(template)
    box = tuple(model.net.config.crop)
    ref_crop = model.net.reference_crop.detach().cpu().numpy().transpose(1, 2, 0)
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="crop2d-render-", dir=out.parent) as tmp:
        frames = read_video(clip.video, Path(tmp))
        with VideoWriter(out, clip.width, clip.height, clip.fps, Path(audio), crf=EVAL_CRF) as writer:
            for i in range(n):
                k = min(int(schedule[i]), len(frames) - 1)
                frame = frames[k]
                if k >= len(mats) or not np.isfinite(mats[k]).all():
                    writer.write(frame)
                    continue
                canvas = assemble_atlas(model.speaker.reference_atlas, crops[i] - ref_crop, box, mask)[..., :3]
                writer.write(paste_back(frame, canvas, mats[k], mask))
    seconds = time.perf_counter() - t0
    return {"frames": n, "seconds": round(seconds, 3), "frames_per_second": round(n / max(seconds, 1e-9), 2)}


def no_pose_norm_folder(ctx: RunContext) -> Path:
    """Where ``fit_no_pose_norm`` keeps the crop clip (``crop2d/``) and the model (``model/``):
    ``ctx.cache / no_pose_norm-<key>``, the key hashing the training clip's manifest, the training
    video, the preset, the training options (seed included), ``CODE_VERSION`` and the training
    code's version (``lipsync3d.VERSION``, which the 3D methods' cache keys carry too)."""
    from .lipsync3d import VERSION as TRAINING_VERSION

    options = train_options(ctx.preset, ctx.seed)
    manifest = Path(ctx.train_prepared) / "manifest.json"
    if not manifest.is_file():
        raise LipsyncError(f"{ctx.train_prepared} is not a prepared clip (no manifest.json); preprocess the training video first.")
    key = content_key(manifest, Path(ctx.train_video), ctx.preset, dataclasses.asdict(options), CODE_VERSION,
                      TRAINING_VERSION)
    return Path(ctx.cache) / f"no_pose_norm-{key}"


def fit_no_pose_norm(ctx: RunContext) -> Path:
    """Prepare the crop clip of ``ctx.train_prepared`` and train lipsync's model on it with the
    run's preset and seed; returns the model folder. Both live in ``no_pose_norm_folder(ctx)``,
    and a finished model (``model.safetensors``) is reused."""
    from lipsync.model_io import ModelFolder
    from lipsync.training import PRESETS, train

    root = no_pose_norm_folder(ctx)
    model_dir, crop_dir = root / "model", root / "crop2d"
    if ModelFolder(model_dir).state() == "finished":
        return model_dir
    if not (crop_dir / "manifest.json").is_file():
        prepare_crop2d(ctx.train_prepared, ctx.train_video, crop_dir, progress=ctx.progress)
    resume = ModelFolder(model_dir).state() == "stopped"
    if model_dir.exists() and not resume:
        shutil.rmtree(model_dir)  # an attempt that died before its first checkpoint
    train(crop_dir, model_dir, preset=ctx.preset if ctx.preset in PRESETS else "quick",
          options=train_options(ctx.preset, ctx.seed), device=ctx.device, resume=resume,
          progress=lambda step, total, _losses: ctx.progress("train no_pose_norm", step, total))
    return model_dir
