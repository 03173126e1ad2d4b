"""Paired preferences per question and method pair: rates with Wilson intervals and exact
binomial tests (ties count in n only)."""
from __future__ import annotations

import math

import pandas as pd

from .data import NO_PREFERENCE, PREFERENCE_COLUMNS, SIGNIFICANCE, Z95, _paired_answers


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n.

    The interval holds every p whose score test |k/n - p| / sqrt(p (1 - p) / n) <= z accepts; unlike
    the Wald interval it stays inside [0, 1] and keeps its coverage near 0 and 1. Computed by
    ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")`` (no continuity correction).

    Args:
        k: successes, 0 <= k <= n.
        n: trials.
        z: normal quantile; the default gives a two-sided 95 % interval.

    Returns:
        (lo, hi); (nan, nan) when n == 0.
    """
    from scipy.stats import binomtest

    if n == 0:
        return (math.nan, math.nan)
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n, got k={k}, n={n}.")
    ci = binomtest(k, n).proportion_ci(confidence_level=math.erf(z / math.sqrt(2)), method="wilson")
    return (max(0.0, float(ci.low)), min(1.0, float(ci.high)))


def preference_table(df: pd.DataFrame) -> pd.DataFrame:
    """Paired (A/B) preferences per question and unordered method pair.

    Args:
        df: the ratings table; practice and attention rows are ignored, as are trials showing one
            method on both sides.

    Returns:
        One row per (question_id, method pair), sorted, with columns
            question_id, axis;
            method_a, method_b: the pair, method_a < method_b alphabetically;
            n: all answers, no-preference included; n_raters: distinct raters among them;
            wins_a, wins_b: answers preferring a / b; no_preference: "none" answers;
            pref_a: wins_a / (wins_a + wins_b), ties excluded (nan with no decisive answer);
            ci95_lo, ci95_hi: Wilson 95 % interval of pref_a (on wins_a of wins_a + wins_b);
            p_value: two-sided exact binomial test of wins_a of wins_a + wins_b against 0.5
                (scipy.stats.binomtest; nan with no decisive answer);
            significant: p_value < 0.05;
            left_share: fraction of all n answers that chose the left side, whatever was
                shown there; a side-bias diagnostic (0.5 = no bias, "none" counts as not left).
    """
    from scipy.stats import binomtest

    df = _paired_answers(df, "preference_table")
    rows = []
    for (qid, axis, a, b), g in df.groupby(["question_id", "axis", "method_a", "method_b"], sort=True):
        wins_a = int((g["winner"] == a).sum())
        wins_b = int((g["winner"] == b).sum())
        decisive = wins_a + wins_b
        lo, hi = wilson_interval(wins_a, decisive)
        p = binomtest(wins_a, decisive, 0.5).pvalue if decisive else math.nan
        rows.append({
            "question_id": qid, "axis": axis, "method_a": a, "method_b": b,
            "n": len(g), "n_raters": g["rater_id"].nunique(), "wins_a": wins_a, "wins_b": wins_b,
            "no_preference": int((g["winner"] == NO_PREFERENCE).sum()),
            "pref_a": wins_a / decisive if decisive else math.nan, "ci95_lo": lo, "ci95_hi": hi,
            "p_value": p, "significant": bool(p < SIGNIFICANCE),
            "left_share": float((g["choice"] == "left").mean()),
        })
    return pd.DataFrame(rows, columns=PREFERENCE_COLUMNS)


