"""Lip-sync metrics: mouth landmarks against the ground truth (lmd, mouth_corr), audio-visual
sync of the output alone by the speaker's own sync expert (sync_offset, sync_conf; see
``eval.sync_expert``) and SyncNet's LSE-D / LSE-C.

Landmark metrics re-track the output frames and the ground-truth frames with the same MediaPipe
tracker and settings (``lipsync.tracking.track_frames``), so identical videos give identical
landmarks and an LMD of exactly 0. Each tracking is cached per video content: in memory for the
process (the ground truth of a clip is shared by every method) and as ``.npy`` under
``sample.workdir/tracks`` (so lmd, mouth_corr, sync_* and the mouth metrics share one pass and a re-run reuses it).

Pose normalization: each frame's similarity to the clip's canonical face (``sample.canonical``) is
fitted on the stable vertices (forehead, nose, eye corners, cheekbones; no lips or jaw), so what
is left of the mouth is its shape, in canonical units, seen from the front.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

import numpy as np

from lipsync.files import atomic_file, atomic_write_text, file_digest

from ..core import MetricValue, Sample, Unavailable
from . import Metric, register

TRACKER_ID = "mediapipe-facemesh-tracking-468-v1"  # part of the cache key: change it if the settings change
MIN_CORR_FRAMES = 10             # frames (tracked in both) needed for a correlation
EYE_CORNERS = (33, 263)          # outer eye corners (person's right, left): the LMD length unit
_MEMORY_TRACKS = 64              # tracked videos kept in memory (~0.4 MB each for 75 frames)
_memory: OrderedDict[str, np.ndarray] = OrderedDict()


# ---------------------------------------------------------------------------------------------
# tracking, cached per video content

def frames_key(frames: np.ndarray) -> str:
    """A short hash of a frame array's shape and pixels (streams through memory-mapped arrays)."""
    h = hashlib.sha256(repr((tuple(frames.shape), str(frames.dtype), TRACKER_ID)).encode())
    for frame in frames:
        h.update(np.ascontiguousarray(frame).data)
    return h.hexdigest()[:16]


def track_landmarks(frames: np.ndarray, fps: float, workdir: Path | None = None, *, tracker=None) -> np.ndarray:
    """MediaPipe landmarks of every frame: float32 (T, 468, 3) in pixels, NaN rows where untracked.

    Cached by ``frames_key`` in memory and, with ``workdir``, in ``workdir/tracks/<key>.npy``.
    ``tracker`` (a ``lipsync.tracking.Tracker``) replaces MediaPipe, e.g. in tests; it bypasses
    the caches.
    """
    from lipsync.tracking import track_frames

    if tracker is not None:
        h, w = frames.shape[1:3]
        return track_frames(frames, fps=fps, width=w, height=h, tracker=tracker).landmarks
    key = frames_key(frames)
    if key in _memory:
        _memory.move_to_end(key)
        return _memory[key]
    path = Path(workdir) / "tracks" / f"{key}.npy" if workdir is not None else None
    landmarks = None
    if path is not None and path.is_file():
        try:
            landmarks = np.load(path)
        except (OSError, ValueError):
            landmarks = None  # a damaged cache file: track again
        if landmarks is not None and landmarks.shape != (len(frames), 468, 3):
            landmarks = None
    if landmarks is None:
        h, w = frames.shape[1:3]
        landmarks = track_frames(frames, fps=fps, width=w, height=h).landmarks
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(path) as tmp:
                np.save(tmp, landmarks)
    _memory[key] = landmarks
    while len(_memory) > _MEMORY_TRACKS:
        _memory.popitem(last=False)
    return landmarks


# ---------------------------------------------------------------------------------------------
# pure landmark measures

def _topology():
    from lipsync.topology import load_topology

    return load_topology()


def normalize_to_canonical(landmarks: np.ndarray, canonical: np.ndarray) -> np.ndarray:
    """Landmarks (T, V, 3) in pixels -> the same faces in the canonical frame (T, V, 3).

    Per frame, the least-squares similarity (Umeyama) taking the frame's stable vertices onto the
    canonical's is applied to all vertices. Frames with any non-finite landmark stay NaN.
    """
    from lipsync.pose import apply_similarity, fit_similarity

    stable = _topology().regions["stable"]
    landmarks = np.asarray(landmarks, np.float32)
    out = np.full(landmarks.shape, np.nan, np.float32)
    ok = np.isfinite(landmarks).all(axis=(1, 2))
    if ok.any():
        src = landmarks[ok][:, stable]
        dst = np.broadcast_to(np.asarray(canonical, np.float32)[stable], src.shape)
        s, r, t = fit_similarity(src, dst)  # canonical ~= s * R @ landmark + t
        out[ok] = apply_similarity(landmarks[ok], s, r, t)
    return out


