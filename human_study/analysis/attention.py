"""Attention checks and viewing behaviour per rater: who is flagged and why."""
from __future__ import annotations

import pandas as pd

from .data import ATTENTION_COLUMNS, _as_bool, _require, _without_practice


def attention_table(df: pd.DataFrame, max_failures: int = 0) -> pd.DataFrame:
    """Attention-check results per rater.

    Args:
        df: the ratings table (practice rows are ignored).
        max_failures: failed checks a rater may have and still not be flagged.

    Returns:
        One row per rater (sorted by rater_id): rater_id; n_checks (attention trials answered);
        n_failed; n_unplayed (answers given without playing the video, ``plays == 0``; unknown
        plays do not count); median_viewed_s (median server-measured seconds from showing a trial to
        its answer; NaN when not recorded); flagged (n_failed > max_failures or n_unplayed > 0; a
        rater without checks can still be flagged for unplayed answers); n_ratings (their scored,
        i.e. non-attention, ratings).

    Raises:
        ValueError: when an attention trial has no attention_passed value (it cannot be scored
            here, and guessing would flag or clear raters silently).
    """
    df = _without_practice(df, "attention_table")
    _require(df, ["attention_passed"], "attention_table")
    checks = df[df["is_attention"]]
    if checks["attention_passed"].isna().any():
        ids = checks.loc[checks["attention_passed"].isna(), "rating_id"].tolist()[:5] \
            if "rating_id" in checks.columns else []
        raise ValueError(f"{int(checks['attention_passed'].isna().sum())} attention trials have no "
                         f"attention_passed value (e.g. rating_id {ids}).")
    raters = sorted(df["rater_id"].unique())
    failed = ~_as_bool(checks["attention_passed"])
    out = pd.DataFrame({
        "rater_id": raters,
        "n_checks": checks.groupby("rater_id").size().reindex(raters, fill_value=0).to_numpy(),
        "n_failed": failed.groupby(checks["rater_id"]).sum().reindex(raters, fill_value=0).to_numpy(),
        "n_ratings": df[~df["is_attention"]].groupby("rater_id").size().reindex(raters, fill_value=0).to_numpy(),
    })
    out["n_checks"] = out["n_checks"].astype(int)
    out["n_failed"] = out["n_failed"].astype(int)
    out["n_ratings"] = out["n_ratings"].astype(int)
    plays = pd.to_numeric(df["plays"], errors="coerce") if "plays" in df.columns else pd.Series(float("nan"), df.index)
    out["n_unplayed"] = (plays == 0).groupby(df["rater_id"]).sum().reindex(raters, fill_value=0).to_numpy().astype(int)
    viewed = (pd.to_numeric(df["viewed_ms"], errors="coerce") / 1000.0 if "viewed_ms" in df.columns
              else pd.Series(float("nan"), df.index))
    out["median_viewed_s"] = viewed.groupby(df["rater_id"]).median().reindex(raters).to_numpy().round(2)
    out["flagged"] = (out["n_failed"] > max_failures) | (out["n_unplayed"] > 0)
    return out[ATTENTION_COLUMNS]


