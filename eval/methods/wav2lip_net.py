"""The Wav2Lip generator (Prajwal et al., "A Lip Sync Expert Is All You Need", ACM MM 2020) and
its audio features, written for this project so that the official checkpoints load into it.

The layer layout, parameter names and shapes follow the public release (github
Rudrabha/Wav2Lip, ``models/wav2lip.py`` and ``models/conv.py``), so ``load_state_dict(...,
strict=True)`` accepts ``wav2lip.pth`` and ``wav2lip_gan.pth``; the mel features follow its
``audio.py`` and ``hparams.py``. Nothing here is trained: weights come only from a checkpoint.

Shapes: B batch, M mel frames, S audio samples. The network maps a mel window (B, 1, 80, 16) and
a face pair (B, 6, 96, 96) -- the target face with its lower half zeroed, then a reference face,
both BGR in [0, 1] -- to the generated face (B, 3, 96, 96), BGR in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch  # this module is imported only where the network runs (see wav2lip_checkpoint.py)
from torch import nn

# --- audio features (Wav2Lip hparams.py) ----------------------------------------------------
SAMPLE_RATE = 16_000
N_FFT = 800           # 50 ms FFT, equal to the window: no zero padding inside the frame
WIN_LENGTH = 800      # 50 ms Hann window
HOP_LENGTH = 200      # 12.5 ms hop: 80 mel frames per second
NUM_MELS = 80
FMIN, FMAX = 55.0, 7600.0
PREEMPHASIS = 0.97
MIN_LEVEL_DB = -100.0  # amplitudes below 1e-5 are floored
REF_LEVEL_DB = 20.0
MAX_ABS_VALUE = 4.0    # symmetric normalization to [-4, 4], clipped
MEL_STEP = 16          # mel frames per video frame window (200 ms)
MEL_PER_SECOND = SAMPLE_RATE / HOP_LENGTH  # 80
FACE_SIZE = 96         # the generator's face crop (pixels)


def stft_magnitude(y: np.ndarray) -> np.ndarray:
    """|STFT| of float (S,) audio as float64 (N_FFT // 2 + 1, M), M = 1 + S // HOP_LENGTH.

    Frames are centred on t * HOP_LENGTH with the signal reflect-padded by N_FFT // 2 on both
    sides and a periodic Hann window -- librosa 0.7's ``stft`` defaults, which Wav2Lip was
    trained with (librosa 0.10 changed the default padding to zeros).
    """
    y = np.asarray(y, np.float64)
    pad = N_FFT // 2
    if len(y) <= pad:  # reflect padding needs more samples than the pad; zero-extend tiny inputs
        y = np.concatenate([y, np.zeros(pad + 1 - len(y))])
    padded = np.pad(y, pad, mode="reflect")
    count = 1 + (len(padded) - N_FFT) // HOP_LENGTH
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WIN_LENGTH) / WIN_LENGTH)  # periodic Hann
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH][:count]  # (M, N_FFT)
    return np.abs(np.fft.rfft(frames * window, axis=1)).T


def mel_basis() -> np.ndarray:
    """float (NUM_MELS, N_FFT // 2 + 1): librosa's Slaney-style mel filterbank for Wav2Lip's
    settings (the same filters ``librosa.filters.mel`` gives in every version Wav2Lip ran on)."""
    import librosa

    return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=NUM_MELS, fmin=FMIN, fmax=FMAX)


def melspectrogram(audio: np.ndarray) -> np.ndarray:
    """Wav2Lip's normalized log-mel spectrogram of 16 kHz mono audio: float32 (80, M) in [-4, 4].

    1. pre-emphasis y[t] = x[t] - 0.97 x[t-1]; 2. |STFT| (50 ms window, 12.5 ms hop);
    3. mel filterbank (80 bands, 55-7600 Hz); 4. 20 log10(max(1e-5, .)) - 20 dB;
    5. map [-100, 0] dB linearly to [-4, 4] and clip.
    """
    x = np.asarray(audio, np.float64)
    emphasized = np.concatenate([x[:1], x[1:] - PREEMPHASIS * x[:-1]])
    mel = mel_basis() @ stft_magnitude(emphasized)
    floor = 10.0 ** (MIN_LEVEL_DB / 20.0)
    db = 20.0 * np.log10(np.maximum(floor, mel)) - REF_LEVEL_DB
    norm = 2 * MAX_ABS_VALUE * (db - MIN_LEVEL_DB) / (-MIN_LEVEL_DB) - MAX_ABS_VALUE
    return np.clip(norm, -MAX_ABS_VALUE, MAX_ABS_VALUE).astype(np.float32)


def mel_windows(mel: np.ndarray, count: int, fps: float) -> np.ndarray:
    """The 16-frame mel window of each of ``count`` video frames at ``fps``: float32 (count, 80, 16).

    As Wav2Lip's inference: frame i's window starts at mel frame int(i * 80 / fps); a window
    that would run past the end is replaced by the last 16 mel frames (inference.py does this
    for its final chunk; here it also covers the few frames at the end of the audio that
    inference.py drops).
    """
    if mel.shape[1] < MEL_STEP:  # shorter than 200 ms: pad with the quietest level
        mel = np.pad(mel, ((0, 0), (0, MEL_STEP - mel.shape[1])), constant_values=-MAX_ABS_VALUE)
    last = mel.shape[1] - MEL_STEP
    starts = np.minimum((np.arange(count) * (MEL_PER_SECOND / fps)).astype(np.int64), last)
    out = np.zeros((count, NUM_MELS, MEL_STEP), np.float32)
    for i, s in enumerate(starts):
        out[i] = mel[:, s:s + MEL_STEP]
    return out


# --- the generator ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ConvSpec:
    """One conv + batch-norm + ReLU unit: channels in/out, kernel, stride, padding; ``residual``
    adds the input before the ReLU; ``transpose`` makes it an up-sampling transposed conv."""
    cin: int
    cout: int
    kernel: int
    stride: int | tuple[int, int] = 1
    padding: int = 1
    residual: bool = False
    transpose: bool = False
    output_padding: int = 0


def _res(ch: int, n: int) -> list[ConvSpec]:
    return [ConvSpec(ch, ch, 3, 1, 1, residual=True)] * n


def _up(cin: int, cout: int) -> ConvSpec:
    return ConvSpec(cin, cout, 3, 2, 1, transpose=True, output_padding=1)


# Face encoder: 96 -> 48 -> 24 -> 12 -> 6 -> 3 -> 1; each block's output is a skip connection.
FACE_ENCODER: list[list[ConvSpec]] = [
    [ConvSpec(6, 16, 7, 1, 3)],                                    # (B, 16, 96, 96)
    [ConvSpec(16, 32, 3, 2, 1), *_res(32, 2)],                     # (B, 32, 48, 48)
    [ConvSpec(32, 64, 3, 2, 1), *_res(64, 3)],                     # (B, 64, 24, 24)
    [ConvSpec(64, 128, 3, 2, 1), *_res(128, 2)],                   # (B, 128, 12, 12)
    [ConvSpec(128, 256, 3, 2, 1), *_res(256, 2)],                  # (B, 256, 6, 6)
    [ConvSpec(256, 512, 3, 2, 1), *_res(512, 1)],                  # (B, 512, 3, 3)
    [ConvSpec(512, 512, 3, 1, 0), ConvSpec(512, 512, 1, 1, 0)],    # (B, 512, 1, 1)
]
# Audio encoder: (B, 1, 80, 16) mel window -> (B, 512, 1, 1).
AUDIO_ENCODER: list[ConvSpec] = [
    ConvSpec(1, 32, 3, 1, 1), *_res(32, 2),                        # (B, 32, 80, 16)
    ConvSpec(32, 64, 3, (3, 1), 1), *_res(64, 2),                  # (B, 64, 27, 16)
    ConvSpec(64, 128, 3, 3, 1), *_res(128, 2),                     # (B, 128, 9, 6)
    ConvSpec(128, 256, 3, (3, 2), 1), *_res(256, 1),               # (B, 256, 3, 3)
    ConvSpec(256, 512, 3, 1, 0), ConvSpec(512, 512, 1, 1, 0),      # (B, 512, 1, 1)
]
# Face decoder: starts from the audio code; after each block the matching encoder output is
# concatenated, hence the input widths (512 + 512, 512 + 256, 384 + 128, ...).
FACE_DECODER: list[list[ConvSpec]] = [
    [ConvSpec(512, 512, 1, 1, 0)],                                             # (B, 512, 1, 1)
    [ConvSpec(1024, 512, 3, 1, 0, transpose=True), *_res(512, 1)],             # (B, 512, 3, 3)
    [_up(1024, 512), *_res(512, 2)],                                           # (B, 512, 6, 6)
    [_up(768, 384), *_res(384, 2)],                                            # (B, 384, 12, 12)
    [_up(512, 256), *_res(256, 2)],                                            # (B, 256, 24, 24)
    [_up(320, 128), *_res(128, 2)],                                            # (B, 128, 48, 48)
    [_up(160, 64), *_res(64, 2)],                                              # (B, 64, 96, 96)
]


class ConvUnit(nn.Module):
    """Conv (or transposed conv) + BatchNorm + ReLU, with an optional residual before the ReLU.
    Its state_dict keys are ``conv_block.0.*`` (conv) and ``conv_block.1.*`` (BN), as in
    Wav2Lip's ``Conv2d`` / ``Conv2dTranspose`` wrappers."""

    def __init__(self, s: ConvSpec):
        super().__init__()
        conv = (nn.ConvTranspose2d(s.cin, s.cout, s.kernel, s.stride, s.padding, s.output_padding)
                if s.transpose else nn.Conv2d(s.cin, s.cout, s.kernel, s.stride, s.padding))
        self.conv_block = nn.Sequential(conv, nn.BatchNorm2d(s.cout))
        self.residual = s.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_block(x)
        return torch.relu(y + x if self.residual else y)


def _chain(specs: list[ConvSpec]) -> nn.Sequential:
    return nn.Sequential(*(ConvUnit(s) for s in specs))


class Wav2LipNet(nn.Module):
    """The Wav2Lip generator (random weights until a checkpoint is loaded).

    ``forward(mel (B,1,80,16), faces (B,6,96,96)) -> (B,3,96,96)`` in [0, 1]: the face encoder
    keeps every block's output as a skip connection, the decoder starts from the audio code and
    concatenates the skips from the deepest up (a U-Net conditioned on audio at its bottleneck).
    """

    def __init__(self):
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList(_chain(b) for b in FACE_ENCODER)
        self.audio_encoder = _chain(AUDIO_ENCODER)
        self.face_decoder_blocks = nn.ModuleList(_chain(b) for b in FACE_DECODER)
        # 64 decoded channels + the 16 of the first encoder block; the last conv has no BN
        self.output_block = nn.Sequential(ConvUnit(ConvSpec(80, 32, 3, 1, 1)), nn.Conv2d(32, 3, 1), nn.Sigmoid())

    def forward(self, mel: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        skips = []
        x = faces
        for block in self.face_encoder_blocks:
            x = block(x)
            skips.append(x)
        x = self.audio_encoder(mel)  # (B, 512, 1, 1)
        for block in self.face_decoder_blocks:
            x = torch.cat([block(x), skips.pop()], dim=1)
        return self.output_block(x)  # (B, 3, 96, 96)