def mouth_indices() -> np.ndarray:
    """Vertex indices of the outer and inner lip rings (each vertex once)."""
    topo = _topology()
    return np.unique(np.concatenate([topo.regions["lips_outer"], topo.regions["lips_inner"]]))


def eye_distance(canonical: np.ndarray) -> float:
    """Distance between the outer eye corners of the canonical face in x, y (canonical units)."""
    a, b = EYE_CORNERS
    return float(np.linalg.norm(np.asarray(canonical)[b, :2] - np.asarray(canonical)[a, :2]))


def landmark_distance(output: np.ndarray, reference: np.ndarray, canonical: np.ndarray) -> np.ndarray:
    """Per-frame mouth landmark distance (LMD) in percent of the eye distance: float64 (T,).

    Args:
        output, reference: (T, 468, 3) landmarks in pixels (NaN rows where untracked); the
            shorter length is used.
        canonical: (468, 3) the clip's canonical face.
    Both faces are pose-normalized into the canonical frame; the lip rings' x, y coordinates there
    (the frontal image plane: MediaPipe's depth is the least reliable coordinate, and the usual
    2D LMD ignores it) are mean-centred separately for each face, and the mean Euclidean
    distance between corresponding points is divided by the canonical eye distance, x 100.
    NaN where either face is untracked.
    """
    n = min(len(output), len(reference))
    idx = mouth_indices()
    a = normalize_to_canonical(output[:n], canonical)[:, idx, :2]
    b = normalize_to_canonical(reference[:n], canonical)[:, idx, :2]
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    d = np.linalg.norm(a.astype(np.float64) - b, axis=-1).mean(axis=1)
    return d / eye_distance(canonical) * 100.0


