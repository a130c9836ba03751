"""The report's figures, as matplotlib ``Figure`` objects (no pyplot, no display): the shared helpers
(styles, panels, legends, log axes, PNG bytes, the accuracy axis that stays readable when a method
collapses) and accuracy vs cost per replicate with the Pareto front. The figures drawn from the training
curves are in :mod:`hpo_bench.report.curves`, the budget and anytime figures in :mod:`hpo_bench.report.budget`.

Every label of a report keeps one colour and marker in every figure, and no two labels share a colour
(40 distinct colours: tab10, the light half of tab20, tab20b; the marker changes too).
A ``fig_*`` function returns None when its data are absent."""
from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from hpo_bench.report.document import _setting_title

MARKERS = "osD^vP*Xh<>p"


def palette() -> list:
    """40 distinct colours: tab10, then tab20's light shades, then tab20b."""
    tab20 = colormaps["tab20"].colors
    cols = list(colormaps["tab10"].colors) + [tab20[2 * i + 1] for i in range(10)] + list(colormaps["tab20b"].colors)
    return list(dict.fromkeys(tuple(float(v) for v in c[:3]) for c in cols))


class Styles:
    def __init__(self, labels):
        labels = list(dict.fromkeys(labels))
        cols = palette()  # beyond 40 labels the colours cycle, but never with the same marker
        self.map = {lab: (cols[i % len(cols)], MARKERS[(i + i // len(cols)) % len(MARKERS)])
                    for i, lab in enumerate(labels)}

    def __call__(self, label):
        return self.map.get(label, ("black", "o"))


def _panels(n, ncols=2, w=5.2, h=3.7):
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(w * ncols + 2.8, h * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def _legend(fig, axes, title=None):
    handles = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    if handles:  # a long legend makes the figure taller, then splits into columns, so the axes keep their size
        n = len(handles)
        fig.set_figheight(max(fig.get_figheight(), min(0.21 * n + 0.8, 9.0)))
        ncols = max(1, math.ceil(n / max(1, int((fig.get_figheight() - 0.8) / 0.21))))
        fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize=8, title=title,
                   title_fontsize=8, ncols=ncols)


def _log_axis(ax, which: str, values):
    """Log scale with plain-number labels at 1-2-5 ticks (every integer multiple on a narrow range)."""
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    vals = [float(v) for v in values if v is not None and np.isfinite(v) and v > 0]
    span = max(vals) / min(vals) if vals else 1e9
    subs = tuple(range(1, 10)) if span < 10 else (1.0, 2.0, 5.0) if span < 1000 else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _log_x(ax, xs):
    _log_axis(ax, "x", xs)


def _int_x(ax):
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _setting_panels(res, settings, entries, has_data):
    """Settings that have data for a figure, with panel titles."""
    keep = [s for s in settings if any(has_data(e) for e in entries if e.setting == s)]
    return keep, [(_setting_title(res.setting_cols, s) if len(settings) > 1 else "") for s in keep]


def collapsed(values: dict) -> set:
    """Labels whose value (accuracy, %) lies far below the others': below median − max(10, 5 × MAD) points,
    as long as most labels stay above and the others span less than half the full range. They are drawn
    apart so that the axis stays readable."""
    vals = {k: v for k, v in values.items() if v is not None and np.isfinite(v)}
    if len(vals) < 3:
        return set()
    x = np.array(list(vals.values()))
    med = float(np.median(x))
    cut = med - max(10.0, 5.0 * float(np.median(np.abs(x - med))))
    low = {k for k, v in vals.items() if v < cut}
    if not low or len(low) >= len(vals) / 2:
        return set()
    rest = [v for k, v in vals.items() if k not in low]
    # worth it only when the others then fill a much narrower axis (else the spread itself is the finding)
    return low if max(rest) - min(rest) < 0.5 * (max(vals.values()) - min(vals.values())) else set()


def zoom_accuracy(ax, shown: list, apart: dict, styles=None, xs: dict | None = None) -> str:
    """y limits from the shown (low, high) accuracy ranges; every label in ``apart`` (label → accuracy %) is
    drawn as a ▼ on the lower edge (at its x when given). Returns the line that names them (for the title)."""
    if not shown:
        return ""
    lo, hi = min(a for a, _ in shown), max(b for _, b in shown)
    pad = max(0.5, 0.08 * (hi - lo))
    ax.set_ylim(lo - pad, hi + pad)
    if not apart:
        return ""
    for lab in apart:
        if xs and lab in xs:
            ax.plot([xs[lab]], [lo - 0.8 * pad], marker="v", ms=9, color=styles(lab)[0] if styles else "black",
                    mew=1.6, zorder=6, clip_on=False)
    items = [f"{lab} {v:.1f} %" for lab, v in apart.items()]
    return "▼ below the axis: " + ",\n".join(", ".join(items[i:i + 2]) for i in range(0, len(items), 2))


def _title(title: str, note: str) -> str:
    return "\n".join(t for t in (title, note) if t)


def _yerr(ci, mean):
    if ci is None or not ci.has_ci:
        return [[0.0], [0.0]]
    return [[max(0.0, 100 * (mean - ci.low))], [max(0.0, 100 * (ci.high - mean))]]


def fig_pareto(res, settings, entries, styles, cost: str, xlabel: str):
    """Mean test accuracy [bootstrap 95 % interval] vs the mean cost per replicate [its interval over seeds]."""
    pts = [e for e in entries if e.kind != "missing" and e.has_acc and not pd.isna(e.cost.get(cost)) and e.cost[cost] > 0]
    keep, titles = _setting_panels(res, settings, pts, lambda e: True)
    if not keep:
        return None
    fig, axes = _panels(len(keep))
    for ax, s, title in zip(axes, keep, titles):
        es = [e for e in pts if e.setting == s]
        apart = collapsed({e.label: 100 * e.acc_mean for e in es})
        same = {}
        for e in es:  # methods at the same cost are spread by a few % in x so that each stays visible
            same.setdefault(e.cost[cost], []).append(e)
        xs, shown = {}, []
        for e in es:
            color, marker = styles(e.label)
            group = same[e.cost[cost]]
            x = e.cost[cost] * (1 + 0.025 * (group.index(e) - (len(group) - 1) / 2))
            xs[e.label] = x
            ci = e.cost_ci.get(cost)
            xerr = [[max(0.0, e.cost[cost] - ci.low)], [max(0.0, ci.high - e.cost[cost])]] if ci is not None and \
                ci.has_ci else None
            ax.errorbar([x], [100 * e.acc_mean], yerr=_yerr(e.acc_ci, e.acc_mean), xerr=xerr, fmt=marker, color=color,
                        ms=7, capsize=3, label=e.label, mfc="none" if e.kind == "search" else color)
            if e.label not in apart:
                ci = e.acc_ci
                shown.append((100 * (ci.low if ci.has_ci else e.acc_mean), 100 * (ci.high if ci.has_ci else e.acc_mean)))
        pairs = sorted(((e.cost[cost], 100 * e.acc_mean) for e in es), key=lambda t: (t[0], -t[1]))
        front, best = [], -math.inf
        for x, y in pairs:
            if y > best:
                front.append((x, y))
                best = y
        if front:  # non-dominated points (no other is cheaper and at least as accurate), extended to the right
            fx, fy = zip(*front)
            xmax = max(x for x, _ in pairs)
            ax.step(list(fx) + [xmax * 1.15], list(fy) + [fy[-1]], where="post", color="black", ls="--", lw=1,
                    label="Pareto front (means)", zorder=0)
        _log_x(ax, [x for x, _ in pairs] + [max(x for x, _ in pairs) * 1.15])
        note = zoom_accuracy(ax, shown, {e.label: 100 * e.acc_mean for e in es if e.label in apart}, styles, xs)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%), bootstrap 95 % CI")
        ax.set_title(_title(title, note), fontsize=9)
        ax.grid(alpha=0.3, which="both")
    _legend(fig, axes, "method (hollow: search)")
    return fig
