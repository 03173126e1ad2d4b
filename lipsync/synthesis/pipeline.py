"""``synthesize``: new audio -> the speaker's face, inserted into a target video.

1. Audio (``speech``): any file ffmpeg reads, or text spoken by espeak-ng; 16 kHz mono; one frame
   per 1/fps s.
2. The model predicts (``predict``), auto-regressively, the pose-normalized vertices and the
   lower-face texture of every output frame.
3. The target (``targets``: the training video by default, or any video or still image of the same
   person, preprocessed on the fly) gives each output frame a real frame, its head pose and its
   lighting; target frames are played forward and backward (``schedule``) when the audio is longer.
4. The predicted mesh is posed like the target frame, textured with the predicted atlas under the
   target frame's lighting (the inverse of the lighting normalization), rendered, and blended into
   the frame through a feathered lower-face mask, so no seam shows (``composite``).
5. Frames and audio are encoded to H.264 + AAC (browser-playable mp4), written atomically.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..common import LipsyncError, Progress
from .composite import assemble_atlas, blend_mask, composite_video
from .speech import load_speech
from .targets import prepare_target


@dataclass(frozen=True)
class SynthesisResult:
    """What ``synthesize`` made.

    Members:
        out: the video written; frames, fps, seconds: its length; resolution: "WxH".
        audio: where the speech came from (a path, or "text (N characters, espeak-ng)").
        target: the video the face was inserted into; renderer: the renderer's class name.
        notes: what a person should know about the result (a still target, no speech, ...).
        speech_fraction: share of frames with speech.
        timings_s: seconds per stage and "total"; frames_per_second: frames over the total time.
        mesh: the .glb's summary (``lipsync.export.gltf.write_glb``) when one was asked for.
        blendshapes: {"names": [...], "frames": T} when a blendshape CSV was asked for.
    """
    out: str
    frames: int
    fps: float
    seconds: float
    audio: str
    resolution: str
    renderer: str
    target: str
    notes: list = field(default_factory=list)
    speech_fraction: float = 0.0
    timings_s: dict = field(default_factory=dict)
    frames_per_second: float = 0.0
    mesh: dict | None = None
    blendshapes: dict | None = None

    def to_dict(self) -> dict:
        """As plain JSON-ready data (``mesh``/``blendshapes`` only when made)."""
        return {k: v for k, v in asdict(self).items() if v is not None or k not in ("mesh", "blendshapes")}


def _check_output(path: Path, suffixes: tuple[str, ...], what: str) -> Path:
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise LipsyncError(f"{path} should end in {' or '.join(suffixes)} for the {what}.")
    if path.exists() and path.is_dir():
        raise LipsyncError(f"{path} is a folder; give a file name for the {what}.")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise LipsyncError(f"the folder {parent} for the {what} does not exist; create it first.")
    if not os.access(parent, os.W_OK):
        raise LipsyncError(f"the folder {parent} is not writable; choose another place for the {what}.")
    return path


MOUTH_MOTION_RANGE = (0.25, 2.0)  # the scales of the mouth's motion synthesis accepts


def check_mouth_motion(motion: float) -> float:
    """``motion`` as a float, or a one-sentence error when it is not a number in ``MOUTH_MOTION_RANGE``."""
    lo, hi = MOUTH_MOTION_RANGE
    try:
        value = float(motion)
    except (TypeError, ValueError):
        raise LipsyncError(f"the mouth motion must be a number, not {motion!r}.") from None
    if not lo <= value <= hi:
        raise LipsyncError(f"the mouth motion must be between {lo:g} and {hi:g} (1 = as much as the speaker), not {value:g}.")
    return value


def predict(model, audio: np.ndarray, fps: float, mouth_motion: float = 1.0):
    """Model outputs for 16 kHz ``audio`` at ``fps``: vertices (T,V,3) and crops (T,H,W,3) in [0,1].
    ``mouth_motion`` scales how far the face moves from its mean shape (1: as trained)."""
    verts, crops, _ = predict_with_codes(model, audio, fps, mouth_motion)
    return verts, crops


def predict_with_codes(model, audio: np.ndarray, fps: float, mouth_motion: float = 1.0):
    """``predict``'s vertices and crops, and the audio codes (T, D) the mouth bank follows the
    teeth with (``MouthBank.frame_choice``)."""
    import torch

    w, codes = _codes(model, audio, fps)
    with torch.no_grad():
        verts, crops = model.net.rollout(w, mouth_motion, codes=codes)
    return verts.numpy(), crops.permute(0, 2, 3, 1).numpy(), codes.numpy()


def predict_shapes(model, audio: np.ndarray, fps: float, mouth_motion: float = 1.0):
    """The vertices (T, V, 3) and audio codes (T, D) of ``predict_with_codes``, without the texture."""
    import torch

    _, codes = _codes(model, audio, fps)
    with torch.no_grad():
        return model.net.shapes(codes, mouth_motion).numpy(), codes.numpy()


def _codes(model, audio: np.ndarray, fps: float):
    """The normalized audio windows (T, 1, n_mels, columns) of ``audio`` at ``fps`` and their codes
    (T, D), as torch tensors; the network is left in eval mode."""
    import torch

    from ..audio_features import audio_windows, frames_for_audio

    n = frames_for_audio(len(audio), fps)
    if n < 1:
        raise LipsyncError(f"the audio is shorter than one video frame ({len(audio) / 16000 * 1000:.0f} ms); give at least {1000 / fps:.0f} ms of speech.")
    windows = model.audio_norm.apply(audio_windows(audio, n, fps, columns=model.net.config.columns,
                                                             future=model.net.config.lookahead))[:, None]
    model.net.eval()
    with torch.no_grad():
        w = torch.from_numpy(windows)
        return w, model.net.codes(w)


def synthesize(model, *, out: str | Path, audio: str | Path | None = None, text: str | None = None,
               target: str | Path | None = None, mesh: str | Path | None = None,
               blendshapes: str | Path | None = None, renderer: str = "auto", schedule: str = "usable",
               crf: int = 18, progress: Progress | None = None, mouth_bank: bool = True,
               mouth_motion: float = 1.0) -> SynthesisResult:
    """Make a talking-head video (and optionally a .glb and a blendshape CSV); returns what it made.

    ``schedule``: how output frames follow the target's frames (see ``frame_schedule``); ``crf``:
    the H.264 quality (lower = closer to lossless, larger files); ``mouth_bank``: take the mouth
    from the model's mouth bank when it has one (``lipsync.model.mouth_bank``), else the network's;
    ``mouth_motion``: how much the mouth and face move, relative to the speaker's own amount that
    training measured (1; below 1 subtler, above 1 more pronounced, within ``MOUTH_MOTION_RANGE``)."""
    from ..media import write_wav

    progress = progress or (lambda stage, done, total: None)
    mouth_motion = check_mouth_motion(mouth_motion)
    out = _check_output(Path(out), (".mp4",), "video")
    mesh = _check_output(Path(mesh), (".glb",), "3D mesh") if mesh else None
    blendshapes = _check_output(Path(blendshapes), (".csv",), "blendshape weights") if blendshapes else None
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lipsync-synth-") as tmpdir:
        work = Path(tmpdir)
        t0 = time.perf_counter()
        speech, origin = load_speech(audio, text, work)
        from ..audio_features import speech_activity

        target_clip = prepare_target(model, target, work, progress)
        fps = target_clip.fps
        timings["prepare"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        verts, crops, codes = predict_with_codes(model, speech, fps, mouth_motion)
        n = len(verts)
        active = speech_activity(speech, n, fps)
        notes = list(target_clip.notes)
        if not active.any():
            notes.append("no speech was found in the audio: the mouth stays closed")
        timings["model"] = time.perf_counter() - t0

        sp = model.speaker
        mask = blend_mask(sp, sp.reference_atlas.shape[0])
        box = tuple(model.net.config.crop)
        ref_crop = model.net.reference_crop.numpy().transpose(1, 2, 0)  # (h, w, 3) in [0, 1]
        wav = work / "speech.wav"
        write_wav(wav, speech[: int(round(n / fps * 16000))])
        relight = bool(model.config.get("training", {}).get("options", {}).get("lighting_norm", True))
        bank = model.mouth_bank if mouth_bank else None
        if bank is not None:
            bank_index = bank.frame_choice(verts, codes)

        def texture_at(i: int) -> np.ndarray:
            atlas = assemble_atlas(sp.reference_atlas, crops[i] - ref_crop, box, mask)
            return atlas if bank is None else bank.paste(atlas, bank.patches[bank_index[i]].astype(np.float32))

        done = composite_video(sp, target_clip, verts, texture_at, out, wav, schedule=schedule, renderer=renderer, relight=relight, workdir=work,
                               crf=crf, progress=progress)
        timings.update(done["timings"])
        extras = {}
        if mesh:
            from ..export.gltf import write_glb

            extras["mesh"] = write_glb(mesh, sp.reference_vertices, sp.faces, sp.uv, sp.reference_atlas, verts, fps)
        if blendshapes:
            from ..export.blendshapes import fit_blendshapes, write_blendshapes_csv, blendshape_basis
            from ..topology import load_topology

            topo = load_topology()
            names, _ = blendshape_basis(sp.reference_vertices, topo)
            weights = fit_blendshapes(verts, sp.reference_vertices, topo)
            write_blendshapes_csv(blendshapes, weights, names, fps)
            extras["blendshapes"] = {"names": names, "frames": int(len(weights))}
    timings["total"] = time.perf_counter() - t_all
    return SynthesisResult(out=str(out), frames=n, fps=fps, seconds=n / fps, audio=origin,
                           resolution=f"{target_clip.width}x{target_clip.height}", renderer=done["renderer"],
                           target=str(target_clip.source), notes=notes, speech_fraction=float(active.mean()),
                           timings_s={k: round(v, 3) for k, v in timings.items()},
                           frames_per_second=round(n / max(timings["total"], 1e-9), 1), **extras)
