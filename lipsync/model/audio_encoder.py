"""Audio encoder: convolutions over frequency, then over time, to a small latent per video frame."""
from __future__ import annotations

import torch
from torch import nn


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2, inplace=True)


class AudioEncoder(nn.Module):
    """(B, 1, n_mels, columns) normalized log-mel windows -> (B, latent).

    Frequency is reduced first (kernels 3x1, stride 2: 80 -> 5 bands -> 1), so each time column
    gets a spectral descriptor; time is reduced after (kernels 1x3, stride 2: 24 -> 1), in the
    manner of Karras et al. (2017) and LipSync3D's audio encoder.
    """

    def __init__(self, n_mels: int = 80, columns: int = 24, latent: int = 32, width: int = 64, dropout: float = 0.1):
        super().__init__()
        layers: list[nn.Module] = []
        c_in, f = 1, n_mels
        for c_out in (width // 2, width, width, width * 2):
            layers += [nn.Conv2d(c_in, c_out, (3, 1), stride=(2, 1), padding=(1, 0)), _act()]
            c_in, f = c_out, (f + 1) // 2
        layers += [nn.Conv2d(c_in, width * 2, (f, 1)), _act()]  # the remaining bands -> 1
        t = columns
        for _ in range(3):
            layers += [nn.Conv2d(width * 2, width * 2, (1, 3), stride=(1, 2), padding=(0, 1)), _act()]
            t = (t + 1) // 2
        layers += [nn.Conv2d(width * 2, width * 2, (1, t)), _act()]
        self.net = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(width * 2, latent))

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(windows))
