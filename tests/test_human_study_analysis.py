"""human_study.analysis against known truths: textbook values, published examples and simulated raters."""
from __future__ import annotations

import itertools
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from human_study.analysis import (agreement_table, analyze_ratings, attention_table, bradley_terry,
                                  bradley_terry_table, krippendorff_alpha, mos_table, preference_table,
                                  wilson_interval)

# Tolerances
_PUBLISHED_DIGITS = 5e-4  # values printed to 3 decimals in Krippendorff (2011)
_BT_LOG_RATIO_TOL = 0.15  # |log(estimated / true strength ratio)| after ~1,800 comparisons per pair
_N_BOOT = 300  # bootstrap replicates in tests (the default 2000 is for real reports)


# ---------------------------------------------------------------------------------------------
# building ratings tables

def _row(rater: int, *, question: str = "ab_lipsync", axis: str = "lip_sync", clip: str = "c0",
         left: str | None = None, right: str | None = None, choice: str = "left", method: str | None = None,
         score: int | None = None, practice: bool = False, attention: bool = False,
         passed: bool | None = None) -> dict:
    """One stored rating: paired when ``left``/``right`` are given, MOS when ``method``/``score`` are."""
    paired = method is None
    if paired:
        chosen = {"left": left, "right": right}.get(choice)
    else:
        choice, chosen = str(score), None
    return {"rater_id": rater, "question_id": question, "question_type": "paired" if paired else "mos",
            "axis": axis, "clip_id": clip, "method_left": left if paired else None,
            "method_right": right if paired else None, "method": method, "choice": choice,
            "chosen_method": chosen, "score": score, "is_practice": practice, "is_attention": attention,
            "attention_passed": passed if attention else None}


def _frame(rows: list[dict]) -> pd.DataFrame:
    """The ratings table as the study stores it (ids, positions, timing and version filled in)."""
    df = pd.DataFrame(rows)
    df.insert(0, "rating_id", np.arange(1, len(df) + 1))
    df.insert(2, "trial_id", np.arange(1, len(df) + 1))
    df.insert(3, "position", df.groupby("rater_id").cumcount())
    df["response_ms"] = 2500
    df["created_at"] = "2025-01-01T12:00:00+00:00"
    df["app_version"] = "0.1.0"
    df["score"] = df["score"].astype("Int64")  # as human_study.db.ratings_frame returns it
    return df


def _paired(rng: np.random.Generator, rater: int, clip: str, a: str, b: str, p_a: float, *,
            p_tie: float = 0.0, **kw) -> dict:
    """A paired answer: a and b on random sides; "none" with p_tie, else a preferred with p_a."""
    left, right = (a, b) if rng.random() < 0.5 else (b, a)
    u = rng.random()
    winner = None if u < p_tie else (a if rng.random() < p_a else b)
    choice = "none" if winner is None else ("left" if winner == left else "right")
    return _row(rater, clip=clip, left=left, right=right, choice=choice, **kw)


