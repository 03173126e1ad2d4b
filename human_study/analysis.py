"""Statistics of the human rating study: paired preferences, MOS, Bradley-Terry, agreement, attention.

Input everywhere is the ratings table, a ``pandas.DataFrame`` with one row per stored rating:

    rating_id, rater_id, trial_id, position: int
    question_id: str ("ab_lipsync", ...); question_type: "paired" | "mos";
    axis: "realism" | "lip_sync" | "visual_quality"; clip_id: str
    method_left, method_right: str | None (paired trials); method: str | None (MOS trials)
    choice: str; paired: "left" | "right" | "none" (no preference); MOS: "1".."5"
    chosen_method: str | None; paired: the method on the chosen side, None for "none"
    score: int | None; the MOS score 1-5
    is_practice, is_attention: bool; attention_passed: bool | None (set on attention trials)
    response_ms: int; created_at: str (ISO 8601); app_version: str
    optional: plays: int | None (times the video was played to its end before the answer);
    first_shown_at: str | None; viewed_ms: int | None (from the server first showing the trial
    to the answer reaching it, measured by the server)

Which rows count where:
    * practice rows (``is_practice``) are dropped before anything else;
    * raters are flagged (``attention_table``) for failed attention checks and for answers given
      without playing the video (``plays == 0``, which the server refuses since it records plays);
    * attention-check rows (``is_attention``) only feed ``attention_table``; every other table
      ("scored" ratings) leaves them out, so their doctored clips ("attention:shifted_0.5s")
      never count as methods and the answers to them never count for "ground_truth".

Conventions (also written into ``report.md``):
    * Paired "no preference" answers (ties) count in ``n`` but not in ``pref_a``, its Wilson CI or
      its binomial test, which use the decisive answers only. Bradley-Terry counts a tie as half a
      win for each side and adds a weak prior (0.5 virtual wins and 0.5 virtual losses of every
      method against a fixed reference of strength 1; see ``bradley_terry``).
    * Per-pair Wilson intervals and binomial tests treat answers as independent. One rater answers
      many clips, so where raters differ in taste they are optimistic; the MOS and Bradley-Terry
      intervals resample raters (cluster bootstrap) and do not have that problem.

``analyze_ratings`` runs everything and writes CSV + Markdown tables, three plots and ``report.md``.
"""
from __future__ import annotations

import math
import os
import shutil
import uuid
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

__all__ = [
    "wilson_interval", "preference_table", "mos_table", "bradley_terry", "bradley_terry_table",
    "krippendorff_alpha", "agreement_table", "attention_table", "analyze_ratings",
    "plot_preferences", "plot_mos", "plot_bradley_terry",
]

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


# ---------------------------------------------------------------------------------------------
# input handling

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


# ---------------------------------------------------------------------------------------------
# paired preferences

