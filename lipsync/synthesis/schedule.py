"""Which target frame each output frame is laid over."""
from __future__ import annotations

import numpy as np

from ..common import LipsyncError


def ping_pong(count: int, length: int) -> np.ndarray:
    """Indices 0, 1, ..., n-1, n-2, ..., 1, 0, 1, ... of length ``count`` over ``length`` frames."""
    return ping_pong_at(np.arange(count), length)


def ping_pong_at(index, length: int):
    """Element ``index`` (an int or an int array) of the endless ``ping_pong`` sequence over ``length`` frames."""
    if length <= 1:
        return np.zeros(np.shape(index), np.int64) if np.ndim(index) else 0
    period = 2 * length - 2
    k = np.asarray(index, np.int64) % period
    out = np.where(k < length, k, period - k)
    return out if np.ndim(index) else int(out)


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
