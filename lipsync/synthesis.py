"""``lipsync synthesize``: new audio -> the speaker's face, inserted into a target video.

1. Audio: any file ffmpeg reads, or text spoken by espeak-ng; 16 kHz mono; one frame per 1/fps s.
2. The model predicts, auto-regressively, the pose-normalized vertices and the lower-face texture
   of every output frame.
3. The target (the training video by default, or any video or still image of the same person,
   preprocessed on the fly) gives each output frame a real frame, its head pose and its lighting;
   target frames are played forward and backward (ping-pong) when the audio is longer.
4. The predicted mesh is posed like the target frame, textured with the predicted atlas under the
   target frame's lighting (the inverse of the lighting normalization), rendered, and blended into
   the frame through a feathered lower-face mask, so no seam shows.
5. Frames and audio are encoded to H.264 + AAC (browser-playable mp4), written atomically.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .common import LipsyncError, Progress, path_arg
from .media import _tool



# ---------------------------------------------------------------------------------------------
# audio

VOICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_+-]{0,39}$")  # espeak-ng voice names: en, en-us, de, en+f3


def text_to_speech(text: str, folder: Path, *, voice: str = "en", max_seconds: float | None = None) -> Path:
    """Speak ``text`` with espeak-ng (offline) into ``folder / "tts.wav"``.

    The text is handed over after ``--``, so espeak-ng reads it as words to speak even when it
    starts with ``-`` (``-f FILE`` would otherwise read a file aloud, ``-w PATH`` write elsewhere).
    ``max_seconds``: refuse speech longer than this (the file is removed).
    """
    if not text or not text.strip():
        raise LipsyncError("--text is empty; give the words to speak.")
    if "\x00" in text:
        raise LipsyncError("--text contains a NUL character; give plain text.")
    if not VOICE_RE.match(voice):
        raise LipsyncError(f"{voice!r} is not an espeak-ng voice name (e.g. en, en-us, de).")
    exe = shutil.which("espeak-ng") or shutil.which("espeak")
    if exe is None:
        raise LipsyncError("espeak-ng is not installed, so --text cannot be spoken; install it (apt-get install espeak-ng) or give --audio.")
    path = folder / "tts.wav"
    proc = subprocess.run([exe, "-v", voice, "-w", path_arg(path), "--", text], capture_output=True, text=True)
    if proc.returncode != 0 or not path.is_file():
        raise LipsyncError(f"espeak-ng could not speak the text ({proc.stderr.strip() or 'no output'}).")
    if max_seconds is not None:
        import soundfile as sf

        seconds = sf.info(str(path)).duration
        if seconds > max_seconds + 0.5:
            path.unlink()
            raise LipsyncError(f"the text takes {seconds:.0f} s to speak; the limit here is {max_seconds:.0f} s of "
                               "speech, so shorten it.")
    return path


def load_speech(audio: str | Path | None, text: str | None, folder: Path) -> tuple[np.ndarray, str]:
    """16 kHz mono float32 speech and a description of where it came from."""
    from .media import load_audio

    if (audio is None) == (text is None):
        raise LipsyncError("give exactly one of --audio FILE or --text \"...\".")
    if text is not None:
        path = text_to_speech(text, folder)
        return load_audio(path), f"text ({len(text)} characters, espeak-ng)"
    path = Path(audio)
    if not path.is_file():
        raise LipsyncError(f"{path} does not exist." if not path.exists() else f"{path} is not a file.")
    if path.stat().st_size == 0:
        raise LipsyncError(f"{path} is empty (0 bytes); give an audio file with speech.")
    try:
        samples = load_audio(path)
    except LipsyncError:
        raise LipsyncError(f"{path} has no audio that ffmpeg can decode; give a wav, mp3, m4a or a video with sound.") from None
    return samples, str(path)


# ---------------------------------------------------------------------------------------------
# targets

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
        from .media import FrameReader, probe

        store = np.lib.format.open_memmap(folder / "target_frames.npy", mode="w+", dtype=np.uint8,
                                          shape=(max(count, 1), self.height, self.width, 3))
        n = 0
        for frame in FrameReader(probe(self.source), max_frames=count):
            store[n] = frame
            n += 1
        return store[:n]


def _align_to(model_ref: np.ndarray, target_ref: np.ndarray, stable: np.ndarray):
    """Similarity mapping the model's canonical frame onto the target clip's, and the shape
    difference after it (RMS over all vertices, relative to the stable vertices' RMS radius)."""
    from .pose import apply_similarity, fit_similarity

    s, r, t = fit_similarity(model_ref[stable], target_ref[stable])
    mapped = apply_similarity(model_ref[None], s[None], r[None], t[None])[0]
    radius = np.sqrt(((target_ref[stable] - target_ref[stable].mean(0)) ** 2).sum(1).mean())
    diff = float(np.sqrt(((mapped - target_ref) ** 2).sum(1).mean()) / radius)
    return (float(s), r, t), diff


def appearance_similarity(model_atlas: np.ndarray, model_skin: np.ndarray, target_atlas: np.ndarray) -> float:
    """How alike two speakers' reference atlases look: the correlation of their log luminance over
    the texels both cover, after the target's smooth lighting relative to the model is removed."""
    from .lighting import estimate_gains, log_field, to_log

    cov = (model_atlas.max(-1) > 0) & (target_atlas.max(-1) > 0)
    ref_log = to_log(model_atlas)
    terms, g = estimate_gains(target_atlas[None], cov[None], ref_log, model_skin & cov, degree=2)
    if not np.isfinite(g).all():
        return 0.0
    tgt_log = to_log(target_atlas) - log_field(g[0], terms, model_atlas.shape[0])
    x, y = ref_log.mean(-1)[cov], tgt_log.mean(-1)[cov]
    return float(np.corrcoef(x, y)[0, 1]) if len(x) > 100 else 0.0


# appearance similarity below which the target is probably someone else: measured 0.85-0.91
# between clips of the same GRID speaker and 0.29-0.60 between pairs of six different people
SAME_PERSON = 0.75


def prepare_target(model, target: str | Path | None, workdir: Path, progress: Progress | None = None) -> Target:
    """The training clip (``target=None``), a prepared clip folder made with ``--keep-raw-atlas``,
    or any video/still image, preprocessed on the fly."""
    return target_for_speaker(model.speaker, target, workdir, progress,
                              training_prepared=model.config.get("training", {}).get("prepared"))


def target_for_speaker(speaker, target: str | Path | None, workdir: Path, progress: Progress | None = None, *,
                       training_prepared: str | None = None) -> Target:
    """``prepare_target`` for a speaker's reference data (``model_io.SpeakerData``)."""
    from .lighting import frame_gains, to_log
    from .preprocessing import PreprocessOptions, preprocess
    from .prepared import MANIFEST, open_prepared
    from .topology import load_topology

    topo = load_topology()
    notes: list[str] = []
    if target is None:
        prepared = training_prepared
        if not prepared or not Path(prepared).is_dir():
            raise LipsyncError("the model's training clip is not on this machine any more; give a target video or image with --target.")
        clip = open_prepared(prepared)
        source = Path(clip.manifest["source"])
        if not source.is_file():
            raise LipsyncError(f"the training video {source} is gone; give a target video or image with --target.")
        gains = np.array(clip.array("lighting_gains"))
        terms = [tuple(t) for t in clip.manifest["lighting"]["temporal_terms"]]
        pose_s, pose_r, pose_t = (np.array(clip.array(k)) for k in ("pose_scale", "pose_rotation", "pose_translation"))
        return Target(source=source, fps=clip.fps, width=clip.manifest["width"], height=clip.manifest["height"],
                      valid=np.array(clip.array("valid")), pose_scale=pose_s, pose_rotation=pose_r, pose_translation=pose_t,
                      gains=gains, terms=terms, frames_total=clip.num_frames, notes=notes)

    target = Path(target)
    from .media import probe

    size = int(speaker.reference_atlas.shape[0])
    opts = PreprocessOptions(atlas_size=size, keep_raw_atlas=True, previews=False, require_audio=False, min_seconds=0.5)
    if target.is_dir() and (target / MANIFEST).is_file():
        clip = open_prepared(target)
        if "atlas_raw" not in clip.manifest["arrays"] or clip.atlas_size != size:
            raise LipsyncError(f"the prepared target {target} needs the raw atlas at size {size}; preprocess it with "
                               f"--keep-raw-atlas --atlas-size {size}.")
        video = Path(clip.manifest["source"])
    else:
        video = target
        try:
            probe(target)
        except LipsyncError as err:
            if "still image" not in str(err):
                raise
            video = workdir / "still.mp4"  # a still image becomes a one-second video of itself
            proc = subprocess.run([_tool("ffmpeg"), "-nostdin", "-v", "error", "-y", "-loop", "1", "-i",
                                   path_arg(target), "-t", "1", "-r", "25", "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2",
                                   "-pix_fmt", "yuv420p", "-c:v", "libx264", path_arg(video)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise LipsyncError(f"{target} could not be read as an image ({proc.stderr.strip()}).") from None
            notes.append("the target is a still image: the head stays still")
        clip = open_prepared(preprocess(video, workdir / "target", options=opts,
                                        progress=progress and (lambda st, d, t: progress(f"target {st}", d, t))))
    (s, r, t), _ = _align_to(speaker.reference_vertices, np.array(clip.array("reference_vertices")),
                             topo.regions["stable"])
    similarity = appearance_similarity(speaker.reference_atlas, speaker.region_masks[0],
                                       np.array(clip.array("reference_atlas")))
    if similarity < SAME_PERSON:
        msg = (f"the target's face does not look like the model's speaker (similarity {similarity:.2f} < {SAME_PERSON}); "
               "it is probably a different person, and the result will look wrong")
        warnings.warn(msg, stacklevel=2)
        notes.append(msg)
    # compose: model canonical -> target canonical (s, r, t) -> target image (per-frame pose)
    ps, pr, pt = (np.array(clip.array(k)) for k in ("pose_scale", "pose_rotation", "pose_translation"))
    pose_s = ps * s
    pose_r = pr @ r
    pose_t = pt + ps[:, None] * np.einsum("tij,j->ti", pr, t)
    # lighting of each target frame relative to the model's normalized reference
    skin = speaker.region_masks[0] & (speaker.reference_atlas.max(-1) > 0)
    valid = np.array(clip.array("valid"))
    terms, gains = frame_gains(clip.array("atlas_raw"), clip.array("atlas_mask"), to_log(speaker.reference_atlas), skin,
                               degree=opts.lighting_degree, valid=valid, chunk=opts.chunk)
    return Target(source=video, fps=clip.fps, width=clip.manifest["width"], height=clip.manifest["height"], valid=valid,
                  pose_scale=pose_s, pose_rotation=pose_r.astype(np.float32), pose_translation=pose_t.astype(np.float32),
                  gains=gains, terms=terms, frames_total=clip.num_frames, notes=notes)


def ping_pong(count: int, length: int) -> np.ndarray:
    """Indices 0, 1, ..., n-1, n-2, ..., 1, 0, 1, ... of length ``count`` over ``length`` frames."""
    if length <= 1:
        return np.zeros(count, np.int64)
    period = 2 * length - 2
    k = np.arange(count) % period
    return np.where(k < length, k, period - k)


# ---------------------------------------------------------------------------------------------
# compositing

def blend_mask(speaker, size: int, *, feather: float | None = None) -> np.ndarray:
    """float32 (S, S) in [0,1]: the lower face and mouth, eroded then blurred so it fades out well
    inside the face and the rendered face blends into the frame without a visible edge."""
    import cv2

    regions = speaker.region_masks
    covered = speaker.reference_atlas.max(-1) > 0
    lower = (regions[2] | regions[1]) & covered
    feather = feather or size / 40.0
    k = int(2 * round(feather) + 1)
    inner = cv2.erode(lower.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    soft = cv2.GaussianBlur(inner.astype(np.float32), (0, 0), feather)
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


class VideoWriter:
    """Raw RGB frames piped into ffmpeg (H.264 yuv420p + the AAC audio), written to a temporary
    file and moved into place by ``finish()``; ``abort()`` removes it. As a context manager it
    finishes when the block ends normally and aborts when it raises."""

    def __init__(self, out: Path, width: int, height: int, fps: float, audio_wav: Path, *, crf: int = 18):
        self.out = out
        self.tmp = out.with_name(f".{out.stem}.partial-{os.getpid()}{out.suffix or '.mp4'}")
        cmd = [_tool("ffmpeg"), "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{width}x{height}", "-r", f"{fps}", "-i", "-", "-i", path_arg(audio_wav), "-map", "0:v", "-map", "1:a",
               "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-preset", "veryfast", "-crf", str(int(crf)),
               "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k", "-shortest", "-movflags", "+faststart",
               "-f", "mp4", path_arg(self.tmp)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()

    def write(self, frame: np.ndarray) -> None:
        self.proc.stdin.write(np.ascontiguousarray(frame, np.uint8).tobytes())

    def finish(self) -> None:
        self.proc.stdin.close()
        err = self.proc.stderr.read().decode("utf-8", "replace")
        self.proc.stderr.close()
        if self.proc.wait() != 0:
            self.abort()
            raise LipsyncError(f"ffmpeg could not encode {self.out} ({err.strip().splitlines()[-1] if err.strip() else 'unknown error'}).")
        os.replace(self.tmp, self.out)

    def abort(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stderr):
            try:
                stream.close()
            except (OSError, ValueError):
                pass
        self.tmp.unlink(missing_ok=True)


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


# ---------------------------------------------------------------------------------------------
# the whole run

def predict(model, audio: np.ndarray, fps: float):
    """Model outputs for 16 kHz ``audio`` at ``fps``: vertices (T,V,3) and crops (T,H,W,3) in [0,1]."""
    import torch

    from .audio_features import audio_windows, frames_for_audio

    n = frames_for_audio(len(audio), fps)
    if n < 1:
        raise LipsyncError(f"the audio is shorter than one video frame ({len(audio) / 16000 * 1000:.0f} ms); give at least {1000 / fps:.0f} ms of speech.")
    windows = model.audio_norm.apply(audio_windows(audio, n, fps))[:, None]
    with torch.no_grad():
        verts, crops = model.net.rollout(torch.from_numpy(windows))
    return verts.numpy(), crops.permute(0, 2, 3, 1).numpy()


def frame_schedule(count: int, target, mode: str = "usable") -> np.ndarray:
    """Which target frame each of ``count`` output frames is laid over.

    ``usable``: back and forth (ping-pong) over the target's frames with a usable face, so every
    output frame shows the synthesized mouth; ``aligned``: output frame i over target frame i
    (ping-pong over all frames when the audio is longer), so output and target stay in step, as an
    evaluation against the target's own frames needs (frames without a face pass through).
    """
    if mode == "aligned":
        return ping_pong(count, target.frames_total)
    if mode != "usable":
        raise ValueError(f"unknown schedule {mode!r}")
    usable = np.flatnonzero(target.valid)
    if len(usable) == 0:
        raise LipsyncError(f"no frame of the target {target.source} has a usable face; give another target.")
    return usable[ping_pong(count, len(usable))]


TEXTURE_UPSAMPLE = 2  # atlas enlargement before rendering (see composite_video)
# Bumped whenever rendering or blending changes what a video looks like, so that caches of
# rendered videos (eval.run's) are not reused across such a change.
RENDER_VERSION = 2


def composite_video(speaker, target: Target, verts: np.ndarray, texture_at: Callable[[int], np.ndarray], out: Path,
                    wav: Path, *, schedule: str = "usable", renderer: str = "auto", relight: bool = True,
                    workdir: Path, crf: int = 18, progress: Progress | None = None,
                    texture_upsample: int = TEXTURE_UPSAMPLE) -> dict:
    """Render the face ``verts`` (T,V,3, canonical units of ``speaker``) with the atlas
    ``texture_at(i)`` (float32 (S,S,4), 0..255, alpha = blend weight) into the target's frames,
    re-applying each target frame's head pose and (``relight``) lighting, and encode ``out`` with
    the audio ``wav``. Returns timings and the renderer used.

    ``texture_upsample``: the atlas is enlarged this many times (bicubic) before rendering, so the
    renderers' bilinear lookup does not blur the mouth a second time (1: render the atlas as is)."""
    import cv2

    from .lighting import log_field
    from .pose import apply_similarity
    from .render import make_renderer

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
    size = speaker.reference_atlas.shape[0]
    h, w = target.height, target.width
    up = max(1, int(texture_upsample))
    rend = make_renderer(renderer, h, w, speaker.faces, speaker.uv, size * up, channels=4)
    writer = VideoWriter(out, w, h, target.fps, wav, crf=crf)
    t_render = t_blend = t_write = 0.0
    try:
        for i in range(n):
            k = int(order[i])
            frame = frames[k]
            if not target.valid[k] or not np.isfinite(target.pose_scale[k]):
                writer.write(frame)
                continue
            ta = time.perf_counter()
            tex = texture_at(i)
            g = target.gains[k]
            if relight and np.isfinite(g).all():
                tex[..., :3] = np.clip(tex[..., :3] * np.exp(log_field(g, target.terms, size)), 0, 255)
            if up > 1:
                tex = np.clip(cv2.resize(tex, (size * up, size * up), interpolation=cv2.INTER_CUBIC), 0, 255)
            pts = apply_similarity(verts[i][None], target.pose_scale[k][None], target.pose_rotation[k][None],
                                   target.pose_translation[k][None])[0]
            img, cover = rend.render(pts, tex)
            tb = time.perf_counter()
            alpha = (img[..., 3:4] / 255.0) * cover[..., None]
            blended = frame.astype(np.float32) * (1 - alpha) + img[..., :3] * alpha
            result = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
            tc = time.perf_counter()
            writer.write(result)
            t_render += tb - ta
            t_blend += tc - tb
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
        close = getattr(rend, "close", None)
        if close:
            close()
    timings.update(render=t_render, blend=t_blend, encode=t_write)
    return {"timings": timings, "renderer": type(rend).__name__}


def synthesize(model, *, out: str | Path, audio: str | Path | None = None, text: str | None = None,
               target: str | Path | None = None, mesh: str | Path | None = None,
               blendshapes: str | Path | None = None, renderer: str = "auto", schedule: str = "usable",
               crf: int = 18, progress: Progress | None = None) -> dict:
    """Make a talking-head video (and optionally a .glb and a blendshape CSV); returns a summary.

    ``schedule``: how output frames follow the target's frames (see ``frame_schedule``); ``crf``:
    the H.264 quality (lower = closer to lossless, larger files)."""
    from .media import write_wav

    progress = progress or (lambda stage, done, total: None)
    out = _check_output(Path(out), (".mp4",), "video")
    mesh = _check_output(Path(mesh), (".glb",), "3D mesh") if mesh else None
    blendshapes = _check_output(Path(blendshapes), (".csv",), "blendshape weights") if blendshapes else None
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lipsync-synth-") as tmpdir:
        work = Path(tmpdir)
        t0 = time.perf_counter()
        speech, origin = load_speech(audio, text, work)
        from .audio_features import speech_activity

        target_clip = prepare_target(model, target, work, progress)
        fps = target_clip.fps
        timings["prepare"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        verts, crops = predict(model, speech, fps)
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
        done = composite_video(sp, target_clip, verts, lambda i: assemble_atlas(sp.reference_atlas, crops[i] - ref_crop, box, mask),
                               out, wav, schedule=schedule, renderer=renderer, relight=relight, workdir=work,
                               crf=crf, progress=progress)
        timings.update(done["timings"])
        extras = {}
        if mesh:
            from .export.gltf import write_glb

            extras["mesh"] = write_glb(mesh, sp.reference_vertices, sp.faces, sp.uv, sp.reference_atlas, verts, fps)
        if blendshapes:
            from .export.blendshapes import fit_blendshapes, write_blendshapes_csv, blendshape_basis
            from .topology import load_topology

            topo = load_topology()
            names, _ = blendshape_basis(sp.reference_vertices, topo)
            weights = fit_blendshapes(verts, sp.reference_vertices, topo)
            write_blendshapes_csv(blendshapes, weights, names, fps)
            extras["blendshapes"] = {"names": names, "frames": int(len(weights))}
    timings["total"] = time.perf_counter() - t_all
    return {"out": str(out), "frames": n, "fps": fps, "seconds": n / fps, "audio": origin,
            "resolution": f"{target_clip.width}x{target_clip.height}", "renderer": done["renderer"],
            "target": str(target_clip.source), "notes": notes, "speech_fraction": float(active.mean()),
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
            "frames_per_second": round(n / max(timings["total"], 1e-9), 1), **extras}