def _simulate_ab(p_a: float, *, n_raters: int = 20, n_clips: int = 10, p_tie: float = 0.0, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return _frame([_paired(rng, r, f"c{c}", "ours", "wav2lip", p_a, p_tie=p_tie)
                   for r in range(n_raters) for c in range(n_clips)])


def _simulate_bt(strengths: dict[str, float], *, n_raters: int, n_clips: int, seed: int,
                 question: str = "ab_lipsync") -> pd.DataFrame:
    """Every rater compares every pair on every clip; P(i beats j) = s_i / (s_i + s_j)."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n_raters):
        for c in range(n_clips):
            for a, b in itertools.combinations(sorted(strengths), 2):
                p_a = strengths[a] / (strengths[a] + strengths[b])
                rows.append(_paired(rng, r, f"c{c}", a, b, p_a, question=question))
    return _frame(rows)


def _attention(rater: int, passed: bool) -> dict:
    return _row(rater, clip="gt0", left="ground_truth", right="attention:shifted_0.5s",
                choice="left" if passed else "right", attention=True, passed=passed)


# ---------------------------------------------------------------------------------------------
# Wilson and binomial

def test_wilson_hand_computed():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4)
    assert hi == pytest.approx(0.9433, abs=1e-4)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0


@pytest.mark.parametrize("k,n", [(0, 7), (3, 7), (8, 10), (50, 120), (119, 120)])
def test_wilson_matches_statsmodels_formula_and_score_test(k, n):
    z = 1.959964
    # statsmodels.stats.proportion.proportion_confint(method="wilson"), written out
    p = k / n
    denom = 1 + z ** 2 / n
    center = (p + z ** 2 / (2 * n)) / denom
    dist = z * np.sqrt(p * (1 - p) / n + z ** 2 / (4 * n ** 2)) / denom
    lo, hi = wilson_interval(k, n)
    assert (lo, hi) == pytest.approx((center - dist, center + dist), abs=1e-12)
    # defining property: the bounds (inside (0, 1)) are where the score statistic equals z
    for bound in (lo, hi):
        if 0 < bound < 1:
            assert abs(p - bound) / math.sqrt(bound * (1 - bound) / n) == pytest.approx(z, rel=1e-9)


def test_binomial_p_value_exact_small_case_and_ties_excluded():
    # 9 of 10 decisive answers prefer "ours"; 3 ties do not count.
    # Two-sided exact p = 2 * (C(10,9) + C(10,10)) / 2^10 = 22 / 1024.
    rows = [_row(r, left="ours", right="wav2lip", choice="left") for r in range(9)]
    rows += [_row(9, left="wav2lip", right="ours", choice="left")]
    rows += [_row(10 + r, left="ours", right="wav2lip", choice="none") for r in range(3)]
    t = preference_table(_frame(rows))
    assert len(t) == 1
    row = t.iloc[0]
    assert (row.method_a, row.method_b) == ("ours", "wav2lip")
    assert (row.n, row.wins_a, row.wins_b, row.no_preference) == (13, 9, 1, 3)
    assert row.pref_a == pytest.approx(0.9)
    assert row.p_value == pytest.approx(22 / 1024, rel=1e-12)
    assert bool(row.significant)
    assert (row.ci95_lo, row.ci95_hi) == pytest.approx(wilson_interval(9, 10))
    assert row.left_share == pytest.approx(10 / 13)


def test_preference_simulated_raters():
    strong = preference_table(_simulate_ab(0.8, seed=1)).iloc[0]
    assert strong.method_a == "ours" and strong.n == 200
    assert strong.ci95_lo < 0.8 < strong.ci95_hi
    assert strong.p_value < 0.01 and bool(strong.significant)
    assert 0.35 < strong.left_share < 0.65  # sides are randomized, so no side bias
    null = preference_table(_simulate_ab(0.5, seed=2)).iloc[0]
    assert null.p_value > 0.05 and not bool(null.significant)
    assert null.ci95_lo < 0.5 < null.ci95_hi


def test_preference_excludes_practice_and_attention_rows():
    rows = [_row(1, left="ours", right="wav2lip", choice="left"),
            _row(1, left="ours", right="wav2lip", choice="right", practice=True),
            _attention(1, passed=True), _attention(2, passed=False)]
    t = preference_table(_frame(rows))
    assert t[["method_a", "method_b", "n", "wins_a"]].values.tolist() == [["ours", "wav2lip", 1, 1]]


def test_inconsistent_chosen_method_is_an_error():
    df = _frame([_row(1, left="ours", right="wav2lip", choice="left")])
    df.loc[0, "chosen_method"] = "wav2lip"
    with pytest.raises(ValueError, match="chosen_method"):
        preference_table(df)


# ---------------------------------------------------------------------------------------------
# MOS

def test_mos_ci_contains_true_mean_and_single_rater_has_none():
    rng = np.random.default_rng(3)
    probs = {"ours": [0.05, 0.1, 0.2, 0.4, 0.25], "wav2lip": [0.2, 0.3, 0.3, 0.15, 0.05]}
    true_mean = {m: float(np.dot(p, np.arange(1, 6))) for m, p in probs.items()}  # 3.70 and 2.55
    rows = [_row(r, question="mos_quality", axis="visual_quality", clip=f"c{c}", method=m,
                 score=int(rng.choice(np.arange(1, 6), p=p)))
            for r in range(20) for c in range(8) for m, p in probs.items()]
    rows.append(_row(99, question="mos_other", axis="realism", method="ours", score=4))
    t = mos_table(_frame(rows), n_boot=_N_BOOT, seed=0)
    for m in probs:
        row = t[(t.question_id == "mos_quality") & (t.method == m)].iloc[0]
        assert (row.n, row.n_raters) == (160, 20)
        assert row.ci95_lo < true_mean[m] < row.ci95_hi
        assert row.ci95_lo < row["mean"] < row.ci95_hi
    lone = t[t.question_id == "mos_other"].iloc[0]
    assert lone["mean"] == 4 and math.isnan(lone.ci95_lo) and math.isnan(lone["std"])


def test_mos_cluster_bootstrap_widens_with_rater_effects():
    """Raters with personal offsets: the rater bootstrap must be wider than the naive one."""
    rng = np.random.default_rng(4)
    rows = []
    for r in range(12):
        offset = rng.choice([-1, 0, 1])
        rows += [_row(r, question="mos", clip=f"c{c}", method="ours", score=int(np.clip(3 + offset + rng.integers(-1, 2), 1, 5)))
                 for c in range(30)]
    df = _frame(rows)
    t = mos_table(df, n_boot=_N_BOOT).iloc[0]
    naive_half = 1.96 * df["score"].std() / math.sqrt(len(df))
    assert (t.ci95_hi - t.ci95_lo) / 2 > 1.5 * naive_half


# ---------------------------------------------------------------------------------------------
# Bradley-Terry

def _bt_mle_reference(wins: np.ndarray, prior: float = 0.0) -> np.ndarray:
    """The BT log-likelihood, plus ``prior`` wins and losses of each method against a reference of
    strength 1, maximized directly (scipy BFGS): log-strengths with mean 0."""
    from scipy.optimize import minimize

    def nll(x):
        diff = x[:, None] - x[None, :]
        data = np.sum(wins * (diff - np.logaddexp(0, diff)))  # log p_i/(p_i+p_j) = x_i - x_j - log(1+e^{x_i-x_j})
        reference = prior * np.sum(x - 2 * np.logaddexp(0, x))  # prior * [log p_i/(p_i+1) + log 1/(p_i+1)]
        return -(data + reference)

    x = minimize(nll, np.zeros(len(wins)), method="BFGS", options={"gtol": 1e-10}).x
    return x - x.mean()


def test_bt_two_methods_ratio_equals_wins_ratio():
    rows = [_row(r, left="a", right="b", choice="left") for r in range(6)]
    rows += [_row(r, left="a", right="b", choice="right") for r in range(3)]
    t = bradley_terry(_frame(rows), prior=0).set_index("method")
    assert t.loc["a", "strength"] / t.loc["b", "strength"] == pytest.approx(6 / 3, rel=1e-8)
    assert t.loc["a", "strength"] * t.loc["b", "strength"] == pytest.approx(1.0)  # geometric mean 1
    assert (t.loc["a", "rank"], t.loc["b", "rank"]) == (1, 2)
    # ties count half a win each: 6 + 2/2 against 3 + 2/2
    rows += [_row(r, left="b", right="a", choice="none") for r in range(2)]
    t = bradley_terry(_frame(rows), prior=0).set_index("method")
    assert t.loc["a", "strength"] / t.loc["b", "strength"] == pytest.approx(7 / 4, rel=1e-8)
    assert (t.loc["a", "wins"], t.loc["a", "comparisons"]) == (7.0, 11)
    # the default prior (one virtual tie of each method with a reference of strength 1) shrinks a little
    t = bradley_terry(_frame(rows)).set_index("method")
    assert 1.5 < t.loc["a", "strength"] / t.loc["b", "strength"] < 7 / 4


def test_bt_recovers_known_strengths():
    truth = {"ours": 4.0, "nvp": 2.0, "wav2lip": 1.0, "frozen": 0.5}
    df = _simulate_bt(truth, n_raters=30, n_clips=60, seed=5)
    t = bradley_terry(df).set_index("method")
    assert list(t.index) == ["ours", "nvp", "wav2lip", "frozen"]
    assert list(t["rank"]) == [1, 2, 3, 4]
    assert t["log_strength"].sum() == pytest.approx(0, abs=1e-9)
    for a, b in itertools.combinations(truth, 2):
        est = t.loc[a, "log_strength"] - t.loc[b, "log_strength"]
        assert est == pytest.approx(math.log(truth[a] / truth[b]), abs=_BT_LOG_RATIO_TOL)


@pytest.mark.parametrize("prior", [0.0, 0.5, 3.0])
def test_bt_mm_equals_direct_likelihood_maximization(prior):
    rng = np.random.default_rng(6)
    truth = dict(zip("abcde", np.exp(rng.normal(size=5))))
    df = _simulate_bt(truth, n_raters=3, n_clips=4, seed=7)
    t = bradley_terry(df, prior=prior).set_index("method").loc[sorted(truth)]
    wins = np.zeros((5, 5))
    winners = np.where(df["choice"] == "left", df["method_left"], df["method_right"])
    losers = np.where(df["choice"] == "left", df["method_right"], df["method_left"])
    for w, l in zip(winners, losers):
        wins["abcde".index(w), "abcde".index(l)] += 1
    np.testing.assert_allclose(t["log_strength"].to_numpy(), _bt_mle_reference(wins, prior), atol=1e-5)


def test_bt_prior_does_not_compress_a_sparse_design():
    """A chain design (only neighbours compared): the prior must stay close to the plain MLE."""
    rng = np.random.default_rng(13)
    strengths = {f"m{i}": 2.0 ** i for i in range(6)}
    names = sorted(strengths)
    rows = [_paired(rng, r, f"c{c}", names[i], names[i + 1],
                    strengths[names[i]] / (strengths[names[i]] + strengths[names[i + 1]]))
            for r in range(20) for c in range(4) for i in range(5)]
    df = _frame(rows)
    mle = bradley_terry(df, prior=0).set_index("method")["log_strength"]
    fit = bradley_terry(df).set_index("method")["log_strength"]
    assert list(fit.sort_values().index) == names
    np.testing.assert_allclose(fit.loc[names], mle.loc[names], atol=0.1)
    spread = fit["m5"] - fit["m0"]
    assert spread == pytest.approx(5 * math.log(2), abs=0.6)  # true spread 3.47


def test_bt_never_winning_and_disconnected_methods():
    rows = [_row(r, left="a", right="b", choice="left") for r in range(5)]  # b never wins
    rows += [_row(r, clip="c1", left="c", right="d", choice="right") for r in range(4)]  # no link to {a, b}
    df = _frame(rows)
    t = bradley_terry(df).set_index("method")
    assert np.isfinite(t["log_strength"]).all() and (t["strength"] > 0).all()
    assert t.loc["a", "strength"] > t.loc["b", "strength"] and t.loc["d", "strength"] > t.loc["c", "strength"]
    assert t.loc["a", "component"] == t.loc["b", "component"] != t.loc["c", "component"] == t.loc["d", "component"]
    with pytest.raises(ValueError, match="does not exist"):
        bradley_terry(df, prior=0)


def test_bt_table_bootstrap_intervals():
    truth = {"ours": 3.0, "wav2lip": 1.0, "frozen": 1 / 3}
    df = pd.concat([_simulate_bt(truth, n_raters=15, n_clips=6, seed=8),
                    _simulate_bt(truth, n_raters=15, n_clips=6, seed=9, question="ab_realism")], ignore_index=True)
    df.loc[df.question_id == "ab_realism", "axis"] = "realism"
    t = bradley_terry_table(df, n_boot=_N_BOOT, seed=0)
    assert sorted(t.question_id.unique()) == ["ab_lipsync", "ab_realism"]
    assert (t.log_ci95_lo <= t.log_strength).all() and (t.log_strength <= t.log_ci95_hi).all()
    gm = math.exp(np.mean(np.log(list(truth.values()))))
    for row in t.itertuples():
        assert row.log_ci95_lo < math.log(truth[row.method] / gm) < row.log_ci95_hi
    again = bradley_terry_table(df, n_boot=_N_BOOT, seed=0)
    pd.testing.assert_frame_equal(t, again)  # seeded


# ---------------------------------------------------------------------------------------------
# Krippendorff's alpha

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 observers x 12 units,
# values 1-5, missing entries; unit 12 has one value and is not pairable. Its coincidence matrix has
# marginals n_1..n_5 = 9, 13, 10, 5, 3 (n = 40) and diagonal 7, 10, 8, 4, 3, so by hand
#   nominal alpha = 1 - (n - 1) * (40 - 32) / (40^2 - (9^2 + 13^2 + 10^2 + 5^2 + 3^2)) = 1 - 39 * 8 / 1216 = 113/152.
_K2011 = [[1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
          [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
          [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
          [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None]]


def _alpha_reference(data, level: str) -> float:
    """Krippendorff's alpha straight from the definitions with exact fractions (slow, obvious)."""
    units = [[v for v in col if v is not None and v == v] for col in zip(*data)]
    units = [u for u in units if len(u) >= 2]
    values = sorted({v for u in units for v in u})
    o = {(c, k): Fraction(0) for c in values for k in values}
    for u in units:
        for i, j in itertools.permutations(range(len(u)), 2):
            o[u[i], u[j]] += Fraction(1, len(u) - 1)
    n_c = {c: sum(o[c, k] for k in values) for c in values}
    n = sum(n_c.values())

    def d2(c, k):
        if level == "nominal":
            return int(c != k)
        if level == "interval":
            return Fraction(c - k) ** 2
        lo, hi = min(c, k), max(c, k)
        return (sum(n_c[g] for g in values if lo <= g <= hi) - (n_c[c] + n_c[k]) / 2) ** 2

    expected = sum(n_c[c] * n_c[k] * d2(c, k) for c in values for k in values)
    return float(1 - (n - 1) * sum(o[c, k] * d2(c, k) for c in values for k in values) / expected)


@pytest.mark.parametrize("level,published", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)])
def test_krippendorff_published_example(level, published):
    alpha = krippendorff_alpha(_K2011, level)
    assert alpha == pytest.approx(published, abs=_PUBLISHED_DIGITS)
    assert alpha == pytest.approx(_alpha_reference(_K2011, level), abs=1e-12)
    numeric = np.array([[np.nan if v is None else v for v in row] for row in _K2011])
    assert krippendorff_alpha(numeric, level) == pytest.approx(alpha, abs=1e-12)


