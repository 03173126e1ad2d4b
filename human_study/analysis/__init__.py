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

Modules: ``data`` (constants, columns, the common filters), ``preferences``, ``mos``,
``bradley_terry``, ``agreement``, ``attention``, ``plots`` and ``report``.
"""
from .agreement import agreement_table, krippendorff_alpha
from .attention import attention_table
from .bradley_terry import bradley_terry, bradley_terry_table
from .data import (AGREEMENT_COLUMNS, ATTENTION_COLUMNS, BT_COLUMNS, BT_PRIOR, BT_TABLE_COLUMNS, MOS_COLUMNS,
                   PREFERENCE_COLUMNS)
from .mos import mos_table
from .plots import plot_bradley_terry, plot_mos, plot_preferences
from .preferences import wilson_interval, preference_table
from .report import analyze_ratings

__all__ = [
    "wilson_interval", "preference_table", "mos_table", "bradley_terry", "bradley_terry_table",
    "krippendorff_alpha", "agreement_table", "attention_table", "analyze_ratings",
    "plot_preferences", "plot_mos", "plot_bradley_terry",
    "AGREEMENT_COLUMNS", "ATTENTION_COLUMNS", "BT_COLUMNS", "BT_PRIOR", "BT_TABLE_COLUMNS", "MOS_COLUMNS",
    "PREFERENCE_COLUMNS",
]
