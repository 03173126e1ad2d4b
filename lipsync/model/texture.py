"""Texture decoder with auto-regressive conditioning on the previous frame's (predicted) texture.

The decoder predicts the lower-face crop of the lighting-normalized atlas (mouth, lips, chin:
where speech changes the texture) as a residual over the speaker's reference crop; the upper face
is not predicted (synthesis keeps the target frame's). Values are in [0, 1].
"""
from __future__ import annotations

import torch
from torch import nn


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2, inplace=True)


class PreviousFrameEncoder(nn.Module):
    """(B, 3, H, W) previous crop minus the reference crop -> (B, code) summary of the visual state."""

    def __init__(self, code: int = 16, width: int = 16):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in (width, width * 2, width * 4, width * 4):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), _act()]
            c_in = c_out
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, code))

    def forward(self, prev_residual: torch.Tensor) -> torch.Tensor:
        return self.net(prev_residual)


class TextureDecoder(nn.Module):
    """(B, latent + code) -> (B, 3, H, W) residual over the reference crop (tanh-bounded)."""

    def __init__(self, inputs: int, height: int, width: int, channels: int = 96, ups: int = 4):
        super().__init__()
        if height % (2 ** ups) or width % (2 ** ups):
            raise ValueError(f"texture size {height}x{width} must be divisible by {2 ** ups}")
        self.h0, self.w0, self.c0 = height // 2 ** ups, width // 2 ** ups, channels
        self.fc = nn.Sequential(nn.Linear(inputs, channels * self.h0 * self.w0), _act())
        blocks: list[nn.Module] = []
        c = channels
        for _ in range(ups):
            c_out = max(16, c // 2)
            blocks += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c_out, 3, padding=1), _act(),
                       nn.Conv2d(c_out, c_out, 3, padding=1), _act()]
            c = c_out
        self.up = nn.Sequential(*blocks)
        self.out = nn.Conv2d(c, 3, 3, padding=1)
        nn.init.zeros_(self.out.bias)
        with torch.no_grad():
            self.out.weight.mul_(0.1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(-1, self.c0, self.h0, self.w0)
        return torch.tanh(self.out(self.up(x)))