def test_krippendorff_nominal_exact_and_strings():
    assert krippendorff_alpha(_K2011, "nominal") == pytest.approx(113 / 152, abs=1e-12)
    letters = [[None if v is None else "abcde"[v - 1] for v in row] for row in _K2011]
    assert krippendorff_alpha(letters, "nominal") == pytest.approx(113 / 152, abs=1e-12)


def test_krippendorff_binary_two_coders():
    # Krippendorff (2011) section A. Pairs per unit give o_00 = 10, o_11 = 2, o_01 = o_10 = 4,
    # n_0 = 14, n_1 = 6, n = 20: alpha = 1 - (n - 1) * o_01 / (n_0 * n_1) = 1 - 19 * 4 / 84 = 0.095.
    a = [0, 1, 0, 0, 0, 0, 0, 0, 1, 0]
    b = [1, 1, 1, 0, 0, 1, 0, 0, 0, 0]
    assert krippendorff_alpha([a, b]) == pytest.approx(1 - 76 / 84, abs=1e-12)


def test_krippendorff_random_tables_match_reference():
    rng = np.random.default_rng(10)
    for _ in range(25):
        data = rng.integers(1, 6, size=(rng.integers(2, 6), rng.integers(3, 12))).astype(object)
        data[rng.random(data.shape) < 0.3] = None
        for level in ("nominal", "ordinal", "interval"):
            ref = _alpha_reference(data.tolist(), level) if _pairable_with_variation(data) else math.nan
            got = krippendorff_alpha(data, level)
            assert (math.isnan(got) and math.isnan(ref)) or got == pytest.approx(ref, abs=1e-10)


