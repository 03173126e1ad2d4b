"""Which target frame each output frame is laid over."""
from __future__ import annotations

import numpy as np

from ..common import LipsyncError


def ping_pong(count: int, length: int) -> np.ndarray:
    """Indices 0, 1, ..., n-1, n-2, ..., 1, 0, 1, ... of length ``count`` over ``length`` frames."""
    if length <= 1:
        return np.zeros(count, np.int64)
    period = 2 * length - 2
    k = np.arange(count) % period
    return np.where(k < length, k, period - k)


def frame_schedule(count: int, target, mode: str = "usable") -> np.ndarray:
    """Which target frame each of ``count`` output frames is laid over.

    ``usable``: back and forth (ping-pong) over the target's frames with a usable face, so every
    output frame shows the synthesized mouth; ``aligned``: output frame i over target frame i
    (ping-pong over all frames when the audio is longer), so output and target stay in step, as an
    evaluation against the target's own frames needs (frames without a face pass through).
    """
    if mode == "aligned":
        return ping_pong(count, target.frames_total)
    if mode != "usable":
        raise ValueError(f"unknown schedule {mode!r}")
    usable = np.flatnonzero(target.valid)
    if len(usable) == 0:
        raise LipsyncError(f"no frame of the target {target.source} has a usable face; give another target.")
    return usable[ping_pong(count, len(usable))]
