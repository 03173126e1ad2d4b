"""``frozen``: the target frames with the lower face replaced by the speaker's closed-mouth
reference, moved with the head and relit like the real face: the floor for lip sync (a mouth
that never moves), through the same rendering and blending as ``lipsync3d``."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ..core import EVAL_CRF, TestClip
from . import Method, register
from .ground_truth import audio_frames


@register
class Frozen(Method):
    name = "frozen"
    description = "the mouth held closed and still (the speaker's reference face) in the real frames: the lip-sync floor"

    def render(self, clip: TestClip, audio: Path, out: Path) -> dict:
        from lipsync.model_io import SpeakerData
        from lipsync.prepared import open_prepared
        from lipsync.synthesis import blend_mask, composite_video, target_for_speaker

        speaker = SpeakerData.from_prepared(open_prepared(self.ctx.train_prepared))
        n = audio_frames(audio, clip.fps)
        size = speaker.reference_atlas.shape[0]
        atlas = np.concatenate([speaker.reference_atlas.astype(np.float32),
                                blend_mask(speaker, size)[..., None] * 255.0], -1)
        verts = np.repeat(speaker.reference_vertices[None], n, 0)
        with tempfile.TemporaryDirectory(prefix="eval-frozen-") as tmp:
            target = target_for_speaker(speaker, clip.prepared, Path(tmp))
            done = composite_video(speaker, target, verts, lambda i: atlas.copy(), out, audio, schedule="aligned",
                                   renderer=self.ctx.options.get("renderer", "auto"), workdir=Path(tmp), crf=EVAL_CRF)
        return {"frames": n, "renderer": done["renderer"]}