def _pairable_with_variation(data) -> bool:
    values = {v for col in zip(*data.tolist()) if sum(x is not None for x in col) >= 2 for v in col if v is not None}
    return len(values) >= 2


def test_krippendorff_edge_cases():
    perfect = [["ours", "w2l", "none", "ours"], ["ours", "w2l", "none", None], [None, "w2l", "none", "ours"]]
    assert krippendorff_alpha(perfect) == 1.0
    assert krippendorff_alpha([[1, 2, 3, 5], [1, 2, 3, 5]], "interval") == 1.0
    assert krippendorff_alpha([[1, 2, 3, 5], [1, 2, 3, 5]], "ordinal") == 1.0
    assert math.isnan(krippendorff_alpha([[1, None], [None, 2]]))  # nothing pairable
    assert math.isnan(krippendorff_alpha([[3, 3], [3, 3]]))  # no variation
    with pytest.raises(ValueError, match="numeric"):
        krippendorff_alpha([["a", "b"], ["a", "b"]], "interval")


def test_agreement_table_units_ignore_sides():
    # Three raters agree on every unit, whichever side "ours" was shown on: alpha = 1.
    rows = []
    for r in range(3):
        for c, winner in enumerate(["ours", "wav2lip", "none", "ours"]):
            left, right = ("ours", "wav2lip") if (r + c) % 2 else ("wav2lip", "ours")
            choice = "none" if winner == "none" else ("left" if left == winner else "right")
            rows.append(_row(r, clip=f"c{c}", left=left, right=right, choice=choice))
        rows += [_row(r, question="mos_q", axis="realism", clip=f"c{c}", method="ours", score=s)
                 for c, s in enumerate([1, 3, 5])]
    rows.append(_attention(0, passed=False))
    t = agreement_table(_frame(rows))
    paired = t[t.question_id == "ab_lipsync"].iloc[0]
    assert (paired.level, paired.alpha, paired.n_units, paired.n_raters) == ("nominal", 1.0, 4, 3)
    mos = t[t.question_id == "mos_q"]
    assert sorted(mos.level) == ["interval", "ordinal"] and (mos.alpha == 1.0).all()
    assert (mos.n_units == 3).all()


