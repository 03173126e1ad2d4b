"""What a metric sees: one method's output video on one test clip, decoded with the real frames it
was laid over, their face and mouth boxes and landmarks (``Sample``), built lazily so a fully
cached measurement decodes nothing."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lipsync.files import file_digest
from lipsync.synthesis.schedule import ping_pong

from .core import Sample, TestClip, read_video

# the decoded frames of the output and of the real clip while metrics run: scratch, removed after,
# named as temporary files so that they never travel to an object-store root
SCRATCH = (".frames.tmp-decoded", ".target.tmp-decoded")


def sample_boxes(landmarks: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Face and mouth boxes (T,4) x0,y0,x1,y1 from landmarks (T,V,3); untracked frames take the
    nearest tracked frame's boxes (the whole frame if none is tracked)."""
    from lipsync.topology import load_topology

    lips = load_topology().regions["lips_outer"]
    t = len(landmarks)
    ok = np.isfinite(landmarks).all(axis=(1, 2))
    face = np.tile([0, 0, width, height], (t, 1))
    mouth = np.tile([0, 0, width, height], (t, 1))
    if not ok.any():
        return face, mouth
    idx = np.flatnonzero(ok)
    near = idx[np.abs(np.arange(t)[:, None] - idx[None]).argmin(1)]
    pts = landmarks[near, :, :2]
    lo, hi = pts.min(1), pts.max(1)
    face = np.concatenate([lo, hi], 1)
    lp = landmarks[near][:, lips, :2]
    llo, lhi = lp.min(1), lp.max(1)
    pad = 0.25 * (lhi - llo)[:, :1]
    mouth = np.concatenate([llo - pad, lhi + pad], 1)
    clip = np.array([width, height, width, height])
    return (np.clip(np.round(face), 0, clip).astype(int), np.clip(np.round(mouth), 0, clip).astype(int))


def build_sample(method: str, clip: TestClip, video: Path, audio: Path, *, with_reference: bool,
                 workdir: Path) -> Sample:
    """Decode ``video`` and the clip's frames it was laid over (frame i over ``ping_pong``'s i-th)."""
    import soundfile as sf

    from lipsync.prepared import open_prepared

    workdir.mkdir(parents=True, exist_ok=True)
    frames = read_video(video, workdir / SCRATCH[0])
    target_all = read_video(clip.video, workdir / SCRATCH[1])
    order = ping_pong(len(frames), len(target_all))
    prepared = open_prepared(clip.prepared)
    lm = np.array(prepared.array("landmarks"))
    valid = np.array(prepared.array("valid"))
    n = min(len(frames), len(order))
    order = np.minimum(order[:n], len(lm) - 1)
    target = target_all if (n == len(target_all) and np.array_equal(order, np.arange(n))) else target_all[order]
    face, mouth = sample_boxes(lm[order], clip.width, clip.height)
    samples, _ = sf.read(str(audio), dtype="float32")
    return Sample(method=method, clip=clip.name, fps=clip.fps, frames=frames[:n], target=target[:n],
                  reference=target[:n] if with_reference else None,
                  canonical=np.array(prepared.array("reference_vertices")), audio=samples, face_box=face,
                  mouth_box=mouth, landmarks=lm[order], valid=valid[order], video=video, workdir=workdir)



class LazySample:
    """Builds the ``Sample`` (decoding both videos) only when a metric is not cached; ``close()``
    removes the decoded frames."""

    def __init__(self, method: str, clip: TestClip, video: Path, audio: Path, *, with_reference: bool, workdir: Path):
        self.args = (method, clip, video, audio)
        self.with_reference = with_reference
        self.workdir = workdir
        self.video_key = file_digest(video)
        self.clip_key = f"{clip.name}-{file_digest(clip.video)}"
        self._sample = None

    def get(self) -> Sample:
        if self._sample is None:
            self._sample = build_sample(*self.args, with_reference=self.with_reference, workdir=self.workdir)
        return self._sample

    def close(self) -> None:
        import shutil

        self._sample = None
        for sub in SCRATCH:
            shutil.rmtree(self.workdir / sub, ignore_errors=True)
