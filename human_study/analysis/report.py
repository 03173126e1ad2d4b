"""``analyze_ratings``: every table and plot written to a folder, with ``report.md``."""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .agreement import agreement_table
from .attention import attention_table
from .bradley_terry import bradley_terry_table
from .data import BT_PRIOR, _without_practice
from .mos import mos_table
from .plots import plot_bradley_terry, plot_mos, plot_preferences
from .preferences import preference_table


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

