"""Audio features aligned to video frames: a log-mel window of speech around each frame.

16 kHz mono audio -> log-mel spectrogram (32 ms Hann window, 10 ms hop, 80 mel bands up to 8 kHz)
-> for video frame t (centre time (t + 0.5) / fps, any fps) the 24 spectrogram columns (240 ms)
centred on it (or, for a model trained with a shorter lookahead, ending closer to it) -> float32
(T, 80, 24). Per-speaker normalization (mean and std of each mel band
over the training frames) is stored with the model and applied to new audio.

Plain numpy (no numba compile on first use), so features of a 3-minute clip take well under a
second.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .common import LipsyncError

SAMPLE_RATE = 16000
N_FFT = 512
WIN = 512        # 32 ms
HOP = 160        # 10 ms
N_MELS = 80
WINDOW_COLUMNS = 24  # 240 ms of context per video frame
FMIN, FMAX = 40.0, 8000.0
LOG_FLOOR = 1e-5


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, sr: int = SAMPLE_RATE,
                   fmin: float = FMIN, fmax: float = FMAX) -> np.ndarray:
    """Triangular HTK-mel filters, area-normalized: float32 (n_mels, n_fft // 2 + 1)."""
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rise = (freqs[None] - lower) / (centre - lower)
    fall = (upper - freqs[None]) / (upper - centre)
    fb = np.maximum(0.0, np.minimum(rise, fall))
    fb *= (2.0 / (upper - lower))
    return fb.astype(np.float32)


def log_mel(audio: np.ndarray) -> np.ndarray:
    """float32 (n_mels, C) log-mel spectrogram; column k is centred on sample k * HOP."""
    x = np.asarray(audio, np.float32)
    if x.ndim != 1:
        raise LipsyncError("audio must be mono (one channel) at 16 kHz.")
    pad = N_FFT // 2
    x = np.pad(x, (pad, pad), mode="constant")
    n_cols = 1 + (len(x) - N_FFT) // HOP
    if n_cols < 1:
        return np.zeros((N_MELS, 0), np.float32)
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(n_cols)[:, None]
    return log_mel_columns(x[idx])


def log_mel_columns(frames: np.ndarray) -> np.ndarray:
    """float32 (n_mels, C): the log-mel columns of C stretches of N_FFT samples (C, N_FFT) of the
    padded signal. ``log_mel`` takes all columns at once; live synthesis one as it arrives."""
    frames = frames * np.hanning(WIN + 1)[:-1].astype(np.float32)[None]
    power = np.abs(np.fft.rfft(frames, n=N_FFT, axis=1)) ** 2  # (C, F)
    mel = _filterbank() @ power.T.astype(np.float32)  # (n_mels, C)
    return np.log(mel + LOG_FLOOR).astype(np.float32)


@lru_cache(maxsize=1)
def _filterbank() -> np.ndarray:
    fb = mel_filterbank()
    fb.flags.writeable = False
    return fb


def centre_column(frame, fps: float):
    """The spectrogram column at the centre of video frame(s) ``frame`` (its time (t + 0.5) / fps)."""
    return np.round((np.asarray(frame) + 0.5) / fps * SAMPLE_RATE / HOP).astype(np.int64)


def window_offsets(columns: int = WINDOW_COLUMNS, future: int | None = None) -> np.ndarray:
    """int64 (columns,): the spectrogram columns of a frame's audio window, relative to the column at
    the frame's centre. ``future`` columns lie after the centre (the window's lookahead, 10 ms each);
    None centres the window (``columns // 2`` before the centre, 11 of 24 after it)."""
    if future is None:
        future = columns - 1 - columns // 2
    if not 0 <= future < columns:
        raise LipsyncError(f"an audio window of {columns} columns can look 0 to {columns - 1} columns ahead, not {future}.")
    return np.arange(columns) - (columns - 1 - future)


def frame_windows(spec: np.ndarray, num_frames: int, fps: float, *, columns: int = WINDOW_COLUMNS,
                  future: int | None = None) -> np.ndarray:
    """Cut the spectrogram into one window per video frame: float32 (T, n_mels, columns).

    Frame t is centred at (t + 0.5) / fps seconds; the window holds ``future`` columns after that
    centre (see ``window_offsets``); columns outside the audio repeat the silence floor (log of
    ``LOG_FLOOR``).
    """
    n_mels, n_cols = spec.shape
    centre = centre_column(np.arange(num_frames), fps)
    idx = centre[:, None] + window_offsets(columns, future)[None, :]  # (T, columns)
    padded = np.concatenate([spec, np.full((n_mels, 1), np.log(LOG_FLOOR), np.float32)], axis=1)
    idx = np.where((idx >= 0) & (idx < n_cols), idx, n_cols)  # out of range -> the silence column
    return np.ascontiguousarray(padded[:, idx].transpose(1, 0, 2))


def audio_windows(audio: np.ndarray, num_frames: int, fps: float, *, columns: int = WINDOW_COLUMNS,
                  future: int | None = None) -> np.ndarray:
    """Raw (unnormalized) features of ``num_frames`` video frames: float32 (T, 80, columns)."""
    return frame_windows(log_mel(audio), num_frames, fps, columns=columns, future=future)


def frames_for_audio(num_samples: int, fps: float) -> int:
    """How many video frames ``num_samples`` of 16 kHz audio span (rounded to the nearest frame)."""
    return int(round(num_samples / SAMPLE_RATE * fps))


@dataclass(frozen=True)
class AudioNorm:
    """Per-speaker normalization of log-mel bands: ``(max(x, floor) - mean) / std``; float32 (80,) each.

    ``floor`` is the quietest level of each band in the training audio (its 1st percentile):
    quieter input, such as the digital silence that pads synthetic speech, is raised to it, so it
    looks like the speaker's own silence rather than like nothing the model has seen.
    """
    mean: np.ndarray
    std: np.ndarray
    floor: np.ndarray

    @classmethod
    def fit(cls, windows: np.ndarray) -> "AudioNorm":
        """From training windows (T, 80, C): statistics of each band over frames and columns."""
        x = np.asarray(windows, np.float64)
        mean = x.mean(axis=(0, 2))
        std = np.sqrt(((x - mean[None, :, None]) ** 2).mean(axis=(0, 2))) + 1e-3
        bands = x.transpose(1, 0, 2).reshape(x.shape[1], -1)
        real = bands > np.log(LOG_FLOOR) + 1e-3  # not the padding beyond either end of the audio
        floor = np.array([np.percentile(b[r], 1) if r.any() else np.log(LOG_FLOOR) for b, r in zip(bands, real)])
        return cls(mean=mean.astype(np.float32), std=std.astype(np.float32), floor=floor.astype(np.float32))

    def apply(self, windows: np.ndarray) -> np.ndarray:
        x = np.maximum(windows, self.floor[None, :, None])
        return ((x - self.mean[None, :, None]) / self.std[None, :, None]).astype(np.float32)

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "floor": self.floor.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "AudioNorm":
        return cls(mean=np.asarray(d["mean"], np.float32), std=np.asarray(d["std"], np.float32),
                   floor=np.asarray(d["floor"], np.float32))


def speech_activity(audio: np.ndarray, num_frames: int, fps: float, *, threshold_db: float = -45.0) -> np.ndarray:
    """bool (T,): frames whose 240 ms window holds sound above ``threshold_db`` (dBFS RMS)."""
    spf = SAMPLE_RATE / fps
    half = int(0.12 * SAMPLE_RATE)
    out = np.zeros(num_frames, bool)
    x = np.asarray(audio, np.float32)
    for t in range(num_frames):
        c = int((t + 0.5) * spf)
        seg = x[max(0, c - half):c + half]
        if seg.size:
            out[t] = 20 * np.log10(np.sqrt(np.mean(seg ** 2)) + 1e-9) > threshold_db
    return out
