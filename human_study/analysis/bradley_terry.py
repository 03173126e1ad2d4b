"""A Bradley-Terry ranking of the methods per question (MM algorithm, a weak prior, cluster
bootstrap intervals)."""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .data import BT_COLUMNS, BT_PRIOR, BT_TABLE_COLUMNS, NO_PREFERENCE, _paired_answers, _rng


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
    (Written here rather than taken from ``choix``: choix has no ties, and its regularization is a
    Dirichlet/Gamma prior on the strengths, not the virtual comparisons against a reference below,
    so it would change what the reported strengths mean.)

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