# ---------------------------------------------------------------------------------------------
# attention and the whole report

def _study_with_attention() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    rows = []
    fails = {0: 0, 1: 1, 2: 2, 3: 0}  # rater -> failed checks out of 2
    for r, n_fail in fails.items():
        rows += [_attention(r, passed=i >= n_fail) for i in range(2)]
        rows += [_paired(rng, r, f"c{c}", "ours", "wav2lip", 0.8) for c in range(6)]
        rows += [_row(r, question="mos_quality", axis="visual_quality", clip=f"c{c}", method=m,
                      score=int(rng.integers(1, 6))) for c in range(3) for m in ("ours", "wav2lip")]
        rows.append(_row(r, left="ours", right="wav2lip", practice=True))
    rows.append(_row(4, left="ours", right="wav2lip", practice=True))  # only practised: not a rater
    return _frame(rows)


def test_attention_flags_the_right_raters():
    df = _study_with_attention()
    t = attention_table(df)
    assert t.rater_id.tolist() == [0, 1, 2, 3]
    assert t.n_checks.tolist() == [2, 2, 2, 2] and t.n_failed.tolist() == [0, 1, 2, 0]
    assert t.flagged.tolist() == [False, True, True, False]
    assert t.n_ratings.tolist() == [12, 12, 12, 12]
    assert attention_table(df, max_failures=1).flagged.tolist() == [False, False, True, False]


