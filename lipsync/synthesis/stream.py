"""Streaming synthesis: audio in chunks of any size -> video frames as soon as they can be made.

``LiveSession(model, target)`` is fed audio with ``push(samples, sample_rate)`` (16-bit PCM or
float, any rate; resampled to 16 kHz by a stateful resampler) and returns the frames that became
ready, each with its presentation time and the audio it shows; ``finish()`` ends the stream (the
last frames see the silence after it, as offline synthesis does). Nothing of the past is
recomputed:

- the log-mel spectrogram grows a column (10 ms) at a time, each column computed alone, so the
  result does not depend on how the audio was cut into chunks;
- frame t needs the spectrogram its model's lookahead (110 ms for a centred window, less for a
  model trained with ``lookahead_ms``) plus half an FFT window past its centre, the model's audio
  window; the mouth bank's blend weights are mixed with the next frame's, one frame more
  (``lookahead_s`` is the sum);
- the geometry and the guarded auto-regressive texture run one frame at a time
  (``TalkingFaceModel.texture_step``, the offline loop's own step);
- the target's usable frames play forward and backward (``ping_pong``), without end;
- each frame is composed by ``FrameCompositor``, as offline.

The frames equal offline ``synthesize``'s on the same audio up to float rounding (batched
against one-at-a-time products); silence gives the speaker's closed mouth.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..audio_features import HOP, LOG_FLOOR, N_FFT, SAMPLE_RATE, centre_column, log_mel_columns, window_offsets
from ..common import LipsyncError
from .composite import FrameCompositor, assemble_atlas, blend_mask
from .schedule import ping_pong_at
from .targets import prepare_target


@dataclass(frozen=True)
class LiveFrame:
    """Members:
        index: frame number from the start of the stream.
        time_s: its presentation time (index / fps).
        image: uint8 (H, W, 3) RGB.
        audio: float32 (n,) the 16 kHz samples it shows (its 1/fps seconds of the stream).
        vertices: float32 (V, 3) the face mesh in the speaker's canonical units (for 3D avatars).
        ready_s: ``time.perf_counter()`` when it was made (latency measurements).
    """
    index: int
    time_s: float
    image: np.ndarray
    audio: np.ndarray
    vertices: np.ndarray
    ready_s: float


def to_float_audio(samples) -> np.ndarray:
    """Mono float32 in [-1, 1] from int16 PCM (array or bytes) or float samples (averaging channels
    given as (n, channels))."""
    if isinstance(samples, (bytes, bytearray, memoryview)):
        if len(samples) % 2:
            raise LipsyncError("16-bit PCM audio must have an even number of bytes.")
        samples = np.frombuffer(samples, "<i2")
    x = np.asarray(samples)
    if x.ndim == 2:
        x = x.mean(axis=1) if x.dtype.kind == "f" else x.astype(np.float64).mean(axis=1)
    if x.ndim != 1:
        raise LipsyncError("audio chunks must be 1-D (mono) or (samples, channels).")
    if x.dtype == np.int16:
        return (x.astype(np.float32) / 32768.0).astype(np.float32)
    if x.dtype.kind in "iu":
        raise LipsyncError(f"integer audio must be 16-bit PCM, not {x.dtype}.")
    return x.astype(np.float32)


class StreamingLogMel:
    """``audio_features.log_mel`` a column at a time as samples arrive (the same zero padding of half
    an FFT window before the first sample, and after the last at ``finish``). Keeps only the
    samples of columns still to come and the columns from ``forget_before`` on."""

    def __init__(self):
        self._samples = np.zeros(N_FFT // 2, np.float32)  # padded signal from position _base on
        self._base = 0
        self._cols: list[np.ndarray] = []
        self._first = 0  # column number of _cols[0]
        self.finished = False

    def __len__(self) -> int:
        """Columns computed so far."""
        return self._first + len(self._cols)

    def column(self, k: int) -> np.ndarray:
        return self._cols[k - self._first]

    def forget_before(self, k: int) -> None:
        drop = min(len(self._cols), k - self._first)
        if drop > 0:
            del self._cols[:drop]
            self._first += drop

    def push(self, audio: np.ndarray) -> None:
        self._samples = np.concatenate([self._samples, audio])
        self._compute()

    def finish(self) -> None:
        self._samples = np.concatenate([self._samples, np.zeros(N_FFT // 2, np.float32)])
        self.finished = True
        self._compute()

    def _compute(self) -> None:
        k = len(self)
        while HOP * k + N_FFT <= self._base + len(self._samples):
            at = HOP * k - self._base
            self._cols.append(log_mel_columns(self._samples[None, at:at + N_FFT])[:, 0])
            k += 1
        keep = HOP * k - self._base  # the next column starts here
        if keep > 0:
            self._samples = self._samples[keep:]
            self._base += keep


class LiveTarget:
    """A target made ready once for any number of live sessions of one model: prepared (tracked,
    posed, lit) and its usable frames held in memory. Sessions share it; ``close`` frees it."""

    def __init__(self, model, target: str | Path | None = None, *, workdir: str | Path | None = None, progress=None):
        """``target``: as for ``synthesize`` (None: the training video); ``workdir``: where the
        target is prepared and its frames kept (a temporary folder, removed by ``close``, if None)."""
        import shutil
        import tempfile

        self.model = model
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="lipsync-live-") if workdir is None else workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.target = prepare_target(model, target, self.workdir, progress)
            self.fps = float(self.target.fps)
            usable = np.flatnonzero(self.target.valid)
            if len(usable) == 0:
                raise LipsyncError(f"no frame of the target {self.target.source} has a usable face; give another target.")
            self.frames = self.target.read_frames(int(usable.max()) + 1, self.workdir)
            self.usable = usable[usable < len(self.frames)]
        except BaseException:
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        self.relight = bool(model.config.get("training", {}).get("options", {}).get("lighting_norm", True))
        self.size = (int(self.frames[0].shape[1]), int(self.frames[0].shape[0]))  # (width, height)

    def close(self) -> None:
        """Remove a temporary work folder (sessions still running keep the frames they hold)."""
        if self._own_workdir:
            import shutil

            shutil.rmtree(self.workdir, ignore_errors=True)


class LiveSession:
    """One live stream of a model into a target (the training video by default): ``push`` audio,
    get ``LiveFrame``s. Not thread-safe: one caller feeds it. Memory stays bounded however long
    the stream runs (only the audio and spectrogram columns of frames still to come are kept)."""

    def __init__(self, model, target: "str | Path | LiveTarget | None" = None, *, workdir: str | Path | None = None,
                 renderer: str = "auto", mouth_bank: bool = True, mouth_motion: float = 1.0, progress=None):
        """``target``: a ``LiveTarget`` shared with other sessions, or as for ``synthesize`` (None:
        the training video), then prepared for this session alone in ``workdir`` (a temporary
        folder, removed by ``close``, if None)."""
        import torch

        from ..model.mouth_bank import MouthPath
        from .pipeline import check_mouth_motion

        self.model = model
        self.mouth_motion = check_mouth_motion(mouth_motion)
        model.net.eval()
        self._own_target = not isinstance(target, LiveTarget)
        live = LiveTarget(model, target, workdir=workdir, progress=progress) if self._own_target else target
        if live.model is not model:
            raise LipsyncError("this live target was made ready for another model; make one for this model.")
        try:
            self.live_target, self.target, self.fps = live, live.target, live.fps
            self.frames, self.usable = live.frames, live.usable
            self.compositor = FrameCompositor(model.speaker, self.target, renderer=renderer, relight=live.relight)
        except BaseException:
            if self._own_target:
                live.close()
            raise
        sp = model.speaker
        self.mask = blend_mask(sp, sp.reference_atlas.shape[0])
        self.box = tuple(model.net.config.crop)
        self.ref_crop = model.net.reference_crop.numpy().transpose(1, 2, 0)
        self.bank = model.mouth_bank if mouth_bank else None
        self._path = MouthPath(self.bank) if self.bank is not None else None
        self.bank_radius = self._path.lag if self.bank is not None else 0
        self.columns = model.net.config.columns
        self.offsets = window_offsets(self.columns, model.net.config.lookahead)  # window columns around a centre
        self.spec = StreamingLogMel()
        self._audio = np.zeros(0, np.float32)  # 16 kHz samples from _audio_base on
        self._audio_base = 0
        self.received = 0  # 16 kHz samples received in all
        self._resampler = None
        self._rate = None
        self._prev = model.net.reference_crop[None]
        self._torch = torch
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # (verts, crop) of frames emitted + i
        self._mouths: list[int] = []  # bank mouths chosen for frames emitted + i
        self.predicted = 0  # frames whose geometry and texture are made
        self.emitted = 0
        self.resets = 0
        self.closed = False

    @property
    def lookahead_s(self) -> float:
        """Audio past a frame's start that must arrive before the frame can be made: the model's
        window (its columns past the frame's centre, plus half an FFT window) and the frames the
        mouth bank's path looks ahead."""
        past_centre = int(self.offsets[-1]) * HOP / SAMPLE_RATE + (N_FFT // 2) / SAMPLE_RATE
        return 0.5 / self.fps + past_centre + self.bank_radius / self.fps

    def push(self, samples, sample_rate: int = SAMPLE_RATE) -> list[LiveFrame]:
        """Feed a chunk of audio (any size, even one sample); returns the frames it completed."""
        if self.closed:
            raise LipsyncError("this live session has finished; start a new one.")
        x = self._resample(to_float_audio(samples), int(sample_rate), last=False)
        return self._take(x)

    def finish(self) -> list[LiveFrame]:
        """End the stream: the remaining frames (the audio's end is followed by silence)."""
        if self.closed:
            return []
        out = self._take(self._resample(np.zeros(0, np.float32), self._rate or SAMPLE_RATE, last=True))
        self.spec.finish()
        total = int(round(self.received / SAMPLE_RATE * self.fps))
        out += self._advance(total, final=True)
        self.close()
        return out

    def close(self) -> None:
        """Free the renderer and a temporary work folder (also done by ``finish``)."""
        if not self.closed:
            self.closed = True
            self.compositor.close()
            if self._own_target:
                self.live_target.close()

    def _resample(self, x: np.ndarray, rate: int, *, last: bool) -> np.ndarray:
        if rate <= 0:
            raise LipsyncError(f"the sample rate must be positive, not {rate}.")
        if self._rate is None:
            self._rate = rate
        elif rate != self._rate:
            raise LipsyncError(f"the sample rate changed from {self._rate} to {rate} Hz within one stream.")
        if rate == SAMPLE_RATE:
            return x
        if self._resampler is None:
            import soxr

            self._resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        return np.asarray(self._resampler.resample_chunk(x, last=last), np.float32).reshape(-1)

    def _take(self, x: np.ndarray) -> list[LiveFrame]:
        if len(x):
            self._audio = np.concatenate([self._audio, x])
            self.received += len(x)
            self.spec.push(x)
        return self._advance(self._ready_frames(), final=False)

    def _centre(self, t: int) -> int:
        return int(centre_column(t, self.fps))

    def _ready_frames(self) -> int:
        """Frames whose whole audio window is in the spectrogram."""
        last = len(self.spec) - 1 - int(self.offsets[-1])  # newest usable window centre
        t = self.predicted
        while self._centre(t) <= last:
            t += 1
        return t

    def _window(self, t: int) -> np.ndarray:
        """Raw features of frame t (80, columns), cut as ``audio_features.frame_windows`` does: columns
        before the audio, and past its end once it has ended, are the silence floor."""
        idx = self._centre(t) + self.offsets
        end = len(self.spec) if self.spec.finished else None
        silence = np.full(80, np.log(LOG_FLOOR), np.float32)
        return np.stack([self.spec.column(int(i)) if i >= 0 and (end is None or i < end) else silence for i in idx], 1)

    def _advance(self, upto: int, *, final: bool) -> list[LiveFrame]:
        torch, net = self._torch, self.model.net
        while self.predicted < upto:
            t = self.predicted
            w = self.model.audio_norm.apply(self._window(t)[None])[:, None]
            with torch.no_grad():
                z = net.audio(torch.from_numpy(w))
                verts = net.shapes(z, self.mouth_motion)[0].numpy()
                self._prev, reset = net.texture_step(z, self._prev, t)
            self.resets += reset
            if self.bank is not None:
                self._mouths += self._path.push(verts, z[0].numpy())
            self._pending.append((verts, self._prev[0].permute(1, 2, 0).numpy()))
            self.predicted += 1
            self.spec.forget_before(self._centre(t + 1) + int(self.offsets[0]))
        if final and self.bank is not None:
            self._mouths += self._path.finish()
        out = []
        while self._pending and (final or self.predicted > self.emitted + self.bank_radius):
            verts, crop = self._pending.pop(0)
            out.append(self._compose(self.emitted, verts, crop))
            self.emitted += 1
        return out

    def _compose(self, t: int, verts: np.ndarray, crop: np.ndarray) -> LiveFrame:
        k = int(self.usable[ping_pong_at(t, len(self.usable))])
        image = self.frames[k]
        mouth = self._mouths.pop(0) if self.bank is not None else None
        if self.compositor.shows_face(k):
            atlas = assemble_atlas(self.model.speaker.reference_atlas, crop - self.ref_crop, self.box, self.mask)
            if mouth is not None:
                atlas = self.bank.paste(atlas, self.bank.patches[mouth].astype(np.float32))
            image = self.compositor.compose(image, k, verts, atlas)
        spf = SAMPLE_RATE / self.fps
        a, b = int(round(t * spf)), int(round((t + 1) * spf))
        audio = self._audio[a - self._audio_base:b - self._audio_base]
        if len(audio) < b - a:
            audio = np.concatenate([audio, np.zeros(b - a - len(audio), np.float32)])
        drop = b - self._audio_base
        if drop > 0:
            self._audio = self._audio[drop:]
            self._audio_base += drop
        return LiveFrame(index=t, time_s=t / self.fps, image=np.array(image), audio=audio, vertices=verts,
                         ready_s=time.perf_counter())
