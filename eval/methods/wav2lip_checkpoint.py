"""``wav2lip_checkpoint``: the public Wav2Lip generator with an official checkpoint given by path.

Wav2Lip (Prajwal et al. 2020) is the reference generic (not personalized) lip-sync model. Its
weights cannot be downloaded here, so the user gives ``wav2lip.pth`` or ``wav2lip_gan.pth`` with
``--wav2lip-checkpoint PATH`` (``ctx.options['wav2lip_checkpoint']``). Inference follows the
release's ``inference.py`` step by step, with one substitution: face boxes come from the test
clip's tracked MediaPipe landmarks instead of the S3FD detector (the box of the 468 landmarks
spans brow to chin like S3FD's), padded and smoothed as inference.py does. Nothing is trained.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from lipsync.common import LipsyncError

from ..core import EVAL_CRF, TestClip, Unavailable, read_video
from . import Method, register

PADS = (0, 10, 0, 0)   # inference.py --pads default: top, bottom, left, right (pixels)
SMOOTH_WINDOW = 5      # inference.py get_smoothened_boxes(T=5)
BATCH_SIZE = 64        # frames per network call (inference.py uses 128; 64 keeps CPU memory low)
_SHOWN = 4             # mismatching keys named in an error


def face_boxes(landmarks: np.ndarray, height: int, width: int, *, pads=PADS) -> tuple[np.ndarray, np.ndarray]:
    """Wav2Lip face boxes from tracked landmarks.

    Args:
        landmarks: float (T, V, 2+) pixel coordinates (x right, y down); NaN where untracked.
    Returns:
        boxes: int64 (T, 4) x0, y0, x1, y1 (x1, y1 exclusive), the landmarks' bounding box
            truncated to integers (as the detector's boxes are), padded by ``pads`` and clipped
            to the frame; zeros where ``found`` is False.
        found: bool (T,) frames with a face (all landmarks finite and a non-empty box).
    """
    pts = np.asarray(landmarks, np.float64)[..., :2]
    found = np.isfinite(pts).all(axis=(1, 2))
    boxes = np.zeros((len(pts), 4), np.int64)
    if found.any():
        p = pts[found]
        lo = np.clip(p.min(axis=1), 0, None).astype(np.int64)  # inference.py clips the detection at 0
        hi = p.max(axis=1).astype(np.int64)
        top, bottom, left, right = pads
        boxes[found] = np.stack([np.maximum(0, lo[:, 0] - left), np.maximum(0, lo[:, 1] - top),
                                 np.minimum(width, hi[:, 0] + right), np.minimum(height, hi[:, 1] + bottom)], 1)
    found &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes, found


def smooth_boxes(boxes: np.ndarray, found: np.ndarray, cuts: np.ndarray | None = None,
                 *, window: int = SMOOTH_WINDOW) -> np.ndarray:
    """inference.py's box smoothing, applied to each run of consecutive frames with a face
    (runs also end at shot cuts): in order, box i becomes the integer mean of boxes i..i+window-1,
    or of the run's last ``window`` boxes (some already smoothed) near its end. Runs shorter than
    ``window`` use the whole run. int64 (T, 4), same layout as ``boxes``."""
    out = boxes.copy()
    cut = np.zeros(len(found), bool) if cuts is None else np.asarray(cuts, bool)
    first = found & (np.r_[True, ~found[:-1]] | cut)  # frames that start a run
    for s in np.flatnonzero(first):
        e = s + 1
        while e < len(found) and found[e] and not cut[e]:
            e += 1
        run = out[s:e]  # a view: updated in place, as inference.py updates its array
        n = len(run)
        for i in range(n):
            win = run[i:i + window] if i + window <= n else run[max(0, n - window):]
            run[i] = np.mean(win, axis=0)  # assignment into int64 truncates, as in inference.py
    return out


def _official_keys(state: dict) -> dict:
    """Unwrap ``{'state_dict': ...}`` and strip DataParallel's ``module.`` prefix."""
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise TypeError(f"holds a {type(state).__name__}, not a state dict")
    return {(k[len("module."):] if isinstance(k, str) and k.startswith("module.") else k): v for k, v in state.items()}


def load_wav2lip(path: str | Path, device: str = "cpu"):
    """The Wav2Lip generator with the weights of an official checkpoint, in eval mode on ``device``.

    Accepts the release's layout (``{'state_dict': {'module.face_encoder_blocks...': ...}, ...}``)
    and a bare state dict, with or without the ``module.`` prefix. The file is read with
    ``torch.load(weights_only=True)`` (tensors and plain containers only; no code runs).
    Raises ``Unavailable`` naming the path when it is missing, unreadable or not a Wav2Lip
    generator checkpoint (with the first mismatching keys).
    """
    import torch

    from .wav2lip_net import Wav2LipNet

    path = Path(path)
    if path.is_dir():
        raise Unavailable(f"the Wav2Lip checkpoint {path} is a folder; give the path of the wav2lip.pth or wav2lip_gan.pth file.")
    if not path.is_file():
        raise Unavailable(f"the Wav2Lip checkpoint {path} does not exist; give the path of wav2lip.pth or wav2lip_gan.pth.")
    try:
        raw = torch.load(str(path), map_location="cpu", weights_only=True)
        state = _official_keys(raw)
    except Exception as err:  # torch raises many types for a non-checkpoint file
        why = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise Unavailable(f"{path} is not a readable PyTorch checkpoint ({why}); give the official wav2lip.pth or wav2lip_gan.pth.") from None
    net = Wav2LipNet()
    expected = net.state_dict()
    # BatchNorm's batch counter is unused at inference; accept files saved without it
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(getattr(state[k], 'shape', ()))} (expected {tuple(v.shape)})" for k, v in expected.items()
             if k in state and tuple(getattr(state[k], "shape", ())) != tuple(v.shape)]
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
                parts.append(f"{label}: {', '.join(map(str, items[:_SHOWN]))}{more}")
        raise Unavailable(f"{path} is not a Wav2Lip generator checkpoint ({'; '.join(parts)}); give the official wav2lip.pth or wav2lip_gan.pth.")
    net.load_state_dict(state, strict=True)
    return net.to(device).eval()