def test_analyze_ratings_writes_everything(tmp_path):
    df = _study_with_attention()
    out = tmp_path / "study"
    summary = analyze_ratings(df, out, n_boot=_N_BOOT)
    expected = {f"{k}.{ext}" for k in ("preferences", "mos", "bradley_terry", "agreement", "attention")
                for ext in ("csv", "md")} | {"preferences.png", "mos.png", "bradley_terry.png", "report.md"}
    assert {p.name for p in out.iterdir()} == expected
    assert all((out / name).stat().st_size > 0 for name in expected)
    assert sorted(map(str, summary["files"])) == sorted(str(out / n) for n in expected)
    assert (summary["n_ratings"], summary["n_raters"], summary["n_flagged"]) == (48, 4, 2)
    assert summary["flagged_raters"] == [1, 2] and summary["excluded"] is False
    report = (out / "report.md").read_text()
    assert "Flagged raters" in report and "2 of 4" in report and "not excluded" in report
    assert "![Paired preferences](preferences.png)" in report
    assert pd.read_csv(out / "preferences.csv").method_a.tolist() == ["ours"]
    assert [p.name for p in tmp_path.iterdir()] == ["study"]  # no temporary folder left behind

    summary = analyze_ratings(df, out, exclude_flagged=True, n_boot=_N_BOOT)  # overwrites in place
    assert (summary["n_ratings"], summary["n_raters"], summary["excluded"]) == (24, 2, True)
    report = (out / "report.md").read_text()
    assert "**excluded**" in report and "rater_id 1, 2" in report
    assert pd.read_csv(out / "attention.csv").rater_id.tolist() == [0, 1, 2, 3]  # still reports everyone