def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n.

    The interval holds every p whose score test |k/n - p| / sqrt(p (1 - p) / n) <= z accepts; unlike
    the Wald interval it stays inside [0, 1] and keeps its coverage near 0 and 1.

    Args:
        k: successes, 0 <= k <= n.
        n: trials.
        z: normal quantile; the default gives a two-sided 95 % interval.

    Returns:
        (lo, hi); (nan, nan) when n == 0.
    """
    if n == 0:
        return (math.nan, math.nan)
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n, got k={k}, n={n}.")
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return (max(0.0, center - half), min(1.0, center + half))


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


# ---------------------------------------------------------------------------------------------
# MOS

def _cluster_bootstrap_mean(sums: np.ndarray, counts: np.ndarray, n_boot: int,
                            rng: np.random.Generator) -> np.ndarray:
    """Bootstrap replicates of a mean when whole raters are resampled.

    Args:
        sums: (R,) per-rater sum of scores; counts: (R,) per-rater number of scores.
    Returns:
        (n_boot,) means of the resampled ratings.
    """
    r = len(sums)
    draws = rng.multinomial(r, np.full(r, 1.0 / r), size=n_boot)  # (n_boot, R) times each rater is drawn
    return (draws @ sums) / (draws @ counts)


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
            boot = _cluster_bootstrap_mean(per_rater["sum"].to_numpy(float), per_rater["count"].to_numpy(float),
                                           n_boot, _rng(seed, qid, method))
            lo, hi = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
        rows.append({"question_id": qid, "axis": axis, "method": method, "n": len(g),
                     "n_raters": len(per_rater), "mean": float(g["score"].mean()),
                     "std": float(g["score"].std(ddof=1)) if len(g) > 1 else math.nan,
                     "ci95_lo": lo, "ci95_hi": hi})
    return pd.DataFrame(rows, columns=MOS_COLUMNS)


# ---------------------------------------------------------------------------------------------
# Bradley-Terry

def _best_shift(log_p: np.ndarray) -> np.ndarray:
    """(B, 1) shift c maximizing the reference prior over a common shift of (B, K) log-strengths.

    The prior's log-density in c is  prior * sum_i [(x_i + c) - 2 log(1 + exp(x_i + c))], concave,
    with its maximum where sum_i sigmoid(x_i + c) = K / 2; c lies in [-max x, -min x] (there every
    sigmoid is <= 1/2, resp. >= 1/2). Solved by Newton's method kept inside that bracket.
    """
    half = log_p.shape[1] / 2
    lo, hi = -log_p.max(axis=1, keepdims=True), -log_p.min(axis=1, keepdims=True)
    c = -log_p.mean(axis=1, keepdims=True)
    for _ in range(50):
        sig = 1 / (1 + np.exp(-(log_p + c)))
        f = sig.sum(axis=1, keepdims=True) - half
        if np.all(np.abs(f) < 1e-12):
            break
        slope = np.maximum((sig * (1 - sig)).sum(axis=1, keepdims=True), 1e-300)
        c = np.clip(c - f / slope, lo, hi)
    return c


def _bt_mm(wins: np.ndarray, *, prior: float = 0.0, max_iter: int = 20000, tol: float = 1e-10) -> np.ndarray:
    """Bradley-Terry log-strengths by Hunter's (2004) MM algorithm, for a batch of win matrices.

    The update is
        p_i <- (W_i + prior) / (sum_{j != i} N_ij / (p_i + p_j) + 2 prior / (p_i + 1))
    with W_i = sum_j wins_ij the (possibly fractional) wins of i and N_ij = wins_ij + wins_ji the
    comparisons of i and j. The ``prior`` terms are a fixed reference opponent of strength 1 that
    every method beats ``prior`` times and loses to ``prior`` times; the reference is not updated,
    so the update is Hunter's MM step for the other strengths. The real comparisons do not depend
    on a common scale of all strengths and only the weak prior fixes it, along which plain MM
    crawls; so each MM step is followed by the exact best common shift (``_best_shift``). Both
    steps increase the penalized likelihood, which is strictly concave in log p for prior > 0.
    With prior = 0 this is plain MM and converges to the MLE when that exists (every method wins
    and loses across every split of the methods; Hunter 2004, assumption 1).

    Args:
        wins: (B, K, K); wins[b, i, j] = wins of method i over j in problem b; zero diagonal.
        prior: virtual wins (and as many losses) against the reference, >= 0.
    Returns:
        (B, K) log-strengths, each row with mean 0 (strengths with geometric mean 1).
    """
    comparisons = wins + wins.transpose(0, 2, 1)  # (B, K, K)
    total_wins = wins.sum(axis=2) + prior  # (B, K)
    log_p = np.zeros(total_wins.shape)
    step = math.inf
    for _ in range(max_iter):
        p = np.exp(log_p)
        denom = (comparisons / (p[:, :, None] + p[:, None, :])).sum(axis=2) + 2 * prior / (p + 1)  # (B, K)
        new = np.log(total_wins) - np.log(denom)
        # prior = 0: the likelihood ignores the scale, keep it fixed; else move to the best scale
        new += _best_shift(new) if prior > 0 else -new.mean(axis=1, keepdims=True)
        step = float(np.max(np.abs(new - log_p))) if new.size else 0.0
        log_p = new
        if step < tol:
            break
    else:
        warnings.warn(f"Bradley-Terry MM did not converge in {max_iter} iterations (last step {step:.2e}).",
                      RuntimeWarning, stacklevel=3)
    return log_p - log_p.mean(axis=1, keepdims=True)


def _win_matrix(answers: pd.DataFrame, index: dict[str, int]) -> np.ndarray:
    """(K, K) wins[i, j] of method i over j from paired answers; a tie adds 0.5 to both directions."""
    k = len(index)
    wins = np.zeros((k, k))
    a = answers["method_a"].map(index).to_numpy()
    b = answers["method_b"].map(index).to_numpy()
    w = answers["winner"].to_numpy()
    np.add.at(wins, (a, b), np.where(w == answers["method_a"].to_numpy(), 1.0, np.where(w == NO_PREFERENCE, 0.5, 0.0)))
    np.add.at(wins, (b, a), np.where(w == answers["method_b"].to_numpy(), 1.0, np.where(w == NO_PREFERENCE, 0.5, 0.0)))
    return wins


def _components(comparisons: np.ndarray, *, strong: bool) -> np.ndarray:
    """(K,) component label of each method in the graph with an edge wherever ``comparisons`` > 0."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    _, labels = connected_components(csr_matrix(comparisons > 0), directed=strong,
                                     connection="strong" if strong else "weak")
    return labels


