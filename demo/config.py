"""Settings of the demo: where it keeps its files, upload limits, the bundled example's training."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_VIDEO = PROJECT_ROOT / "tests" / "fixtures" / "grid_s1_bgaa8p.mpg"
EXAMPLE_NAME = "GRID speaker s1 (bundled example)"
EXAMPLE_TEXT = "Place blue at F two now."
# The bundled example trains with this preset unless --example-preset / LIPSYNC_DEMO_EXAMPLE_PRESET
# says otherwise. "example" is the quick network for 600 steps: about 2 minutes on 2 CPU cores for
# the 3-second clip, a real (if limited) model, where "quick" takes 5-7 minutes and "tiny" seconds
# (a smoke test whose mouth barely moves).
EXAMPLE_PRESETS = ("example", "tiny", "quick")
EXAMPLE_STEPS = 600


@dataclass(frozen=True)
class Limits:
    """Upload limits, checked before any slow work (and stated on the page)."""
    video_mb: float = 200.0       # a speaker's training video
    video_s: float = 300.0        # 5 minutes: more adds little and takes long to preprocess on a CPU
    target_s: float = 60.0        # a video to put the face into (preprocessed on every synthesis)
    image_mb: float = 20.0        # a photo to put the face into
    audio_mb: float = 50.0
    audio_s: float = 60.0         # driving speech
    text_chars: int = 500         # text for the offline TTS (about 30 s of speech)
    live_sessions: int = 2        # live streams at once (each keeps about one CPU core busy)

    def describe(self) -> str:
        return (f"Training video: up to {self.video_mb:.0f} MB and {self.video_s / 60:.0f} min. "
                f"Target video: up to {self.target_s:.0f} s; photo up to {self.image_mb:.0f} MB. "
                f"Audio: up to {self.audio_s:.0f} s ({self.audio_mb:.0f} MB). Text: up to {self.text_chars} characters "
                f"and {self.audio_s:.0f} s of speech.")


@dataclass(frozen=True)
class DemoConfig:
    """``root``: the demo's work folder (sessions, the example's cache); ``example_preset``: one of
    ``EXAMPLE_PRESETS``; ``device``: torch device for training ("auto": CUDA when present);
    ``secure_cookies``: mark the session cookie ``Secure`` (set it when the demo is served over HTTPS)."""
    root: Path = PROJECT_ROOT / ".cache" / "demo"
    example_preset: str = "example"
    device: str = "auto"
    secure_cookies: bool = False
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self):
        if self.example_preset not in EXAMPLE_PRESETS:
            raise ValueError(f"example_preset must be one of {EXAMPLE_PRESETS}, not {self.example_preset!r}")


def default_config(**changes) -> DemoConfig:
    """The configuration from the environment (``LIPSYNC_DEMO_DIR``, ``LIPSYNC_DEMO_EXAMPLE_PRESET``)
    updated with ``changes``."""
    env = {}
    if os.environ.get("LIPSYNC_DEMO_DIR"):
        env["root"] = Path(os.environ["LIPSYNC_DEMO_DIR"])
    if os.environ.get("LIPSYNC_DEMO_EXAMPLE_PRESET"):
        env["example_preset"] = os.environ["LIPSYNC_DEMO_EXAMPLE_PRESET"]
    env.update({k: v for k, v in changes.items() if v is not None})
    if "root" in env:
        env["root"] = Path(env["root"]).expanduser().resolve()
    return DemoConfig(**env)
