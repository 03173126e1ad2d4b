"""``lipsync3d`` (this project's model) and the paper's ablations of it.

* ``lipsync3d``: ``lipsync train`` on the training part with the run's preset, then
  ``synthesize`` from each test clip's audio into that clip's own frames (its head pose and
  lighting), frame i over frame i.
* ``no_lighting_norm``: the same, but the texture is learnt from the atlas before lighting
  normalization and nothing is relit at insertion.
* ``no_autoregression``: the texture decoder never sees the previous frame.
* ``no_mouth_bank``: the same trained model as ``lipsync3d``, but the mouth comes from the
  network's texture instead of the model's mouth bank (``lipsync.model.mouth_bank``).
* ``no_pose_norm``: the texture is learnt from a 2D face crop (aligned by an in-plane similarity)
  instead of the 3D-normalized atlas, and pasted back in 2D (see ``crop2d``).

Each trained model is kept under ``ctx.cache`` in a folder named by a hash of the training clip,
the training options and ``VERSION``, so a re-run with the same inputs reuses it; an interrupted
training resumes from its checkpoint.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

from lipsync.files import content_key

from ..core import EVAL_CRF, RunContext, TestClip
from . import Method, register

VERSION = 3  # bump when training or synthesis changes in a way that invalidates cached models


def train_options(preset: str, **changes):
    from lipsync.common import LipsyncError
    from lipsync.training import PRESETS

    if preset not in PRESETS:
        raise LipsyncError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    return replace(PRESETS[preset], **changes)


def train_cached(ctx: RunContext, name: str, prepared: Path, options) -> tuple[Path, dict]:
    """Train (or reuse) a lipsync model on ``prepared``; returns its folder and facts."""
    from lipsync.model_io import ModelFolder
    from lipsync.training import train

    key = content_key(Path(prepared) / "manifest.json", asdict(options), VERSION)
    folder = ModelFolder(Path(ctx.cache) / f"model-{name}-{key}")
    if folder.state() == "finished":
        info = folder.summary()
        return folder.path, {"cached": True, "train_seconds": info.seconds, "steps": info.steps,
                             "val_loss": info.val_loss, "model": str(folder.path)}
    resume = folder.state() == "stopped"
    if not resume and folder.path.exists():
        shutil.rmtree(folder.path)  # an attempt that died before its first checkpoint
    t0 = time.perf_counter()
    info = train(prepared, folder.path, options=options, device=ctx.device, resume=resume,
                 progress=lambda step, total, losses: ctx.progress(f"train {name}", step, total)).summary()
    return folder.path, {"cached": False, "resumed": resume, "train_seconds": round(time.perf_counter() - t0, 1),
                         "steps": info.steps, "val_loss": info.val_loss, "model": str(folder.path)}


@register
class LipSync3D(Method):
    name = "lipsync3d"
    description = "this project: audio to pose-normalized 3D mesh + lighting-normalized texture, auto-regressive"
    trainable = True
    changes: dict = {}
    mouth_bank = True  # draw the mouth from the model's mouth bank (else the network's)

    def options(self):
        return train_options(self.ctx.preset, seed=self.ctx.seed, **self.changes)

    def fit(self) -> dict:
        self.model_dir, info = train_cached(self.ctx, self.name, self.ctx.train_prepared, self.options())
        self._model = None
        return info

    def model(self):
        from lipsync.model_io import load_model

        if getattr(self, "_model", None) is None:
            self._model = load_model(self.model_dir)
        return self._model

    def mouth_motion(self) -> float:
        return float(self.ctx.options.get("mouth_motion", 1.0))

    def render_settings(self) -> dict:
        return {"mouth_motion": self.mouth_motion()} if self.mouth_motion() != 1.0 else {}

    def render(self, clip: TestClip, audio: Path, out: Path) -> dict:
        r = self.model().synthesize(out=out, audio=audio, target=clip.prepared, schedule="aligned",
                                    mouth_bank=self.mouth_bank, renderer=self.ctx.options.get("renderer", "auto"),
                                    crf=EVAL_CRF, mouth_motion=self.mouth_motion())
        return {"frames": r.frames, "renderer": r.renderer, "notes": r.notes}


@register
class NoLightingNorm(LipSync3D):
    name = "no_lighting_norm"
    description = "ablation: texture learnt without lighting normalization, nothing relit at insertion"
    changes = {"lighting_norm": False}


@register
class NoAutoregression(LipSync3D):
    name = "no_autoregression"
    description = "ablation: the texture decoder does not see the previous frame"
    changes = {"autoregressive": False}


@register
class NoMouthBank(LipSync3D):
    name = "no_mouth_bank"
    description = "ablation: lipsync3d's own model, with the network's mouth instead of the mouth bank's real mouths"
    trains_as = "lipsync3d"
    mouth_bank = False

    def fit(self) -> dict:
        self.model_dir, info = train_cached(self.ctx, LipSync3D.name, self.ctx.train_prepared, self.options())
        self._model = None
        return info


@register
class NoPoseNorm(Method):
    name = "no_pose_norm"
    description = "ablation: the same network learns a 2D-aligned face crop instead of the pose-normalized atlas"
    trainable = True

    def fit(self) -> dict:
        from .crop2d_prepared import fit_no_pose_norm

        t0 = time.perf_counter()
        from lipsync.model_io import ModelFolder

        self.model_dir = fit_no_pose_norm(self.ctx)
        info = ModelFolder(self.model_dir).summary()
        self._model = None
        return {"train_seconds": info.seconds, "steps": info.steps, "val_loss": info.val_loss,
                "fit_seconds": round(time.perf_counter() - t0, 1), "model": str(self.model_dir)}

    def render(self, clip: TestClip, audio: Path, out: Path) -> dict:
        from lipsync.model_io import load_model

        from .crop2d_prepared import render_crop2d

        if self._model is None:
            self._model = load_model(self.model_dir)
        return render_crop2d(self._model, clip, audio, out, device=self.ctx.device)