def lip_sync_frames(net, frames: np.ndarray, boxes: np.ndarray, mels: np.ndarray, *, device: str = "cpu") -> np.ndarray:
    """Run the generator on a batch and paste its faces back.

    Args:
        frames: uint8 (B, H, W, 3) RGB target frames (one per output frame).
        boxes: int (B, 4) x0, y0, x1, y1 face boxes, non-empty.
        mels: float32 (B, 80, 16) mel windows.
    Returns:
        uint8 (B, H, W, 3) RGB frames with the box replaced by the generated face.
    """
    import cv2
    import torch

    from .wav2lip_net import FACE_SIZE

    # 1. 96x96 face crops in BGR (Wav2Lip was trained on OpenCV's BGR images)
    faces = np.stack([cv2.resize(np.ascontiguousarray(f[y0:y1, x0:x1, ::-1]), (FACE_SIZE, FACE_SIZE))
                      for f, (x0, y0, x1, y1) in zip(frames, boxes)])  # (B, 96, 96, 3)
    # 2. the lower half masked, concatenated with the unmasked reference: 6 channels in [0, 1]
    masked = faces.copy()
    masked[:, FACE_SIZE // 2:] = 0
    pair = np.concatenate([masked, faces], axis=3).astype(np.float32) / 255.0  # (B, 96, 96, 6)
    with torch.no_grad():
        pred = net(torch.from_numpy(mels[:, None]).to(device),
                   torch.from_numpy(pair.transpose(0, 3, 1, 2).copy()).to(device))  # (B, 3, 96, 96)
    pred = (pred.cpu().numpy().transpose(0, 2, 3, 1) * 255.0).astype(np.uint8)  # truncates, as inference.py
    # 3. resized to the box and pasted back (BGR -> RGB)
    out = np.array(frames, copy=True)
    for o, p, (x0, y0, x1, y1) in zip(out, pred, boxes):
        o[y0:y1, x0:x1] = cv2.resize(p, (int(x1 - x0), int(y1 - y0)))[..., ::-1]
    return out


@register
class Wav2LipCheckpoint(Method):
    name = "wav2lip_checkpoint"
    description = "Wav2Lip (Prajwal et al. 2020), the official generic checkpoint given by path; not personalized"
    trainable = False

    def __init__(self, ctx):
        super().__init__(ctx)
        self._net = None

    def _path(self) -> Path:
        given = self.ctx.options.get("wav2lip_checkpoint")
        if not given:
            raise Unavailable("no Wav2Lip checkpoint was given; give the official checkpoint with --wav2lip-checkpoint PATH (it cannot be downloaded here).")
        return Path(given).expanduser()

    def _device(self) -> str:
        from lipsync.common import resolve_device

        return resolve_device(self.ctx.device)

    def _model(self):
        if self._net is None:
            self._net = load_wav2lip(self._path(), self._device())
        return self._net

    def check(self) -> None:
        self._model()

    def fit(self) -> dict:
        net = self._model()
        return {"cached": True, "trained": False, "checkpoint": str(self._path()),
                "parameters": int(sum(p.numel() for p in net.parameters()))}

    def render(self, clip: TestClip, audio: Path, out: Path) -> dict:
        import time

        from lipsync.audio_features import frames_for_audio
        from lipsync.media import load_audio, write_wav
        from lipsync.prepared import open_prepared
        from lipsync.media import VideoWriter

        from lipsync.synthesis.schedule import ping_pong
        from .wav2lip_net import melspectrogram, mel_windows

        t0 = time.perf_counter()
        net = self._model()
        device = self._device()
        # 1. audio -> one mel window per output frame
        speech = load_audio(audio)
        n = frames_for_audio(len(speech), clip.fps)
        if n < 1:
            raise LipsyncError(f"{audio} is shorter than one video frame; give at least {1000 / clip.fps:.0f} ms of audio.")
        mel = melspectrogram(speech)
        if not np.isfinite(mel).all():
            raise LipsyncError(f"the mel spectrogram of {audio} has NaN values; check that the file is not corrupt.")
        mels = mel_windows(mel, n, clip.fps)  # (n, 80, 16)
        # 2. face boxes of the clip's frames, from its tracked landmarks
        prepared = open_prepared(clip.prepared)
        landmarks = np.asarray(prepared.array("landmarks"))
        if len(landmarks) != clip.frames:
            raise LipsyncError(f"{clip.prepared} has {len(landmarks)} frames but the clip {clip.video} has {clip.frames}; prepare the clip again.")
        boxes, found = face_boxes(landmarks, clip.height, clip.width)
        cuts = np.asarray(prepared.array("cuts")) if prepared.info.has_array("cuts") else None
        boxes = smooth_boxes(boxes, found, cuts)
        schedule = ping_pong(n, clip.frames)
        # 3. generate batch by batch and write
        with tempfile.TemporaryDirectory(prefix="wav2lip-") as tmp:
            frames = read_video(clip.video, Path(tmp))
            if len(frames) < clip.frames:
                raise LipsyncError(f"{clip.video} decodes to {len(frames)} frames, fewer than the {clip.frames} expected; re-encode it.")
            # the sound padded to exactly n frames, so the writer's -shortest never drops a frame
            track = Path(tmp) / "audio.wav"
            write_wav(track, np.pad(speech, (0, max(0, int(np.ceil(n / clip.fps * 16000)) - len(speech)))))
            writer = VideoWriter(out, clip.width, clip.height, clip.fps, track, crf=EVAL_CRF)
            generated = 0
            try:
                for st in range(0, n, BATCH_SIZE):
                    idx = schedule[st:st + BATCH_SIZE]
                    batch = np.array(frames[idx])  # (b, H, W, 3)
                    face = found[idx]
                    if face.any():
                        batch[face] = lip_sync_frames(net, batch[face], boxes[idx][face],
                                                      mels[st:st + BATCH_SIZE][face], device=device)
                        generated += int(face.sum())
                    for frame in batch:
                        writer.write(frame)
                    self.ctx.progress("wav2lip", min(n, st + BATCH_SIZE), n)
                writer.finish()
            except BaseException:
                writer.abort()
                raise
        return {"frames": n, "generated_frames": generated, "passed_through": n - generated,
                "seconds": round(time.perf_counter() - t0, 3), "device": device}