def bradley_terry(df_question: pd.DataFrame, *, prior: float = BT_PRIOR,
                  methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Bradley-Terry strengths of the methods from the paired answers of one question.

    Model: P(i preferred over j) = p_i / (p_i + p_j), fitted by Hunter's (2004) MM algorithm.

    Conventions:
        * A "no preference" answer counts as half a win for each side.
        * Prior: every method plays ``prior`` virtual wins and ``prior`` virtual losses against a
          fixed reference opponent of strength 1 (with the default 0.5: one virtual tie each).
          Without it a method that never wins gets strength 0 (log -inf), and groups of methods
          never compared with each other have no common scale. With it every strength is finite
          and positive and every group is tied to the reference. It shrinks strengths slightly
          toward each other; one virtual comparison per method is negligible against tens of real
          ones. (Virtual wins against every other method, the usual alternative, would add a fake
          direct comparison for each of the K (K - 1) / 2 pairs, including pairs the design never
          shows, and compress the scale noticeably in sparse designs; one reference does not.)
          Methods in different ``component``s are placed relative to each other by the prior
          alone: their relative strength says nothing.
        * Strengths are normalized to geometric mean 1 (log-strengths sum to 0) after fitting.

    Args:
        df_question: ratings of a single question (practice, attention and MOS rows are ignored).
        prior: virtual wins (and as many losses) of each method against the reference; 0 fits
            the plain maximum-likelihood estimate, which exists only if every method wins and loses
            across every split of the methods.
        methods: the methods to rate (default: those in the answers); a listed method without
            answers is placed by the prior alone.

    Returns:
        One row per method, best first: method; strength; log_strength; wins (real wins, ties as
        0.5, prior excluded); comparisons (real answers involving the method); rank (1 = best;
        equal strengths share the best rank); component (label of the group of methods linked
        by real comparisons; strengths in different groups are not comparable).

    Raises:
        ValueError: for several questions in ``df_question``, a negative prior, or prior == 0 when
            the maximum-likelihood estimate does not exist.
    """
    if prior < 0:
        raise ValueError(f"the Bradley-Terry prior must be >= 0, got {prior}.")
    answers = _paired_answers(df_question, "bradley_terry")
    if answers["question_id"].nunique() > 1:
        raise ValueError(f"bradley_terry takes one question; got {sorted(answers['question_id'].unique())}.")
    names = sorted(set(methods) if methods is not None else set(answers["method_a"]) | set(answers["method_b"]))
    if len(names) < 2:
        return pd.DataFrame(columns=BT_COLUMNS)
    index = {m: i for i, m in enumerate(names)}
    unknown = (set(answers["method_a"]) | set(answers["method_b"])) - set(index)
    if unknown:
        raise ValueError(f"answers mention methods not in `methods`: {sorted(unknown)}.")
    wins = _win_matrix(answers, index)  # (K, K)
    if prior == 0 and len(set(_components(wins, strong=True))) > 1:
        raise ValueError("the Bradley-Terry maximum-likelihood estimate does not exist for these answers "
                         "(some methods never win or lose against the rest); use prior > 0.")
    log_p = _bt_mm(wins[None], prior=prior)[0]  # (K,)
    comparisons = wins + wins.T
    out = pd.DataFrame({
        "method": names, "strength": np.exp(log_p), "log_strength": log_p,
        "wins": wins.sum(axis=1), "comparisons": comparisons.sum(axis=1).round().astype(int),
        "component": _components(comparisons, strong=False),
    })
    # rounded so that strengths equal up to the MM tolerance share a rank
    out["rank"] = out["log_strength"].round(8).rank(ascending=False, method="min").astype(int)
    return out.sort_values(["rank", "method"]).reset_index(drop=True)[BT_COLUMNS]


def bradley_terry_table(df: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0,
                        prior: float = BT_PRIOR) -> pd.DataFrame:
    """Bradley-Terry strengths for every paired question, with rater-bootstrap intervals.

    The 95 % interval of ``log_strength`` is a percentile cluster bootstrap: raters are drawn with
    replacement (each with all their answers to the question) and the model is refitted, with the
    same prior and the question's full method set, on every replicate. Answers of one rater are
    correlated, hence raters and not answers are resampled. With fewer than 2 raters the interval
    is nan.

    Args:
        df: the ratings table.
        n_boot: bootstrap replicates (0 skips the intervals).
        seed: seeds each question's generator together with its question_id.
        prior: see ``bradley_terry``; must be > 0 here so that every replicate has a fit.

    Returns:
        Rows per question (sorted) and method (best first) with the columns of ``bradley_terry``
        plus question_id, axis, log_ci95_lo, log_ci95_hi and n_raters (raters who answered the
        question).
    """
    if prior <= 0:
        raise ValueError("bradley_terry_table needs prior > 0: a bootstrap replicate may have no MLE.")
    answers = _paired_answers(df, "bradley_terry_table")
    frames = []
    for qid, g in answers.groupby("question_id", sort=True):
        names = sorted(set(g["method_a"]) | set(g["method_b"]))
        table = bradley_terry(g, prior=prior, methods=names)
        if table.empty:
            continue
        index = {m: i for i, m in enumerate(names)}
        raters = sorted(g["rater_id"].unique())
        lo = hi = np.full(len(names), math.nan)
        if len(raters) >= 2 and n_boot > 0:
            per_rater = np.stack([_win_matrix(r, index) for _, r in g.groupby("rater_id", sort=True)])  # (R, K, K)
            rng = _rng(seed, qid)
            draws = rng.multinomial(len(raters), np.full(len(raters), 1.0 / len(raters)), size=n_boot)  # (n_boot, R)
            boot_wins = np.einsum("br,rij->bij", draws.astype(float), per_rater)  # (n_boot, K, K)
            boot = _bt_mm(boot_wins, prior=prior)  # (n_boot, K)
            lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
        by_method = {m: (lo[i], hi[i]) for m, i in index.items()}
        table.insert(0, "question_id", qid)
        table.insert(1, "axis", g["axis"].iloc[0])
        table["log_ci95_lo"] = [by_method[m][0] for m in table["method"]]
        table["log_ci95_hi"] = [by_method[m][1] for m in table["method"]]
        table["n_raters"] = len(raters)
        frames.append(table[BT_TABLE_COLUMNS])
    if not frames:
        return pd.DataFrame(columns=BT_TABLE_COLUMNS)
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------------------
# agreement

def krippendorff_alpha(data: Any, level: Literal["nominal", "ordinal", "interval"] = "nominal") -> float:
    """Krippendorff's alpha reliability of a raters x units table, via the coincidence matrix.

    Follows Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability":
        1. Per unit u with m_u >= 2 values (units with fewer are not pairable and dropped), count
           n_uc, how many raters gave value c.
        2. Coincidences o_ck = sum_u (n_uc n_uk - [c == k] n_uc) / (m_u - 1); marginals
           n_c = sum_k o_ck, n = sum_c n_c (the number of pairable values).
        3. alpha = 1 - D_o / D_e = 1 - (n - 1) sum_ck o_ck d2_ck / sum_ck n_c n_k d2_ck with the
           squared difference d2 of the level:
               nominal:  d2 = [c != k];
               ordinal:  d2 = (sum_{g=c..k} n_g - (n_c + n_k) / 2)^2, values in ascending order;
               interval: d2 = (c - k)^2.

    Args:
        data: (raters, units) array-like; NaN or None marks a missing value. Nominal values may be
            any hashable (strings included); ordinal and interval values must be numbers.
        level: level of measurement.

    Returns:
        alpha (1 = perfect agreement, 0 = agreement at chance level, < 0 = systematic
        disagreement); nan when no unit is pairable or all pairable values are equal (no variation,
        alpha undefined).
    """
    if level not in ("nominal", "ordinal", "interval"):
        raise ValueError(f"level must be 'nominal', 'ordinal' or 'interval', got {level!r}.")
    table = np.asarray(data, dtype=object)
    if table.ndim != 2:
        raise ValueError(f"krippendorff_alpha needs a 2-D raters x units table, got shape {table.shape}.")
    present = ~pd.isna(table)  # (raters, units)
    if level != "nominal":
        try:
            table = np.where(present, table, np.nan).astype(float)
        except (TypeError, ValueError):
            raise ValueError(f"{level} alpha needs numeric values.") from None
    # 1. values per unit, pairable units only
    pairable = present.sum(axis=0) >= 2
    values = sorted(set(table[present & pairable[None, :]].tolist()), key=lambda v: (str(type(v)), v))
    if not values:
        return math.nan
    code = {v: i for i, v in enumerate(values)}
    counts = np.zeros((int(pairable.sum()), len(values)))  # (U, V) n_uc
    for u, col in enumerate(np.flatnonzero(pairable)):
        for v in table[present[:, col], col]:
            counts[u, code[v]] += 1
    m = counts.sum(axis=1)  # (U,) m_u
    # 2. coincidence matrix (V, V) and marginals
    weighted = counts / (m - 1)[:, None]
    o = weighted.T @ counts - np.diag(weighted.sum(axis=0))
    n_c = o.sum(axis=1)
    n = n_c.sum()
    # 3. squared differences (V, V)
    if level == "nominal":
        d2 = 1.0 - np.eye(len(values))
    elif level == "interval":
        v = np.asarray(values, dtype=float)
        d2 = (v[:, None] - v[None, :]) ** 2
    else:
        cum = np.cumsum(n_c)  # sum_{g <= c} n_g
        idx = np.arange(len(values))
        lo_idx, hi_idx = np.minimum.outer(idx, idx), np.maximum.outer(idx, idx)
        between = cum[hi_idx] - cum[lo_idx] + n_c[lo_idx]  # sum_{g=c..k} n_g
        d2 = (between - (n_c[:, None] + n_c[None, :]) / 2) ** 2
    expected = float(np.sum(np.outer(n_c, n_c) * d2))
    if expected == 0:
        return math.nan
    return float(1.0 - (n - 1) * np.sum(o * d2) / expected)


def _alpha_row(matrix: pd.DataFrame, level: str) -> dict[str, Any]:
    """alpha of a raters x units frame, with the numbers of pairable units and their raters."""
    pairable = matrix.loc[:, matrix.notna().sum(axis=0) >= 2]
    return {"level": level, "alpha": krippendorff_alpha(pairable.to_numpy(dtype=object), level),
            "n_units": pairable.shape[1], "n_raters": int(pairable.notna().any(axis=1).sum())}


def agreement_table(df: pd.DataFrame) -> pd.DataFrame:
    """Inter-rater agreement (Krippendorff's alpha) per question.

    Units and values:
        paired questions: unit = (clip_id, unordered method pair), value = the preferred method or
            "none", nominal alpha (the side a method was shown on does not matter);
        MOS questions: unit = (clip_id, method), value = the score, ordinal and interval alpha.
    A rater who answered a unit more than once counts with the first answer (lowest rating_id,
    else table order). Attention and practice rows are ignored.

    Returns:
        Columns question_id, question_type, axis, level, alpha, n_units (pairable units: rated by
        at least 2 raters) and n_raters (raters of those units); one row per paired question and
        two (ordinal, interval) per MOS question.
    """
    rows = []
    parts = [(PAIRED, _paired_answers(df, "agreement_table"), ["clip_id", "method_a", "method_b"], "winner",
              ["nominal"]),
             (MOS, _mos_scores(df, "agreement_table"), ["clip_id", "method"], "score", ["ordinal", "interval"])]
    for qtype, answers, unit_cols, value_col, levels in parts:
        if "rating_id" in answers.columns:
            answers = answers.sort_values("rating_id", kind="stable")
        for qid, g in answers.groupby("question_id", sort=True):
            first = g.drop_duplicates(["rater_id", *unit_cols], keep="first")
            units = first[unit_cols].astype(str).agg("\x1f".join, axis=1)
            matrix = pd.DataFrame({"rater": first["rater_id"].to_numpy(), "unit": units.to_numpy(),
                                   "value": first[value_col].to_numpy()}).pivot(index="rater", columns="unit",
                                                                                 values="value")
            for level in levels:
                rows.append({"question_id": qid, "question_type": qtype, "axis": g["axis"].iloc[0],
                             **_alpha_row(matrix, level)})
    out = pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)
    return out.sort_values(["question_id", "level"], kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# attention checks

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


# ---------------------------------------------------------------------------------------------
# output: markdown tables, plots, report

def _p_value_text(p: float) -> str:
    return "<0.001" if p < 1e-3 else f"{p:.3f}"


# Markdown formats of float columns that the default ".3f" renders badly
_COLUMN_FORMATS = {"p_value": _p_value_text, "wins": lambda v: f"{v:g}"}


def _cell(value: Any, floatfmt: str, column: str) -> str:
    missing = pd.isna(value)
    if isinstance(missing, (bool, np.bool_)) and missing:
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        text = _COLUMN_FORMATS.get(column, lambda v: format(v, floatfmt))(float(value))
        return text[1:] if text.startswith("-") and text.strip("-0.") == "" else text  # no "-0.000"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _markdown_table(df: pd.DataFrame, *, floatfmt: str = ".3f", empty: str = "(no rows)") -> str:
    """A GitHub pipe table of ``df``; nan as "n/a", booleans as yes/no, numbers right-aligned.

    Our own writer: ``DataFrame.to_markdown`` needs the ``tabulate`` package, which the project
    does not depend on."""
    if df.empty:
        return f"_{empty}_\n"
    cols = [str(c) for c in df.columns]
    numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in df.columns]
    lines = ["| " + " | ".join(c.replace("|", "\\|") for c in cols) + " |",
             "|" + "|".join("---:" if num else "---" for num in numeric) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v, floatfmt, c) for v, c in zip(row, cols)) + " |")
    return "\n".join(lines) + "\n"


def _new_figure(width: float, height: float):
    """A matplotlib Figure on the Agg canvas (no pyplot: no global state, safe in a server)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _empty_plot(path: Path, message: str) -> None:
    fig = _new_figure(6, 1.6)
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", color="grey")
    fig.savefig(path)


def _intervals(ax, pos: np.ndarray, lo: np.ndarray, hi: np.ndarray, *, horizontal: bool) -> None:
    """Interval whiskers from lo to hi at bar positions ``pos`` (N,); nan intervals are not drawn.

    Drawn as lines rather than with ``xerr``/``yerr``: matplotlib 3.11 warns on a (2, 1) error
    array (a single bar)."""
    ok = np.isfinite(lo) & np.isfinite(hi)
    pos, lo, hi = pos[ok], lo[ok], hi[ok]
    style = {"color": "black", "lw": 1.2}
    if horizontal:
        ax.hlines(pos, lo, hi, **style)
        ax.vlines(np.concatenate([lo, hi]), np.tile(pos, 2) - 0.12, np.tile(pos, 2) + 0.12, **style)
    else:
        ax.vlines(pos, lo, hi, **style)
        ax.hlines(np.concatenate([lo, hi]), np.tile(pos, 2) - 0.12, np.tile(pos, 2) + 0.12, **style)


def _bar_panels(table: pd.DataFrame, path: Path, *, value: str, lo: str, hi: str, labels, colors, ref: float,
                row_height: float, width: float, xlabel: str, xlim=None) -> None:
    """Horizontal bars of ``table[value]`` with [lo, hi] whiskers and a line at ``ref``, one panel
    per question; ``labels(g)`` and ``colors(g)`` give each bar's label and colour in a panel."""
    groups = list(table.groupby("question_id", sort=True))
    heights = [0.9 + row_height * len(g) for _, g in groups]
    fig = _new_figure(width, sum(heights) + 0.4)
    axes = fig.subplots(len(groups), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, (qid, g) in zip(axes, groups):
        y = np.arange(len(g))[::-1]
        ax.barh(y, np.nan_to_num(g[value].to_numpy(float)), color=colors(g), height=0.6)
        _intervals(ax, y, g[lo].to_numpy(float), g[hi].to_numpy(float), horizontal=True)
        ax.axvline(ref, color="black", lw=1, ls="--" if ref else "-")
        ax.set_yticks(y)
        ax.set_yticklabels(labels(g), fontsize=8)
        if xlim is not None:
            ax.set_xlim(*xlim)
        ax.set_title(f"{qid} ({g['axis'].iloc[0]})", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[-1].set_xlabel(xlabel)
    fig.tight_layout()
    fig.savefig(path)


def plot_preferences(table: pd.DataFrame, path: Path) -> None:
    """Horizontal bars of pref_a with Wilson 95 % intervals and a 0.5 line, one panel per question.

    Args:
        table: output of ``preference_table``; path: the PNG to write.
    """
    if table.empty:
        _empty_plot(path, "no paired (A/B) ratings")
        return
    _bar_panels(table, path, value="pref_a", lo="ci95_lo", hi="ci95_hi", ref=0.5, row_height=0.4, width=7.5,
                labels=lambda g: [f"{a} vs {b} (n={n})" for a, b, n in zip(g["method_a"], g["method_b"], g["n"])],
                colors=lambda g: ["#d62728" if sig else "#1f77b4" for sig in g["significant"]], xlim=(0, 1),
                xlabel="share preferring the first method (ties excluded); red: p < 0.05")


def plot_mos(table: pd.DataFrame, path: Path) -> None:
    """Bars of the MOS with rater-bootstrap 95 % intervals, one panel per axis.

    Args:
        table: output of ``mos_table``; path: the PNG to write.
    """
    if table.empty:
        _empty_plot(path, "no MOS ratings")
        return
    groups = list(table.groupby("axis", sort=True))
    cols = min(len(groups), 3)
    rows = math.ceil(len(groups) / cols)
    panel_width = max(3.5, 1.5 + 0.6 * max(len(g) for _, g in groups))
    fig = _new_figure(panel_width * cols, 3.6 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (axis, g) in zip(axes, groups):
        several = g["question_id"].nunique() > 1
        labels = [f"{q}\n{m}" if several else m for q, m in zip(g["question_id"], g["method"])]
        mean = g["mean"].to_numpy(float)
        x = np.arange(len(g))
        ax.bar(x, mean, color="#1f77b4")
        _intervals(ax, x, g["ci95_lo"].to_numpy(float), g["ci95_hi"].to_numpy(float), horizontal=False)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(MOS_RANGE[0] - 1, MOS_RANGE[1])
        ax.set_ylabel("MOS")
        ax.set_title(axis, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(groups):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)


def plot_bradley_terry(table: pd.DataFrame, path: Path) -> None:
    """Horizontal bars of the Bradley-Terry log-strengths with bootstrap 95 % intervals per question.

    Args:
        table: output of ``bradley_terry_table``; path: the PNG to write.
    """
    if table.empty:
        _empty_plot(path, "no paired (A/B) ratings")
        return
    _bar_panels(table, path, value="log_strength", lo="log_ci95_lo", hi="log_ci95_hi", ref=0.0, row_height=0.35,
                width=7, labels=lambda g: list(g["method"]), colors=lambda g: "#2ca02c",
                xlabel="Bradley-Terry log-strength (0 = geometric mean of the methods)")


def _report(summary: dict[str, Any], tables: dict[str, pd.DataFrame], attention: pd.DataFrame,
            max_failures: int, n_boot: int, scored: pd.DataFrame) -> str:
    """The text of report.md; ``scored`` holds the ratings analyzed (for dates and app versions)."""
    flagged = attention.loc[attention["flagged"], "rater_id"].tolist()
    lines = ["# Human rating study: results", ""]
    lines.append(f"- Ratings analyzed: {summary['n_ratings']} from {summary['n_raters']} raters "
                 f"(practice trials and attention checks not counted; {summary['n_attention_checks']} attention checks).")
    if "created_at" in scored.columns and scored["created_at"].notna().any():
        lines.append(f"- Collected from {scored['created_at'].min()} to {scored['created_at'].max()}.")
    if "app_version" in scored.columns:
        versions = scored["app_version"].value_counts().sort_index()
        lines.append(f"- App versions: {', '.join(f'{v} ({n} ratings)' for v, n in versions.items()) or 'n/a'}.")
    if flagged:
        fate = ("**excluded** from every table below except the attention table"
                f" ({summary['n_excluded_ratings']} scored ratings removed)") if summary["excluded"] else \
            "**not excluded**: their ratings are in every table below (rerun with exclude_flagged=True to drop them)"
        lines.append(f"- Flagged raters (more than {max_failures} failed attention checks, or an answer given "
                     f"without playing the video): {len(flagged)} of {len(attention)} "
                     f"(rater_id {', '.join(map(str, flagged))}); {fate}.")
    else:
        lines.append(f"- Flagged raters (more than {max_failures} failed attention checks, or an answer given "
                     f"without playing the video): 0 of {len(attention)}.")
    lines += ["", "Conventions: paired \"no preference\" answers count in n but not in pref_a, its Wilson 95 % "
              "interval or its two-sided exact binomial test (vs 0.5), which use decisive answers only; these "
              "per-pair statistics treat answers as independent. left_share is the fraction of answers picking "
              "the left side (side bias if far from 0.5). MOS and Bradley-Terry intervals are percentile cluster "
              f"bootstraps over raters ({n_boot} replicates). Bradley-Terry counts a tie as half a win for each side "
              f"and gives every method {BT_PRIOR} virtual wins and {BT_PRIOR} virtual losses against a fixed reference "
              "of strength 1 (so no strength is 0 or infinite); strengths have geometric mean 1. Agreement is Krippendorff's alpha over units rated by at least 2 raters.", ""]
    sections = [("Paired preferences", "preferences", "preferences.png"), ("Mean opinion scores", "mos", "mos.png"),
                ("Bradley-Terry ranking", "bradley_terry", "bradley_terry.png"),
                ("Inter-rater agreement (Krippendorff's alpha)", "agreement", None)]
    for title, key, plot in sections:
        lines += [f"## {title}", "", _markdown_table(tables[key])]
        if plot:
            lines += [f"![{title}]({plot})", ""]
    lines += ["## Attention checks and viewing", "",
              "n_unplayed: answers given without playing the video; median_viewed_s: the median time from the "
              "server showing a trial to the answer.", "", _markdown_table(attention)]
    return "\n".join(lines)


def analyze_ratings(df: pd.DataFrame, out_dir: str | os.PathLike, exclude_flagged: bool = False,
                    max_attention_failures: int = 0, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Run every analysis of the ratings table and write the results to ``out_dir``.

    Writes preferences, mos, bradley_terry, agreement and attention as ``.csv`` and ``.md``, the
    plots preferences.png, mos.png and bradley_terry.png, and report.md (counts, flagged raters and
    whether they were excluded, the tables, links to the plots). Everything is first written to a
    temporary folder next to ``out_dir``; only when all of it succeeded is the folder renamed to
    ``out_dir`` (or, if ``out_dir`` already exists, each file moved into it with an atomic rename),
    so a failure leaves no half-written output.

    Args:
        df: the ratings table.
        out_dir: output folder (created).
        exclude_flagged: drop the ratings of raters flagged by the attention checks from every table
            but the attention table. Either way the report says how many were flagged.
        max_attention_failures: failed checks a rater may have without being flagged.
        n_boot: bootstrap replicates of the MOS and Bradley-Terry intervals.
        seed: bootstrap seed.

    Returns:
        {"n_ratings": scored ratings analyzed, "n_raters": raters analyzed, "n_raters_total",
         "n_attention_checks", "n_flagged", "flagged_raters": [rater_id, ...], "excluded": bool,
         "n_excluded_ratings", "out_dir": str, "files": [paths written]}.

    Raises:
        ValueError: when there are no ratings to analyze, the table is malformed, or ``out_dir`` is a file.
    """
    if len(df) == 0:
        raise ValueError("There are no ratings to analyze: the ratings table is empty.")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"The output folder {out} is an existing file.")
    rest = _without_practice(df, "analyze_ratings")
    if not (~rest["is_attention"]).any():
        raise ValueError("There are no ratings to analyze: the table holds only practice trials and attention checks.")
    attention = attention_table(df, max_failures=max_attention_failures)
    flagged = attention.loc[attention["flagged"], "rater_id"].tolist()
    used = df
    if exclude_flagged and flagged:
        used = df[~df["rater_id"].isin(flagged)]
    scored = _without_practice(used, "analyze_ratings")
    scored = scored[~scored["is_attention"]]
    if scored.empty:
        raise ValueError("There are no ratings to analyze: every rater was flagged by the attention checks and excluded.")
    tables = {
        "preferences": preference_table(used),
        "mos": mos_table(used, n_boot=n_boot, seed=seed),
        "bradley_terry": bradley_terry_table(used, n_boot=n_boot, seed=seed),
        "agreement": agreement_table(used),
    }
    n_scored_all = int((~rest["is_attention"]).sum())
    summary: dict[str, Any] = {
        "n_ratings": len(scored), "n_raters": int(scored["rater_id"].nunique()),
        "n_raters_total": len(attention), "n_attention_checks": int(rest["is_attention"].sum()),
        "n_flagged": len(flagged), "flagged_raters": flagged, "excluded": bool(exclude_flagged),
        "n_excluded_ratings": n_scored_all - len(scored),
    }

    out.parent.mkdir(parents=True, exist_ok=True)
    # a fresh sibling folder (mkdir honours the umask, unlike mkdtemp's 0700) on the same file system
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        names = []
        for key, table in [*tables.items(), ("attention", attention)]:
            table.to_csv(tmp / f"{key}.csv", index=False)
            (tmp / f"{key}.md").write_text(_markdown_table(table), encoding="utf-8")
            names += [f"{key}.csv", f"{key}.md"]
        plot_preferences(tables["preferences"], tmp / "preferences.png")
        plot_mos(tables["mos"], tmp / "mos.png")
        plot_bradley_terry(tables["bradley_terry"], tmp / "bradley_terry.png")
        names += ["preferences.png", "mos.png", "bradley_terry.png"]
        (tmp / "report.md").write_text(_report(summary, tables, attention, max_attention_failures, n_boot, scored),
                                       encoding="utf-8")
        names.append("report.md")
        if out.exists():
            for name in names:
                os.replace(tmp / name, out / name)
        else:
            os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary["out_dir"] = str(out)
    summary["files"] = [str(out / name) for name in names]
    return summary
