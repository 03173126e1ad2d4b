"""The ratings table as the statistics read it: constants, column lists, and the checks and
filters every table starts with (practice rows out; scored paired answers and MOS scores)."""
from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

Z95 = 1.959964  # two-sided 95 % quantile of the standard normal distribution
SIGNIFICANCE = 0.05  # level of the per-pair binomial tests
NO_PREFERENCE = "none"  # the paired answer "no preference"
BT_PRIOR = 0.5  # virtual wins and losses of every method against a reference of strength 1 (see bradley_terry)
MOS_RANGE = (1, 5)  # the MOS scale

PAIRED, MOS = "paired", "mos"
PAIRED_CHOICES = ("left", "right", NO_PREFERENCE)

# columns each function reads (the rest of the table may be absent)
_BASE_COLUMNS = ("rater_id", "question_id", "question_type", "is_practice", "is_attention")
_PAIRED_COLUMNS = ("axis", "clip_id", "method_left", "method_right", "choice")
_MOS_COLUMNS = ("axis", "clip_id", "method", "choice")

PREFERENCE_COLUMNS = ["question_id", "axis", "method_a", "method_b", "n", "n_raters", "wins_a", "wins_b",
                      "no_preference", "pref_a", "ci95_lo", "ci95_hi", "p_value", "significant", "left_share"]
MOS_COLUMNS = ["question_id", "axis", "method", "n", "n_raters", "mean", "std", "ci95_lo", "ci95_hi"]
BT_COLUMNS = ["method", "strength", "log_strength", "wins", "comparisons", "rank", "component"]
BT_TABLE_COLUMNS = ["question_id", "axis", "method", "strength", "log_strength", "log_ci95_lo", "log_ci95_hi",
                    "wins", "comparisons", "rank", "component", "n_raters"]
AGREEMENT_COLUMNS = ["question_id", "question_type", "axis", "level", "alpha", "n_units", "n_raters"]
ATTENTION_COLUMNS = ["rater_id", "n_checks", "n_failed", "n_unplayed", "median_viewed_s", "flagged", "n_ratings"]



def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} needs the ratings table columns {missing}, which are missing.")


def _as_bool(values: pd.Series) -> pd.Series:
    """Booleans from a column that may hold bools, 0/1 or None (None -> False)."""
    return values.astype(object).where(values.notna(), False).astype(bool)


def _without_practice(df: pd.DataFrame, what: str) -> pd.DataFrame:
    """The non-practice rows, with ``is_practice``/``is_attention`` as real booleans."""
    _require(df, _BASE_COLUMNS, what)
    df = df.copy()
    df["is_practice"] = _as_bool(df["is_practice"])
    df["is_attention"] = _as_bool(df["is_attention"])
    return df[~df["is_practice"]]


def _scored(df: pd.DataFrame, question_type: str, what: str) -> pd.DataFrame:
    """Non-practice, non-attention rows of one question type."""
    df = _without_practice(df, what)
    df = df[~df["is_attention"] & (df["question_type"] == question_type)]
    needed = _PAIRED_COLUMNS if question_type == PAIRED else _MOS_COLUMNS
    if df.empty:  # a table without this question type may lack its columns
        return df.reindex(columns=list(dict.fromkeys([*df.columns, *needed])))
    _require(df, needed, what)
    return df


def _paired_answers(df: pd.DataFrame, what: str) -> pd.DataFrame:
    """The scored paired answers with the pair in alphabetical order and the winner named.

    Returns a frame with the input columns plus ``method_a`` < ``method_b`` (alphabetical) and
    ``winner``: ``method_a``, ``method_b`` or ``"none"``. Trials that show one method on both
    sides carry no preference between methods and are dropped.

    Raises:
        ValueError: on a choice other than left/right/none, a missing method name, or a stored
            ``chosen_method`` that is not the method on the chosen side.
    """
    df = _scored(df, PAIRED, what)
    bad = df[~df["choice"].isin(PAIRED_CHOICES)]
    if len(bad):
        raise ValueError(f"paired answers must be one of {PAIRED_CHOICES}, got {sorted(map(str, bad['choice'].unique()))}.")
    if df["method_left"].isna().any() or df["method_right"].isna().any():
        raise ValueError("paired ratings need both method_left and method_right.")
    if ((df["method_left"] == NO_PREFERENCE) | (df["method_right"] == NO_PREFERENCE)).any():
        raise ValueError(f"a method may not be called {NO_PREFERENCE!r}: that is the no-preference answer.")
    df = df[df["method_left"] != df["method_right"]].copy()
    left, right = df["method_left"].astype(str), df["method_right"].astype(str)
    df["method_a"] = np.where(left < right, left, right)
    df["method_b"] = np.where(left < right, right, left)
    winner = np.where(df["choice"] == "left", left, np.where(df["choice"] == "right", right, NO_PREFERENCE))
    df["winner"] = winner
    if "chosen_method" in df.columns:
        stored = df["chosen_method"].astype(object).where(df["chosen_method"].notna(), NO_PREFERENCE)
        wrong = df[stored.astype(str).to_numpy() != winner]
        if len(wrong):
            ids = wrong["rating_id"].tolist()[:5] if "rating_id" in wrong.columns else list(wrong.index[:5])
            raise ValueError(f"chosen_method does not match the chosen side in {len(wrong)} ratings (e.g. {ids}).")
    return df


def _mos_scores(df: pd.DataFrame, what: str) -> pd.DataFrame:
    """The scored MOS ratings with a float ``score`` column (from ``score``, else parsed from ``choice``).

    Raises:
        ValueError: on a score that is missing or outside ``MOS_RANGE``.
    """
    df = _scored(df, MOS, what).copy()
    if df["method"].isna().any():
        raise ValueError("MOS ratings need the rated method in the 'method' column.")
    parsed = pd.to_numeric(df["choice"], errors="coerce")
    # ``score`` may be a nullable Int64 column (pd.NA): make it float first
    score = pd.to_numeric(df["score"], errors="coerce").astype(float) if "score" in df.columns else parsed
    df["score"] = score.fillna(parsed).astype(float)
    lo, hi = MOS_RANGE
    bad = df[~df["score"].between(lo, hi)]
    if len(bad):
        raise ValueError(f"MOS scores must be numbers from {lo} to {hi}; {len(bad)} ratings are not.")
    return df


def _rng(seed: int, *keys: Any) -> np.random.Generator:
    """A generator for one table cell: fixed by ``seed`` and the cell's keys, independent of other cells."""
    return np.random.default_rng([seed, zlib.crc32("\x1f".join(map(str, keys)).encode())])


