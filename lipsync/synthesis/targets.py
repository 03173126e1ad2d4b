"""Targets of synthesis: the frames a synthesized face is inserted into, each with the head pose and
lighting that the face must take on. A target is the model's training clip, a prepared clip, or
any video or still image of the same person, preprocessed on the fly."""
from __future__ import annotations

import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..common import LipsyncError, Progress, path_arg
from ..media import _tool
from .identity import SAME_PERSON, identity_similarity


@dataclass
class Target:
    """Frames to insert the face into, with pose and lighting per frame (T = target frames).

    pose_scale (T,), pose_rotation (T,3,3), pose_translation (T,3) map the MODEL's canonical
    vertices into the target image; gains (T,3,K) log-gain coefficients relative to the model's
    normalized reference (NaN: unknown, no lighting change applied); valid bool (T,).
    """
    source: Path
    fps: float
    width: int
    height: int
    valid: np.ndarray
    pose_scale: np.ndarray
    pose_rotation: np.ndarray
    pose_translation: np.ndarray
    gains: np.ndarray
    terms: list
    frames_total: int
    notes: list

    def read_frames(self, count: int, folder: Path) -> np.ndarray:
        """The first ``count`` frames (fewer if the video has fewer) as uint8 (N, H, W, 3), kept in a
        memory-mapped file in ``folder`` so that long targets do not have to fit in memory."""
        from ..media import FrameReader, probe

        store = np.lib.format.open_memmap(folder / "target_frames.npy", mode="w+", dtype=np.uint8,
                                          shape=(max(count, 1), self.height, self.width, 3))
        n = 0
        for frame in FrameReader(probe(self.source), max_frames=count):
            store[n] = frame
            n += 1
        return store[:n]


def _align_to(model_ref: np.ndarray, target_ref: np.ndarray, stable: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity (scale, rotation, translation) mapping the model's canonical frame onto the target clip's."""
    from ..pose import fit_similarity

    s, r, t = fit_similarity(model_ref[stable], target_ref[stable])
    return float(s), r, t


def open_target(target: str | Path, workdir: Path, size: int, notes: list, progress: Progress | None = None):
    """A target video or still image preprocessed into ``workdir`` (a prepared clip folder made with
    ``--keep-raw-atlas`` is used as it is). Returns (prepared clip, the video it shows, the
    ``PreprocessOptions`` used); a note is added for a still image."""
    from ..media import probe
    from ..preprocessing import PreprocessOptions, preprocess
    from ..prepared import MANIFEST, open_prepared

    target = Path(target)
    opts = PreprocessOptions(atlas_size=size, keep_raw_atlas=True, previews=False, require_audio=False, min_seconds=0.5)
    if target.is_dir() and (target / MANIFEST).is_file():
        clip = open_prepared(target)
        if not clip.info.has_array("atlas_raw") or clip.atlas_size != size:
            raise LipsyncError(f"the prepared target {target} needs the raw atlas at size {size}; preprocess it with "
                               f"--keep-raw-atlas --atlas-size {size}.")
        return clip, clip.info.source, opts
    video = target
    try:
        probe(target)
    except LipsyncError as err:
        if "still image" not in str(err):
            raise
        video = workdir / "still.mp4"  # a still image becomes a one-second video of itself
        workdir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([_tool("ffmpeg"), "-nostdin", "-v", "error", "-y", "-loop", "1", "-i",
                               path_arg(target), "-t", "1", "-r", "25", "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2",
                               "-pix_fmt", "yuv420p", "-c:v", "libx264", path_arg(video)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise LipsyncError(f"{target} could not be read as an image ({proc.stderr.strip()}).") from None
        notes.append("the target is a still image: the head stays still")
    clip = open_prepared(preprocess(video, workdir / "target", options=opts,
                                    progress=progress and (lambda st, d, t: progress(f"target {st}", d, t))))
    return clip, video, opts


def prepare_target(model, target: str | Path | None, workdir: Path, progress: Progress | None = None) -> Target:
    """The training clip (``target=None``), a prepared clip folder made with ``--keep-raw-atlas``,
    or any video/still image, preprocessed on the fly."""
    return target_for_speaker(model.speaker, target, workdir, progress,
                              training_prepared=model.config.get("training", {}).get("prepared"))


def target_for_speaker(speaker, target: str | Path | None, workdir: Path, progress: Progress | None = None, *,
                       training_prepared: str | None = None) -> Target:
    """``prepare_target`` for a speaker's reference data (``model_io.SpeakerData``)."""
    from ..lighting import frame_gains, to_log
    from ..model_io import SpeakerData
    from ..prepared import open_prepared
    from ..topology import load_topology

    topo = load_topology()
    notes: list[str] = []
    if target is None:
        prepared = training_prepared
        if not prepared or not Path(prepared).is_dir():
            raise LipsyncError("the model's training clip is not on this machine any more; give a target video or image with --target.")
        clip = open_prepared(prepared)
        source = clip.info.source
        if not source.is_file():
            raise LipsyncError(f"the training video {source} is gone; give a target video or image with --target.")
        gains = np.array(clip.array("lighting_gains"))
        terms = list(clip.info.temporal_terms)
        pose_s, pose_r, pose_t = (np.array(clip.array(k)) for k in ("pose_scale", "pose_rotation", "pose_translation"))
        return Target(source=source, fps=clip.fps, width=clip.info.width, height=clip.info.height,
                      valid=np.array(clip.array("valid")), pose_scale=pose_s, pose_rotation=pose_r, pose_translation=pose_t,
                      gains=gains, terms=terms, frames_total=clip.num_frames, notes=notes)

    size = int(speaker.reference_atlas.shape[0])
    clip, video, opts = open_target(target, workdir, size, notes, progress)
    s, r, t = _align_to(speaker.reference_vertices, np.array(clip.array("reference_vertices")), topo.regions["stable"])
    match = identity_similarity(speaker, SpeakerData.from_prepared(clip))
    if not match.decided:
        notes.append("too little of the target's face is seen to check that it is the model's speaker")
    elif not match.same_person:
        msg = (f"the target's face does not look like the model's speaker (similarity {match.similarity:.2f} < "
               f"{SAME_PERSON}); it is probably a different person, and the result will look wrong")
        warnings.warn(msg, stacklevel=2)
        notes.append(msg)
    # compose: model canonical -> target canonical (s, r, t) -> target image (per-frame pose)
    ps, pr, pt = (np.array(clip.array(k)) for k in ("pose_scale", "pose_rotation", "pose_translation"))
    pose_s = ps * s
    pose_r = pr @ r
    pose_t = pt + ps[:, None] * np.einsum("tij,j->ti", pr, t)
    # lighting of each target frame relative to the model's normalized reference
    skin = speaker.region("skin") & (speaker.reference_atlas.max(-1) > 0)
    valid = np.array(clip.array("valid"))
    terms, gains = frame_gains(clip.frames("atlas_raw"), clip.frames("atlas_mask"), to_log(speaker.reference_atlas), skin,
                               degree=opts.lighting_degree, valid=valid, chunk=opts.chunk, workers=opts.workers)
    return Target(source=video, fps=clip.fps, width=clip.info.width, height=clip.info.height, valid=valid,
                  pose_scale=pose_s, pose_rotation=pose_r.astype(np.float32), pose_translation=pose_t.astype(np.float32),
                  gains=gains, terms=terms, frames_total=clip.num_frames, notes=notes)
