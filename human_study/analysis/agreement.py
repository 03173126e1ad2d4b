"""Inter-rater agreement: Krippendorff's alpha (nominal, ordinal, interval)."""
from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import pandas as pd

from .data import AGREEMENT_COLUMNS, MOS, PAIRED, _mos_scores, _paired_answers


def krippendorff_alpha(data: Any, level: Literal["nominal", "ordinal", "interval"] = "nominal") -> float:
    """Krippendorff's alpha reliability of a raters x units table, via the coincidence matrix.

    Computed by the ``krippendorff`` package (Castro, fast-krippendorff), which follows
    Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability":
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
    import krippendorff

    if level not in ("nominal", "ordinal", "interval"):
        raise ValueError(f"level must be 'nominal', 'ordinal' or 'interval', got {level!r}.")
    table = np.asarray(data, dtype=object)
    if table.ndim != 2:
        raise ValueError(f"krippendorff_alpha needs a 2-D raters x units table, got shape {table.shape}.")
    present = ~pd.isna(table)  # (raters, units)
    pairable = present.sum(axis=0) >= 2  # units with fewer values are not pairable
    table, present = table[:, pairable], present[:, pairable]
    if level == "nominal":  # any hashable values: code them as numbers (their order does not matter)
        values = sorted(set(table[present].tolist()), key=lambda v: (str(type(v)), v))
        code = {v: i for i, v in enumerate(values)}
        numeric = np.full(table.shape, np.nan)
        numeric[present] = [code[v] for v in table[present]]
    else:
        try:
            numeric = np.where(present, table, np.nan).astype(float)
        except (TypeError, ValueError):
            raise ValueError(f"{level} alpha needs numeric values.") from None
    domain = np.unique(numeric[present])
    if len(domain) < 2:  # nothing pairable, or no variation: alpha is undefined
        return math.nan
    return float(krippendorff.alpha(reliability_data=numeric, value_domain=domain, level_of_measurement=level))


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


