"""Mean opinion scores per question and method, with cluster-bootstrap intervals over raters."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .data import MOS_COLUMNS, _mos_scores, _rng


def _cluster_bootstrap_interval(sums: np.ndarray, counts: np.ndarray, n_boot: int,
                                rng: np.random.Generator) -> tuple[float, float]:
    """95 % percentile interval of a mean when whole raters are resampled
    (``scipy.stats.bootstrap`` on the raters' paired (sum, count), statistic sum(sums) / sum(counts)).

    Args:
        sums: (R,) per-rater sum of scores; counts: (R,) per-rater number of scores.
    """
    from scipy.stats import bootstrap

    res = bootstrap((sums, counts), lambda s, c, axis: s.sum(axis=axis) / c.sum(axis=axis), paired=True,
                    vectorized=True, n_resamples=n_boot, confidence_level=0.95, method="percentile",
                    random_state=rng)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def mos_table(df: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Mean opinion scores per question and method with rater-level bootstrap intervals.

    The 95 % interval is a percentile cluster bootstrap over raters: raters are drawn with
    replacement and each drawn rater brings all of their ratings of that method. One rater's
    ratings are correlated (a lenient rater scores everything high), so resampling single ratings
    would treat them as independent and make the interval too narrow. With a single rater the
    between-rater spread cannot be estimated and the interval is nan.

    Args:
        df: the ratings table; practice and attention rows are ignored.
        n_boot: bootstrap replicates.
        seed: seeds every (question, method) cell's generator together with the cell's keys, so a
            cell's interval does not depend on what else is in the table.

    Returns:
        One row per (question_id, axis, method), sorted, with columns question_id, axis, method,
        n (ratings), n_raters, mean, std (sample std of the ratings, ddof=1), ci95_lo, ci95_hi.
    """
    df = _mos_scores(df, "mos_table")
    rows = []
    for (qid, axis, method), g in df.groupby(["question_id", "axis", "method"], sort=True):
        per_rater = g.groupby("rater_id")["score"].agg(["sum", "count"])
        lo = hi = math.nan
        if len(per_rater) >= 2 and n_boot > 0:
            lo, hi = _cluster_bootstrap_interval(per_rater["sum"].to_numpy(float), per_rater["count"].to_numpy(float),
                                                 n_boot, _rng(seed, qid, method))
        rows.append({"question_id": qid, "axis": axis, "method": method, "n": len(g),
                     "n_raters": len(per_rater), "mean": float(g["score"].mean()),
                     "std": float(g["score"].std(ddof=1)) if len(g) > 1 else math.nan,
                     "ci95_lo": lo, "ci95_hi": hi})
    return pd.DataFrame(rows, columns=MOS_COLUMNS)


