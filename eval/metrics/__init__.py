"""The registry of metrics the evaluation computes on every sample (one method's output on one clip).

Each metric is a ``Metric`` record registered by the module that implements it:

* ``image.py``   psnr, ssim, lpips: fidelity of the face region to the ground truth;
* ``lipsync.py`` lmd, mouth_corr (landmarks against the ground truth), sync_offset, sync_conf
  (audio-visual sync by the speaker's own sync expert), lse_d, lse_c (SyncNet);
* ``mouth.py``   teeth, teeth_corr (visible teeth against the ground truth), articulation,
  opening (how much and how wide the mouth moves against the ground truth);
* ``realism.py`` sharpness, flicker (against the real frames under the output), fid (set level).

``settings`` is a plain dict from the command line (see ``DEFAULT_SETTINGS``); every metric reads
only the keys it needs. A metric that cannot run here (weights absent, package missing) says why
through ``check(settings)`` (asked once, before any computing) or by raising
``eval.core.Unavailable`` from ``compute``. A metric that runs but finds nothing to measure on a
sample (no face tracked in the output) returns ``MetricValue(nan, extra={"reason": ...})``; the
statistics count those clips as failed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..core import MetricValue, Sample
from ..registry import Registry

# Settings every metric understands; the command line fills them in (None = not given).
DEFAULT_SETTINGS: dict = {
    # torchvision's AlexNet ImageNet weights (alexnet-owt-7be5be79.pth) for LPIPS; None: look in
    # $TORCH_HOME/hub/checkpoints/.
    "lpips_weights": None,
    # the speaker's sync expert (eval.sync_expert.expert_for) for sync_offset and sync_conf, or
    # why none could be trained (eval.sync_expert.expert_settings gives one or the other).
    "sync_expert": None,
    "sync_expert_error": None,
    # SyncNet's syncnet_v2.model and the S3FD face detector's sfd_face.pth (syncnet-python).
    "syncnet_weights": None,
    "s3fd_weights": None,
    # Inception-v3 weights for FID: torchvision's inception_v3_google-0cc3c7bd.pth or pytorch-fid's
    # pt_inception-2015-12-05-6726825d.pth; None: look for either in $TORCH_HOME/hub/checkpoints/.
    "inception_weights": None,
    # torch device for the network metrics ("cpu", "cuda").
    "device": "cpu",
    # frames per clip (evenly spaced) whose face crops feed FID; Inception-v3 is slow on a CPU.
    "fid_frames": 25,
}


@dataclass(frozen=True)
class Metric:
    """One metric.

    Members:
        name: registry key (also the report's column).
        better: "higher", "lower", or "target" (closest to ``target`` is best, e.g. a ratio to
            the real video that should be 1).
        needs_reference: needs ground-truth frames (``Sample.reference``), so it is skipped in
            cross-audio runs.
        unit: unit of the value ("dB", "% of eye distance", "" for unitless).
        description: one sentence for the report.
        requires: what it needs to run (weights, packages), for the report.
        compute: ``compute(sample, settings) -> MetricValue``; raises ``Unavailable`` if it cannot run.
        check: optional ``check(settings) -> str | None``: why it cannot run here (None: it can).
        aggregate: optional ``aggregate(values, rng) -> float`` for set-level metrics (FID); by
            default a method's value is the mean of its clip values.
        target: the best value when ``better`` is "target" (None otherwise).
    """
    name: str
    better: str
    needs_reference: bool
    unit: str
    description: str
    requires: str
    compute: Callable[[Sample, dict], MetricValue]
    check: Callable[[dict], str | None] | None = None
    aggregate: Callable[[list[MetricValue], np.random.Generator], float] | None = None
    target: float | None = None

    def __post_init__(self):
        if self.better not in ("higher", "lower", "target"):
            raise ValueError(f"metric {self.name}: better must be 'higher', 'lower' or 'target', not {self.better!r}")
        if (self.better == "target") != (self.target is not None):
            raise ValueError(f"metric {self.name}: give a target exactly when better is 'target'")

    def unavailable(self, settings: dict | None = None) -> str | None:
        """Why this metric cannot run with ``settings`` (None when it can)."""
        return self.check(resolve_settings(settings)) if self.check is not None else None


# the modules that define metrics (imported on first use of the registry), in report order
METRICS = Registry("metric", __name__, ("image", "lipsync", "mouth", "realism"))
register = METRICS.register  # called with each Metric by the modules that define them


def _better_and_target(meta) -> tuple[str, float | None]:
    """``meta``: a ``Metric`` or its description in results.json."""
    if isinstance(meta, Metric):
        return meta.better, meta.target
    return meta["better"], meta.get("target")


def direction(meta) -> str:
    """The arrow a table shows after a metric's name: ↑, ↓, or →1 for "closest to 1 is best";
    ``meta`` is a ``Metric`` or its description in results.json."""
    better, target = _better_and_target(meta)
    if better == "target":
        return f"→{target:g}"
    return "↑" if better == "higher" else "↓"


def goodness(value, meta):
    """``value`` (a number or array) turned so that higher is better for every kind of metric:
    itself, its negative, or minus its distance from the target."""
    better, target = _better_and_target(meta)
    if better == "higher":
        return value
    if better == "lower":
        return -value
    return -abs(value - target)


def resolve_settings(settings: dict | None) -> dict:
    """``DEFAULT_SETTINGS`` updated with the given settings (unknown keys are kept)."""
    out = dict(DEFAULT_SETTINGS)
    out.update({k: v for k, v in (settings or {}).items() if v is not None})
    return out


def torch_hub_checkpoints() -> Path:
    """Where torch keeps downloaded weights: ``$TORCH_HOME/hub/checkpoints`` (torch's own rule,
    computed without importing torch)."""
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch")
    return Path(home) / "hub" / "checkpoints"


def available_metrics() -> list[str]:
    """Names of all registered metrics, in report order."""
    return list(METRICS)


def get_metrics(names: list[str] | None = None) -> list[Metric]:
    """The metrics called ``names`` (None: all); an unknown name raises ``LipsyncError``."""
    return METRICS.pick(names)
