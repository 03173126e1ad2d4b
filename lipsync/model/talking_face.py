"""The whole network: audio window (+ previous texture) -> vertices and lower-face texture."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .audio_encoder import AudioEncoder
from .geometry import GeometryDecoder
from .texture import PreviousFrameEncoder, TextureDecoder

# Mean absolute difference (0..1 units) between a frame's fed-back prediction and its prediction
# from the reference crop above which the auto-regressive loop restarts (see ``rollout``). Normal
# rollouts of GRID models stay below 0.02; a runaway one jumped to 0.28.
RESET_DEVIATION = 0.05
# The check costs a second pass of the texture decoder, so it runs on every CHECK_EVERY-th frame
# and on any frame whose prediction is further than SCREEN_DEVIATION from the reference crop
# (normal GRID frames: at most 0.03; the runaway one: 0.28).
CHECK_EVERY = 5
SCREEN_DEVIATION = 0.04


@dataclass
class ModelConfig:
    """Every size needed to rebuild ``TalkingFaceModel`` (stored in the model's config.json).

    ``crop`` = (top, bottom, left, right) of the predicted region in atlas texels; it is resampled
    to ``tex_height`` x ``tex_width``.
    """
    n_mels: int = 80
    columns: int = 24
    # spectrogram columns (10 ms each) of the audio window after the frame's centre; None: centred
    lookahead: int | None = None
    latent: int = 32
    audio_width: int = 64
    dropout: float = 0.1
    num_vertices: int = 468
    pca_components: int = 32
    atlas_size: int = 256
    crop: tuple = (128, 256, 32, 224)
    tex_height: int = 64
    tex_width: int = 96
    tex_channels: int = 96
    prev_code: int = 16
    autoregressive: bool = True     # False: the previous frame is not seen (an ablation)
    # synthesis scales the predicted shapes' change from the mean face by this (set by training so
    # that the mouth opens as much as the speaker's on held-out frames; see ``articulation_gain``)
    articulation_gain: float = 1.0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["crop"] = list(self.crop)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["crop"] = tuple(known.get("crop", cls.crop))
        return cls(**known)


class TalkingFaceModel(nn.Module):
    """Inputs: normalized log-mel windows (B, 1, n_mels, columns) and the previous frame's crop
    (B, 3, H, W) in [0, 1] (the reference crop when there is none: first frame, after a cut).
    Outputs: vertices (B, V, 3) in canonical units and the crop (B, 3, H, W) in [0, 1].
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        c = config
        self.config = c
        self.audio = AudioEncoder(c.n_mels, c.columns, c.latent, c.audio_width, c.dropout)
        self.geometry = GeometryDecoder(c.latent, c.num_vertices, c.pca_components)
        self.previous = PreviousFrameEncoder(c.prev_code)
        self.texture = TextureDecoder(c.latent + c.prev_code, c.tex_height, c.tex_width, c.tex_channels)
        self.register_buffer("reference_crop", torch.zeros(3, c.tex_height, c.tex_width))

    def _code(self, prev_crop: torch.Tensor) -> torch.Tensor:
        code = self.previous(prev_crop - self.reference_crop)
        return code if self.config.autoregressive else torch.zeros_like(code)

    def forward(self, windows: torch.Tensor, prev_crop: torch.Tensor):
        z = self.audio(windows)
        verts = self.geometry(z)
        code = self._code(prev_crop)
        crop = (self.reference_crop + self.texture(torch.cat([z, code], 1))).clamp(0.0, 1.0)
        return verts, crop

    @torch.no_grad()
    def codes(self, windows: torch.Tensor) -> torch.Tensor:
        """Audio codes (T, latent) of windows (T, 1, n_mels, columns), 256 at a time (call in eval mode)."""
        if not len(windows):
            return torch.zeros(0, self.config.latent)
        return torch.cat([self.audio(windows[i:i + 256]) for i in range(0, len(windows), 256)])

    @torch.no_grad()
    def rollout(self, windows: torch.Tensor, motion: float = 1.0, codes: torch.Tensor | None = None):
        """Auto-regressive inference over a sequence: each frame is conditioned on the previous
        frame's own prediction (the first on the reference crop).

        Returns vertices (T, V, 3) and crops (T, 3, H, W). Geometry does not depend on the previous
        frame, so it is computed for all frames at once (``motion``: see ``shapes``).
        ``self.rollout_resets`` is set to the number of frames where the loop restarted. ``codes``:
        the windows' audio codes when the caller has them already (see ``codes``).

        The loop is guarded: fed its own output, it can jump into a state it never saw in
        training and stay there (a model of the ablation without lighting normalization did, on
        2 of 20 GRID sentences: the mouth turned purple for the rest of the clip). A frame is also
        predicted from the reference crop (every ``CHECK_EVERY``-th frame, and every frame far
        from the reference); where the fed-back prediction differs from that by more than
        ``RESET_DEVIATION``, the frame takes the reference-fed prediction and the loop continues
        from it.
        """
        self.eval()
        z = self.codes(windows) if codes is None else codes
        verts = torch.cat([self.shapes(z[i:i + 256], motion) for i in range(0, len(z), 256)])
        crops = torch.empty(len(z), *self.reference_crop.shape)
        self.rollout_resets = 0
        if not self.config.autoregressive:
            for i in range(0, len(z), 256):
                crops[i:i + 256] = self._from_reference(z[i:i + 256])
            return verts, crops
        prev = self.reference_crop[None]
        for t in range(len(z)):
            prev, reset = self.texture_step(z[t:t + 1], prev, t)
            crops[t] = prev[0]
            self.rollout_resets += reset
        return verts, crops

    @torch.no_grad()
    def shapes(self, z: torch.Tensor, motion: float = 1.0) -> torch.Tensor:
        """Vertices (B, V, 3) of audio codes (B, latent), their change from the mean face scaled by
        the articulation gain times ``motion`` (1: as trained, the speaker's own amount of motion)."""
        verts = self.geometry(z)
        gain = self.config.articulation_gain * float(motion)
        if gain != 1.0:
            mean = self.geometry.basis.bias.view(1, -1, 3)
            verts = mean + gain * (verts - mean)
        return verts

    @torch.no_grad()
    def texture_step(self, z: torch.Tensor, prev: torch.Tensor, t: int) -> tuple[torch.Tensor, bool]:
        """One frame of the guarded auto-regressive loop (see ``rollout``): the crop (1, 3, H, W) of
        frame ``t`` from its audio code (1, latent) and the previous frame's crop, and whether
        the loop restarted there. Streaming synthesis calls it frame by frame."""
        if not self.config.autoregressive:
            return self._from_reference(z), False
        code = self._code(prev)
        cur = (self.reference_crop + self.texture(torch.cat([z, code], 1))).clamp(0.0, 1.0)
        if t % CHECK_EVERY == 0 or float((cur[0] - self.reference_crop).abs().mean()) > SCREEN_DEVIATION:
            anchor = self._from_reference(z)
            if float((cur - anchor).abs().mean()) > RESET_DEVIATION:
                return anchor, True
        return cur, False

    def _from_reference(self, z: torch.Tensor) -> torch.Tensor:
        """Crops predicted with the reference crop as the previous frame (B, 3, H, W)."""
        code = self._code(self.reference_crop[None]).expand(len(z), -1)
        return (self.reference_crop + self.texture(torch.cat([z, code], 1))).clamp(0.0, 1.0)