def test_analyze_ratings_failure_leaves_no_output(tmp_path, monkeypatch):
    import human_study.analysis.report as report

    def boom(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(report, "plot_bradley_terry", boom)  # the last plot analyze_ratings draws
    with pytest.raises(RuntimeError, match="plotting failed"):
        analyze_ratings(_study_with_attention(), tmp_path / "study", n_boot=10)
    assert list(tmp_path.iterdir()) == []


def test_empty_input_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"^There are no ratings to analyze: the ratings table is empty\.$"):
        analyze_ratings(pd.DataFrame(), tmp_path / "out")
    practice_only = _frame([_row(1, left="a", right="b", practice=True)])
    with pytest.raises(ValueError, match="no ratings to analyze"):
        analyze_ratings(practice_only, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["paired", "mos"])
def test_analyze_ratings_with_one_question_type(tmp_path, kind):
    rng = np.random.default_rng(12)
    if kind == "paired":
        rows = [_paired(rng, r, f"c{c}", "ours", "wav2lip", 0.7) for r in range(3) for c in range(4)]
    else:
        rows = [_row(r, question="mos_q", clip=f"c{c}", method="ours", score=int(rng.integers(1, 6)))
                for r in range(3) for c in range(4)]
    summary = analyze_ratings(_frame(rows), tmp_path / "out", n_boot=20)
    assert len(summary["files"]) == 14 and all(Path(f).is_file() for f in summary["files"])
    empty_md = (tmp_path / "out" / ("mos.md" if kind == "paired" else "preferences.md")).read_text()
    assert empty_md == "_(no rows)_\n"


def test_markdown_table_cells():
    from human_study.analysis.report import _markdown_table

    df = pd.DataFrame({"name": ["a|b", None], "p_value": [1e-6, 0.25], "wins": [7.5, 3.0],
                       "significant": [True, False], "alpha": [math.nan, -1e-9]})
    assert _markdown_table(df).splitlines() == [
        "| name | p_value | wins | significant | alpha |",
        "|---|---:|---:|---|---:|",
        "| a\\|b | <0.001 | 7.5 | yes | n/a |",
        "| n/a | 0.250 | 3 | no | 0.000 |",
    ]
