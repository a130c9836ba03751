"""Average ranks across settings, Friedman's test, the Nemenyi critical difference and the
critical-difference diagram (Demšar 2006) of :func:`hpo_bench.stats.rank_summary`.

Two summaries, each when it has at least two blocks and two methods:

* across settings: blocks = the settings of ``vary`` (e.g. label-noise levels), methods = the labels
  present in every setting;
* across ρ₀: blocks = the initial radii ρ₀ (per setting), methods = the methods that ran several ρ₀.

In a block, each method's mean test accuracy over seeds is ranked (1 = best, ties share the mean
rank; a method with no ok run in a block ranks last)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from hpo_bench.report.document import _setting_title
from hpo_bench.stats import ALPHA, RankSummary, rank_summary


def _settings_scores(res, settings, entries):
    if len(settings) < 2:
        return None, []
    per = {s: {e.label: e for e in entries if e.setting == s and e.kind != "missing"} for s in settings}
    labels = list(dict.fromkeys(e.label for e in entries if e.kind != "missing"))
    common = [lab for lab in labels if all(lab in per[s] for s in settings)]
    dropped = [lab for lab in labels if lab not in common]
    if len(common) < 2:
        return None, dropped
    rows = {_setting_title(res.setting_cols, s): [per[s][lab].acc_mean if per[s][lab].has_acc else math.nan
                                                  for lab in common] for s in settings}
    return pd.DataFrame.from_dict(rows, orient="index", columns=common), dropped


def _rho0_scores(res, settings, entries):
    multi = [e for e in entries if e.kind == "plain" and e.rho0 is not None]
    methods = list(dict.fromkeys(e.method for e in multi))
    grid = {(e.setting, e.rho0, e.method): e for e in multi}
    blocks = sorted({(e.setting, e.rho0) for e in multi}, key=lambda b: (settings.index(b[0]), b[1]))
    if len(methods) < 2:
        return None, []
    common = [m for m in methods if all((s, r, m) in grid for s, r in blocks)]
    if len(common) < 2 or len(blocks) < 2:
        return None, [m for m in methods if m not in common]
    rows = {}
    for s, r in blocks:
        name = f"ρ₀={r:g}" + (f", {_setting_title(res.setting_cols, s)}" if len(settings) > 1 else "")
        rows[name] = [grid[(s, r, m)].acc_mean if grid[(s, r, m)].has_acc else math.nan for m in common]
    return pd.DataFrame.from_dict(rows, orient="index", columns=common), [m for m in methods if m not in common]


def rank_tables(res, settings, entries) -> list:
    """[(figure name, what the blocks are, scores, dropped methods)] of the summaries that have data."""
    out = []
    for name, what, make in (("cd_settings", "settings", _settings_scores), ("cd_rho0", "initial radii ρ₀",
                                                                          _rho0_scores)):
        scores, dropped = make(res, settings, entries)
        if scores is not None:
            out.append((name, what, scores, dropped))
    return out


def rank_section(doc, res, settings, entries) -> list:
    """Write the average-rank tables; return [(figure name, caption, RankSummary)] for the CD diagrams."""
    tables = rank_tables(res, settings, entries)
    if not tables:
        return []
    doc.section("Average ranks across settings")
    doc.p(f"In each block the methods' mean test accuracies are ranked (1 = best; ties share the mean rank; a method "
          f"with no ok run in a block ranks last); the average over blocks is compared with Friedman's test and the "
          f"Nemenyi critical difference CD = q_α √(k(k+1)/(6N)) at α = {ALPHA:g} (q_α from the studentized range). "
          "Two methods whose average ranks differ by less than CD are not distinguished; with few blocks CD is "
          "large and the Friedman χ² approximation rough.")
    out = []
    for name, what, scores, dropped in tables:
        summary = rank_summary(scores)
        doc.h(3, f"Across {what} ({summary.n_blocks} blocks, {scores.shape[1]} methods)")
        rows = []
        for lab, r in summary.ranks.items():
            col = scores[lab]
            rows.append([lab, f"{r:.2f}", f"{100 * np.nanmean(col):.2f}" if col.notna().any() else "—",
                         f"{int(col.notna().sum())}/{len(col)}"])
        doc.table(["method", "average rank", "mean test acc over blocks (%)", "blocks with an accuracy"], rows)
        friedman = ("Friedman test: needs at least 3 methods and 2 blocks." if math.isnan(summary.p) else
                    f"Friedman χ²({scores.shape[1] - 1}) = {summary.statistic:.2f}, p = {summary.p:.3g}.")
        groups = "; ".join("{" + ", ".join(g) + "}" for g in summary.groups) or "none"
        r = summary.ranks
        apart = [f"{a} ahead of {b}" for i, a in enumerate(r.index) for b in r.index[i + 1:]
                 if r[b] - r[a] >= summary.cd]
        apart_text = ("; ".join(apart[:12]) + (f"; and {len(apart) - 12} more" if len(apart) > 12 else "")) or "none"
        doc.p(f"{friedman} Nemenyi CD = {summary.cd:.2f}. Groups not separated by CD: {groups}. "
              f"Pairs separated by CD: {apart_text}."
              + (f" Not ranked (absent from some blocks): {', '.join(dropped)}." if dropped else ""))
        out.append((name, f"Critical-difference diagram across {what} (average ranks; bars join methods within CD)",
                    summary))
    return out


def fig_cd(summary: RankSummary, title: str = "") -> Figure:
    """The critical-difference diagram: methods at their average rank on an axis from 1 (best, left) to k,
    labels on both sides, the CD interval above the axis and thick bars joining methods within CD."""
    ranks = summary.ranks
    k = len(ranks)
    names, vals = list(ranks.index), ranks.to_numpy(float)
    half = math.ceil(k / 2)
    n_rows = max(half, k - half)
    height = 1.6 + 0.32 * n_rows + 0.18 * len(summary.groups)
    side = 0.3 + 0.075 * max(len(f"{n} (0.00)") for n in names)  # inches for the labels on each side
    middle = max(3.5, 0.6 * k)
    fig = Figure(figsize=(middle + 2 * side, height))
    ax = fig.add_axes((0, 0, 1, 0.9))
    lo, hi = 1, max(k, 2)
    per_inch = (hi - lo) / middle
    ax.set_xlim(lo - side * per_inch, hi + side * per_inch)
    ax.hlines(0, lo, hi, color="black", lw=1.2)
    for t in range(lo, hi + 1):
        ax.vlines(t, 0, 0.12, color="black", lw=1)
        ax.text(t, 0.2, str(t), ha="center", va="bottom", fontsize=9)
    if math.isfinite(summary.cd):
        ax.hlines(0.75, lo, min(lo + summary.cd, hi + 0.25 * (hi - lo)), color="tab:red", lw=2)
        ax.text(lo + summary.cd / 2, 0.85, f"CD = {summary.cd:.2f}", ha="center", va="bottom", fontsize=9,
                color="tab:red")
    y_groups = -0.25
    for j, g in enumerate(summary.groups):
        xs = [vals[names.index(n)] for n in g]
        y = y_groups - 0.2 * j
        ax.hlines(y, min(xs) - 0.03, max(xs) + 0.03, color="black", lw=4)
    base = y_groups - 0.2 * len(summary.groups) - 0.25
    for i, (n, v) in enumerate(zip(names, vals)):
        left = i < half
        row = i if left else k - 1 - i
        y = base - 0.32 * row
        x_end = lo - 0.15 * per_inch if left else hi + 0.15 * per_inch
        ax.plot([v, v, x_end], [0, y, y], color="0.25", lw=1)
        ax.plot([v], [0], "o", color="black", ms=4)
        ax.text(x_end + (-0.05 if left else 0.05) * per_inch, y, f"{n} ({v:.2f})", ha="right" if left else "left",
                va="center", fontsize=9)
    ax.set_ylim(base - 0.32 * n_rows, 1.3)
    ax.axis("off")
    p = "" if math.isnan(summary.p) else f", Friedman p = {summary.p:.3g}"
    fig.suptitle((title + ": " if title else "") + f"average rank (1 = best), N = {summary.n_blocks} blocks{p}",
                 fontsize=9, y=0.98)
    return fig
