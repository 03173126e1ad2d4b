"""The analysis plots: preference rates, MOS and Bradley-Terry strengths with their intervals."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .data import MOS_RANGE


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


