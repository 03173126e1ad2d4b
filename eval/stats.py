"""Bootstrap confidence intervals for a method's metric over its clips.

``summarize`` turns the per-clip ``MetricValue``s of one metric and one method into the numbers
the report prints: the value, a 95% percentile-bootstrap interval and what it was resampled over.

* Two or more clips: resample clips with replacement (each resample re-aggregated the way the
  value is: the mean of clip values, or the metric's own ``aggregate`` for set-level metrics such
  as FID). Clips are the unit of independence: frames of one clip are strongly correlated.
* One clip with per-frame values: a moving-block bootstrap over its frames (blocks of
  ``block_frames`` consecutive frames keep the short-range correlation of video), so the interval
  says how stable the value is within that clip, not across clips.
* One clip without per-frame values: no interval (``ci95`` None, with a ``note``).

NaN clip values (a metric that found nothing to measure on a clip) are dropped and counted in
``n_failed``; NaN per-frame values (untracked frames) are dropped before the block bootstrap.

Written here rather than with ``scipy.stats.bootstrap``: scipy has no moving-block bootstrap, and
both cases share one seeded generator with the set-level re-aggregation (FID), so every interval
of a run is reproducible from its seed.
"""
from __future__ import annotations

import numpy as np

from .core import MetricValue

CONFIDENCE = 0.95


def _finite_frames(v: MetricValue) -> np.ndarray | None:
    if v.per_frame is None:
        return None
    x = np.asarray(v.per_frame, np.float64).ravel()
    return x[np.isfinite(x)]


def _percentiles(stats: np.ndarray) -> list[float] | None:
    stats = stats[np.isfinite(stats)]
    if len(stats) == 0:
        return None
    a = (1 - CONFIDENCE) / 2
    lo, hi = np.percentile(stats, [100 * a, 100 * (1 - a)])
    return [float(lo), float(hi)]


def block_bootstrap_means(x: np.ndarray, *, n_boot: int, block: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_boot`` moving-block bootstrap resamples of the series ``x`` (n,): each resample
    joins ceil(n / block) blocks of ``block`` consecutive values with uniformly drawn starts and is
    cut to n values. float64 (n_boot,)."""
    n = len(x)
    block = int(max(1, min(block, n)))
    k = -(-n // block)
    starts = rng.integers(0, n - block + 1, size=(n_boot, k))
    idx = (starts[:, :, None] + np.arange(block)[None, None, :]).reshape(n_boot, -1)[:, :n]
    return x[idx].mean(axis=1)


def summarize(values: list[MetricValue], *, metric=None, n_boot: int = 2000, seed: int = 0,
              block_frames: int = 25, n_boot_set: int = 500) -> dict:
    """The value of one metric for one method over its clips, with a 95% bootstrap interval.

    Args:
        values: one ``MetricValue`` per clip.
        metric: the ``eval.metrics.Metric`` (its ``aggregate``, if any, makes the value and every
            resample set-level); None: the mean of clip values.
        n_boot: bootstrap resamples.
        seed: the generator's seed (same inputs and seed -> same interval).
        block_frames: block length of the single-clip frame bootstrap.
        n_boot_set: at most this many resamples for a metric with ``aggregate`` (each one
            re-aggregates the pooled clips: ~25 ms for FID over 20 clips).
    Returns:
        ``{"value", "ci95": [lo, hi] | None, "n_clips", "n_frames", "n_failed", "ci_over":
        "clips" | "frames" | None, "n_boot"}`` plus a ``"note"`` when there is no interval. ``n_frames`` is
        the number of finite per-frame values (0 when the metric has none).
    """
    rng = np.random.default_rng(seed)
    aggregate = getattr(metric, "aggregate", None)
    kept = [v for v in values if v is not None and np.isfinite(v.value)]
    n_failed = len(values) - len(kept)
    frames = [_finite_frames(v) for v in kept]
    n_frames = int(sum(len(f) for f in frames if f is not None))
    out = {"value": float("nan"), "ci95": None, "n_clips": len(kept), "n_frames": n_frames, "n_failed": n_failed,
           "ci_over": None, "n_boot": 0}
    if not kept:
        out["note"] = "no clip gave a value" if values else "no clips"
        return out

    def value_of(subset: list[MetricValue]) -> float:
        return float(aggregate(subset, rng)) if aggregate is not None else float(np.mean([v.value for v in subset]))

    out["value"] = value_of(kept)
    if len(kept) >= 2:
        k = len(kept)
        if aggregate is not None:
            n_boot = min(n_boot, n_boot_set)
        draws = rng.integers(0, k, size=(n_boot, k))
        if aggregate is None:
            clip_values = np.array([v.value for v in kept], np.float64)
            stats = clip_values[draws].mean(axis=1)
        else:
            stats = np.array([value_of([kept[i] for i in row]) for row in draws])
        out.update(ci95=_percentiles(stats), ci_over="clips", n_boot=n_boot)
        return out
    x = frames[0]
    if aggregate is None and x is not None and len(x) >= 2:
        stats = block_bootstrap_means(x, n_boot=n_boot, block=block_frames, rng=rng)
        out.update(ci95=_percentiles(stats), ci_over="frames", n_boot=n_boot)
        if not np.isclose(float(x.mean()), out["value"], rtol=1e-6, atol=1e-9):
            out["note"] = "interval from a frame bootstrap of the per-frame values, whose mean differs from the clip value"
        return out
    out["note"] = ("one clip and no per-frame values: no interval" if aggregate is None
                   else "one clip of a set-level metric: no interval")
    return out