def mouth_series(landmarks: np.ndarray, canonical: np.ndarray) -> np.ndarray:
    """Mouth opening (inner-lip gap over mouth width) of pose-normalized faces: (T,), NaN where untracked."""
    from lipsync.face_measures import mouth_opening

    return mouth_opening(normalize_to_canonical(landmarks, canonical)).astype(np.float64)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN when either series is constant."""
    a = np.asarray(a, np.float64) - np.mean(a)
    b = np.asarray(b, np.float64) - np.mean(b)
    den = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / den) if den > 1e-12 else float("nan")


# ---------------------------------------------------------------------------------------------
# metrics on samples

def _needs_reference(sample: Sample) -> np.ndarray:
    if sample.reference is None:
        raise Unavailable("this metric needs ground-truth frames, which cross-audio runs do not have")
    return sample.reference


def _tracked_pair(sample: Sample, settings: dict):
    reference = _needs_reference(sample)
    out = track_landmarks(sample.frames, sample.fps, sample.workdir)
    ref = track_landmarks(reference, sample.fps, sample.workdir)
    n = min(len(out), len(ref))
    return out[:n], ref[:n]


def _tracking_extra(out: np.ndarray, ref: np.ndarray) -> dict:
    a = np.isfinite(out).all(axis=(1, 2))
    b = np.isfinite(ref).all(axis=(1, 2))
    n = max(1, len(a))
    return {"frames": len(a), "frames_used": int((a & b).sum()), "skipped_fraction": round(1 - (a & b).sum() / n, 4),
            "output_untracked_fraction": round(1 - a.sum() / n, 4), "reference_untracked_fraction": round(1 - b.sum() / n, 4)}


def compute_lmd(sample: Sample, settings: dict) -> MetricValue:
    out, ref = _tracked_pair(sample, settings)
    per = landmark_distance(out, ref, sample.canonical)
    extra = _tracking_extra(out, ref)
    if not np.isfinite(per).any():
        return MetricValue(float("nan"), per, {**extra, "reason": "no frame where both faces are tracked"})
    return MetricValue(float(np.nanmean(per)), per, extra)


def compute_mouth_corr(sample: Sample, settings: dict) -> MetricValue:
    out, ref = _tracked_pair(sample, settings)
    a, b = mouth_series(out, sample.canonical), mouth_series(ref, sample.canonical)
    ok = np.isfinite(a) & np.isfinite(b)
    extra = _tracking_extra(out, ref)
    if ok.sum() < MIN_CORR_FRAMES:
        return MetricValue(float("nan"), None, {**extra, "reason": f"only {int(ok.sum())} frames where both faces are tracked"})
    r = pearson(a[ok], b[ok])
    if not np.isfinite(r):
        return MetricValue(float("nan"), None, {**extra, "reason": "the mouth does not move in one of the videos"})
    return MetricValue(r, None, extra)


def check_sync_expert(settings: dict) -> str | None:
    if settings.get("sync_expert_error"):
        return settings["sync_expert_error"]
    given = settings.get("sync_expert")
    if not given:
        return ("the learned sync measure needs a sync expert trained on the speaker's footage, which was not given "
                "(eval.run and the demo train one; pass its path as sync_expert).")
    if not Path(given).is_file():
        return f"the sync expert {given} does not exist; train one with eval.sync_expert.expert_for."
    return None


@lru_cache(maxsize=2)
def _load_expert(path: str, stamp: tuple):
    from ..sync_expert import load_expert

    return load_expert(path)


def expert_sync(sample: Sample, settings: dict) -> dict:
    """The sync expert's verdict on the output with its own audio (``eval.sync_expert.SyncExpert.curve``)
    plus the fraction of frames tracked."""
    reason = check_sync_expert(settings)
    if reason:
        raise Unavailable(reason)
    path = Path(settings["sync_expert"])
    st = path.stat()
    expert = _load_expert(str(path), (st.st_size, st.st_mtime_ns))
    lm = track_landmarks(sample.frames, sample.fps, sample.workdir)
    result = expert.curve(lm, sample.canonical, sample.audio, sample.fps)
    result["tracked_fraction"] = round(float(np.isfinite(lm).all(axis=(1, 2)).mean()) if len(lm) else 0.0, 4)
    return result


def compute_sync_offset(sample: Sample, settings: dict) -> MetricValue:
    s = expert_sync(sample, settings)
    return MetricValue(abs(s["offset"]), None, {k: v for k, v in s.items() if k != "confidence"})


def compute_sync_conf(sample: Sample, settings: dict) -> MetricValue:
    s = expert_sync(sample, settings)
    return MetricValue(s["confidence"], None, {k: v for k, v in s.items() if k != "curve"})


# ---------------------------------------------------------------------------------------------
# SyncNet (syncnet-python): LSE-D and LSE-C

def check_syncnet(settings: dict) -> str | None:
    for key, name in (("syncnet_weights", "syncnet_v2.model"), ("s3fd_weights", "sfd_face.pth")):
        given = settings.get(key)
        if not given:
            return f"SyncNet metrics need the {name} weights, which were not given; pass their path as {key}."
        if not Path(given).expanduser().is_file():
            return f"SyncNet weights {given} ({key}) do not exist; pass the path of {name}."
    if shutil.which("ffmpeg") is None:
        return "SyncNet metrics need the ffmpeg program; install ffmpeg."
    try:
        _load_syncnet(str(Path(settings["s3fd_weights"]).expanduser()), str(Path(settings["syncnet_weights"]).expanduser()),
                      str(settings.get("device") or "cpu"))
    except Unavailable as err:
        return str(err)
    return None


@lru_cache(maxsize=1)
def _load_syncnet(s3fd: str, syncnet: str, device: str):
    try:
        from syncnet_python import SyncNetPipeline
    except ImportError as err:
        raise Unavailable(f"SyncNet metrics need the syncnet-python package ({err}); install it with 'pip install syncnet-python'.") from None
    try:
        return SyncNetPipeline({"s3fd_weights": s3fd, "syncnet_weights": syncnet}, device=device)
    except Exception as err:  # noqa: BLE001 - a file that is not the expected checkpoint
        raise Unavailable(f"the SyncNet weights could not be loaded ({type(err).__name__}: {str(err)[:120]}); "
                          "give syncnet_v2.model and sfd_face.pth.") from None


def syncnet_scores(sample: Sample, settings: dict) -> dict:
    """SyncNet's scores of ``sample.video`` (with its own audio): ``{"lse_d", "lse_c", "offset"}``
    (NaNs and a ``reason`` when SyncNet finds no face track of 50 frames). Cached in ``sample.workdir``."""
    reason = check_syncnet(settings)
    if reason:
        raise Unavailable(reason)
    s3fd = Path(settings["s3fd_weights"]).expanduser()
    net = Path(settings["syncnet_weights"]).expanduser()
    ident = [file_digest(Path(sample.video))] + [f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in (s3fd, net)]
    key = hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]
    cache = Path(sample.workdir) / "syncnet" / f"{key}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    pipe = _load_syncnet(str(s3fd), str(net), str(settings.get("device") or "cpu"))
    cache.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="syncnet-", dir=cache.parent))
    try:
        offsets, confs, dists, lse_c, lse_d, _, has_face = pipe.inference(str(sample.video), None, cache_dir=str(work))
    except RuntimeError as err:
        result = {"lse_d": float("nan"), "lse_c": float("nan"), "offset": float("nan"), "reason": f"SyncNet failed: {str(err)[:200]}"}
    else:
        if not offsets:
            result = {"lse_d": float("nan"), "lse_c": float("nan"), "offset": float("nan"),
                      "reason": "SyncNet found no face track of at least 50 frames" + ("" if has_face else " (no face detected)")}
        else:
            best = int(np.argmin(dists))
            result = {"lse_d": float(lse_d), "lse_c": float(lse_c), "offset": float(offsets[best]), "tracks": len(offsets)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    atomic_write_text(cache, json.dumps(result))
    return result


def compute_lse_d(sample: Sample, settings: dict) -> MetricValue:
    r = syncnet_scores(sample, settings)
    return MetricValue(r["lse_d"], None, {k: v for k, v in r.items() if k != "lse_d"})


def compute_lse_c(sample: Sample, settings: dict) -> MetricValue:
    r = syncnet_scores(sample, settings)
    return MetricValue(r["lse_c"], None, {k: v for k, v in r.items() if k != "lse_c"})


register(Metric(
    name="lmd", better="lower", needs_reference=True, unit="% of eye distance",
    description="Mouth landmark distance: mean distance between the pose-normalized, mean-centred lip landmarks of the output and the ground truth (both re-tracked with MediaPipe), in percent of the eye distance.",
    requires="mediapipe", compute=compute_lmd))
register(Metric(
    name="mouth_corr", better="higher", needs_reference=True, unit="",
    description="Pearson correlation between the mouth opening of the output and of the ground truth over the frames where both are tracked.",
    requires="mediapipe", compute=compute_mouth_corr))
register(Metric(
    name="sync_offset", better="lower", needs_reference=False, unit="frames",
    description="Absolute audio-visual offset of the output by a lip-sync expert trained on the speaker's own footage: the lag (within +-15 frames) at which its mouth windows best match the speech; the signed offset (positive = video lags audio) and the curve are in the details.",
    requires="a sync expert trained on the training footage (eval.run and the demo train one)",
    compute=compute_sync_offset, check=check_sync_expert))
register(Metric(
    name="sync_conf", better="higher", needs_reference=False, unit="cosine",
    description="Lip-sync confidence of the output by the speaker's sync expert: the peak of the mean audio-mouth similarity over lags of +-15 frames minus its median.",
    requires="a sync expert trained on the training footage (eval.run and the demo train one)",
    compute=compute_sync_conf, check=check_sync_expert))
register(Metric(
    name="lse_d", better="lower", needs_reference=False, unit="",
    description="SyncNet's lip-sync error distance (LSE-D): the smallest mean distance between audio and video embeddings over offsets of +-15 frames.",
    requires="SyncNet weights (syncnet_v2.model, sfd_face.pth), syncnet-python and ffmpeg",
    compute=compute_lse_d, check=check_syncnet))
register(Metric(
    name="lse_c", better="higher", needs_reference=False, unit="",
    description="SyncNet's lip-sync error confidence (LSE-C): the median minus the smallest embedding distance over offsets of +-15 frames.",
    requires="SyncNet weights (syncnet_v2.model, sfd_face.pth), syncnet-python and ffmpeg",
    compute=compute_lse_c, check=check_syncnet))
