"""The registry of methods the evaluation compares. Each method is one small module that
subclasses ``Method`` and registers itself with ``@register``.

A method is constructed with the run's ``RunContext``; ``check()`` raises ``Unavailable`` when it
cannot run here (missing weights, missing folder); ``fit()`` trains it on
``ctx.train_prepared``/``ctx.train_video`` (or does nothing), keeping what it trained under
``ctx.cache`` keyed by a content hash of its inputs so that a re-run reuses it; ``render()``
writes the method's video for one test clip driven by one audio file.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from ..core import RunContext, TestClip
from ..registry import Registry

# the modules that define methods (imported on first use of the registry)
REGISTRY = Registry("method", __name__, ("ground_truth", "frozen", "lipsync3d", "personalized_2d", "external",
                                         "wav2lip_checkpoint"))
register = REGISTRY.register  # class decorator of every Method subclass


class Method:
    """Base class. Subclasses set ``name``, ``description`` and ``trainable``."""
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    trainable: ClassVar[bool] = False
    # the method whose trained model this one uses (its fit waits for that one's in a dataset run)
    trains_as: ClassVar[str | None] = None

    def __init__(self, ctx: RunContext):
        self.ctx = ctx

    def check(self) -> None:
        """Raise ``Unavailable`` (with the reason) if the method cannot run here."""

    def fit(self) -> dict:
        """Train (or load what an earlier run trained); returns facts for the report
        (e.g. ``{"seconds": 231.0, "cached": False}``)."""
        return {}

    def render_settings(self) -> dict:
        """Settings of ``render`` beyond the trained model that change the videos it makes (part
        of the rendered videos' cache key); empty by default."""
        return {}

    def render(self, clip: TestClip, audio: Path, out: Path) -> dict:
        """Write ``out`` (mp4, H.264 + AAC): the method's result for ``clip`` driven by ``audio``
        (16 kHz mono wav). Output frame i is laid over the clip's frame
        ``lipsync.synthesis.ping_pong(n, clip.frames)[i]``, where n is the audio's length in frames at
        ``clip.fps``; the size and fps are the clip's. Write atomically (``lipsync.media.VideoWriter``)."""
        raise NotImplementedError


def available_methods() -> list[str]:
    return list(REGISTRY)


def get_method(name: str) -> type[Method]:
    """The method called ``name``; an unknown name raises ``LipsyncError``."""
    return REGISTRY.pick([name])[0]
